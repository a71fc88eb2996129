"""Tests for the byte-level BPE tokenizer (scratchlm.tokenizer)."""

from __future__ import annotations

import functools
import itertools
import json
import warnings
from collections import Counter
from pathlib import Path
from pydoc_data.topics import topics

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchlm.errors import ScratchLMError
from scratchlm.tokenizer import (
    GPT2_SPLIT_PATTERN,
    GPT4_SPLIT_PATTERN,
    BPETokenizer,
    resolve_pattern,
)

EOT = "<|endoftext|>"

# Real English-ish text from the standard library: the help() topics (about 460 KB).
PYDOC_TEXT = "".join(topics[key] for key in sorted(topics))


@functools.cache
def pydoc_tokenizer() -> BPETokenizer:
    """One tokenizer shared by the tests that only need *a* trained tokenizer."""
    return BPETokenizer.train(PYDOC_TEXT[:100_000], vocab_size=512)


def naive_train(text: str, vocab_size: int, pattern: str) -> dict[tuple[int, int], int]:
    """Reference trainer: recount every pair over every chunk before each merge."""
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


# ------------------------------------------------------------------------------- training


def test_wikipedia_example_exact_merges() -> None:
    # "aaabdaaabac": (a,a) occurs 4 times -> 256. Then (256,a) and (a,b) both occur twice;
    # the tie goes to the smaller pair (97,98) -> 257. Then (256,257) occurs twice -> 258.
    tok = BPETokenizer.train("aaabdaaabac", vocab_size=259, special_tokens=())
    assert tok.merges == {(97, 97): 256, (97, 98): 257, (256, 257): 258}
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
    assert tok.vocab[258] == b"aaab"
    assert tok.vocab_size == 259


@pytest.mark.parametrize(
    ("start", "pattern"),
    [(0, GPT4_SPLIT_PATTERN), (200_000, GPT2_SPLIT_PATTERN)],
    ids=["gpt4", "gpt2"],
)
def test_fast_trainer_matches_naive_reference(start: int, pattern: str) -> None:
    text = PYDOC_TEXT[start : start + 100_000]
    tok = BPETokenizer.train(text, vocab_size=512, pattern=pattern, special_tokens=())
    assert tok.merges == naive_train(text, 512, pattern)


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


def test_special_tokens_in_training_text_are_boundaries() -> None:
    # Were EOT ordinary text, chunks like "<|", "endoftext" and ">ab" would be learned from.
    with pytest.warns(UserWarning, match="ran out of pairs"):
        tok = BPETokenizer.train(f"ab{EOT}" * 50, vocab_size=300)
    assert tok.merges == {(97, 98): 256}


def test_vocab_size_counts_bytes_merges_and_specials() -> None:
    tok = BPETokenizer.train(PYDOC_TEXT[:20_000], vocab_size=300, special_tokens=(EOT, "<|pad|>"))
    assert tok.vocab_size == 300
    assert len(tok.merges) == 300 - 256 - 2
    assert tok.special_tokens == {EOT: 298, "<|pad|>": 299}
    assert tok.eot_id == 298


def test_running_out_of_pairs_gives_smaller_tokenizer_with_warning() -> None:
    with pytest.warns(UserWarning, match="ran out of pairs"):
        tok = BPETokenizer.train("abc", vocab_size=1000)
    assert len(tok.merges) == 2
    assert tok.vocab_size == 256 + 2 + 1
    assert tok.eot_id == 258
    assert tok.encode("abc") == [257]


@pytest.mark.parametrize("text", ["", "   \n\t ", ["", " "], []])
def test_empty_training_text_is_rejected(text: str | list[str]) -> None:
    with pytest.raises(ScratchLMError, match="training text is empty"):
        BPETokenizer.train(text, vocab_size=300)


def test_too_small_vocab_is_rejected_naming_the_minimum() -> None:
    with pytest.raises(ScratchLMError, match="minimum is 257"):
        BPETokenizer.train("hello world", vocab_size=256)
    # Exactly the minimum is fine: no merges, just bytes and the special token.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok = BPETokenizer.train("hello world", vocab_size=257)
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


def test_encode_replays_training_merges() -> None:
    # One chunk (the pattern does not split): l+o -> 256, 256+w -> 257, 257+257 -> 258 twice,
    # then (258, 257) beats (258, 258) on the tie -> 259, then 258+259 -> 260 is the whole text.
    with pytest.warns(UserWarning, match="ran out of pairs"):
        tok = BPETokenizer.train("lowlowlowlowlow", vocab_size=270, pattern=r"[\s\S]+")
    assert list(tok.merges) == [(108, 111), (256, 119), (257, 257), (258, 257), (258, 259)]
    assert tok.encode("lowlowlowlowlow") == [260]
    assert tok.encode("lowlow") == [258]


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


def test_lone_surrogate_is_rejected() -> None:
    with pytest.raises(ScratchLMError, match="surrogate"):
        pydoc_tokenizer().encode("a\ud800b")


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
