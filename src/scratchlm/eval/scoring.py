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
a continuation token go through the language-model head. Requests that share a context (the
choices of one question) read it once: the contexts of a batch go through the model
left-padded into a KV cache, each continuation then runs as a row over a copy of its
context's keys and values. A question with four choices costs one context and four
continuations instead of four of both.
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
    is an error. Pairs that share a context (a question's choices) read it once."""
    if batch_size < 1:
        raise ScratchLMError(f"batch size must be at least 1, got {batch_size}")
    block = lm.block_size
    for _, continuation in pairs:
        if not continuation:
            raise ScratchLMError("a continuation to score has no tokens")
        if len(continuation) > block:
            raise ScratchLMError(
                f"a continuation of {len(continuation)} tokens does not fit the model's context "
                f"({block} tokens)"
            )
    # Group the pairs that fit whole by context; a context that stands alone, or that is cut
    # differently for each continuation, is scored in one plain forward with its continuation.
    by_context: dict[tuple[int, ...], list[int]] = {}
    alone: list[int] = []
    for i, (context, continuation) in enumerate(pairs):
        if context and len(context) + len(continuation) <= block + 1:
            by_context.setdefault(tuple(context), []).append(i)
        else:
            alone.append(i)
    shared = [(list(c), members) for c, members in by_context.items() if len(members) > 1]
    alone += [members[0] for members in by_context.values() if len(members) == 1]
    # Longest first, so a batch's padding is small and the first batch shows the memory peak.
    shared.sort(key=lambda group: -len(group[0]))
    inputs = {i: ((pairs[i][0] + pairs[i][1])[-(block + 1) :], len(pairs[i][1])) for i in alone}
    alone.sort(key=lambda i: -len(inputs[i][0]))

    scores: list[Score | None] = [None] * len(pairs)
    model, device = lm.model, lm.device
    was_training = model.training
    model.eval()
    try:
        with progress(total=len(pairs), desc=desc, unit="request") as bar:
            for chunk in _chunks(model, shared):
                contexts = [context for context, _ in chunk]
                rows = [
                    (g, i, pairs[i][1]) for g, (_, members) in enumerate(chunk) for i in members
                ]
                for i, score in _score_shared(model, contexts, rows, batch_size, device):
                    scores[i] = score
                bar.update(len(rows))
            for start in range(0, len(alone), batch_size):
                rows_alone = alone[start : start + batch_size]
                batch_scores = _score_batch(model, [inputs[i] for i in rows_alone], device)
                for i, score in zip(rows_alone, batch_scores, strict=True):
                    scores[i] = score
                bar.update(len(rows_alone))
    finally:
        model.train(was_training)
    return [s for s in scores if s is not None]


# Keys and values of contexts held at once while their continuations are scored.
_CONTEXT_CACHE_BYTES = 256 << 20

Row = tuple[int, int, list[int]]  # (its context's index, request index, continuation ids)


def _chunks(
    model: GPT, shared: list[tuple[list[int], list[int]]]
) -> list[list[tuple[list[int], list[int]]]]:
    """Consecutive groups (context, request indices) whose contexts' keys and values fit in
    _CONTEXT_CACHE_BYTES together (at least one group a chunk)."""
    config, weight = model.config, model.lm_head.weight
    per_token = config.n_layer * 2 * config.kv_heads * config.head_dim * weight.element_size()
    chunks: list[list[tuple[list[int], list[int]]]] = []
    held = _CONTEXT_CACHE_BYTES
    for group in shared:
        size = len(group[0]) * per_token
        if held + size > _CONTEXT_CACHE_BYTES:
            chunks.append([])
            held = 0
        chunks[-1].append(group)
        held += size
    return chunks


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
        scores.append(_score(model, hidden[row, end - n : end], ids[-n:], device))
    return scores


def _score_shared(
    model: GPT, contexts: list[list[int]], rows: list[Row], batch_size: int, device: torch.device
) -> list[tuple[int, Score]]:
    """Each context once: batches of them, left-padded, through the model into a KV cache,
    whose rows are kept. Then the continuations, batched by their own length (the choices of
    one question differ in length): each row a copy of its context's keys and values, left-
    padded to the batch's longest context, and the continuation after it."""
    kept: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []  # per context: layers' k, v
    last: list[torch.Tensor] = []  # per context: the hidden state that predicts token 0
    for start in range(0, len(contexts), batch_size):
        batch = contexts[start : start + batch_size]
        width = max(len(c) for c in batch)
        pad = [width - len(c) for c in batch]
        idx = torch.zeros((len(batch), width), dtype=torch.long)
        for g, context in enumerate(batch):
            idx[g, pad[g] :] = torch.tensor(context)
        cache = model.new_kv_cache(len(batch), width)
        cache.set_left_padding(pad)
        hidden = model.hidden_states(idx.to(device), cache)[:, -1]  # (G, C)
        for g in range(len(batch)):
            kept.append(
                ([k[g, :, pad[g] :] for k in cache.k], [v[g, :, pad[g] :] for v in cache.v])
            )
            last.append(hidden[g])

    scored = [
        (i, _score(model, last[g][None], cont, device)) for g, i, cont in rows if len(cont) == 1
    ]
    longer = sorted((r for r in rows if len(r[2]) > 1), key=lambda r: -len(r[2]))
    for batch_rows in _row_batches(longer, contexts, batch_size, model.config.block_size):
        width = max(len(contexts[g]) for g, _, _ in batch_rows)
        longest = max(len(cont) for _, _, cont in batch_rows)
        cache = model.new_kv_cache(len(batch_rows), width + longest - 1)
        for r, (g, _, _) in enumerate(batch_rows):
            keys, values = kept[g]
            begin = width - len(contexts[g])
            for layer, (k, v) in enumerate(zip(keys, values, strict=True)):
                cache.k[layer][r, :, begin:width] = k
                cache.v[layer][r, :, begin:width] = v
        cache.set_left_padding([width - len(contexts[g]) for g, _, _ in batch_rows])
        cache.pos = width
        # Right-padded: causal attention never looks right, so the padding changes nothing.
        idx = torch.zeros((len(batch_rows), longest - 1), dtype=torch.long)
        for r, (_, _, cont) in enumerate(batch_rows):
            idx[r, : len(cont) - 1] = torch.tensor(cont[:-1])
        hidden = model.hidden_states(idx.to(device), cache)  # (R, longest - 1, C)
        for r, (g, i, cont) in enumerate(batch_rows):
            predicting = torch.cat([last[g][None], hidden[r, : len(cont) - 1]])  # (n, C)
            scored.append((i, _score(model, predicting, cont, device)))
    return scored


def _row_batches(
    rows: list[Row], contexts: list[list[int]], batch_size: int, block: int
) -> list[list[Row]]:
    """Consecutive rows, at most batch_size a batch, and a batch's longest context and longest
    continuation fit the model's context together (contexts are left-padded to one width)."""
    batches: list[list[Row]] = []
    width = longest = 0
    for row in rows:
        context, n = len(contexts[row[0]]), len(row[2])
        if (
            not batches
            or len(batches[-1]) == batch_size
            or (max(width, context) + max(longest, n) - 1 > block)
        ):
            batches.append([])
            width = longest = 0
        batches[-1].append(row)
        width, longest = max(width, context), max(longest, n)
    return batches


def _score(model: GPT, hidden: torch.Tensor, targets: list[int], device: torch.device) -> Score:
    """The Score of `targets` from the hidden states (n, C) that predict them."""
    logits = model.head(hidden).float()  # (n, V)
    logprobs = torch.log_softmax(logits, dim=-1)
    target = torch.tensor(targets, device=device)
    chosen = logprobs.gather(1, target[:, None]).squeeze(1)
    greedy = bool((logits.argmax(dim=-1) == target).all())
    return Score(float(chosen.double().sum()), len(targets), greedy)
