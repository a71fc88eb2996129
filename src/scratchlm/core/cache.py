"""Where downloaded corpora live between runs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$SCRATCHLM_CACHE if set, else $XDG_CACHE_HOME/scratchlm, else ~/.cache/scratchlm.

    Read on every call (not once at import) so tests and users can point it elsewhere at run time.
    """
    explicit = os.environ.get("SCRATCHLM_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "scratchlm"
    return Path.home() / ".cache" / "scratchlm"
