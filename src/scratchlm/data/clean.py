"""Cleaning: normalise each document's text, then drop documents that are not good prose.

Two steps per document, streaming (one document in memory at a time):

1. `normalise_text` makes equal-looking text equal in code points and removes what no reader
   sees: Unicode NFC (a precomposed "é", not "e" + combining accent, so the tokenizer sees one
   spelling), every line ending as "\\n", control characters and invisible zero-width marks
   deleted (tabs and newlines stay), trailing spaces cut, runs of blank lines capped.

2. `first_failure` applies quality rules in the style of DeepMind's Gopher (Rae et al. 2021,
   "Scaling Language Models", appendix A.1.1: the MassiveWeb quality and repetition filters).
   Each rule measures one number and allows a range; the defaults are Gopher's. They are cheap
   heuristics for "a human wrote this for humans to read": real prose has between 50 and
   100,000 words of 3 to 10 letters on average, few '#' or '...', mostly alphabetic words,
   some of the commonest English words, and it does not repeat itself much. Spam, navigation
   menus, tables of numbers and machine-generated filler fail one of them. Rules run cheapest
   first and the first failure decides, so each removed document has exactly one reason.

`clean` yields a `Verdict` for every document (kept, or the rule that removed it); `clean_documents`
yields only the kept ones. Both fill a `RemovalReport` if given one.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Literal, get_args

import numpy as np
import regex

from scratchlm.core.errors import ScratchLMError
from scratchlm.data.readers import Document
from scratchlm.data.removals import RemovalReport, utf8_len

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

# "none" leaves code points as they are (the TOML spelling, so the [clean] section can be this).
UnicodeForm = Literal["NFC", "NFD", "NFKC", "NFKD", "none"]
TOP_NGRAM_SIZES = (2, 3, 4)  # the n of max_top_ngram_char_fraction's limits, in order
DUPLICATE_NGRAM_SIZES = (5, 6, 7, 8, 9, 10)  # the n of max_duplicate_ngram_char_fraction's


@dataclass
class CleanConfig:
    """How to normalise, and the range each quality rule allows (defaults: Gopher's).

    The one definition of the cleaning thresholds: the run config's [clean] section
    (data/config.py) is this plus its on/off switches, so every field is spelled as in TOML.
    A rule is switched off by naming it in `skip` (see `rule_names()` for the names).
    """

    # Normalisation.
    # NFC composes without changing meaning; NFKC would also fold "ﬁ" to "fi" and "²" to "2".
    unicode_form: UnicodeForm = "NFC"
    max_blank_lines: int = 2  # longer runs of empty lines are cut to this many

    # Length and shape of the words.
    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    # '#' per word and '...' per word, each: hashtag spam and truncated snippets.
    max_symbol_word_ratio: float = 0.1
    # Lines that are list items or cut off with '...': menus, link lists, search results.
    max_bullet_line_fraction: float = 0.9
    max_ellipsis_line_fraction: float = 0.3
    # Words with at least one letter: tables of numbers and symbol soup have few.
    min_alpha_word_fraction: float = 0.8
    # Distinct English stop words present (the, be, to, of, and, that, have, with).
    min_stop_words: int = 2

    # Repetition: share of lines/paragraphs that repeat an earlier one, by count and by chars.
    max_duplicate_line_fraction: float = 0.30
    max_duplicate_paragraph_fraction: float = 0.30
    max_duplicate_line_char_fraction: float = 0.20
    max_duplicate_paragraph_char_fraction: float = 0.20
    # Share of the characters (in words) taken by the most frequent n-gram, for each n in
    # TOP_NGRAM_SIZES.
    max_top_ngram_char_fraction: list[float] = field(default_factory=lambda: [0.20, 0.18, 0.16])
    # Share of the characters (in words) inside n-grams seen earlier in the document, for each
    # n in DUPLICATE_NGRAM_SIZES.
    max_duplicate_ngram_char_fraction: list[float] = field(
        default_factory=lambda: [0.15, 0.14, 0.13, 0.12, 0.11, 0.10]
    )

    skip: list[str] = field(default_factory=list)  # names of rules not to apply

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.unicode_form not in get_args(UnicodeForm):
            raise ScratchLMError(
                "clean.unicode_form must be NFC, NFD, NFKC, NFKD or none, "
                f"got {self.unicode_form!r}"
            )
        if self.max_blank_lines < 0:
            raise ScratchLMError(f"clean.max_blank_lines must be >= 0, got {self.max_blank_lines}")
        for name, sizes in (
            ("max_top_ngram_char_fraction", TOP_NGRAM_SIZES),
            ("max_duplicate_ngram_char_fraction", DUPLICATE_NGRAM_SIZES),
        ):
            limits = getattr(self, name)
            if len(limits) != len(sizes):
                raise ScratchLMError(
                    f"clean.{name} takes {len(sizes)} numbers, one for each n in "
                    f"{', '.join(map(str, sizes))}; got {len(limits)}"
                )
        known = [rule.name for rule in rules(self)]
        unknown = [name for name in self.skip if name not in known]
        if unknown:
            raise ScratchLMError(
                f"clean.skip names unknown rules {unknown}; the rules are: {', '.join(known)}"
            )


# ---------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------

# Everything Python's str.splitlines() treats as a line break becomes "\n": \r\n and \r (old
# Windows and Mac files), vertical tab and form feed (page breaks), the file/group/record
# separators, NEL (U+0085) and the Unicode line and paragraph separators.
_LINE_BREAK = re.compile("\r\n|[\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
# What is left of the C0 and C1 control characters (tab \x09 and newline \x0a stay), plus the
# invisible marks that only get in the way of matching words: soft hyphen, zero-width space,
# word joiner and the byte-order mark. Zero-width (non-)joiners and direction marks stay:
# emoji sequences and Persian or Indic spelling need them.
_INVISIBLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u200b\u2060\ufeff]")
# Surrogates alone are not characters and UTF-8 cannot hold them; they come from broken decoding.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_TRAILING_SPACE = re.compile(r"[^\S\n]+$", re.MULTILINE)
_ASCII_LINE_BREAKS = "\r\v\f\x1c\x1d\x1e"  # those of _LINE_BREAK that ASCII text can hold


def normalise_text(text: str, config: CleanConfig | None = None) -> str:
    """`text` with one spelling per character, "\\n" line ends and no invisible characters.

    Leading and trailing blank lines are removed and no final newline is added (the data stage
    puts an end-of-text token between documents). Idempotent: normalising twice changes nothing.
    """
    config = config or CleanConfig()
    ascii = text.isascii()  # most text: then some scans can be skipped
    if not ascii:
        text = _LONE_SURROGATE.sub("\ufffd", text)
    if not ascii or any(c in text for c in _ASCII_LINE_BREAKS):
        text = _LINE_BREAK.sub("\n", text)
    text = _INVISIBLE.sub("", text)
    form = config.unicode_form
    if form != "none" and not unicodedata.is_normalized(form, text):
        text = unicodedata.normalize(form, text)
    text = _TRAILING_SPACE.sub("", text)
    # n blank lines in a row are n + 1 newlines in a row.
    keep = config.max_blank_lines + 1
    text = re.sub("\n" * keep + "\n+", "\n" * keep, text)
    return text.strip("\n")


# ---------------------------------------------------------------------------------------------
# The measurements the rules look at
# ---------------------------------------------------------------------------------------------

STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
# What a list item starts with; the hyphen and asterisk are Markdown's list markers.
BULLETS = ("•", "‣", "⁃", "◦", "●", "○", "▪", "▫", "■", "□", "–", "-", "*")
ELLIPSES = ("...", "…")
# What is cut off both ends of a token to leave a word.
WORD_PUNCTUATION = string.punctuation + "“”‘’«»—–…"

# The measurements below run at C speed (regular expressions, numpy) rather than a Python loop
# per word: cleaning is the slowest stage of the data pipeline, and a gigabyte holds 180 million
# words. Each gives the same number as the plain definition in its docstring.

# A token (a run of non-whitespace, as str.split() finds them) without the punctuation at its
# ends: the group is the word; a token of punctuation only does not match. `re`'s \s is
# str.isspace(), the whitespace str.split() uses.
_P = "".join(re.escape(c) for c in WORD_PUNCTUATION)
_WORD_IN_TOKEN = re.compile(rf"(?<!\S)[{_P}]*([^\s{_P}](?:\S*[^\s{_P}])?)[{_P}]*(?!\S)")
# Everything but letters (any Unicode letter, \p{L}) and whitespace: deleting it leaves exactly
# the tokens that hold a letter. The `regex` module's \s is not quite str.isspace(), so the
# whitespace is spelled out.
_SPACE = "".join(re.escape(chr(c)) for c in range(0x3001) if chr(c).isspace())
_NOT_LETTER_OR_SPACE = regex.compile(rf"[^{_SPACE}\p{{L}}]+")
_ASCII_NOT_LETTER_OR_SPACE = {
    c: None for c in range(128) if not (chr(c).isalpha() or chr(c).isspace())
}


class TextView:
    """One document cut the ways the rules need it; each cut is made once, on first use."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._ngrams: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @cached_property
    def token_count(self) -> int:
        """Whitespace-separated pieces, punctuation included ("word," and "=")."""
        return len(self.text.split())

    @cached_property
    def words(self) -> list[str]:
        """Tokens without surrounding punctuation, lowercased; pure punctuation is not a word."""
        # Lowercasing first is the same as lowercasing each word: no punctuation has a case.
        return _WORD_IN_TOKEN.findall(self.text.lower())

    @cached_property
    def word_chars(self) -> int:
        return sum(map(len, self.words))

    @cached_property
    def word_lengths(self) -> np.ndarray:
        return np.fromiter(map(len, self.words), dtype=np.int64, count=len(self.words))

    @cached_property
    def word_ids(self) -> np.ndarray:
        """Dense ids of the words, equal exactly when the words are (by a 64-bit hash of each
        word: that two different words share one is as likely as winning a lottery twice)."""
        hashes = np.fromiter(map(hash, self.words), dtype=np.int64, count=len(self.words))
        ids: np.ndarray = np.unique(hashes, return_inverse=True)[1].reshape(-1)
        return ids

    def repeated_ngrams(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(starts, groups): where the word n-grams that occur more than once start, ascending,
        and for each a group number (< len(words)) shared exactly by equal n-grams.

        Built up from n = 1: an n-gram can only repeat where its first n - 1 words repeat, so
        each step sorts only the repeats of the step before, usually a small part of the text.
        """
        if n not in self._ngrams:
            if n == 1:
                starts = np.arange(len(self.words))
                keys = self.word_ids
            else:
                before, groups = self.repeated_ngrams(n - 1)
                inside = before + n - 1 < len(self.words)  # the n-gram fits in the text
                starts, groups = before[inside], groups[inside]
                keys = groups * np.int64(len(self.words) + 1) + self.word_ids[starts + n - 1]
            groups, counts = _group(keys)
            repeated = counts[groups] > 1
            self._ngrams[n] = (starts[repeated], groups[repeated])
        return self._ngrams[n]

    @cached_property
    def lines(self) -> list[str]:
        """Non-blank lines, without their surrounding whitespace."""
        return [line.strip() for line in self.text.split("\n") if line.strip()]

    @cached_property
    def paragraphs(self) -> list[str]:
        """Blocks separated by blank lines (normalised text has no spaces on blank lines)."""
        return [p.strip() for p in re.split(r"\n\n+", self.text) if p.strip()]

    @cached_property
    def line_repeats(self) -> tuple[float, float]:
        return duplicate_fraction(self.lines)

    @cached_property
    def paragraph_repeats(self) -> tuple[float, float]:
        return duplicate_fraction(self.paragraphs)


def mean_word_length(view: TextView) -> float:
    return view.word_chars / len(view.words) if view.words else 0.0


def symbol_word_ratio(view: TextView) -> float:
    """The larger of ('#' per word) and (ellipses per word)."""
    words = max(len(view.words), 1)
    ellipses = sum(view.text.count(e) for e in ELLIPSES)
    return max(view.text.count("#"), ellipses) / words


def bullet_line_fraction(view: TextView) -> float:
    return _fraction(sum(line.startswith(BULLETS) for line in view.lines), len(view.lines))


def ellipsis_line_fraction(view: TextView) -> float:
    return _fraction(sum(line.endswith(ELLIPSES) for line in view.lines), len(view.lines))


def alpha_word_fraction(view: TextView) -> float:
    """Share of the tokens that hold at least one letter."""
    if view.text.isascii():  # the same, faster: str.translate deletes the other characters
        has_letter = len(view.text.translate(_ASCII_NOT_LETTER_OR_SPACE).split())
    else:
        has_letter = len(_NOT_LETTER_OR_SPACE.sub("", view.text).split())
    return _fraction(has_letter, view.token_count)


def stop_word_count(view: TextView) -> float:
    return len(STOP_WORDS.intersection(view.words))


def duplicate_fraction(items: list[str]) -> tuple[float, float]:
    """(share of items that repeat an earlier item, share of the characters in those repeats)."""
    seen: set[str] = set()
    repeats = repeat_chars = 0
    for item in items:
        if item in seen:
            repeats += 1
            repeat_chars += len(item)
        else:
            seen.add(item)
    total_chars = sum(len(item) for item in items)
    return _fraction(repeats, len(items)), _fraction(repeat_chars, total_chars)


def top_ngram_char_fraction(view: TextView, n: int) -> float:
    """Share of word characters taken by all occurrences of the most frequent word n-gram.

    An n-gram seen only once is not repetition, so a document without repeats scores 0. Of
    n-grams equally frequent, the one that occurs first counts.
    """
    if len(view.words) < n or view.word_chars == 0:
        return 0.0
    starts, groups = view.repeated_ngrams(n)
    if not len(starts):
        return 0.0
    counts = np.bincount(groups)
    count = int(counts.max())
    first = _first_starts(starts, groups)
    start = int(first[counts == count].min())
    return count * int(view.word_lengths[start : start + n].sum()) / view.word_chars


def duplicate_ngram_char_fraction(view: TextView, n: int) -> float:
    """Share of word characters inside an n-gram that already occurred earlier in the document.

    A word covered by several such n-grams counts once, so the share never exceeds 1; the first
    occurrence of a repeated passage does not count, only its copies.
    """
    words = len(view.words)
    if words < n or view.word_chars == 0:
        return 0.0
    starts, groups = view.repeated_ngrams(n)
    if not len(starts):
        return 0.0
    copies = starts[_first_starts(starts, groups)[groups] != starts]
    # Word j is covered when an n-gram starting at one of j-n+1 .. j is a copy: a window sum.
    repeat = np.zeros(words, dtype=np.int64)
    repeat[copies] = 1
    before = np.concatenate(([0], np.cumsum(repeat)))
    j = np.arange(words)
    covered = before[j + 1] - before[np.maximum(j - n + 1, 0)] > 0
    return int(view.word_lengths[covered].sum()) / view.word_chars


def _group(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a group number for each key, equal for equal keys; the size of each group).

    What np.unique(keys, return_inverse=True, return_counts=True) gives, with less overhead
    for the many small arrays the n-gram rules pass."""
    if not len(keys):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    new = np.empty(len(keys), dtype=np.int64)
    new[0] = 0
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:], casting="unsafe")
    in_order = np.cumsum(new)
    groups = np.empty(len(keys), dtype=np.int64)
    groups[order] = in_order
    return groups, np.bincount(in_order)


def _first_starts(starts: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """For each group, its first start (`starts` ascending)."""
    first = np.full(int(groups.max()) + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, groups, starts)
    return first


def _fraction(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


# ---------------------------------------------------------------------------------------------
# The rules
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One quality rule: a measurement and the range of values it allows (None: unbounded)."""

    name: str
    measure: Callable[[TextView], float]
    low: float | None = None
    high: float | None = None

    def allows(self, value: float) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def allowed(self) -> str:
        if self.low is None:
            return f"<= {self.high:g}"
        if self.high is None:
            return f">= {self.low:g}"
        return f"{self.low:g}..{self.high:g}"


@dataclass(frozen=True)
class Failure:
    """Why a document was removed: the first rule it failed and what that rule measured."""

    rule: str
    value: float
    allowed: str


def rules(config: CleanConfig) -> list[Rule]:
    """Every rule, cheapest first (the order in which they are tried)."""
    c = config
    listed = [
        Rule("word_count", lambda v: len(v.words), c.min_words, c.max_words),
        Rule("mean_word_length", mean_word_length, c.min_mean_word_length, c.max_mean_word_length),
        Rule("symbol_word_ratio", symbol_word_ratio, high=c.max_symbol_word_ratio),
        Rule("bullet_lines", bullet_line_fraction, high=c.max_bullet_line_fraction),
        Rule("ellipsis_lines", ellipsis_line_fraction, high=c.max_ellipsis_line_fraction),
        Rule("alpha_words", alpha_word_fraction, low=c.min_alpha_word_fraction),
        Rule("stop_words", stop_word_count, low=c.min_stop_words),
        Rule(
            "duplicate_lines",
            lambda v: v.line_repeats[0],
            high=c.max_duplicate_line_fraction,
        ),
        Rule(
            "duplicate_line_chars",
            lambda v: v.line_repeats[1],
            high=c.max_duplicate_line_char_fraction,
        ),
        Rule(
            "duplicate_paragraphs",
            lambda v: v.paragraph_repeats[0],
            high=c.max_duplicate_paragraph_fraction,
        ),
        Rule(
            "duplicate_paragraph_chars",
            lambda v: v.paragraph_repeats[1],
            high=c.max_duplicate_paragraph_char_fraction,
        ),
    ]
    # partial binds each n now; a plain lambda would see the loop's last n.
    for n, limit in zip(TOP_NGRAM_SIZES, c.max_top_ngram_char_fraction, strict=True):
        listed.append(Rule(f"top_{n}gram_chars", partial(top_ngram_char_fraction, n=n), high=limit))
    for n, limit in zip(DUPLICATE_NGRAM_SIZES, c.max_duplicate_ngram_char_fraction, strict=True):
        listed.append(
            Rule(
                f"duplicate_{n}gram_chars",
                partial(duplicate_ngram_char_fraction, n=n),
                high=limit,
            )
        )
    return listed


def rule_names(config: CleanConfig | None = None) -> list[str]:
    """The rule names, in the order the rules are tried (the names `CleanConfig.skip` takes)."""
    return [rule.name for rule in rules(config or CleanConfig())]


def active_rules(config: CleanConfig) -> list[Rule]:
    """The rules `config` applies: all of them but those named in `config.skip`, in order."""
    return [rule for rule in rules(config) if rule.name not in config.skip]


def first_failure(
    text: str, config: CleanConfig | None = None, applied: list[Rule] | None = None
) -> Failure | None:
    """The first rule (in `rules` order, skipping `config.skip`) that `text` fails, or None.

    `applied` is `active_rules(config)`, for a caller that judges many documents.
    """
    view = TextView(text)
    for rule in applied if applied is not None else active_rules(config or CleanConfig()):
        value = float(rule.measure(view))
        if not rule.allows(value):
            return Failure(rule.name, round(value, 4), rule.allowed())
    return None


# ---------------------------------------------------------------------------------------------
# Streams of documents
# ---------------------------------------------------------------------------------------------

NORMALISED = "normalised"  # the report's line for bytes that normalisation took out
EMPTY = "empty"  # nothing left after normalisation


@dataclass(frozen=True)
class Verdict:
    """One document after cleaning: its normalised text, and why it was removed (if it was)."""

    document: Document
    failure: Failure | None

    @property
    def kept(self) -> bool:
        return self.failure is None

    @property
    def removed_by(self) -> str | None:
        return self.failure.rule if self.failure else None


def clean(
    documents: Iterable[Document],
    config: CleanConfig | None = None,
    report: RemovalReport | None = None,
) -> Iterator[Verdict]:
    """Normalise and judge each document, in order, yielding a Verdict for every one."""
    config = config or CleanConfig()
    if report is not None:
        # Every reason listed up front, in rule order, so reports of different runs line up.
        for name in (NORMALISED, EMPTY, *rule_names(config)):
            report.reason(name)
    applied = active_rules(config)
    for document in documents:
        text = normalise_text(document.text, config)
        failure: Failure | None
        if text.strip():
            failure = first_failure(text, config, applied)
        else:
            failure = Failure(EMPTY, 0.0, "> 0 characters")
        if report is not None:
            _record(report, document, text, failure)
        yield Verdict(Document(text, document.origin), failure)


def clean_documents(
    documents: Iterable[Document],
    config: CleanConfig | None = None,
    report: RemovalReport | None = None,
) -> Iterator[Document]:
    """The documents that pass every rule, normalised, in order."""
    for verdict in clean(documents, config, report):
        if verdict.kept:
            yield verdict.document


def _record(report: RemovalReport, original: Document, text: str, failure: Failure | None) -> None:
    report.document_in(original.text)
    if text != original.text:
        report.shorten_document(NORMALISED, utf8_len(original.text) - utf8_len(text))
    if failure is None:
        report.document_out(text)
    else:
        report.remove_document(
            failure.rule, original.origin, text, value=failure.value, allowed=failure.allowed
        )
