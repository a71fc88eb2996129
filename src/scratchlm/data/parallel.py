"""Batches of documents for the pipeline's worker processes (scratchlm.core.workers.Workers).

The data pipeline's costly steps (cleaning, MinHash signatures) look at one document at a time,
so batches of documents can go to worker processes while the main process reads the next ones
and keeps the state that needs every document (which texts were seen, the LSH index). At most
`window` batches are in flight, so memory holds a few batches however long the input is.

Small inputs are processed in this process: starting workers takes longer than the work.
Once started, the workers serve every later pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from scratchlm.data.readers import Document

T = TypeVar("T")
R = TypeVar("R")

# Text per batch: big enough that sending it to a worker costs little next to the work on it.
BATCH_CHARS = 1 << 20


def batched_documents(
    documents: Iterable[Document], max_chars: int = BATCH_CHARS
) -> Iterator[list[Document]]:
    """Consecutive documents in lists of about `max_chars` characters (at least one each)."""
    batch: list[Document] = []
    size = 0
    for document in documents:
        batch.append(document)
        size += len(document.text)
        if size >= max_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
