"""Read documents from wherever the text is, one at a time, so memory stays bounded.

A source is one of:
  a named corpus   ("shakespeare"; see sources.py), one document per file of the corpus;
  "-"              standard input: one document, or one per line with stdin_format="jsonl";
  a file           by its suffixes (after an optional .gz / .zst / .zstd):
                     .txt .md .text  -> the whole file is one document,
                     .jsonl .ndjson  -> one document per line, from the string field `text_field`,
                     .parquet        -> one document per row, from the string column `text_field`;
  a folder         searched recursively for files of those kinds (hidden ones skipped), sorted
                   by path, optionally narrowed by `include` / `exclude` glob patterns.

This is the one reader of the corpora users name: `data prepare` reads through it, and so do
`tokenizer train` and `tokenizer study` (through scratchlm.data.documents, with strict=True:
bytes that are not UTF-8 are an error naming them, and \r\n and \r read as \n, so a file
read whole gives the text training reads from it a block at a time).

Otherwise messy input never stops the run: bytes that are not UTF-8 become U+FFFD and are counted, a
JSONL line that is not JSON (or lacks the field) is skipped and its line number recorded, a file
that cannot be read (or a Parquet file without the column) is skipped and named. `ReadStats`
holds those counts for the data report; `ReadStats.problems()` says them in plain lines.
"""

from __future__ import annotations

import fnmatch
import gzip
import io
import json
import re
import sys
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from scratchlm.core.errors import ScratchLMError
from scratchlm.core.user_files import decode_utf8
from scratchlm.data.sources import CORPORA, corpus_names, fetch_corpus

TEXT_SUFFIXES = (".txt", ".md", ".text")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
COMPRESSION_SUFFIXES = (".gz", ".zst", ".zstd")
STDIN = "-"

# How many examples of each kind of problem the stats keep: enough to find and fix them.
MAX_EXAMPLES = 10
# Rows read from a Parquet file at a time: bounded memory even for multi-GB shards.
PARQUET_BATCH_ROWS = 1024

# Decoding with errors="surrogateescape" turns each byte that is not UTF-8 into one code point
# U+DC80..U+DCFF, which strict decoding of valid UTF-8 never produces; so they can be counted
# exactly and then replaced.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")

Format = Literal["text", "jsonl", "parquet"]


@dataclass(frozen=True)
class Document:
    text: str
    origin: str  # where it came from, for reports: "a.txt", "b.jsonl:12", "c.parquet#row 7"


@dataclass
class ReadStats:
    """What reading found, beyond the documents themselves."""

    files: int = 0
    documents: int = 0
    bytes: int = 0  # UTF-8 bytes of the documents yielded
    empty_skipped: int = 0  # empty or whitespace-only documents, not yielded
    replaced_bytes: int = 0  # bytes that were not UTF-8, each now U+FFFD
    replaced_examples: list[str] = field(default_factory=list)
    bad_lines: int = 0  # JSONL lines skipped (not JSON, or no string field)
    bad_line_examples: list[str] = field(default_factory=list)
    skipped_files: list[str] = field(default_factory=list)  # "path: why"

    def problems(self) -> list[str]:
        """One plain line per kind of problem, with where to look."""
        lines = []
        if self.replaced_bytes:
            lines.append(
                f"{self.replaced_bytes:,} bytes were not UTF-8 and became U+FFFD, in "
                + ", ".join(self.replaced_examples)
            )
        if self.bad_lines:
            lines.append(
                f"{self.bad_lines:,} JSONL lines skipped: " + "; ".join(self.bad_line_examples)
            )
        lines += [f"skipped {why}" for why in self.skipped_files]
        return lines

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)

    def _note(self, examples: list[str], example: str) -> None:
        if len(examples) < MAX_EXAMPLES:
            examples.append(example)


class DocumentReader:
    """Iterate over the documents of `sources`; may be iterated again (stats start afresh).

    Standard input can be read only once, so a reader over "-" cannot be iterated twice.
    """

    def __init__(
        self,
        sources: Sequence[str],
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        text_field: str = "text",
        stdin_format: Literal["text", "jsonl"] = "text",
        strict: bool = False,
    ) -> None:
        if isinstance(sources, str):
            sources = [sources]
        if not sources:
            raise ScratchLMError("no data sources given; name a corpus, a file or a folder")
        self.sources = list(sources)
        self.include = list(include)
        self.exclude = list(exclude)
        self.text_field = text_field
        self.stdin_format = stdin_format
        self.strict = strict
        self.stats = ReadStats()
        self._stdin_used = False

    def files(self) -> list[Path]:
        """Every file the sources stand for, in reading order (standard input not included)."""
        return [p for source in self.sources if source != STDIN for p in self._expand(source)]

    def __iter__(self) -> Iterator[Document]:
        self.stats = ReadStats()
        for source in self.sources:
            if source == STDIN:
                yield from self._read_stdin()
                continue
            for path in self._expand(source):
                # A named corpus's documents are named by the corpus, not the cache path.
                name = f"{source}/{path.name}" if source in CORPORA else str(path)
                yield from self._read_file(path, name)

    # ------------------------------------------------------------------------ sources to files

    def _expand(self, source: str) -> list[Path]:
        if source in CORPORA:
            return sorted(fetch_corpus(source).glob("*.txt"))
        path = Path(source).expanduser()
        if path.is_file():
            if file_format(path) is None:
                raise ScratchLMError(
                    f"{path}: unknown kind of file; name text ({', '.join(TEXT_SUFFIXES)}), "
                    f"JSONL ({', '.join(JSONL_SUFFIXES)}) or Parquet files, optionally "
                    f"compressed ({', '.join(COMPRESSION_SUFFIXES)})"
                )
            return [path]
        if path.is_dir():
            files = self._files_under(path)
            if not files:
                narrowed = f" matching {self.include}" if self.include else ""
                raise ScratchLMError(
                    f"folder {path} has no text, JSONL or Parquet files{narrowed} ("
                    f"{', '.join(TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES)}, maybe "
                    ".gz or .zst; searched recursively); check the path and the --include "
                    "patterns"
                )
            return files
        raise ScratchLMError(
            f"no such file or folder: {source} (and it is not a named corpus: "
            f"{', '.join(corpus_names())})"
        )

    def _files_under(self, folder: Path) -> list[Path]:
        found = []
        for path in folder.rglob("*"):
            relative = path.relative_to(folder).as_posix()
            # Hidden files and folders (.git, editor backups) are never corpus text.
            if any(part.startswith(".") for part in relative.split("/")):
                continue
            if file_format(path) is None or not path.is_file():
                continue
            if self.include and not any(_glob_match(relative, g) for g in self.include):
                continue
            if any(_glob_match(relative, g) for g in self.exclude):
                continue
            found.append((relative, path))
        # Sorted by the path inside the folder, so the order (and any split) is the same anywhere.
        return [path for _, path in sorted(found)]

    # ------------------------------------------------------------------------ files to documents

    def _read_file(self, path: Path, name: str) -> Iterator[Document]:
        kind = file_format(path)
        self.stats.files += 1
        try:
            if kind == "parquet":
                yield from self._read_parquet(path, name)
            else:
                with open_maybe_compressed(path) as stream:
                    if kind == "jsonl":
                        yield from self._read_jsonl(stream, name)
                    else:
                        yield from self._emit(self._decode(stream.read(), name), name)
        except _SkipFile as skip:
            self.stats.skipped_files.append(f"{name}: {skip}")
        except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
            self.stats.skipped_files.append(f"{name}: cannot be read ({_reason(e)})")
        except Exception as e:  # zstandard's and pyarrow's own errors: one file, not the run
            if type(e).__module__.split(".")[0] not in ("zstandard", "pyarrow"):
                raise
            self.stats.skipped_files.append(f"{name}: cannot be read ({_reason(e)})")

    def _read_stdin(self) -> Iterator[Document]:
        if self._stdin_used:
            raise ScratchLMError("standard input can be read only once")
        self._stdin_used = True
        stream = sys.stdin.buffer
        if self.stdin_format == "jsonl":
            yield from self._read_jsonl(stream, "<stdin>")
        else:
            yield from self._emit(self._decode(stream.read(), "<stdin>"), "<stdin>")

    def _read_jsonl(self, stream: IO[bytes], name: str) -> Iterator[Document]:
        for number, raw in enumerate(stream, start=1):
            if not raw.strip():
                continue
            line = self._decode(raw, f"{name}:{number}")
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                self._bad_line(f"{name}:{number}: not JSON ({e.msg})")
                continue
            text = record.get(self.text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                self._bad_line(f"{name}:{number}: no string field {self.text_field!r}")
                continue
            yield from self._emit(text, f"{name}:{number}")

    def _read_parquet(self, path: Path, name: str) -> Iterator[Document]:
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        columns = parquet.schema_arrow.names
        if self.text_field not in columns:
            raise _SkipFile(
                f"no column {self.text_field!r} (it has {', '.join(columns)}); "
                "name the text column with --text-field"
            )
        row = 0
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[self.text_field]):
            for text in batch.column(0).to_pylist():
                if isinstance(text, str):
                    yield from self._emit(text, f"{name}#row {row}")
                else:
                    self.stats.empty_skipped += 1  # a null cell
                row += 1

    def _decode(self, data: bytes, where: str) -> str:
        if self.strict:
            text = decode_utf8(data, where).removeprefix("\ufeff")
            return text.replace("\r\n", "\n").replace("\r", "\n")
        text = data.decode("utf-8", errors="surrogateescape")
        if not text.isascii():
            bad = len(_ESCAPED_BYTE.findall(text))
            if bad:
                self.stats.replaced_bytes += bad
                self.stats._note(self.stats.replaced_examples, f"{where} ({bad})")
                text = _ESCAPED_BYTE.sub("\ufffd", text)
        return text.removeprefix("\ufeff")  # a byte-order mark is encoding, not text

    def _emit(self, text: str, origin: str) -> Iterator[Document]:
        if not text.strip():
            self.stats.empty_skipped += 1
            return
        self.stats.documents += 1
        self.stats.bytes += len(text.encode("utf-8", errors="replace"))
        yield Document(text, origin)

    def _bad_line(self, example: str) -> None:
        self.stats.bad_lines += 1
        self.stats._note(self.stats.bad_line_examples, example)


class _SkipFile(Exception):
    """A file that cannot be used as asked; the reason becomes a line of the report."""


def file_format(path: Path) -> Format | None:
    """ "text", "jsonl" or "parquet" by the file's suffixes, or None for other files."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes.pop()
    last = suffixes[-1] if suffixes else ""
    if last in TEXT_SUFFIXES:
        return "text"
    if last in JSONL_SUFFIXES:
        return "jsonl"
    if last in PARQUET_SUFFIXES and path.suffix.lower() not in COMPRESSION_SUFFIXES:
        return "parquet"  # Parquet compresses inside the file; a .parquet.gz is not readable
    return None


def open_maybe_compressed(path: Path) -> IO[bytes]:
    """A binary stream of the file's contents, decompressed on the fly if .gz or .zst(d)."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if suffix in (".zst", ".zstd"):
        import zstandard

        raw = path.open("rb")
        # BufferedReader gives line iteration for JSONL over the decompressing stream.
        reader = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
        return io.BufferedReader(reader)  # type: ignore[arg-type]
    return path.open("rb")


def _glob_match(relative: str, pattern: str) -> bool:
    # A pattern without "/" matches the file name anywhere ("*.md"); with "/", the whole path.
    name = relative.rsplit("/", 1)[-1]
    return fnmatch.fnmatch(relative, pattern) or (
        "/" not in pattern and fnmatch.fnmatch(name, pattern)
    )


def _reason(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
