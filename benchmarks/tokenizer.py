"""Our BPE against Hugging Face `tokenizers` and `rustbpe`, side by side on the same real text.

    python benchmarks/tokenizer.py [--mb 20] [--sizes 4096,16384] [--json results.json]

The text is Shakespeare + the King James Bible + the chitchat conversations (fetched with
scratchlm.data.sources), shuffled by document with a fixed seed and cut at --mb megabytes; 10%
of the documents are held out. For each vocabulary size it measures:

- training time of BPETokenizer.train (on every core, and in one process), HF's BpeTrainer and
  rustbpe, all with the same split pattern (ours, GPT-4's) and the same number of merges;
- whether our merges are rustbpe's, in the same order (both break ties to the smallest pair);
- encoding throughput on the held-out text: our encode_ordinary with the default engine
  ("auto", which hands our ranks to tiktoken when it is installed) and with our pure-Python
  reference encoder (engine="python"), tiktoken given our merges as ranks, HF's encode_batch
  and rustbpe's batch_encode;
- bytes per token on the held-out text for each trained tokenizer.

A library that is missing or fails is reported in the output and skipped; the rest still run.
Install the other libraries with `pip install -e '.[bench]'`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from corpus_sample import CORPORA, sample_documents
from machine import cpu_description, load_average

from scratchlm.core.document_split import split_documents
from scratchlm.core.errors import ScratchLMError
from scratchlm.tokenizer import GPT4_SPLIT_PATTERN, BPETokenizer

EOT = "<|endoftext|>"
SEED = 1337
HELDOUT_FRACTION = 0.1
PATTERN = GPT4_SPLIT_PATTERN  # every contender splits text with the same regex


# --- text --------------------------------------------------------------------------------------


def load_text(max_mb: float) -> tuple[list[str], list[str]]:
    """(train, held-out) documents: the corpora shuffled by document, capped at max_mb MB."""
    chosen = sample_documents(max_mb, SEED)
    train, heldout, _ = split_documents(chosen, HELDOUT_FRACTION, SEED)
    return train, heldout


def utf8_size(documents: Sequence[str]) -> int:
    return sum(len(doc.encode("utf-8")) for doc in documents)


# --- the contenders ----------------------------------------------------------------------------
# Each trainer takes (train documents, vocab size incl. 256 bytes + <|endoftext|>, pattern) and
# returns an encoder: held-out documents -> token count per document.

Encoder = Callable[[list[str]], list[int]]


def train_ours(train: list[str], vocab_size: int, pattern: str) -> BPETokenizer:
    return BPETokenizer.train(train, vocab_size, pattern=pattern, special_tokens=[EOT])


def train_ours_one_process(train: list[str], vocab_size: int, pattern: str) -> BPETokenizer:
    # workers=1: the chunks are counted in this process, without worker processes.
    return BPETokenizer.train(train, vocab_size, pattern=pattern, special_tokens=[EOT], workers=1)


def train_hf(train: list[str], vocab_size: int, pattern: str) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    # The same chunks as ours: split with our regex, then map bytes to ByteLevel's printable
    # alphabet (use_regex=False, or ByteLevel would split again with GPT-2's pattern).
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,  # like ours, it counts the 256 bytes and the special token
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(train, trainer, length=len(train))
    return tokenizer


def train_rustbpe(train: list[str], vocab_size: int, pattern: str) -> Any:
    import rustbpe

    tokenizer = rustbpe.Tokenizer()
    # rustbpe has no special tokens: its vocab_size is 256 bytes + merges, so one less than ours
    # gives the same number of merges.
    tokenizer.train_from_iterator(iter(train), vocab_size - 1, pattern=pattern)
    return tokenizer


def same_merges(ours: BPETokenizer, rust: Any) -> bool:
    """Whether rustbpe learned our tokens, in our order (its ranks are our ids)."""
    theirs = [token for token, _ in sorted(rust.get_mergeable_ranks(), key=lambda item: item[1])]
    return theirs == [ours.vocab[i] for i in range(256 + len(ours.merges))]


def auto_engine(tokenizer: BPETokenizer) -> str:
    """The engine encode(engine="auto") uses for this tokenizer."""
    try:
        tokenizer.tiktoken_encoding()
    except ScratchLMError:
        return "python"
    return "tiktoken"


def tiktoken_from_ours(tokenizer: BPETokenizer) -> Any:
    """Our merges as a tiktoken.Encoding: our ids are ranks, and bytes 0..255 are ids 0..255."""
    import tiktoken

    token_bytes = {i: bytes([i]) for i in range(256)}
    for (left, right), new_id in sorted(tokenizer.merges.items(), key=lambda item: item[1]):
        token_bytes[new_id] = token_bytes[left] + token_bytes[right]
    ranks = {data: token_id for token_id, data in token_bytes.items()}
    if len(ranks) != len(token_bytes):
        # Two merges that spell the same bytes: tiktoken keys ranks by bytes, so it cannot
        # represent this vocabulary exactly.
        raise ValueError(f"{len(token_bytes) - len(ranks)} tokens share their bytes with another")
    return tiktoken.Encoding(
        "scratchlm-bench",
        pat_str=tokenizer.pattern,
        mergeable_ranks=ranks,
        special_tokens=dict(tokenizer.special_tokens),
    )


# --- measuring ---------------------------------------------------------------------------------


def timed(function: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def attempt(
    results: dict[str, Any], key: str, function: Callable[[], Any]
) -> tuple[Any, float] | None:
    """Run and time `function`; on failure record the error under `key` and return None."""
    try:
        return timed(function)
    except Exception as e:  # a competitor failing must not stop the others
        message = f"{type(e).__name__}: {e}".splitlines()[0]
        results.setdefault("errors", {})[key] = message
        print(f"  !! {key} failed: {message}", file=sys.stderr)
        if os.environ.get("BENCH_TRACEBACK"):
            traceback.print_exc()
        return None


def bench_size(
    train: list[str], heldout: list[str], vocab_size: int, encode_rounds: int = 3
) -> dict[str, Any]:
    heldout_bytes = utf8_size(heldout)
    mb = heldout_bytes / 1e6
    row: dict[str, Any] = {"vocab_size": vocab_size}

    def log(what: str, seconds: float) -> None:
        print(f"  {what:<44} {seconds:8.2f} s", file=sys.stderr, flush=True)

    # Training ----------------------------------------------------------------------------
    print(f"vocabulary {vocab_size:,}: training", file=sys.stderr, flush=True)
    trained: dict[str, Any] = {}
    trainers = (
        ("ours", train_ours),
        ("ours_1proc", train_ours_one_process),
        ("hf", train_hf),
        ("rustbpe", train_rustbpe),
    )
    for name, trainer in trainers:
        outcome = attempt(row, f"train {name}", lambda t=trainer: t(train, vocab_size, PATTERN))
        if outcome is not None:
            trained[name], row[f"train_s_{name}"] = outcome
            log(f"train {name}", outcome[1])
    if "ours" in trained:
        row["merges_ours"] = len(trained["ours"].merges)
    if "ours" in trained and "ours_1proc" in trained:
        # Counting in worker processes must not change what is learned.
        row["one_process_matches_ours"] = trained["ours_1proc"].merges == trained["ours"].merges
    if "ours" in trained and "rustbpe" in trained:
        row["rustbpe_matches_ours"] = same_merges(trained["ours"], trained["rustbpe"])
    if "hf" in trained:
        row["vocab_hf"] = trained["hf"].get_vocab_size()

    # Encoding the held-out text: throughput and bytes per token ------------------------------
    encoders: dict[str, Encoder] = {}
    if "ours" in trained:
        ours = trained["ours"]
        ours.encode_ordinary("warm up")  # builds a lazy fast engine, if any, outside the timing
        row["auto_engine"] = auto_engine(ours)
        encoders["ours"] = lambda docs: [len(ours.encode_ordinary(d)) for d in docs]

        def python_encoder(docs: list[str]) -> list[int]:
            # A fresh copy every time, so its chunk cache starts empty, as in a new process.
            python = BPETokenizer(ours.pattern, ours.merges, ours.special_tokens)
            return [len(python.encode_ordinary(d, engine="python")) for d in docs]

        encoders["ours_python"] = python_encoder
        fast = attempt(row, "tiktoken from our ranks", lambda: tiktoken_from_ours(ours))
        if fast is not None:
            encoding = fast[0]
            encoders["tiktoken"] = lambda docs: [len(encoding.encode_ordinary(d)) for d in docs]
    if "hf" in trained:
        hf = trained["hf"]
        encoders["hf"] = lambda docs: [len(e.ids) for e in hf.encode_batch(docs)]
    if "rustbpe" in trained:
        rust = trained["rustbpe"]
        encoders["rustbpe"] = lambda docs: [len(ids) for ids in rust.batch_encode(docs)]
    # Encoding takes a fraction of a second, so one run is at the mercy of the machine's load:
    # the encoders take turns for `encode_rounds` rounds and each keeps its best time.
    counts: dict[str, list[int]] = {}
    best: dict[str, float] = {}
    failed: set[str] = set()
    for _ in range(encode_rounds):
        for name, encoder in encoders.items():
            if name in failed:
                continue
            outcome = attempt(row, f"encode {name}", lambda e=encoder: e(heldout))
            if outcome is None:
                failed.add(name)
                continue
            counts[name], seconds = outcome
            best[name] = min(seconds, best.get(name, math.inf))
    for name, seconds in best.items():
        row[f"encode_mb_s_{name}"] = mb / seconds
        log(f"encode {name} ({mb:.2f} MB held out, best of {encode_rounds})", seconds)
        if name not in ("tiktoken", "ours_python"):  # ours again: checked below
            row[f"bytes_per_token_{name}"] = heldout_bytes / max(sum(counts[name]), 1)
    if "ours" in best and "tiktoken" in best:
        # The fast path's cost over plain tiktoken with the same ranks (target: within 10%).
        row["encode_ratio_ours_tiktoken"] = best["tiktoken"] / best["ours"]
    # Same ranks, same pattern: tiktoken and our Python encoder must give exactly our counts.
    for other in ("tiktoken", "ours_python"):
        if "ours" in counts and other in counts:
            row[f"{other}_matches_ours"] = counts[other] == counts["ours"]

    # Ratios ------------------------------------------------------------------------------
    for other in ("ours_1proc", "hf", "rustbpe"):
        if "train_s_ours" in row and f"train_s_{other}" in row:
            row[f"train_ratio_ours_{other}"] = row["train_s_ours"] / row[f"train_s_{other}"]
        if "bytes_per_token_ours" in row and f"bytes_per_token_{other}" in row:
            ratio = row["bytes_per_token_ours"] / row[f"bytes_per_token_{other}"]
            row[f"bytes_per_token_ratio_ours_{other}"] = ratio
    return row


# --- reporting ---------------------------------------------------------------------------------


def fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def print_table(results: dict[str, Any]) -> None:
    print(
        f"\ntext: {results['train_mb']:.2f} MB training ({results['train_documents']:,} documents), "
        f"{results['heldout_mb']:.2f} MB held out ({results['heldout_documents']:,} documents), "
        f"from {', '.join(CORPORA)}"
    )
    print(f"machine: {results['machine']}")
    for row in results["rows"]:
        get = row.get
        print(f"\nvocabulary {row['vocab_size']:,} ({fmt(get('merges_ours'), ',')} merges)")
        header = f"  {'':<24} {'train s':>9} {'ours/it':>7} {'encode MB/s':>12} {'bytes/token':>12}"
        print(header)
        print("  " + "-" * (len(header) - 2))
        engine = get("auto_engine", "n/a")
        for name, label in (
            ("ours", f"scratchlm ({engine})"),
            ("ours_1proc", "scratchlm, one process"),
            ("ours_python", "scratchlm (python)"),
            ("tiktoken", "tiktoken*"),
            ("hf", "HF tokenizers"),
            ("rustbpe", "rustbpe"),
        ):
            ratio = get(f"train_ratio_ours_{name}")
            print(
                f"  {label:<24} {fmt(get(f'train_s_{name}'), '9.2f'):>9} "
                f"{fmt(ratio, '6.2f') + 'x' if ratio else '':>7} "
                f"{fmt(get(f'encode_mb_s_{name}'), '12.2f'):>12} "
                f"{fmt(get(f'bytes_per_token_{name}'), '12.3f'):>12}"
            )
        print(
            "  scratchlm trains on every core (the second row: in one process) and encodes with\n"
            f'  its default engine ("auto", here {engine}) and with its Python encoder (third row).'
        )
        print("  * tiktoken given our merges as ranks (no training of its own).")
        for key, what in (
            ("one_process_matches_ours", "same merges in one process as on every core"),
            ("rustbpe_matches_ours", "same merges, in the same order, as rustbpe"),
            ("ours_python_matches_ours", "same tokens from our Python encoder"),
            ("tiktoken_matches_ours", "same tokens from tiktoken*"),
        ):
            value = get(key)
            print(f"  {what}: {'n/a' if value is None else 'yes' if value else 'NO'}")
        ratio = get("encode_ratio_ours_tiktoken")
        if ratio:
            print(f"  encoding speed ours / tiktoken*: {ratio:.2f}x (target: at least 0.90x)")
        for other in ("hf", "rustbpe"):
            ratio = get(f"bytes_per_token_ratio_ours_{other}")
            if ratio is not None:
                print(f"  bytes/token ours / {other}: {ratio:.4f}")
        for key, message in get("errors", {}).items():
            print(f"  FAILED {key}: {message}")


def machine() -> str:
    # The load average says whether other work shared the CPUs while this ran.
    load = load_average()
    return f"{cpu_description()}, Python {platform.python_version()}, load average {load}"


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("scratchlm", "tokenizers", "tiktoken", "rustbpe"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(word) for word in text.split(",")]
    except ValueError:
        raise SystemExit(f"--sizes takes comma-separated whole numbers, got {text!r}") from None
    if min(sizes) < 258:
        raise SystemExit("--sizes: each size must be at least 258 (256 bytes, a merge, EOT)")
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--mb", type=float, default=20.0, help="cap on the text, in MB")
    parser.add_argument("--sizes", default="4096,16384", help="comma-separated vocab sizes")
    parser.add_argument("--json", type=Path, help="also save the results here")
    parser.add_argument(
        "--encode-rounds", type=int, default=3, help="encoding runs per encoder; best is kept"
    )
    args = parser.parse_args(argv)
    sizes = parse_sizes(args.sizes)

    train, heldout = load_text(args.mb)
    results: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/tokenizer.py", *(argv or sys.argv[1:])]),
        "machine": machine(),
        "versions": versions(),
        "corpora": list(CORPORA),
        "train_documents": len(train),
        "heldout_documents": len(heldout),
        "train_mb": utf8_size(train) / 1e6,
        "heldout_mb": utf8_size(heldout) / 1e6,
        "rows": [bench_size(train, heldout, size, args.encode_rounds) for size in sizes],
    }
    results["machine"] = machine()  # again, now that the load average covers the run
    print_table(results)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nsaved {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
