"""The report card (`scratchlm report RUN`): report.md has each section with the run's own
numbers, report.html parses, links to nothing outside itself and embeds the plots, recorded
evaluations show (a re-run replaces its row), and a run with little in it still reports."""

from __future__ import annotations

import base64
import json
import math
import platform
import re
import shutil
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from scratchlm.cli.main import main
from scratchlm.config import load_config
from scratchlm.core.errors import ScratchLMError
from scratchlm.eval.records import EvaluationRecord, record_evaluation
from scratchlm.eval.report import write_report
from scratchlm.eval.report.machine import cpu_model
from scratchlm.eval.report.markdown import code_span, escape
from scratchlm.eval.report.sections import metric_texts, training_seconds
from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig
from scratchlm.runs.imported import save_imported_run
from scratchlm.tokenizer import BPETokenizer
from tiny_runs import train_tiny_run

SECTIONS = (
    "Model",
    "Tokenizer",
    "Data",
    "Training",
    "Evaluations",
    "Samples",
    "Machine and software",
)
# Text a run may hold that must be shown, never run or read as markup.
HOSTILE_SAMPLE = (
    '--- sample 1 ---\n<script>alert("x")</script> | *a* ```x``` <img src="https://e.x/y.png">'
)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny run trained for 12 steps on pydocs (ships with Python), validated every 4."""
    run = train_tiny_run(tmp_path_factory.mktemp("report"))
    (run / "samples.txt").write_text(HOSTILE_SAMPLE + "\n", encoding="utf-8")
    yield run


@pytest.fixture
def run(trained_run: Path, tmp_path: Path) -> Path:
    """A copy of the trained run, for a test that changes it."""
    return Path(shutil.copytree(trained_run, tmp_path / "tiny"))


def section(markdown: str, title: str) -> str:
    """The Markdown of one section: from its heading to the next."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    assert match, f"no section {title!r}"
    return match.group(1)


# --- report.md -------------------------------------------------------------------------------


def test_each_section_has_the_runs_numbers(run: Path) -> None:
    card = write_report(run)
    assert (card.markdown, card.html) == (run / "report.md", run / "report.html")
    md = card.markdown.read_text(encoding="utf-8")
    assert md.startswith("# Report card: tiny\n")
    headings = re.findall(r"^## (.+)$", md, re.M)
    assert headings == ["At a glance", *SECTIONS]

    config = load_config(run / "config.toml")
    params = GPT(config.model).num_parameters()
    model = section(md, "Model")
    assert f"**Parameters**: {params:,} (" in model
    assert "**Shape**: 2 layers, 32 wide, 2 heads" in model
    assert "`checkpoints/step_000012` (latest of" in model

    meta = json.loads((run / "data" / "meta.json").read_text())
    per_token = meta["val_bytes"] / (meta["val_tokens"] - meta["val_documents"])
    tokenizer = section(md, "Tokenizer")
    assert "**Vocabulary**: 300 tokens, 1 of them special" in tokenizer
    assert f"**Bytes per token**: {per_token:.3f} on the validation text" in tokenizer
    assert "`<|endoftext|>`" in tokenizer

    report = json.loads((run / "data" / "report.json").read_text())
    totals = report["totals"]
    data = section(md, "Data")
    assert f"**Kept**: {totals['documents_out']} of {totals['documents_in']} documents" in data
    exact = next(s for s in report["stages"] if s["stage"] == "exact_dedup")
    removed = exact["documents_in"] - exact["documents_out"]
    assert removed >= 1  # pydocs: "if" is the text of "else"
    assert (
        f"| exact dedup | {exact['documents_in']} | {exact['documents_out']} | {removed} | "
        f"{exact['bytes_in'] - exact['bytes_out']:,} | exact duplicate {removed} |"
    ) in data
    train, val = report["splits"]["train"], report["splits"]["val"]
    assert (
        f"| train | {train['documents']} | {train['bytes']:,} | {train['tokens']:,} | 1 |" in data
    )
    assert f"| val | {val['documents']} | {val['bytes']:,} | {val['tokens']:,} | 1 |" in data
    assert "![Document lengths before and after](data/lengths.png)" in data

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in records if "val_loss" in r]
    last_train = [r for r in records if "train_loss" in r][-1]
    best = min(vals, key=lambda r: r["val_loss"])
    training = section(md, "Training")
    assert "**Steps**: 12 of 12 planned" in training
    assert f"**Tokens**: {12 * 8 * 32:,} (256 per step)" in training
    assert f"**Time**: {last_train['elapsed_s']:.1f} s (" in training
    assert f"**Final train loss**: {last_train['train_loss']:.4f} (step 12)" in training
    final = vals[-1]["val_loss"]
    assert (
        f"**Final validation loss**: {final:.4f} (perplexity {math.exp(final):.2f}, step 12)"
        in training
    )
    assert f"**Best validation loss**: {best['val_loss']:.4f} (step {best['step']})" in training
    assert [int(s) for s in re.findall(r"^\| (\d+) \|", training, re.M)] == [4, 8, 12]
    assert "![Loss](loss.png)" in training and "![Learning rate](lr.png)" in training

    samples = section(md, "Samples")
    # The fence is longer than the ``` inside the sample, which is shown as it is.
    assert "````text\n" + HOSTILE_SAMPLE + "\n````\n" in samples

    machine = section(md, "Machine and software")
    assert cpu_model() in machine and cpu_model() != "unknown"
    assert f"**Python**: {platform.python_version()}" in machine
    assert f"**PyTorch**: {torch.__version__}" in machine
    assert "**scratchlm**: 0.1.0" in machine


def test_the_summary_is_what_the_command_prints(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"wrote {run / 'report.md'} and {run / 'report.html'}"
    labels = [line.split("  ")[0].strip() for line in out[:-1]]
    assert labels == ["Model", "Tokenizer", "Data", "Training", "Loss", "Evaluations"]
    assert out[-2].split()[-2:] == ["none", "yet"]
    # The same lines, as a list, at the top of report.md.
    glance = section((run / "report.md").read_text(), "At a glance")
    assert glance.count("\n- **") == 6


# --- report.html -----------------------------------------------------------------------------


VOID_ELEMENTS = frozenset({"meta", "img", "br", "hr", "link", "input"})  # never closed


class PageParser(HTMLParser):
    """Tags, attributes and text of a page; checks that every element that opens is closed."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.open: list[str] = []
        self.text: list[str] = []
        self.h2: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID_ELEMENTS:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1:]}>"
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self.open and self.open[-1] == "h2":
            self.h2.append(data)


def parse(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    assert parser.open == [], f"never closed: {parser.open}"
    return parser


def test_html_parses_links_nothing_outside_and_embeds_the_plots(run: Path) -> None:
    card = write_report(run)
    page = parse(card.html)
    assert page.h2 == ["At a glance", *SECTIONS]
    names = [tag for tag, _ in page.tags]
    assert "script" not in names and "link" not in names and "iframe" not in names
    for tag, attrs in page.tags:
        for key in ("src", "href"):
            value = attrs.get(key)
            assert value is None or value.startswith(("data:", "#")), f"<{tag} {key}={value}>"
    images = [attrs["src"] for tag, attrs in page.tags if tag == "img"]
    embedded = [base64.b64decode(str(src).split(",", 1)[1]) for src in images]
    assert embedded == [(run / p).read_bytes() for p in ("data/lengths.png", "loss.png", "lr.png")]
    # The sample's markup is text on the page, not elements.
    assert HOSTILE_SAMPLE in "".join(page.text)


# --- evaluations -----------------------------------------------------------------------------


def test_a_recorded_evaluation_shows_and_a_rerun_updates_its_row(run: Path) -> None:
    first = EvaluationRecord(
        "multiple-choice",
        "tasks|odd.jsonl",
        {"acc": 0.5, "acc_stderr": 0.25, "n": 4},
        command="scratchlm eval runs/tiny --task tasks|odd.jsonl",
        date="2025-01-31T14:05:09+00:00",
    )
    record_evaluation(run, first)
    card = write_report(run)
    rows = [line for line in section(card.markdown.read_text(), "Evaluations").splitlines()
            if line.startswith("| multiple-choice")]  # fmt: skip
    assert rows == [
        "| multiple-choice | tasks\\|odd.jsonl | acc 0.5000 ± 0.2500, n 4 | latest | "
        "2025-01-31 14:05 UTC | `scratchlm eval runs/tiny --task tasks\\|odd.jsonl` |"
    ]
    assert ("tasks|odd.jsonl (multiple-choice)", "acc 0.5000 ± 0.2500, n 4") in card.scores

    second = EvaluationRecord(
        "multiple-choice", "tasks|odd.jsonl", {"acc": 0.75, "acc_stderr": 0.25, "n": 4}
    )
    record_evaluation(run, second)
    md = write_report(run).markdown.read_text()
    evaluations = section(md, "Evaluations")
    assert evaluations.count("| multiple-choice |") == 1
    assert "acc 0.7500 ± 0.2500" in evaluations and "0.5000" not in evaluations
    page = "".join(parse(run / "report.html").text)
    assert "acc 0.7500 ± 0.2500" in page and "acc 0.5000" not in page


def test_metrics_are_shown_with_their_standard_errors() -> None:
    metrics = {"acc": 0.61, "acc_stderr": 0.02, "acc_norm": 0.6, "n": 1200, "lonely_stderr": 0.1,
               "per_source": {"kjv": 1.25}, "note": "5-shot"}  # fmt: skip
    assert metric_texts(metrics) == [
        "acc 0.6100 ± 0.0200",
        "acc_norm 0.6000",
        "n 1,200",
        "lonely_stderr 0.1000",
        "per_source.kjv 1.2500",
        "note 5-shot",
    ]


# --- runs with little in them ----------------------------------------------------------------


def test_a_run_without_evaluations_plots_or_samples_still_reports(run: Path) -> None:
    for name in ("loss.png", "lr.png", "data/lengths.png", "samples.txt"):
        (run / name).unlink()
    card = write_report(run)
    md = card.markdown.read_text()
    assert "No evaluations recorded yet: run one, e.g. `scratchlm eval " in section(
        md, "Evaluations"
    )
    assert f"No loss plot (loss.png): make it with `scratchlm plot {run}`" in section(
        md, "Training"
    )
    assert "No samples (samples.txt is written at the end of training)" in section(md, "Samples")
    assert "![" not in md
    assert [t for t, _ in parse(card.html).tags].count("img") == 0


def test_an_imported_model_reports_what_it_has(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=257, block_size=16, n_layer=1, n_head=2, n_embd=16)
    config.mlp, config.pos_encoding, config.norm, config.n_kv_head = "swiglu", "rope", "rmsnorm", 1
    tokenizer = BPETokenizer(special_tokens={"<|endoftext|>": 256})
    run = save_imported_run(tmp_path / "imported", GPT(config), tokenizer, source="model.gguf")
    md = write_report(run).markdown.read_text()
    assert "**Imported from**: `model.gguf`" in section(md, "Model")
    assert "**Shape**: 1 layers, 16 wide, 2 heads (1 key/value heads)" in section(md, "Model")
    assert "**Positions**: rope (base 10000)" in section(md, "Model")
    assert "**Kind**: imported with the model" in section(md, "Tokenizer")
    assert "not measured: the run has no prepared data" in section(md, "Tokenizer")
    assert "No data report: the model was imported, not trained here." in section(md, "Data")
    assert "Not trained here: the model was imported from model.gguf." in section(md, "Training")
    parse(run / "report.html")


def test_a_damaged_file_spoils_only_its_own_section(run: Path) -> None:
    (run / "evaluations.json").write_text("{not json", encoding="utf-8")
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 13, "train_lo')  # a crash mid-line
    md = write_report(run).markdown.read_text()
    evaluations = section(md, "Evaluations")
    assert evaluations.startswith("\nCould not read this part of the run: ")
    assert "evaluations.json is damaged" in evaluations
    training = section(md, "Training")
    assert "1 line(s) of metrics.jsonl could not be read (left out)." in training
    assert "**Steps**: 12 of 12 planned" in training


def test_a_missing_folder_or_not_a_run_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ScratchLMError, match="no such run directory"):
        write_report(tmp_path / "nowhere")
    (tmp_path / "folder").mkdir()
    assert main(["report", str(tmp_path / "folder")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a scratchlm run (config.toml is missing)" in err
    assert not (tmp_path / "folder" / "report.md").exists()


# --- pieces ----------------------------------------------------------------------------------


def test_training_time_adds_up_resumed_sessions() -> None:
    steps = [{"elapsed_s": t} for t in (1.0, 2.0, 3.0, 0.5, 1.5)]  # resumed after 3 s
    assert training_seconds(steps) == (4.5, 2)
    assert training_seconds([]) == (0.0, 0)


def test_markdown_escapes_the_runs_text() -> None:
    assert escape("acc_norm *bold* <b>|[x](y)") == "acc_norm \\*bold\\* \\<b\\>\\|\\[x\\](y)"
    assert escape("two\nlines") == "two lines"
    assert code_span("a `b` c") == "``a `b` c``"
    assert code_span("a|b", in_table=True) == "`a\\|b`"
