"""Training and evaluation batches from token shards: random or by epoch, per rank, resumable.

A window is block_size + 1 consecutive tokens of one shard; x is its first block_size tokens and
y its last block_size (x shifted left by one), so the model predicts every next token. Windows
never run from one shard into the next. Two ways to pick training windows (`data.sampling`):

- "random": each window starts anywhere in any shard, uniformly and with replacement, drawn
  from a seeded torch.Generator. Windows overlap; some text is seen twice before other text
  once, which does not matter when the data is much bigger than the training run.
- "epoch": the shards are cut into windows starting at 0, T, 2T, ... (T = block_size; the last
  target of a window is the first input of the next), so one pass over them predicts every
  token once. Epoch e visits them in its own permutation, seeded by (seed, e), and the stream
  of windows is epoch 0's permutation, then epoch 1's, ...: a batch may straddle two epochs,
  so no window is ever dropped.

Ranks (distributed training). Every rank builds the same stream, from the same seed; each step
takes world_size * batch_size windows from it and rank r keeps the r-th batch_size of them. So
the ranks never share a draw (by epoch: never share a window within an epoch), and together
they get exactly what one process with world_size times the batch would get.

Resuming. state_dict() holds the generator state (random), the epoch and the cursor (the number
of windows of the epoch's permutation already taken, by all ranks together) and the seed, as
tensors for a safetensors checkpoint. A loader restored from it continues with exactly the
batches the uninterrupted one would have produced.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from scratchlm.core.errors import ScratchLMError
from scratchlm.data.shards import TokenShard, open_shard

Sampling = Literal["random", "epoch"]
SAMPLING_MODES: tuple[Sampling, Sampling] = ("random", "epoch")
_STATE_KEYS = ("sampling", "seed", "epoch", "cursor", "windows_per_epoch", "generator_state")


@dataclass(frozen=True)
class WindowIndex:
    """Numbers the windows of all shards 0, 1, 2, ...: shard 0's in order, then shard 1's, ..."""

    counts: np.ndarray  # (num_shards,) how many windows each shard holds
    stride: int  # tokens from one window's start to the next one's

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard, start token) of each window number in `ids`."""
        ends = np.cumsum(self.counts)
        shard = np.searchsorted(ends, ids, side="right")
        first = ends - self.counts  # the number of each shard's first window
        return shard, (ids - first[shard]) * self.stride


class TokenBatches:
    def __init__(
        self,
        shards: Sequence[str | os.PathLike[str]],
        block_size: int,
        batch_size: int,
        seed: int,
        sampling: Sampling = "random",
        rank: int = 0,
        world_size: int = 1,
        device: str = "cpu",
    ) -> None:
        if block_size < 1 or batch_size < 1:
            raise ScratchLMError(
                f"block_size and batch_size must be at least 1, got {block_size} and {batch_size}"
            )
        if sampling not in SAMPLING_MODES:
            raise ScratchLMError(
                f"data.sampling must be one of {', '.join(SAMPLING_MODES)}, got {sampling!r}"
            )
        if not 0 <= rank < world_size:
            raise ScratchLMError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if not shards:
            raise ScratchLMError("no token shards to read; prepare the data first")
        self.shards: list[TokenShard] = [open_shard(path) for path in shards]
        self.block_size = block_size
        self.batch_size = batch_size
        self.sampling: Sampling = sampling
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)

        lengths = np.array([shard.num_tokens for shard in self.shards], dtype=np.int64)
        # Random windows may start at any token that leaves block_size more after it.
        self.random_windows = WindowIndex(np.maximum(lengths - block_size, 0), stride=1)
        # Epoch windows start every block_size tokens, and need one token more for the target.
        self.epoch_windows = WindowIndex(np.maximum((lengths - 1) // block_size, 0), block_size)
        if self.random_windows.total == 0:
            where = str(self.shards[0].path) if len(self.shards) == 1 else "each shard"
            raise ScratchLMError(
                f"{where} has {int(lengths.max()):,} tokens, but one training window needs "
                f"model.block_size + 1 = {block_size + 1}; use a smaller model.block_size or "
                "more text"
            )

        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.cursor = 0  # windows of this epoch's permutation already taken (by all ranks)
        self._order: np.ndarray | None = None  # the permutation of self._order_epoch
        self._order_epoch = -1

    @property
    def num_tokens(self) -> int:
        return sum(shard.num_tokens for shard in self.shards)

    @property
    def windows_per_epoch(self) -> int:
        return self.epoch_windows.total

    # ------------------------------------------------------------------------------ batches

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), both (batch_size, block_size) int64; y is x shifted left by one token."""
        step = self.batch_size * self.world_size  # windows taken by all ranks together
        if self.sampling == "random":
            ids = torch.randint(self.random_windows.total, (step,), generator=self.generator)
            index, chosen = self.random_windows, ids.numpy()
        else:
            index, chosen = self.epoch_windows, self._take_from_epochs(step)
        mine = chosen[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return self._windows(*index.locate(mine))

    def _take_from_epochs(self, count: int) -> np.ndarray:
        taken = []
        while count:
            order = self._epoch_order()
            part = order[self.cursor : self.cursor + count]
            taken.append(part)
            count -= len(part)
            self.cursor += len(part)
            if self.cursor == len(order):
                self.epoch, self.cursor = self.epoch + 1, 0
        return np.concatenate(taken)

    def _epoch_order(self) -> np.ndarray:
        if self._order is None or self._order_epoch != self.epoch:
            # Seeded by (seed, epoch) alone, so any epoch's order can be rebuilt on resume.
            # (& turns a negative seed into the non-negative number numpy needs.)
            rng = np.random.default_rng([self.seed & (2**64 - 1), self.epoch])
            self._order = rng.permutation(self.epoch_windows.total)
            self._order_epoch = self.epoch
        return self._order

    def eval_batches(self, num_batches: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The same num_batches batches on every call: windows evenly spread over the shards.

        They do not touch the training state, so validation loss is measured on identical data
        at every step and across resumes. With several ranks, batch i goes to rank
        i % world_size, so together the ranks evaluate exactly the windows one process would.
        """
        count = num_batches * self.batch_size
        ids = np.linspace(0, self.random_windows.total - 1, num=count).round().astype(np.int64)
        for i in range(self.rank, num_batches, self.world_size):
            batch = ids[i * self.batch_size : (i + 1) * self.batch_size]
            yield self._windows(*self.random_windows.locate(batch))

    def _windows(
        self, shard_ids: np.ndarray, starts: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # One fancy-index read of (rows, T + 1) tokens per shard, copied out of the memory map.
        offsets = np.arange(self.block_size + 1, dtype=np.int64)
        windows = np.empty((len(starts), self.block_size + 1), dtype=np.int64)
        for shard in np.unique(shard_ids):
            rows = np.flatnonzero(shard_ids == shard)
            windows[rows] = self.shards[shard].tokens[starts[rows, None] + offsets]
        both = torch.from_numpy(windows)
        x, y = both[:, :-1].contiguous(), both[:, 1:].contiguous()
        if self.device.type == "cuda":
            # Pinned host memory lets the copy overlap with the GPU still running the last step.
            return (
                x.pin_memory().to(self.device, non_blocking=True),
                y.pin_memory().to(self.device, non_blocking=True),
            )
        return x.to(self.device), y.to(self.device)

    # ------------------------------------------------------------------------------ resuming

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only, so it can go into a safetensors checkpoint."""
        numbers = {
            "sampling": SAMPLING_MODES.index(self.sampling),
            "seed": self.seed,
            "epoch": self.epoch,
            "cursor": self.cursor,
            "windows_per_epoch": self.windows_per_epoch,
        }
        state = {key: torch.tensor([value], dtype=torch.int64) for key, value in numbers.items()}
        state["generator_state"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise ScratchLMError(
                f"the checkpoint has no data loader state ({', '.join(missing)} missing); it was "
                "not saved by this version of scratchlm"
            )
        sampling = SAMPLING_MODES[int(state["sampling"])]
        if sampling != self.sampling:
            raise ScratchLMError(
                f"the checkpoint's data loader sampled windows by {sampling!r}, but "
                f"data.sampling is {self.sampling!r}; set it back to continue the run"
            )
        windows = int(state["windows_per_epoch"])
        if sampling == "epoch" and windows != self.windows_per_epoch:
            raise ScratchLMError(
                f"the training data changed since the checkpoint ({windows:,} windows per "
                f"epoch then, {self.windows_per_epoch:,} now); an epoch cannot continue over "
                "different data or a different model.block_size"
            )
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.cursor = int(state["cursor"])
        self.generator.set_state(state["generator_state"].detach().to("cpu", torch.uint8))
        self._order = None
