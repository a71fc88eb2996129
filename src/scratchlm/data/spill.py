"""Documents parked on disk between the passes of the data pipeline: one JSONL.zst file.

Deduplication reads the cleaned documents more than once (count, then remove). Reading and
cleaning the sources again each time would double the slowest work, and standard input cannot
be read twice; so the first pass writes what it keeps here, zstd-compressed (about a quarter of
the text's size), and the later passes read it back. Memory holds one document at a time.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import zstandard

from scratchlm.data.readers import Document

# zstd's level 3 compresses far faster than the stages around it work: the spill never holds
# them up.
LEVEL = 3


class SpillWriter:
    """Append documents to a new spill file; use as a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.documents = 0
        self._raw = path.open("wb")
        self._stream = zstandard.ZstdCompressor(level=LEVEL).stream_writer(self._raw)

    def write(self, document: Document) -> None:
        record = {"text": document.text, "origin": document.origin}
        # surrogatepass: a lone surrogate (from broken input) comes back as it went in.
        line = json.dumps(record, ensure_ascii=False) + "\n"
        self._stream.write(line.encode("utf-8", errors="surrogatepass"))
        self.documents += 1

    def close(self) -> None:
        self._stream.close()  # flushes the zstd frame and closes the file

    def __enter__(self) -> SpillWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SpilledDocuments:
    """The documents of a spill file, in order; can be iterated any number of times."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __iter__(self) -> Iterator[Document]:
        with self.path.open("rb") as raw:
            reader = zstandard.ZstdDecompressor().stream_reader(raw)
            text = io.TextIOWrapper(reader, encoding="utf-8", errors="surrogatepass", newline="\n")
            for line in text:
                record = json.loads(line)
                yield Document(record["text"], record["origin"])
