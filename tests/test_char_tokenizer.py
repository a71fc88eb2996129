"""Character-level tokenization (tokenizer.kind = "char"): one token per character."""

from __future__ import annotations

from pathlib import Path

import pytest

from scratchlm.config import load_config
from scratchlm.core.errors import ScratchLMError
from scratchlm.runs.layout import load_tokenizer
from scratchlm.runs.preparation import prepare_run
from scratchlm.tokenizer import BPETokenizer
from scratchlm.tokenizer.char import is_char_tokenizer, train_char_tokenizer

REPO = Path(__file__).resolve().parents[1]
TEXT = ["To be, or not to be: that is the question.\n", "Naïve café — déjà vu? 日本\n"]


def test_every_character_is_one_token() -> None:
    tokenizer = train_char_tokenizer(TEXT)
    for text in TEXT:
        ids = tokenizer.encode(text)
        assert len(ids) == len(text)
        assert [tokenizer.decode([i]) for i in ids] == list(text)
    # 256 bytes, one merged token per multi-byte character (ï, é, —, à, 日, 本: 1, 1, 2, 1, 2, 2
    # merges), the end-of-text token.
    assert tokenizer.vocab_size == 256 + 9 + 1
    assert is_char_tokenizer(tokenizer)
    assert not is_char_tokenizer(BPETokenizer.train(TEXT, vocab_size=300))


def test_an_unseen_character_still_encodes_as_its_bytes() -> None:
    tokenizer = train_char_tokenizer(["abc"])
    ids = tokenizer.encode("añ")
    assert ids == [ord("a"), *"ñ".encode()]
    assert tokenizer.decode(ids) == "añ"


def test_saves_and_loads_as_the_same_tokenizer(tmp_path: Path) -> None:
    tokenizer = train_char_tokenizer(TEXT)
    tokenizer.save(tmp_path / "tokenizer.json")
    loaded = BPETokenizer.load(tmp_path / "tokenizer.json")
    assert loaded.fingerprint() == tokenizer.fingerprint()
    assert is_char_tokenizer(loaded)
    assert loaded.encode(TEXT[1]) == tokenizer.encode(TEXT[1])


def test_a_run_with_a_char_tokenizer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path / "cache"))
    config = load_config(REPO / "configs" / "tiny.toml", ["--tokenizer.kind", "char"])
    config.out_dir = str(tmp_path)
    prepare_run(config)
    tokenizer = load_tokenizer(config.run_dir)
    assert is_char_tokenizer(tokenizer)
    assert config.model.vocab_size == tokenizer.vocab_size < 300  # pydocs: a few non-ASCII
    text = "def f(x):\n    return x"
    assert len(tokenizer.encode(text)) == len(text)


def test_an_unknown_kind_names_the_choices() -> None:
    with pytest.raises(ScratchLMError, match="'bpe', 'char'"):
        load_config(REPO / "configs" / "tiny.toml", ["--tokenizer.kind", "word"])
