"""Every document of some sources, in memory: what `tokenizer train` and `tokenizer study` read.

The sources are read by scratchlm.data.readers' DocumentReader, the same reader as
`data prepare`'s, so any corpus, file (text, JSONL, Parquet, compressed) or folder that one
accepts, these accept too. Reading is strict: bytes that are not UTF-8 are an error naming the
file, byte and line, since a tokenizer should not learn U+FFFD from a file in the wrong encoding
(a byte-order mark is honoured: UTF-16 and UTF-32 files are read). Files of a source folder that
are not read (other kinds of file, binary ones, broken links) are a warning naming them, and what
reading did beyond plain UTF-8 (files read as text by their content, byte-order marks) a note.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from scratchlm.core.errors import ScratchLMError
from scratchlm.core.messages import note, warn
from scratchlm.data.readers import DocumentReader

# These commands take no --include: a text file of another kind is read once renamed.
INCLUDE_HINT = "rename text files to .txt to read them"


@dataclass
class DocumentSet:
    texts: list[str] = field(default_factory=list)
    origins: list[str] = field(
        default_factory=list
    )  # where texts[i] came from ("a.txt", "b.jsonl:3")
    empty_skipped: int = 0  # documents that were empty or whitespace only


def read_documents(sources: Sequence[str]) -> list[str]:
    """The non-empty documents of every source, in order (folders sorted by path)."""
    return load_documents(sources).texts


def load_documents(sources: Sequence[str]) -> DocumentSet:
    """Like read_documents, but also says where each document came from and what was skipped."""
    reader = DocumentReader(sources, strict=True)
    result = DocumentSet()
    for document in reader:
        result.texts.append(document.text)
        result.origins.append(document.origin)
    result.empty_skipped = reader.stats.empty_skipped
    problems = reader.stats.reading_problems()
    if problems:
        # Strict reading: a file that cannot be read, or a JSONL line without text, is an error.
        raise ScratchLMError(f"cannot read sources {list(sources)}: {problems[0]}")
    # Files a folder holds that are not text are not the user's text; say which, and go on.
    not_read = reader.stats.not_read_problem(include_hint=INCLUDE_HINT)
    if not_read:
        warn(not_read)
    for line in reader.stats.notes():
        note(line)
    if not result.texts:
        raise ScratchLMError(
            f"no text in sources {list(sources)}: all {result.empty_skipped} document(s) are "
            "empty or whitespace; point them at files with some text"
        )
    return result
