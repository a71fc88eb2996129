"""Read documents from wherever the text is, one at a time, so memory stays bounded.

A source is one of:
  a named corpus   ("shakespeare"; see sources.py), one document per file of the corpus;
  "-"              standard input: one document, or one per line with stdin_format="jsonl";
  a file           by its suffixes (after an optional .gz / .zst / .zstd):
                     .txt .md .text  -> the whole file is one document,
                     .jsonl .ndjson  -> one document per line, from the string field `text_field`,
                     .parquet        -> one document per row, from the string column `text_field`,
                     no suffix       -> one document, if its first bytes look like text (Brown's
                                        ca01, ca02, ...; see encodings.sniff);
  a folder         searched recursively for files of those kinds (hidden ones skipped, links to
                   folders followed unless they loop), sorted by path, optionally narrowed by
                   `include` / `exclude` glob patterns. A file of another kind is read as text
                   when an `include` pattern names it (`--include '*'`: every text file).

Every file of a folder is accounted for: read, left out by a pattern or hidden (counted, in the
report's notes), or not read, counted by why (another kind of file, binary, a symbolic link
that loops or leads nowhere) and named, in one problem line that says how to include them.

Text is UTF-8, unless a byte-order mark says UTF-16 or UTF-32 (encodings.py); a file that is
mostly not UTF-8 (UTF-16 without a mark, a code page) is skipped with the iconv command that
converts it rather than kept as mojibake.

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

import errno
import fnmatch
import gzip
import io
import json
import os
import re
import stat
import sys
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from scratchlm.core.errors import ScratchLMError
from scratchlm.core.user_files import decode_utf8
from scratchlm.data.encodings import (
    SNIFF_BYTES,
    bom_encoding,
    iconv_command,
    likely_encoding,
    sniff,
    wide_encoding,
)
from scratchlm.data.sources import CORPORA, corpus_names, fetch_corpus

TEXT_SUFFIXES = (".txt", ".md", ".text")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
COMPRESSION_SUFFIXES = (".gz", ".zst", ".zstd")
STDIN = "-"

# How many examples of each kind of problem the stats keep: enough to find and fix them.
MAX_EXAMPLES = 10
# How many of them a one-line warning names.
NAMED_IN_A_LINE = 3
# Rows read from a Parquet file at a time: bounded memory even for multi-GB shards.
PARQUET_BATCH_ROWS = 1024
# A file whose bytes are this much not UTF-8 (or NUL) is in another encoding: converted text
# would be read, mojibake would only teach the model U+FFFD.
GARBLED_FRACTION = 0.3

# Decoding with errors="surrogateescape" turns each byte that is not UTF-8 into one code point
# U+DC80..U+DCFF, which strict decoding of valid UTF-8 never produces; so they can be counted
# exactly and then replaced.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")

Format = Literal["text", "jsonl", "parquet"]

# Why a file of a folder was not read (ReadStats.not_read_reasons' keys).
OTHER_KIND = "another kind of file"  # a suffix we do not read, content that looks like text
BINARY = "binary"
LINK_LOOP = "symbolic link loop"
BROKEN_LINK = "link to nothing"
NOT_A_FILE = "not a regular file"  # a FIFO, socket or device: opening it could block
SEEN_FOLDER = "link to a folder already read"

# What a not-read line suggests: data prepare's flag; `tokenizer train` says its own.
INCLUDE_HINT = "add --include '*' (data.include) to read every text file, whatever its suffix"


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
    # Files in source folders that were not read, by why (OTHER_KIND, BINARY, ...).
    not_read: int = 0
    not_read_reasons: dict[str, int] = field(default_factory=dict)
    not_read_examples: list[str] = field(default_factory=list)  # "path (why)"
    # Read, not problems: said in the report's notes.
    sniffed_text: int = 0  # files without a known suffix read as text because they look it
    sniffed_text_examples: list[str] = field(default_factory=list)
    byte_order_marks: dict[str, int] = field(default_factory=dict)  # encoding -> files
    hidden_skipped: int = 0  # names starting with "." in source folders (not searched)
    left_out_by_patterns: int = 0  # files the include / exclude patterns left out

    def problems(self, include_hint: str = INCLUDE_HINT) -> list[str]:
        """One plain line per kind of problem, with where to look."""
        line = self.not_read_problem(include_hint)
        return self.reading_problems() + ([line] if line else [])

    def reading_problems(self) -> list[str]:
        """The problems of the files that were read: bytes, lines, files that failed."""
        lines = []
        if self.replaced_bytes:
            lines.append(
                f"{self.replaced_bytes:,} bytes were not UTF-8 and became U+FFFD, in "
                + ", ".join(self.replaced_examples)
                + "; if the files are in another encoding, convert them to UTF-8 (e.g. iconv "
                "-f CP1252 -t UTF-8 FILE > FILE.txt for Windows/Latin-1 text)"
            )
        if self.bad_lines:
            lines.append(
                f"{self.bad_lines:,} JSONL lines skipped: " + "; ".join(self.bad_line_examples)
            )
        lines += [f"skipped {why}" for why in self.skipped_files]
        return lines

    def not_read_problem(self, include_hint: str = INCLUDE_HINT) -> str | None:
        """One line counting and naming the files of source folders that were not read."""
        if not self.not_read:
            return None
        reasons = ", ".join(f"{why} {count:,}" for why, count in self.not_read_reasons.items())
        named = ", ".join(self.not_read_examples[:NAMED_IN_A_LINE])
        more = self.not_read - min(self.not_read, NAMED_IN_A_LINE)
        named += f" and {more:,} more" if more else ""
        fixes = []
        if self.not_read_reasons.get(OTHER_KIND):
            fixes.append(include_hint)
        if self.not_read_reasons.get(LINK_LOOP) or self.not_read_reasons.get(BROKEN_LINK):
            fixes.append("fix or remove the links that loop or lead nowhere")
        fix = f"; {'; '.join(fixes)}" if fixes else ""
        return (
            f"{self.not_read:,} files in the source folders were not read ({reasons}): {named}{fix}"
        )

    def notes(self) -> list[str]:
        """What reading did that is worth knowing but is not a problem."""
        lines = []
        if self.sniffed_text:
            lines.append(
                f"{self.sniffed_text:,} files without a known suffix were read as text (their "
                "content looks like text): " + ", ".join(self.sniffed_text_examples)
            )
        if self.byte_order_marks:
            marks = ", ".join(f"{name} {count:,}" for name, count in self.byte_order_marks.items())
            lines.append(f"files decoded by their byte-order mark: {marks}")
        if self.hidden_skipped:
            lines.append(
                f"{self.hidden_skipped:,} hidden files or folders (names starting with '.') "
                "were not searched"
            )
        if self.left_out_by_patterns:
            lines.append(
                f"{self.left_out_by_patterns:,} files were left out by the include/exclude patterns"
            )
        return lines

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)

    def _note(self, examples: list[str], example: str) -> None:
        if len(examples) < MAX_EXAMPLES:
            examples.append(example)

    def _not_read(self, name: str, why: str) -> None:
        self.not_read += 1
        self.not_read_reasons[why] = self.not_read_reasons.get(why, 0) + 1
        self._note(self.not_read_examples, f"{name} ({why})")


@dataclass
class _Listing:
    """What a folder holds: the files to read (with their format) and what else was found."""

    files: list[tuple[str, Path, Format]] = field(default_factory=list)  # (relative, path, ...)
    not_read: list[tuple[str, str]] = field(default_factory=list)  # (name, why)
    unreadable: list[str] = field(default_factory=list)  # "name: cannot be read (...)"
    sniffed: list[str] = field(default_factory=list)  # names read as text by their content
    hidden: int = 0
    left_out: int = 0


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
        return [
            path
            for source in self.sources
            if source != STDIN
            for path, _ in self._expand(source, ReadStats())
        ]

    def __iter__(self) -> Iterator[Document]:
        self.stats = ReadStats()
        for source in self.sources:
            if source == STDIN:
                yield from self._read_stdin()
                continue
            for path, kind in self._expand(source, self.stats):
                # A named corpus's documents are named by the corpus, not the cache path.
                name = f"{source}/{path.name}" if source in CORPORA else str(path)
                yield from self._read_file(path, name, kind)

    # ------------------------------------------------------------------------ sources to files

    def _expand(self, source: str, stats: ReadStats) -> list[tuple[Path, Format]]:
        """The files of `source` to read, with their formats; what else it holds, into stats."""
        if source in CORPORA:
            return [(p, "text") for p in sorted(fetch_corpus(source).glob("*.txt"))]
        path = Path(source).expanduser()
        mode = _source_mode(source, path)
        if stat.S_ISREG(mode):
            return [(path, self._format_of_named_file(path))]
        if not stat.S_ISDIR(mode):
            raise ScratchLMError(
                f"{source} is not a file or a folder (a pipe, socket or device); name a file or "
                "folder of text, or use - to read standard input"
            )
        listing = self._files_under(path)
        for name, why in listing.not_read:
            stats._not_read(str(path / name), why)
        stats.skipped_files += [f"{path / line}" for line in listing.unreadable]
        for name in listing.sniffed:
            stats.sniffed_text += 1
            stats._note(stats.sniffed_text_examples, str(path / name))
        stats.hidden_skipped += listing.hidden
        stats.left_out_by_patterns += listing.left_out
        if not listing.files:
            narrowed = f" matching {self.include}" if self.include else ""
            others = ""
            if listing.not_read:
                first = ", ".join(f"{name} ({why})" for name, why in listing.not_read[:3])
                others = (
                    f"; it has {len(listing.not_read):,} files of other kinds, e.g. {first}, "
                    "which --include '*' reads if they are text"
                )
            raise ScratchLMError(
                f"folder {path} has no text, JSONL or Parquet files{narrowed} ("
                f"{', '.join(TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES)}, maybe "
                f".gz or .zst; searched recursively){others}; check the path and the --include "
                "patterns"
            )
        return [(p, kind) for _, p, kind in sorted(listing.files)]

    def _format_of_named_file(self, path: Path) -> Format:
        kind = file_format(path)
        if kind is not None:
            return kind
        if _without_suffix(path):
            looks = _sniff_file(path)
            if looks == "text":
                return "text"
            if looks == BINARY:
                raise ScratchLMError(
                    f"{path} looks binary (NUL or control bytes in its first "
                    f"{SNIFF_BYTES:,} bytes), not text; name a text, JSONL or Parquet file"
                )
            raise ScratchLMError(f"cannot read {path}: {looks}")
        raise ScratchLMError(
            f"{path}: unknown kind of file; name text ({', '.join(TEXT_SUFFIXES)}), "
            f"JSONL ({', '.join(JSONL_SUFFIXES)}) or Parquet files, optionally "
            f"compressed ({', '.join(COMPRESSION_SUFFIXES)}), a text file without a suffix, "
            "or a folder with --include patterns naming the files to read as text"
        )

    def _files_under(self, folder: Path) -> _Listing:
        listing = _Listing()
        root = os.path.realpath(folder)
        seen = {root}  # real folders already searched: a link back to one is not followed

        def search(directory: Path, prefix: str, ancestors: frozenset[str]) -> None:
            try:
                with os.scandir(directory) as scan:
                    entries = sorted(scan, key=lambda entry: entry.name)
            except OSError as e:
                listing.unreadable.append(f"{prefix or '.'}: cannot be listed ({_reason(e)})")
                return
            for entry in entries:
                relative = prefix + entry.name
                # Hidden files and folders (.git, editor backups) are never corpus text.
                if entry.name.startswith("."):
                    listing.hidden += 1
                    continue
                try:
                    mode = os.stat(entry.path).st_mode  # through links
                except OSError as e:
                    if e.errno == errno.ELOOP:
                        listing.not_read.append((relative, LINK_LOOP))
                    elif entry.is_symlink():
                        listing.not_read.append((relative, BROKEN_LINK))
                    else:
                        listing.unreadable.append(f"{relative}: cannot be read ({_reason(e)})")
                    continue
                if stat.S_ISDIR(mode):
                    real = os.path.realpath(entry.path)
                    if real in ancestors:
                        listing.not_read.append((relative + "/", LINK_LOOP))
                    elif real in seen:
                        listing.not_read.append((relative + "/", SEEN_FOLDER))
                    else:
                        seen.add(real)
                        search(Path(entry.path), relative + "/", ancestors | {real})
                elif not stat.S_ISREG(mode):
                    listing.not_read.append((relative, NOT_A_FILE))
                else:
                    self._list_file(listing, relative, Path(entry.path))

        search(folder, "", frozenset({root}))
        return listing

    def _list_file(self, listing: _Listing, relative: str, path: Path) -> None:
        """Put one regular file of a folder where it belongs in the listing."""
        included = any(_glob_match(relative, g) for g in self.include)
        if (self.include and not included) or any(_glob_match(relative, g) for g in self.exclude):
            listing.left_out += 1
            return
        kind = file_format(path)
        if kind is not None:
            listing.files.append((relative, path, kind))
            return
        looks = _sniff_file(path)
        if looks == BINARY:
            listing.not_read.append((relative, BINARY))
        elif looks != "text":
            listing.unreadable.append(f"{relative}: {looks}")
        elif _without_suffix(path) or included:
            # No suffix (classic corpora), or named by an --include pattern: read as text.
            listing.files.append((relative, path, "text"))
            listing.sniffed.append(relative)
        else:
            listing.not_read.append((relative, OTHER_KIND))

    # ------------------------------------------------------------------------ files to documents

    def _read_file(self, path: Path, name: str, kind: Format) -> Iterator[Document]:
        self.stats.files += 1
        try:
            if kind == "parquet":
                yield from self._read_parquet(path, name)
            else:
                with open_maybe_compressed(path) as stream:
                    if kind == "jsonl":
                        yield from self._read_jsonl(stream, name)
                    else:
                        text = self._decode_whole(stream.read(), name, whole_file=True)
                        yield from self._emit(text, name)
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
            text = self._decode_whole(stream.read(), "<stdin>", whole_file=False)
            yield from self._emit(text, "<stdin>")

    def _read_jsonl(self, stream: IO[bytes], name: str) -> Iterator[Document]:
        for number, line in self._jsonl_lines(stream, name):
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

    def _jsonl_lines(self, stream: IO[bytes], name: str) -> Iterator[tuple[int, str]]:
        """(line number, text) of the non-blank lines; UTF-8, or UTF-16/32 by a byte-order mark."""
        # peek: the mark is looked at without reading past it (standard input cannot seek).
        buffered: Any = stream if hasattr(stream, "peek") else io.BufferedReader(stream)  # type: ignore[type-var]
        mark = bom_encoding(buffered.peek(4)[:4])
        if mark is None or mark[0] == "utf-8":
            if mark is not None:
                self._count_mark("utf-8")
            # Bytes a line at a time: a line that is not UTF-8 is counted where it is.
            for number, raw in enumerate(buffered, start=1):
                if raw.strip():
                    yield number, self._decode_utf8(raw, f"{name}:{number}")
            return
        codec, length = mark
        self._count_mark(codec)
        buffered.read(length)
        # newline="\n": JSON strings may hold U+2028 and lone \r, which are not line ends here.
        lines = io.TextIOWrapper(
            buffered,
            encoding=codec,
            errors="strict" if self.strict else "replace",
            newline="\n",
        )
        number = 0
        try:
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    self._count_replaced(line.count("\ufffd"), f"{name}:{number}")
                    yield number, line
        except UnicodeDecodeError:
            raise self._not_in_marked_encoding(name, codec, f"line {number + 1}") from None
        finally:
            lines.detach()  # the caller closes the stream

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

    def _decode_whole(self, data: bytes, where: str, whole_file: bool) -> str:
        """The text of a whole file (or standard input): by its byte-order mark, else UTF-8.

        `whole_file`: a file that is mostly not UTF-8 is skipped with the command that
        converts it (standard input cannot be skipped, only counted).
        """
        mark = bom_encoding(data)
        if mark is not None and mark[0] != "utf-8":
            codec, length = mark
            self._count_mark(codec)
            body = data[length:]
            try:
                text = body.decode(codec)
            except UnicodeDecodeError as e:
                if self.strict:
                    raise self._not_in_marked_encoding(
                        where, codec, f"byte offset {e.start + length}"
                    ) from None
                text = body.decode(codec, errors="replace")
                self._count_replaced(text.count("\ufffd"), where)
        else:
            if mark is not None:
                self._count_mark("utf-8")
            if whole_file and b"\x00" in data[:SNIFF_BYTES]:
                wide = wide_encoding(data)
                if wide is not None:
                    offsets = "odd" if wide.endswith("le") else "even"
                    why = f"it looks like {wide.upper()} without a byte-order mark (NUL bytes "
                    raise self._other_encoding(where, data, why + f"at {offsets} offsets)")
            text = self._decode_utf8(data, where, whole_file)
        if self.strict:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        return text

    def _other_encoding(self, where: str, data: bytes, why: str) -> Exception:
        """A file plainly not UTF-8 is skipped (strict: refused) with the command converting it,
        rather than kept as mojibake."""
        convert = iconv_command(where, likely_encoding(data))
        message = f"not UTF-8: {why}; convert it, e.g. {convert}"
        return ScratchLMError(f"{where}: {message}") if self.strict else _SkipFile(message)

    def _not_in_marked_encoding(self, where: str, codec: str, at: str) -> ScratchLMError:
        return ScratchLMError(
            f"{where}: starts with a {codec.upper()} byte-order mark but is not {codec.upper()} "
            f"text at {at}; check how the file was made, or convert it to UTF-8 with iconv"
        )

    def _decode_utf8(self, data: bytes, where: str, whole_file: bool = False) -> str:
        if self.strict:
            try:
                return decode_utf8(data, where).removeprefix("\ufeff")
            except ScratchLMError:
                if whole_file:  # mostly another encoding: say which, not only the first byte
                    self._check_mostly_utf8(data, where)
                raise
        text = data.decode("utf-8", errors="surrogateescape")
        if not text.isascii():
            bad = len(_ESCAPED_BYTE.findall(text))
            if whole_file:
                self._check_mostly_utf8(data, where, bad)
            if bad:
                self._count_replaced(bad, where)
                text = _ESCAPED_BYTE.sub("\ufffd", text)
        return text.removeprefix("\ufeff")  # a byte-order mark is encoding, not text

    def _check_mostly_utf8(self, data: bytes, where: str, bad: int | None = None) -> None:
        if bad is None:
            bad = len(_ESCAPED_BYTE.findall(data.decode("utf-8", errors="surrogateescape")))
        if bad > GARBLED_FRACTION * len(data):
            why = f"{bad / len(data):.0%} of its bytes are not UTF-8"
            raise self._other_encoding(where, data, why)

    def _count_replaced(self, count: int, where: str) -> None:
        if count:
            self.stats.replaced_bytes += count
            self.stats._note(self.stats.replaced_examples, f"{where} ({count})")

    def _count_mark(self, codec: str) -> None:
        marks = self.stats.byte_order_marks
        marks[codec] = marks.get(codec, 0) + 1

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


def _source_mode(source: str, path: Path) -> int:
    """The file mode of a named source (through links); a missing path or a link that loops
    or leads nowhere is one clear line."""
    try:
        return os.stat(path).st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ScratchLMError(
                f"{source} is a symbolic link loop (links that lead back to themselves); point "
                "the source at the real file or folder"
            ) from None
        if path.is_symlink():
            raise ScratchLMError(
                f"{source} is a symbolic link to {os.readlink(path)}, which does not exist; fix "
                "the link or name the real file or folder"
            ) from None
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            raise ScratchLMError(
                f"no such file or folder: {source} (and it is not a named corpus: "
                f"{', '.join(corpus_names())})"
            ) from None
        raise ScratchLMError(f"cannot read {source}: {_reason(e)}") from None


def _without_suffix(path: Path) -> bool:
    """A name without a suffix (ca01), maybe compressed (ca01.gz)."""
    name = path.name
    if path.suffix.lower() in COMPRESSION_SUFFIXES:
        name = path.stem
    return "." not in name.lstrip(".")


def _sniff_file(path: Path) -> str:
    """ "text", BINARY, or why the file cannot be read (the first bytes, decompressed)."""
    try:
        with open_maybe_compressed(path) as stream:
            sample = stream.read(SNIFF_BYTES)
    except (OSError, EOFError, zlib.error) as e:
        return f"cannot be read ({_reason(e)})"
    except Exception as e:  # zstandard's own errors
        if type(e).__module__.split(".")[0] != "zstandard":
            raise
        return f"cannot be read ({_reason(e)})"
    return "text" if sniff(sample) == "text" else BINARY


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
