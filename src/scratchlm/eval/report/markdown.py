"""The report card as Markdown (GitHub's flavour): report.md, beside the plots it links.

Text from the run (task names, commands, samples) is escaped, so a `*` or a `|` in it is shown,
not read as markup; code spans and fences are made longer than any run of backticks inside."""

from __future__ import annotations

import re
from collections.abc import Sequence

from scratchlm.eval.report.document import (
    Block,
    Code,
    Document,
    Fields,
    Figure,
    Inline,
    Paragraph,
    Preformatted,
    Table,
)

# Characters that are markup anywhere in a line; `_` only at a word's edge (GFM never reads
# snake_case as emphasis, so acc_norm stays readable in the raw file); `#` only first.
_SPECIAL = re.compile(r"[\\`*\[\]<>|~&]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])|^#")


def escape(text: str) -> str:
    # Newlines would end a table row or a paragraph: inline text stays on one line.
    return _SPECIAL.sub(lambda m: "\\" + m.group(0), " ".join(text.splitlines()))


def code_span(text: str, in_table: bool = False) -> str:
    text = " ".join(text.splitlines())
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    if in_table:  # GFM splits cells on | before it reads code spans
        text = text.replace("|", "\\|")
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def inline(text: Inline, in_table: bool = False) -> str:
    if isinstance(text, str):
        return escape(text)
    if isinstance(text, Code):
        return code_span(text.text, in_table)
    return "".join(inline(piece, in_table) for piece in text)


def _table(header: list[str], rows: list[list[Inline]], numeric: frozenset[int]) -> list[str]:
    lines = ["| " + " | ".join(escape(h) for h in header) + " |"]
    lines.append("|" + "|".join("--:" if i in numeric else "---" for i in range(len(header))) + "|")
    for row in rows:
        lines.append("| " + " | ".join(inline(cell, in_table=True) for cell in row) + " |")
    return lines


def _fields(rows: Sequence[tuple[str, Inline]]) -> list[str]:
    """Name: value rows as a list ("- **Name**: value"); a row without a name continues."""
    return [
        f"- **{escape(name)}**: {inline(value)}" if name else f"- {inline(value)}"
        for name, value in rows
    ]


def block(b: Block) -> list[str]:
    if isinstance(b, Paragraph):
        return [inline(b.text)]
    if isinstance(b, Fields):
        return _fields(b.rows)
    if isinstance(b, Table):
        return _table(b.header, b.rows, b.numeric)
    if isinstance(b, Figure):
        return [f"![{escape(b.caption)}]({b.path.as_posix()})"]
    if isinstance(b, Preformatted):
        longest = max((len(run) for run in re.findall(r"`{3,}", b.text)), default=2)
        fence = "`" * (longest + 1)
        return [f"{fence}text", b.text, fence]
    raise TypeError(f"unknown block {b!r}")


def render_markdown(document: Document) -> str:
    lines = [f"# {escape(document.title)}", "", inline(document.subtitle), ""]
    lines += ["## At a glance", ""]
    lines += _fields([*document.glance, *document.scores])
    lines.append("")
    for section in document.sections:
        lines += [f"## {escape(section.title)}", ""]
        for b in section.blocks:
            lines += [*block(b), ""]
    return "\n".join(lines).rstrip("\n") + "\n"
