"""Chapter 1 (Foundations) and Appendix A (manual derivatives) of the book: they build; the PE
table printed is the project's sinusoidal code's; the one-hot table is the checkpoint's; every
hand gradient matches autograd, the book prints the error measured, and a wrong one is caught."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import cast

import pytest
import torch
from torch import nn

from scratchlm.book import derivatives
from scratchlm.book import typst_markup as tm
from scratchlm.book.attention_weights import model_attention
from scratchlm.book.build import build_book
from scratchlm.book.chapters import appendix_derivatives, foundations
from scratchlm.book.context import BookContext
from scratchlm.book.derivatives import (
    GRADIENT_TOLERANCE,
    GradientCase,
    gradient_cases,
    layer_norm_backward,
    max_gradient_error,
    run_gradient_checks,
    verified_gradient_checks,
)
from scratchlm.inference.language_model import load_for_inference
from scratchlm.model.positional import sinusoidal_encoding, sinusoidal_table
from scratchlm.runs.loading import read_model_config
from tiny_runs import train_tiny_run

CELL = re.compile(r'\[\*?#"((?:[^"\\]|\\.)*)"\*?\]')  # one tm.table cell, header or body


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("book-foundations"))


@pytest.fixture(scope="module")
def book(run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The two chapters typeset: (the PDF, the Typst source)."""
    out = tmp_path_factory.mktemp("book-foundations-out")
    build_book(
        run,
        out / "book.pdf",
        chapters=["foundations", "appendix_derivatives"],
        keep_source=out / "src",
    )
    return out / "book.pdf", (out / "src" / "main.typ").read_text(encoding="utf-8")


def table_after(source: str, marker: str) -> tuple[list[str], list[list[str]]]:
    """The first tm.table after `marker` in the source: (headers, rows of cells)."""
    start = source.index(marker)
    line = next(ln for ln in source[start:].splitlines() if ln.startswith("#table("))
    columns = int(re.match(r"#table\(columns: (\d+)", line).group(1))  # type: ignore[union-attr]
    cells = [c.replace('\\"', '"').replace("\\\\", "\\") for c in CELL.findall(line)]
    assert len(cells) % columns == 0
    rows = [cells[i : i + columns] for i in range(0, len(cells), columns)]
    return rows[0], rows[1:]


def test_the_two_chapters_build_into_a_pdf_with_their_figures(book: tuple[Path, str]) -> None:
    pdf, source = book
    assert pdf.read_bytes().startswith(b"%PDF")
    assert "= Foundations" in source and "= Appendix A: Manual derivatives" in source
    for figure in ("causal_mask", "sinusoidal", "rope_scores", "attention_heads"):
        assert f'image("figures/{figure}.png"' in source
        assert (pdf.parent / "src" / "figures" / f"{figure}.png").stat().st_size > 5_000


def test_the_pe_table_holds_the_values_of_the_projects_sinusoidal_code(
    run: Path, book: tuple[Path, str]
) -> None:
    _, source = book
    headers, rows = table_after(source, "=== Sinusoidal positions")
    channels = [int(re.fullmatch(r"PE\(p,(\d+)\)", h).group(1)) for h in headers[1:]]  # type: ignore[union-attr]
    assert channels[0::2] == [c - 1 for c in channels[1::2]]  # sin, cos pairs 2i, 2i + 1
    pairs = [c // 2 for c in channels[0::2]]
    positions = [int(row[0]) for row in rows]
    assert positions == foundations.PE_POSITIONS and len(pairs) >= 3
    dim = read_model_config(run).n_embd
    expected = sinusoidal_table(positions, pairs, dim)
    model_table = sinusoidal_encoding(max(positions) + 1, dim)
    for row, pos, want in zip(rows, positions, expected, strict=True):
        printed = [float(v) for v in row[1:]]
        formula = [v for pair in want for v in pair]
        assert printed == pytest.approx(formula, abs=5.1e-5)  # printed to 4 decimals
        buffer = [float(model_table[pos, c]) for c in channels]
        assert printed == pytest.approx(buffer, abs=5.1e-5)
    # Not a table of zeros that happens to parse: the slow and fast pairs differ.
    assert len({row[1] for row in rows}) == len(rows)


def test_the_one_hot_table_is_the_checkpoints_embedding_rows(
    run: Path, book: tuple[Path, str]
) -> None:
    _, source = book
    _, rows = table_after(source, "== Tokens and embeddings")
    lm = load_for_inference(run)
    ids = lm.tokenizer.encode(foundations.SENTENCE)
    E = cast(nn.Embedding, lm.model.transformer["wte"]).weight
    assert [int(r[1]) for r in rows] == ids[: len(rows)]
    for token, id_, product, lookup in rows:
        assert token == foundations.piece(lm, int(id_))
        assert product == lookup
        row = [float(v) for v in lookup.split(", ")]
        assert row == pytest.approx(E[int(id_), : len(row)].tolist(), abs=5.1e-5)


def test_every_hand_gradient_matches_autograd_and_the_book_prints_the_measured_error(
    book: tuple[Path, str],
) -> None:
    _, source = book
    checks = run_gradient_checks()
    assert len(checks) == 6
    for check in checks:
        assert check.max_error < GRADIENT_TOLERANCE, check
    _, rows = table_after(source, "= Appendix A")
    printed = {name: error for name, _, error in rows}
    assert printed == {c.name: tm.number(c.max_error, 3) for c in checks}
    # ... and once more under each layer's own section.
    for check in checks:
        assert (
            f"= {tm.text(tm.number(check.max_error, 3))}.\n"
            in source.split(f'== #"{check.name}"')[1]
        )


def wrong_layer_norm_backward(
    x: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LayerNorm's backward with a classic mistake: the path through the mean forgotten."""
    grad_x, grad_w, grad_b = layer_norm_backward(x, weight, grad_out, eps)
    return (
        grad_x + (grad_out * weight).mean(dim=-1, keepdim=True) / x.std(dim=-1, keepdim=True),
        grad_w,
        grad_b,
    )


def broken_cases(seed: int = derivatives.GRADIENT_SEED) -> list[GradientCase]:
    cases = gradient_cases(seed)
    layer_norm = next(c for c in cases if c.name == "LayerNorm")
    wrong = replace(
        layer_norm, backward=lambda x, w, b, g: wrong_layer_norm_backward(x, w, g, 1e-5)
    )
    return [wrong if c is layer_norm else c for c in cases]


def test_a_wrong_hand_gradient_is_caught_and_stops_the_book(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    wrong = next(c for c in broken_cases() if c.name == "LayerNorm")
    assert max_gradient_error(wrong) > 1e-3
    monkeypatch.setattr(derivatives, "gradient_cases", broken_cases)
    with pytest.raises(RuntimeError, match="layer_norm_backward"):
        verified_gradient_checks()
    ctx = BookContext(tmp_path, tmp_path / "book")
    with pytest.raises(RuntimeError, match="disagree with autograd"):
        appendix_derivatives.write(ctx)


def test_the_attention_weights_are_the_ones_the_model_uses(run: Path) -> None:
    lm = load_for_inference(run)
    ids = lm.tokenizer.encode(foundations.SENTENCE)[:10]
    weights, error = model_attention(lm.model, ids)
    assert len(weights) == lm.model.config.n_layer and error < 1e-4
    for w in weights:
        assert w.shape == (lm.model.config.n_head, len(ids), len(ids))
        assert torch.allclose(w.sum(-1), torch.ones(()).double())
        assert float(w.triu(1).abs().max()) == 0.0  # no weight on a future token


def test_a_run_without_a_checkpoint_is_told_how_to_get_one(run: Path, tmp_path: Path) -> None:
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    for name in ("config.toml", "tokenizer.json"):
        shutil.copy(run / name, untrained / name)
    ctx = BookContext(untrained, tmp_path / "book")
    ctx.out_dir.mkdir(parents=True)
    markup = foundations.write(ctx)
    assert markup.count("Your run has no trained model yet") == 2
    assert "scratchlm train --config" in markup
    assert "=== Sinusoidal positions" in markup  # the code's own sections are still there
