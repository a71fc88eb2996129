"""The book's chapters 2 (Data Engineering) and 3 (Model Code) on a tiny prepared run.

The run is prepared (data cleaned, deduplicated, tokenized into shards) but not trained: these
chapters read its config, data report, tokenizer and shards, never its checkpoints.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from scratchlm.book import typst_markup as tm
from scratchlm.book.build import build_book
from scratchlm.book.chapters import data_engineering, model_code
from scratchlm.book.context import BookContext
from scratchlm.book.tiny_run import TINY_RUN
from scratchlm.config import config_from_dict
from scratchlm.model.config import model_config_from_table, model_preset
from scratchlm.model.gpt import GPT
from scratchlm.runs.preparation import prepare_run


@pytest.fixture(scope="module")
def prepared_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("book-data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCRATCHLM_CACHE", str(base / "cache"))
        config = config_from_dict({**TINY_RUN, "out_dir": str(base / "runs")}, where="test")
        prepare_run(config)
    return Path(config.run_dir)


@pytest.fixture
def run_without_data(prepared_run: Path, tmp_path: Path) -> Path:
    """An imported-model-like run: a config (with its own LSH banding) and no data folder."""
    run = tmp_path / "imported"
    run.mkdir()
    text = (prepared_run / "config.toml").read_text()
    text = re.sub(r"(?m)^bands = 0$", "bands = 8", text)
    text = re.sub(r"(?m)^rows = 0$", "rows = 16", text)
    (run / "config.toml").write_text(text)
    shutil.copy(prepared_run / "tokenizer.json", run / "tokenizer.json")
    return run


def chapter(module: object, run: Path, out: Path) -> str:
    ctx = BookContext(run, out)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    return module.write(ctx)  # type: ignore[attr-defined, no-any-return]


def test_both_chapters_typeset(prepared_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "book.pdf"
    ctx = build_book(
        prepared_run,
        out,
        chapters=["data_engineering", "model_code"],
        keep_source=tmp_path / "src",
    )
    assert out.read_bytes().startswith(b"%PDF")
    main = (tmp_path / "src" / "main.typ").read_text()
    assert "= Data Engineering" in main and "= Model Code" in main
    figures = {p.name for p in (tmp_path / "src" / "figures").iterdir()}
    assert {"lsh_s_curve.png", "document_lengths.png", "vocabulary_study.png"} <= figures
    listed = {listing.symbol for listing in ctx.listings}
    assert "scratchlm.tokenizer.training:learn_merges" in listed
    assert "scratchlm.model.gpt:CausalSelfAttention" in listed
    assert "scratchlm.model.gpt:GPT.forward" in listed


def test_parameter_counts_are_the_models(prepared_run: Path, tmp_path: Path) -> None:
    markup = chapter(model_code, prepared_run, tmp_path / "book")
    config = model_config_from_table(BookContext(prepared_run, tmp_path).config["model"], "test")
    # The run's model for real (it is tiny), the presets on the meta device.
    assert tm.text(tm.number(GPT(config).num_parameters())) in markup
    for name in model_code.GPT2_PRESETS:
        with torch.device("meta"):
            count = GPT(model_preset(name)).num_parameters()
        assert tm.text(tm.number(count)) in markup, name
    assert tm.text("124,439,808") in markup  # Hugging Face's GPT2LMHeadModel count


def test_lsh_probabilities_follow_the_runs_banding(prepared_run: Path, tmp_path: Path) -> None:
    markup = chapter(data_engineering, prepared_run, tmp_path / "book")
    report = BookContext(prepared_run, tmp_path).json_file("data/report.json")
    assert report is not None
    near = next(s for s in report["stages"] if s["stage"] == "near_dedup")["details"]
    b, r = near["bands"], near["rows"]
    assert f"$b = {b}$" in markup and f"$r = {r}$" in markup
    for s in data_engineering.SIMILARITIES:
        assert tm.text(tm.number(1 - (1 - s**r) ** b, 4)) in markup, s


def test_run_without_data_gets_notes(run_without_data: Path, tmp_path: Path) -> None:
    markup = chapter(data_engineering, run_without_data, tmp_path / "book")
    assert "Your run has no data stage" in markup
    assert "Your run has no training text" in markup
    # The banding comes from the run's [dedup] section when there is no report.
    assert "$b = 8$" in markup and "$r = 16$" in markup
    assert tm.text(tm.number(1 - (1 - 0.8**16) ** 8, 4)) in markup
    out = tmp_path / "book.pdf"
    build_book(run_without_data, out, chapters=["data_engineering"])
    assert out.read_bytes().startswith(b"%PDF")
