"""The data pipeline: sources → read → clean → exact dedup → repeated lines → near dedup.

Every stage is streaming, but two need to see all documents before they can decide about one
(a line is boilerplate if it is in many documents; a document is a near-duplicate of any other),
so the work is done in passes over a spill file of the cleaned text (spill.py):

    pass 1   read the sources (readers.py), clean (clean.py), drop exact copies (dedup.py),
             count the documents each long line is in, and write what is kept to the spill
    pass 2   read the spill: take the boilerplate lines out, MinHash each document into the
             LSH index (only when there is boilerplate or near dedup is on)
    output   read the spill again: take the boilerplate lines out, skip the near-duplicates

`run_pipeline` makes the two passes and returns a `CleanCorpus`: the output, which can be read
any number of times (the tokenizer is trained on one reading, the shards written from another),
always the same documents in the same order, and whose length is known in advance (so the
train/val split is exact; see split.py). The sources are read once, so standard input works.

Cleaning and MinHash, the costly parts, run on every core (parallel.py); the main process keeps
what needs every document. Memory per kept document: its exact-dedup key and origin (~200
bytes), 8 bytes per long line, and its LSH entries and signature (~2 kB with 128
permutations), so about half a gigabyte for 200,000 documents, whatever their length.
"""

from __future__ import annotations

import dataclasses
import re
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from scratchlm.core.messages import progress
from scratchlm.core.workers import Workers, available_cores
from scratchlm.data.clean import EMPTY, NORMALISED, CleanConfig, clean_documents, rule_names
from scratchlm.data.dedup import (
    EXACT_DUPLICATE,
    NEAR_DUPLICATE,
    REPEATED_LINE,
    ExactDuplicates,
    LineDocumentCounts,
    NearDedupConfig,
    NearDuplicateIndex,
    RepeatedLineConfig,
    content_key,
    document_line_keys,
    drop_near_duplicates,
    strip_repeated_lines,
)
from scratchlm.data.minhash import MinHasher, Signature, shingle_hashes
from scratchlm.data.parallel import BATCH_CHARS, batched_documents
from scratchlm.data.readers import COMPRESSION_SUFFIXES, STDIN, Document, DocumentReader, ReadStats
from scratchlm.data.removals import RemovalReport, utf8_len
from scratchlm.data.spill import SpilledDocuments, SpillWriter

if TYPE_CHECKING:
    from scratchlm.data.config import CleaningConfig, DataConfig, DedupConfig

SPILL_NAME = "documents.jsonl.zst"
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class PipelineSettings:
    """What to read and which stages to run, with their settings (None: the stage is off)."""

    sources: list[str]
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    text_field: str = "text"
    stdin_format: Literal["text", "jsonl"] = "text"
    clean: CleanConfig | None = field(default_factory=CleanConfig)
    exact: bool = True
    lines: RepeatedLineConfig | None = field(default_factory=RepeatedLineConfig)
    near: NearDedupConfig | None = field(default_factory=NearDedupConfig)
    workers: int = 0  # processes for cleaning and MinHash; 0: one per available core
    progress: bool = False  # progress bars on standard error
    batch_chars: int = BATCH_CHARS  # text handed to a worker at a time

    @classmethod
    def from_config(
        cls, data: DataConfig, clean: CleaningConfig, dedup: DedupConfig, **options: Any
    ) -> PipelineSettings:
        """The settings of a run config's [data], [clean] and [dedup] sections."""
        return cls(
            sources=list(data.sources),
            include=list(data.include),
            exclude=list(data.exclude),
            text_field=data.text_field,
            clean=clean.clean_config(),
            exact=dedup.exact,
            lines=dedup.line_config(),
            near=dedup.near_config(),
            **options,
        )

    def to_json(self) -> dict[str, Any]:
        def plain(config: Any) -> Any:
            return None if config is None else dataclasses.asdict(config)

        return {
            "sources": self.sources,
            "include": self.include,
            "exclude": self.exclude,
            "text_field": self.text_field,
            "clean": plain(self.clean),
            "exact_dedup": self.exact,
            "repeated_lines": plain(self.lines),
            "near_dedup": plain(self.near),
        }


class CleanCorpus:
    """The pipeline's output: the texts that survived, readable again and again, in order.

    Also what each stage did (`reports`, `read`), the passes' `seconds`, and the length in
    bytes of every document read and of every document in the output (for the histograms).
    """

    def __init__(
        self,
        settings: PipelineSettings,
        spill: Path,
        read: ReadStats,
        reports: dict[str, RemovalReport],
        boilerplate: dict[int, int],
        changed: set[int],
        index: NearDuplicateIndex | None,
        lengths_read: np.ndarray,
        lengths_out: np.ndarray,
        seconds: dict[str, float],
    ) -> None:
        self.settings = settings
        self.spill = spill
        self.read = read
        self.reports = reports
        self.boilerplate = boilerplate
        self.changed = changed
        self.index = index
        self.lengths_read = lengths_read
        self.lengths_out = lengths_out
        self.seconds = seconds

    def __len__(self) -> int:
        return len(self.lengths_out)

    @property
    def bytes(self) -> int:
        return int(self.lengths_out.sum())

    def __iter__(self) -> Iterator[str]:
        for document in self.documents():
            yield document.text

    def documents(self) -> Iterator[Document]:
        """The output documents. A complete reading also fills in the near-dedup report's
        examples (which document each removed one duplicated)."""
        documents: Iterator[Document] = self._without_boilerplate()
        report = None
        if self.index is not None:
            report = RemovalReport("near_dedup")
            documents = drop_near_duplicates(documents, self.index, report)
        yield from documents
        if report is not None:
            self.reports["near_dedup"] = report

    def _without_boilerplate(self) -> Iterator[Document]:
        # Only the documents pass 2 found boilerplate in are looked at again.
        lines = self.settings.lines
        for number, document in enumerate(SpilledDocuments(self.spill)):
            if number in self.changed and lines is not None:
                stripped = strip_repeated_lines(document, lines, self.boilerplate)
                if stripped is not None:
                    yield stripped
            else:
                yield document


def run_pipeline(settings: PipelineSettings, work_dir: Path) -> CleanCorpus:
    """Read, clean and deduplicate; the spill file goes into `work_dir` (created)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    with Workers(settings.workers or available_cores()) as workers:
        return _run_passes(settings, work_dir / SPILL_NAME, workers)


def _run_passes(settings: PipelineSettings, spill: Path, workers: Workers) -> CleanCorpus:
    from scratchlm.data.report import nothing_left_error

    reports: dict[str, RemovalReport] = {}
    seconds: dict[str, float] = {}

    # ----------------------------------------------------------------------- pass 1
    start = time.perf_counter()
    reader = DocumentReader(
        settings.sources,
        include=settings.include,
        exclude=settings.exclude,
        text_field=settings.text_field,
        stdin_format=settings.stdin_format,
    )
    if settings.clean is not None:
        reports["clean"] = RemovalReport("clean")
        for name in (NORMALISED, EMPTY, *rule_names(settings.clean)):
            reports["clean"].reason(name)
    exact = ExactDuplicates() if settings.exact else None
    if exact is not None:
        reports["exact_dedup"] = RemovalReport("exact_dedup")
        reports["exact_dedup"].reason(EXACT_DUPLICATE)
    line_counts = LineDocumentCounts() if settings.lines is not None else None
    lengths_read: array[int] = array("Q")
    spilled: array[int] = array("Q")
    work = partial(
        _first_pass_batch,
        settings.clean,
        settings.exact,
        settings.lines.min_chars if settings.lines is not None else 0,
    )
    bar = progress(
        total=_input_bytes(reader),
        desc="reading, cleaning",
        unit="B",
        enabled=settings.progress,
        unit_scale=True,
    )
    with bar, SpillWriter(spill) as writer:
        for batch in workers.map(work, batched_documents(reader, settings.batch_chars)):
            lengths_read.extend(batch.lengths_read)
            bar.update(sum(batch.lengths_read))
            if batch.report is not None:
                reports["clean"].merge(batch.report)
            for i, document in enumerate(batch.kept):
                key = batch.keys[i] if batch.keys is not None else None
                if exact is not None and not exact.keep(document, reports["exact_dedup"], key):
                    continue
                if line_counts is not None and batch.line_keys is not None:
                    line_counts.add(batch.line_keys[i])
                writer.write(document)
                spilled.append(batch.lengths_kept[i])
        if bar.total is not None:
            bar.total = bar.n
    seconds["read_clean_exact_dedup"] = time.perf_counter() - start
    read = reader.stats
    if not spilled:
        raise nothing_left_error(settings, read, reports)

    # ----------------------------------------------------------------------- pass 2
    start = time.perf_counter()
    boilerplate = (
        line_counts.above(settings.lines.max_documents)
        if line_counts is not None and settings.lines is not None
        else {}
    )
    index = NearDuplicateIndex(settings.near) if settings.near is not None else None
    changed: set[int] = set()  # numbers of the spilled documents that had boilerplate lines
    lengths: np.ndarray
    if settings.lines is not None:
        reports["repeated_lines"] = RemovalReport("repeated_lines")
        reports["repeated_lines"].reason(REPEATED_LINE)
        reports["repeated_lines"].details["boilerplate_lines"] = len(boilerplate)
    if index is None and not boilerplate:
        # Nothing to take out: the spill is the output.
        if settings.lines is not None:
            report = reports["repeated_lines"]
            report.documents_in = report.documents_out = len(spilled)
            report.bytes_in = report.bytes_out = sum(spilled)
        lengths = np.frombuffer(spilled, dtype=np.uint64).astype(np.int64)
    else:
        kept: array[int] = array("Q")
        position = 0  # documents of the spill read so far
        work2 = partial(_second_pass_batch, settings.lines, boilerplate, settings.near)
        bar = progress(
            total=sum(spilled),
            desc="deduplicating",
            unit="B",
            enabled=settings.progress,
            unit_scale=True,
        )
        with bar:
            batches = batched_documents(SpilledDocuments(spill), settings.batch_chars)
            for done in workers.map(work2, batches):
                bar.update(done.bytes_in)
                changed.update(position + i for i in done.changed)
                position += done.count
                if done.report is not None:
                    reports["repeated_lines"].merge(done.report)
                kept.extend(done.lengths)
                if index is not None:
                    for signature, shingles in done.signatures:
                        index.add_signature(signature, shingles)
        lengths = np.frombuffer(kept, dtype=np.uint64).astype(np.int64)
        if not len(lengths):
            raise nothing_left_error(settings, read, reports)
        if index is not None:
            duplicate = np.array([index.is_duplicate(i) for i in range(len(index))], dtype=bool)
            reports["near_dedup"] = _near_counts(index, lengths, duplicate)
            lengths = lengths[~duplicate]
    seconds["repeated_lines_near_dedup"] = time.perf_counter() - start

    return CleanCorpus(
        settings,
        spill,
        read,
        reports,
        boilerplate,
        changed,
        index,
        lengths_read=np.frombuffer(lengths_read, dtype=np.uint64).astype(np.int64),
        lengths_out=lengths,
        seconds=seconds,
    )


def _near_counts(
    index: NearDuplicateIndex, lengths: np.ndarray, duplicate: np.ndarray
) -> RemovalReport:
    """The near-dedup report's numbers, known from pass 2 alone (examples need the texts, so
    they are added when the output is read; see CleanCorpus.documents)."""
    report = RemovalReport("near_dedup")
    report.documents_in = len(lengths)
    report.bytes_in = int(lengths.sum())
    report.documents_out = int((~duplicate).sum())
    report.bytes_out = int(lengths[~duplicate].sum())
    removed = report.reason(NEAR_DUPLICATE)
    removed.documents = int(duplicate.sum())
    removed.bytes = int(lengths[duplicate].sum())
    report.details.update(index.stats())
    return report


def _input_bytes(reader: DocumentReader) -> int | None:
    """The size of the input on disk, if that is about the size of its text (for the ETA)."""
    if STDIN in reader.sources:
        return None
    files = reader.files()
    if any(path.suffix.lower() in (*COMPRESSION_SUFFIXES, ".parquet") for path in files):
        return None
    return sum(path.stat().st_size for path in files)


# ---------------------------------------------------------------------------------------------
# The work done in worker processes, one batch of documents at a time
# ---------------------------------------------------------------------------------------------


@dataclass
class _FirstPassBatch:
    lengths_read: list[int]  # bytes of each document read
    kept: list[Document]  # cleaned, normalised
    lengths_kept: list[int]
    report: RemovalReport | None  # the batch's cleaning report
    keys: list[bytes] | None  # content keys of the kept documents, for exact dedup
    line_keys: list[np.ndarray] | None  # their long lines' keys, for boilerplate counting


def _first_pass_batch(
    clean: CleanConfig | None, exact: bool, line_min_chars: int, documents: list[Document]
) -> _FirstPassBatch:
    report = RemovalReport("clean") if clean is not None else None
    if clean is not None:
        kept = list(clean_documents(documents, clean, report))
    else:
        # Uncleaned text still must be encodable: a lone surrogate (from a JSON "\\ud800"
        # escape) has no UTF-8 bytes, so it becomes U+FFFD as normalisation would make it.
        kept = [
            Document(_LONE_SURROGATE.sub("\ufffd", d.text), d.origin)
            if not d.text.isascii() and _LONE_SURROGATE.search(d.text)
            else d
            for d in documents
        ]
    return _FirstPassBatch(
        lengths_read=[utf8_len(d.text) for d in documents],
        kept=kept,
        lengths_kept=[utf8_len(d.text) for d in kept],
        report=report,
        keys=[content_key(d.text) for d in kept] if exact else None,
        line_keys=[document_line_keys(d.text, line_min_chars) for d in kept]
        if line_min_chars
        else None,
    )


@dataclass
class _SecondPassBatch:
    count: int  # documents in the batch
    bytes_in: int
    lengths: list[int]  # bytes of each document left after boilerplate removal
    changed: list[int]  # which of the batch's documents boilerplate removal changed (or emptied)
    report: RemovalReport | None
    signatures: list[tuple[Signature, np.ndarray | None]]


def _second_pass_batch(
    lines: RepeatedLineConfig | None,
    boilerplate: dict[int, int],
    near: NearDedupConfig | None,
    documents: list[Document],
) -> _SecondPassBatch:
    report = RemovalReport("repeated_lines") if lines is not None else None
    kept, changed = documents, []
    if lines is not None:
        kept, shown = [], set[int]()
        if report is not None:
            report.reason(REPEATED_LINE)
            report.details["boilerplate_lines"] = len(boilerplate)
        for i, document in enumerate(documents):
            stripped = strip_repeated_lines(document, lines, boilerplate, report, shown)
            if stripped is not document:
                changed.append(i)
            if stripped is not None:
                kept.append(stripped)
    signatures = []
    if near is not None:
        hasher = _hasher(near.num_perm, near.seed)
        for document in kept:
            shingles = shingle_hashes(document.text, near.shingle_size)
            signatures.append(
                (hasher.signature(shingles), shingles if near.verify == "exact" else None)
            )
    return _SecondPassBatch(
        count=len(documents),
        bytes_in=sum(utf8_len(d.text) for d in documents),
        lengths=[utf8_len(d.text) for d in kept],
        changed=changed,
        report=report,
        signatures=signatures,
    )


@lru_cache(maxsize=4)
def _hasher(num_perm: int, seed: int) -> MinHasher:
    return MinHasher(num_perm, seed)
