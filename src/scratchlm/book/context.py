"""What a chapter is given: the reader's run, where figures go, and the live source.

Every chapter is a module of book/chapters with a TITLE and `write(ctx) -> str`, the chapter's
Typst markup (starting with its `= Title` heading). It reads numbers from the run's files, the
source tree or computations it makes itself, never typed into its text; what the run does not
have yet becomes a note naming the command that fills it (`ctx.missing`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from scratchlm.book import typst_markup as tm
from scratchlm.book.listings import PACKAGE_ROOT, Listing, find_listing
from scratchlm.core.config_files import read_toml
from scratchlm.runs.layout import RunPaths


@dataclass
class BookContext:
    run_dir: Path  # the reader's run
    out_dir: Path  # where main.typ is written; figures go in out_dir/figures
    source_root: Path = PACKAGE_ROOT  # the scratchlm package whose code the listings show
    trained_here: bool = False  # the run is the tiny one the book trained for itself
    # The `scratchlm` command's parser, for the CLI reference (cli passes it down: the book
    # may not import the layer above it).
    cli_parser: argparse.ArgumentParser | None = None
    listings: list[Listing] = field(default_factory=list)  # every listing shown, for tests

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.run_dir)

    @property
    def run_name(self) -> str:
        return self.run_dir.resolve().name

    @cached_property
    def config(self) -> dict[str, Any]:
        """The run's config.toml as a dict (empty if it has none)."""
        path = self.paths.config
        return read_toml(path) if path.is_file() else {}

    @cached_property
    def metrics(self) -> list[dict[str, Any]]:
        """The run's metrics.jsonl records, in order (empty without one)."""
        path = self.paths.metrics
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def json_file(self, relative: str) -> Any | None:
        """A JSON file of the run (e.g. "evaluations.json", "data/report.json"), or None."""
        path = self.run_dir / relative
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def figure_path(self, name: str) -> Path:
        """Where to save figure `name`; tm.figure takes "figures/" + name."""
        folder = self.out_dir / "figures"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / name

    def listing(self, symbol: str) -> str:
        """The live source of `symbol` ("scratchlm.model.gpt:GPT.forward"), with its file and
        line numbers."""
        found = find_listing(symbol, self.source_root)
        self.listings.append(found)
        where = f"{found.path}, lines {found.first_line}-{found.last_line}"
        return (
            f"#figure(kind: raw, supplement: [Listing], caption: [{tm.inline_code(symbol)} "
            f"({tm.text(where)})], align(left, {tm.raw_block(found.source)}))\n"
        )

    def missing(self, what: str, command: str) -> str:
        """A note: the run has no `what` yet; `command` makes it."""
        return tm.note(
            f"Your run has no {what} yet: run {tm.inline_code(command)} to see yours here."
        )
