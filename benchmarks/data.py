"""Raw text -> token shards: our pipeline with our tokenizer, against the same with tiktoken.

    python benchmarks/data.py [--mb 20] [--repeats 3] [--threads N] [--json results.json]

Both contenders run the whole of `scratchlm.data.prepare.prepare_shards` on the same documents
(Shakespeare + the King James Bible + the chitchat conversations, shuffled by document with a
fixed seed and cut at --mb megabytes): split by document, encode in batches on every core, write
train and val shards. Only the encoder differs:

- scratchlm: GPT-2's vocabulary loaded as our BPETokenizer (`load_pretrained("gpt2")`), whose
  `encode_batch` takes its fast path (tiktoken's Rust core on threads) with our checks around it;
- tiktoken: a `tiktoken.Encoding` built directly from the same rank file (tiktoken's own
  `get_encoding` would download it), called with `encode_ordinary_batch`.

Throughput is MB of UTF-8 text per second, best of --repeats runs (the two take turns going
first, so a change in the machine's load hits both). The shards must come out byte for byte the same; the
script says whether they did. The ratio scratchlm / tiktoken is the number to watch (target:
at least 0.8x).
"""

from __future__ import annotations

import argparse
import filecmp
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from corpus_sample import sample_documents
from machine import cpu_description, load_average

from scratchlm.core.workers import available_cores
from scratchlm.data.prepare import TextEncoder, prepare_shards
from scratchlm.tokenizer.bpe import EOT_TOKEN
from scratchlm.tokenizer.patterns import R50K_SPLIT_PATTERN
from scratchlm.tokenizer.pretrained import fetch_rank_file, load_pretrained

SEED = 1337
VAL_FRACTION = 0.05
GPT2_EOT_ID = 50256


class TiktokenEncoder:
    """A tiktoken.Encoding with the three things prepare_shards asks of a tokenizer."""

    def __init__(self, encoding: Any) -> None:
        self.encoding = encoding
        self.vocab_size: int = encoding.n_vocab
        self.eot_id: int = encoding.eot_token

    def encode_batch(self, texts: Sequence[str], *, num_threads: int) -> list[list[int]]:
        return list(self.encoding.encode_ordinary_batch(list(texts), num_threads=num_threads))


def gpt2_tiktoken() -> TiktokenEncoder:
    import tiktoken
    import tiktoken.load

    ranks = tiktoken.load.load_tiktoken_bpe(str(fetch_rank_file("gpt2")))
    encoding = tiktoken.Encoding(
        "gpt2",
        pat_str=R50K_SPLIT_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={EOT_TOKEN: GPT2_EOT_ID},
    )
    return TiktokenEncoder(encoding)


def run_once(documents: list[str], encoder: TextEncoder, out: Path, threads: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    prepare_shards(documents, encoder, out, VAL_FRACTION, SEED, num_threads=threads, progress=False)
    return time.perf_counter() - start


def same_shards(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.glob("*.bin"))
    if names != sorted(p.name for p in b.glob("*.bin")):
        return False
    return all(filecmp.cmp(a / name, b / name, shallow=False) for name in names)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--mb", type=float, default=20.0, help="megabytes of text (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each; the best counts")
    parser.add_argument("--threads", type=int, default=0, help="default: every available core")
    parser.add_argument("--json", type=Path, help="also save the results here")
    args = parser.parse_args(argv)
    threads = args.threads or available_cores()

    documents = sample_documents(args.mb)
    text_mb = sum(len(doc.encode("utf-8")) for doc in documents) / 1e6
    ours = load_pretrained("gpt2")
    ours.tiktoken_encoding()  # the fast path must be available: fail here, not in the timing
    contenders: dict[str, TextEncoder] = {"scratchlm": ours, "tiktoken": gpt2_tiktoken()}

    load = load_average()
    print(
        f"{cpu_description()} "
        f"({available_cores()} available), Python {platform.python_version()}, "
        f"load average {load}"
    )
    print(
        f"{len(documents):,} documents, {text_mb:.1f} MB of text -> GPT-2 token shards, "
        f"{threads} threads, best of {args.repeats}\n"
    )
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    with tempfile.TemporaryDirectory(prefix="scratchlm-bench-") as tmp:
        for repeat in range(args.repeats):
            # Alternate who goes first, so whatever the first run of a pair pays (a colder
            # cache, a neighbour's burst of work) is not always charged to the same one.
            order = list(contenders.items())
            for name, encoder in order[::-1] if repeat % 2 else order:
                gc.collect()
                seconds[name].append(run_once(documents, encoder, Path(tmp) / name, threads))
        identical = same_shards(Path(tmp) / "scratchlm", Path(tmp) / "tiktoken")
        meta = json.loads((Path(tmp) / "scratchlm" / "meta.json").read_text())

    tokens = meta["train_tokens"] + meta["val_tokens"]
    rates = {name: text_mb / min(times) for name, times in seconds.items()}
    print(f"{'pipeline':<12} {'best s':>8} {'MB/s':>8}   runs (s)")
    for name, times in seconds.items():
        runs = " ".join(f"{t:.2f}" for t in times)
        print(f"{name:<12} {min(times):>8.2f} {rates[name]:>8.2f}   {runs}")
    ratio = rates["scratchlm"] / rates["tiktoken"]
    print(
        f"\n{tokens:,} tokens in {len(meta['train_shards']) + len(meta['val_shards'])} shards; "
        f"shards identical: {'yes' if identical else 'NO'}"
    )
    print(f"scratchlm / tiktoken: {ratio:.2f}x (target >= 0.8x)")

    if args.json is not None:
        results = {
            "machine": {"cpus": os.cpu_count(), "available": available_cores(), "load": load},
            "documents": len(documents),
            "text_mb": text_mb,
            "tokens": tokens,
            "threads": threads,
            "seconds": seconds,
            "mb_per_s": rates,
            "ratio": ratio,
            "identical": identical,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"saved {args.json}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
