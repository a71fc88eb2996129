"""Deduplication, scored on real text with planted duplicates (and MinHash against references).

The corpus: Python's help topics (pydoc_data.topics, ~460 kB of real English, no download),
then, in a seeded random order, copies of every topic of 100+ words, of four kinds:

    copy         the same text
    light_edit   "a few words" changed, inserted or deleted: 1% of the words, at least two
    shuffled     the same paragraphs in another order
    heavy_edit   5% of the words edited

With 5-word shingles one edited word changes up to 5 shingles, so a 1% edit leaves the Jaccard
similarity near 0.9, and a 5% edit near 0.65: heavy edits are NOT near-duplicates at threshold
0.8, and dedup should keep them. Each planted document records its exact similarity to its
original, so dedup is scored both against the plan and against the definition.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pydoc_data.topics import topics
from typing import Any

import numpy as np
import pytest

from scratchlm.core.errors import ScratchLMError
from scratchlm.data.dedup import (
    EXACT_DUPLICATE,
    NEAR_DUPLICATE,
    REPEATED_LINE,
    NearDedupConfig,
    NearDuplicateIndex,
    RepeatedLineConfig,
    content_key,
    exact_dedup,
    near_dedup,
    remove_repeated_lines,
)
from scratchlm.data.minhash import (
    MERSENNE_61,
    MinHasher,
    candidate_probability,
    estimated_jaccard,
    jaccard,
    lsh_bands,
    shingle_hashes,
    shingle_words,
)
from scratchlm.data.readers import Document
from scratchlm.data.removals import RemovalReport

KINDS = ("copy", "light_edit", "shuffled", "heavy_edit")


# --- the planted corpus ------------------------------------------------------------------------


@dataclass(frozen=True)
class Planted:
    position: int  # where the copy is in the corpus
    original: int  # where its original is
    kind: str
    jaccard: float  # exact, with the original, on 5-word shingles


def pydoc_documents() -> list[Document]:
    return [Document(text, f"pydocs/{name}") for name, text in sorted(topics.items())]


def edit_words(text: str, fraction: float, rng: random.Random) -> str:
    """Replace, insert or delete (equally often) a `fraction` of the words, at least two."""
    pieces = text.split(" ")  # line breaks stay inside pieces, so the layout survives
    vocabulary = text.split()
    for _ in range(max(2, round(fraction * len(vocabulary)))):
        i = rng.randrange(len(pieces))
        operation = rng.randrange(3)
        if operation == 0:
            pieces[i] = rng.choice(vocabulary)
        elif operation == 1:
            pieces.insert(i, rng.choice(vocabulary))
        elif len(pieces) > 1:
            del pieces[i]
    return " ".join(pieces)


def shuffle_paragraphs(text: str, rng: random.Random) -> str:
    paragraphs = text.split("\n\n")
    rng.shuffle(paragraphs)
    return "\n\n".join(paragraphs)


@cache
def planted_corpus(seed: int = 1234) -> tuple[tuple[Document, ...], tuple[Planted, ...]]:
    rng = random.Random(seed)
    documents = pydoc_documents()
    plans = []
    for original, document in enumerate(documents):
        if len(shingle_words(document.text)) < 100:
            continue
        plans += [
            (original, "copy", document.text),
            (original, "light_edit", edit_words(document.text, 0.01, rng)),
            (original, "shuffled", shuffle_paragraphs(document.text, rng)),
            (original, "heavy_edit", edit_words(document.text, 0.05, rng)),
        ]
    rng.shuffle(plans)
    planted = []
    for original, kind, text in plans:
        similarity = jaccard(shingle_hashes(documents[original].text), shingle_hashes(text))
        planted.append(Planted(len(documents), original, kind, similarity))
        documents.append(Document(text, f"{documents[original].origin}#{kind}"))
    return tuple(documents), tuple(planted)


def real_duplicates(documents: Iterable[Document], threshold: float) -> set[int]:
    """Base documents that already have an earlier near-duplicate among the base documents."""
    sets = [shingle_hashes(d.text) for d in documents]
    return {
        i for i in range(len(sets)) if any(jaccard(sets[j], sets[i]) >= threshold for j in range(i))
    }


@dataclass
class Score:
    recall: dict[str, float]  # per kind: share of the planted copies that were removed
    recall_above_09: float  # share removed among planted copies with exact J >= 0.9
    precision: float  # share of the removed documents that are planted or real duplicates
    removed: set[int]


def score(removed: set[int], planted: Iterable[Planted], real: set[int]) -> Score:
    planted = list(planted)
    recall = {
        kind: float(np.mean([p.position in removed for p in planted if p.kind == kind]))
        for kind in KINDS
    }
    above = [p.position in removed for p in planted if p.jaccard >= 0.9]
    expected = {p.position for p in planted} | real
    precision = len(removed & expected) / len(removed) if removed else 1.0
    return Score(recall, float(np.mean(above)), precision, removed)


Corpus = tuple[tuple[Document, ...], tuple[Planted, ...]]


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return planted_corpus()


@pytest.fixture(scope="module")
def shingles(corpus: Corpus) -> list[np.ndarray]:
    return [shingle_hashes(d.text) for d in corpus[0]]


def test_planted_corpus_is_what_the_docstring_says(corpus: Corpus) -> None:
    documents, planted = corpus
    assert len(planted) == 4 * sum(len(shingle_words(t)) >= 100 for t in topics.values()) >= 240
    by_kind = {k: np.array([p.jaccard for p in planted if p.kind == k]) for k in KINDS}
    assert (by_kind["copy"] == 1.0).all()
    assert np.median(by_kind["light_edit"]) > 0.88
    assert np.median(by_kind["heavy_edit"]) < 0.72
    # The help topics hold one real duplicate pair: "if" and "else" are the same text.
    assert real_duplicates(documents[: len(topics)], 0.8) == {
        next(i for i, d in enumerate(documents) if d.origin == "pydocs/if")
    }


# --- near duplicates: precision and recall -----------------------------------------------------


@dataclass
class Run:
    removed: set[int]  # positions in the corpus
    report: RemovalReport


@pytest.fixture(scope="module")
def default_run(corpus: Corpus) -> Run:
    """near_dedup with the default config (threshold 0.8, 5-word shingles, 128 permutations)."""
    documents, _ = corpus
    report = RemovalReport("near_dedup")
    kept = {d.origin for d in near_dedup(list(documents), NearDedupConfig(), report)}
    return Run({i for i, d in enumerate(documents) if d.origin not in kept}, report)


def assert_scores(removed: set[int], corpus: Corpus) -> None:
    documents, planted = corpus
    real = real_duplicates(documents[: len(topics)], 0.8)
    s = score(removed, planted, real)
    assert s.recall["copy"] == 1.0
    assert s.recall["light_edit"] >= 0.95
    assert s.recall_above_09 >= 0.95  # whatever the kind, clear near-duplicates go
    assert s.precision >= 0.95
    # Heavy edits are below the threshold by construction: nearly all of them stay.
    assert s.recall["heavy_edit"] <= 0.1
    # Every original is kept (copies come after it), except the real "if" == "else" duplicate.
    assert removed & set(range(len(topics))) == real


def test_near_dedup_recall_and_precision_on_planted_copies(
    corpus: Corpus, default_run: Run
) -> None:
    assert_scores(default_run.removed, corpus)
    # The report agrees with what was yielded, and balances.
    report = default_run.report
    assert report.documents_out == len(corpus[0]) - len(default_run.removed)
    assert report.reasons[NEAR_DUPLICATE].documents == len(default_run.removed)
    assert report.balances()
    assert (report.details["bands"], report.details["rows"]) == (11, 11)
    example = report.reasons[NEAR_DUPLICATE].examples[0]
    assert example["duplicate_of"].startswith("pydocs/") and example["similarity"] >= 0.7
    json.dumps(report.to_json())


def test_exactly_verified_near_dedup(corpus: Corpus) -> None:
    documents, _ = corpus
    index = NearDuplicateIndex(NearDedupConfig(verify="exact"))
    for document in documents:
        index.add(document.text)
    assert_scores({i for i in range(len(documents)) if index.is_duplicate(i)}, corpus)
    # A duplicate was matched with exact J >= 0.8; a document that matched nothing is kept.
    for i in range(len(documents)):
        match = index.match(i)
        if index.is_duplicate(i):
            assert match is not None and match[1] >= 0.8
        if match is None:
            assert not index.is_duplicate(i)


def test_exact_dedup_then_near_dedup_as_a_pipeline(corpus: Corpus) -> None:
    documents, planted = corpus
    exact_report, near_report = RemovalReport("exact_dedup"), RemovalReport("near_dedup")
    after_exact = list(exact_dedup(documents, exact_report))
    kept = list(near_dedup(after_exact, NearDedupConfig(), near_report))
    copies = {documents[p.position].origin for p in planted if p.kind == "copy"}
    exact_removed = {d.origin for d in documents} - {d.origin for d in after_exact}
    # Exact dedup takes every verbatim copy (and "if", a verbatim copy of "else"), nothing else.
    assert exact_removed == copies | {"pydocs/if"}
    assert exact_report.reasons[EXACT_DUPLICATE].documents == len(copies) + 1
    assert exact_report.balances() and near_report.balances()
    assert near_report.documents_in == exact_report.documents_out
    assert len(kept) == near_report.documents_out


# --- MinHash against exact Jaccard and against datasketch --------------------------------------


@pytest.fixture(scope="module")
def pairs(corpus: Corpus) -> list[tuple[int, int]]:
    """(original, planted copy) pairs, J 0.5..1, plus unrelated pairs of topics, J ~ 0."""
    rng = random.Random(7)
    related = [(p.original, p.position) for p in corpus[1] if p.kind != "copy"]
    unrelated = [rng.sample(range(len(topics)), 2) for _ in range(100)]
    return related + [(a, b) for a, b in unrelated]


@pytest.fixture(scope="module")
def exact_similarity(pairs: list[tuple[int, int]], shingles: list[np.ndarray]) -> np.ndarray:
    return np.array([jaccard(shingles[a], shingles[b]) for a, b in pairs])


@pytest.fixture(scope="module")
def our_estimates(pairs: list[tuple[int, int]], shingles: list[np.ndarray]) -> np.ndarray:
    hasher = MinHasher(num_perm=128, seed=0)
    signatures = {i: hasher.signature(shingles[i]) for pair in pairs for i in pair}
    return np.array([estimated_jaccard(signatures[a], signatures[b]) for a, b in pairs])


@pytest.fixture(scope="module")
def sketches(shingles: list[np.ndarray]) -> list[Any]:
    """datasketch's MinHash of every document's shingles (the same sets ours are made from)."""
    datasketch = pytest.importorskip("datasketch")
    result = []
    for hashes in shingles:
        sketch = datasketch.MinHash(num_perm=128, seed=1)
        sketch.update_batch([int(x).to_bytes(8, "little") for x in hashes])
        result.append(sketch)
    return result


def test_minhash_estimates_exact_jaccard(
    exact_similarity: np.ndarray, our_estimates: np.ndarray
) -> None:
    errors = our_estimates - exact_similarity
    assert np.abs(errors).mean() < 0.05
    assert abs(errors.mean()) < 0.01  # unbiased: errors cancel out on average
    # The spread matches the binomial standard error sqrt(J(1-J)/128) of the theory.
    exact = exact_similarity
    middle = (exact > 0.3) & (exact < 0.95)
    predicted = np.sqrt(exact[middle] * (1 - exact[middle]) / 128)
    assert 0.7 < np.sqrt(np.mean(errors[middle] ** 2) / np.mean(predicted**2)) < 1.3


def test_minhash_agrees_with_datasketch(
    pairs: list[tuple[int, int]],
    exact_similarity: np.ndarray,
    our_estimates: np.ndarray,
    sketches: list[Any],
) -> None:
    theirs = np.array([sketches[a].jaccard(sketches[b]) for a, b in pairs])
    ours_error = np.abs(our_estimates - exact_similarity).mean()
    theirs_error = np.abs(theirs - exact_similarity).mean()
    # Two different hash families estimating the same sets: equally accurate, and close.
    assert ours_error < 0.05 and theirs_error < 0.05
    assert abs(ours_error - theirs_error) < 0.015
    assert np.abs(our_estimates - theirs).mean() < 0.06


@pytest.mark.parametrize(
    ("threshold", "num_perm", "weights"),
    [
        (0.5, 128, (0.5, 0.5)),
        (0.8, 128, (0.5, 0.5)),
        (0.8, 128, (0.3, 0.7)),
        (0.9, 64, (0.5, 0.5)),
        (0.95, 128, (0.3, 0.7)),
        (0.7, 256, (0.5, 0.5)),
    ],
)
def test_lsh_bands_match_datasketch(
    threshold: float, num_perm: int, weights: tuple[float, float]
) -> None:
    datasketch = pytest.importorskip("datasketch")
    lsh = datasketch.MinHashLSH(threshold=threshold, num_perm=num_perm, weights=weights)
    assert lsh_bands(threshold, num_perm, *weights) == (lsh.b, lsh.r)


def test_near_dedup_agrees_with_datasketch_lsh(
    corpus: Corpus, sketches: list[Any], default_run: Run
) -> None:
    """The same search (keep the first, LSH candidates checked by estimated J) built from
    datasketch's MinHash and MinHashLSH removes nearly the same documents."""
    datasketch = pytest.importorskip("datasketch")
    _, planted = corpus
    lsh = datasketch.MinHashLSH(threshold=0.8, num_perm=128, weights=(0.3, 0.7))
    theirs = set()
    for i, sketch in enumerate(sketches):
        if any(sketch.jaccard(sketches[j]) >= 0.8 for j in lsh.query(sketch)):
            theirs.add(i)
        else:
            lsh.insert(i, sketch)
    ours = default_run.removed
    # Both remove about as many; they disagree only where each is tossing a coin: on pairs
    # within 0.1 of the threshold, whose estimated J falls on either side by chance.
    assert abs(len(ours) - len(theirs)) <= 0.05 * len(ours)
    similarity = {p.position: p.jaccard for p in planted}
    assert all(0.7 <= similarity.get(i, 0.0) <= 0.9 for i in ours ^ theirs)
    assert len(ours ^ theirs) <= 0.15 * len(ours)


# --- MinHash and LSH pieces --------------------------------------------------------------------


def test_universal_hash_is_exact_modular_arithmetic() -> None:
    rng = random.Random(0)
    values = [0, 1, MERSENNE_61 - 1, MERSENNE_61, MERSENNE_61 + 1, 2**64 - 1]
    values += [rng.randrange(2**64) for _ in range(2000)]
    hasher = MinHasher(num_perm=8, seed=3)
    signature = hasher.signature(np.array(values, dtype=np.uint64))
    for k in range(8):
        a, b = int(hasher.a[k, 0]), int(hasher.b[k, 0])
        expected = min((a * (x % MERSENNE_61) + b) % MERSENNE_61 for x in values)
        assert int(signature[k]) == expected


def test_shingles_ignore_case_and_punctuation_but_not_order() -> None:
    text = "The quick brown fox jumps over the lazy dog"
    assert np.array_equal(
        shingle_hashes(text, 3),
        shingle_hashes("the QUICK, brown fox -- jumps over the lazy dog!", 3),
    )
    assert (
        jaccard(
            shingle_hashes(text, 3),
            shingle_hashes("dog lazy the over jumps fox brown quick the", 3),
        )
        == 0
    )
    assert shingle_hashes(text, 3).size == 7
    assert shingle_hashes("two words", 5).size == 1  # shorter than a shingle: one shingle
    assert shingle_hashes("... !!!", 5).size == 0
    assert jaccard(shingle_hashes(""), shingle_hashes("")) == 1.0


def test_signatures_are_deterministic_and_independent_of_python_hash_seed() -> None:
    text = topics["exceptions"]
    signature = MinHasher(128, seed=5).text_signature(text)
    assert np.array_equal(signature, MinHasher(128, seed=5).text_signature(text))
    assert not np.array_equal(signature, MinHasher(128, seed=6).text_signature(text))
    # A new process, with another salt for Python's str hash, computes the same signature.
    code = (
        "from pydoc_data.topics import topics; from scratchlm.data.minhash import MinHasher; "
        "print(MinHasher(128, seed=5).text_signature(topics['exceptions'])[:8].tolist())"
    )
    output = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    ).stdout
    assert json.loads(output) == signature[:8].tolist()


def test_lsh_curve_is_steep_around_the_threshold() -> None:
    bands, rows = lsh_bands(0.8, 128, 0.3, 0.7)
    assert bands * rows <= 128
    assert candidate_probability(0.5, bands, rows) < 0.01
    assert candidate_probability(0.95, bands, rows) > 0.999
    assert 0.3 < candidate_probability(0.8, bands, rows) < 0.8
    # Weighing false negatives more moves the curve left: more candidates at each similarity.
    b5, r5 = lsh_bands(0.8, 128, 0.5, 0.5)
    assert candidate_probability(0.85, bands, rows) > candidate_probability(0.85, b5, r5)


# --- clusters ----------------------------------------------------------------------------------


def test_union_find_keeps_the_first_of_a_chained_cluster() -> None:
    """A ~ B and B ~ C but not A ~ C: one cluster, and only its first document stays.

    Order A, C, B: when C arrives it matches nothing; B then joins both, so C (already seen)
    must still go, which a one-pass filter could not do.
    """
    words = [f"w{i}" for i in range(120)]
    a, b, c = " ".join(words[0:100]), " ".join(words[5:105]), " ".join(words[12:112])
    single = lambda x, y: jaccard(shingle_hashes(x, 1), shingle_hashes(y, 1))  # noqa: E731
    assert single(a, b) > 0.85 and single(b, c) > 0.85 and single(a, c) < 0.8
    # 64 bands of 2 rows: every pair here is a candidate, so the test is about verification.
    config = NearDedupConfig(threshold=0.8, shingle_size=1, verify="exact", bands=64, rows=2)
    index = NearDuplicateIndex(config)
    for text in (a, c, b):
        index.add(text)
    assert index.clusters() == {0: [0, 1, 2]}
    c_match = index.match(1)  # C was matched only later, by B
    assert c_match is not None and c_match[0] == 2 and c_match[1] == pytest.approx(single(b, c))
    kept = list(near_dedup([Document(t, n) for t, n in ((a, "A"), (c, "C"), (b, "B"))], config))
    assert [d.origin for d in kept] == ["A"]


def test_identical_documents_cost_one_comparison_each() -> None:
    text = topics["exceptions"]
    index = NearDuplicateIndex(NearDedupConfig())
    for _ in range(200):
        index.add(text)
    assert index.clusters() == {0: list(range(200))}
    assert index.candidate_pairs == 199  # one bucket member per cluster, not all earlier copies


def test_near_dedup_needs_documents_it_can_read_twice() -> None:
    with pytest.raises(TypeError, match="reads the documents twice"):
        list(near_dedup(iter(pydoc_documents())))
    with pytest.raises(TypeError, match="reads the documents twice"):
        list(remove_repeated_lines(d for d in pydoc_documents()))


def test_near_dedup_notices_documents_that_changed_between_passes() -> None:
    class Shrinking:
        def __init__(self) -> None:
            self.reads = 0

        def __iter__(self):  # type: ignore[no-untyped-def]
            self.reads += 1
            docs = pydoc_documents()
            return iter(docs if self.reads == 1 else docs[:10])

    with pytest.raises(ScratchLMError, match="must be the same both times"):
        list(near_dedup(Shrinking()))  # type: ignore[arg-type]


def test_near_dedup_config_is_checked() -> None:
    with pytest.raises(ScratchLMError, match="threshold"):
        NearDedupConfig(threshold=1.5)
    with pytest.raises(ScratchLMError, match="both"):
        NearDedupConfig(bands=4)
    with pytest.raises(ScratchLMError, match="at most num_perm"):
        NearDedupConfig(bands=20, rows=10)
    with pytest.raises(ScratchLMError, match="verify"):
        NearDedupConfig(verify="maybe")  # type: ignore[arg-type]


# --- exact duplicates --------------------------------------------------------------------------


def test_content_key_ignores_case_spacing_and_unicode_form() -> None:
    assert content_key("Café  au\nlait") == content_key("café au lait ")
    assert content_key("Cafe\u0301 au lait") == content_key("Café au lait")
    assert content_key("café au lait") != content_key("café au laid")


def test_exact_dedup_removes_reformatted_copies_and_keeps_first() -> None:
    documents = pydoc_documents()
    rng = random.Random(3)
    copies = []
    for i in rng.sample(range(len(documents)), 20):
        text = documents[i].text
        variant = rng.choice([text.upper(), "  " + text.replace("\n", "\r\n  "), text + "\n\n\n"])
        copies.append(Document(variant, f"copy of {documents[i].origin}"))
    stream = documents + copies
    report = RemovalReport("exact_dedup")
    kept = list(exact_dedup(iter(stream), report))  # one pass: any iterator will do
    assert [d.origin for d in kept] == [d.origin for d in documents if d.origin != "pydocs/if"]
    reason = report.reasons[EXACT_DUPLICATE]
    assert reason.documents == 21
    assert reason.examples[0]["duplicate_of"] == "pydocs/else"  # "if" is the text of "else"
    assert report.balances()
    assert report.details["distinct_documents"] == len(kept)


# --- repeated lines ----------------------------------------------------------------------------

BOILERPLATE_HEADER = [
    "Copyright (c) 2001-2024 Python Software Foundation; All Rights Reserved.",
    "This page is part of the documentation mirror at docs.example.org.",
]
BOILERPLATE_FOOTER = "Found a bug? Report it on the issue tracker, and thank you for reading."


def test_repeated_lines_are_removed_and_nothing_else() -> None:
    documents = pydoc_documents()
    rng = random.Random(5)
    stamped, planted_lines, planted_bytes = [], 0, 0
    for document in documents:
        lines = document.text.split("\n")
        if rng.random() < 0.4:
            lines = BOILERPLATE_HEADER + lines
            planted_lines += len(BOILERPLATE_HEADER)
            planted_bytes += sum(len(line) + 1 for line in BOILERPLATE_HEADER)
        if rng.random() < 0.4:
            lines = [*lines, BOILERPLATE_FOOTER]
            planted_lines += 1
            planted_bytes += len(BOILERPLATE_FOOTER) + 1
        stamped.append(Document("\n".join(lines), document.origin))
    stamped.append(Document("\n".join(BOILERPLATE_HEADER), "nothing-but-boilerplate.txt"))
    planted_bytes += sum(len(line) + 1 for line in BOILERPLATE_HEADER) - 1

    report = RemovalReport("repeated_lines")
    kept = list(remove_repeated_lines(stamped, RepeatedLineConfig(max_documents=10), report))
    # Every planted line is gone and every original line is still there (the help topics
    # share no 30+ character line between more than 10 topics): the output is the original.
    assert [d.text for d in kept] == [d.text for d in documents]
    reason = report.reasons[REPEATED_LINE]
    assert reason.lines == planted_lines + len(BOILERPLATE_HEADER)
    assert reason.bytes == planted_bytes
    assert reason.documents == 1  # the document that was only boilerplate
    # Examples: each boilerplate line once (with its document count), then the emptied document.
    assert [e.get("line") for e in reason.examples] == [
        *BOILERPLATE_HEADER,
        BOILERPLATE_FOOTER,
        None,
    ]
    assert reason.examples[0]["documents"] > 10
    assert report.balances()
    assert report.details["boilerplate_lines"] == 3


def test_short_lines_and_rare_lines_stay() -> None:
    documents = [Document(f"Exeunt.\n{'=' * 30}\nline {i} of a play", f"{i}") for i in range(30)]
    kept = list(remove_repeated_lines(documents, RepeatedLineConfig(max_documents=30)))
    assert kept == documents  # "=" * 30 is in 30 documents, which is not more than 30
    kept = list(remove_repeated_lines(documents, RepeatedLineConfig(max_documents=5)))
    assert [d.text for d in kept] == [f"Exeunt.\nline {i} of a play" for i in range(30)]
