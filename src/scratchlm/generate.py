"""Text generation: sample one token at a time from a GPT, streaming the ids as they come.

Decoding with a KV cache feeds the prompt once (the "prefill") and then one token per step,
reusing the keys and values of everything before it. When the sequence reaches block_size the
cache slides: the most recent block_size // 2 tokens are prefilled again into a fresh cache,
which keeps positions within what the model was trained on (learned position embeddings have
no row past block_size - 1) at the cost of one prefill every block_size // 2 tokens.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator

import torch
from torch import Tensor

from scratchlm.errors import ScratchLMError
from scratchlm.model import GPT, KVCache


def sample_next_token(
    logits: Tensor,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick the next token of each row from logits (B, V); returns ids (B,).

    temperature 0 is greedy (argmax, and top_k / top_p do not matter); otherwise the logits are
    divided by temperature, then top_k > 0 keeps the k most likely tokens and top_p < 1 keeps
    the smallest set of most likely tokens whose probabilities add up to at least top_p (the
    nucleus, Holtzman et al., 2019; never empty). top_k = 0 and top_p = 1 switch them off.
    """
    if temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
        raise ValueError(
            f"need temperature >= 0, top_k >= 0, 0 < top_p <= 1; got "
            f"{temperature}, {top_k}, {top_p}"
        )
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature  # (B, V); float32 so the softmax sums accurately
    if 0 < top_k < logits.size(-1):
        kth_best = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p < 1.0:
        # Stable sort: among equal logits the lowest id comes first, as with argmax.
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)  # (B, V)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above
        # Drop a token when the ones above it already reach top_p; the best one always stays.
        drop = mass_before >= top_p
        drop[:, 0] = False
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)  # back to id order
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)  # (B,)


def crop_prompt(prompt_ids: list[int], block_size: int) -> tuple[list[int], int]:
    """Keep the most recent tokens of a prompt that would not fit: returns (kept, number dropped).

    At most block_size - 1 tokens are kept (at least 1), leaving room in the context for the
    first generated token.
    """
    room = max(1, block_size - 1)
    dropped = max(0, len(prompt_ids) - room)
    return list(prompt_ids[dropped:]), dropped


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
) -> Iterator[int]:
    """Continue prompt_ids, yielding each new token id as soon as it is sampled (batch of 1).

    Stops after max_new_tokens, or before yielding a token in stop_ids. A prompt longer than
    block_size - 1 is cropped from the left (see crop_prompt; report it to the user there).
    seed makes sampling reproducible (None: PyTorch's global generator). The model is put in
    eval mode while generating and back in its previous mode when the iterator finishes.
    Argument errors are raised here, at the call, not at the first next().
    """
    if not prompt_ids:
        raise ScratchLMError("the prompt is empty; give at least one token (e.g. a newline)")
    vocab_size = model.config.vocab_size
    bad = [t for t in prompt_ids if not 0 <= t < vocab_size]
    if bad:
        raise ScratchLMError(
            f"prompt token id {bad[0]} is outside the model's vocabulary (size {vocab_size}); "
            "was the prompt encoded with this model's tokenizer?"
        )
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
        raise ValueError(
            f"need temperature >= 0, top_k >= 0, 0 < top_p <= 1; got "
            f"{temperature}, {top_k}, {top_p}"
        )
    prompt, _ = crop_prompt(prompt_ids, model.config.block_size)
    return _generate(
        model,
        prompt,
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        frozenset(stop_ids),
        seed,
        use_cache,
    )


def _generate(
    model: GPT,
    prompt: list[int],
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    stop_ids: frozenset[int],
    seed: int | None,
    use_cache: bool,
) -> Iterator[int]:
    block_size = model.config.block_size
    device = model.lm_head.weight.device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)

    # Inference mode is entered per step (in _step), never across a `yield`: a generator
    # suspended inside `with torch.inference_mode()` would leave the mode on in the caller.
    @torch.inference_mode()
    def _step(seq: list[int], cache: KVCache | None) -> int:
        if cache is None:
            # No cache: rerun the whole (most recent block_size tokens of the) sequence.
            window = seq[-block_size:]
        elif cache.pos == 0:
            window = seq  # prefill: the prompt, at most block_size - 1 tokens
        elif cache.pos < block_size:
            window = seq[-1:]  # the one token the cache has not seen yet
        else:
            # Cache full: start over from the recent half, which leaves block_size // 2
            # free slots before the next refill.
            cache.reset()
            window = seq[-max(1, block_size // 2) :]
        idx = torch.tensor([window], dtype=torch.long, device=device)  # (1, T)
        logits, _ = model(idx, kv_cache=cache)  # (1, T, V)
        next_id = sample_next_token(logits[:, -1, :], temperature, top_k, top_p, generator)
        return int(next_id.item())

    was_training = model.training
    model.eval()
    try:
        cache = None
        if use_cache:
            with torch.inference_mode():
                cache = model.new_kv_cache(batch_size=1)
        seq = list(prompt)
        for _ in range(max_new_tokens):
            token = _step(seq, cache)
            if token in stop_ids:
                return
            seq.append(token)
            if len(seq) > block_size:
                del seq[0]  # no path ever looks further back than block_size tokens
            yield token
    finally:
        model.train(was_training)
