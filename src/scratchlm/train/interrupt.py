"""Ctrl-C and SIGTERM during training: finish the step, save, exit cleanly."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType, TracebackType

from scratchlm.core.messages import is_quiet


class StopRequest:
    """While active, SIGINT/SIGTERM set `requested` instead of killing the process.

    A second Ctrl-C means "really stop now" and raises KeyboardInterrupt at once.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        if is_quiet():  # e.g. every rank of a job but the main one: it would only repeat it
            return
        # A plain print, not core.messages: tqdm's write takes a lock that the interrupted
        # code may be holding, and a signal handler must never wait for it.
        print(
            f"\n{signal.Signals(signum).name} received: finishing this step and saving a "
            "checkpoint (press Ctrl-C again to abort without saving)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signals only work there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
