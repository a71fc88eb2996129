"""report.html in a real browser: Debian's chromium, driven by Playwright, opens the page that
`scratchlm report RUN` writes (file://, offline) and checks what a reader sees: the title and
each section, tables with rows, every plot loaded, no console error, no request leaving the
page, and no sideways scrolling on a desktop (1280 px) or a phone (400 px).

Chromium: `make test` installs Debian's package when it is missing (`make browser`, as root);
Playwright drives that one and downloads no browser of its own. Without it these tests skip on
a developer's machine but fail in CI (env CI set), where a skip would pass unseen.

Screenshots: a full-page PNG per width is written under the test's tmp_path; set
SCRATCHLM_SCREENSHOTS to also copy them to /tmp/report_screens/ and look at them:

    SCRATCHLM_SCREENSHOTS=1 .venv/bin/python -m pytest -q tests/test_report_browser.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Route

from scratchlm.cli.generate import print_samples
from scratchlm.eval.records import EvaluationRecord, record_evaluation
from scratchlm.runs.layout import RunPaths
from tiny_runs import train_tiny_run

SCREENS = Path("/tmp/report_screens")
HEADINGS = [
    "At a glance",
    "Model",
    "Tokenizer",
    "Data",
    "Training",
    "Evaluations",
    "Samples",
    "Machine and software",
]
# A long unbroken command, as a real one is: the narrow page must wrap it, not scroll sideways.
COMMAND = "scratchlm eval runs/tiny --task tasks/a_rather_long_task_file_name_for_wrapping.jsonl"


@pytest.fixture(scope="module")
def report_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """report.html of a tiny run (12 steps on pydocs) with its samples and one recorded
    evaluation, written by the `scratchlm` command."""
    run = train_tiny_run(tmp_path_factory.mktemp("report_browser"))
    print_samples(run, out_file=RunPaths(run).samples)  # as `train` does
    metrics = {"acc": 0.5, "acc_stderr": 0.25, "acc_norm": 0.25, "n": 4}
    record_evaluation(run, EvaluationRecord("multiple-choice", "odd.jsonl", metrics, COMMAND))
    scratchlm = Path(sys.executable).with_name("scratchlm")  # the venv's command
    done = subprocess.run(
        [str(scratchlm), "report", str(run)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"wrote {run / 'report.md'} and {run / 'report.html'}"
    return run / "report.html"


@dataclass
class Visit:
    page: Page
    errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions
    outside: list[str] = field(default_factory=list)  # requests that would leave the page


@contextmanager
def visit(browser: Browser, page_file: Path, width: int) -> Iterator[Visit]:
    """`page_file` opened at `width` px; any request other than file: and data: is recorded
    and refused, so a page that needs the network shows it here rather than on a train."""
    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    seen = Visit(page)

    def refuse_outside(route: Route) -> None:
        url = route.request.url
        if url.startswith(("file:", "data:")):
            route.continue_()
        else:
            seen.outside.append(url)
            route.abort()

    context.route("**/*", refuse_outside)
    page.on("console", lambda m: seen.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen.errors.append(str(e)))
    try:
        page.goto(page_file.as_uri(), wait_until="load")
        yield seen
    finally:
        context.close()


def screenshot(page: Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=path, full_page=True)
    if os.environ.get("SCRATCHLM_SCREENSHOTS"):
        SCREENS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SCREENS / name)


# What the page shows, read in the browser: [[section, [rows per table]], ...].
TABLES_JS = """() => [...document.querySelectorAll("section")].map(s => [
  s.querySelector("h2").textContent,
  [...s.querySelectorAll("table")].map(t => t.querySelectorAll("tbody tr").length)])"""
IMAGES_JS = """() => [...document.images].map(i => ({alt: i.alt, complete: i.complete,
  natural: i.naturalWidth, shown: i.getBoundingClientRect().width}))"""
# Elements that stick out past the right edge, the deepest first: what makes the page scroll.
OVERFLOW_JS = """() => { const w = document.documentElement.clientWidth;
  return [...document.querySelectorAll("body *")]
    .filter(e => e.getBoundingClientRect().right > w + 0.5)
    .reverse().slice(0, 5).map(e => e.tagName + " " + (e.textContent || "").slice(0, 60)); }"""


@pytest.mark.parametrize("width", [1280, 400], ids=["desktop", "phone"])
def test_the_page_reads_well_in_a_browser(
    browser: Browser, report_page: Path, tmp_path: Path, width: int
) -> None:
    with visit(browser, report_page, width) as seen:
        page = seen.page
        screenshot(page, tmp_path, f"report_{width}.png")
        assert page.title() == "Report card: tiny"
        assert page.locator("h1").inner_text() == "Report card: tiny"
        headings = page.locator("h2")
        assert headings.all_inner_texts() == HEADINGS
        assert all(h.is_visible() for h in headings.all())
        # The navigation reaches every section.
        targets = page.locator("nav a").evaluate_all("as => as.map(a => a.hash)")
        ids = page.locator("h2").evaluate_all("hs => hs.map(h => '#' + h.id)")
        assert targets == ids[1:]

        tables = dict(page.evaluate(TABLES_JS))
        assert list(tables) == HEADINGS
        # Fields in Model, Tokenizer, Machine; fields, stages and splits in Data; fields and
        # the validation losses (steps 4, 8, 12) in Training; one evaluation; the sample as text.
        assert [len(tables[h]) for h in HEADINGS] == [0, 1, 1, 3, 2, 1, 0, 1]
        assert all(rows >= 1 for counts in tables.values() for rows in counts), tables
        assert tables["Training"][1] == 3 and tables["Evaluations"] == [1]
        evaluation = page.locator("section:has(#evaluations) tbody tr").inner_text()
        assert "acc 0.5000 ± 0.2500" in evaluation and COMMAND in evaluation
        assert page.locator(".card.score").count() == 1
        # A task is named as its file is, not upper-cased like the other cards' labels.
        assert page.locator(".card.score .label").inner_text().startswith("odd.jsonl")
        assert page.locator("pre").inner_text().strip()  # the samples

        images = page.evaluate(IMAGES_JS)
        assert [i["alt"] for i in images] == [
            "Document lengths before and after",
            "Loss",
            "Learning rate",
        ]
        for image in images:
            assert image["complete"] and image["natural"] > 0, image
            # Shown wide enough to read, and never wider than the screen.
            assert min(300, width - 80) <= image["shown"] <= width, image

        sideways = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert sideways == 0, f"scrolls {sideways} px sideways: {page.evaluate(OVERFLOW_JS)}"
        # A table too wide for a phone scrolls in its own box; on a desktop every column shows.
        clipped = page.locator(".table-scroll").evaluate_all(
            "ds => ds.map(d => d.scrollWidth > d.clientWidth)"
        )
        assert len(clipped) == 4 and (width < 800 or not any(clipped)), clipped
    assert seen.errors == [] and seen.outside == []


def test_a_page_that_reaches_outside_is_caught(
    browser: Browser, report_page: Path, tmp_path: Path
) -> None:
    """The guard above can fail: a plot linked from the web, and a page that scrolls sideways."""
    page_file = tmp_path / "leaky.html"
    leak = '<img src="https://example.invalid/plot.png"><div style="width:2000px">wide</div>'
    html = report_page.read_text(encoding="utf-8").replace("</main>", leak + "</main>")
    page_file.write_text(html, encoding="utf-8")
    with visit(browser, page_file, 400) as seen:
        natural = seen.page.evaluate("[...document.images].map(i => i.naturalWidth)")
        sideways = seen.page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        culprits = seen.page.evaluate(OVERFLOW_JS)
    assert seen.outside == ["https://example.invalid/plot.png"]
    assert natural[-1] == 0 and all(n > 0 for n in natural[:-1])
    assert any("Failed to load resource" in e for e in seen.errors), seen.errors
    assert sideways > 1000 and culprits[0] == "DIV wide"
