"""Training on several processes with torch.distributed under torchrun: the process group, DDP,
and the collectives the loop needs (sharding.py splits the model itself: FSDP2 and TP).

torchrun starts one process per device and gives each RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous address in its environment. With train.parallel = "ddp" every process joins the
group (gloo on the CPU, NCCL on CUDA), trains its own copy of the model on its own windows of
the data (data/loader.py splits them), and DistributedDataParallel averages the gradients, so
N ranks with micro-batch b take the same steps as one process with batch N * b.

The rules a job keeps so it never hangs: every rank makes the same collective calls in the
same order (a decision one rank takes alone, like stopping, is first agreed on by all), rank 0
alone writes files and prints, and the group is torn down only after the model and optimizer
are released and every rank has reached the end (gloo aborts the process otherwise).
"""

from __future__ import annotations

import ctypes
import gc
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.fsdp import FSDPModule
from torch.nn.parallel import DistributedDataParallel

from scratchlm.core.errors import ScratchLMError
from scratchlm.core.messages import note
from scratchlm.train.ranks import Ranks, current_ranks
from scratchlm.train.sharding import fsdp_no_sync

T = TypeVar("T")


def launched_world_size() -> int:
    """How many processes torchrun started for this job (1 when not started by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@contextmanager
def distributed_job(parallel: str) -> Iterator[Ranks]:
    """The process group for the duration of a training command, and this process's place in it.

    parallel = "ddp", "fsdp" or "tp" under torchrun with several processes: join the group
    (gloo or NCCL, picked by whether CUDA is here), and at the end tear it down cleanly.
    Otherwise one plain process, rank 0 of 1. A job of several processes with parallel = "none" would train N
    copies writing the same files, so it is refused (cli/main.py prints it once, for the job).
    """
    world_size = launched_world_size()
    if parallel == "none" and world_size > 1:
        raise ScratchLMError(
            f"this command was started as {world_size} processes (torchrun), but "
            "train.parallel is 'none'; add --train.parallel ddp"
        )
    if parallel == "none" or world_size == 1:
        if parallel != "none":
            note(
                f"train.parallel = {parallel!r} but this is a single process (not started by "
                "torchrun); training as one process"
            )
        yield Ranks()
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    else:
        _return_freed_blocks_to_the_system()
    store, rank, world_size = next(dist.rendezvous("env://"))
    if os.environ.get("LOCAL_WORLD_SIZE") == str(world_size):
        # torchrun's restarts (--max-restarts) keep its store: each attempt takes keys of its
        # own, or a rank reads the dead attempt's addresses and never connects (torch 2.13).
        # One machine only: torchrun counts restarts per machine, so machines may disagree.
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"scratchlm/attempt_{attempt}", store)
    dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size)
    finished = False
    try:
        yield current_ranks()
        finished = True
    finally:
        # Whatever the ranks still hold (the model, the optimizer, DDP's buckets) goes before the
        # group does; a barrier waits for every rank, so none destroys the group under another.
        gc.collect()
        if finished:
            dist.barrier()
        dist.destroy_process_group()


# glibc's M_MMAP_THRESHOLD, and the size above which a block then always gets its own mapping.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 128 * 1024


def _return_freed_blocks_to_the_system() -> None:
    """Make glibc give large freed blocks back to the system at once (on the CPU).

    FSDP2 gathers a block's whole weights before it computes and frees them after. glibc
    raises its mmap threshold each time such a block is freed, so the next gathers come from
    the heap, and heap pages stay resident after free: every rank's peak grows back towards a
    whole model's (benchmarks/distributed.py measured 2.7 GiB vs 1.6 GiB on GPT-2 124M).
    Pinning the threshold keeps large blocks in their own mappings, unmapped when freed.
    Nothing to do where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        pass


def main_rank_first(ranks: Ranks, work: Callable[[], T]) -> T | None:
    """Run `work` on rank 0 while the other ranks wait, e.g. to prepare the run's files; they
    go on once it has succeeded, or exit quietly when it failed (rank 0 reports why)."""
    if not in_group(ranks):
        return work()
    result: T | None = None
    ok = torch.zeros(1, device=_collective_device())
    try:
        if ranks.is_main:
            result = work()
            ok += 1
    finally:
        # Reached by rank 0 on failure too, so the others learn of it instead of hanging.
        dist.broadcast(ok, src=0)
    if not ok.item():
        raise SystemExit(2)
    return result


def _collective_device() -> torch.device:
    """Where a tensor for a collective must live: NCCL moves only CUDA tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def in_group(ranks: Ranks) -> bool:
    """Whether there are other ranks to talk to: a process group of several is set up (a
    Ranks of several without one, as tests build, computes as one process)."""
    return ranks.world_size > 1 and dist.is_available() and dist.is_initialized()


def barrier(ranks: Ranks) -> None:
    """Wait until every rank is here (nothing to wait for in a single process)."""
    if in_group(ranks):
        dist.barrier()


class TrainingLoss(torch.nn.Module):
    """The model with its training loss as forward(x, y): DDP synchronises the gradients of
    what goes through forward, and the loss can be the model's fused one (training_loss)."""

    def __init__(self, model: torch.nn.Module, loss: Callable[[Tensor, Tensor], Tensor]) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.loss(x, y)


def wrap_data_parallel(
    model: torch.nn.Module, loss: Callable[[Tensor, Tensor], Tensor], device: torch.device
) -> DistributedDataParallel:
    """The loss of `model` under DDP: its gradients averaged over the ranks at backward."""
    device_ids = [device.index] if device.type == "cuda" else None
    # gradient_as_bucket_view: .grad are views into the all-reduce buckets, not a second copy
    # of every gradient (4 bytes a parameter less at fp32).
    return DistributedDataParallel(
        TrainingLoss(model, loss), device_ids=device_ids, gradient_as_bucket_view=True
    )


def no_sync_context(
    wrapped: torch.nn.Module | None,
) -> Callable[[], AbstractContextManager[object]]:
    """What the micro-steps but the last of an accumulated step run under: DDP's or FSDP2's
    no_sync (the gradients add up locally; only the last backward all-reduces or
    reduce-scatters), or nothing."""
    if isinstance(wrapped, DistributedDataParallel):
        return wrapped.no_sync
    if isinstance(wrapped, FSDPModule):
        root = wrapped
        return lambda: fsdp_no_sync(root)
    return nullcontext


def mean_over_ranks(value: Tensor, ranks: Ranks) -> Tensor:
    """The mean of a scalar over all ranks (itself in a single process)."""
    if not in_group(ranks):
        return value
    total = value.detach().clone()
    dist.all_reduce(total)  # SUM: gloo has no AVG
    return total / ranks.world_size


def any_rank(flag: bool, ranks: Ranks, device: torch.device) -> bool:
    """True on every rank if it is true on any: ranks decide together (e.g. to stop), or the
    ones that go on wait forever for the ones that stopped."""
    if not in_group(ranks):
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast_from_main(value: float, ranks: Ranks) -> float:
    """Rank 0's `value` on every rank: a decision all ranks take on one number (is this the
    best validation loss?) must see the same number, to the bit."""
    if not in_group(ranks):
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def gather_values(value: float, ranks: Ranks) -> list[float]:
    """Every rank's `value`, in rank order, on every rank (e.g. each rank's tokens/s)."""
    if not in_group(ranks):
        return [value]
    tensor = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    gathered = [torch.zeros_like(tensor) for _ in range(ranks.world_size)]
    dist.all_gather(gathered, tensor)
    return [float(t.item()) for t in gathered]
