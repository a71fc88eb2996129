"""Direct Preference Optimization (Rafailov et al., 2023): learn from pairs of replies, one
preferred, with no reward model and no sampling during training.

For a prompt x, a preferred reply y_w and a less preferred one y_l, the policy π (the model
being trained) is compared with a frozen copy of where it started, the reference π_ref:

    h    = [log π(y_w|x) - log π_ref(y_w|x)] - [log π(y_l|x) - log π_ref(y_l|x)]
    loss = -log σ(β h)                                           (plain DPO)
    loss = -(1 - ε) log σ(β h) - ε log σ(-β h)                   (conservative DPO, ε > 0)

log π(y|x) is summed over the reply's tokens only. β sets how far the policy may move from the
reference (small β: far); ε is label smoothing: the labels are taken as wrong with probability
ε (Mitchell, 2023), which keeps the loss from driving h to infinity on noisy pairs. The
implicit rewards r = β (log π - log π_ref) of the two replies are what training logs: their
margin, and the preference accuracy (how often r_w > r_l). At step 0 the policy is the
reference, h = 0 and the loss is ln 2 whatever ε.

    encoded = [encode_preference(lm, pair) for pair in pairs]     # lm: the policy's LanguageModel
    batch = collate_preferences(encoded[:8], pad_id=0)
    out = dpo_batch_loss(policy, reference, batch, beta=0.1)
    out.loss.backward(); out.metrics()  # {"dpo_loss", "reward_chosen", ..., "preference_accuracy"}

Dropout should be off (model.dropout = 0): with it, the policy's log-probs are noisy where the
reference's are not, and h is not 0 at step 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchlm.core.errors import ScratchLMError
from scratchlm.core.messages import progress, warn
from scratchlm.finetune.preferences import PreferencePair, Prompt
from scratchlm.inference.language_model import LanguageModel
from scratchlm.model import GPT

# ------------------------------------------------------------------------------ encoding


def encode_prompt(lm: LanguageModel, prompt: Prompt) -> list[int]:
    """What the model reads before its reply: with a chat template, the conversation (a text
    prompt is one user message) rendered up to the opening of the assistant's turn, as
    LanguageModel.chat renders it; without one, the prompt's plain text."""
    if lm.chat_template is None:
        if not isinstance(prompt, str):
            raise ScratchLMError(
                "a conversation prompt needs a model with a chat template; this one has none, "
                "so give the prompts as text"
            )
        ids = lm.encode(prompt)
    else:
        ids = lm.encode_chat(_messages(prompt), add_generation_prompt=True)
    if not ids:
        raise ScratchLMError(f"the prompt {prompt!r} encodes to no tokens")
    return ids


def encode_reply(lm: LanguageModel, prompt: Prompt, prompt_ids: list[int], reply: str) -> list[int]:
    """The tokens of `reply` after `prompt` (prompt_ids = encode_prompt(lm, prompt)): what DPO
    scores.

    With a chat template, the rest of the conversation rendered with the reply as the
    assistant's turn: its content, then the template's end of turn, which the policy must learn
    to emit (or not). Without one, the reply's plain text, then the end-of-text token when the
    tokenizer has one, so where a reply stops is learnt here too.
    """
    if lm.chat_template is None:
        eos = [lm.token_roles["eos"]] if "eos" in lm.token_roles else []
        return lm.encode(reply) + eos
    conversation = [*_messages(prompt), {"role": "assistant", "content": reply}]
    whole = lm.encode_chat(conversation, add_generation_prompt=False)
    if whole[: len(prompt_ids)] != prompt_ids:
        raise ScratchLMError(
            "the chat template renders the prompt differently once a reply follows it, so the "
            "reply's tokens cannot be told apart; use a template whose generation prompt is "
            "the start of the assistant's turn"
        )
    return whole[len(prompt_ids) :]


def _messages(prompt: Prompt) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(m) for m in prompt]


@dataclass(frozen=True)
class EncodedPreference:
    """A pair as token ids: the prompt, and the two replies that continue it. reference holds
    the reference model's log-probs of (chosen, rejected), once precompute_reference ran."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    truncated: bool = False
    reference: tuple[float, float] | None = None


def encode_preference(
    lm: LanguageModel, pair: PreferencePair, max_length: int | None = None
) -> EncodedPreference:
    """`pair` as token ids (encode_prompt, encode_reply), each sequence at most max_length
    tokens (default the model's context).

    A pair too long loses its prompt's oldest tokens first (the end of the prompt is what the
    reply answers), down to half of max_length; then the replies' last tokens. `truncated`
    says so, for the caller to count.
    """
    limit = max_length or lm.block_size
    if limit < 2:
        raise ScratchLMError(f"max_length must be at least 2 tokens, got {limit}")
    prompt = encode_prompt(lm, pair.prompt)
    chosen = encode_reply(lm, pair.prompt, prompt, pair.chosen)
    rejected = encode_reply(lm, pair.prompt, prompt, pair.rejected)
    if chosen == rejected:
        raise ScratchLMError(
            f"chosen and rejected encode to the same tokens ({pair.chosen!r}); the pair "
            "teaches nothing, so remove it"
        )
    longest = max(len(chosen), len(rejected))
    if len(prompt) + longest <= limit:
        return EncodedPreference(prompt, chosen, rejected)
    keep = max(limit - longest, min(len(prompt), limit // 2), 1)
    prompt = prompt[-keep:]
    return EncodedPreference(
        prompt, chosen[: limit - keep], rejected[: limit - keep], truncated=True
    )


def encode_preferences(
    lm: LanguageModel, pairs: Sequence[PreferencePair], max_length: int | None = None
) -> list[EncodedPreference]:
    """encode_preference for each pair, with a progress bar. A pair whose replies, cut to fit,
    no longer differ is left out (it would teach nothing); a warning counts the truncated and
    the dropped pairs and says how to keep them."""
    encoded, dropped = [], 0
    with progress(len(pairs), "encoding preference pairs", unit="pair") as bar:
        for pair in pairs:
            one = encode_preference(lm, pair, max_length)
            if one.chosen == one.rejected:
                dropped += 1
            else:
                encoded.append(one)
            bar.update()
    truncated = sum(p.truncated for p in encoded) + dropped
    if truncated:
        warn(
            f"{truncated} of {len(pairs)} preference pairs are longer than max_length="
            f"{max_length or lm.block_size} tokens and were truncated ({dropped} left out: "
            "their replies differ only past the cut); raise max_length to keep them whole"
        )
    if not encoded:
        raise ScratchLMError("no preference pair is left to train on; raise max_length")
    return encoded


# ------------------------------------------------------------------------------ batches


@dataclass(frozen=True)
class PreferenceBatch:
    """B pairs as 2B rows, the chosen replies first, then the rejected ones in the same order.

    Each row is prompt + reply, right-padded: inputs are its tokens but the last, targets the
    next token at each position, and reply_mask is True where the target is a reply token.
    (The model's attention is causal, so padding on the right changes no real position.)
    """

    inputs: Tensor  # (2B, T) int64
    targets: Tensor  # (2B, T) int64
    reply_mask: Tensor  # (2B, T) bool
    reference: Tensor | None = None  # (2B,) precomputed reference log-probs, or None

    @property
    def pairs(self) -> int:
        return self.inputs.size(0) // 2

    def to(self, device: torch.device | str) -> PreferenceBatch:
        reference = None if self.reference is None else self.reference.to(device)
        return PreferenceBatch(
            self.inputs.to(device), self.targets.to(device), self.reply_mask.to(device), reference
        )


def collate_preferences(pairs: Sequence[EncodedPreference], pad_id: int = 0) -> PreferenceBatch:
    """Pad `pairs` into one batch (pad_id: any token id; padded positions are never scored).
    The reference log-probs come along when every pair has them."""
    if not pairs:
        raise ScratchLMError("a preference batch needs at least one pair")
    if not all(p.prompt and p.chosen and p.rejected for p in pairs):
        raise ScratchLMError("every pair needs a prompt and two replies of at least one token")
    rows = [p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs]
    starts = [len(p.prompt) for p in pairs] * 2  # where each row's reply begins
    width = max(len(row) for row in rows) - 1
    ids = torch.full((len(rows), width + 1), pad_id, dtype=torch.long)
    reply_mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for r, (row, start) in enumerate(zip(rows, starts, strict=True)):
        ids[r, : len(row)] = torch.tensor(row)
        # The token at position t is predicted at t - 1: the reply's tokens [start, len(row))
        # are the targets of positions [start - 1, len(row) - 1).
        reply_mask[r, start - 1 : len(row) - 1] = True
    reference = None
    if all(p.reference is not None for p in pairs):
        chosen = [p.reference[0] for p in pairs if p.reference is not None]
        rejected = [p.reference[1] for p in pairs if p.reference is not None]
        reference = torch.tensor(chosen + rejected, dtype=torch.float32)
    return PreferenceBatch(ids[:, :-1], ids[:, 1:], reply_mask, reference)


# ------------------------------------------------------------------------------ the loss


def sequence_logprobs(model: nn.Module, inputs: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """(N,) the sum over each row of log p(target) at the positions where mask is True: a
    reply's log-probability given its prompt, in float32.

    For a GPT only the masked positions go through the head (final norm, lm_head, vocabulary
    softmax), so a long prompt costs its transformer pass but not its logits. Any other module
    (a DDP wrapper, whose forward is what syncs gradients) is called as forward(inputs) ->
    (logits, _).
    """
    if isinstance(model, GPT):
        hidden = model.hidden_states(inputs)  # (N, T, C)
        logits = model.head(hidden[mask]).float()  # (M, V), M masked positions
    else:
        logits = model(inputs)[0][mask].float()
    token_logps = -F.cross_entropy(logits, targets[mask], reduction="none")  # (M,)
    rows = mask.nonzero()[:, 0]  # the row of each masked position
    sums = torch.zeros(inputs.size(0), device=inputs.device, dtype=torch.float32)
    return sums.index_add(0, rows, token_logps)


@torch.no_grad()
def reference_logprobs(reference: GPT, batch: PreferenceBatch) -> Tensor:
    """(2B,) the frozen reference's log-probs of the batch's replies (eval mode, no graph)."""
    was_training = reference.training
    reference.eval()
    try:
        return sequence_logprobs(reference, batch.inputs, batch.targets, batch.reply_mask)
    finally:
        reference.train(was_training)


@dataclass(frozen=True)
class DPOOutput:
    """The mean loss (with its graph), and per pair, detached: the implicit rewards
    β (log π - log π_ref) of the chosen and rejected replies and their margin; accuracy is
    the fraction of pairs with chosen reward > rejected reward, a tie counting one half (at
    step 0 every pair ties: 0.5, the chance level)."""

    loss: Tensor  # ()
    chosen_rewards: Tensor  # (B,)
    rejected_rewards: Tensor  # (B,)
    margins: Tensor  # (B,)
    accuracy: Tensor  # ()

    def metrics(self) -> dict[str, float]:
        """Batch means for metrics.jsonl (each read is a device sync: call it to log)."""
        return {
            "dpo_loss": self.loss.item(),
            "reward_chosen": self.chosen_rewards.mean().item(),
            "reward_rejected": self.rejected_rewards.mean().item(),
            "reward_margin": self.margins.mean().item(),
            "preference_accuracy": self.accuracy.item(),
        }


def check_dpo_settings(beta: float, label_smoothing: float) -> None:
    if not (math.isfinite(beta) and beta > 0):
        raise ScratchLMError(f"dpo beta must be > 0 (0.1 is usual), got {beta}")
    if not 0 <= label_smoothing < 0.5:
        raise ScratchLMError(
            f"dpo label_smoothing must be in [0, 0.5) (0: plain DPO), got {label_smoothing}"
        )


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    reference_chosen: Tensor,
    reference_rejected: Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> DPOOutput:
    """The DPO loss (module docstring) from (B,) sequence log-probs of the policy and the
    reference; label_smoothing > 0 makes it conservative DPO."""
    check_dpo_settings(beta, label_smoothing)
    chosen_logratio = policy_chosen - reference_chosen
    rejected_logratio = policy_rejected - reference_rejected
    logits = beta * (chosen_logratio - rejected_logratio)  # β h, (B,)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    chosen_rewards = beta * chosen_logratio.detach()
    rejected_rewards = beta * rejected_logratio.detach()
    margins = chosen_rewards - rejected_rewards
    wins = (margins > 0).float() + 0.5 * (margins == 0).float()
    return DPOOutput(losses.mean(), chosen_rewards, rejected_rewards, margins, wins.mean())


def dpo_batch_loss(
    policy: nn.Module,
    reference: GPT | None,
    batch: PreferenceBatch,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    nll_weight: float = 0.0,
) -> DPOOutput:
    """One batch's DPO loss: the policy's log-probs (one forward over chosen and rejected
    rows together) against the reference's, precomputed in the batch or computed here by
    `reference` without a graph. What a training step calls, then loss.backward().

    nll_weight > 0 adds that many times the chosen replies' negative log-likelihood per token
    (RPO, Pang et al. 2024): DPO alone only widens the margin, and may do it by pushing both
    replies down until the model says nothing; the NLL keeps the chosen reply likely."""
    if batch.reference is not None:
        reference_logps = batch.reference
    elif reference is not None:
        reference_logps = reference_logprobs(reference, batch)
    else:
        raise ScratchLMError("DPO needs a reference model or precomputed reference log-probs")
    policy_logps = sequence_logprobs(policy, batch.inputs, batch.targets, batch.reply_mask)
    B = batch.pairs
    out = dpo_loss(
        policy_logps[:B],
        policy_logps[B:],
        reference_logps[:B],
        reference_logps[B:],
        beta,
        label_smoothing,
    )
    if nll_weight > 0:
        chosen_tokens = batch.reply_mask[:B].sum().clamp(min=1)
        nll = -policy_logps[:B].sum() / chosen_tokens
        out = replace(out, loss=out.loss + nll_weight * nll)
    return out


def precompute_reference(
    reference: GPT, pairs: Sequence[EncodedPreference], batch_size: int = 16
) -> list[EncodedPreference]:
    """`pairs` with the reference's log-probs filled in, so training needs the reference
    model no longer (half the memory, and a forward less per step)."""
    device = reference.lm_head.weight.device
    done = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        logps = reference_logprobs(reference, collate_preferences(chunk).to(device)).tolist()
        B = len(chunk)
        done += [replace(p, reference=(logps[i], logps[B + i])) for i, p in enumerate(chunk)]
    return done


@torch.no_grad()
def evaluate_preferences(
    policy: GPT,
    reference: GPT | None,
    pairs: Sequence[EncodedPreference],
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    batch_size: int = 16,
) -> dict[str, float]:
    """DPOOutput.metrics() over all of `pairs` (held-out ones, say), the policy in eval mode:
    each pair weighs the same, whatever the batch it falls in."""
    if not pairs:
        raise ScratchLMError("no preference pairs to evaluate")
    device = policy.lm_head.weight.device
    was_training = policy.training
    policy.eval()
    totals: dict[str, float] = {}
    try:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            batch = collate_preferences(chunk).to(device)
            out = dpo_batch_loss(policy, reference, batch, beta, label_smoothing)
            for key, value in out.metrics().items():
                totals[key] = totals.get(key, 0.0) + value * len(chunk)
    finally:
        policy.train(was_training)
    return {key: value / len(pairs) for key, value in totals.items()}
