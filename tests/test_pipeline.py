"""The data pipeline end to end: read -> clean -> dedup -> shards, the data report, bad input.

The corpus is a folder with a little of everything that goes wrong in real data, planted where
the test knows it: an exact copy (in capitals), a near-copy (one word changed), a document too
short to keep, a JSONL file with a line that is not JSON and one without the text field, a file
with a byte that is not UTF-8, a Parquet file without the text column and a .gz file that is
not gzip. The shards must hold exactly the documents that should survive, and the report must
count every problem.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from pydoc_data.topics import topics

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from disk_snapshot import snapshot
from scratchlm.config import load_config
from scratchlm.core.errors import ScratchLMError
from scratchlm.data.clean import CleanConfig, first_failure, normalise_text
from scratchlm.data.dataset import prepare_dataset
from scratchlm.data.dedup import LineDocumentCounts, document_line_keys
from scratchlm.data.pipeline import PipelineSettings, run_pipeline
from scratchlm.data.readers import Document
from scratchlm.data.removals import RemovalReport
from scratchlm.data.report import load_report
from scratchlm.data.shards import open_shard
from scratchlm.data.spill import SpilledDocuments, SpillWriter
from scratchlm.tokenizer import BPETokenizer

# --- the planted corpus ------------------------------------------------------------------------


def good_topics(count: int) -> list[str]:
    """Help topics of 1-6 kB that pass every quality rule, already normalised."""
    chosen = []
    for name in sorted(topics):
        text = normalise_text(topics[name])
        if 1000 < len(text) < 6000 and first_failure(text) is None and "é" not in text:
            chosen.append(text)
        if len(chosen) == count:
            return chosen
    raise AssertionError("not enough help topics pass the quality rules")


@dataclasses.dataclass
class Planted:
    folder: Path
    expected: list[str]  # the texts that must come out, in reading order
    read: int  # documents read


def plant_corpus(folder: Path) -> Planted:
    folder.mkdir()
    docs = good_topics(10)
    for i, text in enumerate(docs[:6]):
        (folder / f"a_{i}.txt").write_text(text, encoding="utf-8")
    (folder / "broken.txt.gz").write_bytes(b"not gzip at all")
    lines = [
        json.dumps({"text": docs[6]}),
        '{"text": "this line is cut off',
        json.dumps({"body": "no text field here"}),
        json.dumps({"text": docs[7]}),
    ]
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    # One byte that is not UTF-8 (é in Latin-1): replaced by U+FFFD, the document stays.
    marked = docs[8].replace(" ", " caf\x00 ", 1).encode("utf-8")
    (folder / "latin1.txt").write_bytes(marked.replace(b"\x00", b"\xe9"))
    words = docs[1].split(" ")
    words[len(words) // 2] = "CHANGED"
    (folder / "near.txt").write_text(" ".join(words), encoding="utf-8")
    (folder / "short.txt").write_text("Far too short to keep.", encoding="utf-8")
    pq.write_table(pa.table({"body": ["a column of the wrong name"]}), folder / "table.parquet")
    (folder / "z_copy.txt").write_text(docs[0].upper(), encoding="utf-8")
    expected = [*docs[:6], docs[6], docs[7], docs[8].replace(" ", " caf\ufffd ", 1)]
    return Planted(folder, expected, read=12)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Planted:
    return plant_corpus(tmp_path_factory.mktemp("planted") / "corpus")


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tok.json"
    BPETokenizer.train(good_topics(10), vocab_size=300).save(path)
    return path


def run_cli(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "scratchlm", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def user_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one stderr line of a refused command (exit status 2, no traceback)."""
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def decoded_shards(folder: Path, tokenizer: BPETokenizer) -> dict[str, list[str]]:
    meta = json.loads((folder / "meta.json").read_text())
    out: dict[str, list[str]] = {}
    for split in ("train", "val"):
        texts = []
        for name in meta[f"{split}_shards"]:
            shard = open_shard(folder / name)
            texts += [
                tokenizer.decode(shard.document(i).tolist()) for i in range(len(shard.doc_starts))
            ]
        out[split] = texts
    return out


# --- the CLI, end to end -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(
    planted: Planted, tokenizer_file: Path
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    cwd = planted.folder.parent
    result = run_cli(
        "data", "prepare", "corpus", "--tokenizer", tokenizer_file, "--out", "out",
        "--val-fraction", "0.2", "--workers", "1", cwd=cwd,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return cwd / "out", result


def test_shards_hold_exactly_the_surviving_documents(
    planted: Planted, prepared: tuple[Path, subprocess.CompletedProcess[str]], tokenizer_file: Path
) -> None:
    out, _ = prepared
    splits = decoded_shards(out, BPETokenizer.load(tokenizer_file))
    assert len(splits["val"]) == 2  # round(9 * 0.2)
    assert Counter(splits["train"] + splits["val"]) == Counter(planted.expected)
    # Each split keeps the reading order.
    for texts in splits.values():
        assert texts == [t for t in planted.expected if t in texts]


def test_report_counts_every_problem_and_removal(
    planted: Planted, prepared: tuple[Path, subprocess.CompletedProcess[str]]
) -> None:
    out, result = prepared
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    read = report["read"]
    assert read["documents"] == planted.read
    assert read["replaced_bytes"] == 1 and read["replaced_examples"] == ["corpus/latin1.txt (1)"]
    assert read["bad_lines"] == 2
    assert read["bad_line_examples"][0].startswith("corpus/data.jsonl:2: not JSON")
    assert read["bad_line_examples"][1] == "corpus/data.jsonl:3: no string field 'text'"
    skipped = read["skipped_files"]
    assert skipped[0].startswith("corpus/broken.txt.gz: cannot be read")
    assert skipped[1].startswith("corpus/table.parquet: no column 'text' (it has body)")

    stages = {stage["stage"]: stage for stage in report["stages"]}
    assert list(stages) == ["clean", "exact_dedup", "repeated_lines", "near_dedup"]
    assert stages["clean"]["reasons"]["word_count"]["documents"] == 1
    assert stages["clean"]["reasons"]["word_count"]["examples"][0]["origin"] == "corpus/short.txt"
    exact = stages["exact_dedup"]["reasons"]["exact_duplicate"]
    assert exact["documents"] == 1
    assert exact["examples"][0]["origin"] == "corpus/z_copy.txt"
    assert exact["examples"][0]["duplicate_of"] == "corpus/a_0.txt"
    near = stages["near_dedup"]["reasons"]["near_duplicate"]
    assert near["documents"] == 1 and near["examples"][0]["origin"] == "corpus/near.txt"
    assert near["examples"][0]["duplicate_of"] == "corpus/a_1.txt"
    for stage in stages.values():  # every stage's books balance
        removed = sum(r["documents"] for r in stage["reasons"].values())
        assert stage["documents_in"] == stage["documents_out"] + removed
        assert stage["bytes_in"] == stage["bytes_out"] + sum(
            r["bytes"] for r in stage["reasons"].values()
        )

    totals = report["totals"]
    assert totals["documents_in"] == planted.read
    assert totals["documents_out"] == len(planted.expected)
    assert totals["bytes_out"] == sum(len(t.encode()) for t in planted.expected)
    meta = json.loads((out / "meta.json").read_text())
    assert totals["tokens_out"] == meta["train_tokens"] + meta["val_tokens"]
    assert sum(report["lengths"]["bytes_in"]["counts"]) == planted.read
    assert sum(report["lengths"]["tokens_out"]["counts"]) == len(planted.expected)
    assert (out / "lengths.png").read_bytes().startswith(b"\x89PNG")

    # Each problem is one warning line; the run went on.
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 4, result.stderr
    assert "corpus/data.jsonl:2" in warnings[1] and "not UTF-8" in warnings[0]
    assert result.stdout.startswith(f"wrote {meta['train_tokens']:,} train and ")
    assert "kept 9 of 12 documents" in result.stdout


def test_data_report_prints_the_summary(
    prepared: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, _ = prepared
    result = run_cli("data", "report", "out", cwd=out.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (out / "report.txt").read_text(encoding="utf-8")
    text = result.stdout
    assert text.startswith("data report for out\nsources: corpus\nread: 12 documents")
    assert "problems: 4" in text and "word_count: 1 documents removed" in text
    assert "near_duplicate: 1 documents removed" in text and "out: 9 documents" in text

    (out.parent / "elsewhere").mkdir(exist_ok=True)
    line = user_error(run_cli("data", "report", "elsewhere", cwd=out.parent))
    assert "elsewhere is not a prepared data folder" in line


def test_nothing_left_names_the_rule_and_keeps_the_old_output(
    prepared: tuple[Path, subprocess.CompletedProcess[str]], tokenizer_file: Path
) -> None:
    out, _ = prepared
    cwd = out.parent
    (cwd / "shorts").mkdir(exist_ok=True)
    for i in range(3):
        (cwd / "shorts" / f"{i}.txt").write_text(f"Message number {i}, a short one.")
    before = snapshot(cwd)
    # --overwrite: the old output may be replaced, but only by a preparation that succeeds.
    result = run_cli(
        "data", "prepare", "shorts", "--tokenizer", tokenizer_file, "--out", "out",
        "--overwrite", cwd=cwd,
    )  # fmt: skip
    line = user_error(result)
    assert "all 3 were removed by clean" in line and "word_count removed 3" in line
    assert "clean.min_words" in line and "--clean.filters false" in line
    assert snapshot(cwd) == before  # the earlier output is untouched, no staging folder left
    assert not [p for p in cwd.iterdir() if ".partial-" in p.name]

    # Relaxing the key it named lets them through.
    result = run_cli(
        "data", "prepare", "shorts", "--tokenizer", tokenizer_file, "--out", "out2",
        "--clean.min_words", "3", "--clean.min_stop_words", "0", cwd=cwd,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads((cwd / "out2" / "report.json").read_text())["totals"]["documents_out"] == 3


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (
            ["--clean.min_word", "5"],
            ["unknown key clean.min_word", "did you mean clean.min_words?"],
        ),
        (["--dedup.treshold", "0.5"], ["did you mean dedup.threshold?"]),
        (["--clean.skip", "stopwords"], ["unknown rules ['stopwords']", "stop_words"]),
        (["--dedup.threshold", "1.5"], ["dedup.threshold must be in (0, 1)"]),
        (
            ["--model.n_layer", "3"],
            ["takes only --clean.*, --data.* and --dedup.* keys", "--model.n_layer"],
        ),
        (["--clean.max_top_ngram_char_fraction", "0.2,0.2"], ["takes 3 numbers"]),
    ],
    ids=["typo", "dedup-typo", "unknown-rule", "bad-threshold", "other-section", "ngram-list"],
)
def test_bad_keys_are_refused_before_any_work(
    args: list[str], fragments: list[str], tmp_path: Path, tokenizer_file: Path
) -> None:
    (tmp_path / "a.txt").write_text("some text")
    result = run_cli(
        "data",
        "prepare",
        "a.txt",
        "--tokenizer",
        tokenizer_file,
        "--out",
        "out",
        *args,
        cwd=tmp_path,
    )
    line = user_error(result)
    for fragment in fragments:
        assert fragment in line
    assert not (tmp_path / "out").exists()


# --- the library -------------------------------------------------------------------------------


def test_recipe_sections_configure_the_pipeline(tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        '[data]\nsources = ["x"]\ninclude = ["*.jsonl"]\ntext_field = "body"\n'
        "[clean]\nfilters = false\nmin_words = 5\n[dedup]\nnear = false\nthreshold = 0.9\n"
    )
    config = load_config(recipe)
    settings = PipelineSettings.from_config(config.data, config.clean, config.dedup)
    assert settings.include == ["*.jsonl"] and settings.text_field == "body"
    assert settings.clean is not None and settings.clean.min_words == 5
    assert "word_count" in settings.clean.skip  # filters = false skips every rule
    assert settings.near is None and settings.exact and settings.lines is not None
    recipe.write_text("[dedup]\nthreshhold = 0.9\n")
    with pytest.raises(ScratchLMError, match=r"did you mean dedup\.threshold\?"):
        load_config(recipe)


def test_workers_give_the_same_result_as_one_process(planted: Planted, tmp_path: Path) -> None:
    results = []
    for workers in (1, 2):
        settings = PipelineSettings([str(planted.folder)], workers=workers, batch_chars=4000)
        corpus = run_pipeline(settings, tmp_path / f"w{workers}")
        texts = list(corpus)
        reports = {name: r.to_json() for name, r in corpus.reports.items()}
        results.append((texts, reports, corpus.read.to_json()))
        assert len(corpus) == len(texts) == len(planted.expected)
    assert results[0] == results[1]
    assert results[0][0] == planted.expected


def test_failed_preparation_leaves_the_output_alone(
    planted: Planted, tokenizer_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import scratchlm.data.dataset as dataset

    tokenizer = BPETokenizer.load(tokenizer_file)
    settings = PipelineSettings([str(planted.folder)], workers=1)
    out = tmp_path / "out"
    prepare_dataset(settings, tokenizer, out, 0.2, 1337, on_problem=lambda _: None)
    before = snapshot(tmp_path)

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(dataset, "prepare_shards", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(
            settings, tokenizer, out, 0.2, 1337, on_problem=lambda _: None, overwrite=True
        )
    assert snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_preparing_again_replaces_our_files_and_keeps_others(
    planted: Planted, tokenizer_file: Path, tmp_path: Path
) -> None:
    tokenizer = BPETokenizer.load(tokenizer_file)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.md").write_text("mine")
    (out / "train_000007.bin").write_bytes(b"stale shard")
    settings = PipelineSettings([str(planted.folder)], workers=1)
    prepare_dataset(settings, tokenizer, out, 0.2, 1337, on_problem=lambda _: None, overwrite=True)
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "lengths.png", "meta.json", "notes.md", "report.json", "report.txt",
        "train_000000.bin", "val_000000.bin",
    ]  # fmt: skip
    assert load_report(out)["totals"]["documents_out"] == len(planted.expected)


def test_output_inside_a_source_folder_is_not_read_back(
    planted: Planted, tokenizer_file: Path, tmp_path: Path
) -> None:
    tokenizer = BPETokenizer.load(tokenizer_file)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, text in enumerate(planted.expected[:4]):
        (corpus / f"{i}.txt").write_text(text)
    settings = PipelineSettings([str(corpus)], workers=1)
    for _ in range(2):
        report = prepare_dataset(
            settings, tokenizer, corpus / "prepared", 0.25, 1, on_problem=print, overwrite=True
        )
        assert report["read"]["documents"] == 4  # not report.txt of the first run


def test_stages_can_be_switched_off(planted: Planted, tmp_path: Path) -> None:
    settings = PipelineSettings(
        [str(planted.folder)], clean=None, exact=False, lines=None, near=None, workers=1
    )
    corpus = run_pipeline(settings, tmp_path)
    assert len(corpus) == planted.read and corpus.reports == {}
    texts = list(corpus)
    assert "Far too short to keep." in texts and docs_equal_ignoring_case(texts)


def docs_equal_ignoring_case(texts: list[str]) -> bool:
    return len({t.lower() for t in texts}) < len(texts)  # the capitalised copy is still there


def test_spill_round_trips_any_text(tmp_path: Path) -> None:
    documents = [
        Document("plain", "a"),
        Document("line\nbreaks\r\nand \u2028 separators \x85 and \x1c", "b:2"),
        Document('quotes " \\ and emoji 👋 and a lone \ud800 surrogate', "c#row 3"),
    ]
    with SpillWriter(tmp_path / "s.jsonl.zst") as writer:
        for document in documents:
            writer.write(document)
    spilled = SpilledDocuments(tmp_path / "s.jsonl.zst")
    assert list(spilled) == documents and list(spilled) == documents


def test_line_counts_fold_without_losing_counts() -> None:
    texts = [
        f"shared line number {i % 7} with enough characters\nunique line {i}" * 2
        for i in range(300)
    ]
    counts = LineDocumentCounts()
    counts.fold_at = 50  # fold often
    expected: Counter[int] = Counter()
    for text in texts:
        keys = document_line_keys(text, 30)
        counts.add(keys)
        expected.update(keys.tolist())
    assert counts.above(1) == {k: n for k, n in expected.items() if n > 1}
    assert len(counts.above(1)) == 7 and set(counts.above(1).values()) == {300 // 7, 300 // 7 + 1}


def test_merged_reports_equal_one_report() -> None:
    from scratchlm.data.clean import clean

    documents = [Document(t, f"d{i}") for i, t in enumerate([*good_topics(6), "short", " "])]
    whole = RemovalReport("clean")
    list(clean(documents, CleanConfig(), whole))
    merged = RemovalReport("clean")
    for part in (documents[:3], documents[3:]):
        report = RemovalReport("clean")
        list(clean(part, CleanConfig(), report))
        merged.merge(report)
    assert merged.to_json() == whole.to_json() and merged.balances()
    assert RemovalReport.from_json(whole.to_json()).to_json() == whole.to_json()


def test_boilerplate_lines_go_from_every_reading(planted: Planted, tmp_path: Path) -> None:
    from scratchlm.data.dedup import RepeatedLineConfig, remove_repeated_lines

    header = "Printed from the documentation mirror at docs.example.org, all rights reserved."
    texts = [f"{header}\n{text}" if i % 2 else text for i, text in enumerate(planted.expected)]
    texts.append(header)  # nothing but boilerplate: dropped
    folder = tmp_path / "stamped"
    folder.mkdir()
    for i, text in enumerate(texts):
        (folder / f"{i:02d}.txt").write_text(text)
    lines = RepeatedLineConfig(max_documents=2)
    settings = PipelineSettings([str(folder)], clean=None, lines=lines, workers=1)
    corpus = run_pipeline(settings, tmp_path / "work")
    assert list(corpus) == list(corpus) == planted.expected
    assert len(corpus.changed) == len(planted.expected) // 2 + 1
    docs = [Document(t, str(i)) for i, t in enumerate(texts)]
    assert list(corpus) == [d.text for d in remove_repeated_lines(docs, lines)]
    report = corpus.reports["repeated_lines"]
    assert report.reasons["repeated_line"].documents == 1
    assert report.reasons["repeated_line"].edited == len(planted.expected) // 2
    assert report.reasons["repeated_line"].examples[0]["line"] == header
    assert report.balances()


def test_stdin_globs_and_text_field(planted: Planted, tokenizer_file: Path, tmp_path: Path) -> None:
    texts = planted.expected[:4]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text(
        "".join(json.dumps({"body": t}) + "\n" for t in texts[:2])
    )
    (tmp_path / "in" / "b.jsonl").write_text(json.dumps({"body": texts[2]}) + "\n")
    (tmp_path / "in" / "c.txt").write_text(texts[3])
    result = run_cli(
        "data", "prepare", "in", "--include", "*.jsonl", "--exclude", "b.*",
        "--text-field", "body", "--tokenizer", tokenizer_file, "--out", "from-files",
        "--no-dedup", "--no-filters", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = load_report(tmp_path / "from-files")
    assert report["read"]["documents"] == 2 and report["totals"]["documents_out"] == 2
    assert [s["stage"] for s in report["stages"]] == ["clean"]
    assert (
        "stages switched off: exact_dedup, repeated_lines, near_dedup"
        in (tmp_path / "from-files" / "report.txt").read_text()
    )

    stdin = "".join(json.dumps({"text": t}) + "\n" for t in [*texts, texts[0]]).encode()
    done = subprocess.run(
        [sys.executable, "-m", "scratchlm", "data", "prepare", "-", "--stdin-format", "jsonl",
         "--tokenizer", str(tokenizer_file), "--out", "from-stdin"],
        cwd=tmp_path, input=stdin, capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = load_report(tmp_path / "from-stdin")
    assert report["read"]["documents"] == 5 and report["totals"]["documents_out"] == 4
    assert report["stages"][1]["reasons"]["exact_duplicate"]["examples"][0]["origin"] == "<stdin>:5"
