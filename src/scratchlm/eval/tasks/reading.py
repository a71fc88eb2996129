"""Reading task files: JSON Lines and JSON records, each problem one line naming the file, the
line and the key, so a user fixes a 10,000-line task file without hunting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scratchlm.core.errors import ScratchLMError
from scratchlm.core.user_files import json_kind, json_objects, read_text

Record = tuple[str, dict[str, Any]]  # (where: "file:line", the object)


def read_json_lines(path: Path, what: str = "task file") -> list[Record]:
    """Each non-blank line of a JSONL file as ("path:line", object)."""
    return list(json_objects(read_text(path, what), str(path), "a JSON object {...}"))


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
