"""DPO as a fine-tuning task: the policy (the base model, or LoRA adapters on it) learns from
pairs of replies against a frozen reference, the base model as it was before any step
(finetune/dpo.py has the loss).

The data is a JSONL of prompt / chosen / rejected (finetune/preferences.py reads it), split
by prompt into train and held-out pairs (val_fraction, seeded), or a preference the project
generates from the chitchat corpus (concise, question: dpo.pairs pairs, split by chat). A
generated preference is taught on-policy: each pair is rebuilt around the base model's own
greedy reply to its prompt (preferences.pairs_from_replies), so DPO moves the replies the
model actually writes.

The reference's log-probs of every reply are computed once, before the first step, and ride
in the batches: training needs no second model. A resumed run computes them again from the
same base weights, so they are the same.

Measured at the end, on held-out pairs and prompts (finetune.json):
- preference accuracy (how often the chosen reply's implicit reward beats the rejected one's):
  0.5 at step 0, where every pair ties;
- greedy replies to held-out prompts, before and after: the measure the preference is about
  (mean words for concise, the fraction ending in "?" for question, mean words for a file).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from scratchlm.core.atomic_files import atomic_write_text
from scratchlm.core.errors import ScratchLMError
from scratchlm.core.messages import status
from scratchlm.finetune.config import FinetuneRun
from scratchlm.finetune.dpo import (
    EncodedPreference,
    PreferenceBatch,
    collate_preferences,
    dpo_batch_loss,
    encode_preferences,
    evaluate_preferences,
    precompute_reference,
)
from scratchlm.finetune.preferences import (
    PREFERENCES,
    PreferencePair,
    Prompt,
    generate_replies,
    generated_preference,
    mean_words,
    pairs_from_replies,
    read_preferences,
)
from scratchlm.finetune.task import RESULTS_FILE, EpochBatches, FinetuneTask, content_digest
from scratchlm.inference.config import Sampling
from scratchlm.inference.language_model import LanguageModel
from scratchlm.model import GPT
from scratchlm.train.precision import autocast_context, resolve_dtype

REPLY_TOKENS = 64  # a generated reply (on-policy pairs, the before/after measure), at most
MEASURED_PROMPTS = 64  # held-out prompts whose replies are measured before and after
EXAMPLES = 4  # before/after replies kept in finetune.json


class DPOTask(FinetuneTask):
    # Validation is the DPO loss alone; training adds the NLL term when dpo.nll_weight > 0.
    loss_label = "DPO loss (train: + nll_weight x chosen NLL)"
    name = "dpo"

    def __init__(self, run: FinetuneRun, base: LanguageModel, device: torch.device) -> None:
        super().__init__(run, base, device)
        self.model: GPT = base.model
        # With dropout the policy's log-probs are noisy where the reference's are not.
        _turn_off_dropout(self.model)
        # The reference is scored under the precision training runs in, so that at step 0
        # the policy's log-probs equal it (h = 0, the loss ln 2) on a GPU's bf16 too.
        dtype = resolve_dtype(device, run.train.dtype, self.model.config.n_embd)
        self.autocast = autocast_context(device, dtype)
        self.beta, self.label_smoothing = run.dpo.beta, run.dpo.label_smoothing
        self.sampling = base.sampling(
            temperature=0.0, max_new_tokens=REPLY_TOKENS, repetition_penalty=1.0
        )

        data = preference_data(run, base, self.sampling)
        self.data = data
        self.train_pairs = self._encode(data.train, "training")
        self.val_pairs = self._encode(data.held_out, "held-out")
        status(
            f"dpo data: {len(self.train_pairs):,} train and {len(self.val_pairs):,} held-out "
            f"preference pairs ({data.source})"
        )
        self.base_metrics = self._evaluate()  # policy = reference: accuracy 0.5, loss ln 2
        if data.base_replies is None:  # a file's pairs: the base's replies are not made yet
            data.base_replies = generate_replies(base, data.measured_prompts, self.sampling)

        tc = run.train
        self.batch_size = tc.batch_size
        self._epoch_order: tuple[int, list[int]] = (-1, [])
        self.train_batches = EpochBatches(self._num_batches, self._batch, device)
        self.row_tokens = 2 * self.max_length  # a pair is two rows, chosen and rejected
        self._sums: dict[str, Tensor] = {}
        self._seen = 0

    def _encode(self, pairs: Sequence[PreferencePair], which: str) -> list[EncodedPreference]:
        """Token ids, cut to max_length, with the reference's log-probs filled in."""
        encoded = encode_preferences(self.base, pairs, self.max_length)
        status(f"scoring the {which} pairs with the reference (the base model)")
        with self.autocast:
            return precompute_reference(self.model, encoded, self.run.train.batch_size)

    # ------------------------------------------------------------------------ batches

    def _num_batches(self, epoch: int) -> int:
        return math.ceil(len(self.train_pairs) / self.batch_size)

    def _order(self, epoch: int) -> list[int]:
        """The epoch's shuffle of the training pairs, fixed by the seed (kept for the epoch)."""
        if self._epoch_order[0] != epoch:
            order = list(range(len(self.train_pairs)))
            random.Random(f"scratchlm dpo seed {self.run.train.seed} epoch {epoch}").shuffle(order)
            self._epoch_order = (epoch, order)
        return self._epoch_order[1]

    def _batch(self, epoch: int, index: int) -> tuple[Tensor, ...]:
        chosen = self._order(epoch)[index * self.batch_size : (index + 1) * self.batch_size]
        batch = collate_preferences([self.train_pairs[i] for i in chosen], self._pad_id)
        assert batch.reference is not None  # every pair was scored in __init__
        return batch.inputs, batch.targets, batch.reply_mask, batch.reference

    @property
    def _pad_id(self) -> int:
        return self.base.token_roles.get("pad", 0)  # any id: padding is never scored

    # ------------------------------------------------------------------------ training

    def loss(self, *batch: Tensor) -> Tensor:
        inputs, targets, reply_mask, reference = batch
        out = dpo_batch_loss(
            self.model,
            None,
            PreferenceBatch(inputs, targets, reply_mask, reference),
            self.beta,
            self.label_smoothing,
            self.run.dpo.nll_weight,
        )
        # Sums kept on the device, read at log steps only (a read is a GPU sync).
        pairs = out.margins.numel()
        sums = {"reward_margin": out.margins.sum(), "preference_accuracy": out.accuracy * pairs}
        for name, value in sums.items():
            self._sums[name] = value + self._sums[name] if name in self._sums else value
        self._seen += pairs
        return out.loss

    def step_metrics(self) -> dict[str, float]:
        """Mean reward margin and preference accuracy of the training pairs since the last
        call."""
        if not self._seen:
            return {}
        metrics = {f"train_{name}": float(s) / self._seen for name, s in self._sums.items()}
        self._sums, self._seen = {}, 0
        return metrics

    def _evaluate(self) -> dict[str, float]:
        with self.autocast:
            return evaluate_preferences(
                self.model, None, self.val_pairs, self.beta, self.label_smoothing,
                self.run.train.batch_size,
            )  # fmt: skip

    def validate(self) -> dict[str, float]:
        m = self._evaluate()
        return {
            "val_loss": m["dpo_loss"],
            "val_preference_accuracy": m["preference_accuracy"],
            "val_reward_margin": m["reward_margin"],
            "val_chosen_reward": m["reward_chosen"],
            "val_rejected_reward": m["reward_rejected"],
        }

    def data_identity(self) -> dict[str, Any]:
        return {
            "pairs": len(self.train_pairs),
            "pairs_sha256": content_digest([_ids(p) for p in self.train_pairs]),
            "held_out_sha256": content_digest([_ids(p) for p in self.val_pairs]),
            "beta": self.beta,
            "label_smoothing": self.label_smoothing,
            "max_length": self.max_length,
            "batch_size": self.batch_size,
        }

    def files(self) -> dict[str, str]:
        """Generated pairs are written out, to read and to train on again as a file."""
        if not self.data.generated:
            return {}
        return {
            "preferences.jsonl": _jsonl(self.data.train),
            "preferences_held_out.jsonl": _jsonl(self.data.held_out),
        }

    # ------------------------------------------------------------------------ the end

    def finish(self, run_dir: Path) -> list[str]:
        data = self.data
        tuned = self._evaluate()
        assert data.base_replies is not None
        tuned_replies = generate_replies(self.base, data.measured_prompts, self.sampling)
        measure_name, higher_is_better, measure = data.measured
        before, after = measure(data.base_replies), measure(tuned_replies)
        base_accuracy = self.base_metrics["preference_accuracy"]
        examples = list(zip(data.measured_prompts, data.base_replies, tuned_replies, strict=True))
        examples = examples[:EXAMPLES]
        results = {
            "task": "dpo",
            "data": self.run.data,
            "source": data.source,
            "pairs": {"train": len(self.train_pairs), "held_out": len(self.val_pairs)},
            "beta": self.beta,
            "label_smoothing": self.label_smoothing,
            "held_out_preference_accuracy": {
                "base": base_accuracy,
                "tuned": tuned["preference_accuracy"],
            },
            "held_out_dpo_loss": {
                "base": self.base_metrics["dpo_loss"],
                "tuned": tuned["dpo_loss"],
            },
            "held_out_reward_margin": tuned["reward_margin"],
            "generations": {
                "measure": measure_name,
                "higher_is_better": higher_is_better,
                "prompts": len(data.measured_prompts),
                "max_new_tokens": REPLY_TOKENS,
                "base": before,
                "tuned": after,
                "examples": [
                    {"prompt": _prompt_json(p), "base": b, "tuned": t} for p, b, t in examples
                ],
            },
        }
        atomic_write_text(run_dir / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
        return [
            f"held-out preference accuracy: base {base_accuracy:.3f} -> tuned "
            f"{tuned['preference_accuracy']:.3f} ({len(self.val_pairs)} pairs; reward margin "
            f"{tuned['reward_margin']:+.3f})",
            f"{measure_name} of greedy replies to {len(data.measured_prompts)} held-out "
            f"prompts: base {before:.3f} -> tuned {after:.3f}",
            f"results in {run_dir / RESULTS_FILE}",
        ]


# ------------------------------------------------------------------------------ the data


@dataclass
class PreferenceData:
    """A run's pairs, and the held-out prompts whose replies are measured before and after."""

    train: list[PreferencePair]
    held_out: list[PreferencePair]
    source: str  # where the pairs come from, in words
    generated: bool
    measured_prompts: list[Prompt]
    base_replies: list[str] | None  # the base model's replies to them, once generated
    preference: str | None = None  # a generated preference's name (None: a file's pairs)

    @property
    def measured(self) -> tuple[str, bool, Callable[[Sequence[str]], float]]:
        """(what is measured, whether higher is better, the measure): a generated
        preference's own; for a file's, whose preference is unknown, the replies' length."""
        if self.preference is None:
            return "mean words per reply", False, mean_words
        p = generated_preference(self.preference)
        return p.measure_name, p.higher_is_better, p.measure


def preference_data(run: FinetuneRun, lm: LanguageModel, sampling: Sampling) -> PreferenceData:
    """run.data's pairs split into train and held out: a generated preference's, on-policy
    (lm's own replies), or a JSONL file's."""
    if run.data in PREFERENCES:
        return _generated(run, lm, sampling)
    if not Path(run.data).is_file():
        raise ScratchLMError(
            f"--data {run.data!r} is neither a generated preference ({', '.join(PREFERENCES)}) "
            "nor a file; give a JSONL of prompt, chosen and rejected"
        )
    pairs = read_preferences(run.data)
    train, held_out = split_by_prompt(pairs, run.val_fraction, run.train.seed, run.data)
    prompts = list(dict.fromkeys(p.prompt for p in held_out))[:MEASURED_PROMPTS]
    return PreferenceData(train, held_out, run.data, False, prompts, None)


def split_by_prompt(
    pairs: Sequence[PreferencePair], val_fraction: float, seed: int, where: str
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, held out): val_fraction of the distinct prompts (at least one), chosen by the
    seed, with every pair of theirs held out, so no held-out prompt is trained on."""
    prompts = list(dict.fromkeys(p.prompt for p in pairs))
    held_count = max(1, round(len(prompts) * val_fraction))
    if len(prompts) < 2 or held_count >= len(prompts):
        raise ScratchLMError(
            f"{where}: {len(prompts)} distinct prompts are too few to hold out val_fraction = "
            f"{val_fraction} of them and train on the rest; give more pairs"
        )
    random.Random(f"scratchlm dpo split seed {seed}").shuffle(prompts)
    held = set(prompts[:held_count])
    return [p for p in pairs if p.prompt not in held], [p for p in pairs if p.prompt in held]


def _generated(run: FinetuneRun, lm: LanguageModel, sampling: Sampling) -> PreferenceData:
    from scratchlm.finetune.preferences import chitchat_preferences

    name, total = run.data, run.dpo.pairs
    held_count = max(1, round(total * run.val_fraction))
    if held_count >= total:
        raise ScratchLMError(
            f"dpo.pairs = {total} with val_fraction = {run.val_fraction} leaves no pair to "
            "train on; raise dpo.pairs"
        )
    split = chitchat_preferences(name, total - held_count, held_count, run.train.seed)
    # A model without a chat template reads the message and replies on the next line.
    fix = (lambda p: p) if lm.chat_template else _on_next_line
    corpus_train = [fix(p) for p in split.train]
    corpus_held = [fix(p) for p in split.held_out]
    status(
        f"generating the base model's replies to {total:,} {name!r} prompts (on-policy pairs, "
        f"greedy, up to {REPLY_TOKENS} tokens)"
    )
    train_replies = generate_replies(lm, [p.prompt for p in corpus_train], sampling)
    held_replies = generate_replies(lm, [p.prompt for p in corpus_held], sampling)
    train = pairs_from_replies(name, corpus_train, train_replies)
    held_out = pairs_from_replies(name, corpus_held, held_replies)
    kept = f"{len(train) + len(held_out):,} of {total:,}"
    status(f"on-policy {name!r} pairs: {kept} prompts' replies can carry the preference")
    if not train or not held_out:
        raise ScratchLMError(
            f"the base model's replies to the {name!r} prompts make {len(train)} train and "
            f"{len(held_out)} held-out pairs ({PREFERENCES[name].description}; a reply that cannot "
            "carry it drops its pair); raise dpo.pairs, or use a model that replies in words"
        )
    source = f"generated {name!r} from chitchat, on-policy: {kept} kept"
    # The same held-out prompts are measured before and after, whether their pair was kept.
    measured = corpus_held[:MEASURED_PROMPTS]
    return PreferenceData(
        train, held_out, source, True, [p.prompt for p in measured],
        held_replies[:MEASURED_PROMPTS], name,
    )  # fmt: skip


def _on_next_line(pair: PreferencePair) -> PreferencePair:
    prompt = pair.prompt + "\n" if isinstance(pair.prompt, str) else pair.prompt
    return PreferencePair(prompt, pair.chosen, pair.rejected)


# ------------------------------------------------------------------------------ helpers


def _turn_off_dropout(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        elif isinstance(getattr(module, "dropout", None), float):
            setattr(module, "dropout", 0.0)  # noqa: B010 (attention's dropout_p, a float)


def _ids(pair: EncodedPreference) -> list[list[int]]:
    return [pair.prompt, pair.chosen, pair.rejected]


def _jsonl(pairs: Sequence[PreferencePair]) -> str:
    return "".join(json.dumps(p.to_json(), ensure_ascii=False) + "\n" for p in pairs)


def _prompt_json(prompt: Prompt) -> Any:
    return prompt if isinstance(prompt, str) else [dict(m) for m in prompt]
