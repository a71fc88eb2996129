"""Worker processes: how many cores there are, and one way to start and feed a pool of them.

Workers are started with "spawn": forking a process that has threads (torch, tiktoken, tqdm's
monitor) can deadlock. So a function sent to them must be picklable (a module-level function or
a functools.partial of one), and a script that starts them needs the usual
`if __name__ == "__main__":` guard, since each worker imports the script again.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import chain, islice
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def spawn_pool(
    count: int, initializer: Callable[..., object] | None = None, initargs: tuple[Any, ...] = ()
) -> ProcessPoolExecutor:
    """A pool of `count` worker processes started with "spawn" (see the module docstring)."""
    return ProcessPoolExecutor(
        count,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=initializer,
        initargs=initargs,
    )


class Workers:
    """Worker processes, started on first need and shared by every later `map`.

        with Workers(4) as workers:
            for result in workers.map(function, batches): ...

    Small inputs (fewer than `min_batches` items) are processed in this process: starting
    workers takes longer than the work. `initializer(*initargs)` runs once in each worker, to
    hand it something large (a tokenizer) once rather than with every item.
    """

    def __init__(
        self,
        count: int,
        min_batches: int = 3,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        self.count = count
        self.min_batches = min_batches
        self.initializer = initializer
        self.initargs = initargs
        self._pool: ProcessPoolExecutor | None = None

    def map(self, function: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """`map(function, items)` in input order, on the workers when there is enough work.

        At most two items per worker are in flight, so memory stays bounded however long the
        input is. Work done in this process (too little for workers, or one worker asked for)
        runs `initializer` here first, so `function` finds what it expects.
        """
        iterator = iter(items)
        if self.count <= 1:
            yield from self._map_here(function, iterator)
            return
        head = list(islice(iterator, self.min_batches))
        if len(head) < self.min_batches and self._pool is None:
            yield from self._map_here(function, head)
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

    def _map_here(self, function: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        if self.initializer is not None:
            self.initializer(*self.initargs)
        yield from map(function, items)

    def _start(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = spawn_pool(self.count, self.initializer, self.initargs)
        return self._pool
