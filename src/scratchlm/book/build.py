"""Build the book: every chapter's Typst markup from the reader's run, compiled to one PDF.

    build_book(Path("runs/demo"), Path("runs/demo/book.pdf"))

Each chapter (book/chapters/, in CHAPTERS order) writes its markup and figures into a scratch
folder; Typst (the `typst` package: its compiler and built-in fonts, no network) typesets
main.typ there, and the PDF replaces `out` only once it is whole. Without a run, the book
trains a tiny one first (book/tiny_run.py) and says so on its title page.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import tempfile
import time
from pathlib import Path
from types import ModuleType

from tqdm import tqdm

from scratchlm.book import typst_markup as tm
from scratchlm.book.context import BookContext
from scratchlm.book.listings import PACKAGE_ROOT
from scratchlm.core.atomic_files import atomic_write_bytes
from scratchlm.core.errors import ScratchLMError

# The chapters, in reading order: module names under scratchlm.book.chapters.
CHAPTERS = [
    "foundations",
    "data_engineering",
    "model_code",
    "distributed",
    "training_evaluation",
    "chatbot",
    "appendix_derivatives",
    "appendix_reference",
]

PREAMBLE = """\
#set document(title: "Build a Large Language Model (From Scratch)")
#set page(paper: "a4", margin: (x: 2.2cm, y: 2.4cm), numbering: "1")
#set text(size: 10pt, lang: "en")
#set par(justify: true)
#set heading(numbering: (..n) => if n.pos().len() <= 3 { numbering("1.1", ..n) })
#show heading.where(level: 1): it => { pagebreak(weak: true); v(1.5cm); text(size: 20pt, it) ; v(0.6cm) }
#show raw.where(block: true): set text(size: 7.5pt)
#show raw.where(block: true): block.with(fill: luma(246), inset: 6pt, radius: 2pt, width: 100%)
#show figure.where(kind: raw): set block(breakable: true)
#show figure.where(kind: raw): set figure.caption(position: top)
#show link: underline
#show table: set par(justify: false)
#show table: set text(size: 8.5pt)
"""

# Before the first appendix: its headings are unnumbered (their titles say "Appendix A: ...").
APPENDIX_START = "#set heading(numbering: none)\n"


def build_book(
    run_dir: Path | None,
    out: Path,
    overwrite: bool = False,
    source_root: Path = PACKAGE_ROOT,
    cli_parser: argparse.ArgumentParser | None = None,
    chapters: list[str] | None = None,
    keep_source: Path | None = None,
) -> BookContext:
    """Typeset the book of `run_dir` (None: of a tiny run trained here) into `out` (a PDF).

    cli_parser: the `scratchlm` parser, for the CLI reference (the cli layer passes it in).
    chapters: build only these (tests, and a writer at work). keep_source: also copy the
    Typst source and figures there. Returns the context (what was listed, for tests).
    """
    if out.exists() and not overwrite:
        raise ScratchLMError(f"{out} exists; pass --overwrite to replace it")
    if out.suffix.lower() != ".pdf":
        raise ScratchLMError(f"--out {out}: the book is a PDF; name it something.pdf")
    wanted = CHAPTERS if chapters is None else chapters
    unknown = [c for c in wanted if c not in CHAPTERS]
    if unknown:
        raise ScratchLMError(f"no chapter {unknown[0]!r}; the chapters are {', '.join(CHAPTERS)}")
    with tempfile.TemporaryDirectory(prefix="scratchlm-book-") as scratch:
        work = Path(scratch)
        trained_here = run_dir is None
        if run_dir is None:
            from scratchlm.book.tiny_run import train_tiny_run

            run_dir = train_tiny_run(work / "runs")
        if not (run_dir / "config.toml").is_file():
            raise ScratchLMError(f"{run_dir} is not a run folder (it has no config.toml)")
        ctx = BookContext(run_dir, work / "book", source_root, trained_here, cli_parser)
        ctx.out_dir.mkdir(parents=True)
        parts = [PREAMBLE, front_matter(ctx)]
        for name in tqdm(wanted, desc="book", unit="chapter"):
            module: ModuleType = importlib.import_module(f"scratchlm.book.chapters.{name}")
            if name.startswith("appendix") and APPENDIX_START not in parts:
                parts.append(APPENDIX_START)
            parts.append(module.write(ctx))
        main = ctx.out_dir / "main.typ"
        main.write_text("\n".join(parts), encoding="utf-8")
        pdf = compile_typst(main)
        if keep_source is not None:
            import shutil

            shutil.copytree(ctx.out_dir, keep_source, dirs_exist_ok=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, pdf)
    return ctx


def compile_typst(main: Path) -> bytes:
    """The PDF of main.typ (Typst's built-in fonts only, so every machine typesets alike)."""
    import typst

    try:
        return bytes(typst.compile(str(main), root=str(main.parent), ignore_system_fonts=True))
    except typst.TypstError as e:
        # A chapter wrote bad markup: a bug here, not the reader's mistake; say where.
        raise RuntimeError(f"Typst could not typeset {main}: {e}") from None


def front_matter(ctx: BookContext) -> str:
    """The title page (the run it was built from) and the table of contents."""
    built_from = (
        "a tiny run the book trained for itself (give a run folder to get the book of yours)"
        if ctx.trained_here
        else ctx.run_name
    )
    facts = [
        ("Built from", built_from),
        ("Date", time.strftime("%Y-%m-%d %H:%M %Z")),
        ("Code", source_commit(ctx.source_root)),
        ("Machine", machine_summary()),
    ]
    rows = "\n".join(f"  [*{tm.text(k)}*], [{tm.text(v)}]," for k, v in facts)
    return f"""
#page(numbering: none)[
  #v(3cm)
  #text(size: 26pt, weight: "bold")[Build a Large Language Model]
  #v(0.2cm)
  #text(size: 16pt)[(From Scratch), the book of {tm.text(ctx.run_name)}]
  #v(1cm)
  #text(size: 11pt)[Typeset by `scratchlm book` from the code that trained this model and from
  the files of its run: every listing is the current source, every number was read from a file
  or computed while building.]
  #v(1.5cm)
  #table(columns: 2, stroke: none, inset: 4pt,
{rows}
  )
]
#outline(depth: 2)
"""


def source_commit(source_root: Path) -> str:
    """The git commit of the source tree (with "+ changes" when it has uncommitted ones), or
    the package version where it is not a git checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        git = ["git", "-C", str(source_root)]
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode == 0:
            dirty = subprocess.run(
                [*git, "status", "--porcelain", "--", "."],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            return commit.stdout.strip() + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        return f"scratchlm {version('scratchlm')}"
    except PackageNotFoundError:
        return "scratchlm (version unknown)"


def machine_summary() -> str:
    """CPU model, cores, GPUs and the torch build: what the run's numbers were measured on
    (the report card's machine facts, eval/report/machine.py)."""
    import torch

    from scratchlm.eval.report.machine import cpu_model, gpus

    gpu = gpus()
    return (
        f"{cpu_model()}, {os.cpu_count()} cores, {'no GPU' if gpu == 'none' else gpu}, "
        f"torch {torch.__version__}"
    )
