"""Which documents train the model and which are held out to validate it.

The split is by whole document, so validation text is text the model (and the tokenizer) never
saw, not a neighbouring sentence of a training page. Whether document i is held out depends
only on i, the seed, the fraction and, when it is known, the number of documents, so documents
can stream past one at a time and the same corpus always splits the same way:

- The number of documents is known (a list): exactly round(n * val_fraction) documents are held
  out, those whose indices come first in a shuffle of 0..n-1 by random.Random(seed).
- It is not known (a stream): each document is held out when a seeded hash of its index, read
  as a number in [0, 1), is below val_fraction. The share is val_fraction on average, not
  exactly, and no count is needed.
- Too few documents to hold out a whole one and keep one for training (e.g. a single big file):
  every document is cut at a line boundary near its end, and the last ~val_fraction of each
  goes to validation ("by lines"), so validation is never empty.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from typing import Literal

from scratchlm.core.errors import ScratchLMError

Split = Literal["train", "val"]


class DocumentSplit:
    """The split rule for one corpus: `parts(i, text)` says where document i's text goes."""

    def __init__(self, val_fraction: float, seed: int, num_documents: int | None = None) -> None:
        if not 0.0 < val_fraction < 1.0:
            raise ScratchLMError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        if num_documents is not None and num_documents < 1:
            raise ScratchLMError("no documents to split into train and val")
        self.val_fraction = val_fraction
        self.seed = seed
        self.num_documents = num_documents
        self.by: Literal["documents", "lines"] = "documents"
        self._val_indices: set[int] | None = None  # None: decide by hash (count unknown)
        if num_documents is not None:
            n_val = int(num_documents * val_fraction + 0.5)  # round half up, unlike round()
            if 1 <= n_val < num_documents:
                order = list(range(num_documents))
                random.Random(seed).shuffle(order)
                self._val_indices = set(order[:n_val])
            else:
                self.by = "lines"

    def is_val(self, index: int) -> bool:
        """Whether document `index` is held out (when splitting by documents)."""
        if self._val_indices is not None:
            return index in self._val_indices
        return _unit_hash(self.seed, index) < self.val_fraction

    def parts(self, index: int, text: str) -> Iterator[tuple[Split, str]]:
        """(split, text) for document `index`: the whole of it, or its head and its tail."""
        if self.by == "documents":
            yield ("val" if self.is_val(index) else "train"), text
            return
        head, tail = split_text(text, self.val_fraction)
        if head:
            yield "train", head
        if tail:
            yield "val", tail


def _unit_hash(seed: int, index: int) -> float:
    # A hash, not a random generator: document i's fate must not depend on the documents before
    # it, so a stream can be split without a count and resumed anywhere.
    digest = hashlib.blake2b(f"{seed}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def split_documents(
    documents: list[str], val_fraction: float, seed: int
) -> tuple[list[str], list[str], str]:
    """(train, val, how): DocumentSplit applied to a list; both keep the documents' order."""
    rule = DocumentSplit(val_fraction, seed, len(documents))
    train: list[str] = []
    val: list[str] = []
    for i, doc in enumerate(documents):
        for split, text in rule.parts(i, doc):
            (val if split == "val" else train).append(text)
    if not train or not val:
        raise ScratchLMError(
            f"too little text to split into train and val ({sum(map(len, documents))} "
            "characters); add more text"
        )
    return train, val, rule.by


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
