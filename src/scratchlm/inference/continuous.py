"""Continuous batching: requests join the running batch at the next step and leave when done.

    batcher = ContinuousBatcher(model, max_batch=8, stop_ids={eos})
    rid = batcher.add(prompt_ids, RowSettings(max_new_tokens=64, temperature=0))
    while batcher.has_work:
        for event in batcher.step():      # one token for every running row
            ...event.rid, event.token, event.finish

A server cannot wait for a batch to drain before starting the next request, as BatchGenerator
does: requests arrive at any time and end at different lengths. Here every row is a sequence
of its own in one KV cache (KVCache.independent_rows): a new request is prefilled alone into a
free row, then each step feeds every running row its last token at its own position, and a
row that ends frees its slot at once. The running rows are kept in rows 0..n-1 (a row that
ends is replaced by the last one), so a step reads only the rows in use.

Each row gets exactly the tokens it would get alone: its prefill is the single-prompt prefill,
a decode step's attention reads its own slots only (the others are masked), and it samples
from its own generator seeded with its seed, with its own sampling settings. A row ends at a
stop id ("stop"), at max_new_tokens or when the context is full ("length": the last token
sampled is the one at position block_size - 1), or when cancelled.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from scratchlm.core.errors import ScratchLMError
from scratchlm.inference.config import check_sampling_args
from scratchlm.inference.sampling import apply_repetition_penalty, draw, filtered_probs
from scratchlm.model import GPT

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class RowSettings:
    """How one row samples, and how long it may run."""

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None  # None: a fresh random seed
    top_logprobs: int = 0  # the most likely alternatives given with each token (0: none)

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise ScratchLMError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.top_logprobs < 0:
            raise ScratchLMError(f"top_logprobs must be >= 0, got {self.top_logprobs}")
        check_sampling_args(self.temperature, self.top_k, self.top_p, self.repetition_penalty)


@dataclass(frozen=True)
class TokenLogprob:
    """A sampled token and log p(token) before temperature (float32 log-softmax of the logits
    the sampler saw, after the repetition penalty); `top`: the top_logprobs most likely
    (token, logprob) pairs, best first."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class RowEvent:
    """What one step did to one row: a new token, an end (finish set), or both."""

    rid: int
    token: TokenLogprob | None  # None when the row ended without one (it sampled a stop id)
    finish: FinishReason | None = None


@dataclass
class _Row:
    rid: int
    prompt: list[int]
    settings: RowSettings
    generator: torch.Generator
    limit: int  # new tokens it may sample: max_new_tokens, less if the context is shorter
    count: int = 0
    last: int = -1  # the token sampled last, fed at the next step
    cancelled: bool = False
    # (1, V) bool: the tokens the repetition penalty applies to; None without a penalty.
    seen: Tensor | None = None


class ContinuousBatcher:
    """The decoding engine of a server: rows join and leave between steps (see the module doc).

    max_batch: rows decoded together at most; more requests wait their turn (FIFO). stop_ids:
    the tokens that end a row (a chat model's end of turn); they are never returned.
    """

    def __init__(
        self, model: GPT, max_batch: int = 8, stop_ids: Collection[int] = (), cache_len: int = 256
    ) -> None:
        if max_batch < 1:
            raise ScratchLMError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model
        self.max_batch = max_batch
        self.stop_ids = frozenset(stop_ids)
        self.block_size = model.config.block_size
        self.device = model.lm_head.weight.device
        # Slots grow with the longest row (KVCache.grow): SmolLM2's whole context would be
        # 380 MB a row, most of it never used.
        with torch.inference_mode():
            self.cache = model.new_kv_cache(max_batch, max_len=min(cache_len, self.block_size))
        self.cache.independent_rows()
        self.rows: list[_Row] = []  # running, row i in cache row i
        self.waiting: deque[_Row] = deque()
        self._next_rid = 0

    @property
    def has_work(self) -> bool:
        return bool(self.rows or self.waiting)

    @property
    def running(self) -> int:
        return len(self.rows)

    def add(self, prompt_ids: Sequence[int], settings: RowSettings) -> int:
        """Queue a prompt; it joins at the next step with a free row. Returns its id."""
        settings.check()
        prompt = list(prompt_ids)
        vocab = self.model.config.vocab_size
        if not prompt:
            raise ScratchLMError("a prompt is empty; give at least one token")
        if len(prompt) > self.block_size - 1:
            raise ScratchLMError(
                f"the prompt is {len(prompt)} tokens but the context holds {self.block_size}, "
                "with room for one new token; shorten it"
            )
        if bad := [t for t in prompt if not 0 <= t < vocab]:
            raise ScratchLMError(f"token id {bad[0]} is outside the vocabulary (size {vocab})")
        generator = torch.Generator(device=self.device)
        if settings.seed is None:
            generator.seed()
        else:
            generator.manual_seed(settings.seed)
        limit = min(settings.max_new_tokens, self.block_size - len(prompt))
        rid = self._next_rid
        self._next_rid += 1
        seen = None
        if settings.repetition_penalty != 1.0:
            seen = torch.zeros(1, vocab, dtype=torch.bool, device=self.device)
            seen[0, prompt] = True
        self.waiting.append(_Row(rid, prompt, settings, generator, limit, seen=seen))
        return rid

    def cancel(self, rid: int) -> None:
        """Stop row `rid` (waiting or running): it leaves at the next step, with no event."""
        for row in (*self.rows, *self.waiting):
            if row.rid == rid:
                row.cancelled = True

    @torch.inference_mode()
    def step(self) -> list[RowEvent]:
        """Admit waiting rows into free slots, then give every running row one token."""
        self._retire([row for row in self.rows if row.cancelled])
        self.waiting = deque(row for row in self.waiting if not row.cancelled)
        was_training = self.model.training
        self.model.eval()
        try:
            logits = self._next_logits()  # (n, V), one per running row
        finally:
            self.model.train(was_training)
        if logits is None:
            return []
        return self._sample(logits)

    def _next_logits(self) -> Tensor | None:
        decoding = len(self.rows)  # rows with a token to feed; new rows are prefilled
        parts = []
        if decoding:
            longest = int(self.cache.lengths[:decoding].max()) + 1  # type: ignore[index]
            if longest > self.cache.max_len:
                self.cache.grow(min(self.block_size, 2 * self.cache.max_len))
            last = torch.tensor([row.last for row in self.rows], device=self.device)
            view = self.cache.first_rows(decoding)
            logits, _ = self.model(last[:, None], kv_cache=view, last_only=True)  # (n, 1, V)
            parts.append(logits[:, -1])
        while self.waiting and len(self.rows) < self.max_batch:
            row = self.waiting.popleft()
            b = len(self.rows)
            if len(row.prompt) > self.cache.max_len:
                self.cache.grow(min(self.block_size, max(2 * self.cache.max_len, len(row.prompt))))
            idx = torch.tensor([row.prompt], device=self.device)  # (1, T)
            logits, _ = self.model(idx, kv_cache=self.cache.row(b), last_only=True)  # (1, 1, V)
            assert self.cache.lengths is not None
            self.cache.lengths[b] = len(row.prompt)
            self.rows.append(row)
            parts.append(logits[:, -1])
        return torch.cat(parts) if parts else None

    def _sample(self, logits: Tensor) -> list[RowEvent]:
        rows = self.rows
        for b, row in enumerate(rows):
            if row.seen is not None:  # a repetition penalty
                penalty = row.settings.repetition_penalty
                logits[b] = apply_repetition_penalty(logits[b : b + 1], row.seen, penalty)[0]
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # (n, V)
        ids = [0] * len(rows)
        # Rows that sample alike are filtered together; each draws from its own generator.
        groups: dict[tuple[float, int, float], list[int]] = {}
        for b, row in enumerate(rows):
            s = row.settings
            groups.setdefault((s.temperature, s.top_k, s.top_p), []).append(b)
        for (temperature, top_k, top_p), members in groups.items():
            index = torch.tensor(members, device=self.device)
            if temperature == 0:
                for b, token in zip(members, logits[index].argmax(dim=-1).tolist(), strict=True):
                    ids[b] = token
                continue
            probs = filtered_probs(logits[index], temperature, top_k, top_p)
            for j, b in enumerate(members):
                ids[b] = int(draw(probs[j], rows[b].generator))
        chosen = logprobs.gather(1, torch.tensor(ids, device=self.device)[:, None])[:, 0].tolist()
        most = max(row.settings.top_logprobs for row in rows)
        best = logprobs.topk(most, dim=-1) if most else None

        events, ended = [], []
        for b, row in enumerate(rows):
            token = ids[b]
            if token in self.stop_ids:
                events.append(RowEvent(row.rid, None, "stop"))
                ended.append(row)
                continue
            top: tuple[tuple[int, float], ...] = ()
            if best is not None and row.settings.top_logprobs:
                k = row.settings.top_logprobs
                top = tuple(
                    zip(best.indices[b, :k].tolist(), best.values[b, :k].tolist(), strict=True)
                )
            row.count += 1
            row.last = token
            if row.seen is not None:
                row.seen[0, token] = True
            finish: FinishReason | None = "length" if row.count >= row.limit else None
            events.append(RowEvent(row.rid, TokenLogprob(token, chosen[b], top), finish))
            if finish:
                ended.append(row)
        self._retire(ended)
        return events

    def _retire(self, ended: list[_Row]) -> None:
        """Free the rows of `ended`: the last running row moves into each freed slot."""
        for row in ended:
            b = self.rows.index(row)
            last = len(self.rows) - 1
            if b != last:
                self.cache.move_row(last, b)
                self.rows[b] = self.rows[last]
            self.rows.pop()
            assert self.cache.lengths is not None
            self.cache.lengths[last] = 0
