"""Scale check of the data pipeline: about a gigabyte of text through `scratchlm data prepare`.

    python benchmarks/data_scale.py --gb 0.1            # a few minutes on 2 cores
    python benchmarks/data_scale.py --gb 1 --json results.json

1. Input. Shakespeare, the King James Bible and the chitchat conversations (fetched into the
   cache on first use) are cut into documents of a few kB (scenes' worth of a play, 40 verses,
   one chat): about 9,000 documents, 21 MB. The input repeats them with random word edits, as
   JSONL.zst shards of ~100 MB of text, until it holds --gb gigabytes, so that every stage has
   work of a known kind:
       82%  a fresh variant: 30% of the words replaced by random words of the corpus (unique)
        8%  a near copy of an earlier output document: 1% of its words replaced (near dedup)
        4%  an exact copy of an earlier output document, in capitals (exact dedup)
        3%  a junk document: a short line, or a table of numbers (cleaning)
        3%  a fresh variant with a boilerplate header line (repeated-line removal)
   plus one line in every shard that is not JSON. The same --gb and --seed give the same files,
   which are kept in --data-dir and reused.
2. Run. `python -m scratchlm data prepare` reads the shards and writes GPT-2 token shards and
   the data report, in a child process. A thread samples the resident memory of that process
   and its workers (from /proc) every 0.2 s, and each process's own peak (VmHWM): the sum of
   those peaks is an upper bound of the memory the run needed at once, the number to watch
   (target: under 2 GB); resource.getrusage's ru_maxrss gives the largest single process.
3. Result. MB of input text per second, the time of each pass (from report.json), what each
   stage removed, and the peak memory; --json writes them all.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

from scratchlm.data.readers import DocumentReader

CORPORA = ("shakespeare", "kjv", "chitchat")
SHARD_BYTES = 100_000_000  # text per input shard
BOILERPLATE = "This text is provided by the Example Archive; all rights reserved by the authors."
_TOKEN = re.compile(r"\S+|\s+")


# ---------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------


def base_documents() -> list[str]:
    """The three corpora cut into documents of a few kB."""
    documents: list[str] = []
    for name in CORPORA:
        for document in DocumentReader([name]):
            text = document.text
            if name == "chitchat":
                documents.append(text)
            elif name == "kjv":
                verses = text.split("\n")
                documents += ["\n".join(verses[i : i + 40]) for i in range(0, len(verses), 40)]
            else:
                paragraphs = text.split("\n\n")
                chunk: list[str] = []
                for paragraph in paragraphs:
                    chunk.append(paragraph)
                    if sum(map(len, chunk)) > 4000:
                        documents.append("\n\n".join(chunk))
                        chunk = []
                if chunk:
                    documents.append("\n\n".join(chunk))
    return [d for d in documents if d.strip()]


class Perturber:
    """Documents as arrays of token ids (words and the whitespace between them), for fast
    random word edits with numpy."""

    def __init__(self, documents: list[str], seed: int) -> None:
        vocab: dict[str, int] = {}
        self.docs: list[np.ndarray] = []
        self.is_word: list[np.ndarray] = []
        for text in documents:
            tokens = _TOKEN.findall(text)
            self.docs.append(np.array([vocab.setdefault(t, len(vocab)) for t in tokens]))
            self.is_word.append(np.array([not t.isspace() for t in tokens]))
        self.vocab = np.array(list(vocab), dtype=object)
        self.words = np.array([i for t, i in vocab.items() if not t.isspace()])
        self.rng = np.random.default_rng(seed)

    def variant(self, index: int, share: float) -> str:
        ids = self.docs[index].copy()
        mask = self.is_word[index] & (self.rng.random(len(ids)) < share)
        ids[mask] = self.rng.choice(self.words, size=int(mask.sum()))
        return "".join(self.vocab[ids])

    def edit(self, text: str, share: float) -> str:
        tokens = np.array(_TOKEN.findall(text), dtype=object)
        words = np.array([not t.isspace() for t in tokens])
        mask = words & (self.rng.random(len(tokens)) < share)
        tokens[mask] = self.vocab[self.rng.choice(self.words, size=int(mask.sum()))]
        return "".join(tokens)


def make_input(folder: Path, gb: float, seed: int) -> dict[str, Any]:
    """Write the JSONL.zst shards (or reuse them); return what they hold."""
    manifest_path = folder / "manifest.json"
    if manifest_path.is_file():
        manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        if manifest.get("gb") == gb and manifest.get("seed") == seed:
            return manifest
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    start = time.perf_counter()
    base = base_documents()
    perturber = Perturber(base, seed)
    rng = random.Random(seed)
    kinds = ["fresh", "near", "exact", "junk", "boilerplate"]
    weights = [82, 8, 4, 3, 3]
    counts = dict.fromkeys(kinds, 0)
    recent: list[str] = []  # a window of earlier output, for copies
    target = int(gb * 1e9)
    total = documents = shard = 0
    compressor = zstandard.ZstdCompressor(level=3, threads=-1)
    while total < target:
        path = folder / f"part_{shard:04d}.jsonl.zst"
        shard_bytes = 0
        with path.open("wb") as raw, compressor.stream_writer(raw) as out:
            out.write(b'{"text": "a line that was cut off\n')  # one bad line per shard
            while shard_bytes < SHARD_BYTES and total < target:
                kind = rng.choices(kinds, weights)[0]
                if kind in ("near", "exact") and not recent:
                    kind = "fresh"
                if kind == "fresh" or kind == "boilerplate":
                    text = perturber.variant(rng.randrange(len(base)), 0.3)
                    if kind == "boilerplate":
                        text = BOILERPLATE + "\n" + text
                elif kind == "near":
                    text = perturber.edit(rng.choice(recent), 0.01)
                elif kind == "exact":
                    text = rng.choice(recent).upper()
                else:
                    text = rng.choice(
                        [
                            "Click here to subscribe!",
                            " ".join(str(rng.random()) for _ in range(200)),
                        ]
                    )
                if kind == "fresh":
                    recent.append(text)
                    if len(recent) > 2000:
                        recent.pop(rng.randrange(len(recent)))
                counts[kind] += 1
                size = len(text.encode("utf-8"))
                out.write((json.dumps({"text": text, "id": documents}) + "\n").encode("utf-8"))
                shard_bytes += size
                total += size
                documents += 1
        shard += 1
        print(f"  input: {total / 1e9:.2f} of {gb} GB, {documents:,} documents", flush=True)
    manifest = {
        "gb": gb,
        "seed": seed,
        "shards": shard,
        "documents": documents,
        "text_bytes": total,
        "file_bytes": sum(p.stat().st_size for p in folder.glob("*.zst")),
        "kinds": counts,
        "base_documents": len(base),
        "seconds": round(time.perf_counter() - start, 1),
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# ---------------------------------------------------------------------------------------------
# Memory of a process tree
# ---------------------------------------------------------------------------------------------


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants, from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, stack = [], [root]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack += [child for child, parent in parents.items() if parent == pid]
    return tree


def memory(pid: int) -> tuple[int, int]:
    """(resident bytes now, peak resident bytes so far: VmHWM) of a process, 0 if it is gone."""
    values = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


class MemorySampler(threading.Thread):
    """Every `interval` seconds: the resident memory of a process tree now (the peak of that
    sum is `peak`), and each process's own peak (their sum, `peak_bound`, bounds the tree's
    true peak from above, since a short peak between two samples is still in VmHWM)."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = 0
        self.process_peaks: dict[int, int] = {}
        self.done = threading.Event()

    @property
    def peak_bound(self) -> int:
        return sum(self.process_peaks.values())

    def run(self) -> None:
        while not self.done.is_set():
            total = 0
            for pid in process_tree(self.pid):
                now, peak = memory(pid)
                total += now
                self.process_peaks[pid] = max(self.process_peaks.get(pid, 0), peak)
            self.peak = max(self.peak, total)
            self.done.wait(self.interval)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=1.0, help="gigabytes of input text")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/scratchlm-data-scale"))
    parser.add_argument("--workers", type=int, default=0, help="0: every core")
    parser.add_argument("--tokenizer", default="gpt2", help="a pretrained name or tokenizer.json")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    load = os.getloadavg()
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
        f"{load[0]:.1f}; input {args.gb} GB in {args.data_dir}",
        flush=True,
    )
    source = args.data_dir / f"input-{args.gb:g}gb"
    manifest = make_input(source, args.gb, args.seed)
    print(
        f"input: {manifest['documents']:,} documents, {manifest['text_bytes'] / 1e6:,.0f} MB of "
        f"text in {manifest['shards']} shards ({manifest['file_bytes'] / 1e6:,.0f} MB zstd), "
        f"made in {manifest['seconds']} s: {manifest['kinds']}",
        flush=True,
    )

    tokenizer = args.tokenizer
    if not Path(tokenizer).is_file():
        from scratchlm.tokenizer.pretrained import load_pretrained

        tokenizer = str(args.data_dir / f"{args.tokenizer}.json")
        load_pretrained(args.tokenizer).save(tokenizer)
    out = args.data_dir / f"out-{args.gb:g}gb"
    command = [
        *(sys.executable, "-m", "scratchlm", "data", "prepare", str(source)),
        *("--tokenizer", tokenizer, "--out", str(out), "--workers", str(args.workers)),
    ]
    print("running:", " ".join(command), flush=True)
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = MemorySampler(child.pid)
    sampler.start()
    stdout, stderr = child.communicate()
    seconds = time.perf_counter() - start
    sampler.done.set()
    sampler.join()
    if child.returncode != 0:
        sys.exit(f"data prepare failed ({child.returncode}):\n{stderr}")
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # kB on Linux
    report = json.loads((out / "report.json").read_text())
    shutil.rmtree(out)  # the shards are not needed, and they are big

    totals = report["totals"]
    stages = {stage["stage"]: stage for stage in report["stages"]}
    removed = {
        reason: numbers["documents"]
        for stage in report["stages"]
        for reason, numbers in stage["reasons"].items()
        if numbers["documents"]
    }
    results = {
        "gb": args.gb,
        "input": manifest,
        "seconds": round(seconds, 1),
        "mb_per_second": round(manifest["text_bytes"] / 1e6 / seconds, 2),
        "passes": report["seconds"],
        "peak_rss_tree_bytes": sampler.peak,
        "peak_rss_tree_bound_bytes": sampler.peak_bound,
        "peak_rss_per_process_bytes": sorted(sampler.process_peaks.values(), reverse=True),
        "peak_rss_largest_process_bytes": largest,
        "documents_in": totals["documents_in"],
        "documents_out": totals["documents_out"],
        "bytes_out": totals["bytes_out"],
        "tokens_out": totals["tokens_out"],
        "removed": removed,
        "bad_lines": report["read"]["bad_lines"],
        "boilerplate_lines": stages["repeated_lines"]["details"].get("boilerplate_lines"),
        "documents_without_boilerplate": stages["repeated_lines"]["reasons"]["repeated_line"][
            "edited"
        ],
        "load_average": load,
        "cores": os.cpu_count(),
    }  # fmt: skip
    print(stdout.strip())
    print(
        f"\n{manifest['text_bytes'] / 1e6:,.0f} MB in {seconds:,.0f} s: "
        f"{results['mb_per_second']} MB/s; passes: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in report["seconds"].items())
    )
    peaks = ", ".join(f"{p / 2**30:.2f}" for p in results["peak_rss_per_process_bytes"])
    print(
        f"peak memory: {sampler.peak / 2**30:.2f} GiB sampled for the process and its workers "
        f"together, at most {sampler.peak_bound / 2**30:.2f} GiB (the sum of each process's own "
        f"peak: {peaks} GiB); target < 2 GiB"
    )
    print(
        f"documents: {totals['documents_in']:,} in, {totals['documents_out']:,} out; removed "
        f"{removed}; boilerplate lines taken out of {results['documents_without_boilerplate']:,}"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
