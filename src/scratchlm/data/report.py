"""The data report: what went into a prepared data folder, what came out, and why the rest went.

`data prepare` writes three files beside the shards:

    report.json   everything, for programs: the settings; what reading found (documents,
                  bytes, bytes that were not UTF-8, JSONL lines skipped with their line
                  numbers, files skipped and why); for each stage and each reason (a quality
                  rule, exact or near duplicate, boilerplate line) the documents and bytes it
                  removed, with examples; documents, bytes and tokens in and out; histograms of
                  document lengths; how long each pass took
    report.txt    the same for people, a page long (`scratchlm data report DIR` prints it)
    lengths.png   document lengths before and after, in bytes, and after, in tokens

Tokens in are an estimate (bytes in / the output's bytes per token): the removed text is never
tokenized. Everything else is counted exactly, and each stage's numbers balance (removals.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from scratchlm.core.atomic_files import atomic_path, atomic_write_text
from scratchlm.core.errors import ScratchLMError
from scratchlm.data.clean import EMPTY, CleanConfig
from scratchlm.data.readers import ReadStats
from scratchlm.data.removals import RemovalReport

FORMAT = "scratchlm-data-report"
FORMAT_VERSION = 1
REPORT_JSON = "report.json"
REPORT_TEXT = "report.txt"
LENGTHS_PLOT = "lengths.png"
REPORT_FILES = (REPORT_JSON, REPORT_TEXT, LENGTHS_PLOT)

# Which config key relaxes each quality rule: (key for a value too low, key for one too high).
RULE_KEYS: dict[str, tuple[str | None, str | None]] = {
    "word_count": ("min_words", "max_words"),
    "mean_word_length": ("min_mean_word_length", "max_mean_word_length"),
    "symbol_word_ratio": (None, "max_symbol_word_ratio"),
    "bullet_lines": (None, "max_bullet_line_fraction"),
    "ellipsis_lines": (None, "max_ellipsis_line_fraction"),
    "alpha_words": ("min_alpha_word_fraction", None),
    "stop_words": ("min_stop_words", None),
    "duplicate_lines": (None, "max_duplicate_line_fraction"),
    "duplicate_line_chars": (None, "max_duplicate_line_char_fraction"),
    "duplicate_paragraphs": (None, "max_duplicate_paragraph_fraction"),
    "duplicate_paragraph_chars": (None, "max_duplicate_paragraph_char_fraction"),
}


# ---------------------------------------------------------------------------------------------
# When nothing is left
# ---------------------------------------------------------------------------------------------


def rule_key(rule: str, config: CleanConfig | None, value: float | None = None) -> str:
    """The config key that lets more documents through `rule` (for a document scoring `value`)."""
    if rule.startswith("top_") and rule.endswith("gram_chars"):
        return "clean.max_top_ngram_char_fraction"
    if rule.startswith("duplicate_") and rule.endswith("gram_chars"):
        return "clean.max_duplicate_ngram_char_fraction"
    low, high = RULE_KEYS.get(rule, (None, None))
    if low and high and config is not None and value is not None:
        return f"clean.{low if value < getattr(config, low) else high}"
    return f"clean.{low or high}"


def nothing_left_error(
    settings: Any, read: ReadStats, reports: dict[str, RemovalReport]
) -> ScratchLMError:
    """One line saying why no document is left, and which key to change."""
    sources = ", ".join(settings.sources)
    if read.documents == 0:
        if read.skipped_files:
            why = f"{len(read.skipped_files)} file(s) skipped, e.g. {read.skipped_files[0]}"
        elif read.bad_lines:
            why = f"{read.bad_lines} JSONL line(s) skipped, e.g. {read.bad_line_examples[0]}"
        elif read.not_read:
            why = str(read.not_read_problem())
        else:
            why = (
                f"all {read.empty_skipped} document(s) are empty or whitespace; point the "
                "sources at files with some text"
            )
        return ScratchLMError(f"no text in {sources}: {why}")
    for stage in ("clean", "repeated_lines"):
        report = reports.get(stage)
        if report is None or report.documents_out or not report.documents_in:
            continue
        removed = sorted(
            ((r.documents, name) for name, r in report.reasons.items() if r.documents),
            reverse=True,
        )
        count, top = removed[0]
        others = ", ".join(f"{name} {n}" for n, name in removed[1:4])
        others = f" (then {others})" if others else ""
        if stage == "clean":
            if top == EMPTY:
                fix = "they held only invisible or control characters"
            else:
                example = report.reasons[top].examples[0] if report.reasons[top].examples else {}
                key = rule_key(top, settings.clean, example.get("value"))
                fix = (
                    f"relax {key} (e.g. --{key} VALUE, or in a recipe's [clean] section), "
                    f"switch the rule off with --clean.skip {top}, or keep only the "
                    "normalisation with --clean.filters false"
                )
            what = f"the quality rule {top} removed {count:,}{others}; {fix}"
        else:
            max_documents = settings.lines.max_documents if settings.lines else "?"
            what = (
                f"repeated-line removal emptied {count:,} (every line is in more than "
                f"{max_documents} documents); raise dedup.max_documents or set "
                "--dedup.lines false"
            )
        return ScratchLMError(
            f"no documents left from {sources}: all {report.documents_in:,} were removed by "
            f"{stage}: {what}"
        )
    return ScratchLMError(f"no documents left from {sources}")


# ---------------------------------------------------------------------------------------------
# Building and writing the report
# ---------------------------------------------------------------------------------------------


def length_histogram(lengths: np.ndarray) -> dict[str, list[int]]:
    """Counts in power-of-two bins: [0, 1), [1, 2), [2, 4), ..., trimmed to the used ones."""
    lengths = np.asarray(lengths, dtype=np.int64)
    top = int(lengths.max()) if len(lengths) else 0
    edges = [0] + [2**k for k in range(max(top, 1).bit_length() + 1)]
    counts, _ = np.histogram(lengths, bins=edges)
    used = np.flatnonzero(counts)
    if not len(used):
        return {"edges": [0, 1], "counts": [0]}
    first, last = int(used[0]), int(used[-1])
    return {
        "edges": edges[first : last + 2],
        "counts": [int(c) for c in counts[first : last + 1]],
    }


def shard_document_tokens(paths: list[Path]) -> np.ndarray:
    """Tokens in each document of the shards (end-of-text tokens not counted)."""
    from scratchlm.data.shards import open_shard

    lengths = []
    for path in paths:
        shard = open_shard(path)
        ends = np.append(shard.doc_starts[1:], shard.num_tokens).astype(np.int64)
        lengths.append(ends - shard.doc_starts.astype(np.int64) - 1)
    return np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)


def build_report(
    corpus: Any, meta: dict[str, Any], folder: Path, extra_settings: dict[str, Any]
) -> dict[str, Any]:
    """The report of a prepared folder, as plain JSON types (corpus: pipeline.CleanCorpus)."""
    read: ReadStats = corpus.read
    shards = [folder / name for split in ("train", "val") for name in meta[f"{split}_shards"]]
    tokens = meta["train_tokens"] + meta["val_tokens"]
    text_tokens = tokens - meta["train_documents"] - meta["val_documents"]
    bytes_per_token = meta["bytes_per_token"]
    seconds = dict(corpus.seconds)
    total_seconds = sum(seconds.values())
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "settings": {**corpus.settings.to_json(), **extra_settings},
        "read": {**read.to_json(), "problems": read.problems(), "notes": read.notes()},
        "stages": [report.to_json() for report in corpus.reports.values()],
        "totals": {
            "documents_in": read.documents,
            "bytes_in": read.bytes,
            "tokens_in_estimate": round(read.bytes / bytes_per_token) if bytes_per_token else 0,
            "documents_out": len(corpus),
            "bytes_out": corpus.bytes,
            "tokens_out": tokens,  # with one end-of-text token per document
            "text_tokens_out": text_tokens,
            "bytes_per_token": bytes_per_token,
        },
        "splits": {
            split: {
                "documents": meta[f"{split}_documents"],
                "bytes": meta[f"{split}_bytes"],
                "tokens": meta[f"{split}_tokens"],
                "shards": meta[f"{split}_shards"],
            }
            for split in ("train", "val")
        },
        "lengths": {
            "bytes_in": length_histogram(corpus.lengths_read),
            "bytes_out": length_histogram(corpus.lengths_out),
            "tokens_out": length_histogram(shard_document_tokens(shards)),
        },
        "seconds": {name: round(value, 3) for name, value in seconds.items()},
        "mb_per_second": round(read.bytes / 1e6 / total_seconds, 3) if total_seconds else None,
    }


def write_report(report: dict[str, Any], folder: Path, name: str) -> None:
    """report.json, report.txt (titled with `name`) and lengths.png into `folder`."""
    atomic_write_text(
        folder / REPORT_JSON, json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n"
    )
    atomic_write_text(folder / REPORT_TEXT, format_report(report, name) + "\n")
    plot_lengths(report, folder / LENGTHS_PLOT)


def plot_lengths(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    lengths = report["lengths"]
    totals = report["totals"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label, color in (
        ("bytes_in", f"read ({totals['documents_in']:,} documents)", "tab:blue"),
        ("bytes_out", f"kept ({totals['documents_out']:,} documents)", "tab:orange"),
    ):
        _step(left, lengths[key], label, color)
    left.set_xlabel("document length in bytes")
    left.set_title("Bytes per document, before and after")
    left.legend()
    _step(right, lengths["tokens_out"], "kept", color="tab:green")
    right.set_xlabel("document length in tokens")
    right.set_title(f"Tokens per document ({totals['text_tokens_out']:,} tokens)")
    for ax in (left, right):
        ax.set_xscale("symlog", linthresh=1)
        ax.set_ylabel("documents")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _step(ax: Any, histogram: dict[str, list[int]], label: str, color: str) -> None:
    edges, counts = histogram["edges"], histogram["counts"]
    ax.stairs(counts, edges, label=label, color=color, linewidth=1.5)


# ---------------------------------------------------------------------------------------------
# Reading it back and saying it in words
# ---------------------------------------------------------------------------------------------


def load_report(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The report.json of a prepared folder (or of a run directory's data folder)."""
    folder = Path(folder)
    if (folder / "config.toml").is_file() and (folder / "data").is_dir():
        folder = folder / "data"  # a run directory
    path = folder / REPORT_JSON
    if not folder.is_dir():
        raise ScratchLMError(f"no such folder: {folder}")
    if not path.is_file():
        if (folder / "meta.json").is_file():
            raise ScratchLMError(
                f"{folder} holds prepared data but no data report (it was prepared by an older "
                "scratchlm); prepare it again with `scratchlm data prepare ... --out` it"
            )
        raise ScratchLMError(
            f"{folder} is not a prepared data folder (it has no {REPORT_JSON} or meta.json); "
            "make one with `scratchlm data prepare SOURCE... --tokenizer T --out DIR`"
        )
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ScratchLMError(f"{path} is not valid JSON; prepare the data again") from None
    if not isinstance(report, dict) or report.get("format") != FORMAT:
        raise ScratchLMError(f"{path} is not a scratchlm data report")
    if report.get("format_version") != FORMAT_VERSION:
        raise ScratchLMError(
            f"{path}: data report version {report.get('format_version')}, but this scratchlm "
            f"reads version {FORMAT_VERSION}; prepare the data again"
        )
    return report


def format_report(report: dict[str, Any], name: str = "") -> str:
    """The readable summary (report.txt)."""
    settings, read, totals = report["settings"], report["read"], report["totals"]
    lines = [f"data report{f' for {name}' if name else ''}"]
    lines.append(f"sources: {', '.join(settings['sources'])}")
    files = f" from {read['files']:,} files" if read["files"] else ""
    lines.append(f"read: {read['documents']:,} documents, {read['bytes']:,} bytes{files}")
    if read.get("empty_skipped"):
        lines.append(f"  {read['empty_skipped']:,} empty documents skipped")
    # Files read as text by their content, byte-order marks, hidden files (older reports: none).
    lines += [f"  {line}" for line in read.get("notes") or []]
    problems = read.get("problems") or []
    lines.append("problems: " + ("none" if not problems else f"{len(problems)}"))
    lines += [f"  {problem}" for problem in problems]
    off = [
        stage
        for stage, key in (
            ("clean", "clean"),
            ("exact_dedup", "exact_dedup"),
            ("repeated_lines", "repeated_lines"),
            ("near_dedup", "near_dedup"),
        )
        if not settings.get(key)
    ]
    if off:
        lines.append(f"stages switched off: {', '.join(off)}")
    for stage in report["stages"]:
        lines.append(RemovalReport.from_json(stage).summary())
    removed_docs = totals["documents_in"] - totals["documents_out"]
    removed_bytes = totals["bytes_in"] - totals["bytes_out"]
    lines.append(
        f"removed: {removed_docs:,} documents ({_percent(removed_docs, totals['documents_in'])}), "
        f"{removed_bytes:,} bytes ({_percent(removed_bytes, totals['bytes_in'])})"
    )
    lines.append(
        f"out: {totals['documents_out']:,} documents, {totals['bytes_out']:,} bytes, "
        f"{totals['tokens_out']:,} tokens ({totals['bytes_per_token']} bytes/token; "
        f"~{totals['tokens_in_estimate']:,} tokens in)"
    )
    for split, numbers in report["splits"].items():
        lines.append(
            f"  {split}: {numbers['documents']:,} documents, {numbers['tokens']:,} tokens in "
            f"{len(numbers['shards'])} shard(s)"
        )
    seconds = report.get("seconds") or {}
    if seconds:
        timing = ", ".join(f"{stage} {value:.1f}s" for stage, value in seconds.items())
        rate = report.get("mb_per_second")
        lines.append(f"time: {timing}" + (f" ({rate:.2f} MB/s)" if rate else ""))
    lines.append(f"lengths: {LENGTHS_PLOT} (bytes per document before and after, tokens after)")
    return "\n".join(lines)


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "0%"
