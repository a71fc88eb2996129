"""Deduplication: the same text should teach the model once, not as often as the web copied it.

Three stages, each over a stream of documents, each filling a `RemovalReport`:

- `exact_dedup`: documents whose text is the same after lowercasing, NFC and collapsing
  whitespace. A 16-byte BLAKE2b digest (and the origin) of each distinct document is
  remembered; the first copy is kept. One pass, any iterable.

- `near_dedup`: documents that share most of their word shingles (Jaccard similarity at or
  above a threshold, 0.8 by default), found with MinHash signatures and LSH banding (see
  minhash.py). Candidate pairs are verified, joined into clusters with union-find, and the
  first document of each cluster is kept. Two passes: the first builds the clusters, the
  second yields the documents to keep, so `documents` must be readable twice (a list or a
  DocumentReader). Memory: a few kB per document (its signature, num_perm x 8 bytes, and its
  entries in the LSH tables), plus its shingle set (8 bytes a word) with verify="exact".

- `remove_repeated_lines`: boilerplate that is not a whole document (a licence block, a site
  header, "Produced by the Online Distributed Proofreading Team") shows up as the same line in
  many documents. Lines of at least `min_chars` characters found in more than `max_documents`
  documents are removed from every document. Two passes: count, then remove.

Run them on cleaned text, in this order: exact first (cheapest, and it takes the most from web
text), then repeated lines, then near duplicates, so that two different pages that share a
site's header and footer are not called near-duplicates because of them.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from scratchlm.core.errors import ScratchLMError
from scratchlm.data.minhash import (
    MinHasher,
    Signature,
    estimated_jaccard,
    jaccard,
    lsh_bands,
    mix64,
    shingle_hashes,
)
from scratchlm.data.readers import Document
from scratchlm.data.removals import RemovalReport, excerpt, utf8_len

EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"
REPEATED_LINE = "repeated_line"

# ---------------------------------------------------------------------------------------------
# Exact duplicates
# ---------------------------------------------------------------------------------------------


def content_key(text: str) -> bytes:
    """A 16-byte digest that is equal for texts differing only in case, spacing or NFC form."""
    normal = " ".join(unicodedata.normalize("NFC", text).lower().split())
    return hashlib.blake2b(normal.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class ExactDuplicates:
    """The content keys seen so far, each with where its first copy came from.

    16 bytes of digest and the origin per distinct document: a few hundred bytes each.
    """

    def __init__(self) -> None:
        self.first_origin: dict[bytes, str] = {}

    def __len__(self) -> int:
        return len(self.first_origin)

    def keep(
        self, document: Document, report: RemovalReport | None = None, key: bytes | None = None
    ) -> bool:
        """Whether `document` is the first with its content; remembers it if so.

        `key` is `content_key(document.text)` when the caller computed it already (in a worker).
        """
        key = content_key(document.text) if key is None else key
        if report is not None:
            report.document_in(document.text)
        first = self.first_origin.get(key)
        if first is not None:
            if report is not None:
                report.remove_document(
                    EXACT_DUPLICATE, document.origin, document.text, duplicate_of=first
                )
            return False
        self.first_origin[key] = document.origin
        if report is not None:
            report.document_out(document.text)
            report.details["distinct_documents"] = len(self.first_origin)
        return True


def exact_dedup(
    documents: Iterable[Document], report: RemovalReport | None = None
) -> Iterator[Document]:
    """The documents whose content key was not seen before, in order (one pass)."""
    seen = ExactDuplicates()
    if report is not None:
        report.reason(EXACT_DUPLICATE)
        report.details["distinct_documents"] = 0
    for document in documents:
        if seen.keep(document, report):
            yield document


# ---------------------------------------------------------------------------------------------
# Near duplicates
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NearDedupConfig:
    """How similar is "near", and how the MinHash LSH search for it is tuned."""

    threshold: float = 0.8  # Jaccard similarity of the shingle sets
    shingle_size: int = 5  # words per shingle
    num_perm: int = 128  # MinHash permutations (signature length)
    seed: int = 0
    # How a candidate pair from LSH is confirmed: "signature" compares the two signatures (an
    # estimate, standard error ~0.035 at J = 0.8 with 128 permutations, no extra memory);
    # "exact" intersects the shingle sets (keeps every document's shingles in memory);
    # "none" trusts LSH, which then also removes some documents somewhat below the threshold.
    verify: Literal["signature", "exact", "none"] = "signature"
    # LSH bands x rows; by default chosen from the threshold (minhash.lsh_bands), weighing a
    # missed pair (false negative) above a wasted comparison (false positive): candidates are
    # verified, so a false positive costs one comparison, while a missed pair stays in the
    # corpus. For 0.8 and 128 permutations this gives 11 bands of 11 rows, which makes a
    # candidate of 98% of the pairs at J = 0.9 (equal weights, as datasketch's default, give
    # 9 x 13 and 93%).
    bands: int | None = None
    rows: int | None = None
    false_positive_weight: float = 0.3
    false_negative_weight: float = 0.7

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ScratchLMError(f"dedup.threshold must be in (0, 1), got {self.threshold}")
        if self.shingle_size < 1 or self.num_perm < 1:
            raise ScratchLMError("dedup.shingle_size and dedup.num_perm must be at least 1")
        if self.verify not in ("signature", "exact", "none"):
            raise ScratchLMError(
                f"dedup.verify must be signature, exact or none, got {self.verify!r}"
            )
        if (self.bands is None) != (self.rows is None):
            raise ScratchLMError("set both dedup.bands and dedup.rows, or neither")
        if (
            self.bands is not None
            and self.rows is not None
            and not (
                1 <= self.bands * self.rows <= self.num_perm and min(self.bands, self.rows) >= 1
            )
        ):
            raise ScratchLMError(
                f"dedup.bands x dedup.rows must be at most num_perm ({self.num_perm}), "
                f"got {self.bands} x {self.rows}"
            )

    def banding(self) -> tuple[int, int]:
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        return lsh_bands(
            self.threshold, self.num_perm, self.false_positive_weight, self.false_negative_weight
        )


class NearDuplicateIndex:
    """Documents added one by one are grouped into clusters of near-duplicates.

    Each of the b bands has a table from the band's r signature values to the documents that
    had them. A new document is compared with the documents already in its buckets; each pair
    that passes verification joins the two clusters (union-find, the root being the cluster's
    earliest document, so "keep the root" keeps the first of each cluster). A bucket holds one
    document per cluster: thousands of identical pages cost one comparison each, not n².
    """

    def __init__(self, config: NearDedupConfig | None = None) -> None:
        self.config = config or NearDedupConfig()
        self.bands, self.rows = self.config.banding()
        self.hasher = MinHasher(self.config.num_perm, self.config.seed)
        # band -> {64-bit key of the band's rows: one document, or a list of them}. Most buckets
        # hold one document, so it is stored bare: memory per document is about what its
        # bands' keys take (~100 bytes each), not a list per band.
        self._buckets: list[dict[int, int | list[int]]] = [{} for _ in range(self.bands)]
        self._band_weights = np.random.default_rng(self.config.seed).integers(
            1, 2**63, size=(self.bands, self.rows), dtype=np.uint64
        ) | np.uint64(1)
        self._parent: list[int] = []  # union-find forest over document numbers
        # What verification compares: shingle sets with verify="exact", else signatures (kept
        # in blocks of one array, 8 bytes per permutation and document, nothing more).
        self._signatures = _SignatureTable(self.config.num_perm)
        self._shingles: list[np.ndarray] = []
        self._match: dict[int, tuple[int, float]] = {}  # doc -> (a doc it matched, similarity)
        self.candidate_pairs = 0
        self.verified_pairs = 0

    def __len__(self) -> int:
        return len(self._parent)

    def add(self, text: str) -> int:
        """Add a document; return its number (0, 1, ...)."""
        return self.add_signature(*self.signature(text))

    def signature(self, text: str) -> tuple[Signature, np.ndarray | None]:
        """(MinHash signature, shingle set if verify="exact") of a text: what `add_signature`
        takes. The costly part of `add`, and independent of the index, so workers can do it."""
        shingles = shingle_hashes(text, self.config.shingle_size)
        signature = self.hasher.signature(shingles)
        return signature, shingles if self.config.verify == "exact" else None

    def band_keys(self, signature: Signature) -> list[int]:
        """One 64-bit key per band: equal when the band's rows are equal (a weighted sum of the
        rows, mixed; different rows give the same key with probability about 2⁻⁶⁴, which would
        only cost one extra comparison)."""
        rows = signature[: self.bands * self.rows].reshape(self.bands, self.rows)
        keys: list[int] = mix64((rows * self._band_weights).sum(axis=1)).tolist()
        return keys

    def add_signature(self, signature: Signature, shingles: np.ndarray | None = None) -> int:
        """Add a document by its signature (and shingles, with verify="exact")."""
        index = len(self._parent)
        self._parent.append(index)
        if self.config.verify == "exact":
            if shingles is None:
                raise ValueError('verify="exact" needs the shingles of every document')
            self._shingles.append(shingles)
        else:
            self._signatures.append(signature)
        rejected: set[int] = set()  # documents already compared and found too different
        for band, key in enumerate(self.band_keys(signature)):
            table = self._buckets[band]
            stored = table.get(key)
            if stored is None:
                table[key] = index
                continue
            bucket = [stored] if isinstance(stored, int) else stored
            for other in bucket:
                if other in rejected or self.find(other) == self.find(index):
                    continue
                self.candidate_pairs += 1
                similarity = self._similarity(index, other)
                if self.config.verify == "none" or similarity >= self.config.threshold:
                    self.verified_pairs += 1
                    self._union(index, other)
                    # Both ends: an earlier document can become a duplicate through a later one.
                    self._match.setdefault(index, (other, similarity))
                    self._match.setdefault(other, (index, similarity))
                else:
                    rejected.add(other)
            if all(self.find(other) != self.find(index) for other in bucket):
                if isinstance(stored, int):
                    table[key] = [stored, index]
                else:
                    stored.append(index)
        return index

    def find(self, index: int) -> int:
        """The first document of `index`'s cluster (itself if it has no earlier near-duplicate)."""
        parent = self._parent
        while parent[index] != index:
            parent[index] = parent[parent[index]]  # path halving keeps the trees shallow
            index = parent[index]
        return index

    def is_duplicate(self, index: int) -> bool:
        return self.find(index) != index

    def match(self, index: int) -> tuple[int, float] | None:
        """(the first document `index` was verified similar to, their similarity), if any."""
        return self._match.get(index)

    def clusters(self) -> dict[int, list[int]]:
        """First document -> every document of its cluster, for clusters of two or more."""
        groups: dict[int, list[int]] = {}
        for index in range(len(self)):
            groups.setdefault(self.find(index), []).append(index)
        return {root: members for root, members in groups.items() if len(members) > 1}

    def stats(self) -> dict[str, Any]:
        duplicates = sum(self.is_duplicate(i) for i in range(len(self)))
        return {
            "threshold": self.config.threshold,
            "shingle_size": self.config.shingle_size,
            "num_perm": self.config.num_perm,
            "bands": self.bands,
            "rows": self.rows,
            "verify": self.config.verify,
            "candidate_pairs": self.candidate_pairs,
            "verified_pairs": self.verified_pairs,
            "clusters": len({self.find(i) for i in range(len(self)) if self.is_duplicate(i)}),
            "duplicates": duplicates,
        }

    def _similarity(self, a: int, b: int) -> float:
        if self.config.verify == "exact":
            return jaccard(self._shingles[a], self._shingles[b])
        return estimated_jaccard(self._signatures.row(a), self._signatures.row(b))

    def _union(self, a: int, b: int) -> None:
        root_a, root_b = self.find(a), self.find(b)
        # The smaller number becomes the root, so a cluster's root is its first document.
        self._parent[max(root_a, root_b)] = min(root_a, root_b)


class _SignatureTable:
    """Signatures stored as rows of a few large arrays, not one small array each."""

    block_rows = 4096

    def __init__(self, num_perm: int) -> None:
        self.num_perm = num_perm
        self._blocks: list[np.ndarray] = []
        self._count = 0

    def append(self, signature: Signature) -> None:
        row = self._count % self.block_rows
        if row == 0:
            self._blocks.append(np.empty((self.block_rows, self.num_perm), dtype=np.uint64))
        self._blocks[-1][row] = signature
        self._count += 1

    def row(self, index: int) -> Signature:
        block: Signature = self._blocks[index // self.block_rows][index % self.block_rows]
        return block


def near_dedup(
    documents: Iterable[Document],
    config: NearDedupConfig | None = None,
    report: RemovalReport | None = None,
) -> Iterator[Document]:
    """The first document of each near-duplicate cluster and every unclustered one, in order.

    Reads `documents` twice (see the module docstring).
    """
    _require_rereadable(documents, "near_dedup")
    index = NearDuplicateIndex(config)
    for document in documents:
        index.add(document.text)
    yield from drop_near_duplicates(documents, index, report)


def drop_near_duplicates(
    documents: Iterable[Document], index: NearDuplicateIndex, report: RemovalReport | None = None
) -> Iterator[Document]:
    """The second pass of `near_dedup`: `documents` are the ones `index` was built from, in
    the same order; those that are not the first of their cluster are dropped."""
    if report is not None:
        report.reason(NEAR_DUPLICATE)
        report.details.update(index.stats())
    roots_with_copies = {index.find(i) for i in range(len(index)) if index.is_duplicate(i)}
    root_origin: dict[int, str] = {}  # where each kept first copy came from, for the report
    number = -1
    for number, document in enumerate(documents):
        if number >= len(index):
            break
        if report is not None:
            report.document_in(document.text)
        root = index.find(number)
        if root == number:
            if number in roots_with_copies:
                root_origin[number] = document.origin
            if report is not None:
                report.document_out(document.text)
            yield document
        elif report is not None:
            _, similarity = index.match(number) or (root, 1.0)
            report.remove_document(
                NEAR_DUPLICATE,
                document.origin,
                document.text,
                duplicate_of=root_origin.get(root, f"document {root}"),
                similarity=round(similarity, 3),
            )
    if number + 1 != len(index):
        raise ScratchLMError(
            f"near_dedup read {len(index)} documents the first time but not the second; "
            "the documents must be the same both times"
        )


# ---------------------------------------------------------------------------------------------
# Repeated lines (boilerplate)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RepeatedLineConfig:
    """A line is boilerplate when it is long enough to mean something and is everywhere.

    The defaults remove nothing from shakespeare, kjv or chitchat, whose repeated lines are
    content: with 20 characters and 10 documents, "[Enter a Messenger.]" (in 17 plays) and
    "What are you studying?" (in 42 chats) would go. A licence or site header in hundreds of
    pages still goes. On a small corpus with known boilerplate, lower `max_documents`.
    """

    max_documents: int = 50  # a line in more documents than this is removed from all of them
    min_chars: int = 30  # shorter lines ("}", "Exeunt.", blank ones) are never removed

    def __post_init__(self) -> None:
        if self.max_documents < 1 or self.min_chars < 1:
            raise ScratchLMError(
                "dedup.max_documents and dedup.min_chars must be at least 1, got "
                f"{self.max_documents} and {self.min_chars}"
            )


def line_key(line: str, min_chars: int) -> int | None:
    """A 64-bit hash of the line with its spacing collapsed, or None if it is too short."""
    if len(line) < min_chars:  # collapsing spaces only makes it shorter
        return None
    normal = " ".join(line.split())
    if len(normal) < min_chars:
        return None
    digest = hashlib.blake2b(normal.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def document_line_keys(text: str, min_chars: int) -> np.ndarray:
    """The distinct keys of the document's lines of at least `min_chars` (sorted, uint64)."""
    keys = {line_key(line, min_chars) for line in text.split("\n")}
    keys.discard(None)
    return np.array(sorted(keys), dtype=np.uint64)  # type: ignore[type-var]


class LineDocumentCounts:
    """In how many documents each line key occurs, in about 8 bytes per (document, line).

    Keys are appended to one flat array and, when it grows long, folded into sorted
    (key, count) arrays: far less memory than a Counter of Python ints (~100 bytes an entry),
    which matters at millions of distinct lines.
    """

    fold_at = 1 << 22  # appended keys (32 MB) before folding

    def __init__(self) -> None:
        self._pending: list[np.ndarray] = []
        self._pending_size = 0
        self._keys = np.empty(0, dtype=np.uint64)
        self._counts = np.empty(0, dtype=np.int64)
        self.documents = 0

    def add(self, keys: np.ndarray) -> None:
        """Count one document's distinct line keys (`document_line_keys`)."""
        self.documents += 1
        if len(keys):
            self._pending.append(keys)
            self._pending_size += len(keys)
            if self._pending_size >= self.fold_at:
                self._fold()

    def above(self, max_documents: int) -> dict[int, int]:
        """Key -> document count, for the keys in more than `max_documents` documents."""
        self._fold()
        frequent = self._counts > max_documents
        return dict(
            zip(self._keys[frequent].tolist(), self._counts[frequent].tolist(), strict=True)
        )

    def _fold(self) -> None:
        if not self._pending:
            return
        keys = np.concatenate([self._keys, *self._pending])
        weights = np.concatenate([self._counts, np.ones(self._pending_size, dtype=np.int64)])
        self._keys, inverse = np.unique(keys, return_inverse=True)
        self._counts = np.bincount(inverse.reshape(-1), weights=weights).astype(np.int64)
        self._pending, self._pending_size = [], 0


def boilerplate_lines(
    documents: Iterable[Document], config: RepeatedLineConfig | None = None
) -> dict[int, int]:
    """The first pass of `remove_repeated_lines`: key -> documents, for the boilerplate lines."""
    config = config or RepeatedLineConfig()
    counts = LineDocumentCounts()
    for document in documents:
        counts.add(document_line_keys(document.text, config.min_chars))
    return counts.above(config.max_documents)


def remove_repeated_lines(
    documents: Iterable[Document],
    config: RepeatedLineConfig | None = None,
    report: RemovalReport | None = None,
    boilerplate: dict[int, int] | None = None,
) -> Iterator[Document]:
    """Every document without its boilerplate lines; documents left empty are dropped.

    Reads `documents` twice: once to count, once to remove; or once, given the `boilerplate`
    (key -> number of documents, from `boilerplate_lines`) of a first pass made elsewhere.
    """
    config = config or RepeatedLineConfig()
    if boilerplate is None:
        _require_rereadable(documents, "remove_repeated_lines")
        boilerplate = boilerplate_lines(documents, config)
    if report is not None:
        report.reason(REPEATED_LINE)
        report.details["boilerplate_lines"] = len(boilerplate)
    shown: set[int] = set()  # line keys already given as examples
    for document in documents:
        kept = strip_repeated_lines(document, config, boilerplate, report, shown)
        if kept is not None:
            yield kept


def strip_repeated_lines(
    document: Document,
    config: RepeatedLineConfig,
    boilerplate: dict[int, int],
    report: RemovalReport | None = None,
    shown: set[int] | None = None,
) -> Document | None:
    """One document without its `boilerplate` lines: the same object if it had none, None if
    nothing is left. `shown` holds the line keys already given as examples in `report`."""
    kept, removed = [], 0
    if boilerplate:
        for line in document.text.split("\n"):
            key = line_key(line, config.min_chars)
            if key is not None and key in boilerplate:
                removed += 1
                if (
                    report is not None
                    and shown is not None
                    and key not in shown
                    and len(shown) < report.max_examples
                ):
                    shown.add(key)
                    report.add_example(
                        REPEATED_LINE,
                        {
                            "origin": document.origin,
                            "documents": boilerplate[key],
                            "line": excerpt(line),
                        },
                    )
            else:
                kept.append(line)
    text = "\n".join(kept) if removed else document.text
    if report is not None:
        report.document_in(document.text)
        if not text.strip():
            report.remove_document(REPEATED_LINE, document.origin, document.text, lines=removed)
        else:
            if removed:
                report.shorten_document(
                    REPEATED_LINE, utf8_len(document.text) - utf8_len(text), lines=removed
                )
            report.document_out(text)
    if not text.strip():
        return None
    return Document(text, document.origin) if removed else document


def _require_rereadable(documents: Iterable[Document], stage: str) -> None:
    # An iterator (a generator, a file) is empty the second time; reading it twice would
    # silently treat every document as missing.
    if isinstance(documents, Iterator):
        raise TypeError(
            f"{stage} reads the documents twice, so it needs a list or a DocumentReader, "
            f"not a one-pass iterator ({type(documents).__name__})"
        )
