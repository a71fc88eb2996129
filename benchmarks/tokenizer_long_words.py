"""Our pure-Python encoder against tiktoken on one long word with no spaces (issue 13, class 6).

    python benchmarks/tokenizer_long_words.py [--chars 100000,1000000] [--vocab cl100k_base]
        [--alphabets ascii,cjk,emoji] [--textbook-chars 0] [--json results.json]

The split pattern leaves a word with no spaces as one chunk however long it is (a minified
file, a base64 blob, a line of CJK text), so this is the worst case of per-chunk BPE: the
textbook loop, which rescans the chunk once per merge, is quadratic in its length. Our Python
encoder merges such chunks with a heap of pair ranks over a linked list
(scratchlm.tokenizer.merge_heap). For each length and alphabet it times our
`encode_ordinary(engine="python")` (a fresh tokenizer, so no cache helps) and tiktoken on the
same rank file, checks that the ids are identical, and prints ours / tiktoken. With
--textbook-chars N it also times the old quadratic loop on an N-character word, for scale.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from machine import cpu_description, load_average

from scratchlm.tokenizer import BPETokenizer
from scratchlm.tokenizer.chunks import merge_pair
from scratchlm.tokenizer.pretrained import fetch_rank_file, load_pretrained
from scratchlm.tokenizer.tiktoken_format import read_tiktoken_ranks

ALPHABETS = {
    "ascii": "abcdefghijklmnopqrstuvwxyz",
    "cjk": "的一是不了人我在有他这为之大来以个中上们",
    "emoji": "😀😃🎉👍🔥",
}


def random_word(alphabet: str, length: int) -> str:
    rng = random.Random(1337)
    return "".join(rng.choices(alphabet, k=length))


def cpu_model() -> str:
    """The CPU's model name where Linux says it, with the core count."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({cpu_description()})"
    except OSError:
        pass
    return cpu_description()


def textbook_encode_chunk(tokenizer: BPETokenizer, data: bytes) -> list[int]:
    """The encoder before the heap: rescan for the earliest-learned pair, merge it everywhere."""
    merges = tokenizer.merges
    ids = [tokenizer.byte_ids[b] for b in data]
    while len(ids) >= 2:
        pair = min(itertools.pairwise(ids), key=lambda p: merges.get(p, 1 << 62))
        new_id = merges.get(pair)
        if new_id is None:
            break
        ids = merge_pair(ids, pair, new_id)
    return ids


def timed(function: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--chars", default="100000,1000000", help="comma-separated lengths")
    parser.add_argument("--vocab", default="cl100k_base", help="gpt2, cl100k_base or o200k_base")
    parser.add_argument("--alphabets", default="ascii,cjk,emoji", help=", ".join(ALPHABETS))
    parser.add_argument("--textbook-chars", type=int, default=0, help="also time the old loop")
    parser.add_argument("--json", type=Path, help="also save the results here")
    args = parser.parse_args(argv)
    import tiktoken

    lengths = [int(word) for word in args.chars.split(",")]
    alphabets = args.alphabets.split(",")
    ours = load_pretrained(args.vocab)
    reference = tiktoken.Encoding(
        f"reference-{args.vocab}",
        pat_str=ours.pattern,
        mergeable_ranks=read_tiktoken_ranks(fetch_rank_file(args.vocab)),
        special_tokens=ours.special_tokens,
    )
    print(f"CPU: {cpu_model()}; Python {platform.python_version()}; vocab {args.vocab}")
    print(f"load average at the start: {load_average()}")
    print(f"{'alphabet':<8} {'chars':>10} {'ours s':>8} {'tiktoken s':>10} {'ratio':>7}  same ids")
    rows: list[dict[str, Any]] = []
    for alphabet in alphabets:
        for length in lengths:
            word = random_word(ALPHABETS[alphabet], length)
            fresh = BPETokenizer(ours.pattern, ours.merges, ours.special_tokens, ours.byte_ids)
            ids, ours_s = timed(lambda w=word, t=fresh: t.encode_ordinary(w, engine="python"))
            expected, tiktoken_s = timed(lambda w=word: reference.encode_ordinary(w))
            row = {
                "alphabet": alphabet,
                "chars": length,
                "bytes": len(word.encode("utf-8")),
                "ours_python_s": ours_s,
                "tiktoken_s": tiktoken_s,
                "ratio_ours_tiktoken": ours_s / tiktoken_s,
                "same_ids": ids == expected,
            }
            rows.append(row)
            print(
                f"{alphabet:<8} {length:>10,} {ours_s:>8.2f} {tiktoken_s:>10.2f} "
                f"{row['ratio_ours_tiktoken']:>6.1f}x  {'yes' if row['same_ids'] else 'NO'}",
                flush=True,
            )
    textbook: dict[str, Any] = {}
    if args.textbook_chars:
        word = random_word(ALPHABETS["ascii"], args.textbook_chars)
        old_ids, old_s = timed(lambda: textbook_encode_chunk(ours, word.encode("utf-8")))
        new_ids = ours.encode_ordinary(word, engine="python")
        textbook = {"chars": args.textbook_chars, "seconds": old_s, "same_ids": old_ids == new_ids}
        print(
            f"old textbook loop, ascii, {args.textbook_chars:,} chars: {old_s:.2f} s "
            f"(same ids: {'yes' if textbook['same_ids'] else 'NO'})"
        )
    print(f"load average at the end: {load_average()}")
    if args.json is not None:
        results = {
            "command": " ".join(["python", "benchmarks/tokenizer_long_words.py", *sys.argv[1:]]),
            "cpu": cpu_model(),
            "load_average": load_average(),
            "rows": rows,
            "textbook": textbook,
        }
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(row["same_ids"] for row in rows) and textbook.get("same_ids", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
