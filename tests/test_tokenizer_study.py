"""`scratchlm tokenizer study`: vocabulary size against held-out compression and parameters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scratchlm.cli import main
from scratchlm.core.errors import ScratchLMError
from scratchlm.data import read_documents
from scratchlm.tokenizer.study import parse_sizes, study_vocab_sizes

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("SCRATCHLM_CACHE", str(cache))
    return cache


def test_study_rows_on_pydocs() -> None:
    documents = read_documents(["pydocs"])
    result = study_vocab_sizes(documents, [512, 300, 400], width=64, heldout_fraction=0.1)

    assert [row.vocab_size for row in result.rows] == [300, 400, 512]
    assert result.split_by == "documents"
    assert result.heldout_documents == int(len(documents) * 0.1 + 0.5)
    assert result.train_documents + result.heldout_documents == len(documents)
    per_token = [row.bytes_per_token for row in result.rows]
    assert per_token == sorted(per_token) and per_token[0] > 1.0
    for row in result.rows:
        assert row.bytes_per_token == pytest.approx(result.heldout_bytes / row.heldout_tokens)
        assert row.embedding_params == row.head_params == row.params_tied == row.vocab_size * 64
        assert row.params_untied == 2 * row.vocab_size * 64
    # The split is seeded, so a rerun measures exactly the same held-out text.
    again = study_vocab_sizes(documents, [300], width=64, heldout_fraction=0.1)
    assert again.heldout_bytes == result.heldout_bytes
    assert again.rows[0].heldout_tokens == result.rows[0].heldout_tokens


def test_cli_writes_table_png_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    argv = ["tokenizer", "study", "--input", "pydocs", "--sizes", "300,400,512"]
    assert main([*argv, "--width", "128", "--out", str(out)]) == 0

    printed = capsys.readouterr().out
    assert "bytes/token" in printed and "width 128" in printed
    table = [line.split() for line in printed.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in table] == ["300", "400", "512"]
    assert [row[3] for row in table] == [f"{n * 128:,}" for n in (300, 400, 512)]
    assert [row[4] for row in table] == [f"{2 * n * 128:,}" for n in (300, 400, 512)]

    saved = json.loads((out / "study.json").read_text())
    assert saved["width"] == 128
    assert [row["vocab_size"] for row in saved["rows"]] == [300, 400, 512]
    per_token = [row["bytes_per_token"] for row in saved["rows"]]
    assert per_token == sorted(per_token)
    assert (out / "study.png").read_bytes().startswith(PNG_MAGIC)
    assert not list(out.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ("512,abc", "'abc' is not one"),
        ("512,,1024", "'' is not one"),
        ("-5", "'-5' is not one"),
        ("1024,256", "256 is too small"),
        ("0", "0 is too small"),
    ],
)
def test_bad_sizes_are_one_clear_line(
    sizes: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ScratchLMError, match="--sizes"):
        parse_sizes(sizes)
    argv = ["tokenizer", "study", "--input", "pydocs", "--sizes", sizes]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --sizes") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_parse_sizes_sorts_and_dedupes() -> None:
    assert parse_sizes(" 2048,512 ,512,1024") == [512, 1024, 2048]
    assert parse_sizes("257") == [257]


def test_bad_width_and_fraction(tmp_path: Path) -> None:
    with pytest.raises(ScratchLMError, match="--width must be a positive"):
        study_vocab_sizes(["some text\n"] * 10, [300], width=0)
    with pytest.raises(ScratchLMError, match="--heldout-fraction must be between 0 and 1"):
        study_vocab_sizes(["some text\n"] * 10, [300], width=8, heldout_fraction=1.0)
