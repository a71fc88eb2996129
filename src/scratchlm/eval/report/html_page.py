"""The report card as one self-contained HTML page: report.html opens anywhere, offline, on its
own (moved, mailed, attached): the style is inline and each plot is embedded as a base64 data
URI. Every text from the run is escaped; the page links to nothing outside itself."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path

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

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

STYLE = """
:root { --ink: #1d2330; --muted: #5b6475; --line: #dfe3ea; --soft: #f5f7fa; --accent: #2f5fb3; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: var(--ink);
  font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1060px; margin: 0 auto; padding: 28px 32px 60px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 34px 0 12px; padding-bottom: 6px;
  border-bottom: 2px solid var(--line); }
p.subtitle { color: var(--muted); margin: 0 0 14px; }
nav { font-size: 13px; margin-bottom: 18px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; }
.glance { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr));
  gap: 10px; }
.card { background: var(--soft); border: 1px solid var(--line);
  border-left: 4px solid var(--accent); border-radius: 6px; padding: 9px 13px; }
.card.score { border-left-color: #2e8b57; background: #f3faf6; }
.card .label { font-size: 12px; text-transform: uppercase; letter-spacing: .05em;
  color: var(--muted); overflow-wrap: anywhere; }
.card.score .label { text-transform: none; letter-spacing: 0; }  /* task names keep their case */
.card .value { font-size: 15px; font-weight: 600; overflow-wrap: anywhere; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 14px; }
.table-scroll { overflow-x: auto; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; }
thead th { background: var(--soft); font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.nowrap { white-space: nowrap; }
table.fields th { color: var(--muted); font-weight: 500; white-space: nowrap;
  padding-right: 24px; }
table.fields td, table.fields th { border-bottom: 1px solid #eef0f4; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
  font-size: 13px; background: var(--soft); }
code { padding: 1px 4px; border-radius: 3px; overflow-wrap: anywhere; }
pre { line-height: 1.45; border: 1px solid var(--line); border-radius: 6px;
  padding: 12px 14px; max-height: 480px; overflow: auto; white-space: pre-wrap;
  overflow-wrap: anywhere; }
.figures { display: flex; flex-wrap: wrap; gap: 16px; margin: 10px 0 18px; }
figure { margin: 0; flex: 1 1 420px; max-width: 100%; }
figure img { width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 13px; }
"""


def text(t: Inline) -> str:
    if isinstance(t, str):
        return html.escape(t)
    if isinstance(t, Code):
        return f"<code>{html.escape(t.text)}</code>"
    return "".join(text(piece) for piece in t)


def anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def embedded_png(path: Path) -> str | None:
    """A data URI of the PNG at `path`; None if it is missing or not a PNG."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not data.startswith(PNG_SIGNATURE):
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _fields(rows: Sequence[tuple[str, Inline]]) -> str:
    body = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{text(value)}</td></tr>" for name, value in rows
    )
    return f'<table class="fields"><tbody>{body}</tbody></table>'


def _table(t: Table) -> str:
    def cls(i: int, cell: bool = True) -> str:
        if i in t.numeric:
            return ' class="num"'
        return ' class="nowrap"' if cell and i in t.nowrap else ""

    head = "".join(f"<th{cls(i, False)}>{html.escape(h)}</th>" for i, h in enumerate(t.header))
    body = "".join(
        "<tr>" + "".join(f"<td{cls(i)}>{text(cell)}</td>" for i, cell in enumerate(row)) + "</tr>"
        for row in t.rows
    )
    # On a narrow screen a wide table scrolls sideways in its own box, not the whole page.
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="table-scroll">{table}</div>'


def block(b: Block, run_dir: Path) -> str:
    if isinstance(b, Paragraph):
        return f"<p>{text(b.text)}</p>"
    if isinstance(b, Fields):
        return _fields(b.rows)
    if isinstance(b, Table):
        return _table(b)
    if isinstance(b, Figure):
        uri = embedded_png(run_dir / b.path)
        if uri is None:
            return f"<p>({html.escape(b.path.as_posix())} is not a readable PNG)</p>"
        caption = html.escape(b.caption)
        return (
            f'<figure><img src="{uri}" alt="{caption}"><figcaption>{caption}</figcaption></figure>'
        )
    if isinstance(b, Preformatted):
        return f"<pre>{html.escape(b.text)}</pre>"
    raise TypeError(f"unknown block {b!r}")


def blocks(section_blocks: Sequence[Block], run_dir: Path) -> str:
    """The blocks of a section; figures in a row share it (side by side where they fit)."""
    out: list[str] = []
    row: list[str] = []
    for b in section_blocks:
        if isinstance(b, Figure):
            row.append(block(b, run_dir))
            continue
        if row:
            out.append(f'<div class="figures">{"".join(row)}</div>')
            row = []
        out.append(block(b, run_dir))
    if row:
        out.append(f'<div class="figures">{"".join(row)}</div>')
    return "\n".join(out)


def _cards(items: Sequence[tuple[str, str]], kind: str) -> str:
    return "".join(
        f'<div class="{kind}"><div class="label">{html.escape(label)}</div>'
        f'<div class="value">{html.escape(value)}</div></div>'
        for label, value in items
    )


def render_html(document: Document, run_dir: Path) -> str:
    """The page; plots are read from `run_dir` (Figure paths are relative to it)."""
    # Spaced: with nothing between the links a phone could not wrap the line between them.
    nav = " ".join(
        f'<a href="#{anchor(s.title)}">{html.escape(s.title)}</a>' for s in document.sections
    )
    cards = _cards(document.glance, "card") + _cards(document.scores, "card score")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(document.title)}</title>",
        f"<style>{STYLE}</style></head><body><main>",
        f"<h1>{html.escape(document.title)}</h1>",
        f'<p class="subtitle">{text(document.subtitle)}</p>',
        f"<nav>{nav}</nav>",
        '<section><h2 id="at-a-glance">At a glance</h2>',
        f'<div class="glance">{cards}</div></section>',
    ]
    for section in document.sections:
        parts.append(
            f'<section><h2 id="{anchor(section.title)}">{html.escape(section.title)}</h2>\n'
            f"{blocks(section.blocks, run_dir)}</section>"
        )
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"
