"""Filesystem problems on a path the user named, as one clear line: what failed, the path,
and what to do.

    cannot write out/tok.json: permission denied; choose a folder you can write to (or fix
    its permissions)

Every command goes through here: `check_output` refuses an unusable output path before any
work, `WriteError` carries the user's path out of the atomic writers (not their temporary
file's), and the CLI turns any OSError that names a file into `os_error_message`'s line.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from scratchlm.core.errors import ScratchLMError


class WriteError(OSError):
    """An OSError met while writing `filename`, the path the user asked for (not a temporary
    file beside it); still an OSError, so callers that handle a failed write keep working."""


def write_error(error: OSError, path: str | os.PathLike[str]) -> WriteError:
    """`error` (from writing a temporary file or folder beside `path`) as one about `path`."""
    return WriteError(error.errno or 0, error.strerror or str(error), str(path))


def os_error_message(error: OSError, action: str | None = None, path: object = None) -> str:
    """The one line for `error` on `path` (default: the error's filename); `action` ("read",
    "write") says what failed, and for a WriteError defaults to "write"."""
    if action is None:
        action = "write" if isinstance(error, WriteError) else "use"
    target = Path(str(path if path is not None else error.filename))
    reason, fix = _reason_and_fix(error, action, target)
    return f"cannot {action} {target}: {reason}; {fix}"


# What an error number means for a path, and what to do about it.
_REASONS: dict[int, tuple[str, str]] = {
    errno.EROFS: ("the file system is read-only", "choose a folder on a writable disk"),
    errno.ENOSPC: ("the disk is full", "free some space or choose a folder on another disk"),
    errno.EDQUOT: ("the disk is full", "free some space or choose a folder on another disk"),
    errno.EISDIR: ("it is a folder", "give a file name, not a folder"),
    errno.ENOTDIR: ("part of it is not a folder", "choose another path"),
    errno.EEXIST: ("it already exists", "remove it or choose another path"),
    errno.ELOOP: (
        "a symbolic link in it loops back on itself",
        "fix the link or give the real path",
    ),
    errno.ENAMETOOLONG: ("the name is too long", "choose a shorter path"),
    errno.ENOENT: ("it does not exist", "check the path"),
}


def _reason_and_fix(error: OSError, action: str, target: Path) -> tuple[str, str]:
    code = error.errno
    # Making the parent folders of a path meets a file among them as EEXIST or ENOTDIR.
    blocker = _file_in_the_way(target) if code in (errno.EEXIST, errno.ENOTDIR) else None
    if blocker is not None:
        return f"{blocker} is a file, not a folder", "choose another path"
    if code in (errno.EACCES, errno.EPERM):
        if action == "write":
            return "permission denied", "choose a folder you can write to (or fix its permissions)"
        return "permission denied", "fix its permissions or choose another path"
    if code in _REASONS:
        return _REASONS[code]
    return (error.strerror or str(error)).lower(), "check the path and try again"


def _file_in_the_way(path: Path) -> Path | None:
    """The first existing ancestor of `path` that is a file (why it cannot be a folder)."""
    for ancestor in reversed(path.parents):
        if ancestor.exists() and not ancestor.is_dir():
            return ancestor
    return None


@contextlib.contextmanager
def user_path_errors(path: str | os.PathLike[str], action: str) -> Iterator[None]:
    """Inside the block, an OSError on `path` is one ScratchLMError line (`action`: "read",
    "write")."""
    try:
        yield
    except OSError as e:
        raise ScratchLMError(os_error_message(e, action, path)) from None


def refuse_existing(path: str | os.PathLike[str], overwrite: bool) -> None:
    """The rule of every command that writes: an existing output is replaced only with
    --overwrite."""
    if not overwrite and Path(path).exists():
        raise ScratchLMError(f"{path} already exists; pass --overwrite to replace it")


def check_output(path: str | os.PathLike[str], folder: bool, overwrite: bool = True) -> None:
    """Refuse at once, before any work, an output `path` (a folder if `folder`, else a file)
    that cannot be written: a file where a folder is wanted or the reverse, a file among its
    parent folders, a folder that does not let us write, or (without `overwrite`) one that
    exists. Nothing is left behind."""
    path = Path(path)
    if path.is_dir() and not folder:
        raise ScratchLMError(f"cannot write {path}: it is a folder; give a file name")
    if path.exists() and not path.is_dir() and folder:
        raise ScratchLMError(f"cannot write {path}: it is a file; give a folder")
    blocker = _file_in_the_way(path.absolute())
    if blocker is not None:
        raise ScratchLMError(
            f"cannot write {path}: {blocker} is a file, not a folder; choose another path"
        )
    # Outputs are made beside `path` (a temporary file or staging folder) and moved in, and
    # into it where it is an existing folder: try both places for real, as permission bits
    # alone do not tell (root, read-only mounts, ACLs).
    nearest = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    places = [nearest.parent if nearest == path.absolute() else nearest]
    if folder and path.is_dir():
        places.append(path)
    for place in places:
        _try_writing_in(place, path)
    refuse_existing(path, overwrite)


def _try_writing_in(folder: Path, path: Path) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=".scratchlm-write-check-", dir=folder)
    except OSError as e:
        raise ScratchLMError(os_error_message(e, "write", path)) from None
    os.close(fd)
    os.unlink(name)
