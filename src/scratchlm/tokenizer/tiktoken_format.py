"""tiktoken's rank files: one token per line, "<base64 of its bytes> <rank>", ranks 0, 1, 2, ...

A rank file lists tokens, not merges; scratchlm.tokenizer.ranks recovers the merges.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import os
from pathlib import Path

from scratchlm.core.atomic_files import atomic_write_text
from scratchlm.core.errors import ScratchLMError
from scratchlm.tokenizer.bpe import BPETokenizer
from scratchlm.tokenizer.ranks import ranks_of


def read_tiktoken_ranks(path: str | os.PathLike[str]) -> dict[bytes, int]:
    """Read a rank file (plain or gzip-compressed). Any problem raises one-line ScratchLMError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # the gzip magic number
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise ScratchLMError(f"rank file {path} does not exist") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise ScratchLMError(f"cannot read rank file {path}: {e}") from None
    try:
        return parse_tiktoken_ranks(raw)
    except ScratchLMError as e:
        raise ScratchLMError(f"rank file {path}: {e}") from None


def parse_tiktoken_ranks(raw: bytes) -> dict[bytes, int]:
    """Parse the contents of a rank file; ranks must be 0..N-1, each once, each token once."""
    ranks: dict[bytes, int] = {}
    seen_ranks: dict[int, int] = {}  # rank -> line number
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit():
            shown = line[:60].decode("utf-8", errors="replace")
            raise ScratchLMError(
                f'line {number} is {shown!r}, not "<base64 token> <rank>"; '
                "is this a tiktoken rank file?"
            )
        try:
            token = base64.b64decode(fields[0], validate=True)
        except (binascii.Error, ValueError):
            raise ScratchLMError(f"line {number}: {fields[0]!r} is not valid base64") from None
        rank = int(fields[1])
        if not token:
            raise ScratchLMError(f"line {number}: the token is empty")
        if token in ranks:
            raise ScratchLMError(
                f"line {number} repeats the token {token!r} (rank {ranks[token]} before)"
            )
        if rank in seen_ranks:
            raise ScratchLMError(
                f"line {number} repeats rank {rank}, already given on line {seen_ranks[rank]}"
            )
        ranks[token] = rank
        seen_ranks[rank] = number
    if not ranks:
        raise ScratchLMError("the file has no tokens")
    if len(seen_ranks) != max(seen_ranks) + 1:
        missing = next(r for r in range(len(seen_ranks) + 1) if r not in seen_ranks)
        raise ScratchLMError(
            f"ranks must run 0 to {len(ranks) - 1} without gaps, but rank {missing} is missing"
        )
    return ranks


def format_tiktoken_ranks(ranks: dict[bytes, int]) -> str:
    """The text of a rank file, ordered by rank."""
    lines = [
        f"{base64.b64encode(token).decode('ascii')} {rank}"
        for token, rank in sorted(ranks.items(), key=lambda item: item[1])
    ]
    return "\n".join(lines) + "\n"


def tokenizer_ranks(tokenizer: BPETokenizer) -> dict[bytes, int]:
    """The tokenizer's ordinary (non-special) tokens as bytes -> id; each bytes must be unique."""
    return ranks_of(tokenizer.vocab, set(tokenizer.special_tokens.values()))


def save_tiktoken_file(tokenizer: BPETokenizer, path: str | os.PathLike[str]) -> None:
    """Write the tokenizer's ordinary tokens as a rank file (specials and pattern are not part
    of the format: keep them alongside, or use a named loader that knows them)."""
    atomic_write_text(path, format_tiktoken_ranks(tokenizer_ranks(tokenizer)))


def load_tiktoken_file(
    path: str | os.PathLike[str],
    pattern: str = "cl100k",
    special_tokens: dict[str, int] | None = None,
) -> BPETokenizer:
    """Read a rank file as a tokenizer. The file holds only the ranks: give the pattern and the
    special tokens of the encoding it belongs to (or use scratchlm.tokenizer.pretrained)."""
    ranks = read_tiktoken_ranks(path)
    try:
        return BPETokenizer.from_tiktoken_ranks(ranks, pattern, special_tokens)
    except ScratchLMError as e:
        raise ScratchLMError(f"rank file {path}: {e}") from None
