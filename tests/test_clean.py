"""Cleaning: exact normalisation cases, each quality rule on a crafted bad document, real text.

The crafted documents start from real prose (the "exceptions" help topic, which passes every
rule) and break it in one way, so each test shows what a rule is for.
"""

from __future__ import annotations

import json
import re
from pydoc_data.topics import topics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchlm.core.errors import ScratchLMError
from scratchlm.data.clean import (
    EMPTY,
    NORMALISED,
    STOP_WORDS,
    CleanConfig,
    TextView,
    clean,
    clean_documents,
    duplicate_ngram_char_fraction,
    first_failure,
    normalise_text,
    rule_names,
    top_ngram_char_fraction,
)
from scratchlm.data.readers import Document
from scratchlm.data.removals import RemovalReport, utf8_len

GOOD = normalise_text(topics["exceptions"])  # 360 words of real English prose
FAMILY_EMOJI = "\U0001f468\u200d\U0001f469"  # man, zero-width joiner, woman: one glyph
PERSIAN_WORD = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # has a zero-width non-joiner


def pydoc_documents() -> list[Document]:
    return [Document(text, f"pydocs/{name}") for name, text in sorted(topics.items())]


# --- normalisation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Cafe\u0301 nai\u0308ve", "Café naïve"),  # NFD -> NFC: one code point per letter
        ("one\r\ntwo\rthree\nfour", "one\ntwo\nthree\nfour"),
        ("page one\fpage two\u2028three\x85four", "page one\npage two\nthree\nfour"),
        ("bell\x07 null\x00 escape\x1b[0m del\x7f c1\x9b", "bell null escape[0m del c1"),
        ("keep\ttabs\tand\nnewlines", "keep\ttabs\tand\nnewlines"),
        (
            "zero\u200bwidth soft\u00adhyphen word\u2060joiner \ufeffbom",
            "zerowidth softhyphen wordjoiner bom",
        ),
        (FAMILY_EMOJI + " " + PERSIAN_WORD, FAMILY_EMOJI + " " + PERSIAN_WORD),  # ZWJ, ZWNJ stay
        ("trailing   \nspaces\t \nand\u00a0\nnbsp", "trailing\nspaces\nand\nnbsp"),
        ("a\n\n\n\n\n\nb\n\n\nc\n\nd", "a\n\n\nb\n\n\nc\n\nd"),  # at most 2 blank lines
        ("a\n  \n \t\n\n\n\nb", "a\n\n\nb"),  # whitespace-only lines are blank lines
        ("\n\n  indented first line\nlast\n\n\n", "  indented first line\nlast"),
        ("broken \udc80 surrogate", "broken \ufffd surrogate"),
        ("", ""),
    ],
)
def test_normalise_text_exact_cases(raw: str, expected: str) -> None:
    assert normalise_text(raw) == expected


def test_normalise_options() -> None:
    assert normalise_text("a\n\n\n\nb", CleanConfig(max_blank_lines=0)) == "a\nb"
    assert normalise_text("Cafe\u0301", CleanConfig(unicode_form="none")) == "Cafe\u0301"
    assert normalise_text("ﬁ ①", CleanConfig(unicode_form="NFKC")) == "fi 1"


# Any string at all: every category, surrogates and control characters included.
any_text = st.text(st.characters(exclude_categories=()), max_size=200) | st.text(
    st.sampled_from(["\r", "\n", " ", "\t", "\x00", "\u200b", "e", "\u0301", "\udc80", "\x85"]),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_normalise_never_crashes_and_is_idempotent(text: str) -> None:
    once = normalise_text(text)
    assert normalise_text(once) == once
    once.encode("utf-8")  # always valid UTF-8: no lone surrogates left
    assert "\r" not in once and not re.search(r"[ \t]\n", once)
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b]", once)


@settings(max_examples=150, deadline=None)
@given(any_text)
def test_clean_never_crashes_on_any_text(text: str) -> None:
    report = RemovalReport("clean")
    (verdict,) = clean([Document(text, "x")], report=report)
    assert verdict.removed_by is not None  # too short to be kept
    assert report.balances()
    json.dumps(report.to_json())


# --- each rule on a crafted document -----------------------------------------------------------


def lines_of(text: str) -> list[str]:
    return [line for line in text.split("\n") if line.strip()]


def repeat_words(phrase: str, share: float) -> str:
    """GOOD plus `phrase` repeated until it holds about `share` of the word characters."""
    chars = TextView(GOOD).word_chars
    phrase_chars = sum(len(w) for w in phrase.split())
    times = int(share * chars / (phrase_chars * (1 - share))) + 1
    return GOOD + "\n\n" + " ".join([phrase] * times)


CRAFTED = {
    "word_count": " ".join(GOOD.split()[:40]),
    "mean_word_length": re.sub(r"\w+", lambda m: m.group()[:2], GOOD),
    "symbol_word_ratio": re.sub(r"(\w+ \w+ \w+ \w+ \w+)", r"\1 #tag", GOOD),
    "bullet_lines": "\n".join("• " + line for line in lines_of(GOOD)),
    "ellipsis_lines": "\n".join(line + " …" for line in lines_of(GOOD)),
    "alpha_words": GOOD + "\n" + " ".join(f"{i * 37 % 1000}.{i % 10}" for i in range(120)),
    "stop_words": " ".join(w for w in GOOD.split() if w.lower().strip(".,;:") not in STOP_WORDS),
    "duplicate_lines": GOOD + "\n" + "\n".join(lines_of(GOOD)[:25]),
    "duplicate_line_chars": GOOD + "\n" + "\n".join(lines_of(GOOD)[:20]),
    "duplicate_paragraphs": GOOD + "\n\n" + "\n\n".join(GOOD.split("\n\n")[:6]),
    "duplicate_paragraph_chars": GOOD + "\n\n" + "\n\n".join(GOOD.split("\n\n")[2:6]),
    "top_2gram_chars": repeat_words("click here", 0.25),
    "top_3gram_chars": repeat_words("buy cheap watches", 0.22),
    "top_4gram_chars": repeat_words("best price guaranteed today", 0.20),
    # The first half again, as one line: no line or paragraph repeats, only the words do.
    **{
        f"duplicate_{n}gram_chars": GOOD + "\n\n" + " ".join(GOOD.split()[:150])
        for n in range(5, 11)
    },
}


def test_every_rule_has_a_crafted_document() -> None:
    assert sorted(CRAFTED) == sorted(rule_names())


def test_real_prose_passes_every_rule() -> None:
    assert first_failure(GOOD) is None


@pytest.mark.parametrize("rule", rule_names())
def test_rule_fires_on_its_crafted_document(rule: str) -> None:
    only_this = CleanConfig(skip=tuple(name for name in rule_names() if name != rule))
    failure = first_failure(normalise_text(CRAFTED[rule]), only_this)
    assert failure is not None and failure.rule == rule
    # ...and with every rule switched on, the document is still removed.
    assert first_failure(normalise_text(CRAFTED[rule])) is not None
    # Switched off, it lets the document through.
    assert first_failure(normalise_text(CRAFTED[rule]), CleanConfig(skip=(rule,))) != failure


def test_word_count_upper_bound() -> None:
    failure = first_failure(GOOD, CleanConfig(max_words=100))
    assert failure is not None and failure.rule == "word_count"
    assert failure.value == len(TextView(GOOD).words) == 356
    assert failure.allowed == "50..100"


def test_first_failing_rule_decides() -> None:
    # 40 words of "#tag": too short AND too many hashes; word_count comes first.
    failure = first_failure(" ".join(["#tag"] * 40))
    assert failure is not None and failure.rule == "word_count"
    failure = first_failure(" ".join(["#tag"] * 40), CleanConfig(skip=("word_count",)))
    assert failure is not None and failure.rule == "symbol_word_ratio"


def test_ngram_measures_on_small_examples() -> None:
    assert top_ngram_char_fraction(TextView("a b c d"), 2) == 0.0  # nothing repeats
    # "ab cd" occurs twice in "ab cd ab cd": all 8 characters.
    assert top_ngram_char_fraction(TextView("ab cd ab cd"), 2) == 1.0
    # The second "one two three four five" repeats the first: half the characters.
    assert duplicate_ngram_char_fraction(TextView("one two three four five " * 2), 5) == 0.5
    assert duplicate_ngram_char_fraction(TextView("one two three four five six"), 5) == 0.0


def test_config_names_unknown_rules() -> None:
    with pytest.raises(ScratchLMError, match=r"unknown rules \['stopwords'\].*stop_words"):
        CleanConfig(skip=("stopwords",))
    with pytest.raises(ScratchLMError, match="unicode_form"):
        CleanConfig(unicode_form="NFX")  # type: ignore[arg-type]


# --- real text and the report ------------------------------------------------------------------


def test_real_text_is_mostly_kept_and_the_report_adds_up() -> None:
    documents = pydoc_documents()
    report = RemovalReport("clean")
    verdicts = list(clean(documents, report=report))
    kept = [v for v in verdicts if v.kept]
    # Gopher's rules were made for web pages; Python's help is prose with code examples, and
    # 66 of its 79 topics pass. The rest are short (< 50 words), mostly tables of symbols, or
    # repeat their own grammar rules.
    assert len(kept) / len(documents) >= 0.8
    removed_by = {v.removed_by for v in verdicts if not v.kept}
    assert removed_by <= {"word_count", "alpha_words"} | {
        f"duplicate_{n}gram_chars" for n in range(5, 11)
    }

    assert report.documents_in == len(documents)
    assert report.bytes_in == sum(utf8_len(d.text) for d in documents)
    assert report.documents_out == len(kept)
    assert report.bytes_out == sum(utf8_len(v.document.text) for v in kept)
    assert report.balances()
    for name in rule_names():
        entry = report.reasons[name]
        assert entry.documents == sum(v.removed_by == name for v in verdicts)
        assert len(entry.examples) == min(entry.documents, report.max_examples)
        for example in entry.examples:
            assert example["origin"].startswith("pydocs/") and example["excerpt"]
    # Normalisation cut trailing spaces and blank lines somewhere, and counts that too.
    assert report.reasons[NORMALISED].edited > 0 and report.reasons[NORMALISED].bytes > 0

    as_json = json.loads(json.dumps(report.to_json()))
    assert as_json["reasons"]["word_count"]["documents"] == report.reasons["word_count"].documents
    summary = report.summary()
    assert summary.startswith(
        f"clean: 79 documents in ({report.bytes_in:,} bytes), {len(kept)} out"
    )
    assert "word_count: " in summary and "e.g. pydocs/" in summary


def test_clean_documents_streams_the_kept_ones() -> None:
    def documents():  # type: ignore[no-untyped-def]
        yield Document("  \n\t\n", "blank")
        yield Document(GOOD.replace("\n", "\r\n") + "   \n\n\n\n", "good")
        yield Document("too short", "short")

    report = RemovalReport("clean")
    kept = list(clean_documents(documents(), report=report))
    assert kept == [Document(GOOD, "good")]
    assert report.reasons[EMPTY].documents == 1
    assert report.reasons["word_count"].examples[0]["origin"] == "short"
    assert report.balances()


@pytest.mark.slow
@pytest.mark.parametrize(("name", "keep"), [("shakespeare", 0.95), ("kjv", 0.7)])
def test_named_corpora_are_mostly_kept(name: str, keep: float) -> None:
    from scratchlm.data.readers import DocumentReader

    verdicts = list(clean(DocumentReader([name])))
    assert sum(v.kept for v in verdicts) / len(verdicts) >= keep
