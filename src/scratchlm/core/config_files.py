"""Typed settings from TOML files and the command line: the machinery every stage's config uses.

A stage keeps its settings as a dataclass (model/config.py, train/config.py, ...). These
functions read a TOML file, check each key and value against such a dataclass, and turn a
command-line string into the field's type; every mistake is one ScratchLMError naming where
(file or command line), the key, and the valid choices.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import io
import textwrap
import tokenize
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

from scratchlm.core.errors import ScratchLMError


def read_toml(path: str | Path) -> dict[str, Any]:
    """The tables of a TOML file; one clear line if it is missing, not UTF-8 or not TOML."""
    path = Path(path)
    if not path.is_file():
        raise ScratchLMError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ScratchLMError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ScratchLMError(f"{path}: not UTF-8 text") from None


def set_fields(target: Any, table: dict[str, Any], where: str, prefix: str) -> None:
    """Set every key of a TOML table on the dataclass `target`, each checked (set_field)."""
    for key, value in table.items():
        set_field(target, key, value, where=where, prefix=prefix)


def field_types(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def parse_cli_value(target: Any, name: str, text: str, prefix: str) -> Any:
    types_ = field_types(target)
    if name not in types_:
        return text  # set_field reports the unknown key with suggestions
    kind = types_[name]
    origin = typing.get_origin(kind)
    if kind is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ScratchLMError(f"--{prefix}{name} takes true or false, got {text!r}")
    if kind is int or kind is float:
        try:
            return kind(text)
        except ValueError:
            raise ScratchLMError(f"--{prefix}{name} takes a number, got {text!r}") from None
    if origin is list:
        items = [part for part in text.split(",") if part != ""]
        (item_kind,) = typing.get_args(kind)
        if item_kind is int or item_kind is float:
            try:
                return [item_kind(item) for item in items]
            except ValueError:
                raise ScratchLMError(
                    f"--{prefix}{name} takes comma-separated numbers, got {text!r}"
                ) from None
        return items
    return text


def set_field(target: Any, name: str, value: Any, where: str, prefix: str) -> None:
    types_ = field_types(target)
    # Fields that are themselves sections (a dataclass inside a dataclass) are set key by key.
    settable = {
        f.name for f in dataclasses.fields(target) if not dataclasses.is_dataclass(types_[f.name])
    }
    if name not in settable:
        close = difflib.get_close_matches(name, sorted(settable), n=1)
        hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
        raise ScratchLMError(
            f"{where}: unknown key {prefix}{name}{hint}; valid keys: {', '.join(sorted(settable))}"
        )
    kind = types_[name]
    setattr(target, name, check_type(value, kind, f"{where}: {prefix}{name}"))


def check_type(value: Any, kind: Any, what: str) -> Any:
    origin = typing.get_origin(kind)
    if origin is Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            raise ScratchLMError(
                f"{what} = {value!r} is not allowed; choose one of {', '.join(map(repr, choices))}"
            )
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ScratchLMError(f"{what} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScratchLMError(f"{what} must be a whole number, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ScratchLMError(f"{what} must be a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ScratchLMError(f"{what} must be a string, got {value!r}")
        return value
    if origin is list:
        (item_kind,) = typing.get_args(kind)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ScratchLMError(f"{what} must be a list, got {value!r}")
        return [check_type(v, item_kind, what) for v in value]
    if isinstance(kind, types.UnionType):  # pragma: no cover - no such fields yet
        return value
    raise TypeError(
        f"unsupported config field type {kind!r}"
    )  # a bug in a config class, not the user's


@functools.cache
def field_comments(settings: type) -> dict[str, str]:
    """Each field's comment in the source of the dataclass (and of the dataclasses it extends):
    the comment lines just above the field and the comment at the end of its line. The
    settings classes document their keys there, so `--help` says what the recipe file says."""
    comments: dict[str, str] = {}
    for cls in reversed(settings.__mro__):
        if not dataclasses.is_dataclass(cls):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(cls))
        except (OSError, TypeError):  # no source (a frozen app): help without comments
            continue
        by_line: dict[int, tuple[str, bool]] = {}  # line -> (comment, alone on its line)
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.COMMENT:
                alone = not token.line[: token.start[1]].strip()
                by_line[token.start[0]] = (token.string.lstrip("#").strip(), alone)
        body = ast.parse(source).body[0]
        assert isinstance(body, ast.ClassDef)
        for node in body.body:
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            above: list[str] = []
            line = node.lineno - 1
            while line in by_line and by_line[line][1]:
                above.insert(0, by_line[line][0])
                line -= 1
            trailing = by_line.get(node.end_lineno or node.lineno, ("", True))
            parts = [*above, *([trailing[0]] if not trailing[1] else [])]
            comments[node.target.id] = " ".join(p for p in parts if p)
    return comments
