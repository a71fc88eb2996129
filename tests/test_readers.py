"""Reading documents from local inputs (scratchlm.data.readers): formats, streaming, bad input."""

from __future__ import annotations

import gzip
import io
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from scratchlm.core.errors import ScratchLMError
from scratchlm.data.readers import DocumentReader, file_format


def texts(reader: DocumentReader) -> list[str]:
    return [doc.text for doc in reader]


def write_jsonl(path: Path, records: list[object]) -> bytes:
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    path.write_bytes(data)
    return data


def test_every_format_gives_the_same_documents(tmp_path: Path) -> None:
    docs = ["first document\nwith two lines", "second: café ☕", "third"]
    jsonl = "".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)).encode()
    (tmp_path / "a.jsonl").write_bytes(jsonl)
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(jsonl))
    (tmp_path / "c.ndjson.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl))
    pq.write_table(pa.table({"text": docs, "url": ["u"] * 3}), tmp_path / "d.parquet")
    for i, d in enumerate(docs):
        (tmp_path / f"e{i}.txt.gz").write_bytes(gzip.compress(d.encode()))
    for name in ["a.jsonl", "b.jsonl.gz", "c.ndjson.zst", "d.parquet"]:
        reader = DocumentReader([str(tmp_path / name)])
        assert texts(reader) == docs, name
        assert reader.stats.documents == 3 and reader.stats.files == 1
        assert reader.stats.bytes == sum(len(d.encode()) for d in docs)
    assert texts(DocumentReader([str(tmp_path)], include=["*.txt.gz"])) == docs


def test_origins_say_file_and_line_or_row(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [{"text": "x"}, {"text": "y"}])
    pq.write_table(pa.table({"text": ["p", "q"]}), tmp_path / "b.parquet")
    (tmp_path / "c.md").write_text("# title")
    origins = [doc.origin for doc in DocumentReader([str(tmp_path)])]
    assert origins == [
        f"{tmp_path / 'a.jsonl'}:1",
        f"{tmp_path / 'a.jsonl'}:2",
        f"{tmp_path / 'b.parquet'}#row 0",
        f"{tmp_path / 'b.parquet'}#row 1",
        f"{tmp_path / 'c.md'}",
    ]


def test_folders_are_recursive_sorted_filtered_and_skip_hidden(tmp_path: Path) -> None:
    for rel in ["b/2.txt", "b/1.md", "a.txt", ".git/x.txt", "b/.hidden.txt", "c/notes.rst"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    reader = DocumentReader([str(tmp_path)])
    assert texts(reader) == ["a.txt", "b/1.md", "b/2.txt"]
    assert texts(DocumentReader([str(tmp_path)], include=["*.md"])) == ["b/1.md"]
    assert texts(DocumentReader([str(tmp_path)], include=["b/*"])) == ["b/1.md", "b/2.txt"]
    assert texts(DocumentReader([str(tmp_path)], exclude=["b/2*"])) == ["a.txt", "b/1.md"]
    assert [p.name for p in reader.files()] == ["a.txt", "1.md", "2.txt"]
    with pytest.raises(
        ScratchLMError, match=r"no text, JSONL or Parquet files matching \['\*.json'\]"
    ):
        DocumentReader([str(tmp_path)], include=["*.json"]).files()


def test_reading_is_lazy(tmp_path: Path) -> None:
    # The second file is not opened until the first one's documents have been consumed.
    write_jsonl(tmp_path / "1.jsonl", [{"text": "one"}])
    (tmp_path / "2.jsonl").write_bytes(b"not json\n")
    reader = DocumentReader([str(tmp_path)])
    iterator = iter(reader)
    assert next(iterator).text == "one"
    assert reader.stats.bad_lines == 0 and reader.stats.files == 1
    assert list(iterator) == []
    assert reader.stats.bad_lines == 1


def test_non_utf8_bytes_are_replaced_and_counted(tmp_path: Path) -> None:
    (tmp_path / "latin1.txt").write_bytes("café naïve".encode("latin-1"))
    (tmp_path / "mixed.jsonl").write_bytes(b'{"text": "ok \xff\xfe"}\n')
    reader = DocumentReader([str(tmp_path)])
    assert texts(reader) == ["caf\ufffd na\ufffdve", "ok \ufffd\ufffd"]
    assert reader.stats.replaced_bytes == 4
    assert reader.stats.replaced_examples == [
        f"{tmp_path / 'latin1.txt'} (2)",
        f"{tmp_path / 'mixed.jsonl'}:1 (2)",
    ]
    assert "4 bytes were not UTF-8" in reader.stats.problems()[0]


def test_bad_jsonl_lines_are_skipped_with_their_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"text": "good"}\n{"text": truncated\n\n{"body": "x"}\n[1, 2]\n{"text": 7}\n{"text": "end"}\n'
    )
    reader = DocumentReader([str(path)])
    assert texts(reader) == ["good", "end"]
    assert reader.stats.bad_lines == 4
    first = reader.stats.bad_line_examples[0]
    assert first.startswith(f"{path}:2: not JSON")
    assert reader.stats.bad_line_examples[1] == f"{path}:4: no string field 'text'"
    # The field is configurable, like Parquet's column.
    assert texts(DocumentReader([str(path)], text_field="body")) == ["x"]


def test_parquet_without_the_column_is_skipped_and_named(tmp_path: Path) -> None:
    pq.write_table(pa.table({"content": ["a"], "id": [1]}), tmp_path / "a.parquet")
    (tmp_path / "b.txt").write_text("still read")
    reader = DocumentReader([str(tmp_path)])
    assert texts(reader) == ["still read"]
    (problem,) = reader.stats.problems()
    assert "a.parquet: no column 'text' (it has content, id); name the text column" in problem
    assert texts(DocumentReader([str(tmp_path / "a.parquet")], text_field="content")) == ["a"]


def test_unreadable_and_corrupt_files_are_skipped_and_named(tmp_path: Path) -> None:
    (tmp_path / "bad.txt.gz").write_bytes(b"this is not gzip")
    (tmp_path / "bad.jsonl.zst").write_bytes(b"nor is this zstd")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 broken")
    (tmp_path / "good.txt").write_text("fine")
    reader = DocumentReader([str(tmp_path)])
    assert texts(reader) == ["fine"]
    skipped = reader.stats.skipped_files
    assert len(skipped) == 3 and all("cannot be read" in s for s in skipped)
    assert all("\n" not in s for s in skipped)


def test_empty_documents_are_counted_not_yielded(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("  \n")
    write_jsonl(tmp_path / "b.jsonl", [{"text": ""}, {"text": "x"}])
    pq.write_table(pa.table({"text": [None, "y"]}), tmp_path / "c.parquet")
    reader = DocumentReader([str(tmp_path)])
    assert texts(reader) == ["x", "y"]
    assert reader.stats.empty_skipped == 3


def test_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = io.TextIOWrapper(io.BytesIO(b"from stdin \xff"))
    monkeypatch.setattr(sys, "stdin", fake)
    reader = DocumentReader(["-"])
    assert texts(reader) == ["from stdin \ufffd"]
    with pytest.raises(ScratchLMError, match="only once"):
        list(reader)
    fake = io.TextIOWrapper(io.BytesIO(b'{"text": "a"}\n{"text": "b"}\n'))
    monkeypatch.setattr(sys, "stdin", fake)
    assert texts(DocumentReader(["-"], stdin_format="jsonl")) == ["a", "b"]


def test_named_corpus(tmp_path: Path) -> None:
    reader = DocumentReader(["pydocs"])
    first = next(iter(reader))
    assert len(first.text) > 100 and first.origin.endswith(".txt")


def test_user_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("a,b")
    with pytest.raises(ScratchLMError, match=r"data.csv: unknown kind of file"):
        list(DocumentReader([str(tmp_path / "data.csv")]))
    with pytest.raises(ScratchLMError, match="no such file or folder: nope"):
        list(DocumentReader(["nope"]))
    with pytest.raises(ScratchLMError, match="no data sources"):
        DocumentReader([])


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("a.txt", "text"),
        ("a.MD", "text"),
        ("a.text.gz", "text"),
        ("a.jsonl.zst", "jsonl"),
        ("a.ndjson.zstd", "jsonl"),
        ("a.parquet", "parquet"),
        ("a.parquet.gz", None),
        ("a.json", None),
        ("a.gz", None),
        ("README", None),
    ],
)
def test_file_format(name: str, kind: str | None) -> None:
    assert file_format(Path(name)) == kind
