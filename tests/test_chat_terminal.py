"""`scratchlm chat` in a real terminal (a pseudo-terminal, driven with pexpect): the prompt,
a streamed reply and the prompt back, /system, /reset, /save, Ctrl-C during a reply (the
session goes on), Ctrl-C twice at the prompt, Ctrl-D and /quit (each ends it with status 0).
The models are tests/test_chat.py's scripted ones: one says "Hi!", one babbles forever."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from test_chat import BABBLES, SAYS_HI, save_chat_run

pexpect = pytest.importorskip("pexpect")

TIMEOUT = 60  # seconds for anything to show: loading torch on a busy machine is slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("chat-terminal")
    save_chat_run(base / "hi", SAYS_HI, block_size=256)
    # A context long enough that its reply, which never ends by itself, is still being
    # written when Ctrl-C comes.
    save_chat_run(base / "babble", BABBLES, block_size=16384)
    return base


def start_chat(*args: str) -> Any:  # a pexpect.spawn
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "200", "LINES": "50"}
    child = pexpect.spawn(
        sys.executable,
        ["-m", "scratchlm", "chat", *args],
        env=env,
        encoding="utf-8",
        timeout=TIMEOUT,
        dimensions=(50, 200),
    )
    child.expect("/help for commands")
    child.expect_exact(">>> ")
    return child


def ended(child: Any) -> int:
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


def test_a_conversation_with_commands(runs: Path, tmp_path: Path) -> None:
    child = start_chat(str(runs / "hi"), "--temperature", "0")
    child.sendline("hello")
    child.expect_exact("Hi!")  # the reply, streamed
    child.expect_exact(">>> ")  # and the prompt back
    child.sendline("/system Be brief.")
    child.expect_exact("system prompt set")
    child.expect_exact(">>> ")
    child.sendline("/system")
    child.expect_exact("system prompt: Be brief.")
    child.sendline("/reset")
    child.expect_exact("the conversation is forgotten")
    child.expect_exact(">>> ")
    child.sendline("again")
    child.expect_exact("Hi!")
    child.expect_exact(">>> ")
    saved = tmp_path / "chat.json"
    child.sendline(f"/save {saved}")
    child.expect_exact("(3 messages) written to")
    child.expect_exact(">>> ")
    child.sendline("/quit")
    assert ended(child) == 0
    assert json.loads(saved.read_text(encoding="utf-8"))["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "Hi!"},
    ]


def test_ctrl_c_stops_the_reply_not_the_session(runs: Path, tmp_path: Path) -> None:
    child = start_chat(str(runs / "babble"), "--max-new-tokens", "100000")
    child.sendline("go on")
    child.expect_exact("blah blah blah")
    child.sendintr()
    child.expect_exact("[interrupted]")
    child.expect_exact(">>> ")
    # The session goes on, and keeps what was written of the reply.
    saved = tmp_path / "chat.json"
    child.sendline(f"/save {saved}")
    child.expect_exact("(2 messages) written to")
    child.expect_exact(">>> ")
    reply = json.loads(saved.read_text(encoding="utf-8"))["messages"][1]["content"]
    assert reply.startswith("blah blah blah") and len(reply) < 16000
    # Ctrl-C at the prompt warns; a second one ends the session.
    child.sendintr()
    child.expect_exact("Ctrl-C again")
    child.sendintr()
    assert ended(child) == 0


def test_ctrl_d_ends_the_session(runs: Path) -> None:
    child = start_chat(str(runs / "hi"))
    child.sendeof()
    assert ended(child) == 0
