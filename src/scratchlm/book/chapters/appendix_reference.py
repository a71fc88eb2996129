"""Appendix B: every configuration key and every command, generated, never written by hand.

The configuration reference walks the settings dataclasses (RunConfig's sections for
pretraining, FinetuneRun's for fine-tuning) and prints each field's type, default and the
comment its source gives it: what `--help` says. The command reference walks the `scratchlm`
parser the cli layer hands down (ctx.cli_parser), leaving out the `--section.key` options that
the configuration reference already lists.
"""

from __future__ import annotations

import argparse
import dataclasses
import textwrap
import typing
from typing import Any

from scratchlm.book import typst_markup as tm
from scratchlm.book.context import BookContext
from scratchlm.config import SECTIONS, RunConfig
from scratchlm.core.config_files import field_comments
from scratchlm.finetune.config import FinetuneRun

TITLE = "Appendix B: Configuration and command reference"


def write(ctx: BookContext) -> str:
    parts = [
        f"= {TITLE}\n",
        "Generated from the code at build time: the settings dataclasses for the keys and the "
        "command-line parser for the commands, so this appendix cannot disagree with them.\n",
        "== Configuration keys\n",
        "A recipe (`configs/*.toml`) sets keys in tables, `[train]` with `max_steps = 600`; the "
        "same key on the command line is `--train.max_steps 600`. Pretraining "
        "(`scratchlm train`) reads these sections:\n",
    ]
    defaults = RunConfig()
    for section in SECTIONS:
        parts.append(section_table(section, getattr(defaults, section)))
    parts.append(
        "A fine-tuning run (`scratchlm finetune`, or a recipe's `[finetune]` table) has its own "
        "keys and sections; its `[train]` and `[sample]` are the ones above, with other "
        "defaults:\n"
    )
    finetune = FinetuneRun()
    parts.append(section_table("finetune", finetune, skip=frozenset({"train", "sample", "model"})))
    for section in ("sft", "classify", "dpo", "lora"):
        parts.append(section_table(f"finetune.{section}", getattr(finetune, section)))
    parts.append("== Commands\n")
    if ctx.cli_parser is None:
        parts.append(tm.note("Built without the command-line parser: see `scratchlm --help`."))
    else:
        parts.append(commands_reference(ctx.cli_parser))
    return "\n".join(parts)


def section_table(name: str, settings: Any, skip: frozenset[str] = frozenset()) -> str:
    """One table: each plain field of a settings dataclass (nested ones are their own table)."""
    comments = field_comments(settings.__class__)
    hints = typing.get_type_hints(type(settings))
    rows = []
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.name in skip or dataclasses.is_dataclass(value):
            continue
        rows.append([f.name, type_name(hints[f.name]), shown(value), comments.get(f.name, "")])
    return f"=== {tm.text('[' + name + ']')}\n" + tm.table(
        ["key", "type", "default", "what it is"], rows, align="left, left, left, left"
    ).replace("#table(columns: 4,", "#table(columns: (auto, 1fr, 1fr, 2fr),", 1)


def type_name(kind: Any) -> str:
    if typing.get_origin(kind) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(kind))
    if typing.get_origin(kind) is list:
        return f"list[{type_name(typing.get_args(kind)[0])}]"
    return getattr(kind, "__name__", str(kind))


def shown(value: Any) -> str:
    """A default as a recipe would spell it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(shown(v) for v in value) + "]"
    return str(value)


def commands_reference(parser: argparse.ArgumentParser) -> str:
    """Each subcommand's usage line and options (the --section.key ones are above)."""
    parts = []
    for name, sub in subcommands(parser):
        parts.append(f"=== {tm.inline_code('scratchlm ' + name)}\n")
        shown_actions = [
            a
            for a in sub._actions
            if a.help != argparse.SUPPRESS
            and a.dest != "help"
            and not any("." in flag for flag in a.option_strings)
        ]
        sections = len(shown_actions) < len(sub._actions) - 1  # it takes --section.key too
        parts.append(tm.code(usage(f"scratchlm {name}", shown_actions, sections), lang="text"))
        rows = []
        for action in shown_actions:
            flags = ", ".join(action.option_strings) or action.dest
            rows.append([flags, (action.help or "").replace("%%", "%")])
        if rows:
            parts.append(
                tm.table(["option", "what it does"], rows, align="left, left").replace(
                    "#table(columns: 2,", "#table(columns: (auto, 1fr),", 1
                )
            )
    return "\n".join(parts)


def usage(command: str, actions: list[argparse.Action], sections: bool) -> str:
    """A short usage line: positionals, then each option once (argparse's own lists every
    --section.key, a page of them for `train`)."""
    words = [command]
    for action in actions:
        metavar = action.metavar or action.dest.upper()
        if not action.option_strings:
            words.append(str(metavar))
        elif action.nargs == 0:
            words.append(f"[{action.option_strings[0]}]")
        else:
            words.append(f"[{action.option_strings[0]} {metavar}]")
    if sections:
        words.append("[--section.key VALUE ...]")
    return textwrap.fill(" ".join(words), width=96, subsequent_indent="    ")


def subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> list[tuple[str, Any]]:
    """(name, parser) of every subcommand, nested ones ("data fetch") included, in order."""
    found: list[tuple[str, Any]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix}{name}"
                nested = subcommands(sub, full + " ")
                found.extend(nested or [(full, sub)])
    return found
