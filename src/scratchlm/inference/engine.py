"""The decoding engine: several prompts of different lengths continued together, one token per
row per step, each row getting exactly the tokens it would get on its own.

The prompts are left-padded to the longest and prefilled in one forward pass; the KV cache
knows each row's padding (KVCache.set_left_padding), so every row sees its own positions and
never attends to padding. Then each step feeds the B tokens just sampled. A row stops at one
of its stop ids, at its max_new_tokens, or when the caller says so (`finish`, e.g. when the
decoded text reached a stop string); the step loop ends when every row has stopped.

When the context fills up (block_size), every row is refilled from its most recent
block_size // 2 tokens, as the single-prompt decoder always did. With a batch this happens
when the longest row is full, so past that point a shorter row may differ from its solo run.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from scratchlm.core.errors import ScratchLMError
from scratchlm.inference.config import Sampling
from scratchlm.inference.sampling import apply_repetition_penalty, sample_rows
from scratchlm.model import GPT, KVCache


def crop_prompt(prompt_ids: list[int], block_size: int) -> tuple[list[int], int]:
    """Keep the most recent tokens of a prompt that would not fit: returns (kept, number dropped).

    At most block_size - 1 tokens are kept (at least 1), leaving room in the context for the
    first generated token.
    """
    room = max(1, block_size - 1)
    dropped = max(0, len(prompt_ids) - room)
    return list(prompt_ids[dropped:]), dropped


class NewToken(NamedTuple):
    """One row's token from one decoding step."""

    row: int
    token: int
    # log p(token) under the model: the log-softmax, in float32, of the logits the sampler
    # saw *before* temperature, top-k and top-p (after the repetition penalty, if any), so
    # it does not depend on how the token was picked. None unless the engine was asked.
    logprob: float | None = None


class BatchGenerator:
    """Continue `prompts` (lists of token ids) together; iterate `steps()` for the new tokens.

    sampling.seed: row b samples from its own torch.Generator seeded with seed + b (None: a
    fresh random seed each), so sampling never touches PyTorch's global random state and a
    prompt gets the same sample in a batch as alone. logprobs: give each new token its
    log-probability (NewToken.logprob). Argument errors are raised here, at construction.
    """

    def __init__(
        self,
        model: GPT,
        prompts: Sequence[Sequence[int]],
        sampling: Sampling,
        stop_ids: Collection[int] = (),
        use_cache: bool = True,
        logprobs: bool = False,
    ) -> None:
        if not prompts:
            raise ScratchLMError("no prompts given; pass at least one")
        vocab_size = model.config.vocab_size
        for prompt in prompts:
            if not prompt:
                raise ScratchLMError("a prompt is empty; give at least one token (e.g. a newline)")
            bad = [t for t in prompt if not 0 <= t < vocab_size]
            if bad:
                raise ScratchLMError(
                    f"prompt token id {bad[0]} is outside the model's vocabulary (size "
                    f"{vocab_size}); was the prompt encoded with this model's tokenizer?"
                )
        max_new_tokens = sampling.max_new_tokens
        limits = (
            [max_new_tokens] * len(prompts)
            if isinstance(max_new_tokens, int)
            else list(max_new_tokens)
        )
        if len(limits) != len(prompts) or any(n < 0 for n in limits):
            raise ScratchLMError(
                f"max_new_tokens must be >= 0, one number or one per prompt; got {max_new_tokens}"
            )
        sampling.check()
        self.model = model
        block_size = model.config.block_size
        self.prompts = [crop_prompt(list(p), block_size)[0] for p in prompts]
        self.limits = limits
        self.sampling = sampling
        self.stop_ids = frozenset(stop_ids)
        self.use_cache = use_cache
        self.logprobs = logprobs
        self.done = [n == 0 for n in limits]

    @property
    def batch_size(self) -> int:
        return len(self.prompts)

    def finish(self, row: int) -> None:
        """Stop generating row `row` (its tokens so far stand)."""
        self.done[row] = True

    def steps(self) -> Iterator[list[NewToken]]:
        """Yield, once per decoding step, the (row, token id, logprob) of the rows that got a
        new token in that step.

        Rows that stopped are left out; a stop id is never yielded. The model is in eval mode
        while this runs and back in its previous mode when the iterator finishes.
        """
        was_training = self.model.training
        self.model.eval()
        try:
            yield from self._steps()
        finally:
            self.model.train(was_training)

    def _steps(self) -> Iterator[list[NewToken]]:
        model, B, sampling = self.model, self.batch_size, self.sampling
        device = model.lm_head.weight.device
        generators = []
        for b in range(B):
            g = torch.Generator(device=device)
            if sampling.seed is None:
                g.seed()  # non-deterministic, and still not the global generator
            else:
                g.manual_seed(sampling.seed + b)
            generators.append(g)
        seqs = [list(p) for p in self.prompts]  # each row's context, at most block_size tokens
        counts = [0] * B
        seen = None  # (B, V) bool: the tokens the repetition penalty applies to
        if sampling.repetition_penalty != 1.0:
            seen = torch.zeros(B, model.config.vocab_size, dtype=torch.bool, device=device)
            for b, prompt in enumerate(self.prompts):
                seen[b, prompt] = True
        cache: KVCache | None = None
        if self.use_cache:
            # Room for the longest prompt and every new token (the last one is never fed back),
            # up to block_size; a cache of block_size slots per row would waste memory (SmolLM2:
            # 8,192 slots = 380 MB a row).
            longest = max(map(len, self.prompts)) + max(self.limits)
            with torch.inference_mode():
                cache = model.new_kv_cache(B, max_len=min(model.config.block_size, longest))
        last: Tensor | None = None  # (B,) the tokens sampled by the previous step

        while not all(self.done):
            logits = self._next_logits(seqs, cache, last)  # (B, V)
            with torch.inference_mode():
                if seen is not None:
                    logits = apply_repetition_penalty(logits, seen, sampling.repetition_penalty)
                ids = sample_rows(
                    logits, sampling.temperature, sampling.top_k, sampling.top_p, generators
                )
                if seen is not None:
                    seen.scatter_(1, ids[:, None], True)
                logprobs: list[float | None] = [None] * B
                if self.logprobs:
                    chosen = torch.log_softmax(logits.float(), dim=-1).gather(1, ids[:, None])
                    logprobs = chosen.squeeze(1).tolist()
            last = ids
            new = []
            for b, token in enumerate(ids.tolist()):  # the one device sync per step
                if self.done[b]:
                    continue
                if token in self.stop_ids:
                    self.done[b] = True
                    continue
                seqs[b].append(token)
                if len(seqs[b]) > model.config.block_size:
                    del seqs[b][0]  # no path ever looks further back than block_size tokens
                counts[b] += 1
                self.done[b] = counts[b] >= self.limits[b]
                new.append(NewToken(b, token, logprobs[b]))
            # Between steps (and while the caller runs) the caller's mode is left alone.
            yield new

    @torch.inference_mode()
    def _next_logits(
        self, seqs: list[list[int]], cache: KVCache | None, last: Tensor | None
    ) -> Tensor:
        """The logits (B, V) of the next token of every row."""
        model = self.model
        block_size = model.config.block_size
        if cache is None:
            # No cache: rerun each row's whole (most recent block_size tokens of its) sequence.
            return self._prefill([s[-block_size:] for s in seqs], None)
        if last is None:
            return self._prefill(seqs, cache)  # the prompts, at most block_size - 1 tokens each
        if cache.pos < cache.max_len:
            logits, _ = model(last[:, None], kv_cache=cache, last_only=True)  # (B, 1, V)
            return logits[:, -1]
        # Cache full: start over from each row's recent half, which leaves block_size // 2
        # free slots before the next refill.
        cache.reset()
        return self._prefill([s[-max(1, block_size // 2) :] for s in seqs], cache)

    def _prefill(self, windows: list[list[int]], cache: KVCache | None) -> Tensor:
        """Run the left-padded windows through the model: logits (B, V) of their last tokens."""
        longest = max(map(len, windows))
        pad = [longest - len(w) for w in windows]
        device = self.model.lm_head.weight.device
        # Padding slots hold token 0: any valid id does, nothing ever attends to them.
        idx = torch.tensor(
            [[0] * p + w for p, w in zip(pad, windows, strict=True)], device=device
        )  # (B, T)
        if cache is None and any(pad):
            # Recomputing a batch of uneven rows: a throwaway cache carries the padding.
            cache = self.model.new_kv_cache(len(windows), max_len=longest)
        if cache is not None:
            cache.set_left_padding(pad)
        logits, _ = self.model(idx, kv_cache=cache, last_only=True)  # (B, 1, V)
        return logits[:, -1]
