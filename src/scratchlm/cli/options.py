"""One convention for options on every command: a stage's settings as `--section.key VALUE`.

Each stage keeps its settings in a dataclass (data/config.py, tokenizer/config.py, ...). A
command adds one option per field with add_section_options, so the flags, their types and
their defaults come from the dataclass and are never copied here; short aliases people expect
(`--vocab-size`) set the same key. section_from_args then applies what was given to a base
settings object and validates it, with the same checks and messages as a TOML recipe.

Values are kept as the strings typed, in command-line order, and checked only when the command
runs: so a bad value is one `error:` line naming the option (core/config_files.py), and a later
option wins over an earlier one, as in a recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from scratchlm.core.config_files import field_comments, field_types, parse_cli_value, set_field
from scratchlm.core.errors import ScratchLMError

T = TypeVar("T")

# Where the given options are collected on the argparse namespace, in command-line order.
GIVEN = "section_options_given"


@dataclass(frozen=True)
class GivenOption:
    """One `--section.key VALUE` (or its alias) as typed."""

    section: str  # "" for a top-level key such as --name
    key: str
    text: str
    flag: str  # the spelling used, for error messages
    alias: bool  # given by its short alias: list values are then repeated, not comma-separated

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.key}" if self.section else self.key


class _Collect(argparse.Action):
    """Records the option in GIVEN instead of setting an attribute of its own."""

    def __init__(self, *args: Any, section: str, key: str, alias_flag: str | None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.section, self.key, self.alias_flag = section, key, alias_flag

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        given = list(getattr(namespace, GIVEN, None) or [])
        flag = option_string or self.option_strings[0]
        given.append(
            GivenOption(self.section, self.key, str(values), flag, flag == self.alias_flag)
        )
        setattr(namespace, GIVEN, given)


def add_section_options(
    parser: argparse.ArgumentParser,
    section: str,
    settings: type,
    aliases: dict[str, str] | None = None,
    skip: Collection[str] = (),
) -> None:
    """Add `--{section}.{key}` for every field of the dataclass `settings` (section "" adds
    plain `--{key}`), except the `skip`ped ones and fields that are sections themselves.

    `aliases` maps a field to a second flag that sets the same key, e.g.
    {"vocab_size": "--vocab-size"}. Nothing is set on the namespace when an option is not
    given; section_from_args (or given_options) reads what was.
    """
    aliases = aliases or {}
    unknown = set(aliases) - {f.name for f in dataclasses.fields(settings)}
    if unknown:  # a bug in the command, not the user's
        raise ValueError(f"aliases for fields {settings.__name__} does not have: {unknown}")
    defaults = settings()
    kinds = typing.get_type_hints(settings)
    title = f"[{section}] settings" if section else "run settings"
    group = parser.add_argument_group(title)
    parser.set_defaults(**{GIVEN: []})
    for f in dataclasses.fields(settings):
        if f.name in skip or dataclasses.is_dataclass(kinds[f.name]):
            continue
        flag = f"--{section}.{f.name}" if section else f"--{f.name}"
        alias = aliases.get(f.name)
        group.add_argument(
            flag,
            *([alias] if alias else []),
            action=_Collect,
            section=section,
            key=f.name,
            alias_flag=alias,
            dest=argparse.SUPPRESS,
            default=argparse.SUPPRESS,
            metavar=_metavar(kinds[f.name]),
            help=_help(
                kinds[f.name],
                getattr(defaults, f.name),
                alias is not None,
                field_comments(settings).get(f.name, ""),
            ),
        )


def given_options(
    args: argparse.Namespace, sections: Collection[str] | None = None
) -> list[GivenOption]:
    """The section options given on the command line (of `sections`, or all), in order."""
    given: list[GivenOption] = getattr(args, GIVEN, None) or []
    return [g for g in given if sections is None or g.section in sections]


def as_overrides(given: Sequence[GivenOption]) -> list[str]:
    """["--train.max_steps", "100", ...]: the form scratchlm.config's load_config takes."""
    return [word for g in given for word in (f"--{g.dotted}", g.text)]


def section_from_args(args: argparse.Namespace, section: str, base: T) -> T:
    """A copy of `base` with every given `--{section}.key` applied, checked and validated.

    A value is parsed and type-checked as a recipe's would be; a list field's alias may be
    repeated (`--include a --include b`), while `--section.key a,b` takes a comma-separated
    list. When validation fails, the error names the options that set the keys it is about.
    """
    settings = dataclasses.replace(base)  # type: ignore[type-var]
    prefix = f"{section}." if section else ""
    repeated: set[str] = set()
    given = given_options(args, [section])
    for g in given:
        kind = field_types(settings).get(g.key)
        if g.alias and typing.get_origin(kind) is list:
            # Each repeat of a list field's alias adds one item, verbatim (a glob may hold a
            # comma); the first replaces the default.
            items = getattr(settings, g.key) if g.key in repeated else []
            value: Any = [*items, g.text]
            repeated.add(g.key)
        else:
            value = parse_cli_value(settings, g.key, g.text, prefix)
        set_field(settings, g.key, value, "command line", prefix)
    validate = getattr(settings, "validate", None)
    if validate is not None:
        try:
            validate()
        except ScratchLMError as e:
            named = [g for g in given if f"{g.dotted}" in str(e)]
            if not named:
                raise
            where = ", ".join(dict.fromkeys(f"{g.flag} {g.text}" for g in named))
            raise ScratchLMError(f"{where}: {e}") from None
    return settings


def _metavar(kind: Any) -> str:
    if typing.get_origin(kind) is typing.Literal:
        return "{" + ",".join(map(str, typing.get_args(kind))) + "}"
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        return f"{getattr(item, '__name__', 'X').upper()},..."
    return getattr(kind, "__name__", "X").upper()


def _help(kind: Any, default: Any, has_alias: bool, comment: str) -> str:
    lead = f"{comment.rstrip('.')}; " if comment else ""
    if typing.get_origin(kind) is list:
        # Escaped, so a default such as ["\n"] shows as \n rather than as a line break.
        shown = ",".join(str(v).encode("unicode_escape").decode() for v in default) or "none"
        how = " (comma-separated; the short flag is repeatable)" if has_alias else ""
        return f"{lead}default {shown}{how}".replace("%", "%%")
    if kind is bool:
        return f"{lead}true or false, default {str(default).lower()}".replace("%", "%%")
    return f"{lead}default {default}".replace("%", "%%")
