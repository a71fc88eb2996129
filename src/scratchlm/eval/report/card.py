"""`scratchlm report RUN`: the run's report card, RUN/report.md and RUN/report.html.

One page a person reads at a glance: what the model is (shape, parameters, tokenizer), what it
learned from (the data kept and removed), how it trained (steps, tokens, time, losses, the
curves), how it scores (every evaluation recorded with the run, with its date and command),
what it writes (samples), and on what machine and software. Re-running an evaluation replaces
its row (eval.records), and the card is rebuilt from the run's files each time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from scratchlm.core.atomic_files import atomic_write_text
from scratchlm.core.errors import ScratchLMError
from scratchlm.core.user_paths import check_output
from scratchlm.eval.report.document import Code, Document, Paragraph, Section
from scratchlm.eval.report.html_page import render_html
from scratchlm.eval.report.markdown import render_markdown
from scratchlm.eval.report.sections import SECTIONS, Glance, read_run

MARKDOWN_FILE = "report.md"
HTML_FILE = "report.html"


@dataclass(frozen=True)
class ReportCard:
    run_dir: Path
    markdown: Path
    html: Path
    glance: Glance  # the summary at the top of the card: the model and its training
    scores: Glance  # the evaluations' main numbers

    def lines(self) -> list[str]:
        """What `scratchlm report` prints: the summary, aligned, then where the card is."""
        summary = [*self.glance, *self.scores]
        width = max((len(label) for label, _ in summary), default=0)
        rows = [f"{label:<{width}}  {value}".rstrip() for label, value in summary]
        return [*rows, f"wrote {self.markdown} and {self.html}"]


def _unreadable(title: str, why: str) -> Section:
    return Section(title, [Paragraph(f"Could not read this part of the run: {why}")])


def write_report(run: str | Path) -> ReportCard:
    """Write the report card of `run` (a run directory, or a pretrained model's name such as
    smollm2-135m-instruct: its run in the cache) and return where, with its summary."""
    from scratchlm.inference.language_model import run_directory

    run_dir = run_directory(run)
    view = read_run(run_dir)  # one clear line if the folder is missing or not a run
    for name in (MARKDOWN_FILE, HTML_FILE):
        check_output(run_dir / name, folder=False)
    glance: Glance = []
    scores: Glance = []
    sections: list[Section] = []
    for title, build in SECTIONS:
        try:
            section, lines = build(view)
        except ScratchLMError as e:  # a damaged file spoils its own section only
            section, lines = _unreadable(title, str(e)), []
        except (KeyError, TypeError, ValueError) as e:  # a file of another shape (version)
            section, lines = _unreadable(title, f"unexpected content ({type(e).__name__}: {e})"), []
        sections.append(section)
        (scores if title == "Evaluations" else glance).extend(lines)
    written = datetime.now(UTC).isoformat(timespec="seconds")[:16].replace("T", " ") + " UTC"
    document = Document(
        title=f"Report card: {run_dir.name}",
        subtitle=[
            "Run ",
            Code(str(run_dir)),
            f", written {written} by ",
            Code("scratchlm report"),
            ".",
        ],
        glance=glance,
        scores=scores,
        sections=sections,
    )
    markdown, html = run_dir / MARKDOWN_FILE, run_dir / HTML_FILE
    atomic_write_text(markdown, render_markdown(document))
    atomic_write_text(html, render_html(document, run_dir))
    return ReportCard(run_dir, markdown, html, glance, scores)
