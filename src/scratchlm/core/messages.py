"""How every stage talks to the person at the terminal: warnings, notes and progress bars.

Results (what a command made, the numbers asked for) go to standard output with print();
everything about the work itself goes to standard error through this module, so
`scratchlm ... > out.txt` keeps only results and `quiet` silences the chatter in one place:

    warn("3 files were skipped")        always shown: "warning: 3 files were skipped"
    note("cropped the prompt to 63")    shown unless quiet: "note: cropped the prompt to 63"
    with progress(total=n, desc="tokenizing", unit="doc") as bar: ...
                                        a tqdm bar with rate and ETA, on a terminal unless quiet

`quietly()` silences notes and progress bars for a block (tests, library calls, the ranks of
a distributed job other than the first); warnings still show, since they mean something
may be wrong.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from tqdm import tqdm

_quiet = False


def is_quiet() -> bool:
    return _quiet


@contextlib.contextmanager
def quietly(quiet: bool = True) -> Iterator[None]:
    """Within the block, notes and progress bars are off (with quiet=True)."""
    global _quiet
    before, _quiet = _quiet, _quiet or quiet
    try:
        yield
    finally:
        _quiet = before


def warn(message: str) -> None:
    """A problem the user should know of, one line on standard error, even when quiet."""
    _write(f"warning: {message}")


def note(message: str) -> None:
    """Something worth knowing about the work (not a result), unless quiet."""
    if not _quiet:
        _write(f"note: {message}")


def status(message: str) -> None:
    """A line of progress in words (what is being done, how long it took), unless quiet."""
    if not _quiet:
        _write(message)


def progress(
    total: float | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool | None = None,
    **kwargs: Any,
) -> tqdm:
    """A tqdm progress bar on standard error (rate and ETA), off when quiet.

    enabled=None shows it only on a terminal; True or False decides. Use it as a context
    manager, or close it.
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=_quiet or not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        **kwargs,
    )


def _write(line: str) -> None:
    # tqdm.write keeps an open progress bar intact below the message.
    tqdm.write(line, file=sys.stderr)
