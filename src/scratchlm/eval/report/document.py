"""The report card as a document, before it is Markdown or HTML: sections of blocks (a paragraph,
fields, a table, a figure, preformatted text) whose text is plain strings and code spans. Both
renderers read this one structure, so report.md and report.html always say the same thing, and
each escapes the run's text in its own way. Also the few ways numbers are written."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Code:
    """Text shown as code: a command, a file name, a token."""

    text: str


# A run of inline text: plain strings (escaped by the renderer) and code spans.
Inline = str | Code | list[str | Code]


@dataclass(frozen=True)
class Paragraph:
    text: Inline


@dataclass(frozen=True)
class Fields:
    """Name: value rows (a two-column table without a header)."""

    rows: list[tuple[str, Inline]]


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[Inline]]
    numeric: frozenset[int] = frozenset()  # columns aligned right
    nowrap: frozenset[int] = frozenset()  # columns kept on one line (dates, short names)


@dataclass(frozen=True)
class Figure:
    """A PNG of the run; `path` relative to the run directory (report.md links it there)."""

    path: Path
    caption: str


@dataclass(frozen=True)
class Preformatted:
    text: str


Block = Paragraph | Fields | Table | Figure | Preformatted


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Document:
    title: str
    subtitle: Inline
    glance: list[tuple[str, str]]  # the summary at the top: what the model is, how it trained
    scores: list[tuple[str, str]]  # and how it scores: the evaluations' main numbers
    sections: list[Section]


def inline_text(text: Inline) -> str:
    """The words of `text`, without markup (for the terminal)."""
    if isinstance(text, str):
        return text
    if isinstance(text, Code):
        return text.text
    return "".join(inline_text(piece) for piece in text)


# --- numbers ---------------------------------------------------------------------------------


def count(n: int) -> str:
    return f"{n:,}"


def number(x: float) -> str:
    """A metric: integers with thousands separators, floats with four decimals below 10."""
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int):
        return f"{x:,}"
    if not math.isfinite(x):
        return str(x)
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.2f}"
    return f"{x:.4f}"


def percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def duration(seconds: float) -> str:
    """1.6 s, 4 min 12 s, 2 h 03 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def date(iso: str) -> str:
    """An ISO time as records keep it (UTC) shown as '2025-01-31 14:05 UTC'."""
    if iso.endswith("+00:00") and "T" in iso:
        return iso[:16].replace("T", " ") + " UTC"
    return iso
