"""Training on 2 CPU processes over gloo (train/distributed.py): DDP takes the same steps as one
process with the whole batch, and `torchrun ... scratchlm train --train.parallel ddp` runs end
to end with only rank 0 printing and writing."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig
from scratchlm.train.config import TrainConfig
from scratchlm.train.distributed import mean_over_ranks, no_sync_context, wrap_data_parallel
from scratchlm.train.optimizer import build_optimizer
from scratchlm.train.ranks import Ranks
from scratchlm.train.step import accumulate_gradients, clip_grad_norm, model_loss
from torchrun_jobs import REPO, free_port, scratchlm, torchrun_train

STEPS, ACCUM, MICRO, BLOCK = 5, 2, 2, 16


def _batches() -> torch.Tensor:
    """(steps, accum, 2 * micro, block + 1) token ids: every step's whole batch, fixed."""
    return torch.randint(
        0, 64, (STEPS, ACCUM, 2 * MICRO, BLOCK + 1), generator=torch.Generator().manual_seed(0)
    )


def _train(rank: int, world_size: int, out: Path) -> None:
    """5 steps of accumulation and clipping; rank r of world_size takes its share of each
    micro-batch (one process takes it whole). Saves the final weights."""
    torch.set_num_threads(1)
    # float64: the summation orders of 1 and 2 processes differ, and Adam divides tiny
    # gradients by their own size, which would blow float32's rounding past 1e-6.
    torch.set_default_dtype(torch.float64)
    ranks = Ranks(rank, world_size)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32))
    tc = TrainConfig(learning_rate=1e-2, grad_clip=0.05, warmup_steps=0)
    optimizer = build_optimizer(model, tc)
    loss_fn = model_loss(model, tc)
    wrapped = None
    if world_size > 1:
        loss_fn = wrapped = wrap_data_parallel(model, loss_fn, torch.device("cpu"))
    share = 2 * MICRO // world_size
    batches = _batches()[:, :, rank * share : (rank + 1) * share]
    losses = []
    for step in range(STEPS):
        micro = iter(batches[step])

        def next_batch(micro: Iterator[torch.Tensor] = micro) -> tuple[torch.Tensor, torch.Tensor]:
            b = next(micro)
            return b[:, :-1], b[:, 1:]

        loss = accumulate_gradients(
            loss_fn,
            next_batch,
            ACCUM,
            torch.autocast("cpu", enabled=False),
            no_sync_context(wrapped),
        )
        losses.append(float(mean_over_ranks(loss, ranks)))
        assert clip_grad_norm(model, tc.grad_clip) > tc.grad_clip  # clipping really acts
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.save({"weights": model.state_dict(), "losses": losses}, out / f"w{world_size}_r{rank}.pt")


def _ddp_worker(rank: int, port: int, out: Path) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        _train(rank, 2, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_ddp_on_two_ranks_equals_one_process_with_the_whole_batch(tmp_path: Path) -> None:
    try:
        _train(0, 1, tmp_path)
    finally:
        torch.set_default_dtype(torch.float32)
    mp.start_processes(_ddp_worker, args=(free_port(), tmp_path), nprocs=2, start_method="fork")
    single = torch.load(tmp_path / "w1_r0.pt")
    for rank in range(2):
        ddp = torch.load(tmp_path / f"w2_r{rank}.pt")
        assert ddp["losses"] == pytest.approx(single["losses"], abs=1e-6)
        for name, weight in single["weights"].items():
            torch.testing.assert_close(ddp["weights"][name], weight, atol=1e-6, rtol=0)
    # The steps moved the weights: the test compares trained models, not two initial ones.
    torch.manual_seed(0)
    initial = GPT(ModelConfig(vocab_size=64, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32))
    moved = initial.state_dict()["transformer.h.0.attn.c_attn.weight"].double()
    assert not torch.allclose(moved, single["weights"]["transformer.h.0.attn.c_attn.weight"])


TINY = ["--config", "configs/tiny.toml", "--train.parallel", "ddp", "--out_dir", "runs",
        "--train.max_steps", "6", "--train.eval_interval", "3", "--train.checkpoint_interval", "3",
        "--sample.max_new_tokens", "4"]  # fmt: skip


def test_torchrun_ddp_trains_end_to_end_and_one_process_resumes_it(tmp_path: Path) -> None:
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    result = torchrun_train(tmp_path, *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    both = result.stdout + result.stderr
    assert "terminate called" not in both and "Traceback" not in both
    # Only rank 0 prints: each line once.
    assert result.stdout.count("done: 6 steps") == 1
    assert result.stdout.count("data: ") == 1
    assert result.stderr.count("step      6: train loss") == 1
    assert "x 2 ranks" in result.stderr  # 2 ranks' tokens per step
    run = tmp_path / "runs" / "tiny"
    records = [
        line for line in (run / "metrics.jsonl").read_text().splitlines() if '"val_loss"' in line
    ]
    assert len(records) == 2  # rank 0's two evaluations, not one per rank
    assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1].endswith("6")
    # The ordinary single-process tools read the checkpoint, and one process resumes the run.
    generated = scratchlm(
        tmp_path, "generate", str(run), "--prompt", "def ", "--max-new-tokens", "4"
    )
    assert generated.returncode == 0, generated.stderr[-2000:]
    resumed = scratchlm(
        tmp_path, "train", "--resume", str(run), "--train.max_steps", "8", "--no-samples"
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout and "done: 8 steps" in resumed.stdout


def test_world_size_not_dividing_the_batch_is_one_line_from_rank_0(tmp_path: Path) -> None:
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    # 768 tokens = 3 micro-batches of 8 x 32: fine for one process, not for 2 ranks.
    result = torchrun_train(tmp_path, *TINY, "--train.batch_tokens", "768")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "2 ranks" in lines[0] and "try 1,024" in lines[0], result.stderr[
        -2000:
    ]
    assert "[rank" not in result.stderr  # no rank's traceback
