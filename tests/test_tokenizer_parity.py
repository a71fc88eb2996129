"""Our encoder against tiktoken: real vocabularies (gpt2, cl100k_base, o200k_base) and our own.

Both sides read the same rank file; our side recovers merges from the ranks and encodes with
the pure-Python engine, tiktoken with its Rust core. They must agree id for id.
"""

from __future__ import annotations

import functools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchlm.core.errors import ScratchLMError
from scratchlm.tokenizer import BPETokenizer
from scratchlm.tokenizer import bpe as bpe_module
from scratchlm.tokenizer.tiktoken_format import read_tiktoken_ranks
from tokenizer_fixtures import (
    ADVERSARIAL,
    PYDOC_TEXT,
    pretrained,
    pydoc_tokenizer,
    rank_file,
    shakespeare_text,
)

tiktoken = pytest.importorskip("tiktoken")

NAMES = ["gpt2", "cl100k_base", "o200k_base"]
EOT = "<|endoftext|>"
_TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=100)


@functools.cache
def reference(name: str) -> tiktoken.Encoding:
    """tiktoken's own encoder on the same rank file, pattern and special tokens."""
    ours = pretrained(name)
    return tiktoken.Encoding(
        name=f"reference-{name}",
        pat_str=ours.pattern,
        mergeable_ranks=read_tiktoken_ranks(rank_file(name)),
        special_tokens=ours.special_tokens,
    )


def assert_same(name: str, text: str) -> None:
    ours = pretrained(name)
    ids = ours.encode(text, engine="python")
    assert ids == reference(name).encode_ordinary(text), text[:80]
    assert ours.decode(ids) == text


# ------------------------------------------------------------------------- real vocabularies


@pytest.mark.parametrize("name", NAMES)
def test_real_text_matches_tiktoken(name: str) -> None:
    text = PYDOC_TEXT[:200_000]
    assert_same(name, text)
    # The fast engine is tiktoken on the same ranks, so it must agree as well.
    assert pretrained(name).encode(text, engine="tiktoken") == pretrained(name).encode(
        text, engine="python"
    )


@pytest.mark.parametrize("name", NAMES)
def test_shakespeare_matches_tiktoken_if_cached(name: str) -> None:
    text = shakespeare_text()
    if text is None:
        pytest.skip("the shakespeare corpus is not cached (scratchlm data fetch shakespeare)")
    assert_same(name, text)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("text", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_strings_match_tiktoken(name: str, text: str) -> None:
    assert_same(name, text)
    ours = pretrained(name)
    assert ours.encode(text, allowed_special="all", engine="python") == reference(name).encode(
        text, allowed_special="all"
    )


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=60, deadline=None)
@given(text=_TEXT)
def test_random_strings_match_tiktoken(name: str, text: str) -> None:
    assert_same(name, text)


def test_known_ids() -> None:
    gpt2, cl100k, o200k = (pretrained(name) for name in NAMES)
    assert gpt2.vocab_size == 50257 and gpt2.eot_id == 50256
    assert cl100k.vocab_size == 100277 and cl100k.eot_id == 100257
    assert o200k.vocab_size == 200019 and o200k.eot_id == 199999
    # GPT-2 numbers its byte tokens in its own order: "!" is 0, and "a" is not 97.
    assert gpt2.byte_ids[ord("!")] == 0 and gpt2.byte_ids[ord("a")] == 64
    assert gpt2.encode("Hello world", engine="python") == [15496, 995]
    assert cl100k.encode("hello world", engine="python") == [15339, 1917]
    assert cl100k.decode([100257, 100276]) == f"{EOT}<|endofprompt|>"
    with pytest.raises(ScratchLMError, match="token id 100261 is not in the vocabulary"):
        cl100k.decode([100261])  # a gap between cl100k's special tokens


def test_pretrained_saves_as_version_2_and_loads_back(tmp_path) -> None:
    tok = pretrained("gpt2")
    path = tmp_path / "gpt2.json"
    tok.save(path)
    loaded = BPETokenizer.load(path)
    assert loaded.byte_ids == tok.byte_ids and loaded.merges == tok.merges
    text = PYDOC_TEXT[:20_000]
    assert loaded.encode(text, engine="python") == tok.encode(text, engine="python")


# ------------------------------------------------------------------------- special tokens


@pytest.mark.parametrize("name", ["cl100k_base"])
def test_special_token_semantics_match_tiktoken(name: str) -> None:
    ours, ref = pretrained(name), reference(name)
    text = f"a{EOT}b<|fim_prefix|>c"
    # Allowed: encoded as special ids, like tiktoken.
    for allowed in ("all", {EOT}, {EOT, "<|fim_prefix|>"}):
        assert ours.encode(text, allowed_special=allowed) == ref.encode(
            text, allowed_special=allowed, disallowed_special=()
        )
    # Disallowed: both refuse the text.
    with pytest.raises(ValueError):
        ref.encode(text)
    with pytest.raises(ScratchLMError, match=r"'<\|endoftext\|>' at character 1 \(line 1"):
        ours.encode(text, disallowed_special="all")
    with pytest.raises(ScratchLMError, match="fim_prefix"):
        ours.encode(text, allowed_special={EOT}, disallowed_special="all")
    # Our default: neither allowed nor refused, so encoded as the plain text it spells.
    assert ours.encode(text) == ref.encode_ordinary(text)


def test_disallowed_special_names_the_line_and_column() -> None:
    tok = pydoc_tokenizer()
    with pytest.raises(ScratchLMError, match=r"at character 9 \(line 2, column 4\)") as info:
        tok.encode(f"hello\nab {EOT}", disallowed_special={EOT})
    assert "\n" not in str(info.value)
    assert tok.encode("no specials here", disallowed_special="all") == tok.encode(
        "no specials here"
    )
    with pytest.raises(ScratchLMError, match="both allowed and disallowed"):
        tok.encode("x", allowed_special={EOT}, disallowed_special={EOT})
    with pytest.raises(ScratchLMError, match="disallowed_special names"):
        tok.encode("x", disallowed_special={"<|nope|>"})
    with pytest.raises(ScratchLMError, match="engine must be one of"):
        tok.encode("x", engine="rust")  # type: ignore[arg-type]


# ------------------------------------------------------------------------- the fast engine


@settings(max_examples=200, deadline=None)
@given(text=_TEXT)
def test_fast_engine_equals_python_engine_on_random_strings(text: str) -> None:
    tok = pydoc_tokenizer(2048)
    assert tok.encode(text, engine="tiktoken") == tok.encode(text, engine="python")
    assert tok.encode(text, allowed_special="all", engine="tiktoken") == tok.encode(
        text, allowed_special="all", engine="python"
    )


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4", "o200k"])
def test_fast_engine_equals_python_engine_on_real_text(pattern: str) -> None:
    tok = pydoc_tokenizer(2048, pattern)
    text = PYDOC_TEXT + "\n".join(ADVERSARIAL)
    assert tok.encode(text, engine="tiktoken") == tok.encode(text, engine="python")


def test_encode_batch_equals_encode(monkeypatch: pytest.MonkeyPatch) -> None:
    tok = pydoc_tokenizer()
    texts = [PYDOC_TEXT[i : i + 5_000] + EOT for i in range(0, 60_000, 5_000)]
    expected = [tok.encode(t, allowed_special="all", engine="python") for t in texts]
    assert tok.encode_batch(texts, allowed_special="all", engine="tiktoken") == expected
    # Lower the threshold so that the python engine really starts its two worker processes.
    monkeypatch.setattr(bpe_module, "_PARALLEL_MIN_CHARS", 1)
    assert tok.encode_batch(texts, allowed_special="all", engine="python") == expected
    assert tok.encode_batch([], engine="python") == []
    with pytest.raises(ScratchLMError, match="list of strings"):
        tok.encode_batch("one string")  # type: ignore[arg-type]
    with pytest.raises(ScratchLMError, match=r"'<\|endoftext\|>' at character 5000"):
        tok.encode_batch(texts, disallowed_special="all")


def test_merges_tiktoken_would_not_make_fall_back_to_python() -> None:
    # "abc" is merged from (a, bc), but tiktoken, seeing "ab" ranked before "bc", would make
    # it from (ab, c): the engines would disagree, so "auto" must use our own encoder.
    merges = {(97, 98): 256, (98, 99): 257, (97, 257): 258}
    tok = BPETokenizer(r"\S+|\s+", merges, {EOT: 259})
    with pytest.raises(ScratchLMError, match="not the pair tiktoken would join"):
        tok.encode("abc", engine="tiktoken")
    assert tok.encode("abc") == tok.encode("abc", engine="python") == [256, 99]
    # Two ids with the same bytes cannot be handed to tiktoken either.
    twice = BPETokenizer(r"\S+|\s+", {**merges, (256, 99): 259})
    with pytest.raises(ScratchLMError, match="both the bytes"):
        twice.tiktoken_encoding()


def test_fast_engine_rejects_what_the_python_engine_rejects() -> None:
    tok = BPETokenizer(r"\w+|\s", {(97, 98): 256})
    with pytest.raises(ScratchLMError, match="skips 1 characters"):
        tok.encode("ab!", engine="tiktoken")
    python_only = BPETokenizer(r"(?V1)\S+|\s+")  # a regex-module flag tiktoken cannot parse
    with pytest.raises(ScratchLMError, match="tiktoken cannot compile"):
        python_only.tiktoken_encoding()
    assert python_only.decode(python_only.encode("a b")) == "a b"


# ------------------------------------------------------------------- surrogates and raw bytes

SURROGATE_TEXTS = [
    "a\ud800b",  # a lone high surrogate
    "\udc80\udcff",  # lone low surrogates, as errors="surrogateescape" makes them
    "emoji as a UTF-16 pair: \ud83d\ude00 and a real one: 😀",
    "\ud83d",  # half a pair at the very end
    " \ud800 \ud800\n",
]

INVALID_UTF8 = [
    b"\xff",
    b"\x80\x80\x80",
    b"hello \xff world",
    b"truncated euro \xe2\x82",
    b"truncated emoji \xf0\x9f\x98",
    b"caf\xe9 au lait (Latin-1, not UTF-8)",
    b"   \xc3",
    b"line\n\n\xfe\n  end",
    b"valid prefix " * 50 + b"\xed\xa0\x80 an encoded surrogate",
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("text", SURROGATE_TEXTS, ids=range(len(SURROGATE_TEXTS)))
def test_surrogates_are_handled_like_tiktoken(name: str, text: str) -> None:
    # tiktoken joins UTF-16 surrogate pairs into the character they spell and replaces a
    # lone surrogate with U+FFFD; both engines of ours must do the same.
    ours, expected = pretrained(name), reference(name).encode(text)
    assert ours.encode(text, engine="python") == expected
    assert ours.encode(text, engine="tiktoken") == expected
    assert ours.encode_batch([text, text], engine="python") == [expected, expected]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("data", INVALID_UTF8, ids=range(len(INVALID_UTF8)))
def test_invalid_utf8_bytes_match_tiktoken(name: str, data: bytes) -> None:
    ours = pretrained(name)
    ids = ours.encode_bytes(data, engine="python")
    assert ids == reference(name)._encode_bytes(data)
    assert ours.encode_bytes(data, engine="tiktoken") == ids
    assert ours.decode_bytes(ids) == data  # nothing lost: every byte comes back


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=60))
def test_encode_bytes_round_trips_and_matches_tiktoken(data: bytes) -> None:
    ours = pretrained("cl100k_base")
    ids = ours.encode_bytes(data, engine="python")
    assert ours.decode_bytes(ids) == data
    assert ids == reference("cl100k_base")._encode_bytes(data)


def test_encode_bytes_of_valid_utf8_is_encode_ordinary() -> None:
    tok = pydoc_tokenizer()
    text = PYDOC_TEXT[:5_000] + EOT
    assert tok.encode_bytes(text.encode("utf-8")) == tok.encode_ordinary(text)


# ------------------------------------------------------------------------- long chunks

# Words with no spaces, which the split pattern leaves as one chunk however long they are: the
# Python encoder merges them with a heap (scratchlm.tokenizer.merge_heap), which must give
# tiktoken's ids exactly.
LONG_WORD_ALPHABETS = {
    "ascii": "abcdefghijklmnopqrstuvwxyz",
    "ascii-mixed-case": "aAbBeEsStTxXzZ",
    "cjk": "的一是不了人我在有他这为之大来以个中上们",
    "emoji": "😀😃🎉👍🔥🇫🇷",
}


def random_word(alphabet: str, length: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(alphabet) for _ in range(length))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("alphabet", LONG_WORD_ALPHABETS, ids=list(LONG_WORD_ALPHABETS))
def test_long_words_without_spaces_match_tiktoken(name: str, alphabet: str) -> None:
    assert_same(name, random_word(LONG_WORD_ALPHABETS[alphabet], 30_000, seed=len(alphabet)))


@pytest.mark.parametrize("name", ["cl100k_base"])
@settings(max_examples=40, deadline=None)
@given(text=st.text(alphabet=st.sampled_from("aabbeést的是😀"), min_size=100, max_size=3_000))
def test_random_long_words_match_tiktoken(name: str, text: str) -> None:
    assert_same(name, text)


@pytest.mark.timeout(60)  # minutes with a rescan per merge; a few seconds with the heap
def test_200k_character_word_matches_tiktoken() -> None:
    assert_same("o200k_base", random_word(LONG_WORD_ALPHABETS["ascii"], 200_000, seed=7))
