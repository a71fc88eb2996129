"""`scratchlm book [RUN_DIR] --out book.pdf`: the book of a run, typeset from the live code.

scratchlm book runs/demo                 # runs/demo/book.pdf
scratchlm book --out book.pdf            # trains a tiny run first (under a minute)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(commands: Any) -> None:
    p = commands.add_parser(
        "book",
        help="typeset the book of a run as a PDF: its code, its numbers, its figures",
    )
    p.add_argument(
        "run",
        nargs="?",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="the run to write about (default: a tiny run trained on the spot)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="the PDF (default: RUN_DIR/book.pdf, or book.pdf)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing PDF")
    p.add_argument(
        "--keep-source",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write the Typst source and figures to DIR",
    )
    p.set_defaults(handler=cmd_book)


def cmd_book(args: argparse.Namespace) -> None:
    from scratchlm.book.build import build_book
    from scratchlm.core.messages import status
    from scratchlm.runs.layout import RunPaths

    if args.run is not None:
        RunPaths(args.run).check_is_run()
    out = args.out or (args.run / "book.pdf" if args.run is not None else Path("book.pdf"))
    if args.run is None:
        status("no run given: training a tiny one for the book (under a minute)")
    build_book(
        args.run,
        out,
        overwrite=args.overwrite,
        cli_parser=args.root_parser,
        keep_source=args.keep_source,
    )
    print(f"wrote {out}")
