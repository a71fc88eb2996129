"""tiktoken's rank files: one token per line, "<base64 of its bytes> <rank>", ranks 0, 1, 2, ...

A rank file lists tokens, not merges. tiktoken encodes by repeatedly joining the adjacent pair
whose joined bytes has the lowest rank, so the merge that made a token can be recovered: run
that same procedure on the token's bytes using only the tokens ranked below it, and the two
parts it stops at are the pair. The rank doubles as our id, so the recovered merges encode
exactly as tiktoken does. The 256 single bytes need not be ranks 0..255 in byte order (GPT-2's
are shuffled), which is what `BPETokenizer.byte_ids` is for.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import os
from pathlib import Path

from scratchlm.core.atomic_files import atomic_write_text
from scratchlm.core.errors import ScratchLMError
from scratchlm.tokenizer.bpe import BPETokenizer, Pair


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
    specials = set(tokenizer.special_tokens.values())
    ranks: dict[bytes, int] = {}
    for token_id, token in sorted(tokenizer.vocab.items()):
        if token_id in specials:
            continue
        if token in ranks:
            raise ScratchLMError(
                f"ids {ranks[token]} and {token_id} are both the bytes {token!r}; a rank file "
                "(and tiktoken) needs every token to be distinct bytes"
            )
        ranks[token] = token_id
    return ranks


def save_tiktoken_file(tokenizer: BPETokenizer, path: str | os.PathLike[str]) -> None:
    """Write the tokenizer's ordinary tokens as a rank file (specials and pattern are not part
    of the format: keep them alongside, or use a named loader that knows them)."""
    atomic_write_text(path, format_tiktoken_ranks(tokenizer_ranks(tokenizer)))


def bpe_parts(ranks: dict[bytes, int], token: bytes, below: int) -> list[bytes]:
    """tiktoken's procedure on `token` using only ranks below `below`: join the adjacent pair
    whose joined bytes has the lowest rank (leftmost on a tie) until no pair is a token."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best_rank, best_at = below, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best_rank, best_at = rank, i
        if best_at < 0:
            break
        parts[best_at : best_at + 2] = [parts[best_at] + parts[best_at + 1]]
    return parts


def merges_from_ranks(ranks: dict[bytes, int]) -> tuple[list[int], dict[Pair, int]]:
    """Recover (byte_ids, merges) from a rank table. Raises if it is not a BPE vocabulary."""
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ScratchLMError(
            f"the ranks have no token for {len(missing)} of the 256 single bytes "
            f"(first: {bytes([missing[0]])!r}), so some text could not be encoded"
        )
    byte_ids = [ranks[bytes([b])] for b in range(256)]
    merges: dict[Pair, int] = {}
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = bpe_parts(ranks, token, rank)
        if len(parts) != 2:
            raise ScratchLMError(
                f"token {token!r} (rank {rank}) is not the merge of two tokens ranked below it "
                f"(its bytes stop at {len(parts)} pieces), so these are not BPE ranks"
            )
        merges[(ranks[parts[0]], ranks[parts[1]])] = rank
    return byte_ids, merges


def from_tiktoken_ranks(
    ranks: dict[bytes, int],
    pattern: str,
    special_tokens: dict[str, int] | None = None,
) -> BPETokenizer:
    """A tokenizer with tiktoken's ranks as ids, giving the same ids as tiktoken."""
    byte_ids, merges = merges_from_ranks(ranks)
    tokenizer = BPETokenizer(pattern, merges, special_tokens, byte_ids)
    tokenizer._merges_match_ranks = True  # recovered from the ranks, so no need to re-check
    return tokenizer


def load_tiktoken_file(
    path: str | os.PathLike[str],
    pattern: str = "cl100k",
    special_tokens: dict[str, int] | None = None,
) -> BPETokenizer:
    """Read a rank file as a tokenizer. The file holds only the ranks: give the pattern and the
    special tokens of the encoding it belongs to (or use scratchlm.tokenizer.pretrained)."""
    ranks = read_tiktoken_ranks(path)
    try:
        return from_tiktoken_ranks(ranks, pattern, special_tokens)
    except ScratchLMError as e:
        raise ScratchLMError(f"rank file {path}: {e}") from None
