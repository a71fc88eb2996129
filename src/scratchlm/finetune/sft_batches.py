"""Batches of chat examples for SFT: packed rows, or length-bucketed padded rows.

Each example (conversations.ChatExample) first becomes its next-token pairs: inputs ids[:-1],
targets ids[1:] with -1 where the loss mask is off. A row of a batch holds such pairs:

    packing  several examples one after another in a row of exactly block_size positions, the
             rest of the row padding: little compute spent on padding. Examples are placed
             best-fit (the row with the least room that still fits), in an order shuffled
             anew each epoch.
    padding  one example a row, right-padded to the longest in its batch; a batch takes
             examples of similar length (sorted within windows of 64 batches) so padding is
             small, and batches come in a shuffled order.

Either way no target crosses from one example into the next (an example's first token is never
a target), so both give the same targets at the same (example, position). `documents` and
`positions` say where each position comes from; `attention_mask()` builds the block-diagonal
causal mask that keeps packed examples from seeing each other, for a model that accepts one
(with it, and positions restarting per example, packing computes exactly what padding does).

The order is a function of (seed, epoch) alone, so training resumes exactly from the epoch and
the index of the next batch.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from scratchlm.core.errors import ScratchLMError
from scratchlm.finetune.config import BATCH_MODES, BatchMode
from scratchlm.finetune.conversations import ChatExample

SORT_WINDOW = 64  # padding mode sorts by length within this many batches' worth of examples


@dataclass(frozen=True)
class SFTBatch:
    """One batch of rows, B x T."""

    inputs: Tensor  # (B, T) token ids; pad_id where no example is
    targets: Tensor  # (B, T) the next token to learn, or -1 (masked out, or padding)
    documents: Tensor  # (B, T) index of the example each position holds, -1 on padding
    positions: Tensor  # (B, T) position within that example (0 at its first token)

    @property
    def target_tokens(self) -> int:
        """How many targets count in the loss."""
        return int((self.targets >= 0).sum())

    def attention_mask(self) -> Tensor:
        """(B, 1, T, T) bool, True = may attend: causal, and only within the same example.
        A padding position sees only itself (a row with no visible key would make NaN)."""
        T = self.inputs.size(1)
        causal = torch.ones(T, T, dtype=torch.bool, device=self.inputs.device).tril()
        real = (self.documents >= 0)[:, :, None]  # (B, T, 1): padding shares no example
        same = (self.documents[:, :, None] == self.documents[:, None, :]) & real  # (B, T, T)
        itself = torch.eye(T, dtype=torch.bool, device=self.inputs.device)
        return ((same & causal) | itself)[:, None]

    def to(self, device: torch.device | str) -> SFTBatch:
        return SFTBatch(
            *(t.to(device) for t in (self.inputs, self.targets, self.documents, self.positions))
        )


def pack_rows(lengths: Sequence[int], block_size: int, order: Sequence[int]) -> list[list[int]]:
    """Examples (indices into `lengths`, in `order`) placed best-fit into rows of block_size
    positions: each goes to the fullest row it still fits in, or a new one."""
    rows: list[list[int]] = []
    # Rows by room left, (room, row index), sorted: the first entry with room >= n is the best fit.
    rooms: list[tuple[int, int]] = []
    for index in order:
        n = lengths[index]
        if n > block_size:
            raise ScratchLMError(
                f"example {index} has {n} positions but a row holds {block_size}; fit the "
                "conversations to block_size + 1 tokens first (ChatFormat.fit)"
            )
        at = bisect.bisect_left(rooms, (n, -1))
        if at == len(rooms):
            rows.append([index])
            room, row = block_size - n, len(rows) - 1
        else:
            room, row = rooms.pop(at)
            rows[row].append(index)
            room -= n
        if room > 0:
            bisect.insort(rooms, (room, row))
    return rows


def bucket_rows(lengths: Sequence[int], batch_size: int, order: Sequence[int]) -> list[list[int]]:
    """Examples (in `order`) grouped into batches of similar length: sorted by length within
    windows of SORT_WINDOW batches, then cut into batches of batch_size."""
    batches: list[list[int]] = []
    window = batch_size * SORT_WINDOW
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return batches


def collate(
    pairs: Sequence[tuple[list[int], list[int]]],
    rows: Sequence[Sequence[int]],
    width: int,
    pad_id: int = 0,
) -> SFTBatch:
    """Rows of examples (indices into `pairs`: each example's (inputs, targets)) laid out
    left to right, padded to `width` positions."""
    shape = (len(rows), width)
    inputs = torch.full(shape, pad_id, dtype=torch.long)
    targets = torch.full(shape, -1, dtype=torch.long)
    documents = torch.full(shape, -1, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for index in row:
            x, y = pairs[index]
            n = len(x)
            inputs[r, at : at + n] = torch.tensor(x)
            targets[r, at : at + n] = torch.tensor(y)
            documents[r, at : at + n] = index
            positions[r, at : at + n] = torch.arange(n)
            at += n
        if at > width:
            raise ScratchLMError(f"row {r} holds {at} positions, more than the width {width}")
    return SFTBatch(inputs, targets, documents, positions)


class SFTBatches:
    """The batches of one epoch after another, in an order fixed by (seed, epoch).

        batches = SFTBatches(examples, batch_size=8, block_size=256, mode="pack", seed=1)
        for index in range(batches.num_batches(epoch)):
            batch = batches.batch(epoch, index)   # resume: the same (epoch, index) again

    mode "pack": rows of exactly block_size; "pad": rows as long as the longest in the batch.
    """

    def __init__(
        self,
        examples: Sequence[ChatExample],
        batch_size: int,
        block_size: int,
        mode: BatchMode = "pack",
        seed: int = 0,
        pad_id: int = 0,
    ) -> None:
        if mode not in BATCH_MODES:
            raise ScratchLMError(f"unknown batching {mode!r}; use pack or pad")
        if batch_size < 1 or block_size < 1:
            raise ScratchLMError("batch_size and block_size must be at least 1")
        if not examples:
            raise ScratchLMError("no examples to batch")
        self.pairs = [example.inputs_and_targets() for example in examples]
        self.lengths = [len(x) for x, _ in self.pairs]
        too_long = [i for i, n in enumerate(self.lengths) if n > block_size]
        if too_long:
            raise ScratchLMError(
                f"{len(too_long)} examples are longer than block_size + 1 = {block_size + 1} "
                f"tokens (example {too_long[0]}: {self.lengths[too_long[0]] + 1}); fit them "
                "first with ChatFormat.fit(messages, block_size + 1)"
            )
        self.batch_size, self.block_size, self.mode = batch_size, block_size, mode
        self.seed, self.pad_id = seed, pad_id
        self._plan: tuple[int, list[list[list[int]]]] | None = None

    def plan(self, epoch: int) -> list[list[list[int]]]:
        """The epoch's batches, each a list of rows, each row the example indices in it."""
        if self._plan is not None and self._plan[0] == epoch:
            return self._plan[1]
        rng = random.Random(f"sft-batches:{self.seed}:{epoch}")
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        if self.mode == "pack":
            rows = pack_rows(self.lengths, self.block_size, order)
            rng.shuffle(rows)  # best-fit fills early rows with the order's first examples
            batches = [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        else:
            batches = [[[i] for i in b] for b in bucket_rows(self.lengths, self.batch_size, order)]
            rng.shuffle(batches)
        self._plan = (epoch, batches)
        return batches

    def num_batches(self, epoch: int) -> int:
        return len(self.plan(epoch))

    def batch(self, epoch: int, index: int) -> SFTBatch:
        rows = self.plan(epoch)[index]
        if self.mode == "pack":
            width = self.block_size
        else:
            width = max(sum(self.lengths[i] for i in row) for row in rows)
        return collate(self.pairs, rows, width, self.pad_id)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[SFTBatch]:
        """The epoch's batches from index `start` on."""
        for index in range(start, self.num_batches(epoch)):
            yield self.batch(epoch, index)

    def fill(self, epoch: int) -> float:
        """The share of the epoch's positions that hold an example, not padding."""
        batches = self.plan(epoch)
        used = sum(self.lengths)
        if self.mode == "pack":
            return used / (sum(len(b) for b in batches) * self.block_size)
        return used / sum(len(b) * max(self.lengths[r[0]] for r in b) for b in batches)
