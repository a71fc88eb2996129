"""Turn `data.sources` into a list of documents: one UTF-8 text file is one document.

A source is a named corpus (see sources.py), a text file, or a folder searched recursively for
*.txt and *.md files. A name that is both a corpus and a local path means the corpus; write
./name for the local one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from scratchlm.core.errors import ScratchLMError
from scratchlm.data.sources import CORPORA, corpus_names, fetch_corpus

TEXT_SUFFIXES = (".txt", ".md")


@dataclass
class DocumentSet:
    texts: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)  # paths[i] holds texts[i]
    empty_skipped: int = 0  # files that were empty or whitespace only


def read_documents(sources: list[str]) -> list[str]:
    """The non-empty documents of every source, in order (folders sorted by path)."""
    return load_documents(sources).texts


def load_documents(sources: list[str]) -> DocumentSet:
    """Like read_documents, but also says which file each document came from and what was skipped."""
    result = DocumentSet()
    for source in sources:
        for path in source_files(source):
            text = read_text_file(path)
            if text.strip():
                result.texts.append(text)
                result.paths.append(path)
            else:
                result.empty_skipped += 1
    if not result.texts:
        raise ScratchLMError(
            f"no text in data.sources {sources}: all {result.empty_skipped} file(s) are empty "
            "or whitespace; point data.sources at files with some text"
        )
    return result


def source_files(source: str) -> list[Path]:
    """The files one source stands for."""
    if source in CORPORA:
        folder = fetch_corpus(source)
        return sorted(folder.glob("*.txt"))
    path = Path(source).expanduser()
    if path.is_file():
        # A file named explicitly is read whatever its suffix: the user asked for it.
        return [path]
    if path.is_dir():
        files = _text_files_under(path)
        if not files:
            raise ScratchLMError(
                f"folder {path} has no {' or '.join(TEXT_SUFFIXES)} files (searched recursively); "
                "add some, or give the files themselves in data.sources"
            )
        return files
    raise ScratchLMError(
        f"no such file or folder: {source} (and it is not a named corpus: "
        f"{', '.join(corpus_names())})"
    )


def _text_files_under(folder: Path) -> list[Path]:
    files = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        # Hidden files and folders (.git, editor backups, .ipynb_checkpoints) are not corpus text.
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.suffix.lower() in TEXT_SUFFIXES and path.is_file():
            files.append(path)
    # Sort by the path inside the folder so the order (and hence the split) is the same everywhere.
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def read_text_file(path: Path) -> str:
    """Decode a file as strict UTF-8 and normalise line endings to \\n."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ScratchLMError(
            f"{path}: not UTF-8 text: byte 0x{data[e.start]:02x} at byte offset {e.start} "
            f"(line {line}); convert the file to UTF-8, e.g. "
            f"`iconv -f latin1 -t utf-8 {path} > {path.stem}.utf8{path.suffix}`"
        ) from None
    text = text.removeprefix("\ufeff")  # a byte-order mark is an encoding detail, not text
    return text.replace("\r\n", "\n").replace("\r", "\n")
