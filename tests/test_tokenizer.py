"""Tests for the byte-level BPE tokenizer (scratchlm.tokenizer)."""

from __future__ import annotations

import functools
import itertools
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from pydoc_data.topics import topics
from typing import Any

import numpy as np
import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchlm.core.errors import ScratchLMError
from scratchlm.data.documents import read_documents
from scratchlm.data.sources import fetch_corpus
from scratchlm.tokenizer import (
    GPT2_SPLIT_PATTERN,
    GPT4_SPLIT_PATTERN,
    BPETokenizer,
    resolve_pattern,
    training,
)
from scratchlm.tokenizer.bpe import train_bpe_from_files
from scratchlm.tokenizer.merge_heap import count_heap_operations, merge_with_heap
from scratchlm.tokenizer.patterns import NAMED_PATTERNS

EOT = "<|endoftext|>"

# Real English-ish text from the standard library: the help() topics (about 460 KB).
PYDOC_TEXT = "".join(topics[key] for key in sorted(topics))


@functools.cache
def pydoc_tokenizer() -> BPETokenizer:
    """One tokenizer shared by the tests that only need *a* trained tokenizer."""
    return BPETokenizer.train(PYDOC_TEXT[:100_000], vocab_size=512)


def naive_train(text: str, vocab_size: int, pattern: str) -> dict[tuple[int, int], int]:
    """Reference trainer: recount every pair of every chunk before each merge.

    numpy does the counting, so the reference runs in about a second on 100 KB; the algorithm
    is still the textbook one (test_naive_reference_is_the_textbook_loop checks it against
    textbook_train, the same written with plain loops).
    """
    chunk_counts = Counter(regex.findall(pattern, text))
    # All the distinct chunks in one array, each followed by -1 so that no pair spans two
    # chunks; weights[i] is how often the chunk holding position i occurs.
    id_list: list[int] = []
    weight_list: list[int] = []
    for chunk, n in chunk_counts.items():
        data = chunk.encode("utf-8")
        id_list += [*data, -1]
        weight_list += [n] * (len(data) + 1)
    ids, weights = np.array(id_list), np.array(weight_list)
    merges: dict[tuple[int, int], int] = {}
    for new_id in range(256, vocab_size):
        left, right = ids[:-1], ids[1:]
        real = (left >= 0) & (right >= 0)
        if not real.any():
            break
        # Pairs as numbers a * vocab_size + b: sorted like the pairs, so the first of the
        # highest counts is the lexicographically smallest pair, the tie-break.
        pairs, which = np.unique(left[real] * vocab_size + right[real], return_inverse=True)
        counts = np.bincount(which, weights=weights[:-1][real])  # float64: exact below 2**53
        best = divmod(int(pairs[np.argmax(counts)]), vocab_size)
        merges[best] = new_id
        # Replace occurrences left to right; in a run like a a a only the first a a merges.
        starts: list[int] = []
        for i in np.flatnonzero((left == best[0]) & (right == best[1])).tolist():
            if not starts or i > starts[-1] + 1:
                starts.append(i)
        ids[starts] = new_id
        seconds = [i + 1 for i in starts]
        ids, weights = np.delete(ids, seconds), np.delete(weights, seconds)
    return merges


def textbook_train(text: str, vocab_size: int, pattern: str) -> dict[tuple[int, int], int]:
    """naive_train written with plain loops: slow, and obviously what BPE says."""
    chunk_counts = Counter(regex.findall(pattern, text))
    words = [(list(chunk.encode("utf-8")), n) for chunk, n in chunk_counts.items()]
    merges: dict[tuple[int, int], int] = {}
    for new_id in range(256, vocab_size):
        pair_counts: Counter[tuple[int, int]] = Counter()
        for ids, n in words:
            for pair in itertools.pairwise(ids):
                pair_counts[pair] += n
        if not pair_counts:
            break
        # Highest count wins; ties go to the lexicographically smallest pair.
        best = min(pair_counts, key=lambda p: (-pair_counts[p], p))
        merges[best] = new_id
        words = [(merge_pair(ids, best, new_id), n) for ids, n in words]
    return merges


def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    out, i = [], 0
    while i < len(ids):
        if tuple(ids[i : i + 2]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


@functools.cache
def corpus_text(name: str, limit: int = 120_000) -> str:
    """The first `limit` characters of a named corpus (downloaded into the cache once)."""
    if name == "pydocs":
        return PYDOC_TEXT[:limit]
    parts: list[str] = []
    size = 0
    for path in sorted(fetch_corpus(name).glob("*.txt")):
        parts.append(path.read_text(encoding="utf-8"))
        size += len(parts[-1])
        if size >= limit:
            break
    return "".join(parts)[:limit]


# ------------------------------------------------------------------------------- training


def test_wikipedia_example_exact_merges() -> None:
    # "aaabdaaabac": (a,a) occurs 4 times -> 256. Then (256,a) and (a,b) both occur twice;
    # the tie goes to the smaller pair (97,98) -> 257. Then (256,257) occurs twice -> 258.
    tok = BPETokenizer.train("aaabdaaabac", vocab_size=259, special_tokens=())
    assert tok.merges == {(97, 97): 256, (97, 98): 257, (256, 257): 258}
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
    assert tok.vocab[258] == b"aaab"
    assert tok.vocab_size == 259


def test_naive_reference_is_the_textbook_loop() -> None:
    # Runs of one byte and of one pair are where merging left to right matters.
    text = "aaaaaaa bbbbbb aaa ababab abababa aaaaaaaabab abcabcabc " * 3 + PYDOC_TEXT[:3_000]
    for pattern in (GPT4_SPLIT_PATTERN, r"[\s\S]+"):
        assert naive_train(text, 330, pattern) == textbook_train(text, 330, pattern)


@pytest.mark.parametrize("corpus", ["pydocs", "shakespeare", "kjv", "chitchat"])
@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_fast_trainer_matches_naive_reference_on_real_text(corpus: str, pattern: str) -> None:
    text = corpus_text(corpus)
    regex_ = resolve_pattern(pattern)
    # Training is the same at every size up to the last merge, so one reference run at the
    # largest size gives the expected merges of the smaller ones.
    reference = list(naive_train(text, 1024, regex_).items())
    for vocab_size in (300, 512, 1024):
        tok = BPETokenizer.train(text, vocab_size, pattern=pattern, special_tokens=())
        assert list(tok.merges.items()) == reference[: vocab_size - 256], vocab_size


def test_training_is_deterministic() -> None:
    text = PYDOC_TEXT[:50_000]
    first = BPETokenizer.train(text, vocab_size=400)
    second = BPETokenizer.train(text, vocab_size=400)
    assert list(first.merges.items()) == list(second.merges.items())


def test_iterable_of_documents_equals_documents_split_by_eot() -> None:
    docs = [PYDOC_TEXT[:20_000], PYDOC_TEXT[20_000:40_000]]
    from_list = BPETokenizer.train(docs, vocab_size=350)
    from_joined = BPETokenizer.train(EOT.join(docs), vocab_size=350)
    assert from_list.merges == from_joined.merges


# Streaming: files and long documents are counted in pieces, cut where no chunk can straddle.


def mixed_text(limit: int = 40_000) -> str:
    """Every kind of real text, with CRLF line ends, tabs, digits and non-ASCII letters."""
    return "".join(
        corpus_text(name, limit // 4) for name in ("pydocs", "shakespeare", "kjv", "chitchat")
    )


# The characters that decide where chunks end: letters of both cases, a digit, punctuation,
# "/" (o200k glues it to newlines), spaces, newlines, \r, a tab and a no-break space.
_DECISIVE = "aZ1./' \n\r\t\u00a0"


def _cuts(text: str) -> list[int]:
    """Every place the rule of scratchlm.tokenizer.training allows a cut."""
    return [
        m.start() + (1 if m.group()[1] == " " else 2)
        for m in training._CUT_FORWARD.finditer(text, overlapped=True)
    ]


def _assert_cuts_change_nothing(text: str) -> None:
    cuts = _cuts(text)
    for pattern in NAMED_PATTERNS.values():
        whole = regex.findall(pattern, text)
        for cut in cuts:
            halves = regex.findall(pattern, text[:cut]) + regex.findall(pattern, text[cut:])
            assert halves == whole, (pattern, text, cut)


def test_every_named_pattern_splits_the_same_on_both_sides_of_a_cut() -> None:
    # The rule: before the space of "X ", after the newline of "X\nL" (X not whitespace, L a
    # letter). It is local, so trying it on every short string of these characters tries it on
    # every situation the patterns tell apart.
    for size in range(2, 5):
        for chars in itertools.product(_DECISIVE, repeat=size):
            _assert_cuts_change_nothing("".join(chars))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from([*_DECISIVE, "é", "字", "\u0301", "-", "s"]), max_size=80))
def test_cuts_change_nothing_in_longer_random_text(text: str) -> None:
    _assert_cuts_change_nothing(text)


def _count(text: object, pattern: str = "gpt4", **kwargs: Any) -> dict[bytes, int]:
    return training.count_chunks(text, resolve_pattern(pattern), (EOT,), workers=1, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4", "o200k"])
def test_long_document_counted_in_pieces_equals_counted_whole(
    pattern: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = mixed_text() + f"a {EOT}b c{EOT}\n{EOT}d"
    whole = _count(text, pattern)
    monkeypatch.setattr(training, "PIECE_CHARS", 37)
    pieces = _spy_on_pieces(monkeypatch, "_document")
    assert _count(text, pattern) == whole
    assert len(pieces) > 500 and "".join(pieces) == text


def _spy_on_pieces(monkeypatch: pytest.MonkeyPatch, method: str) -> list[str]:
    """Record the pieces that _TextReader.<method> (_document or _file) yields."""
    pieces: list[str] = []
    real = getattr(training._TextReader, method)

    def spy(reader: Any, source: Any) -> Any:
        for piece, size in real(reader, source):
            pieces.append(piece)
            yield piece, size

    monkeypatch.setattr(training._TextReader, method, spy)
    return pieces


def _write_files(folder: Path, texts: list[str], newline: str = "\n") -> list[Path]:
    paths = []
    for i, text in enumerate(texts):
        path = folder / f"doc{i}.txt"
        path.write_bytes(text.replace("\n", newline).encode("utf-8"))
        paths.append(path)
    return paths


@pytest.mark.parametrize("read_bytes", [7, 64, 1 << 20])
def test_files_read_in_blocks_equal_the_documents_read_whole(
    read_bytes: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny blocks put block ends inside multi-byte characters, \r\n pairs and special tokens.
    docs = [mixed_text(8_000), f"x{EOT}y é\n字\n\n", "\ufeffbom first", "   ", "z" * 100]
    paths = _write_files(tmp_path, docs, newline="\r\n")
    monkeypatch.setattr(training, "READ_BYTES", read_bytes)
    monkeypatch.setattr(training, "PIECE_CHARS", 50)
    # What `scratchlm.data` reads: no \r, no byte-order mark, no whitespace-only document.
    expected = read_documents([str(path) for path in paths])
    assert len(expected) == len(docs) - 1
    assert "\r" not in "".join(expected) and "\ufeff" not in "".join(expected)
    pieces = _spy_on_pieces(monkeypatch, "_file")
    assert _count(paths) == _count(expected) == _count(EOT.join(expected))
    assert "".join(pieces) == "".join(expected)
    assert len(pieces) > (100 if read_bytes < 100 else 0)


def test_training_from_files_equals_training_from_the_joined_string(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = [corpus_text(name, 30_000) for name in ("shakespeare", "kjv", "chitchat")]
    paths = _write_files(tmp_path, docs)
    monkeypatch.setattr(training, "READ_BYTES", 1000)
    from_files = train_bpe_from_files(paths, 600)
    from_paths_and_text = BPETokenizer.train([paths[0], docs[1], paths[2]], 600)
    from_joined = BPETokenizer.train(EOT.join(docs), 600)
    assert list(from_files.merges.items()) == list(from_joined.merges.items())
    assert from_paths_and_text.merges == from_joined.merges


def test_bad_training_files_are_one_line_errors(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9\nna\u00efve".encode("latin-1"))
    with pytest.raises(
        ScratchLMError, match=r"latin1\.txt: not UTF-8 .*0xe9 .*offset 3 \(line 1\)"
    ):
        train_bpe_from_files([bad], 300)
    with pytest.raises(ScratchLMError, match=r"cannot read training file .*nope\.txt"):
        train_bpe_from_files([tmp_path / "nope.txt"], 300)
    (tmp_path / "blank.txt").write_text(" \n\t\r\n  \n")
    (tmp_path / "empty.txt").write_bytes(b"")
    # As scratchlm.data reads them, these are no documents: the error names them.
    with pytest.raises(ScratchLMError, match=r"empty \(or only whitespace\).* in .*blank\.txt, "):
        train_bpe_from_files([tmp_path / "blank.txt", tmp_path / "empty.txt"], 300)
    with pytest.raises(ScratchLMError, match="string, a file path, or an iterable"):
        BPETokenizer.train(["ok", b"bytes"], 300)  # type: ignore[list-item]


def test_parallel_counting_equals_serial_counting(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = [corpus_text(name, 50_000) for name in ("pydocs", "shakespeare", "kjv", "chitchat")]
    serial = training.count_chunks(docs, GPT4_SPLIT_PATTERN, (EOT,), workers=1)
    monkeypatch.setattr(training, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(training, "BATCH_BYTES", 5_000)  # about 40 batches
    counted_here: list[int] = []
    count_pieces = training._count_pieces

    def slowly(*args: Any) -> None:
        # This process counts slowly, so the worker starts before the text runs out.
        counted_here.append(1)
        time.sleep(0.05)
        count_pieces(*args)

    monkeypatch.setattr(training, "_count_pieces", slowly)
    parallel = training.count_chunks(docs, GPT4_SPLIT_PATTERN, (EOT,), workers=2)
    assert parallel == serial
    assert 0 < len(counted_here) < 30  # the worker counted some batches, this process others
    # An error in the last batch (most likely counted by the worker) reaches the caller.
    with pytest.raises(ScratchLMError, match="skips 1 characters"):
        training.count_chunks([*docs, "\x00"], r"[^\x00]+", (), workers=2)


def test_script_without_main_guard_still_trains(tmp_path: Path) -> None:
    # Worker processes start by importing the main script again; when it trains at its top
    # level they fail, and the counting is done in the calling process instead.
    script = tmp_path / "train.py"
    script.write_text(
        "import time\n"
        "from scratchlm.tokenizer import BPETokenizer, training\n"
        "training.PARALLEL_MIN_BYTES = 0\n"
        "training.BATCH_BYTES = 1000\n"
        "count_pieces = training._count_pieces\n"
        "def slowly(*args):  # so that the workers fail before the text runs out\n"
        "    time.sleep(0.02)\n"
        "    count_pieces(*args)\n"
        "training._count_pieces = slowly\n"
        "docs = ['the cat sat on the mat ' * 100] * 50\n"
        "tok = BPETokenizer.train(docs, 265, workers=2)\n"
        "assert tok.merges == BPETokenizer.train(docs, 265, workers=1).merges\n"
        "print('trained', len(tok.merges))\n"
    )
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "trained 8\n"
    assert "counted alone" in result.stderr and "__main__" in result.stderr


def test_progress_bars_do_not_change_the_result(capsys: pytest.CaptureFixture[str]) -> None:
    docs = [corpus_text("kjv", 20_000), corpus_text("chitchat", 20_000)]
    quiet = BPETokenizer.train(docs, 400)
    assert capsys.readouterr().err == ""
    shown = BPETokenizer.train(docs, 400, progress=True)
    err = capsys.readouterr().err
    assert "counting chunks" in err and "learning merges" in err and "143/143" in err
    # A generator cannot be measured in advance: the bar shows bytes and rate, no total.
    streamed = BPETokenizer.train((doc for doc in docs), 400, progress=True)
    assert "counting chunks" in capsys.readouterr().err
    assert quiet.merges == shown.merges == streamed.merges


def test_special_tokens_in_training_text_are_boundaries(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Were EOT ordinary text, chunks like "<|", "endoftext" and ">ab" would be learned from.
    tok = BPETokenizer.train(f"ab{EOT}" * 50, vocab_size=300)
    assert "warning: the training text ran out of pairs" in capsys.readouterr().err
    assert tok.merges == {(97, 98): 256}


def test_vocab_size_counts_bytes_merges_and_specials() -> None:
    tok = BPETokenizer.train(PYDOC_TEXT[:20_000], vocab_size=300, special_tokens=(EOT, "<|pad|>"))
    assert tok.vocab_size == 300
    assert len(tok.merges) == 300 - 256 - 2
    assert tok.special_tokens == {EOT: 298, "<|pad|>": 299}
    assert tok.eot_id == 298


def test_running_out_of_pairs_gives_smaller_tokenizer_with_warning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    tok = BPETokenizer.train("abc", vocab_size=1000)
    assert "warning: the training text ran out of pairs" in capsys.readouterr().err
    assert len(tok.merges) == 2
    assert tok.vocab_size == 256 + 2 + 1
    assert tok.eot_id == 258
    assert tok.encode("abc") == [257]


@pytest.mark.parametrize("text", ["", "   \n\t ", ["", " "], []])
def test_empty_training_text_is_rejected(text: str | list[str]) -> None:
    with pytest.raises(ScratchLMError, match="training text is empty"):
        BPETokenizer.train(text, vocab_size=300)


def test_too_small_vocab_is_rejected_naming_the_minimum(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(ScratchLMError, match="minimum is 257"):
        BPETokenizer.train("hello world", vocab_size=256)
    # Exactly the minimum is fine: no merges, just bytes and the special token.
    capsys.readouterr()
    tok = BPETokenizer.train("hello world", vocab_size=257)
    assert "warning" not in capsys.readouterr().err
    assert tok.merges == {} and tok.eot_id == 256


def test_bad_pattern_is_one_line_error() -> None:
    with pytest.raises(ScratchLMError, match="not a valid regex") as info:
        BPETokenizer.train("hello", vocab_size=300, pattern="(unclosed")
    assert "\n" not in str(info.value)


def test_pattern_that_drops_text_is_rejected() -> None:
    with pytest.raises(ScratchLMError, match="skips 1 characters"):
        BPETokenizer.train("hello world", vocab_size=300, pattern=r"\w+")


def test_resolve_pattern() -> None:
    assert resolve_pattern("gpt2") == GPT2_SPLIT_PATTERN
    assert resolve_pattern("gpt4") == GPT4_SPLIT_PATTERN
    assert resolve_pattern(r"\S+|\s+") == r"\S+|\s+"
    with pytest.raises(ScratchLMError, match=r"\[a-"):
        resolve_pattern("[a-")


def test_gpt4_pattern_splits_like_cl100k() -> None:
    chunks = regex.findall(GPT4_SPLIT_PATTERN, "Hello world's 12345 !!\n\n  x")
    assert chunks == ["Hello", " world", "'s", " ", "123", "45", " !!\n\n", " ", " x"]


# ------------------------------------------------------------------------------- encoding


_TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=200)


@settings(max_examples=200, deadline=None)
@given(_TEXT)
def test_round_trip_arbitrary_unicode(text: str) -> None:
    tok = pydoc_tokenizer()
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode(text, allowed_special="all")) == text


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_round_trip_arbitrary_bytes_via_latin1(data: bytes) -> None:
    # latin-1 maps each byte to one character, so this reaches every byte value 0..255.
    tok = pydoc_tokenizer()
    text = data.decode("latin-1")
    assert tok.decode(tok.encode(text)) == text


def test_every_byte_id_decodes_to_its_byte() -> None:
    tok = pydoc_tokenizer()
    for i in range(256):
        assert tok.decode_bytes([i]) == bytes([i])


def test_round_trip_and_compression_on_real_text() -> None:
    tok = pydoc_tokenizer()
    sample = PYDOC_TEXT[300_000:320_000]
    ids = tok.encode(sample)
    assert tok.decode(ids) == sample
    assert len(ids) < len(sample.encode("utf-8")) / 2  # BPE actually compresses


def test_encode_replays_training_merges(capsys: pytest.CaptureFixture[str]) -> None:
    # One chunk (the pattern does not split): l+o -> 256, 256+w -> 257, 257+257 -> 258 twice,
    # then (258, 257) beats (258, 258) on the tie -> 259, then 258+259 -> 260 is the whole text.
    tok = BPETokenizer.train("lowlowlowlowlow", vocab_size=270, pattern=r"[\s\S]+")
    assert "ran out of pairs" in capsys.readouterr().err
    assert list(tok.merges) == [(108, 111), (256, 119), (257, 257), (258, 257), (258, 259)]
    assert tok.encode("lowlowlowlowlow") == [260]
    assert tok.encode("lowlow") == [258]


# The Python encoder merges long chunks with a heap (scratchlm.tokenizer.merge_heap); these
# check it against the textbook loop it replaced, which rescans the chunk for every merge.


def textbook_encode_chunk(tok: BPETokenizer, data: bytes) -> list[int]:
    """Apply the earliest-learned merge present, everywhere, until none is left (quadratic)."""
    ids = [tok.byte_ids[b] for b in data]
    while len(ids) >= 2:
        ranked = [(tok.merges[p], p) for p in itertools.pairwise(ids) if p in tok.merges]
        if not ranked:
            break
        new_id, pair = min(ranked)
        ids = merge_pair(ids, pair, new_id)
    return ids


def textbook_encode(tok: BPETokenizer, text: str) -> list[int]:
    chunks = regex.findall(tok.pattern, text)
    return [i for chunk in chunks for i in textbook_encode_chunk(tok, chunk.encode("utf-8"))]


@functools.cache
def low_tokenizer() -> BPETokenizer:
    # Few letters and merges of runs (ll, lll...): many overlapping equal pairs and ties.
    text = "lowlowlow llllll owowow wolll lowwol " * 20
    return BPETokenizer.train(text, vocab_size=300, pattern=r"[\s\S]+", special_tokens=())


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=300))
def test_heap_encoder_equals_textbook_loop_on_random_text(text: str) -> None:
    tok = pydoc_tokenizer()
    assert tok.encode(text, engine="python") == textbook_encode(tok, text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="low ", max_size=400))
def test_heap_encoder_equals_textbook_loop_on_overlapping_runs(text: str) -> None:
    tok = low_tokenizer()
    # One chunk for the whole text: the pattern does not split.
    assert tok.encode(text, engine="python") == textbook_encode(tok, text)


@pytest.mark.parametrize(
    "alphabet",
    ["abcdefghijklmnopqrstuvwxyz", "的一是不了人我在有他这为之大来", "😀😃🎉👍🔥", "eé\u0301ñ"],
    ids=["ascii", "cjk", "emoji", "marks"],
)
def test_long_word_equals_textbook_loop(alphabet: str) -> None:
    rng = np.random.default_rng(0)
    word = "".join(rng.choice(list(alphabet), size=1_500))
    tok = pydoc_tokenizer()
    ids = tok.encode(word, engine="python")
    assert ids == textbook_encode(tok, word)
    assert tok.decode(ids) == word


@pytest.mark.timeout(60)  # the textbook loop takes minutes on this; the heap about a second
def test_200k_character_word_encodes_with_n_log_n_heap_work() -> None:
    rng = np.random.default_rng(1)
    word = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=200_000))
    tok = pydoc_tokenizer()
    assert len(regex.findall(tok.pattern, word)) == 1  # one chunk: nothing splits it
    ids = tok.encode(word, engine="python")
    assert tok.decode(ids) == word
    assert len(ids) < len(word)  # merges happened
    data = word.encode("utf-8")
    # n - 1 initial pushes, at most 2 per merge and one pop per push: O(n) operations on a
    # heap of O(n) entries, so O(n log n). A rescan per merge would be O(n) per merge.
    operations = count_heap_operations(list(data), tok.merges)
    assert operations <= 6 * len(data)
    assert merge_with_heap(list(data), tok.merges) == ids


def test_special_tokens_only_when_allowed() -> None:
    tok = pydoc_tokenizer()
    text = f"hi{EOT}there"
    plain = tok.encode(text)
    assert tok.eot_id not in plain
    assert plain == tok.encode_ordinary(text)
    assert tok.decode(plain) == text
    for allowed in ("all", {EOT}):
        ids = tok.encode(text, allowed_special=allowed)
        assert ids.count(tok.eot_id) == 1
        assert ids == [*tok.encode("hi"), tok.eot_id, *tok.encode("there")]
        assert tok.decode(ids) == text


def test_bad_allowed_special_is_rejected() -> None:
    tok = pydoc_tokenizer()
    with pytest.raises(ScratchLMError, match="not special tokens"):
        tok.encode("x", allowed_special={"<|nope|>"})
    with pytest.raises(ScratchLMError, match="allowed_special must be"):
        tok.encode("x", allowed_special=EOT)  # type: ignore[arg-type]


def test_lone_surrogate_becomes_replacement_character() -> None:
    # As tiktoken does: a lone surrogate cannot be UTF-8, so it is encoded as U+FFFD, and a
    # UTF-16 surrogate pair is the character it spells.
    tok = pydoc_tokenizer()
    assert tok.encode("a\ud800b") == tok.encode("a\ufffdb")
    assert tok.encode("\ud83d\ude00") == tok.encode("\U0001f600")


def test_training_repairs_surrogates_as_encoding_does() -> None:
    # Training must see the text encode will see: lone surrogates as U+FFFD, pairs joined.
    broken = ("caf\ud800e \ud83d\ude00 " * 50) + "ok"
    repaired = ("caf\ufffde \U0001f600 " * 50) + "ok"
    assert BPETokenizer.train(broken, 265).merges == BPETokenizer.train(repaired, 265).merges


def test_decode_unknown_id_names_it() -> None:
    tok = pydoc_tokenizer()
    with pytest.raises(ScratchLMError, match=r"token id 9999 .*0 to 511"):
        tok.decode([65, 9999])
    with pytest.raises(ScratchLMError, match="token id -1"):
        tok.decode([-1])


def test_decode_accepts_numpy_and_torch_ids() -> None:
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    tok = pydoc_tokenizer()
    ids = tok.encode("hello world")
    assert tok.decode(np.array(ids)) == "hello world"
    assert tok.decode(torch.tensor(ids)) == "hello world"


def test_eot_id_missing_is_an_error() -> None:
    tok = BPETokenizer.train("hello hello", vocab_size=260, special_tokens=())
    with pytest.raises(ScratchLMError, match="no <\\|endoftext\\|>"):
        _ = tok.eot_id


# ------------------------------------------------------------------------------- files


def test_save_load_round_trip(tmp_path: Path) -> None:
    tok = BPETokenizer.train(PYDOC_TEXT[:50_000], vocab_size=400, special_tokens=(EOT, "<|x|>"))
    path = tmp_path / "tok.json"
    tok.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == "scratchlm-bpe" and data["version"] == 1
    assert data["merges"][:1] == [list(next(iter(tok.merges)))]

    loaded = BPETokenizer.load(path)
    assert loaded.merges == tok.merges
    assert loaded.special_tokens == tok.special_tokens
    assert loaded.pattern == tok.pattern
    sample = PYDOC_TEXT[100_000:120_000] + EOT + "<|x|>"
    assert loaded.encode(sample, allowed_special="all") == tok.encode(sample, allowed_special="all")
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left behind


def test_save_vocab_is_readable(tmp_path: Path) -> None:
    tok = BPETokenizer.train("aaabdaaabac", vocab_size=260, special_tokens=(EOT,))
    path = tmp_path / "tok.vocab"
    tok.save_vocab(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 260
    assert lines[10] == "[\\u000a] 10"
    assert lines[256] == "[a][a] -> [aa] 256"
    assert lines[258] == "[aa][ab] -> [aaab] 258"
    assert lines[259] == f"[{EOT}] 259 (special)"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tok.json"
    path.write_text(text)
    return path


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScratchLMError, match="does not exist"):
        BPETokenizer.load(tmp_path / "nope.json")


def test_load_garbage_and_truncated_files(tmp_path: Path) -> None:
    with pytest.raises(ScratchLMError, match="not valid JSON"):
        BPETokenizer.load(_write(tmp_path, "this is not json"))

    tok = BPETokenizer.train("aaabdaaabac", vocab_size=260)
    tok.save(tmp_path / "good.json")
    good = (tmp_path / "good.json").read_text()
    with pytest.raises(ScratchLMError, match=r"tok\.json is not valid JSON"):
        BPETokenizer.load(_write(tmp_path, good[: len(good) // 2]))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other"}, "not a scratchlm tokenizer"),
        ({"version": 3}, "reads only versions 1 and 2"),
        ({"version": 2}, "not 3 integer ids"),
        ({"pattern": 3}, '"pattern" must be a string'),
        ({"pattern": "(bad"}, "not a valid regex"),
        ({"merges": {"a": 1}}, '"merges" must be a list'),
        ({"merges": [[97, 97], [97]]}, "merge #1"),
        ({"merges": [[97, "a"]]}, "merge #0"),
        ({"merges": [[97, 97], [97, 97]]}, "repeats the pair"),
        ({"merges": [[97, 300]]}, "does not exist yet"),
        ({"special_tokens": {EOT: 999}}, "special token ids"),
        ({"special_tokens": [EOT]}, '"special_tokens" must be'),
    ],
)
def test_load_rejects_inconsistent_content(tmp_path: Path, change: dict, message: str) -> None:
    content = {
        "format": "scratchlm-bpe",
        "version": 1,
        "pattern": GPT4_SPLIT_PATTERN,
        "special_tokens": {EOT: 257},
        "merges": [[97, 97]],
    }
    content.update(change)
    path = _write(tmp_path, json.dumps(content))
    with pytest.raises(ScratchLMError, match=message) as info:
        BPETokenizer.load(path)
    assert str(path) in str(info.value)


def test_load_minimal_valid_file(tmp_path: Path) -> None:
    content = {
        "format": "scratchlm-bpe",
        "version": 1,
        "pattern": "gpt2",
        "special_tokens": {EOT: 257},
        "merges": [[97, 97]],
    }
    tok = BPETokenizer.load(_write(tmp_path, json.dumps(content)))
    assert tok.pattern == GPT2_SPLIT_PATTERN
    assert tok.encode("aaa") == [256, 97]
    assert tok.vocab_size == 258


def test_tokenizer_train_reads_what_data_prepare_reads(tmp_path: Path) -> None:
    # One reader for every command: a compressed JSONL file that `data prepare` accepts trains
    # a tokenizer too.
    import zstandard

    from scratchlm.cli import main

    lines = [json.dumps({"text": corpus_text("kjv", 2_000)[i::3]}) for i in range(3)]
    source = tmp_path / "x.jsonl.zst"
    source.write_bytes(zstandard.ZstdCompressor().compress("\n".join(lines).encode()))
    out = tmp_path / "t.json"
    assert main(["tokenizer", "train", str(source), "--vocab-size", "300", "--out", str(out)]) == 0
    assert BPETokenizer.load(out).vocab_size == 300
