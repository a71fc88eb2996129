"""Run a function over batches on every core, results in input order, memory bounded.

The data pipeline's costly steps (cleaning, MinHash signatures) look at one document at a time,
so batches of documents can go to worker processes while the main process reads the next ones
and keeps the state that needs every document (which texts were seen, the LSH index). At most
`window` batches are in flight, so memory holds a few batches however long the input is.

Small inputs (fewer than `min_batches` batches) are processed in this process: starting
workers takes longer than the work. Once started, the workers serve every later pass.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import chain, islice
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


class Workers:
    """Worker processes, started on first need and shared by the pipeline's passes.

        with Workers(4) as workers:
            for result in workers.map(function, batches): ...

    Workers are started with "spawn": forking a process that has threads (tqdm's monitor, the
    tokenizer's pools) can deadlock. So `function` must be picklable (a module-level function
    or a functools.partial of one), and a script that runs the pipeline needs the usual
    `if __name__ == "__main__":` guard.
    """

    def __init__(self, count: int, min_batches: int = 3) -> None:
        self.count = count
        self.min_batches = min_batches
        self._pool: ProcessPoolExecutor | None = None

    def map(self, function: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """`map(function, items)` in input order, on the workers when there is enough work.

        At most two batches per worker are in flight, so memory stays bounded.
        """
        iterator = iter(items)
        if self.count <= 1:
            yield from map(function, iterator)
            return
        head = list(islice(iterator, self.min_batches))
        if len(head) < self.min_batches and self._pool is None:
            yield from map(function, head)
            return
        pool = self._start()
        pending: deque[Future[R]] = deque()
        try:
            for item in chain(head, iterator):
                pending.append(pool.submit(function, item))
                if len(pending) >= 2 * self.count:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:  # on an error, or the consumer stopping early
                future.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _start(self) -> ProcessPoolExecutor:
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.count, mp_context=context)
        return self._pool
