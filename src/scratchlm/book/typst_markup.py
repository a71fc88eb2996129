"""Typst markup made from Python values: text, code, tables, figures, notes.

Anything that comes from data (a file name, a number, a line of source) goes through a Typst
string literal (`#"..."`), which Typst shows verbatim: no character in it can start markup, so
a `*` in a path or a `$` in a tokenizer's merge never breaks the page.
"""

from __future__ import annotations

from collections.abc import Sequence


def string(value: object) -> str:
    """A Typst string literal of str(value) (quotes, backslashes and newlines escaped)."""
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    text = text.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "")
    return f'"{text}"'


def text(value: object) -> str:
    """str(value) as literal text inside markup."""
    return f"#{string(value)}"


def code(source: str, lang: str = "python") -> str:
    """A code block with Typst's own highlighting."""
    return f"#{raw_block(source, lang)}\n"


def raw_block(source: str, lang: str = "python") -> str:
    """code() as a Typst expression, to put inside another call (a listing's figure)."""
    return f"raw({string(source)}, lang: {string(lang)}, block: true)"


def inline_code(source: str) -> str:
    return f"#raw({string(source)})"


def table(headers: Sequence[object], rows: Sequence[Sequence[object]], align: str = "") -> str:
    """A table of literal cells, the header row bold. align: Typst alignment per column
    ("left, right, right"), default left for the first column and right for the rest."""
    n = len(headers)
    if any(len(row) != n for row in rows):
        raise ValueError(f"every row needs {n} cells")
    aligns = align or ", ".join(["left"] + ["right"] * (n - 1))
    cells = [f"[*{text(h)}*]" for h in headers]
    cells += [f"[{text(cell)}]" for row in rows for cell in row]
    return (
        f"#table(columns: {n}, align: ({aligns},), stroke: 0.4pt + luma(180), "
        f"inset: 4pt, {', '.join(cells)})\n"
    )


def figure(path: str, caption: str, width: str = "100%") -> str:
    """An image (relative to the book's folder) with a caption written in markup."""
    return f"#figure(image({string(path)}, width: {width}), caption: [{caption}])\n"


def note(markup: str) -> str:
    """A shaded box: what the reader's run does not have yet, and how to get it."""
    return f"#block(fill: luma(240), inset: 8pt, radius: 3pt, width: 100%)[{markup}]\n"


def number(value: float, digits: int = 4) -> str:
    """A number as a reader reads it: thousands separated, `digits` significant figures."""
    if isinstance(value, int) or (float(value).is_integer() and abs(value) >= 1):
        return f"{int(value):,}"
    return f"{value:.{digits}g}"
