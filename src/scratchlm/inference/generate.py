"""Text generation from token ids: the keyword-argument API over the decoding engine.

generate_tokens continues one prompt and yields each new token as soon as it is sampled;
generate_batch continues several prompts of different lengths together and returns each
one's new tokens, the same tokens (greedy) as generating them one by one. Both run
engine.BatchGenerator (KV cache, left padding, sliding at block_size) with the settings
gathered in one Sampling, and sample with sampling.py (repetition penalty, temperature,
top-k, top-p, per-call seeded generators).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence

from scratchlm.inference.config import Sampling
from scratchlm.inference.engine import BatchGenerator, crop_prompt
from scratchlm.inference.sampling import sample_next_token
from scratchlm.model import GPT

__all__ = [
    "BatchGenerator",
    "crop_prompt",
    "generate_batch",
    "generate_tokens",
    "sample_next_token",
]


def generate_tokens(
    model: GPT,
    prompt_ids: list[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_ids: Collection[int] = (),
    seed: int | None = None,
    use_cache: bool = True,
    repetition_penalty: float = 1.0,
) -> Iterator[int]:
    """Continue prompt_ids, yielding each new token id as soon as it is sampled (batch of 1).

    Stops after max_new_tokens, or before yielding a token in stop_ids. A prompt longer than
    block_size - 1 is cropped from the left (see crop_prompt; report it to the user there).
    seed makes sampling reproducible (None: a fresh random seed). Argument errors are raised
    here, at the call, not at the first next().
    """
    sampling = Sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
    engine = BatchGenerator(model, [prompt_ids], sampling, stop_ids, use_cache)
    return (new.token for step in engine.steps() for new in step)


def generate_batch(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int | Sequence[int],
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_ids: Collection[int] = (),
    seed: int | None = None,
    use_cache: bool = True,
    repetition_penalty: float = 1.0,
) -> list[list[int]]:
    """Continue every prompt in one batch; returns the new token ids of each, in order.

    Row b samples with seed + b. Each row stops at its own stop id or max_new_tokens (one
    number for all, or one per prompt).
    """
    sampling = Sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
    engine = BatchGenerator(model, prompts, sampling, stop_ids, use_cache)
    out: list[list[int]] = [[] for _ in prompts]
    for step in engine.steps():
        for new in step:
            out[new.row].append(new.token)
    return out
