"""Instruction / chat SFT: conversations rendered with the chat template, the loss on the
assistant's tokens only (finetune/conversations.py's mask; sft.train_on_all for every token),
rows packed or padded (finetune/sft_batches.py).

A base model with its own chat template (an imported chat model) keeps it; one without (our
own pretrained runs) learns ChatML, whose <|im_start|> and <|im_end|> its tokenizer must hold.

Measured at the end, on held-out conversations (finetune.json):
- the assistant-token loss of the base model and of the tuned one;
- how many replies end with the end-of-turn token, generating from each held-out prompt
  (the conversation up to its last user turn) until that token or a length limit: a model
  that holds the turn format stops by itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
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
from scratchlm.finetune.task import EpochBatches, FinetuneTask, content_digest
from scratchlm.inference.engine import NewToken
from scratchlm.inference.language_model import LanguageModel
from scratchlm.model import GPT
from scratchlm.train.validation import evaluate_loss

Conversation = list[dict[str, str]]
END_OF_TURN_PROMPTS = 100  # held-out prompts the end-of-turn rate is measured on, at most
REPLY_TOKENS = 96  # a reply that has not ended by then did not stop


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
        self.base_val_loss = self._val_loss()  # before any step: the base model's

    def _chat_format(self, train_on_all: bool) -> ChatFormat:
        base = self.base
        template = CHATML_TEMPLATE if self.own_template else base.chat_template
        return chat_format_for(base.tokenizer, template, base.token_roles, train_on_all)

    def loss(self, *batch: Tensor) -> Tensor:
        x, y = batch
        if self.run.train.fused_loss:
            return self.model.training_loss(x, y)
        _, loss = self.model(x, y)
        assert loss is not None
        return loss

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

    def finish(self, run_dir: Path) -> list[str]:
        tuned = LanguageModel(
            model=self.model,
            tokenizer=self.base.tokenizer,
            defaults=self.base.defaults,
            chat_template=CHATML_TEMPLATE if self.own_template else self.base.chat_template,
            token_roles=_roles(self.base, self.own_template),
            run_dir=run_dir,
        )
        val_loss = self._val_loss()
        ended, total = end_of_turn_rate(tuned, self.held_out[:END_OF_TURN_PROMPTS])
        results = {
            "task": "sft",
            "held_out_conversations": len(self.held_out),
            "assistant_token_loss": {"base": self.base_val_loss, "tuned": val_loss},
            "end_of_turn": {"ended": ended, "replies": total, "rate": ended / max(total, 1)},
        }
        atomic_write_text(run_dir / "finetune.json", json.dumps(results, indent=2) + "\n")
        return [
            f"held-out assistant-token loss: base {self.base_val_loss:.4f} -> tuned {val_loss:.4f}",
            f"replies ending with the end-of-turn token: {ended}/{total} "
            f"({100 * ended / max(total, 1):.1f}%) of held-out prompts",
            f"results in {run_dir / 'finetune.json'}",
        ]


def _pair(batch: Any) -> tuple[Tensor, Tensor]:
    return batch.inputs, batch.targets


def _roles(base: LanguageModel, own_template: bool) -> dict[str, int]:
    if not own_template:
        return base.token_roles
    ids = base.tokenizer.special_tokens
    return {role: ids[name] for role, name in CHATML_TOKEN_ROLES.items() if name in ids}


def end_of_turn_rate(
    lm: LanguageModel, conversations: Sequence[Conversation], batch_size: int = 16
) -> tuple[int, int]:
    """(replies that ended with the end-of-turn token, replies): each conversation up to its
    last user turn, the next reply generated greedily for up to REPLY_TOKENS tokens (half
    the context, if that is less; a prompt keeps its latest tokens)."""
    end_id = lm.token_roles.get("eos", lm.tokenizer.special_tokens.get(IM_END))
    prompts = [_prompt_of(c) for c in conversations]
    prompts = [p for p in prompts if p]
    # A small context keeps half of it for the reply.
    reply_tokens = min(REPLY_TOKENS, lm.block_size // 2)
    room = lm.block_size - reply_tokens
    ended = 0
    sampling = lm.sampling(temperature=0.0, max_new_tokens=reply_tokens)
    with progress(total=len(prompts), desc="end-of-turn check", unit="reply") as bar:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            ids = [lm.encode_chat(p)[-room:] for p in chunk]
            last: dict[int, int] = {}

            def keep_last(token: NewToken, last: dict[int, int] = last) -> None:
                last[token.row] = token.token

            lm.generate(ids, sampling, on_token=keep_last)
            ended += sum(last.get(row) == end_id for row in range(len(chunk)))
            bar.update(len(chunk))
    return ended, len(prompts)


def _prompt_of(conversation: Conversation) -> Conversation:
    """The conversation up to (and with) its last user turn."""
    users = [i for i, m in enumerate(conversation) if m["role"] == "user"]
    return conversation[: users[-1] + 1] if users else []
