"""Log-likelihood scoring: the one computation behind multiple choice, language-modelling
evaluation and the lm-eval adapter.

A request is a context and a continuation; its score is log p(continuation | context), summed
over the continuation's tokens, and whether greedy decoding would have produced it. Requests
are tokenised as lm-evaluation-harness does (encode_pair), so the same task gives the same
numbers through our harness and through lm-eval's: whitespace at the end of the context
belongs to the continuation, the pair is encoded whole and the context's tokens split off.

Scoring is batched: requests are sorted by length (longest first, so a batch's padding is
small and the first batch shows the memory peak at once), right-padded (causal attention
never looks right, so padding changes nothing before it), and only the positions that predict
a continuation token go through the language-model head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from scratchlm.core.errors import ScratchLMError
from scratchlm.core.messages import progress
from scratchlm.inference.language_model import LanguageModel
from scratchlm.model import GPT

TokenPair = tuple[list[int], list[int]]  # (context ids, continuation ids)


@dataclass(frozen=True)
class Score:
    """log p(continuation | context) and what it is made of."""

    logprob: float  # summed over the continuation's tokens, in nats
    tokens: int  # continuation tokens scored
    greedy: bool  # every continuation token was the most likely one


def prefix_token(lm: LanguageModel) -> int:
    """The token an empty context stands for (lm-eval's prefix token): the model's beginning-
    or end-of-text token."""
    for role in ("bos", "eos"):
        if role in lm.token_roles:
            return lm.token_roles[role]
    raise ScratchLMError(
        "scoring a continuation with an empty context needs a beginning- or end-of-text token, "
        "and this model's tokenizer has neither; give every request some context"
    )


def encode_pair(lm: LanguageModel, context: str, continuation: str) -> TokenPair:
    """Context and continuation ids as lm-eval makes them (its _encode_pair)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    if not continuation:
        raise ScratchLMError("a continuation to score is empty")
    if not context:
        return [prefix_token(lm)], lm.encode(continuation)
    whole = lm.encode(context + continuation)
    context_ids = lm.encode(context)
    return context_ids, whole[len(context_ids) :]


def score_continuations(
    lm: LanguageModel,
    requests: Sequence[tuple[str, str]],
    batch_size: int = 16,
    desc: str = "scoring",
) -> list[Score]:
    """The Score of each (context, continuation), in the order given."""
    return score_token_pairs(lm, [encode_pair(lm, c, x) for c, x in requests], batch_size, desc)


@torch.inference_mode()
def score_token_pairs(
    lm: LanguageModel,
    pairs: Sequence[TokenPair],
    batch_size: int = 16,
    desc: str = "scoring",
) -> list[Score]:
    """score_continuations on ids. A pair longer than the model's context loses its oldest
    context tokens (as lm-eval's), never continuation tokens: a continuation that does not fit
    is an error."""
    if batch_size < 1:
        raise ScratchLMError(f"batch size must be at least 1, got {batch_size}")
    block = lm.block_size
    inputs: list[tuple[list[int], int]] = []  # (input ids, continuation length)
    for context, continuation in pairs:
        if not continuation:
            raise ScratchLMError("a continuation to score has no tokens")
        if len(continuation) > block:
            raise ScratchLMError(
                f"a continuation of {len(continuation)} tokens does not fit the model's context "
                f"({block} tokens)"
            )
        ids = (context + continuation)[-(block + 1) :]
        inputs.append((ids, len(continuation)))
    order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i][0]))
    scores: list[Score | None] = [None] * len(inputs)
    model, device = lm.model, lm.device
    was_training = model.training
    model.eval()
    try:
        with progress(total=len(order), desc=desc, unit="request") as bar:
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                batch_scores = _score_batch(model, [inputs[i] for i in batch], device)
                for i, score in zip(batch, batch_scores, strict=True):
                    scores[i] = score
                bar.update(len(batch))
    finally:
        model.train(was_training)
    return [s for s in scores if s is not None]


def _score_batch(
    model: GPT, batch: list[tuple[list[int], int]], device: torch.device
) -> list[Score]:
    width = max(len(ids) - 1 for ids, _ in batch)
    idx = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, _) in enumerate(batch):
        idx[row, : len(ids) - 1] = torch.tensor(ids[:-1])
    hidden = model.hidden_states(idx.to(device))  # (B, T, C)
    scores = []
    for row, (ids, n) in enumerate(batch):
        # Positions len(ids) - 1 - n .. len(ids) - 2 predict the continuation's n tokens.
        end = len(ids) - 1
        logits = model.head(hidden[row, end - n : end]).float()  # (n, V)
        logprobs = torch.log_softmax(logits, dim=-1)
        targets = torch.tensor(ids[-n:], device=device)
        chosen = logprobs.gather(1, targets[:, None]).squeeze(1)
        greedy = bool((logits.argmax(dim=-1) == targets).all())
        scores.append(Score(float(chosen.double().sum()), n, greedy))
    return scores
