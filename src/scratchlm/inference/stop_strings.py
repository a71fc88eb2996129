"""Stop strings: end a row as soon as its decoded text contains one, and never show it.

Text arrives a token's worth at a time, and a stop string may span several tokens ("\\n\\n" as
"\\n" + "\\n", "User:" as "Us" + "er:"). So the matcher searches the text it has been given, not
each piece, and holds back any tail that could still grow into a stop string: what it releases
for streaming is final, and the stop string itself is never released.
"""

from __future__ import annotations

from collections.abc import Sequence

from scratchlm.core.errors import ScratchLMError


def check_stop_strings(stop: Sequence[str]) -> list[str]:
    """The stop strings as a list; one clear line for an empty one (it would match at once)."""
    stop = list(stop)
    if any(s == "" for s in stop):
        raise ScratchLMError("a stop string is empty; it would stop before the first token")
    return stop


class StopStringMatcher:
    """Feed a row's new text piece by piece; `feed` returns what is safe to show."""

    def __init__(self, stop: Sequence[str]) -> None:
        self.stop = check_stop_strings(stop)
        self.text = ""  # everything fed so far
        self.released = 0  # text[:released] has been returned by feed
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Add `piece`; return the newly final text (cut before a stop string if one appeared)."""
        if self.stopped:
            return ""
        start = max(0, len(self.text) - max((len(s) for s in self.stop), default=0) + 1)
        self.text += piece
        # Where the first stop string begins, searching only where a new one can be: one that
        # ends inside the new piece starts at most longest - 1 characters before it.
        hits = [i for s in self.stop if (i := self.text.find(s, start)) >= 0]
        if hits:
            self.stopped = True
            self.text = self.text[: min(hits)]
            return self._release(len(self.text))
        return self._release(len(self.text) - self._held_back())

    def flush(self) -> str:
        """At the end of generation: the held-back tail was no stop string after all."""
        return self._release(len(self.text))

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        for n in range(min(len(self.text), max(map(len, self.stop), default=1) - 1), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self.stop):
                return n
        return 0

    def _release(self, end: int) -> str:
        end = max(end, self.released)
        out, self.released = self.text[self.released : end], end
        return out
