"""Sharded training on 2 CPU processes over gloo (train/sharding.py): tensor parallelism computes
what one process computes (logits, gradients, weights after steps), FSDP2 takes the steps DDP
takes, and the checkpoint helpers gather shards into whole tensors and split them back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import safetensors
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.tensor import DTensor

from scratchlm.core.errors import ScratchLMError
from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig
from scratchlm.runs.checkpoint import load_model_weights
from scratchlm.train.config import TrainConfig
from scratchlm.train.distributed import TrainingLoss, no_sync_context, wrap_data_parallel
from scratchlm.train.optimizer import build_optimizer
from scratchlm.train.sharding import (
    MeshShape,
    apply_fsdp,
    apply_tensor_parallel,
    build_mesh,
    check_tensor_parallel,
    gather_model_tensors,
    gather_optimizer_state,
    mesh_shape,
    part_major,
    rank_major,
)
from scratchlm.train.step import accumulate_gradients, clip_grad_norm, model_loss
from torchrun_jobs import REPO, free_port, scratchlm, torchrun_train

STEPS, ACCUM, MICRO, BLOCK = 4, 2, 2, 16

GPT2_STYLE = dict(vocab_size=64, block_size=BLOCK, n_layer=2, n_head=4, n_embd=32)
LLAMA_STYLE = dict(
    GPT2_STYLE,
    n_kv_head=2,
    pos_encoding="rope",
    norm="rmsnorm",
    mlp="swiglu",
    bias=False,
    tie_embeddings=False,
    qk_norm=True,
)
CONFIGS = {"gpt2": GPT2_STYLE, "llama": LLAMA_STYLE}


def _batches() -> torch.Tensor:
    """(steps, accum, 2 * micro, block + 1) token ids: every step's whole batch, fixed."""
    return torch.randint(
        0, 64, (STEPS, ACCUM, 2 * MICRO, BLOCK + 1), generator=torch.Generator().manual_seed(0)
    )


def _train(rank: int, world_size: int, mode: str, arch: str, optimizer: str, out: Path) -> None:
    """STEPS steps of accumulation and clipping in `mode` (one, ddp, fsdp, tp); saves the
    first step's logits and gradients, the losses and the final weights, all whole."""
    torch.set_num_threads(1)
    # float64: the summation orders of 1 and 2 processes differ, and Adam divides tiny
    # gradients by their own size, which would blow float32's rounding past the tolerance.
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    model = GPT(ModelConfig(**CONFIGS[arch]))
    tc = TrainConfig(learning_rate=1e-2, grad_clip=0.05, warmup_steps=0, optimizer=optimizer)
    loss_fn = model_loss(model, tc)
    no_sync = no_sync_context(None)
    tp, dp = 1, world_size
    if mode == "ddp":
        loss_fn = wrapped = wrap_data_parallel(model, loss_fn, torch.device("cpu"))
        no_sync = no_sync_context(wrapped)
    elif mode in ("fsdp", "tp", "fsdp+tp"):
        # fsdp+tp: 4 ranks as 2 data-parallel groups of 2 tensor-parallel ranks.
        shape = mesh_shape(mode.split("+")[0], 2 if mode == "fsdp+tp" else 0, world_size)
        mesh = build_mesh(shape, torch.device("cpu"))
        tp, dp = shape.tp, shape.dp
        if tp > 1:
            apply_tensor_parallel(model, mesh)
        if mode != "tp":
            root = TrainingLoss(model, loss_fn)
            apply_fsdp(model, root, mesh, reshard_after_forward=True, param_dtype=None)
            loss_fn = root
            no_sync = no_sync_context(root)
    opt = build_optimizer(model, tc)
    # Tensor-parallel ranks of a group read the same batch; data-parallel groups their share.
    share, dp_rank = 2 * MICRO // dp, rank // tp
    batches = _batches()[:, :, dp_rank * share : (dp_rank + 1) * share]
    losses, norms, first_logits, first_grads = [], [], None, None
    for step in range(STEPS):
        micro = iter(batches[step])

        def next_batch(micro=micro):  # type: ignore[no-untyped-def]
            b = next(micro)
            return b[:, :-1], b[:, 1:]

        if step == 0 and mode in ("one", "tp"):  # FSDP's model runs only inside its root
            with torch.no_grad():
                first_logits, _ = model(batches[0, 0][:, :-1])
        loss = accumulate_gradients(
            loss_fn, next_batch, ACCUM, torch.autocast("cpu", enabled=False), no_sync
        )
        if world_size > 1:  # the mean over ranks (equal losses within a TP group)
            dist.all_reduce(loss)
            loss = loss / world_size
        losses.append(float(loss))
        if step == 0:
            first_grads = {
                name: grad.detach().clone() for name, grad in _whole_grads(model, tp).items()
            }
        norms.append(clip_grad_norm(model, tc.grad_clip))
        assert norms[-1] > tc.grad_clip  # clipping really acts
        opt.step()
        opt.zero_grad(set_to_none=True)
    weights = gather_model_tensors(model, tp)
    opt_state = gather_optimizer_state(opt, model, tp)
    torch.save(
        {
            "weights": weights,
            "losses": losses,
            "norms": norms,
            "logits": first_logits.full_tensor()
            if isinstance(first_logits, DTensor)
            else first_logits,
            "grads": first_grads,
            "moments": {k: v for k, v in opt_state["state"].items()},
        },
        out / f"{mode}_r{rank}.pt",
    )


def _whole_grads(model: GPT, tp: int) -> dict[str, torch.Tensor]:
    from scratchlm.train.sharding import stacked_rows

    stacked = stacked_rows(model) if tp > 1 else {}
    grads = {}
    for name, p in model.named_parameters():
        g = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
        grads[name] = part_major(g, stacked[name], tp) if name in stacked else g
    return grads


def _worker(
    rank: int, port: int, world_size: int, mode: str, arch: str, optimizer: str, out: Path
) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        _train(rank, world_size, mode, arch, optimizer, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _run(mode: str, arch: str, optimizer: str, out: Path) -> None:
    if mode == "one":
        try:
            _train(0, 1, mode, arch, optimizer, out)
        finally:
            torch.set_default_dtype(torch.float32)
        return
    ranks = 4 if mode == "fsdp+tp" else 2
    mp.start_processes(
        _worker,
        args=(free_port(), ranks, mode, arch, optimizer, out),
        nprocs=ranks,
        start_method="fork",
    )


def _assert_same_weights(
    got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], atol: float
) -> None:
    assert got.keys() == want.keys()
    for name, weight in want.items():
        torch.testing.assert_close(got[name], weight, atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_tensor_parallel_on_two_ranks_equals_one_process(
    tmp_path: Path, arch: str, optimizer: str
) -> None:
    _run("one", arch, optimizer, tmp_path)
    _run("tp", arch, optimizer, tmp_path)
    one = torch.load(tmp_path / "one_r0.pt")
    for rank in range(2):
        tp = torch.load(tmp_path / f"tp_r{rank}.pt")
        torch.testing.assert_close(tp["logits"], one["logits"], atol=1e-5, rtol=0)
        _assert_same_weights(tp["grads"], one["grads"], atol=1e-5)
        assert tp["norms"] == pytest.approx(one["norms"], abs=1e-5)
        assert tp["losses"] == pytest.approx(one["losses"], abs=1e-5)
        _assert_same_weights(tp["weights"], one["weights"], atol=1e-5)
    # The steps moved the weights: the test compares trained models, not two initial ones.
    torch.manual_seed(0)
    initial = GPT(ModelConfig(**CONFIGS[arch])).state_dict()["transformer.h.0.attn.c_attn.weight"]
    assert not torch.allclose(
        initial.double(), one["weights"]["transformer.h.0.attn.c_attn.weight"]
    )


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_fsdp_on_two_ranks_equals_ddp(tmp_path: Path, optimizer: str) -> None:
    _run("ddp", "llama", optimizer, tmp_path)
    _run("fsdp", "llama", optimizer, tmp_path)
    ddp = torch.load(tmp_path / "ddp_r0.pt")
    for rank in range(2):
        fsdp = torch.load(tmp_path / f"fsdp_r{rank}.pt")
        assert fsdp["losses"] == pytest.approx(ddp["losses"], abs=1e-5)
        _assert_same_weights(fsdp["weights"], ddp["weights"], atol=1e-5)
        # The gathered optimizer state is the whole state, as a checkpoint needs it.
        for index, moments in ddp["moments"].items():
            for key, value in moments.items():
                if isinstance(value, torch.Tensor):
                    torch.testing.assert_close(
                        fsdp["moments"][index][key], value, atol=1e-5, rtol=1e-5
                    )


@pytest.mark.slow  # 4 processes on the test machine's 2 cores
def test_fsdp_and_tensor_parallel_on_a_2d_mesh_of_four_ranks_equal_one_process(
    tmp_path: Path,
) -> None:
    _run("one", "llama", "adamw", tmp_path)
    _run("fsdp+tp", "llama", "adamw", tmp_path)
    one = torch.load(tmp_path / "one_r0.pt")
    for rank in range(4):
        mesh2d = torch.load(tmp_path / f"fsdp+tp_r{rank}.pt")
        _assert_same_weights(mesh2d["grads"], one["grads"], atol=1e-5)
        assert mesh2d["losses"] == pytest.approx(one["losses"], abs=1e-5)
        _assert_same_weights(mesh2d["weights"], one["weights"], atol=1e-5)


def test_rank_major_reorders_stacked_rows_and_part_major_undoes_it() -> None:
    t = torch.arange(8.0)[:, None]  # rows: q q q q k k v v
    reordered = rank_major(t, [4, 2, 2], 2)
    assert reordered.flatten().tolist() == [0, 1, 4, 6, 2, 3, 5, 7]
    assert torch.equal(part_major(reordered, [4, 2, 2], 2), t)


def test_mesh_shapes_and_bad_degrees_are_one_clear_line() -> None:
    assert mesh_shape("fsdp", 0, 4) == MeshShape(dp=4, tp=1)
    assert mesh_shape("fsdp", 2, 4) == MeshShape(dp=2, tp=2)
    assert mesh_shape("tp", 0, 2) == MeshShape(dp=1, tp=2)
    with pytest.raises(ScratchLMError, match=r"train.tp .3. must divide the number of ranks .4."):
        mesh_shape("fsdp", 3, 4)
    with pytest.raises(ScratchLMError, match=r"use --train.parallel fsdp --train.tp 2"):
        mesh_shape("tp", 2, 4)
    with pytest.raises(ScratchLMError, match=r"needs train.parallel = 'tp' or 'fsdp'"):
        mesh_shape("ddp", 2, 4)
    config = ModelConfig(**{**GPT2_STYLE, "n_head": 2, "n_embd": 32})
    check_tensor_parallel(config, 2)
    with pytest.raises(ScratchLMError, match=r"model.n_head = 2 into 4 equal parts"):
        check_tensor_parallel(config, 4)
    gqa = ModelConfig(**{**LLAMA_STYLE, "n_kv_head": 1})
    with pytest.raises(ScratchLMError, match=r"n_kv_head \(key/value heads\) = 1"):
        check_tensor_parallel(gqa, 2)


def test_fsdp_refuses_a_model_on_meta_without_init() -> None:
    with torch.device("meta"):
        model = GPT(ModelConfig(**GPT2_STYLE))
    with pytest.raises(ScratchLMError, match=r"never initialised .* meta device"):
        apply_fsdp(model, model, None, reshard_after_forward=True, param_dtype=None)  # type: ignore[arg-type]


TINY = ["--config", "configs/tiny.toml", "--out_dir", "runs", "--train.max_steps", "6",
        "--train.eval_interval", "3", "--train.checkpoint_interval", "3",
        "--train.log_interval", "3", "--train.keep_checkpoints", "3",
        "--sample.max_new_tokens", "4", "--no-samples"]  # fmt: skip


# Each runs three torchrun jobs (~25-40 s): both in `make test-slow` (CI runs it), to keep the
# default suite inside its 15 minutes; tests/test_distributed.py keeps a torchrun job there.
@pytest.mark.parametrize("parallel", ["fsdp", "tp"])
@pytest.mark.slow
def test_torchrun_sharded_run_trains_resumes_exactly_and_one_process_reads_it(
    tmp_path: Path, parallel: str
) -> None:
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    result = torchrun_train(tmp_path, *TINY, "--train.parallel", parallel)
    assert result.returncode == 0, result.stderr[-3000:]
    both = result.stdout + result.stderr
    assert "terminate called" not in both and "Traceback" not in both
    assert result.stdout.count("done: 6 steps") == 1  # rank 0 alone prints
    assert result.stderr.count("step      6: train loss") == 1
    run = tmp_path / "runs" / "tiny"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sum("val_loss" in r for r in records) == 2
    # Every rank's throughput is logged beside the job's.
    rates = [r["rank_tokens_per_s"] for r in records if "rank_tokens_per_s" in r]
    assert rates and all(len(r) == 2 and min(r) > 0 for r in rates)
    final = run / "checkpoints" / "step_000006"
    # A checkpoint of a split model holds whole tensors: one process reads and generates.
    one = GPT(ModelConfig(vocab_size=300, block_size=32, n_layer=2, n_head=2, n_embd=32))
    load_model_weights(final / "model.safetensors", one)
    generated = scratchlm(
        tmp_path, "generate", str(run), "--prompt", "def ", "--max-new-tokens", "4"
    )
    assert generated.returncode == 0, generated.stderr[-2000:]
    # Resuming from step 3 under the same job arrives at the same step 6, to the bit.
    (tmp_path / "again").mkdir()
    shutil.copytree(run, tmp_path / "again" / "tiny")
    shutil.rmtree(tmp_path / "again" / "tiny" / "checkpoints" / "step_000006")
    resumed = torchrun_train(
        tmp_path, "--resume", "again/tiny", "--train.parallel", parallel, "--no-samples"
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("resuming from") == 1
    again = tmp_path / "again" / "tiny" / "checkpoints" / "step_000006"
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert _tensors_and_metadata(again / name) == _tensors_and_metadata(final / name), name
    # And one plain process continues the run the two ranks saved.
    more = scratchlm(
        tmp_path, "train", "--resume", str(run), "--train.max_steps", "7", "--no-samples"
    )
    assert more.returncode == 0, more.stderr[-2000:]
    assert "done: 7 steps" in more.stdout


def _tensors_and_metadata(path: Path) -> tuple[dict[str, bytes], dict[str, str]]:
    """A safetensors file's tensors, as bytes (bitwise), and its metadata (whose order in the
    header varies from one write to the next)."""
    with safetensors.safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k).numpy().tobytes() for k in f.keys()}  # noqa: SIM118
        return tensors, f.metadata() or {}


def test_tensor_parallel_degree_not_dividing_the_heads_is_one_line_from_rank_0(
    tmp_path: Path,
) -> None:
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    result = torchrun_train(tmp_path, *TINY, "--train.parallel", "tp", "--model.n_head", "1")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr[-2000:]
    assert "model.n_head = 1 into 2 equal parts" in lines[0]
    assert "[rank" not in result.stderr  # no rank's traceback (torchrun reports the exit code)
