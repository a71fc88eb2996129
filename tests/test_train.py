"""Training: our AdamW and schedule, loss that falls on real text, checkpoints and exact resume."""

from __future__ import annotations

import itertools
import math
import shutil
from pathlib import Path

import pytest
import torch

from scratchlm.config import RunConfig, load_config
from scratchlm.core.errors import ScratchLMError
from scratchlm.model import GPT
from scratchlm.runs.checkpoint import (
    TrainingState,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from scratchlm.runs.loading import load_trained_model
from scratchlm.runs.preparation import prepare_run
from scratchlm.train.adamw import AdamW
from scratchlm.train.config import TrainConfig
from scratchlm.train.loop import train_model
from scratchlm.train.metrics import read_metrics
from scratchlm.train.optimizer import build_optimizer
from scratchlm.train.schedule import learning_rate_at

REPO = Path(__file__).resolve().parents[1]


def tiny_config(out_dir: Path, name: str = "tiny", **train: object) -> RunConfig:
    config = load_config(REPO / "configs" / "tiny.toml")
    config.out_dir = str(out_dir)
    config.name = name
    for key, value in train.items():
        setattr(config.train, key, value)
    return config


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


# --- optimizer and schedule ------------------------------------------------------------------


def test_adamw_matches_torch_reference() -> None:
    torch.manual_seed(0)
    ours = torch.nn.Linear(8, 4)
    ref = torch.nn.Linear(8, 4)
    ref.load_state_dict(ours.state_dict())
    opt = AdamW(ours.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    for _ in range(20):
        x = torch.randn(16, 8)
        for model, optimizer in ((ours, opt), (ref, ref_opt)):
            optimizer.zero_grad()
            model(x).pow(2).mean().backward()
            optimizer.step()
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_weight_decay_only_on_matrices() -> None:
    config = load_config(REPO / "configs" / "tiny.toml")
    model = GPT(config.model)
    optimizer = build_optimizer(model, config.train)
    decayed = {id(p) for p in optimizer.param_groups[0]["params"]}
    assert optimizer.param_groups[0]["weight_decay"] == config.train.weight_decay
    assert optimizer.param_groups[1]["weight_decay"] == 0.0
    for name, p in model.named_parameters():
        expect = p.dim() >= 2 and "wte" not in name and "wpe" not in name
        assert (id(p) in decayed) == expect, name


def test_schedule_warmup_then_cosine_to_min_lr() -> None:
    tc = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    lrs = [learning_rate_at(s, tc) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in itertools.pairwise(lrs[:10]))  # rising warmup
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))  # then never rising
    assert lrs[60] == pytest.approx(0.55)  # halfway through the cosine
    assert learning_rate_at(110, tc) == pytest.approx(0.1)
    assert learning_rate_at(500, tc) == pytest.approx(0.1)


# --- training ----------------------------------------------------------------------------------


def test_loss_falls_on_pydocs(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, max_steps=60, eval_interval=60, learning_rate=3e-3)
    prepare_run(config)
    result = train_model(config, quiet=True)
    metrics = read_metrics(config.run_dir / "metrics.jsonl")
    val = [r["val_loss"] for r in metrics if "val_loss" in r]
    ln_vocab = math.log(config.model.vocab_size)
    # At init the loss is about ln(vocab); after 60 steps it must be well below.
    assert result.val_loss is not None and result.val_loss < ln_vocab - 1.0
    assert val[-1] == result.val_loss
    assert (config.run_dir / "loss.png").stat().st_size > 1000
    assert list_checkpoints(config.run_dir)[-1].name == "step_000060"


def test_checkpoint_round_trip_gives_identical_logits(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    torch.manual_seed(0)
    model = GPT(config.model)
    optimizer = build_optimizer(model, config.train)
    x = torch.randint(0, config.model.vocab_size, (2, 16))
    model(x, x)[1].backward()  # type: ignore[union-attr]
    optimizer.step()
    rng_state = torch.get_rng_state()
    path = save_checkpoint(
        tmp_path, model, optimizer, TrainingState(step=7, tokens_seen=99), {"torch": rng_state}
    )
    fresh = GPT(config.model)
    fresh_opt = build_optimizer(fresh, config.train)
    state, rng = load_checkpoint(path, fresh, fresh_opt)
    assert (state.step, state.tokens_seen) == (7, 99)
    assert torch.equal(rng["torch"], rng_state)
    model.eval()
    fresh.eval()
    assert torch.equal(model(x)[0], fresh(x)[0])
    assert fresh.lm_head.weight is fresh.transformer.wte.weight  # the tie survives loading
    for group, fresh_group in zip(optimizer.param_groups, fresh_opt.param_groups, strict=True):
        for p, q in zip(group["params"], fresh_group["params"], strict=True):
            assert torch.equal(optimizer.state[p]["exp_avg"], fresh_opt.state[q]["exp_avg"])
            assert torch.equal(optimizer.state[p]["exp_avg_sq"], fresh_opt.state[q]["exp_avg_sq"])
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_keep_last_checkpoints(tmp_path: Path) -> None:
    config = tiny_config(
        tmp_path, max_steps=40, checkpoint_interval=10, keep_checkpoints=2, keep_best=False
    )
    prepare_run(config)
    train_model(config, quiet=True)
    assert [p.name for p in list_checkpoints(config.run_dir)] == ["step_000030", "step_000040"]


@pytest.mark.parametrize("sampling", ["random", "epoch"])
def test_resume_continues_the_same_run_exactly(sampling: str, tmp_path: Path) -> None:
    """Train 20 steps; throw away the step-20 checkpoint; resume from step 10 to 20 again.

    The resumed run must repeat the same steps with the same learning rates and data, and end
    with bitwise-identical weights, whichever way the training windows are sampled.
    """
    config = tiny_config(tmp_path, max_steps=20, checkpoint_interval=10, keep_checkpoints=5)
    config.data.sampling = sampling  # type: ignore[assignment]
    prepare_run(config)
    train_model(config, quiet=True)
    _, _, straight = load_trained_model(config.run_dir)
    lrs_straight = [r["lr"] for r in read_metrics(config.run_dir / "metrics.jsonl") if "lr" in r]

    shutil.rmtree(latest_checkpoint(config.run_dir))
    assert latest_checkpoint(config.run_dir).name == "step_000010"
    result = train_model(config, resume=True, quiet=True)
    assert result.steps == 20
    lrs_resumed = [r["lr"] for r in read_metrics(config.run_dir / "metrics.jsonl") if "lr" in r]
    assert lrs_resumed == lrs_straight  # the log was cut at step 10 and continued, not doubled

    _, _, resumed = load_trained_model(config.run_dir)
    for (name, p), q in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name


def test_corrupted_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, max_steps=10, checkpoint_interval=10)
    prepare_run(config)
    train_model(config, quiet=True)
    ckpt = latest_checkpoint(config.run_dir)
    weights = ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ScratchLMError, match="corrupted"):
        load_trained_model(config.run_dir)
    weights.write_bytes(bytes(data[:100]))
    with pytest.raises(ScratchLMError, match=r"checksum|truncated|corrupted"):
        load_trained_model(config.run_dir)


def test_existing_run_is_never_overwritten_silently(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, max_steps=10, checkpoint_interval=10)
    prepare_run(config)
    train_model(config, quiet=True)
    before = (latest_checkpoint(config.run_dir) / "model.safetensors").read_bytes()
    with pytest.raises(ScratchLMError, match="--resume"):
        prepare_run(config)
    assert (latest_checkpoint(config.run_dir) / "model.safetensors").read_bytes() == before
    copy = tmp_path / "copy"
    shutil.copytree(config.run_dir, copy)
    prepare_run(config, overwrite=True)
    assert not list_checkpoints(config.run_dir)
