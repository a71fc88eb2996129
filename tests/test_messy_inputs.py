"""Inputs as they come from elsewhere: symbolic link loops, files without a suffix, binary
files among the text, and encodings other than UTF-8 (issue 13, classes 2, 3 and 4).

Every file of a source folder must be accounted for (read, or counted and named with why and
how to include it), text with a byte-order mark read in its encoding, text that is plainly in
another encoding skipped with the command that converts it, never kept as mojibake, and a link
that loops one clear line, never a traceback.
"""

from __future__ import annotations

import codecs
import json
import os
import subprocess
import sys
from pathlib import Path
from pydoc_data.topics import topics

import pytest

from scratchlm.core.errors import ScratchLMError
from scratchlm.data.documents import load_documents
from scratchlm.data.encodings import bom_encoding, likely_encoding, sniff, wide_encoding
from scratchlm.data.readers import BINARY, LINK_LOOP, OTHER_KIND, DocumentReader
from scratchlm.data.shards import open_shard
from scratchlm.tokenizer import BPETokenizer

TEXT = "Grüße aus Köln: the quick brown fox jumps over the lazy dog.\nA second line, €5.\n"
# Each byte-order mark with the codec that writes the text after it.
MARKED = {
    "utf-8": (codecs.BOM_UTF8, "utf-8"),
    "utf-16-le": (codecs.BOM_UTF16_LE, "utf-16-le"),
    "utf-16-be": (codecs.BOM_UTF16_BE, "utf-16-be"),
    "utf-32-le": (codecs.BOM_UTF32_LE, "utf-32-le"),
    "utf-32-be": (codecs.BOM_UTF32_BE, "utf-32-be"),
}
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10" + bytes(range(256))


def marked(encoding: str, text: str = TEXT) -> bytes:
    bom, codec = MARKED[encoding]
    return bom + text.encode(codec)


def texts(reader: DocumentReader) -> list[str]:
    return [document.text for document in reader]


# --- encodings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", list(MARKED))
def test_every_byte_order_mark_is_recognised(encoding: str) -> None:
    data = marked(encoding)
    assert bom_encoding(data) == (encoding, len(MARKED[encoding][0]))
    assert sniff(data[:100]) == "text"


@pytest.mark.parametrize(
    ("data", "looks"),
    [
        (b"plain ascii\n", "text"),
        ("naïve café, cut mid-character: é".encode()[:-1], "text"),
        ("Latin-1 text: café naïve".encode("latin-1"), "text"),
        (b"\x00\x01\x02\x03binary", BINARY),
        (PNG, BINARY),
        (bytes(range(1, 32)) * 10, BINARY),  # control bytes, no NUL
        (b"", "text"),
    ],
)
def test_sniff_tells_text_from_binary(data: bytes, looks: str) -> None:
    assert sniff(data) == looks


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"])
def test_wide_text_without_a_mark_is_recognised(codec: str) -> None:
    data = ("An ASCII-heavy text in a wide encoding, with one é. " * 4).encode(codec)
    assert wide_encoding(data) == codec
    assert likely_encoding(data) == codec.replace("-", "").upper()
    assert wide_encoding(PNG) is None and wide_encoding(b"plain") is None
    assert likely_encoding("café".encode("cp1252")) == "CP1252"


# --- byte-order marks, in every reading mode ----------------------------------------------------


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("encoding", list(MARKED))
def test_text_with_a_byte_order_mark_is_read_in_its_encoding(
    encoding: str, strict: bool, tmp_path: Path
) -> None:
    (tmp_path / "doc.txt").write_bytes(marked(encoding))
    reader = DocumentReader([str(tmp_path / "doc.txt")], strict=strict)
    assert texts(reader) == [TEXT]
    assert reader.stats.byte_order_marks == {encoding: 1}
    assert reader.stats.replaced_bytes == 0 and reader.stats.problems() == []
    assert f"byte-order mark: {encoding} 1" in reader.stats.notes()[0]


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le"])
def test_jsonl_with_a_byte_order_mark_is_read_in_its_encoding(
    encoding: str, strict: bool, tmp_path: Path
) -> None:
    # One document holds U+2028, which is not a line end of JSONL.
    docs = ["first ☕", "second\u2028same document", "third"]
    lines = "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs)
    (tmp_path / "d.jsonl").write_bytes(marked(encoding, lines + "\n"))
    reader = DocumentReader([str(tmp_path / "d.jsonl")], strict=strict)
    assert texts(reader) == docs
    assert [d.origin.rsplit(":", 1)[1] for d in reader] == ["1", "2", "3"]
    assert reader.stats.problems() == []


def test_broken_text_after_a_mark_is_counted_or_refused(tmp_path: Path) -> None:
    # A UTF-16-LE mark, then a lone low surrogate (0xdc00): not UTF-16.
    path = tmp_path / "bad.txt"
    path.write_bytes(codecs.BOM_UTF16_LE + "ok ".encode("utf-16-le") + b"\x00\xdc")
    reader = DocumentReader([str(path)])
    assert texts(reader) == ["ok \ufffd"]
    assert reader.stats.replaced_bytes == 1
    with pytest.raises(ScratchLMError, match=r"bad.txt: starts with a UTF-16-LE byte-order mark"):
        load_documents([str(path)])


# --- text in another encoding -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "encoding"),
    [
        (TEXT.encode("utf-16-le"), "UTF16LE"),
        (TEXT.encode("utf-16-be"), "UTF16BE"),
        (TEXT.encode("utf-32-le"), "UTF32LE"),
        ("Привет, как дела? Всё хорошо.".encode("cp1251"), "CP1252"),
    ],
    ids=["utf-16-le", "utf-16-be", "utf-32-le", "cyrillic-cp1251"],
)
def test_text_mostly_in_another_encoding_is_skipped_with_the_conversion(
    content: bytes, encoding: str, tmp_path: Path
) -> None:
    (tmp_path / "other.txt").write_bytes(content)
    (tmp_path / "fine.txt").write_text("fine")
    reader = DocumentReader([str(tmp_path)])
    assert texts(reader) == ["fine"]  # not mojibake
    (skipped,) = reader.stats.skipped_files
    assert skipped.startswith(f"{tmp_path / 'other.txt'}: not UTF-8")
    assert f"iconv -f {encoding} -t UTF-8 {tmp_path / 'other.txt'}" in skipped
    # Strict reading (tokenizer train) refuses it with the same advice.
    with pytest.raises(ScratchLMError, match=f"iconv -f {encoding} -t UTF-8") as error:
        load_documents([str(tmp_path / "other.txt")])
    assert "\n" not in str(error.value)


def test_a_few_odd_bytes_are_replaced_and_the_conversion_suggested(tmp_path: Path) -> None:
    (tmp_path / "latin1.txt").write_bytes("A long enough English line, café.".encode("latin-1"))
    reader = DocumentReader([str(tmp_path)])
    assert texts(reader) == ["A long enough English line, caf\ufffd."]
    (problem,) = reader.stats.problems()
    assert problem.startswith("1 bytes were not UTF-8") and "iconv -f CP1252 -t UTF-8" in problem


# --- symbolic links -----------------------------------------------------------------------------


def make_link(kind: str, folder: Path) -> Path:
    """A link that loops on itself, two that loop on each other, or one that leads nowhere."""
    if kind == "self-loop":
        os.symlink("self.txt", folder / "self.txt")
        return folder / "self.txt"
    if kind == "two-link-loop":
        os.symlink("b.txt", folder / "a.txt")
        os.symlink("a.txt", folder / "b.txt")
        return folder / "a.txt"
    os.symlink("missing.txt", folder / "dangling.txt")
    return folder / "dangling.txt"


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("kind", ["self-loop", "two-link-loop", "dangling"])
def test_a_bad_link_named_as_a_source_is_one_line(kind: str, strict: bool, tmp_path: Path) -> None:
    link = make_link(kind, tmp_path)
    with pytest.raises(ScratchLMError) as error:
        list(DocumentReader([str(link)], strict=strict))
    message = str(error.value)
    assert str(link) in message and "\n" not in message
    assert ("symbolic link loop" if "loop" in kind else "which does not exist") in message


@pytest.mark.parametrize("kind", ["self-loop", "two-link-loop", "dangling"])
def test_a_bad_link_inside_a_folder_is_counted_and_named(kind: str, tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "real.txt").write_text("real text")
    link = make_link(kind, folder)
    reader = DocumentReader([str(folder)])
    assert texts(reader) == ["real text"]
    assert f"{link} (" in " ".join(reader.stats.not_read_examples)
    why = LINK_LOOP if "loop" in kind else "link to nothing"
    assert reader.stats.not_read_reasons[why] == reader.stats.not_read >= 1
    assert "fix or remove the links" in reader.stats.problems()[-1]


def test_links_to_folders_are_followed_unless_they_loop(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "far.txt").write_text("far away")
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "near.txt").write_text("near")
    os.symlink("..", folder / "sub" / "up")  # back to corpus: a loop
    os.symlink("../elsewhere", folder / "linked")
    os.symlink("sub", folder / "twice")  # the same folder again
    reader = DocumentReader([str(folder)])
    assert texts(reader) == ["far away", "near"]
    assert sorted(reader.stats.not_read_examples) == [
        f"{folder / 'sub' / 'up'} ({LINK_LOOP})",
        f"{folder / 'twice'} (link to a folder already read)",
    ]


# --- files of a folder that are not read ---------------------------------------------------------


def test_classic_corpus_without_suffixes_is_read_whole(tmp_path: Path) -> None:
    # Brown's layout: ca01, ca02, ... and a few index files.
    folder = tmp_path / "brown"
    folder.mkdir()
    for i in range(1, 41):
        (folder / f"ca{i:02d}").write_text(f"The/at Fulton/np-tl document/nn {i}/cd ./.\n")
    (folder / "CONTENTS").write_text("ca01 ... ca40\n")
    (folder / "cats.txt").write_text("ca01 news\n")
    reader = DocumentReader([str(folder)])
    assert len(texts(reader)) == 42
    assert reader.stats.sniffed_text == 41 and reader.stats.not_read == 0
    assert "41 files without a known suffix were read as text" in reader.stats.notes()[0]
    assert reader.stats.problems() == []
    # A named file without a suffix is read too; a binary one is one clear line.
    assert texts(DocumentReader([str(folder / "ca07")], strict=True))[0].endswith("7/cd ./.\n")
    (tmp_path / "blob").write_bytes(PNG)
    with pytest.raises(ScratchLMError, match=r"blob looks binary"):
        list(DocumentReader([str(tmp_path / "blob")]))


def test_include_reads_text_of_other_kinds_but_never_binary(tmp_path: Path) -> None:
    (tmp_path / "notes.rst").write_text("restructured text")
    (tmp_path / "picture.png").write_bytes(PNG)
    (tmp_path / "a.txt").write_text("plain")
    reader = DocumentReader([str(tmp_path)])
    assert texts(reader) == ["plain"]
    assert reader.stats.not_read_reasons == {OTHER_KIND: 1, BINARY: 1}
    (line,) = reader.stats.problems()
    assert line.startswith("2 files in the source folders were not read")
    assert "notes.rst (another kind of file)" in line and "picture.png (binary)" in line
    assert "--include '*'" in line
    reader = DocumentReader([str(tmp_path)], include=["*"])
    assert texts(reader) == ["plain", "restructured text"]
    assert reader.stats.not_read_reasons == {BINARY: 1}


def test_a_folder_of_only_other_files_names_them(tmp_path: Path) -> None:
    (tmp_path / "table.csv").write_text("a,b\n")
    with pytest.raises(ScratchLMError) as error:
        list(DocumentReader([str(tmp_path)]))
    assert "table.csv (another kind of file)" in str(error.value)
    assert "--include '*'" in str(error.value)


# --- the whole mix, through the commands ---------------------------------------------------------


def make_messy_folder(folder: Path, other_encodings: bool) -> dict[str, str]:
    """A folder of everything at once; returns each entry's fate: "read", a reason, "hidden"."""
    folder.mkdir()
    # Help topics: different enough that deduplication keeps every one.
    topic = iter(topics[name][:1500] for name in sorted(topics) if len(topics[name]) > 1500)
    fates = {}

    def put(name: str, content: bytes, fate: str) -> None:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
        fates[name] = fate

    for i in range(1, 4):
        put(f"ca0{i}", f"Document {i}. {next(topic)}".encode(), "read")
    put("normal.txt", f"A normal file. {next(topic)}".encode(), "read")
    put("nested/deep.md", f"# Nested\n\n{next(topic)}".encode(), "read")
    put("utf16.txt", marked("utf-16-le", f"In UTF-16, Grüße. {next(topic)}"), "read")
    put("utf32be.txt", marked("utf-32-be", f"In UTF-32, naïve. {next(topic)}"), "read")
    put("image.png", PNG, BINARY)
    put("blob", b"\x00\x01\x02" * 100, BINARY)
    put("table.csv", b"a,b\n1,2\n", OTHER_KIND)
    put(".hidden.txt", b"hidden", "hidden")
    os.symlink("loop", folder / "loop")
    fates["loop"] = LINK_LOOP
    os.symlink("..", folder / "nested" / "up")
    fates["nested/up"] = LINK_LOOP
    if other_encodings:
        put("no_mark_utf16.txt", f"No mark. {next(topic)}".encode("utf-16-le"), "skipped")
    return fates


def run_cli(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scratchlm", *map(str, args)],
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_data_prepare_accounts_for_every_file_of_a_messy_folder(tmp_path: Path) -> None:
    fates = make_messy_folder(tmp_path / "messy", other_encodings=True)
    BPETokenizer.train(["some training text for a tiny tokenizer"], 270).save(tmp_path / "t.json")
    result = run_cli(
        *("data", "prepare", "messy", "--tokenizer", "t.json", "--out", "out"),
        *("--no-filters", "--val-fraction", "0.2"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    read = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))["read"]

    # Every file is in exactly one place of the report.
    read_names = {name for name, fate in fates.items() if fate == "read"}
    assert read["files"] == len(read_names) + 1  # and the one skipped for its encoding
    assert read["documents"] == len(read_names)
    not_read = {e.rsplit(" (", 1)[0]: e.rsplit(" (", 1)[1][:-1] for e in read["not_read_examples"]}
    expected = {
        f"messy/{name}": fate for name, fate in fates.items() if fate not in ("read", "hidden")
    }
    expected.pop("messy/no_mark_utf16.txt")
    assert not_read == expected and read["not_read"] == len(expected)
    (skipped,) = read["skipped_files"]
    assert (
        skipped.startswith("messy/no_mark_utf16.txt: not UTF-8") and "iconv -f UTF16LE" in skipped
    )
    assert read["sniffed_text_examples"] == ["messy/ca01", "messy/ca02", "messy/ca03"]
    assert read["byte_order_marks"] == {"utf-16-le": 1, "utf-32-be": 1}
    assert read["hidden_skipped"] == 1

    # The documents in the output are the text, not mojibake.
    tokenizer = BPETokenizer.load(tmp_path / "t.json")
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    shards = [
        open_shard(tmp_path / "out" / name) for name in meta["train_shards"] + meta["val_shards"]
    ]
    documents = [
        tokenizer.decode(shard.document(i).tolist())
        for shard in shards
        for i in range(len(shard.doc_starts))
    ]
    assert len(documents) == len(read_names)
    assert any(text.startswith("In UTF-16, Grüße.") for text in documents)
    assert any(text.startswith("In UTF-32, naïve.") for text in documents)
    assert all("\x00" not in text and "\ufffd" not in text for text in documents)
    report_text = (tmp_path / "out" / "report.txt").read_text(encoding="utf-8")
    assert "problems: none" not in report_text and "problems: 2" in report_text
    assert "3 files without a known suffix were read as text" in report_text
    assert "byte-order mark: utf-16-le 1, utf-32-be 1" in report_text

    # On the terminal: one warning for the files not read, naming them and the flag.
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2, result.stderr
    assert "5 files in the source folders were not read" in warnings[1]
    assert "--include '*'" in warnings[1] and "messy/blob (binary)" in warnings[1]


def test_tokenizer_train_reads_the_same_folder_sensibly(tmp_path: Path) -> None:
    make_messy_folder(tmp_path / "messy", other_encodings=False)
    result = run_cli(
        "tokenizer", "train", "messy", "--vocab-size", "300", "--out", "tok.json", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "5 files in the source folders were not read" in warnings[0]
    assert "rename text files to .txt" in warnings[0]
    # The UTF-16 and UTF-32 text was read as text: its words are in the vocabulary, whole.
    tokenizer = BPETokenizer.load(tmp_path / "tok.json")
    assert tokenizer.decode(tokenizer.encode(" Grüße naïve")) == " Grüße naïve"
    documents = load_documents([str(tmp_path / "messy")])
    assert len(documents.texts) == 7
    assert any(text.startswith("In UTF-16, Grüße.") for text in documents.texts)
    assert all("\x00" not in text and "\ufffd" not in text for text in documents.texts)

    # A file in another encoding stops it, with the command that converts it.
    (tmp_path / "messy" / "no_mark.txt").write_bytes("No mark at all.".encode("utf-16-be"))
    result = run_cli(
        "tokenizer", "train", "messy", "--vocab-size", "300", "--out", "tok2.json", cwd=tmp_path
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "iconv -f UTF16BE -t UTF-8" in result.stderr.splitlines()[-1]


@pytest.mark.parametrize("command", ["data prepare", "tokenizer train"])
def test_a_looping_source_is_one_line_in_every_command(command: str, tmp_path: Path) -> None:
    os.symlink("loop", tmp_path / "loop")
    BPETokenizer.train(["a little text"], 260).save(tmp_path / "t.json")
    options = {
        "data prepare": ["--tokenizer", "t.json", "--out", "out"],
        "tokenizer train": ["--vocab-size", "300", "--out", "tok.json"],
    }[command]
    result = run_cli(*command.split(), "loop", *options, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: loop is a symbolic link loop"), lines
    assert not (tmp_path / "out").exists() and not (tmp_path / "tok.json").exists()
