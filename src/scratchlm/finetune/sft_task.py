"""Instruction / chat SFT: conversations rendered with the chat template, the loss on the
assistant's tokens only (finetune/conversations.py's mask; sft.train_on_all for every token),
rows packed or padded (finetune/sft_batches.py).

A base model with its own chat template (an imported chat model) keeps it; one without (our
own pretrained runs) learns ChatML, whose <|im_start|> and <|im_end|> its tokenizer must hold.

Measured on held-out conversations, for the base model before the first step and for the
tuned one at the end (finetune.json):
- the assistant-token loss;
- a reply to each held-out prompt (the conversation up to its last user turn), made as
  `scratchlm chat RUN` makes one, with the run's [sample] settings (temperature 0: greedy),
  until the end-of-turn token or sft.reply_tokens: how many end with that token (a model
  that holds the turn format stops by itself), and how many equal the held-out reply exactly
  (the measure of a skill with one right answer, asked greedily: finetune/skill_sets.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from scratchlm.core.atomic_files import atomic_write_text
from scratchlm.core.errors import ScratchLMError
from scratchlm.core.messages import progress, status
from scratchlm.finetune.chat_data import load_chat_set
from scratchlm.finetune.config import FinetuneRun
from scratchlm.finetune.conversations import (
    CHATML_TEMPLATE,
    CHATML_TOKEN_ROLES,
    IM_END,
    ChatFormat,
    chat_format_for,
)
from scratchlm.finetune.sft_batches import SFTBatches
from scratchlm.finetune.task import RESULTS_FILE, EpochBatches, FinetuneTask, content_digest
from scratchlm.inference.language_model import LanguageModel
from scratchlm.inference.text import continue_ids
from scratchlm.model import GPT
from scratchlm.train.step import model_loss
from scratchlm.train.validation import evaluate_loss

Conversation = list[dict[str, str]]


class SFTTask(FinetuneTask):
    name = "sft"

    def __init__(self, run: FinetuneRun, base: LanguageModel, device: torch.device) -> None:
        super().__init__(run, base, device)
        chats = load_chat_set(run.data)
        status(chats.describe())
        train, held_out = chats.split(run.val_fraction, run.train.seed)
        if not train or not held_out:
            raise ScratchLMError(
                f"{run.data}: {len(chats.conversations)} conversations are too few to hold "
                f"out val_fraction = {run.val_fraction} of them; give more conversations"
            )
        self.own_template = base.chat_template is None
        self.format = self._chat_format(run.sft.train_on_all)
        # An example of max_length + 1 tokens is a row of max_length next-token pairs.
        self.train_examples, fit = self.format.render_all(train, self.max_length + 1)
        status(f"training conversations: {fit.describe()}")
        self.val_examples, _ = self.format.render_all(held_out, self.max_length + 1)
        self.held_out = held_out
        self.pad_id = base.token_roles.get("pad", 0)
        tc = run.train
        batches = SFTBatches(
            self.train_examples, tc.batch_size, self.max_length, run.sft.batching, tc.seed,
            self.pad_id,
        )  # fmt: skip
        self.train_batches = EpochBatches(
            batches.num_batches, lambda e, i: _pair(batches.batch(e, i)), device
        )
        self.row_tokens = self.max_length
        # The held-out loss is on the assistant's tokens, whatever train_on_all says.
        val_format = self._chat_format(False) if run.sft.train_on_all else self.format
        scored = val_format.render_all(held_out, self.max_length + 1)[0]
        self.val_batches = [
            _pair(b)
            for b in SFTBatches(
                scored, tc.batch_size, self.max_length, "pad", tc.seed, self.pad_id
            ).epoch(0)
        ]
        self.model: GPT = base.model
        # Next-token loss as pretraining computes it (the fused head), -1 targets masked.
        self._train_loss = model_loss(self.model, run.train)
        # The model as chat sees it (the run's template and roles), weights training in place.
        self.chat_lm = LanguageModel(
            model=self.model,
            tokenizer=base.tokenizer,
            defaults=run.sample,
            chat_template=CHATML_TEMPLATE if self.own_template else base.chat_template,
            token_roles=_roles(base, self.own_template),
        )
        # Before any step: the base model's numbers.
        self.base_val_loss = self._val_loss()
        self.checked = held_out[: run.sft.held_out_replies]
        self.base_replies = self._replies("base model's replies")

    def _chat_format(self, train_on_all: bool) -> ChatFormat:
        base = self.base
        template = CHATML_TEMPLATE if self.own_template else base.chat_template
        return chat_format_for(base.tokenizer, template, base.token_roles, train_on_all)

    def loss(self, *batch: Tensor) -> Tensor:
        return self._train_loss(*batch)

    def _val_loss(self) -> float:
        batches = [(x.to(self.device), y.to(self.device)) for x, y in self.val_batches]
        return evaluate_loss(self.model, batches)

    def validate(self) -> dict[str, float]:
        return {"val_loss": self._val_loss()}

    def data_identity(self) -> dict[str, Any]:
        return {
            "examples": len(self.train_examples),
            "examples_sha256": content_digest([e.ids for e in self.train_examples]),
            "mask_sha256": content_digest([e.mask for e in self.train_examples]),
            "batching": self.run.sft.batching,
            "max_length": self.max_length,
            "batch_size": self.run.train.batch_size,
        }

    def files(self) -> dict[str, str]:
        if not self.own_template:
            return {}  # the base's template and token roles are copied
        return {
            "chat_template.jinja": CHATML_TEMPLATE,
            "token_roles.json": json.dumps(CHATML_TOKEN_ROLES, indent=2) + "\n",
        }

    def _replies(self, what: str) -> ReplyCheck:
        return check_replies(self.chat_lm, self.checked, self.run.sft.reply_tokens, what)

    def finish(self, run_dir: Path) -> list[str]:
        val_loss = self._val_loss()
        tuned = self._replies("tuned model's replies")
        base = self.base_replies
        results = {
            "task": "sft",
            "data": self.run.data,
            "held_out_conversations": len(self.held_out),
            "assistant_token_loss": {"base": self.base_val_loss, "tuned": val_loss},
            "replies": {"base": base.to_dict(), "tuned": tuned.to_dict()},
        }
        atomic_write_text(run_dir / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
        return [
            f"held-out assistant-token loss: base {self.base_val_loss:.4f} -> tuned {val_loss:.4f}",
            f"held-out replies ending with the end-of-turn token: base {base.describe_ended()}"
            f" -> tuned {tuned.describe_ended()}",
            f"held-out replies equal to the reference: base {base.describe_exact()} -> tuned "
            f"{tuned.describe_exact()}",
            f"results in {run_dir / RESULTS_FILE}",
        ]


def _pair(batch: Any) -> tuple[Tensor, Tensor]:
    return batch.inputs, batch.targets


def _roles(base: LanguageModel, own_template: bool) -> dict[str, int]:
    if not own_template:
        return base.token_roles
    ids = base.tokenizer.special_tokens
    return {role: ids[name] for role, name in CHATML_TOKEN_ROLES.items() if name in ids}


@dataclass
class ReplyCheck:
    """Greedy replies to held-out prompts, against the held-out replies."""

    replies: int
    ended: int  # ended with the end-of-turn token within the length limit
    exact: int  # equal to the held-out reply (surrounding whitespace aside)
    examples: list[dict[str, str]]  # the first few prompts with both replies

    def describe_ended(self) -> str:
        return f"{self.ended}/{self.replies} ({100 * self.ended / max(self.replies, 1):.1f}%)"

    def describe_exact(self) -> str:
        return f"{self.exact}/{self.replies} ({100 * self.exact / max(self.replies, 1):.1f}%)"

    def to_dict(self) -> dict[str, Any]:
        n = max(self.replies, 1)
        return {
            "replies": self.replies,
            "ended_with_end_of_turn": self.ended,
            "end_of_turn_rate": self.ended / n,
            "exact_match": self.exact,
            "exact_match_rate": self.exact / n,
            "examples": self.examples,
        }


def check_replies(
    lm: LanguageModel,
    conversations: Sequence[Conversation],
    reply_tokens: int,
    what: str = "replies",
    batch_size: int = 16,
) -> ReplyCheck:
    """Each conversation up to its last user turn, its next reply sampled with lm's [sample]
    settings for up to reply_tokens tokens (half the context, if that is less; a prompt keeps
    its latest tokens), compared with the conversation's own reply."""
    end_id = lm.token_roles.get("eos", lm.tokenizer.special_tokens.get(IM_END))
    if end_id is None:
        raise ScratchLMError("the model names no end-of-turn token (token_roles.json eos)")
    cases = [(c[: i + 1], _reply_after(c, i)) for c in conversations if (i := _last_user(c)) >= 0]
    reply_tokens = min(reply_tokens, lm.block_size // 2)
    room = lm.block_size - reply_tokens
    ended = exact = 0
    examples: list[dict[str, str]] = []
    sampling = lm.sampling(max_new_tokens=reply_tokens)
    with progress(total=len(cases), desc=what, unit="reply") as bar:
        for start in range(0, len(cases), batch_size):
            chunk = cases[start : start + batch_size]
            ids = [lm.encode_chat(prompt)[-room:] for prompt, _ in chunk]
            # Only the end-of-turn token ends a reply here: one that ends with another
            # special token (end of text) runs on, and does not count as ended.
            completions = continue_ids(lm.model, lm.tokenizer, ids, sampling, stop_ids={end_id})
            for (prompt, reference), done in zip(chunk, completions, strict=True):
                ended += len(done.tokens) < reply_tokens  # stopped by the end-of-turn token
                exact += done.text.strip() == reference.strip()
                if len(examples) < EXAMPLES_KEPT:
                    question = prompt[-1]["content"]
                    examples.append({"user": question, "reference": reference, "reply": done.text})
            bar.update(len(chunk))
    return ReplyCheck(len(cases), ended, exact, examples)


EXAMPLES_KEPT = 5


def _last_user(conversation: Conversation) -> int:
    users = [i for i, m in enumerate(conversation) if m["role"] == "user"]
    return users[-1] if users else -1


def _reply_after(conversation: Conversation, user: int) -> str:
    after = conversation[user + 1 : user + 2]
    return after[0]["content"] if after and after[0]["role"] == "assistant" else ""
