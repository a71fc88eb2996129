"""`scratchlm eval` as people run it: each evaluation prints its table and is kept with the run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from scratchlm.cli.main import main
from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig
from scratchlm.runs.imported import save_imported_run
from scratchlm.tokenizer import BPETokenizer


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny imported run: one token per byte, an end-of-text token."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=257, block_size=32, n_layer=1, n_head=2, n_embd=32)
    tokenizer = BPETokenizer(special_tokens={"<|endoftext|>": 256})
    run = tmp_path_factory.mktemp("runs") / "tiny"
    save_imported_run(run, GPT(config), tokenizer, source="test", token_roles={"eos": 256})
    return run


def test_language_modelling_on_a_file_is_printed_and_recorded(
    run_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 4, encoding="utf-8")
    argv = ["eval", str(run_dir), "--text", str(text), "--stride", "16"]
    monkeypatch.setattr(sys, "argv", ["scratchlm", *argv])  # the command the record keeps
    assert main(argv) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith(str(text)))
    # One token per byte: 180 tokens and 180 bytes, so bits per byte = loss / ln 2.
    assert "180" in row.split()
    [record] = json.loads((run_dir / "evaluations.json").read_text())
    metrics = record["metrics"]
    assert record["kind"] == "language-modelling" and metrics["tokens"] == 180
    assert metrics["bits_per_byte"] == pytest.approx(metrics["loss"] / 0.6931471805599453)
    assert record["command"] == f"scratchlm eval {run_dir} --text {text} --stride 16"
    # The same evaluation again replaces its entry rather than adding one.
    assert main(argv) == 0
    assert len(json.loads((run_dir / "evaluations.json").read_text())) == 1


def test_a_task_file_is_scored_and_recorded_beside_other_evaluations(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    task = tmp_path / "tasks.jsonl"
    lines = [
        {"question": "One, two, three,", "choices": ["four", "blue"], "answer": 0},
        {"question": "Red, green,", "choices": ["seven", "blue"], "answer": 1},
        {"question": "A, B,", "choices": ["C", "Z"], "answer": 0},
    ]
    task.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    assert main(["eval", str(run_dir), "--task", str(task)]) == 0
    out = capsys.readouterr().out
    header, row = out.splitlines()[1:3]
    assert header.split()[:5] == ["task", "n", "acc", "±", "acc_norm"]
    assert row.split()[:2] == ["tasks", "3"]
    records = json.loads((run_dir / "evaluations.json").read_text())
    [choice] = [r for r in records if r["kind"] == "multiple-choice"]
    assert f"{choice['metrics']['acc']:.3f}" == row.split()[2]


def test_humaneval_runs_through_the_sandbox_and_is_recorded(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["eval", str(run_dir), "--humaneval", "--problems", "2", "--max-new-tokens", "4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "network namespace: on" in out  # the sandbox says what protects the host
    assert "pass@1                0.000" in out  # 4 random tokens solve nothing
    records = json.loads((run_dir / "evaluations.json").read_text())
    [humaneval] = [r for r in records if r["kind"] == "humaneval"]
    assert humaneval["metrics"]["problems"] == 2
