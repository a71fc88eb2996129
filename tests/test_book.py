"""`scratchlm book`: the whole book builds from a run, every page renders, the contents hold
every chapter, listings are the live source (a changed copy of the code changes them), and the
command's mistakes are one line. (Each chapter's own numbers: tests/test_book_*.py.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scratchlm.book.build import CHAPTERS, build_book
from scratchlm.book.listings import PACKAGE_ROOT, find_listing
from scratchlm.cli.main import build_parser
from scratchlm.core.errors import ScratchLMError
from tiny_runs import train_tiny_run

SCRATCHLM = Path(sys.executable).with_name("scratchlm")


def require(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        message = f"Debian's poppler-utils is not installed ({tool}): run `make pdf-tools` as root"
        if "CI" in os.environ:
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("book"))


@pytest.fixture(scope="module")
def book(run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The whole book of the tiny run: (the PDF, its Typst source folder)."""
    out = tmp_path_factory.mktemp("book-out")
    build_book(run, out / "book.pdf", cli_parser=build_parser(), keep_source=out / "src")
    return out / "book.pdf", out / "src"


def pdf_text(pdf: Path) -> str:
    return subprocess.run(
        [require("pdftotext"), "-layout", str(pdf), "-"], capture_output=True, text=True, check=True
    ).stdout


def test_every_page_renders_and_the_contents_hold_every_chapter(
    book: tuple[Path, Path], tmp_path: Path
) -> None:
    pdf, _ = book
    info = subprocess.run([require("pdfinfo"), str(pdf)], capture_output=True, text=True)
    pages = int(next(ln for ln in info.stdout.splitlines() if ln.startswith("Pages:")).split()[1])
    assert pages >= 20
    subprocess.run(
        [require("pdftoppm"), "-r", "30", "-png", str(pdf), str(tmp_path / "p")], check=True
    )
    assert len(list(tmp_path.glob("p-*.png"))) == pages
    text = pdf_text(pdf)
    contents = text[text.index("Contents") :]
    for name in CHAPTERS:
        module = __import__(f"scratchlm.book.chapters.{name}", fromlist=["TITLE"])
        assert module.TITLE.split(":")[0] in contents, f"{module.TITLE} is not in the contents"


def test_the_title_page_names_the_run_and_the_code(book: tuple[Path, Path], run: Path) -> None:
    first_page = pdf_text(book[0]).split("\f")[0]
    assert run.name in first_page and "Machine" in first_page and "Code" in first_page


def test_every_listing_is_the_current_source(book: tuple[Path, Path]) -> None:
    _, source = book
    main = (source / "main.typ").read_text(encoding="utf-8")
    assert "#figure(kind: raw" in main
    # Every listing the chapters asked for is found again, line for line, in today's files.
    symbols = {
        line.split('caption: [#raw("', 1)[1].split('")', 1)[0]
        for line in main.splitlines()
        if line.startswith("#figure(kind: raw")
    }
    assert len(symbols) >= 10
    for symbol in symbols:
        listing = find_listing(symbol)
        lines = (PACKAGE_ROOT.parent / listing.path).read_text().splitlines()
        assert listing.source.splitlines()[0].strip() == lines[listing.first_line - 1].strip()


def test_a_changed_function_changes_its_listing(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "scratchlm"
    shutil.copytree(PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    gpt = copy / "model" / "gpt.py"
    marker = "# a reader's change, seen in the book"
    source = gpt.read_text()
    anchor = "    def forward(\n        self,\n        idx: Tensor,"
    assert anchor in source
    gpt.write_text(source.replace(anchor, f"    {marker}\n{anchor}", 1))
    before = find_listing("scratchlm.model.gpt:GPT.forward")
    after = find_listing("scratchlm.model.gpt:GPT.forward", copy)
    assert marker not in before.source and marker not in after.source  # a comment above: not it
    body = "        x = self.hidden_states(idx, kv_cache)"
    gpt.write_text(gpt.read_text().replace(body, f"{body}  {marker}", 1))
    after = find_listing("scratchlm.model.gpt:GPT.forward", copy)
    assert marker in after.source and marker not in before.source
    # And the book built from the changed copy shows it.
    ctx = build_book(
        run,
        tmp_path / "changed.pdf",
        source_root=copy,
        chapters=["model_code"],
        keep_source=tmp_path / "src",
    )
    assert any(marker in listing.source for listing in ctx.listings)
    assert marker in (tmp_path / "src" / "main.typ").read_text()


def test_a_listing_of_nothing_is_a_clear_error() -> None:
    with pytest.raises(ScratchLMError, match=r"has no GPT\.nothing"):
        find_listing("scratchlm.model.gpt:GPT.nothing")
    with pytest.raises(ScratchLMError, match="no module file"):
        find_listing("scratchlm.model.nowhere:GPT")


def test_the_command_refuses_mistakes_in_one_line_and_keeps_what_is_there(
    run: Path, tmp_path: Path
) -> None:
    def book(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRATCHLM), "book", *args], capture_output=True, text=True, timeout=300
        )

    # (The README's tour runs `scratchlm book` on a run of its own: the command's whole path.)
    out = tmp_path / "b.pdf"
    out.write_bytes(b"an earlier book")
    again = book(str(run), "--out", str(out))
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "--overwrite" in again.stderr
    assert out.read_bytes() == b"an earlier book"  # left as it was
    not_a_run = book(str(tmp_path), "--out", str(tmp_path / "c.pdf"))
    assert not_a_run.returncode == 2 and not_a_run.stderr.startswith("error:")
    assert "Traceback" not in not_a_run.stderr and not (tmp_path / "c.pdf").exists()


@pytest.mark.slow
def test_without_a_run_the_book_trains_one_in_under_a_minute(tmp_path: Path) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [str(SCRATCHLM), "book", "--out", str(tmp_path / "book.pdf")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "SCRATCHLM_CACHE": str(tmp_path / "cache")},
    )
    assert done.returncode == 0, done.stderr
    assert "training a tiny one" in done.stderr
    text = pdf_text(tmp_path / "book.pdf")
    assert "a tiny run the book trained for itself" in text.split("\f")[0]
    # The training and the book, on 2 cores (the issue: the tiny run in under a minute).
    assert time.monotonic() - started < 120
