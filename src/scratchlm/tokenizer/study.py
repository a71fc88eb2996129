"""How big should the vocabulary be? Compression against parameters, measured on held-out text.

A larger vocabulary packs more bytes into each token, so a model sees more text per context
window and per step; but every token costs a row in the embedding matrix and another in the
output head (vocab_size x width each, or one shared matrix when they are tied). This study trains
one tokenizer per vocabulary size on the training documents and measures bytes per token on
documents it never saw, so both sides of the trade-off are in one table and one plot.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scratchlm.core.atomic_files import atomic_path, atomic_write_text
from scratchlm.core.document_split import split_documents
from scratchlm.core.errors import ScratchLMError
from scratchlm.core.messages import status
from scratchlm.tokenizer.bpe import EOT_TOKEN, BPETokenizer
from scratchlm.tokenizer.patterns import GPT4_SPLIT_PATTERN

MIN_VOCAB_SIZE = 256 + 1  # every byte, plus <|endoftext|>


@dataclass(frozen=True)
class StudyRow:
    """One vocabulary size: how well it compresses held-out text and what it costs."""

    vocab_size: int  # as trained (smaller than asked if the text ran out of pairs)
    heldout_tokens: int
    bytes_per_token: float
    embedding_params: int  # vocab_size x width: the token embedding
    head_params: int  # vocab_size x width: the output head, when it is not tied
    params_tied: int  # embedding and head share one matrix
    params_untied: int  # separate matrices
    train_seconds: float


@dataclass(frozen=True)
class StudyResult:
    width: int
    heldout_fraction: float
    seed: int
    train_documents: int
    heldout_documents: int
    train_bytes: int
    heldout_bytes: int
    split_by: str  # "documents", or "lines" when there were too few documents
    rows: list[StudyRow] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_sizes(text: str) -> list[int]:
    """'512,1024,2048' -> [512, 1024, 2048] (sorted, duplicates dropped), or one clear error."""
    words = [word.strip() for word in text.split(",")]
    if not all(word.isdecimal() for word in words):
        bad = next(word for word in words if not word.isdecimal())
        raise ScratchLMError(
            f"--sizes takes comma-separated whole numbers such as 512,1024,2048; {bad!r} is not one"
        )
    sizes = sorted({int(word) for word in words})
    if sizes[0] < MIN_VOCAB_SIZE:
        raise ScratchLMError(
            f"--sizes: {sizes[0]} is too small; a vocabulary holds 256 byte tokens + "
            f"{EOT_TOKEN}, so each size must be at least {MIN_VOCAB_SIZE}"
        )
    return sizes


def study_vocab_sizes(
    documents: Sequence[str],
    sizes: Sequence[int],
    width: int,
    heldout_fraction: float = 0.1,
    seed: int = 1337,
    pattern: str = GPT4_SPLIT_PATTERN,
    progress: bool = False,
) -> StudyResult:
    """Train a tokenizer at each size on ~(1 - heldout_fraction) of the documents; measure the rest.

    The split is by document and seeded (the same as `data prepare`'s), so a rerun measures the
    same held-out text.
    """
    if width < 1:
        raise ScratchLMError(f"--width must be a positive whole number, got {width}")
    if not sizes:
        raise ScratchLMError("give at least one vocabulary size")
    if not 0.0 < heldout_fraction < 1.0:
        raise ScratchLMError(f"--heldout-fraction must be between 0 and 1, got {heldout_fraction}")
    train, heldout, split_by = split_documents(list(documents), heldout_fraction, seed)
    heldout_bytes = sum(len(text.encode("utf-8")) for text in heldout)
    rows = []
    for number, size in enumerate(sorted(sizes), start=1):
        if progress:
            status(f"vocabulary {size:,} ({number}/{len(sizes)})")
        start = time.perf_counter()
        tokenizer = BPETokenizer.train(
            train, size, pattern=pattern, special_tokens=[EOT_TOKEN], progress=progress
        )
        seconds = time.perf_counter() - start
        # encode_ordinary: the held-out text is plain text, and an end-of-text token between
        # documents is not compression, so it is not counted.
        tokens = sum(len(tokenizer.encode_ordinary(text)) for text in heldout)
        vocab = tokenizer.vocab_size
        rows.append(
            StudyRow(
                vocab_size=vocab,
                heldout_tokens=tokens,
                bytes_per_token=heldout_bytes / max(tokens, 1),
                embedding_params=vocab * width,
                head_params=vocab * width,
                params_tied=vocab * width,
                params_untied=2 * vocab * width,
                train_seconds=seconds,
            )
        )
    return StudyResult(
        width=width,
        heldout_fraction=heldout_fraction,
        seed=seed,
        train_documents=len(train),
        heldout_documents=len(heldout),
        train_bytes=sum(len(text.encode("utf-8")) for text in train),
        heldout_bytes=heldout_bytes,
        split_by=split_by,
        rows=rows,
    )


def format_table(result: StudyResult) -> str:
    """The rows as an aligned text table, with a line saying what was measured."""
    header = (
        f"{'vocab':>8} {'bytes/token':>12} {'held-out tokens':>16} "
        f"{'emb+head tied':>14} {'untied':>14} {'train s':>8}"
    )
    lines = [
        f"trained on {result.train_documents:,} documents ({result.train_bytes / 1e6:.2f} MB), "
        f"measured on {result.heldout_documents:,} held-out documents "
        f"({result.heldout_bytes / 1e6:.2f} MB); parameters for width {result.width:,}",
        header,
        "-" * len(header),
    ]
    for row in result.rows:
        lines.append(
            f"{row.vocab_size:>8,} {row.bytes_per_token:>12.3f} {row.heldout_tokens:>16,} "
            f"{row.params_tied:>14,} {row.params_untied:>14,} {row.train_seconds:>8.1f}"
        )
    return "\n".join(lines)


def plot_study(result: StudyResult, out_path: Path) -> Path:
    """Bytes per token against vocabulary size, with parameters on a second axis, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    sizes = [row.vocab_size for row in result.rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    lines = ax.plot(
        sizes, [row.bytes_per_token for row in result.rows], "o-", color="tab:blue",
        label="held-out bytes per token",
    )  # fmt: skip
    ax.set_xscale("log", base=2)  # sizes are usually powers of two
    ax.set_xticks(sizes, [f"{size:,}" for size in sizes])
    ax.minorticks_off()
    ax.set_xlabel("vocabulary size")
    ax.set_ylabel("held-out bytes per token", color="tab:blue")
    ax.grid(alpha=0.3)
    params = ax.twinx()
    millions = [row.params_untied / 1e6 for row in result.rows]
    lines += params.plot(sizes, millions, "s--", color="tab:red", label="embedding + untied head")
    millions = [row.params_tied / 1e6 for row in result.rows]
    lines += params.plot(sizes, millions, "^:", color="tab:orange", label="tied embedding/head")
    params.set_ylabel(f"parameters (millions), width {result.width:,}", color="tab:red")
    # One legend for both axes, or the bytes/token line would go unnamed.
    ax.legend(lines, [str(line.get_label()) for line in lines], loc="upper left")
    ax.set_title("Vocabulary size: compression against parameters")
    fig.tight_layout()
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out_path


def save_study(result: StudyResult, out_dir: Path) -> tuple[Path, Path]:
    """Write study.json and study.png into out_dir; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "study.json"
    atomic_write_text(json_path, json.dumps(result.to_json(), indent=2) + "\n")
    return json_path, plot_study(result, out_dir / "study.png")
