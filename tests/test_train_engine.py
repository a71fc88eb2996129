"""The training engine: Muon, foreach AdamW, schedules, accumulation to a token budget, FLOPs
and MFU, dtype "auto", and never losing work (kill signals, NaNs, a full disk, a changed run)."""

from __future__ import annotations

import errno
import itertools
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
import safetensors.torch
import torch

from scratchlm import cli
from scratchlm.config import RunConfig, load_config, load_run_config
from scratchlm.core.errors import ScratchLMError
from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig
from scratchlm.runs import checkpoint as checkpoint_module
from scratchlm.runs.checkpoint import (
    TrainingState,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from scratchlm.runs.preparation import prepare_run
from scratchlm.train import flops, hooks, loop, setup
from scratchlm.train.adamw import AdamW
from scratchlm.train.config import TrainConfig
from scratchlm.train.loop import train_model
from scratchlm.train.metrics import read_metrics
from scratchlm.train.muon import Muon, orthogonalize
from scratchlm.train.optimizer import build_optimizer, parameter_groups
from scratchlm.train.precision import CPU_BF16_MIN_WIDTH, resolve_dtype
from scratchlm.train.ranks import Ranks, current_ranks
from scratchlm.train.schedule import learning_rate_at
from scratchlm.train.setup import set_up_training

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One prepared tiny run (data, tokenizer) that tests copy instead of preparing again."""
    out = tmp_path_factory.mktemp("prepared")
    config = load_config(REPO / "configs" / "tiny.toml")
    config.out_dir, config.name = str(out), "tiny"
    prepare_run(config)
    return config.run_dir


def fresh_run(prepared: Path, where: Path, **train: Any) -> RunConfig:
    run = where / "run"
    shutil.copytree(prepared, run)
    config = load_run_config(run)
    for key, value in train.items():
        setattr(config.train, key, value)
    config.validate()
    return config


# --- optimizers --------------------------------------------------------------------------------


@pytest.mark.parametrize("foreach", [True, False])
def test_adamw_matches_torch_with_groups_of_their_own_rates(foreach: bool) -> None:
    torch.manual_seed(0)
    ours = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Linear(6, 3))
    ref = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Linear(6, 3))
    ref.load_state_dict(ours.state_dict())

    def groups(model: torch.nn.Module) -> list[dict[str, Any]]:
        return [
            {"params": [model[0].weight, model[1].weight], "lr": 1e-2, "weight_decay": 0.1},
            {"params": [model[0].bias, model[1].bias], "lr": 3e-2, "weight_decay": 0.0},
        ]

    opt = AdamW(groups(ours), betas=(0.9, 0.95), foreach=foreach)
    ref_opt = torch.optim.AdamW(groups(ref), betas=(0.9, 0.95))
    for i in range(20):
        x = torch.randn(16, 8)
        for model, optimizer in ((ours, opt), (ref, ref_opt)):
            optimizer.zero_grad()
            model(x).pow(2).mean().backward()
            if i % 5 == 4:  # a parameter without a gradient is left alone (and its step count)
                model[1].bias.grad = None
            optimizer.step()
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert int(opt.state[ours[1].bias]["step"]) == 16


@pytest.mark.parametrize("shape", [(96, 32), (24, 80), (4, 48, 16)])
def test_orthogonalize_gives_near_unit_singular_values(shape: tuple[int, ...]) -> None:
    torch.manual_seed(1)
    g = torch.randn(*shape) * 0.01 + torch.randn(*shape[:-1], 1) * torch.randn(shape[-1]) * 0.1
    out = orthogonalize(g)
    assert out.shape == g.shape
    s = torch.linalg.svdvals(out)
    assert s.min() > 0.6 and s.max() < 1.25, (s.min(), s.max())  # the raw g's span 50x
    # The singular vectors are g's own: the result points the way U V^T does.
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    exact = u @ vh
    cosine = (out * exact).sum(dim=(-2, -1)) / (out.norm(dim=(-2, -1)) * exact.norm(dim=(-2, -1)))
    assert (cosine > 0.95).all()


def test_muon_groups_take_their_rates_from_the_config() -> None:
    config = load_config(REPO / "configs" / "tiny.toml")
    config.train.optimizer = "muon"
    config.train.muon_lr, config.train.embedding_lr, config.train.scalar_lr = 0.05, 0.003, 0.001
    model = GPT(config.model)
    optimizer = build_optimizer(model, config.train)
    assert isinstance(optimizer, Muon)
    by_name = {g["name"]: g for g in optimizer.param_groups}
    assert [by_name[n]["base_lr"] for n in ("matrices", "embeddings", "scalars")] == [
        0.05,
        0.003,
        0.001,
    ]
    assert by_name["matrices"]["use_muon"] and not by_name["embeddings"]["use_muon"]
    assert all(p.dim() == 2 for p in by_name["matrices"]["params"])
    roles = parameter_groups(model, config.train)
    assert model.lm_head.weight in roles["embeddings"]  # the head goes to AdamW
    n_all = len(list(model.parameters()))
    assert sum(len(g["params"]) for g in optimizer.param_groups) == n_all


def test_muon_trains_a_tiny_model_and_its_state_round_trips(prepared: Path, tmp_path: Path) -> None:
    config = fresh_run(
        prepared, tmp_path, optimizer="muon", max_steps=40, eval_interval=40, learning_rate=3e-3
    )
    result = train_model(config, quiet=True)
    assert result.val_loss is not None
    assert result.val_loss < math.log(config.model.vocab_size) - 1.0

    # Save and restore the optimizer: the momentum buffers and Adam moments come back, and
    # one more step from either gives the same weights.
    model = GPT(config.model)
    optimizer = build_optimizer(model, config.train)
    state, _ = load_checkpoint(latest_checkpoint(config.run_dir), model, optimizer)
    assert any("momentum_buffer" in s for s in optimizer.state.values())
    assert any("exp_avg" in s for s in optimizer.state.values())
    path = save_checkpoint(tmp_path / "again", model, optimizer, state, {"t": torch.zeros(1)})
    twin = GPT(config.model)
    twin_opt = build_optimizer(twin, config.train)
    load_checkpoint(path, twin, twin_opt)
    x = torch.randint(0, config.model.vocab_size, (2, 16))
    for m, o in ((model, optimizer), (twin, twin_opt)):
        m(x, x)[1].backward()  # type: ignore[union-attr]
        o.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


# --- schedules and batch size ------------------------------------------------------------------


def test_linear_schedule_warms_up_then_decays_to_zero() -> None:
    tc = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    tc.schedule = "linear"
    lrs = [learning_rate_at(s, tc) for s in range(111)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[60] == pytest.approx(0.5)
    assert lrs[110] == 0.0 and learning_rate_at(500, tc) == 0.0
    assert all(a > b for a, b in itertools.pairwise(lrs[10:]))


def test_wsd_schedule_is_stable_then_decays_over_its_fraction() -> None:
    tc = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_steps=10, max_steps=100)
    tc.schedule, tc.decay_fraction = "wsd", 0.2
    lrs = [learning_rate_at(s, tc) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(lr == 1.0 for lr in lrs[10:80])  # stable until the last 20%
    assert lrs[90] == pytest.approx(0.55)  # halfway down the decay
    assert lrs[100] == pytest.approx(0.1) and learning_rate_at(1000, tc) == pytest.approx(0.1)
    assert all(a > b for a, b in itertools.pairwise(lrs[80:]))
    tc.decay_fraction = 1.0  # all decay: starts right after warmup
    assert learning_rate_at(10, tc) == 1.0 and learning_rate_at(11, tc) < 1.0


def test_batch_tokens_sets_accumulation_and_bad_values_name_the_key() -> None:
    over = ["--model.block_size", "32", "--train.batch_size", "8"]
    config = load_config(REPO / "configs" / "tiny.toml", [*over, "--train.batch_tokens", "1024"])
    assert config.train.accumulation_steps(config.model.block_size) == 4
    with pytest.raises(ScratchLMError, match=r"train\.batch_tokens \(1,000\) must be a multiple"):
        load_config(REPO / "configs" / "tiny.toml", [*over, "--train.batch_tokens", "1000"])
    with pytest.raises(ScratchLMError, match=r"train\.grad_accum_steps"):
        load_config(
            REPO / "configs" / "tiny.toml",
            [*over, "--train.batch_tokens", "1024", "--train.grad_accum_steps", "2"],
        )
    for key, value in (("schedule", "exp"), ("optimizer", "sgd"), ("dtype", "fp8")):
        with pytest.raises(ScratchLMError, match=f"train.{key} = '{value}' is not allowed"):
            load_config(None, [f"--train.{key}", value])
    with pytest.raises(ScratchLMError, match=r"train\.decay_fraction"):
        load_config(None, ["--train.decay_fraction", "0"])


# --- reporting ---------------------------------------------------------------------------------


def test_flops_per_token_counts_weights_and_attention() -> None:
    config = ModelConfig(vocab_size=100, block_size=16, n_layer=2, n_head=2, n_embd=8)
    model = GPT(config)
    per_token = flops.flops_per_token(config, model.num_parameters(exclude_embeddings=True))
    # Per layer: qkv 8x24, proj 8x8, MLP 8x32 and 32x8 weights; head 8x100.
    weights = 2 * (8 * 24 + 8 * 8 + 8 * 32 + 32 * 8) + 100 * 8
    small = 2 * (24 + 8 + 32 + 8 + 2 * 16) + 16  # biases and norms, counted as weights too
    assert per_token == 6 * (weights + small) + 12 * 2 * 16 * 8


def test_peak_is_measured_once_and_cached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(flops, "measure_peak_flops", lambda d, t: calls.append(t) or 5e10)
    cpu = torch.device("cpu")
    assert flops.peak_flops(cpu, torch.float32) == 5e10
    assert flops.peak_flops(cpu, torch.float32) == 5e10
    assert calls == [torch.float32]
    cached = json.loads((tmp_path / flops.PEAKS_FILE).read_text())
    assert list(cached.values()) == [5e10] and "float32" in next(iter(cached))


def test_a_peak_measured_too_low_is_raised_by_what_training_achieves(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A peak measured while the cores were busy can be far too low; a step that ran faster
    # proves the device can do at least that, and later runs read the corrected value.
    monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path))
    monkeypatch.setattr(flops, "measure_peak_flops", lambda d, t: 1e9)
    cpu = torch.device("cpu")
    assert flops.peak_flops(cpu, torch.float32) == 1e9
    assert flops.raise_peak(cpu, torch.float32, 3e10) == 3e10
    assert flops.raise_peak(cpu, torch.float32, 2e10) == 3e10  # never lowered
    assert flops.peak_flops(cpu, torch.float32) == 3e10
    assert flops.peak_flops(cpu, torch.bfloat16) == 1e9  # another dtype, its own peak


def test_real_peak_measurement_is_positive() -> None:
    assert flops.measure_peak_flops(torch.device("cpu"), torch.float32, budget_s=0.2) > 1e8


def test_peak_measurement_stops_before_a_size_would_overrun_its_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A slow path (emulated bf16) must not make the measurement take minutes: with a clock on
    # which every matmul seems to take a second, only the first size (256) is tried.
    class SlowClock:
        now = 0.0

        def perf_counter(self) -> float:
            self.now += 1.0
            return self.now

    sizes = []
    real_randn = torch.randn

    def randn(n: int, *args: object, **kwargs: object) -> torch.Tensor:
        sizes.append(n)
        return real_randn(n, *args, **kwargs)

    monkeypatch.setattr(flops, "time", SlowClock())
    monkeypatch.setattr(flops.torch, "randn", randn)
    assert flops.measure_peak_flops(torch.device("cpu"), torch.float32, budget_s=10.0) > 0
    assert set(sizes) == {256}


def test_auto_dtype_picks_by_width_and_measured_peaks(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype(cpu, "bfloat16", 32) == "bfloat16"  # an explicit choice stands
    assert resolve_dtype(cpu, "auto", 32) == "float32"  # tiny: fp32, nothing measured
    peaks = {torch.float32: 1e11, torch.bfloat16: 5e11}
    monkeypatch.setattr(flops, "peak_flops", lambda d, t: peaks[t])
    assert resolve_dtype(cpu, "auto", CPU_BF16_MIN_WIDTH) == "bfloat16"
    peaks[torch.bfloat16] = 2e9  # a CPU without bf16 instructions (this project's)
    assert resolve_dtype(cpu, "auto", 1024) == "float32"


def test_metrics_report_throughput_mfu_and_eta(prepared: Path, tmp_path: Path) -> None:
    config = fresh_run(prepared, tmp_path, max_steps=10, log_interval=5, dtype="auto")
    train_model(config, quiet=True)
    logged = [r for r in read_metrics(config.run_dir / "metrics.jsonl") if "train_loss" in r]
    assert [r["step"] for r in logged] == [5, 10]
    model = GPT(config.model)
    per_token = flops.flops_per_token(config.model, model.num_parameters(exclude_embeddings=True))
    for r in logged:
        assert r["tokens_per_s"] > 0
        assert r["flops_per_s"] == pytest.approx(r["tokens_per_s"] * per_token)
        assert 0 < r["mfu"] < 1
        assert r["skipped_steps"] == 0
    assert logged[0]["eta_s"] > 0 and logged[-1]["eta_s"] == 0
    assert (config.run_dir / "lr.png").stat().st_size > 1000


def test_plot_command_writes_both_curves(prepared: Path, tmp_path: Path) -> None:
    config = fresh_run(prepared, tmp_path, max_steps=5)
    train_model(config, quiet=True)
    for name in ("loss.png", "lr.png"):
        (config.run_dir / name).unlink()
    assert cli.main(["plot", str(config.run_dir)]) == 0
    assert (config.run_dir / "loss.png").stat().st_size > 1000
    assert (config.run_dir / "lr.png").stat().st_size > 1000
    assert cli.main(["plot", str(tmp_path / "nothing")]) == 2


def test_tensorboard_is_optional_and_its_absence_is_clear(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = fresh_run(prepared, tmp_path, max_steps=5, tensorboard=True)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    with pytest.raises(ScratchLMError, match="pip install tensorboard"):
        train_model(config, quiet=True)


# --- never lose work ---------------------------------------------------------------------------


def test_best_checkpoint_is_kept_beside_the_last_ones(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = fresh_run(prepared, tmp_path, max_steps=50, eval_interval=10, checkpoint_interval=10)
    config.train.keep_checkpoints = 2
    val_losses = iter([3.0, 1.0, 2.0, 2.5, 2.7])  # best at step 20
    monkeypatch.setattr(hooks, "evaluate_loss", lambda *a, **k: next(val_losses))
    train_model(config, quiet=True)
    names = [p.name for p in list_checkpoints(config.run_dir)]
    assert names == ["step_000020", "step_000040", "step_000050"]
    meta = json.loads((config.run_dir / "checkpoints/step_000050/meta.json").read_text())
    assert (meta["best_step"], meta["best_val_loss"]) == (20, 1.0)


class _Poisoned(GPT):
    """A GPT whose training loss (forward's or the fused one) is poisoned, or only its
    gradient, on chosen calls."""

    bad_calls: ClassVar[set[int]] = set()
    grad_only: ClassVar[bool] = False
    calls: ClassVar[int] = 0

    def forward(self, idx: Any, targets: Any = None, kv_cache: Any = None) -> Any:
        logits, loss = super().forward(idx, targets, kv_cache)
        if targets is not None and self.training:
            loss = self._poison(loss)
        return logits, loss

    def training_loss(self, idx: Any, targets: Any) -> Any:
        return self._poison(super().training_loss(idx, targets))

    def _poison(self, loss: Any) -> Any:
        type(self).calls += 1
        if type(self).calls in self.bad_calls:
            if self.grad_only:  # finite loss, but d sqrt(x)/dx at 0 is infinite
                return loss + torch.sqrt(self.lm_head.weight.sum() * 0.0)
            return loss * float("nan")
        return loss


@pytest.mark.parametrize("grad_only", [False, True])
def test_non_finite_steps_are_skipped_and_counted(
    grad_only: bool, prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = fresh_run(prepared, tmp_path, max_steps=10, log_interval=1, max_bad_steps=3)
    monkeypatch.setattr(_Poisoned, "bad_calls", {3, 4})
    monkeypatch.setattr(_Poisoned, "grad_only", grad_only)
    monkeypatch.setattr(_Poisoned, "calls", 0)
    monkeypatch.setattr(setup, "GPT", _Poisoned)
    result = train_model(config, quiet=True)
    assert result.steps == 10  # two skipped batches did not cost steps
    records = read_metrics(config.run_dir / "metrics.jsonl")
    skipped = [r for r in records if r.get("skipped_step")]
    assert [(r["step"], r["bad_steps_in_a_row"]) for r in skipped] == [(2, 1), (2, 2)]
    last = next(r for r in records if r.get("step") == 10 and "train_loss" in r)
    assert last["skipped_steps"] == 2
    state, _ = load_checkpoint(latest_checkpoint(config.run_dir), GPT(config.model))
    assert state.extra["skipped_steps"] == 2
    weights = safetensors.torch.load_file(latest_checkpoint(config.run_dir) / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_too_many_bad_steps_stop_with_the_last_good_checkpoint(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = fresh_run(prepared, tmp_path, max_steps=20, checkpoint_interval=5, max_bad_steps=3)
    monkeypatch.setattr(_Poisoned, "bad_calls", set(range(8, 100)))
    monkeypatch.setattr(_Poisoned, "calls", 0)
    monkeypatch.setattr(setup, "GPT", _Poisoned)
    with pytest.raises(ScratchLMError, match=r"3 steps in a row.*step_000005.*--resume"):
        train_model(config, quiet=True)
    last = latest_checkpoint(config.run_dir)
    assert last.name == "step_000005"
    load_checkpoint(last, GPT(config.model))  # intact


def test_full_disk_while_checkpointing_keeps_the_previous_one(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = fresh_run(prepared, tmp_path, max_steps=10, checkpoint_interval=10)
    train_model(config, quiet=True)
    before = (latest_checkpoint(config.run_dir) / "model.safetensors").read_bytes()

    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint_module, "_save_optimizer", full_disk)
    config.train.max_steps = 20
    with pytest.raises(ScratchLMError, match=r"disk is full.*step_000010 is intact"):
        train_model(config, resume=True, quiet=True)
    assert [p.name for p in list_checkpoints(config.run_dir)] == ["step_000010"]
    assert not list((config.run_dir / "checkpoints").glob(".*"))  # no half-written folder
    assert (latest_checkpoint(config.run_dir) / "model.safetensors").read_bytes() == before
    load_checkpoint(latest_checkpoint(config.run_dir), GPT(config.model))


def test_resume_names_what_differs(prepared: Path, tmp_path: Path) -> None:
    config = fresh_run(prepared, tmp_path, max_steps=5, checkpoint_interval=5)
    train_model(config, quiet=True)
    config.train.max_steps = 10

    config.model.n_embd = 64
    with pytest.raises(ScratchLMError, match=r"model\.n_embd was 32, now 64"):
        train_model(config, resume=True, quiet=True)
    config.model.n_embd = 32

    config.train.optimizer = "muon"
    with pytest.raises(ScratchLMError, match=r"train\.optimizer was 'adamw', now 'muon'"):
        train_model(config, resume=True, quiet=True)
    config.train.optimizer = "adamw"

    meta_path = config.run_dir / "data" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["train_documents"] += 1
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ScratchLMError, match=r"data\.train_documents was"):
        train_model(config, resume=True, quiet=True)


def _last_logged_step(metrics: Path) -> int:
    steps = [r["step"] for r in read_metrics(metrics) if "train_loss" in r]
    return steps[-1] if steps else 0


def test_killed_runs_resume_to_bitwise_identical_weights(prepared: Path, tmp_path: Path) -> None:
    """A real `scratchlm train` process is stopped four times at seeded random steps, twice by
    SIGKILL (no chance to save) and once each by SIGTERM and SIGINT (finish the step, save,
    exit 0), and resumed each time; it ends with exactly the weights of a run never stopped."""
    steps = 40
    settings = dict(max_steps=steps, checkpoint_interval=4, log_interval=1, eval_interval=20)
    reference = fresh_run(prepared, tmp_path / "reference", **settings)
    train_model(reference, quiet=True)  # in this process, on one thread like the children

    config = fresh_run(prepared, tmp_path / "killed", **settings)
    (config.run_dir / "config.toml").write_text(config.to_toml())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-m", "scratchlm", "train", "--resume", str(config.run_dir)]
    command.append("--no-samples")
    rng = random.Random(5)
    metrics = config.run_dir / "metrics.jsonl"
    reached = 0
    for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGKILL, signal.SIGINT):
        target = min(steps - 2, reached + rng.randint(3, 8))
        child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        # The log is cut back to the checkpoint on resume, so wait for a step past the last.
        while _last_logged_step(metrics) < target and child.poll() is None:
            assert time.monotonic() < deadline, "the training process made no progress"
            time.sleep(0.005)
        child.send_signal(sig)
        out, err = child.communicate(timeout=60)
        reached = _last_logged_step(metrics)
        if sig == signal.SIGKILL:
            assert child.returncode == -signal.SIGKILL
        else:
            assert child.returncode == 0, err.decode()
            assert f"resume with: scratchlm train --resume {config.run_dir}" in out.decode()
            assert f"{signal.Signals(sig).name} received" in err.decode()
            assert latest_checkpoint(config.run_dir).name == f"step_{reached:06d}"
    done = subprocess.run(command, env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()

    final = f"checkpoints/step_{steps:06d}/model.safetensors"
    ours = safetensors.torch.load_file(config.run_dir / final)
    theirs = safetensors.torch.load_file(reference.run_dir / final)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name


def test_checkpoint_records_what_the_run_was_trained_with(tmp_path: Path) -> None:
    config = load_config(REPO / "configs" / "tiny.toml")
    model = GPT(config.model)
    optimizer = build_optimizer(model, config.train)
    state = TrainingState(step=3, best_step=3, best_val_loss=2.5, extra={"model": {"n_embd": 32}})
    path = save_checkpoint(tmp_path, model, optimizer, state, {"t": torch.zeros(1)})
    loaded, _ = load_checkpoint(path, model)
    assert (loaded.best_step, loaded.extra["model"]) == (3, {"n_embd": 32})


# --- where a run starts, which rank reports, and quiet ------------------------------------------


def test_init_from_starts_at_step_0_from_another_runs_weights(
    prepared: Path, tmp_path: Path
) -> None:
    source = fresh_run(prepared, tmp_path / "a", max_steps=6, checkpoint_interval=3)
    train_model(source, quiet=True)
    final = safetensors.torch.load_file(latest_checkpoint(source.run_dir) / "model.safetensors")

    for i, init_from in enumerate((source.run_dir, latest_checkpoint(source.run_dir))):
        config = fresh_run(prepared, tmp_path / f"b{i}", max_steps=2, seed=7)
        config.train.init_from = str(init_from)
        ctx = set_up_training(config, resume=False, ranks=Ranks())
        weights = ctx.model.state_dict()
        for name, tensor in final.items():
            assert torch.equal(weights[name], tensor), name
        assert not ctx.optimizer.state and ctx.state.step == 0

    result = train_model(config, quiet=True)  # the last one: from the checkpoint folder
    assert result.steps == 2
    meta = json.loads((latest_checkpoint(config.run_dir) / "meta.json").read_text())
    assert meta["step"] == 2
    assert meta["extra"]["init_from"] == {
        "checkpoint": str(latest_checkpoint(source.run_dir).resolve()),
        "step": 6,
    }
    config.train.max_steps = 3  # a resume keeps the record and its own weights
    train_model(config, resume=True, quiet=True)
    meta = json.loads((latest_checkpoint(config.run_dir) / "meta.json").read_text())
    assert meta["step"] == 3 and meta["extra"]["init_from"]["step"] == 6


def test_init_from_names_what_differs_in_one_line(prepared: Path, tmp_path: Path) -> None:
    source = fresh_run(prepared, tmp_path / "a", max_steps=2, checkpoint_interval=2)
    train_model(source, quiet=True)
    config = fresh_run(prepared, tmp_path / "b", max_steps=2, init_from=str(source.run_dir))
    config.model.n_layer += 1
    with pytest.raises(ScratchLMError, match=r"model\.n_layer was 2, now 3") as error:
        train_model(config, quiet=True)
    assert "\n" not in str(error.value) and "train.init_from" in str(error.value)
    config.model.n_layer -= 1
    config.train.init_from = str(tmp_path / "nowhere")
    with pytest.raises(ScratchLMError, match="neither a run directory nor a checkpoint"):
        train_model(config, quiet=True)


def test_ranks_come_from_torch_distributed_when_it_is_set_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert current_ranks() == Ranks(0, 1) and Ranks().is_main
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 3)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 4)
    assert current_ranks() == Ranks(3, 4)
    assert not current_ranks().is_main


def test_only_the_main_rank_reports_evaluates_and_saves(
    prepared: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    config = fresh_run(prepared, tmp_path, max_steps=4, eval_interval=2, checkpoint_interval=2)
    monkeypatch.setattr(loop, "current_ranks", lambda: Ranks(1, 2))
    ctx = set_up_training(config, resume=False, ranks=Ranks(1, 2))
    assert (ctx.train_batches.rank, ctx.train_batches.world_size) == (1, 2)
    assert hooks.training_hooks(ctx, resume=False).hooks == []
    result = train_model(config)  # not quiet: a non-main rank is quiet anyway
    assert result.steps == 4 and result.checkpoint is None and result.val_loss is None
    assert capfd.readouterr() == ("", "")
    assert not list_checkpoints(config.run_dir)
    for name in ("metrics.jsonl", "loss.png", "lr.png"):
        assert not (config.run_dir / name).exists(), name


def test_quiet_training_prints_nothing(
    prepared: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    config = fresh_run(prepared, tmp_path, max_steps=4, eval_interval=2, compile=False)
    train_model(config, quiet=True)
    out, err = capfd.readouterr()
    assert out == ""
    assert [line for line in err.splitlines() if not line.startswith("warning:")] == []
    config.train.max_steps = 6  # and without quiet, the same run talks (on stderr)
    train_model(config, resume=True)
    out, err = capfd.readouterr()
    assert out.startswith("resuming from")
    assert "model:" in err and "val loss" in err
