"""Reading task files: JSON Lines and JSON records, each problem one line naming the file, the
line and the key, so a user fixes a 10,000-line task file without hunting."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scratchlm.core.errors import ScratchLMError
from scratchlm.core.user_files import read_text

Record = tuple[str, dict[str, Any]]  # (where: "file:line", the object)


def read_json_lines(path: Path, what: str = "task file") -> list[Record]:
    """Each non-blank line of a JSONL file as ("path:line", object)."""
    records = []
    for number, line in enumerate(read_text(path, what).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise ScratchLMError(
                f"{where}: not JSON ({e.msg} at column {e.colno}); each line of a .jsonl task "
                "must be one JSON object"
            ) from None
        records.append((where, as_object(value, where)))
    return records


def as_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ScratchLMError(f"{where}: expected a JSON object {{...}}, got {json_kind(value)}")
    return value


def require(record: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """record[key], which must be there and of `kind` (bool is never an int here)."""
    if key not in record:
        raise ScratchLMError(f'{where}: missing key "{key}"')
    value = record[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        expected = (
            kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        )
        raise ScratchLMError(f'{where}: "{key}" must be {expected}, got {json_kind(value)}')
    return value


def json_kind(value: Any) -> str:
    """A JSON value's kind as a user reads it."""
    names = {dict: "an object", list: "a list", str: "text", bool: "true/false", type(None): "null"}
    for python_type, name in names.items():
        if isinstance(value, python_type):
            return name
    return "a number" if isinstance(value, (int, float)) else type(value).__name__
