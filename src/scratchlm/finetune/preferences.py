"""Preference data for DPO: a prompt and two replies to it, one preferred over the other.

A preference file is JSONL, one pair per line (the convention of TRL and most preference sets):

    {"prompt": "Any plans tonight?", "chosen": "A movie.", "rejected": "A movie, or maybe ..."}

The prompt may also be a conversation the reply continues, a list of {"role", "content"}
messages, and chosen/rejected may be written as [{"role": "assistant", "content": ...}] (TRL's
conversational form). read_preferences refuses a bad line with its number and key.

The project also generates a preference it can measure, from the chitchat corpus (real,
short, casual messages), so DPO can be shown to work without a downloaded preference set:

    concise    the reply alone is preferred over the reply that runs on into the next few
               messages of the chat; measured by the mean words per generated reply (lower)
    question   the reply followed by a question from the same chat is preferred over the bare
               reply; measured by the fraction of generated replies ending in '?' (higher)

The set is deterministic given the documents and the seed, and split into train and held-out
by chat, so no chat (and no prompt) is on both sides.

Pairs made of the corpus' replies are off-policy: a model whose own replies look nothing like
chitchat (SmolLM2-Instruct writes long assistant prose) learns to rank the corpus' replies
(held-out accuracy rises) while its own generations hardly move. pairs_from_replies rebuilds
each pair around the model's own reply to its prompt (generate_replies), so the preference is
taught where the model's generations are: concise keeps the reply's first sentence over the
whole reply, question appends the pair's question to the reply over the bare reply.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scratchlm.core.atomic_files import atomic_write_text
from scratchlm.core.errors import ScratchLMError
from scratchlm.core.user_files import read_text
from scratchlm.inference.config import Sampling
from scratchlm.inference.language_model import LanguageModel

Message = Mapping[str, str]
Prompt = str | tuple[Message, ...]  # text, or a conversation the reply continues
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class PreferencePair:
    """A prompt, the reply preferred for it and the reply less preferred."""

    prompt: Prompt
    chosen: str
    rejected: str

    def to_json(self) -> dict[str, Any]:
        prompt = self.prompt if isinstance(self.prompt, str) else [dict(m) for m in self.prompt]
        return {"prompt": prompt, "chosen": self.chosen, "rejected": self.rejected}


# ------------------------------------------------------------------------------ files


def read_preferences(path: str | os.PathLike[str]) -> list[PreferencePair]:
    """The pairs of a JSONL preference file (module docstring); blank lines are skipped.

    Refused, each with the file, line and key: a line that is not a JSON object, a missing or
    empty prompt/chosen/rejected, a message without a known role or a text content, and a pair
    whose chosen and rejected are the same (it teaches nothing and hides a data bug).
    """
    text = read_text(path, "preference file")
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            pairs.append(parse_preference(line, f"{path}, line {number}"))
    if not pairs:
        raise ScratchLMError(
            f"preference file {path} holds no pairs; write one JSON object per line: "
            '{"prompt": ..., "chosen": ..., "rejected": ...}'
        )
    return pairs


def parse_preference(line: str, where: str) -> PreferencePair:
    """One JSONL line as a PreferencePair; `where` (file and line) starts every error."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ScratchLMError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
        raise ScratchLMError(
            f'{where}: expected an object {{"prompt": ..., "chosen": ..., "rejected": ...}}, '
            f"got {type(record).__name__}"
        )
    for key in ("prompt", "chosen", "rejected"):
        if key not in record:
            keys = ", ".join(sorted(record)) or "none"
            raise ScratchLMError(f'{where}: key "{key}" is missing (the line has: {keys})')
    prompt = _prompt(record["prompt"], where)
    chosen = _reply(record["chosen"], where, "chosen")
    rejected = _reply(record["rejected"], where, "rejected")
    if chosen == rejected:
        raise ScratchLMError(
            f'{where}: "chosen" and "rejected" are the same reply, so there is no preference '
            "to learn; fix or remove the line"
        )
    return PreferencePair(prompt, chosen, rejected)


def _prompt(value: Any, where: str) -> Prompt:
    if isinstance(value, str):
        if not value.strip():
            raise ScratchLMError(f'{where}: key "prompt" is empty')
        return value
    if not isinstance(value, list) or not value:
        raise ScratchLMError(
            f'{where}: key "prompt" must be text or a non-empty list of '
            '{"role", "content"} messages'
        )
    messages = []
    for k, message in enumerate(value):
        at = f'{where}: key "prompt", message {k}'
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ScratchLMError(f'{at} must be {{"role": ..., "content": "text"}}')
        if message.get("role") not in ROLES:
            raise ScratchLMError(
                f"{at} has role {message.get('role')!r}; use one of {', '.join(ROLES)}"
            )
        if not message["content"].strip():
            raise ScratchLMError(f"{at} has an empty content")
        messages.append({"role": message["role"], "content": message["content"]})
    if messages[-1]["role"] == "assistant":
        raise ScratchLMError(
            f'{where}: key "prompt" ends with an assistant message; the prompt is what the '
            "reply answers, so it ends with a user (or system) message"
        )
    return tuple(messages)


def _reply(value: Any, where: str, key: str) -> str:
    # TRL's conversational form: [{"role": "assistant", "content": "..."}].
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        if value[0].get("role") != "assistant":
            raise ScratchLMError(f'{where}: key "{key}" must be an assistant message')
        value = value[0].get("content")
    if not isinstance(value, str):
        raise ScratchLMError(
            f'{where}: key "{key}" must be text (or one assistant message), '
            f"got {type(value).__name__}"
        )
    if not value.strip():
        raise ScratchLMError(f'{where}: key "{key}" is empty')
    return value


def write_preferences(path: str | os.PathLike[str], pairs: Sequence[PreferencePair]) -> None:
    """Write `pairs` as JSONL (atomically), in the form read_preferences reads."""
    lines = [json.dumps(pair.to_json(), ensure_ascii=False) + "\n" for pair in pairs]
    atomic_write_text(Path(path), "".join(lines))


# ------------------------------------------------------------------------------ generated


@dataclass(frozen=True)
class PreferenceSplit:
    """Pairs to train on, and pairs from other chats to measure preference accuracy on."""

    train: list[PreferencePair]
    held_out: list[PreferencePair]


@dataclass(frozen=True)
class GeneratedPreference:
    """A preference the project generates from chat documents, and how to measure it."""

    name: str
    description: str
    measure_name: str  # what measure() returns, for reports
    higher_is_better: bool
    # One chat's messages, a random source -> that chat's pairs (a few at most).
    pairs_of_chat: Callable[[list[str], random.Random, int], list[PreferencePair]]
    measure: Callable[[Sequence[str]], float]  # generated replies -> the measured value
    # A corpus pair and the model's own reply to its prompt -> the pair rebuilt around the
    # reply, or None when the reply cannot carry the preference.
    from_reply: Callable[[PreferencePair, str], PreferencePair | None]


MIN_WORDS, MAX_WORDS = 2, 30  # a prompt or a reply: not a bare "hi", not a paragraph


def _fits(message: str) -> bool:
    return MIN_WORDS <= len(message.split()) <= MAX_WORDS


def _concise_pairs(lines: list[str], rng: random.Random, per_chat: int) -> list[PreferencePair]:
    """Prompt: a message; chosen: the next one; rejected: it and the 2-4 that follow it."""
    starts = [i for i in range(len(lines) - 5) if _fits(lines[i]) and _fits(lines[i + 1])]
    pairs = []
    for i in rng.sample(starts, min(per_chat, len(starts))):
        extra = rng.randint(2, 4)
        rambling = " ".join(lines[i + 1 : i + 2 + extra])
        pairs.append(PreferencePair(lines[i], lines[i + 1], rambling))
    return pairs


def _question_pairs(lines: list[str], rng: random.Random, per_chat: int) -> list[PreferencePair]:
    """Prompt: a message; chosen: the next one (not itself a question) followed by a short
    question from the next four messages, so it stays on topic; rejected: the bare reply."""
    pairs = []
    for i in rng.sample(range(len(lines)), len(lines)):
        reply = lines[i + 1] if i + 1 < len(lines) else ""
        if not (_fits(lines[i]) and _fits(reply)) or reply.endswith("?"):
            continue
        later = [line for line in lines[i + 2 : i + 6] if _is_short_question(line)]
        if later:
            pairs.append(PreferencePair(lines[i], f"{reply} {later[0]}", reply))
            if len(pairs) == per_chat:
                break
    return pairs


SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\s*\n\s*")


def _concise_from_reply(pair: PreferencePair, reply: str) -> PreferencePair | None:
    """Chosen: the reply's first sentence (or line); rejected: the whole reply."""
    reply = reply.strip()
    first = SENTENCE_BREAK.split(reply, maxsplit=1)[0]
    if first == reply or len(first.split()) < MIN_WORDS:
        return None
    return PreferencePair(pair.prompt, first, reply)


def _question_from_reply(pair: PreferencePair, reply: str) -> PreferencePair | None:
    """Chosen: the reply, then the corpus pair's question; rejected: the bare reply."""
    reply = reply.strip()
    question = pair.chosen.removeprefix(pair.rejected).strip()
    if not reply or reply.endswith("?") or not question.endswith("?"):
        return None
    return PreferencePair(pair.prompt, f"{reply} {question}", reply)


def _is_short_question(line: str) -> bool:
    # A whole question ("What do you study?"), not a fragment ("...or not?") or a speech.
    return line.endswith("?") and line[0].isalpha() and 3 <= len(line.split()) <= 15


def mean_words(replies: Sequence[str]) -> float:
    """Mean number of whitespace-separated words per reply."""
    if not replies:
        raise ScratchLMError("no replies to measure")
    return sum(len(r.split()) for r in replies) / len(replies)


def fraction_ending_in_question(replies: Sequence[str]) -> float:
    """Fraction of replies whose last non-space character is '?'."""
    if not replies:
        raise ScratchLMError("no replies to measure")
    return sum(r.rstrip().endswith("?") for r in replies) / len(replies)


PREFERENCES: dict[str, GeneratedPreference] = {
    p.name: p
    for p in (
        GeneratedPreference(
            "concise",
            "a short reply over one that runs on into the next messages",
            "mean words per reply",
            False,
            _concise_pairs,
            mean_words,
            _concise_from_reply,
        ),
        GeneratedPreference(
            "question",
            "a reply that ends by asking a question back over the bare reply",
            "fraction of replies ending in '?'",
            True,
            _question_pairs,
            fraction_ending_in_question,
            _question_from_reply,
        ),
    )
}


def generated_preference(name: str) -> GeneratedPreference:
    if name not in PREFERENCES:
        raise ScratchLMError(
            f"unknown generated preference {name!r}; use one of {', '.join(PREFERENCES)}"
        )
    return PREFERENCES[name]


def generate_preferences(
    name: str,
    chats: Sequence[str],
    count: int = 2000,
    held_out: int = 200,
    seed: int = 0,
    per_chat: int = 2,
) -> PreferenceSplit:
    """`count` train pairs and `held_out` held-out pairs of the named preference, from `chats`
    (documents of one message per line, as the chitchat corpus stores them).

    Deterministic for the same chats, name and seed. The chats are shuffled and the held-out
    pairs come from the first ones, the train pairs from the rest: no chat is in both, and a
    train pair whose prompt is also a held-out prompt is dropped. Within each side a prompt is
    used once. Too few chats for the counts asked is an error that says how many there are.
    """
    preference = generated_preference(name)
    if count < 1 or held_out < 0 or per_chat < 1:
        raise ScratchLMError(
            f"count must be >= 1, held_out >= 0 and per_chat >= 1, got {count}, {held_out} "
            f"and {per_chat}"
        )
    rng = random.Random(f"scratchlm preferences {name} seed {seed}")
    order = list(range(len(chats)))
    rng.shuffle(order)
    sides: tuple[list[PreferencePair], list[PreferencePair]] = ([], [])
    prompts: tuple[set[Prompt], set[Prompt]] = (set(), set())
    for index in order:
        side = 0 if len(sides[0]) < held_out else 1
        if side == 1 and len(sides[1]) >= count:
            break
        lines = [line.strip() for line in chats[index].splitlines() if line.strip()]
        for pair in preference.pairs_of_chat(lines, rng, per_chat):
            if pair.prompt in prompts[0] or pair.prompt in prompts[side]:
                continue
            prompts[side].add(pair.prompt)
            sides[side].append(pair)
    held, train = sides[0][:held_out], sides[1][:count]
    if len(held) < held_out or len(train) < count:
        raise ScratchLMError(
            f"{len(chats)} chats make only {len(train)} train and {len(held)} held-out "
            f"{name!r} pairs, fewer than the {count} and {held_out} asked; ask for fewer or "
            "give more chats"
        )
    return PreferenceSplit(train, held)


def chitchat_preferences(
    name: str, count: int = 2000, held_out: int = 200, seed: int = 0
) -> PreferenceSplit:
    """generate_preferences from the chitchat corpus (fetched into the cache the first time)."""
    from scratchlm.data.sources import fetch_corpus

    folder = fetch_corpus("chitchat")
    chats = [path.read_text(encoding="utf-8") for path in sorted(folder.glob("*.txt"))]
    return generate_preferences(name, chats, count, held_out, seed)


def pairs_from_replies(
    name: str, pairs: Sequence[PreferencePair], replies: Sequence[str]
) -> list[PreferencePair]:
    """The named preference's `pairs` rebuilt around the model's own replies to their prompts
    (replies[i] answers pairs[i].prompt; generate_replies makes them): on-policy pairs (module
    docstring). A reply that cannot carry the preference (concise: a single sentence; question:
    already a question, or empty) drops its pair."""
    if len(pairs) != len(replies):
        raise ScratchLMError(f"{len(pairs)} pairs but {len(replies)} replies; give one each")
    preference = generated_preference(name)
    rebuilt = [
        preference.from_reply(pair, reply) for pair, reply in zip(pairs, replies, strict=True)
    ]
    return [pair for pair in rebuilt if pair is not None]


# ------------------------------------------------------------------------------ measuring


def generate_replies(
    lm: LanguageModel, prompts: Sequence[Prompt], sampling: Sampling, batch_size: int = 16
) -> list[str]:
    """The model's reply to each prompt: through its chat template when it has one (a text
    prompt is one user message), else the prompt's plain text continued. A reply ends at a
    special token (end of turn, end of text) or at sampling.max_new_tokens."""
    replies: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        if lm.chat_template is not None:
            chats = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in batch]
            done = lm.chat(chats, sampling)
        else:
            if not all(isinstance(p, str) for p in batch):
                raise ScratchLMError(
                    "a conversation prompt needs a model with a chat template; this one has "
                    "none, so give the prompts as text"
                )
            done = lm.generate([p for p in batch if isinstance(p, str)], sampling)
        replies.extend(c.text for c in done)
    return replies


def measure_generations(
    lm: LanguageModel, name: str, prompts: Sequence[Prompt], sampling: Sampling
) -> float:
    """The named preference's measure (PREFERENCES[name].measure_name) over the model's replies
    to `prompts`: compare it before and after DPO to see generations move the preferred way."""
    return generated_preference(name).measure(generate_replies(lm, prompts, sampling))
