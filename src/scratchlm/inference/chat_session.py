"""A conversation with a chat model: its history, a system prompt, and what fits in the context.

    session = ChatSession(lm, lm.sampling(temperature=0.7), system="Answer briefly.")
    reply = session.reply("What is the capital of France?", on_text=print_piece)
    reply.text, reply.finish, reply.dropped_turns
    session.save("chat.json")

Every reply renders the whole conversation the model still sees with the model's chat template
(LanguageModel.encode_chat), so the model gets the turn format it was fine-tuned on. A turn is
one user message and the assistant's reply. When the conversation no longer fits the model's
context, with room kept for the reply, the oldest turns are dropped (the system prompt stays),
for good, and the Reply says how many: a dropped turn does not come back when a later message
is shorter. The full conversation, dropped turns included, is kept for saving.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from scratchlm.core.atomic_files import atomic_write_text
from scratchlm.core.errors import ScratchLMError
from scratchlm.core.user_paths import check_output, user_path_errors
from scratchlm.inference.config import Sampling
from scratchlm.inference.language_model import LanguageModel

# Why a reply ended: the model's end-of-turn (or another special) token; max_new_tokens; the
# context filled up; the user pressed Ctrl-C.
Finish = Literal["end", "length", "context", "interrupted"]


@dataclass(frozen=True)
class Turn:
    """One exchange: the user's message and the assistant's reply to it."""

    user: str
    assistant: str


@dataclass(frozen=True)
class Reply:
    """What reply() produced, and what happened to the context on the way."""

    text: str
    finish: Finish
    dropped_turns: int  # oldest turns dropped from the context to make room for this one
    prompt_tokens: int  # what the model read: the rendered conversation the reply continues
    new_tokens: int  # tokens of the reply (the end-of-turn token not counted)


@dataclass
class ChatSession:
    """The state of one conversation with `lm` (which must have a chat template).

    sampling: how replies are sampled (default: the run's [sample] settings); its
    max_new_tokens is the longest reply. system: the system prompt (None: the template's own
    default, if it has one).
    """

    lm: LanguageModel = field(repr=False)
    sampling: Sampling | None = None
    system: str | None = None
    turns: list[Turn] = field(default_factory=list)
    # turns[:first_in_context] were dropped to fit the context: the model no longer sees them.
    first_in_context: int = 0
    # Files this session wrote with save(): it may replace those, and only those.
    saved: set[Path] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.lm.chat_template is None:
            where = self.lm.run_dir or "this model"
            raise ScratchLMError(
                f"{where} has no chat template (chat_template.jinja), so it cannot chat; use a "
                "chat model such as smollm2-135m-instruct (`scratchlm generate` continues plain "
                "text with this one)"
            )
        if self.sampling is None:
            self.sampling = self.lm.sampling()
        if not isinstance(self.sampling.max_new_tokens, int):
            raise ValueError("a chat session's max_new_tokens is one number")
        self.sampling.check()
        if self.system is not None:
            self.set_system(self.system)

    @property
    def max_new_tokens(self) -> int:
        assert self.sampling is not None and isinstance(self.sampling.max_new_tokens, int)
        return self.sampling.max_new_tokens

    @property
    def reserved_for_reply(self) -> int:
        """Tokens of the context kept free for the reply when old turns are dropped: the whole
        max_new_tokens, but never more than half the context, so a long conversation is not
        cut to almost nothing by a large max_new_tokens."""
        return max(1, min(self.max_new_tokens, self.lm.block_size // 2))

    def messages(self, in_context_only: bool = False) -> list[dict[str, str]]:
        """The conversation as [{"role", "content"}, ...] (the OpenAI / HF convention): the
        system prompt, then each turn's user and assistant messages; with in_context_only,
        only the turns the model still sees."""
        start = self.first_in_context if in_context_only else 0
        return self._messages(self.system, self.turns[start:])

    @staticmethod
    def _messages(system: str | None, turns: list[Turn]) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": system}] if system is not None else []
        for turn in turns:
            messages.append({"role": "user", "content": turn.user})
            messages.append({"role": "assistant", "content": turn.assistant})
        return messages

    def set_system(self, text: str | None) -> None:
        """Use `text` as the system prompt from the next reply on (None: none of ours, the
        template's default applies). Refused, leaving the old one, when the template does not
        take a system message (it raises) or when it alone leaves no room in the context."""
        if text is not None:
            probe = [*self._messages(text, []), {"role": "user", "content": "?"}]
            ids = self.lm.encode_chat(probe)  # the template's own refusal is one clear line
            room = self.lm.block_size - self.reserved_for_reply
            if len(ids) > room:
                raise ScratchLMError(
                    f"the system prompt with a one-character message is {len(ids)} tokens with "
                    f"the chat template, but the context holds {room} once "
                    f"{self.reserved_for_reply} are kept for the reply; shorten it (or lower "
                    "--max-new-tokens)"
                )
        self.system = text

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.turns.clear()
        self.first_in_context = 0

    def context_ids(self, user: str) -> tuple[list[int], int]:
        """The prompt for a reply to `user`: token ids of the conversation the model still
        sees plus `user`, rendered with an opening assistant turn, after dropping the oldest
        turns until it fits the context with reserved_for_reply tokens to spare. Returns the
        ids and the index of the first turn kept (the session is not changed)."""
        room = self.lm.block_size - self.reserved_for_reply
        question = [{"role": "user", "content": user}]
        first = self.first_in_context
        while True:
            ids = self.lm.encode_chat(self._messages(self.system, self.turns[first:]) + question)
            if len(ids) <= room:
                return ids, first
            if first == len(self.turns):
                what = (
                    "the system prompt and your message are" if self.system else "your message is"
                )
                raise ScratchLMError(
                    f"{what} {len(ids)} tokens with the chat template, but the context "
                    f"holds {room} once {self.reserved_for_reply} are kept for the reply; "
                    "shorten it (or lower --max-new-tokens)"
                )
            first += 1

    def reply(
        self,
        user: str,
        on_text: Callable[[str], None] | None = None,
        on_dropped: Callable[[int], None] | None = None,
    ) -> Reply:
        """The assistant's answer to `user`, added to the conversation with it.

        on_text(piece) gets the reply as it is generated (whole characters); on_dropped(n),
        before that, the number of oldest turns just dropped to make room, when any. Ctrl-C while it
        runs (KeyboardInterrupt) ends the reply early instead of propagating: what was already
        generated is kept as the reply (finish "interrupted"); a reply interrupted before its
        first character is not kept, nor is its message. A reply stops at the end-of-turn
        token, at max_new_tokens, or where the context is full (never sliding the window,
        which would silently lose the start of the conversation).
        """
        assert self.sampling is not None
        ids, first = self.context_ids(user)
        dropped = first - self.first_in_context
        self.first_in_context = first
        if dropped and on_dropped is not None:
            on_dropped(dropped)
        budget = min(self.max_new_tokens, self.lm.block_size - len(ids))
        pieces: list[str] = []
        count = 0

        def take_text(_: int, piece: str) -> None:
            pieces.append(piece)
            if on_text is not None:
                on_text(piece)

        def count_token(_: object) -> None:
            nonlocal count
            count += 1

        sampling = replace(self.sampling, max_new_tokens=budget)
        finish: Finish
        try:
            [done] = self.lm.generate([ids], sampling, on_text=take_text, on_token=count_token)
            text = done.text
            if count < budget:
                finish = "end"
            else:
                finish = "length" if budget == self.max_new_tokens else "context"
        except KeyboardInterrupt:
            text, finish = "".join(pieces), "interrupted"
        if text or finish != "interrupted":
            self.turns.append(Turn(user, text))
        return Reply(text, finish, dropped, len(ids), count)

    def record(self, model: str | None = None) -> dict[str, Any]:
        """What save() writes: the model, the whole conversation ("messages", so the file is
        also a record of SFT data), how many of its oldest turns the model no longer saw, the
        context size and the sampling settings."""
        assert self.sampling is not None
        return {
            "model": model if model is not None else str(self.lm.run_dir or ""),
            "messages": self.messages(),
            "dropped_turns": self.first_in_context,
            "block_size": self.lm.block_size,
            "sampling": asdict(self.sampling),
        }

    def save(self, path: str | Path, model: str | None = None) -> Path:
        """Write the conversation to `path` as JSON (record()), or append it as one line to a
        .jsonl file (a file of conversations, one a line). An existing .json file is replaced
        only when this session wrote it. Returns the path written."""
        path = Path(path).expanduser()
        record = self.record(model)
        appending = path.suffix == ".jsonl"
        if not appending and path.exists() and path.resolve() not in self.saved:
            raise ScratchLMError(
                f"{path} already exists; choose another name (a .jsonl file is appended to)"
            )
        check_output(path, folder=False)
        with user_path_errors(path, "write"):
            if appending:
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
            else:
                atomic_write_text(path, json.dumps(record, ensure_ascii=False, indent=2) + "\n")
        self.saved.add(path.resolve())
        return path
