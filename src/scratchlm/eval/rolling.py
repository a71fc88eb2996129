"""Rolling log-likelihood: log p(text) for a text of any length, as lm-evaluation-harness's
loglikelihood_rolling defines it, with a configurable stride.

A model sees at most block_size tokens, so a longer text is cut into windows whose predicted
spans are disjoint and together cover every token once:

    window 1   context [prefix]                       predicts ids[0 : L]
    window k   context up to L + 1 - s earlier ids    predicts the next s ids (fewer at the end)

L is block_size and s the stride. The first token is predicted after the prefix token (the
model's beginning- or end-of-text token, what an empty context stands for), and each later
window gives its predicted span as much preceding context as fits. stride = block_size is
lm-eval's own rolling (its get_rolling_token_windows with context_len=1, then
make_disjoint_window); a smaller stride is its context_len = L + 1 - s: more context per
token, block_size / s times the forward passes.
"""

from __future__ import annotations

from collections.abc import Sequence

from scratchlm.core.errors import ScratchLMError
from scratchlm.eval.scoring import TokenPair, prefix_token, score_token_pairs
from scratchlm.inference.language_model import LanguageModel


def check_stride(stride: int, block_size: int) -> None:
    """One clear line for a stride that is not 1..block_size."""
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= block_size:
        raise ScratchLMError(
            f"stride must be a whole number of tokens from 1 to the model's context "
            f"({block_size}), got {stride!r}; {block_size} gives disjoint windows (lm-eval's "
            "loglikelihood_rolling), less gives each token more context"
        )


def rolling_windows(
    ids: Sequence[int], prefix: int, block_size: int, stride: int
) -> list[TokenPair]:
    """The (context ids, continuation ids) requests whose continuations are `ids`, disjoint
    and in order; each request fits the model (context + continuation <= block_size + 1)."""
    check_stride(stride, block_size)
    ids = list(ids)
    if not ids:
        return []
    first = min(block_size, len(ids))
    windows: list[TokenPair] = [([prefix], ids[:first])]
    predicted = first
    while predicted < len(ids):
        end = min(predicted + stride, len(ids))
        # The input is block_size tokens ending just before ids[end - 1].
        windows.append((ids[max(0, end - block_size - 1) : predicted], ids[predicted:end]))
        predicted = end
    return windows


def rolling_loglikelihoods(
    lm: LanguageModel,
    texts: Sequence[str | Sequence[int]],
    stride: int | None = None,
    batch_size: int = 16,
    desc: str = "scoring",
) -> list[tuple[float, int]]:
    """(log p(text) summed in nats, tokens predicted) of each text or list of ids, every
    window of every text scored in one batched pass. stride: default block_size."""
    block = lm.block_size
    stride = block if stride is None else stride
    check_stride(stride, block)
    prefix = prefix_token(lm)
    windows: list[TokenPair] = []
    counts: list[int] = []  # windows per text
    for text in texts:
        ids = lm.encode(text) if isinstance(text, str) else [int(i) for i in text]
        text_windows = rolling_windows(ids, prefix, block, stride)
        windows += text_windows
        counts.append(len(text_windows))
    scores = iter(score_token_pairs(lm, windows, batch_size, desc))
    totals = []
    for count in counts:
        mine = [next(scores) for _ in range(count)]
        totals.append((sum(s.logprob for s in mine), sum(s.tokens for s in mine)))
    return totals


def rolling_loglikelihood(
    lm: LanguageModel, text_or_ids: str | Sequence[int], stride: int | None = None
) -> tuple[float, int]:
    """(log p(text) summed in nats, tokens predicted) of one text or list of ids; (0.0, 0)
    for an empty one. What lm-eval's loglikelihood_rolling returns for a request."""
    [total] = rolling_loglikelihoods(lm, [text_or_ids], stride)
    return total
