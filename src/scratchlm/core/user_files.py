"""Reading a file the user named: a missing, unreadable or malformed one is one clear line.

`what` names the file's role in the message ("tokenizer file", "vocab.json", ...), so the
user learns which of their inputs is wrong and why, never a traceback.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scratchlm.core.errors import ScratchLMError
from scratchlm.core.user_paths import os_error_message


def read_bytes(path: str | os.PathLike[str], what: str = "file", size: int = -1) -> bytes:
    """The bytes of `path` (the first `size` of them, if given); ScratchLMError if it is
    missing, a folder or unreadable."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            return f.read(size)
    except FileNotFoundError:
        raise ScratchLMError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise ScratchLMError(f"{what} {path} is a folder, not a file") from None
    except OSError as e:  # permissions, a symlink loop, ...: the one message for them
        raise ScratchLMError(os_error_message(e, f"read {what}", path)) from None


def read_text(path: str | os.PathLike[str], what: str = "file") -> str:
    """The UTF-8 text of `path`, line ends as they are; read_bytes' errors, and not UTF-8."""
    return decode_utf8(read_bytes(path, what), f"{what} {path}")


def decode_utf8(data: bytes, where: str) -> str:
    """`data` as strict UTF-8; bytes that are not UTF-8 are one ScratchLMError saying `where`
    (a file's role and path, "standard input"), the byte, its offset and its line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise not_utf8_error(where, data, e.start) from None


def not_utf8_error(
    where: str, data: bytes, offset: int, bytes_before: int = 0, lines_before: int = 0
) -> ScratchLMError:
    """The one message for text that is not UTF-8: the byte at `offset` of `data` is bad.

    `bytes_before` and `lines_before` count what came before `data`, for text read a block
    at a time.
    """
    line = lines_before + data.count(b"\n", 0, offset) + 1
    return ScratchLMError(
        f"{where}: not UTF-8 text: byte 0x{data[offset]:02x} at byte offset "
        f"{bytes_before + offset} "
        f"(line {line}); convert it to UTF-8, e.g. with iconv -f latin1 -t utf-8"
    )


def read_json(path: str | os.PathLike[str], what: str = "file") -> Any:
    """The parsed JSON of `path`, with read_text's errors, and the line and column of bad JSON."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ScratchLMError(
            f"{what} {path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
            "is it truncated?"
        ) from None


def json_kind(value: Any) -> str:
    """A JSON value's kind as a user reads it."""
    names = {dict: "an object", list: "a list", str: "text", bool: "true/false", type(None): "null"}
    for python_type, name in names.items():
        if isinstance(value, python_type):
            return name
    return "a number" if isinstance(value, (int, float)) else type(value).__name__


def json_objects(text: str, where: str, expected: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each non-blank line of JSON Lines text as ("where:line", the object). A line that is not
    JSON, or not an object, is a ScratchLMError naming it; `expected` says what a line should
    be ('an object with "text" and "label"')."""
    for number, line in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):
        if not line.strip():
            continue
        at = f"{where}:{number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise ScratchLMError(
                f"{at}: not JSON ({e.msg} at column {e.colno}); each line must be {expected}"
            ) from None
        if not isinstance(value, dict):
            raise ScratchLMError(f"{at}: expected {expected}, got {json_kind(value)}")
        yield at, value
