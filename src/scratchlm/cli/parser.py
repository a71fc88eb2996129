"""The argument parser every command uses: a mistake on the command line is one clear line.

argparse prints its usage and exits on a mistake; here it raises a ScratchLMError instead, so
main reports it like any other user error (`error: ...`, exit status 2). An unknown option is
named with the closest option of the command it was given to (`did you mean ...?`).
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Sequence
from typing import Any, NoReturn

from scratchlm.core.errors import ScratchLMError

# The innermost parser that met words it does not know, kept on the namespace for the message.
_UNKNOWN_IN = "unknown_words_parser"


class CommandParser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # No abbreviations: `--clean.min_word` must be an unknown key, not --clean.min_words.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        missing_value = re.fullmatch(
            r"argument (--?[^\s/]+)(?:/\S+)?: expected one argument", message
        )
        if missing_value:
            raise ScratchLMError(f"{missing_value.group(1)} needs a value")
        raise ScratchLMError(f"{message} (see `{self.prog} --help`)")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extra = super().parse_known_args(args, namespace)
        if extra and not hasattr(parsed, _UNKNOWN_IN):
            setattr(parsed, _UNKNOWN_IN, self)
        return parsed, extra

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            raise ScratchLMError(unknown_words_message(extra, getattr(parsed, _UNKNOWN_IN, self)))
        return parsed


def unknown_words_message(extra: list[str], parser: argparse.ArgumentParser) -> str:
    """One line about the first word `parser` does not take, with the closest option it does."""
    options = [flag for action in parser._actions for flag in action.option_strings]
    word = next((w for w in extra if w.startswith("-")), extra[0])
    if not word.startswith("-"):
        return f"unexpected argument {word!r} (see `{parser.prog} --help`)"
    name = word.partition("=")[0]
    section, dot, _ = name[2:].partition(".")
    if dot:
        # A config key: named as the config names it, within the sections this command takes.
        sections = sorted({o[2:].partition(".")[0] for o in options if "." in o})
        if section not in sections:
            taken = ", ".join(f"--{s}.*" for s in sections[:-1])
            taken = f"{taken} and --{sections[-1]}.*" if taken else f"--{sections[-1]}.*"
            return f"`{parser.prog}` takes only {taken} keys, not {name} (see --help)"
        keys = [o[2:] for o in options if o.startswith(f"--{section}.")]
        close = difflib.get_close_matches(name[2:], keys, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return f"command line: unknown key {name[2:]}{hint}; see `{parser.prog} --help`"
    close = difflib.get_close_matches(name, options, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"command line: unknown option {name} for `{parser.prog}`{hint}"
