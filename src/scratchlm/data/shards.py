"""Token shards: the files tokenised text is stored in, and the writer and reader for them.

A corpus becomes a few large binary files ("shards") of token ids rather than one file per
document or one giant file: each shard is small enough to write in one go and big enough that
the training loader reads long runs of tokens straight from the page cache.

Layout of one shard (all numbers little-endian):

    offset  size  field
         0     8  magic bytes b"SLMTOKEN", so a stray file is never mistaken for tokens
         8     4  format version (uint32), 1; a reader refuses versions it does not know
        12     4  bytes per token (uint32): 2 (uint16) when the vocabulary fits, else 4 (uint32)
        16     8  number of tokens (uint64)
        24     8  number of documents (uint64)
        32     4  id of the end-of-text token (uint32)
        36     4  vocabulary size (uint32)
        40    24  reserved, zero
        64     -  the tokens; each document's ids, then the end-of-text id
         -     -  zero padding to a multiple of 8 bytes
         -     -  the documents' start offsets in tokens (uint64, one per document)

The tokens come first so that the writer can stream them to disk before it knows how many
documents the shard will hold; the header is filled in last. A shard is written under a
temporary name and renamed into place only when complete, so a crash never leaves a torn shard,
and the reader checks the file size against the header, so a damaged one is caught at once.
"""

from __future__ import annotations

import contextlib
import os
import struct
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np

from scratchlm.core.atomic_files import atomic_path
from scratchlm.core.errors import ScratchLMError

MAGIC = b"SLMTOKEN"
FORMAT_VERSION = 1
HEADER_SIZE = 64
# magic, version, bytes per token, tokens, documents, end-of-text id, vocab size (+ reserved).
_HEADER = struct.Struct("<8sIIQQII24x")
assert _HEADER.size == HEADER_SIZE

# Explicit little-endian dtypes, whatever the machine: the files are portable.
TOKEN_DTYPES: dict[int, np.dtype] = {2: np.dtype("<u2"), 4: np.dtype("<u4")}
OFFSET_DTYPE: np.dtype = np.dtype("<u8")

# Where to start a new shard: 100M tokens is 200 MB of uint16, as in llm.c's FineWeb shards.
DEFAULT_SHARD_TOKENS = 100_000_000

FIX_HINT = (
    "prepare the data again (re-run `scratchlm data prepare`, or for a run directory "
    "`scratchlm train --config RECIPE --overwrite`)"
)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in 16 bits (GPT-2's 50,257 do), else uint32."""
    return TOKEN_DTYPES[2] if vocab_size <= 2**16 else TOKEN_DTYPES[4]


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:06d}.bin"


def _offsets_position(num_tokens: int, itemsize: int) -> int:
    # Padded so the uint64 offsets are 8-byte aligned in the file and in the memory map.
    end = HEADER_SIZE + num_tokens * itemsize
    return (end + 7) // 8 * 8


# --------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class TokenShard:
    """One shard, checked and memory-mapped: the OS pages tokens in as they are read."""

    path: Path
    tokens: np.ndarray  # (num_tokens,) uint16 or uint32, read-only
    doc_starts: np.ndarray  # (num_documents,) uint64: where each document begins in `tokens`
    eot_id: int
    vocab_size: int

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @property
    def num_documents(self) -> int:
        return len(self.doc_starts)

    def document(self, i: int) -> np.ndarray:
        """The ids of document i, without its end-of-text token."""
        end = int(self.doc_starts[i + 1]) if i + 1 < self.num_documents else self.num_tokens
        return self.tokens[int(self.doc_starts[i]) : end - 1]


def open_shard(path: str | os.PathLike[str]) -> TokenShard:
    """Check a shard's header against its size and contents, then memory-map it."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(HEADER_SIZE)
    except FileNotFoundError:
        raise ScratchLMError(f"{path}: no such token shard; {FIX_HINT}") from None
    except OSError as e:
        raise ScratchLMError(f"{path}: cannot read the token shard ({e.strerror})") from None
    if len(head) < HEADER_SIZE:
        if not head.startswith(MAGIC[: len(head)]):
            _not_a_shard(path, head)
        raise ScratchLMError(
            f"{path}: truncated token shard ({size} bytes, shorter than its {HEADER_SIZE}-byte "
            f"header); {FIX_HINT}"
        )
    magic, version, itemsize, num_tokens, num_docs, eot_id, vocab_size = _HEADER.unpack(head)
    if magic != MAGIC:
        _not_a_shard(path, head)
    if version != FORMAT_VERSION:
        newer = "a newer" if version > FORMAT_VERSION else "an older"
        raise ScratchLMError(
            f"{path}: token shard format version {version}, but this scratchlm reads version "
            f"{FORMAT_VERSION} (the file was written by {newer} scratchlm); {FIX_HINT}"
        )
    if itemsize not in TOKEN_DTYPES:
        raise ScratchLMError(
            f"{path}: damaged token shard header ({itemsize} bytes per token; expected 2 or 4); "
            f"{FIX_HINT}"
        )
    offsets_at = _offsets_position(num_tokens, itemsize)
    expected = offsets_at + num_docs * OFFSET_DTYPE.itemsize
    if size != expected:
        what = "truncated" if size < expected else "longer than its header says"
        raise ScratchLMError(
            f"{path}: token shard is {what}: {size:,} bytes, but its header describes "
            f"{num_tokens:,} tokens and {num_docs:,} documents ({expected:,} bytes); {FIX_HINT}"
        )
    dtype = TOKEN_DTYPES[itemsize]
    tokens = _memmap(path, dtype, HEADER_SIZE, num_tokens)
    doc_starts = _memmap(path, OFFSET_DTYPE, offsets_at, num_docs)
    _check_documents(path, tokens, doc_starts, eot_id)
    return TokenShard(path, tokens, doc_starts, eot_id, vocab_size)


def _memmap(path: Path, dtype: np.dtype, offset: int, count: int) -> np.ndarray:
    if count == 0:
        return np.zeros(0, dtype=dtype)  # np.memmap refuses a zero-length map
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,))


def _check_documents(path: Path, tokens: np.ndarray, starts: np.ndarray, eot_id: int) -> None:
    # Cheap (one read per document) and catches a shard whose parts disagree with each other.
    if len(starts) == 0:
        ok = len(tokens) == 0
    else:
        ends = np.append(starts[1:], len(tokens)).astype(np.int64)
        ok = (
            int(starts[0]) == 0
            and bool(np.all(ends > starts.astype(np.int64)))
            and bool(np.all(tokens[ends - 1] == eot_id))
        )
    if not ok:
        raise ScratchLMError(
            f"{path}: damaged token shard (its document offsets do not match its tokens); "
            f"{FIX_HINT}"
        )


def _not_a_shard(path: Path, head: bytes) -> None:
    raise ScratchLMError(
        f"{path}: not a scratchlm token shard (it starts with {head[:8]!r}, not {MAGIC!r}); "
        f"{FIX_HINT}"
    )


# --------------------------------------------------------------------------------- writing


class TokenShardWriter:
    """Append documents' ids; shards `{split}_000000.bin`, `_000001.bin`, ... appear in out_dir.

    Each document is stored as its ids followed by the end-of-text id. A shard is closed and a
    new one started before a document that would take it past `shard_tokens` tokens, so a
    document is never split between shards (one longer than `shard_tokens` gets a shard of its
    own). Use it as a context manager: on an exception the unfinished shard is deleted, and
    only shards that were finished remain.

        with TokenShardWriter(out_dir, "train", vocab_size, eot_id) as writer:
            for ids in encoded_documents:
                writer.add_document(ids)
        writer.paths  # the shards written, in order
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        split: str,
        vocab_size: int,
        eot_id: int,
        shard_tokens: int = DEFAULT_SHARD_TOKENS,
    ) -> None:
        if shard_tokens < 1:
            raise ScratchLMError(f"shard_tokens must be at least 1, got {shard_tokens}")
        if not 0 <= eot_id < vocab_size:
            raise ValueError(f"eot_id {eot_id} is not in the vocabulary [0, {vocab_size})")
        self.out_dir = Path(out_dir)
        self.split = split
        self.vocab_size = vocab_size
        self.eot_id = eot_id
        self.shard_tokens = shard_tokens
        self.dtype = token_dtype(vocab_size)
        self.paths: list[Path] = []  # finished shards
        self.num_tokens = 0  # over all shards, including end-of-text tokens
        self.num_documents = 0
        # The open shard: its temporary file and what goes into its header and offsets.
        self._open: _OpenShard | None = None

    def add_document(self, ids: Sequence[int] | np.ndarray) -> None:
        tokens = np.asarray(ids, dtype=np.int64)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            # A tokenizer bug; storing it would silently wrap around in uint16.
            raise ValueError(
                f"token id out of range [0, {self.vocab_size}): {tokens.min()}..{tokens.max()}"
            )
        length = len(tokens) + 1  # with its end-of-text token
        shard = self._open
        if shard is not None and shard.num_tokens and shard.num_tokens + length > self.shard_tokens:
            self._finish()
            shard = None
        if shard is None:
            shard = self._open = _OpenShard(self.out_dir / shard_name(self.split, len(self.paths)))
        stored = np.empty(length, dtype=self.dtype)
        stored[:-1] = tokens
        stored[-1] = self.eot_id
        shard.doc_starts.append(shard.num_tokens)
        shard.file.write(stored.tobytes())
        shard.num_tokens += length
        self.num_tokens += length
        self.num_documents += 1

    def close(self) -> list[Path]:
        """Finish the open shard; return every shard written."""
        if self._open is not None:
            self._finish()
        return self.paths

    def abort(self) -> None:
        """Delete the unfinished shard (finished ones stay: each is whole on its own)."""
        if self._open is not None:
            self._open.discard()
            self._open = None

    def __enter__(self) -> TokenShardWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _finish(self) -> None:
        assert self._open is not None
        path = self._open.finish(self.dtype.itemsize, self.eot_id, self.vocab_size)
        self.paths.append(path)
        self._open = None


class _OpenShard:
    """A shard being written: tokens stream into a temporary file beside its final name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Closing the stack closes the file, then fsyncs it and renames it onto `path`;
        # closing it with an exception deletes the temporary file instead.
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(path))
        self.file: BinaryIO = self._stack.enter_context(open(tmp, "wb"))  # noqa: SIM115
        self.file.write(bytes(HEADER_SIZE))  # a placeholder: the header is written last
        self.doc_starts = array("Q")  # typed uint64 array: compact for millions of documents
        self.num_tokens = 0

    def finish(self, itemsize: int, eot_id: int, vocab_size: int) -> Path:
        f = self.file
        f.write(bytes(_offsets_position(self.num_tokens, itemsize) - f.tell()))
        f.write(np.frombuffer(self.doc_starts, dtype=np.uint64).astype(OFFSET_DTYPE).tobytes())
        f.seek(0)
        header = (MAGIC, FORMAT_VERSION, itemsize, self.num_tokens, len(self.doc_starts))
        f.write(_HEADER.pack(*header, eot_id, vocab_size))
        self._stack.close()
        return self.path

    def discard(self) -> None:
        error = RuntimeError("unfinished shard discarded")
        self._stack.__exit__(RuntimeError, error, None)
