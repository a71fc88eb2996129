"""Documents -> train.bin / val.bin / meta.json, the files the training loop reads.

A .bin file is the token ids of its documents, each followed by the end-of-text id, stored as
raw little-endian uint16 (vocabularies up to 65,536) or uint32. No header: the dtype and counts
are in meta.json, which is written last so its presence means the preparation finished.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
from tqdm import tqdm

from scratchlm.atomic_files import atomic_path, atomic_write_text
from scratchlm.errors import ScratchLMError

# dtype name (as in meta.json) -> explicit little-endian numpy dtype, whatever the machine.
TOKEN_DTYPES: dict[str, np.dtype] = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


class TextEncoder(Protocol):
    """What this stage needs from a tokenizer (scratchlm.tokenizer.bpe.BPETokenizer has it)."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def eot_id(self) -> int: ...

    def encode_ordinary(self, text: str) -> list[int]: ...


def token_dtype_name(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 2**16 else "uint32"


def numpy_token_dtype(name: str) -> np.dtype:
    if name not in TOKEN_DTYPES:
        raise ScratchLMError(
            f"unknown token dtype {name!r}; expected one of {', '.join(TOKEN_DTYPES)}"
        )
    return TOKEN_DTYPES[name]


def prepare_tokens(
    documents: list[str],
    tokenizer: TextEncoder,
    out_dir: Path,
    val_fraction: float,
    seed: int,
    progress: bool = True,
) -> dict[str, Any]:
    """Split, tokenize and write train.bin, val.bin and meta.json into out_dir; return the meta."""
    out_dir = Path(out_dir)
    train_docs, val_docs, split_by = split_documents(documents, val_fraction, seed)
    dtype_name = token_dtype_name(tokenizer.vocab_size)
    meta: dict[str, Any] = {
        "dtype": dtype_name,
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "val_fraction": val_fraction,
        "seed": seed,
        "split_by": split_by,
    }
    bar = tqdm(
        total=len(train_docs) + len(val_docs), desc="tokenizing", unit="doc", disable=not progress
    )
    with bar:
        for split, docs in (("train", train_docs), ("val", val_docs)):
            with atomic_path(out_dir / f"{split}.bin") as tmp, open(tmp, "wb") as f:
                tokens = _write_tokens(docs, tokenizer, f, TOKEN_DTYPES[dtype_name], bar)
            meta[f"{split}_documents"] = len(docs)
            meta[f"{split}_tokens"] = tokens
            meta[f"{split}_chars"] = sum(len(d) for d in docs)
            meta[f"{split}_bytes"] = sum(len(d.encode("utf-8")) for d in docs)
    # Compression of the text itself: UTF-8 bytes per token, not counting end-of-text tokens.
    text_tokens = meta["train_tokens"] + meta["val_tokens"] - len(train_docs) - len(val_docs)
    text_bytes = meta["train_bytes"] + meta["val_bytes"]
    meta["bytes_per_token"] = round(text_bytes / text_tokens, 4) if text_tokens else 0.0
    atomic_write_text(out_dir / "meta.json", json.dumps(meta, indent=2) + "\n")
    return meta


def _write_tokens(
    docs: list[str], tokenizer: TextEncoder, f: BinaryIO, dtype: np.dtype, bar: tqdm
) -> int:
    # One document at a time, so memory stays at one document's tokens however big the corpus.
    total = 0
    for doc in docs:
        ids = np.array([*tokenizer.encode_ordinary(doc), tokenizer.eot_id], dtype=np.int64)
        if ids.min() < 0 or ids.max() >= tokenizer.vocab_size:
            # A tokenizer bug, but storing it would silently wrap around in uint16.
            raise ValueError(
                f"token id out of range [0, {tokenizer.vocab_size}): {ids.min()}..{ids.max()}"
            )
        f.write(ids.astype(dtype).tobytes())
        total += len(ids)
        bar.update(1)
    return total


def split_documents(
    documents: list[str], val_fraction: float, seed: int
) -> tuple[list[str], list[str], str]:
    """(train, val, how): whole documents when there are enough, else the tail of each document.

    By document: indices are shuffled with random.Random(seed) and the first round(n * fraction)
    go to val (both splits keep the original document order). With too few documents for that
    (e.g. one big file), every document is cut at a line boundary near its end and the last
    ~val_fraction of it goes to val, so val is never empty.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ScratchLMError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    if not documents:
        raise ScratchLMError("no documents to split into train and val")
    n = len(documents)
    n_val = int(n * val_fraction + 0.5)  # round half up (Python's round() rounds 0.5 to 0)
    if 1 <= n_val < n:
        order = list(range(n))
        random.Random(seed).shuffle(order)
        val_ids = set(order[:n_val])
        train = [d for i, d in enumerate(documents) if i not in val_ids]
        val = [d for i, d in enumerate(documents) if i in val_ids]
        return train, val, "documents"
    train, val = [], []
    for doc in documents:
        head, tail = split_text(doc, val_fraction)
        if head:
            train.append(head)
        if tail:
            val.append(tail)
    if not train or not val:
        raise ScratchLMError(
            f"too little text to split into train and val ({sum(map(len, documents))} "
            "characters); add more text"
        )
    return train, val, "lines"


def split_text(text: str, tail_fraction: float) -> tuple[str, str]:
    """Cut text in two near len * (1 - tail_fraction), at a line boundary where there is one."""
    if len(text) < 2:
        return text, ""
    cut = int(len(text) * (1.0 - tail_fraction))
    cut = min(max(cut, 1), len(text) - 1)
    after = text.find("\n", cut)
    before = text.rfind("\n", 0, cut)
    # Prefer the first line break at or after the target, unless it leaves nothing for the tail.
    if 0 <= after < len(text) - 1:
        cut = after + 1
    elif before > 0:
        cut = before + 1
    return text[:cut], text[cut:]


def load_tokens(path: Path, dtype: str) -> np.ndarray:
    """Memory-map a .bin token file read-only (an empty file gives an empty array)."""
    path = Path(path)
    np_dtype = numpy_token_dtype(dtype)
    if not path.is_file():
        raise ScratchLMError(f"no such token file: {path}; prepare the data first")
    size = path.stat().st_size
    if size % np_dtype.itemsize:
        raise ScratchLMError(
            f"{path}: {size} bytes is not a whole number of {dtype} tokens; the file is "
            "truncated or was written with another dtype; prepare the data again"
        )
    if size == 0:
        return np.zeros(0, dtype=np_dtype)  # np.memmap refuses empty files
    return np.memmap(path, dtype=np_dtype, mode="r")
