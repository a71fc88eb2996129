"""Tokenizer files of other tools: Hugging Face tokenizer.json, GPT-2's encoder.json + vocab.bpe,
tiktoken rank files; export, import, and the CLI commands for both.

The claims checked here: an exported tokenizer.json encodes with the `tokenizers` library
exactly as our encoder does (trained tokenizers with each split pattern, and the real gpt2 and
cl100k_base vocabularies); export then import gives back the same tokenizer; GPT-2's real files
(from an openai-whisper sdist on PyPI, fetched into the cache once and pinned by SHA-256) give
the same tokenizer as tiktoken's gpt2 ranks; and every bad file is one line naming the file
and the key.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest
import regex

from scratchlm.core.atomic_files import atomic_write_bytes
from scratchlm.core.cache import cache_dir
from scratchlm.core.errors import ScratchLMError
from scratchlm.tokenizer import BPETokenizer
from scratchlm.tokenizer import hf_format as hf_format_module
from scratchlm.tokenizer.gpt2_format import (
    BYTE_TO_CHAR,
    from_byte_level,
    gpt2_files_text,
    load_gpt2_files,
    save_gpt2_files,
    to_byte_level,
)
from scratchlm.tokenizer.hf_format import (
    check_with_tokenizers,
    hf_tokenizer_json,
    hf_tokenizer_text,
    load_hf_tokenizer,
    save_hf_tokenizer,
)
from scratchlm.tokenizer.patterns import CL100K_SPLIT_PATTERN, NAMED_PATTERNS
from scratchlm.tokenizer.regex_dialects import from_oniguruma, to_oniguruma
from scratchlm.tokenizer.tiktoken_format import tokenizer_ranks
from tokenizer_fixtures import ADVERSARIAL, PYDOC_TEXT, pretrained, pydoc_tokenizer

tokenizers = pytest.importorskip("tokenizers")

# Trained tokenizers (small, seconds to train) for each pattern family, plus real vocabularies.
TRAINED = ["trained-gpt4", "trained-o200k", "trained-gpt2", "trained-cl100k"]
REAL = ["gpt2", "cl100k_base"]
EOT = "<|endoftext|>"


@functools.cache
def ours(name: str) -> BPETokenizer:
    if name.startswith("trained-"):
        pattern = name.removeprefix("trained-")
        if pattern == "gpt4":
            return pydoc_tokenizer()
        specials = (EOT, "<|pad|>")
        return BPETokenizer.train(
            PYDOC_TEXT[:60_000], 400, pattern=pattern, special_tokens=specials
        )
    return pretrained(name)


@functools.cache
def exported(name: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="scratchlm-hf-"))
    path = folder / "tokenizer.json"
    assert save_hf_tokenizer(ours(name), path)  # True: checked with tokenizers
    return path


@functools.cache
def theirs(name: str) -> Any:
    """tokenizers' Tokenizer on the export, reading special token strings as plain text."""
    tok = tokenizers.Tokenizer.from_file(str(exported(name)))
    tok.encode_special_tokens = True
    return tok


def hf_ids(name: str, text: str) -> list[int]:
    return list(theirs(name).encode(text, add_special_tokens=False).ids)


# ----------------------------------------------------------------------- tokenizers agrees


@pytest.mark.parametrize("name", TRAINED + REAL)
def test_tokenizers_encodes_real_text_identically(name: str) -> None:
    text = PYDOC_TEXT[:150_000]
    assert hf_ids(name, text) == ours(name).encode(text)


@pytest.mark.parametrize("name", TRAINED + REAL)
@pytest.mark.parametrize("text", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_tokenizers_encodes_adversarial_strings_identically(name: str, text: str) -> None:
    ids = ours(name).encode(text)
    assert hf_ids(name, text) == ids
    assert theirs(name).decode(ids, skip_special_tokens=False) == ours(name).decode(ids)


@pytest.mark.parametrize("name", ["trained-o200k", "cl100k_base"])
def test_special_tokens_in_tokenizers(name: str) -> None:
    tok, hf = ours(name), theirs(name)
    text = "".join(f"a {special} b" for special in tok.special_tokens) + " <|not special|>"
    # By default tokenizers matches added tokens in any text: our allowed_special="all".
    hf.encode_special_tokens = False
    try:
        ids = hf.encode(text, add_special_tokens=False).ids
    finally:
        hf.encode_special_tokens = True
    assert ids == tok.encode(text, allowed_special="all")
    assert set(tok.special_tokens.values()) <= set(ids)
    # encode_special_tokens=True (not stored in the file) gives our default: plain text.
    assert hf.encode(text, add_special_tokens=False).ids == tok.encode(text)
    # decode skips special tokens unless told not to.
    assert hf.decode(ids, skip_special_tokens=False) == text
    assert hf.decode(ids) == tok.decode([i for i in ids if i not in tok.special_tokens.values()])


def test_vocab_size_counts_tokens_in_tokenizers_but_spans_ids_in_ours() -> None:
    hf = theirs("cl100k_base")
    assert hf.get_vocab_size() == len(ours("cl100k_base").vocab) == 100_261
    assert ours("cl100k_base").vocab_size == 100_277  # ids have gaps among the specials
    # An id in a gap: tokenizers decodes it to nothing, we refuse it.
    assert hf.decode([100_256, 15339], skip_special_tokens=False) == "hello"
    with pytest.raises(ScratchLMError, match="100256"):
        ours("cl100k_base").decode([100_256, 15339])


def test_invalid_utf8_decodes_alike() -> None:
    tok = ours("gpt2")
    ids = tok.encode("é😀 ok")
    for cut in range(len(ids) + 1):  # every prefix, including ones ending mid-character
        assert theirs("gpt2").decode(ids[:cut], skip_special_tokens=False) == tok.decode(ids[:cut])
    single = [tok.byte_ids[b] for b in b"\xf0\x9f\x98 \xff x"]
    assert theirs("gpt2").decode(single) == tok.decode(single)


# ------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("name", TRAINED + REAL)
def test_hf_round_trip_gives_the_same_tokenizer(name: str) -> None:
    before, after = ours(name), load_hf_tokenizer(exported(name))
    assert after.pattern == before.pattern
    assert after.merges == before.merges
    assert after.special_tokens == before.special_tokens
    assert after.byte_ids == before.byte_ids
    # The python engine: "auto" would first check, slowly, that tiktoken may take the merges.
    text = PYDOC_TEXT[:20_000]
    assert after.encode(text, engine="python") == before.encode(text)


def test_hf_file_layout() -> None:
    data = json.loads(exported("trained-gpt2").read_text(encoding="utf-8"))
    split, byte_level = data["pre_tokenizer"]["pretokenizers"]
    assert split == {
        "type": "Split",
        "pattern": {"Regex": to_oniguruma(NAMED_PATTERNS["gpt2"])},
        "behavior": "Isolated",
        "invert": False,
    }
    assert byte_level["type"] == "ByteLevel" and not byte_level["use_regex"]
    assert not byte_level["add_prefix_space"]
    model, tok = data["model"], ours("trained-gpt2")
    assert model["type"] == "BPE" and model["ignore_merges"] is False
    assert model["vocab"]["Ġ"] == 32 and model["vocab"][EOT] == ours("trained-gpt2").eot_id
    assert model["merges"][0] == " ".join(
        to_byte_level(tok.vocab[i]) for i in min(tok.merges, key=tok.merges.__getitem__)
    )
    assert [t["content"] for t in data["added_tokens"]] == [EOT, "<|pad|>"]
    assert all(t["special"] for t in data["added_tokens"])


def test_byte_level_alphabet() -> None:
    assert len(set(BYTE_TO_CHAR)) == 256
    assert all(ch.isprintable() and not ch.isspace() for ch in BYTE_TO_CHAR)
    assert to_byte_level(b" hi\n") == "ĠhiĊ"
    assert from_byte_level(to_byte_level(bytes(range(256)))) == bytes(range(256))
    assert from_byte_level("<|x|> ") is None  # a space is not in the alphabet


@pytest.mark.parametrize("pre_tokenizer", ["ByteLevel", "Split(o200k) + ByteLevel"])
def test_files_trained_by_tokenizers_import_exactly(pre_tokenizer: str, tmp_path: Path) -> None:
    # A file we did not write: tokenizers' own trainer numbers special tokens first (0, 1)
    # and the 256 bytes in its alphabet's order, and GPT-2 style files use ByteLevel's regex.
    pt = tokenizers.pre_tokenizers
    hf = tokenizers.Tokenizer(tokenizers.models.BPE())
    if pre_tokenizer == "ByteLevel":
        hf.pre_tokenizer = pt.ByteLevel(add_prefix_space=False)
    else:
        split = pt.Split(tokenizers.Regex(to_oniguruma(NAMED_PATTERNS["o200k"])), "isolated")
        hf.pre_tokenizer = pt.Sequence(
            [split, pt.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    hf.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=[EOT, "<|pad|>"],
        initial_alphabet=pt.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator([PYDOC_TEXT[i : i + 5000] for i in range(0, 100_000, 5000)], trainer)
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = load_hf_tokenizer(tmp_path / "tokenizer.json")
    assert tok.special_tokens == {EOT: 0, "<|pad|>": 1}
    assert tok.byte_ids != tuple(range(256))
    hf.encode_special_tokens = True
    for text in [PYDOC_TEXT[100_000:150_000], *ADVERSARIAL]:
        assert hf.encode(text).ids == tok.encode(text), text[:40]


# --------------------------------------------------------------- what tokenizers does differently


def test_possessive_repetition_must_be_rewritten_for_oniguruma(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # cl100k's digits rule \p{N}{1,3}+ means "any number of digits" to Oniguruma. A tokenizer
    # with a merge inside "1234" shows the difference, and the export check catches it.
    tok = BPETokenizer("cl100k", {(ord("3"), ord("4")): 256})
    assert tok.encode("1234") == [ord("1"), ord("2"), ord("3"), ord("4")]  # "123" + "4"
    assert check_with_tokenizers(tok, hf_tokenizer_text(tok))
    monkeypatch.setattr(hf_format_module, "to_oniguruma", lambda pattern: pattern)
    with pytest.raises(ScratchLMError, match="would encode this export differently"):
        check_with_tokenizers(tok, hf_tokenizer_text(tok))


def test_merges_apply_in_list_order_in_tokenizers_so_import_refuses_other_orders(
    tmp_path: Path,
) -> None:
    # Bytes a, b, c; merges (b c) -> 256 and (a b) -> 257, listed in the opposite order.
    tok = BPETokenizer("gpt2", {(98, 99): 256, (97, 98): 257})
    data = hf_tokenizer_json(tok)
    assert data["model"]["merges"] == ["b c", "a b"]  # written in id order
    data["model"]["merges"].reverse()
    path = tmp_path / "swapped.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    hf = tokenizers.Tokenizer.from_file(str(path))
    assert hf.encode("abc").ids == [257, 99]  # the list order decides, not the ids
    assert tok.encode("abc") == [97, 256]
    message = one_line_error(load_hf_tokenizer, path)
    assert "swapped.json" in message and '"model.merges" entry 1' in message
    assert "grow in merge order" in message


def test_ignore_merges(tmp_path: Path) -> None:
    # "abc" is made by (a, bc), but BPE on "abc" first joins (a, b) and gets stuck at [ab, c].
    tok = BPETokenizer("gpt2", {(97, 98): 256, (98, 99): 257, (97, 257): 258})
    assert tok.encode("abc") == [256, 99]
    data = hf_tokenizer_json(tok)
    data["model"]["ignore_merges"] = True
    path = tmp_path / "ignore.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    assert tokenizers.Tokenizer.from_file(str(path)).encode("abc").ids == [258]  # vocab lookup
    message = one_line_error(load_hf_tokenizer, path)
    assert "ignore.json" in message and '"model.ignore_merges"' in message
    # For vocabularies where BPE gives every token itself, the flag changes nothing: accepted.
    data = json.loads(exported("trained-gpt4").read_text(encoding="utf-8"))
    data["model"]["ignore_merges"] = True
    path.write_text(json.dumps(data), encoding="utf-8")
    assert load_hf_tokenizer(path).merges == ours("trained-gpt4").merges


def test_tokens_with_the_same_bytes_cannot_be_exported(tmp_path: Path) -> None:
    # Training can make "abc" twice, as (ab, c) and (a, bc); a string -> id vocab cannot.
    tok = BPETokenizer("gpt2", {(97, 98): 256, (256, 99): 257, (98, 99): 258, (97, 258): 259})
    message = one_line_error(save_hf_tokenizer, tok, tmp_path / "dup.json")
    assert "ids 257 and 259" in message and "'abc'" in message
    assert not (tmp_path / "dup.json").exists()


# -------------------------------------------------------------------------- regex dialects


def onig_chunks(onig_pattern: str, text: str) -> list[str]:
    split = tokenizers.pre_tokenizers.Split(tokenizers.Regex(onig_pattern), behavior="isolated")
    return [piece for piece, _ in split.pre_tokenize_str(text)]


def py_chunks(pattern: str, text: str) -> list[str]:
    return [m.group() for m in regex.finditer(pattern, text)]


# Each pattern ends with a catch-all, so both engines cut the whole text into chunks.
PYTHON_PATTERNS = [
    r"\p{N}{1,3}+|\D+",
    r"(?:ab){1,2}+b|[\s\S]",
    r"[a-z]+$|[\s\S]",
    r"^[a-z]|[\s\S]",
    r"\s+\Z|\S+|\s",
    r"\pL+|\PL",
    r"(?s:a.b)|[\s\S]",
    r"[]a[&]+|[\s\S]",
    r"\U0001F600+|\N{SNOWMAN}|[\s\S]",
    r"(?i)AB|[\s\S]",
    r"(?P<x>a)b|[\s\S]",
]
ONIG_PATTERNS = [
    r"\p{N}{1,3}+|\D+",
    r"[a-z]+$|[\s\S]",
    r"^[a-z]|[\s\S]",
    r"\s+\Z|\s+\z|\S+|\s",
    r"(?m:a.b)|[\s\S]",
    r"\h+|[\s\S]",
    r"[\h]+|[\s\S]",
    r"\x{1F600}+|[\s\S]",
    r"\N+|\n",
]
DIALECT_TEXTS = ["1234567 ab", "ab\ncd\n", "abab b abbb\n\n", "a\nb AB ab", "😀😀☃ 12 x", "  \n "]


@pytest.mark.parametrize("pattern", PYTHON_PATTERNS)
def test_to_oniguruma_keeps_the_meaning(pattern: str) -> None:
    for text in DIALECT_TEXTS:
        assert onig_chunks(to_oniguruma(pattern), text) == py_chunks(pattern, text), text


@pytest.mark.parametrize("pattern", ONIG_PATTERNS)
def test_from_oniguruma_keeps_the_meaning(pattern: str) -> None:
    for text in DIALECT_TEXTS:
        assert py_chunks(from_oniguruma(pattern), text) == onig_chunks(pattern, text), text


@pytest.mark.parametrize("pattern", NAMED_PATTERNS.values(), ids=NAMED_PATTERNS.keys())
def test_named_patterns_in_oniguruma(pattern: str) -> None:
    text = PYDOC_TEXT[:30_000] + "".join(ADVERSARIAL)
    assert onig_chunks(to_oniguruma(pattern), text) == py_chunks(pattern, text)


def test_untranslatable_constructs_are_refused() -> None:
    with pytest.raises(ScratchLMError, match="inline flag 'm'"):
        to_oniguruma(r"(?m)^a|\s")
    with pytest.raises(ScratchLMError, match="after the start"):
        to_oniguruma(r"a(?i)b")
    with pytest.raises(ScratchLMError, match="nested character class"):
        from_oniguruma(r"[a[b]]")
    with pytest.raises(ScratchLMError, match="intersection"):
        from_oniguruma(r"[a-z&&[^b]]")
    assert to_oniguruma(CL100K_SPLIT_PATTERN).count("(?>") == 1


# --------------------------------------------------------------------------------- bad files


def one_line_error(function: Any, *args: Any) -> str:
    with pytest.raises(ScratchLMError) as caught:
        function(*args)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def mutated(change: Any) -> dict[str, Any]:
    data = hf_tokenizer_json(ours("trained-gpt2"))
    change(data)
    return data


def _set(*keys: str, value: Any) -> Any:
    def change(data: dict[str, Any]) -> None:
        for key in keys[:-1]:
            data = data[key]
        data[keys[-1]] = value

    return change


def _drop(*keys: str) -> Any:
    def change(data: dict[str, Any]) -> None:
        for key in keys[:-1]:
            data = data[key]
        del data[keys[-1]]

    return change


def _vocab(token: str, token_id: int) -> Any:
    return lambda data: data["model"]["vocab"].__setitem__(token, token_id)


BAD_HF = {
    "model-missing": (_drop("model"), ['"model"']),
    "wordpiece": (_set("model", "type", value="WordPiece"), ['"model.type"', "WordPiece"]),
    "vocab-missing": (_drop("model", "vocab"), ['"model.vocab"']),
    "merges-not-list": (_set("model", "merges", value="a b"), ['"model.merges"']),
    "merge-unknown-token": (
        lambda d: d["model"]["merges"].insert(3, "Ġ zzzzz"),
        ['"model.merges" entry 3', "'zzzzz'", '"model.vocab"'],
    ),
    "merge-malformed": (
        lambda d: d["model"]["merges"].insert(5, "a b c"),
        ['"model.merges" entry 5'],
    ),
    "merge-result-missing": (
        lambda d: d["model"]["merges"].append("q z"),
        ['"model.merges" entry', "'qz'", "not in"],
    ),
    "byte-missing": (lambda d: d["model"]["vocab"].pop("Ġ"), ['"model.vocab"', "0x20"]),
    "unreachable-token": (_vocab("<unk>", 5000), ['"model.vocab"', "'<unk>'"]),
    "shared-id": (_vocab("zz", 3), ['"model.vocab"', "id 3"]),
    "normalizer": (_set("normalizer", value={"type": "NFC"}), ['"normalizer"', "NFC"]),
    "pre-tokenizer": (
        _set("pre_tokenizer", value={"type": "Whitespace"}),
        ['"pre_tokenizer"', "Whitespace"],
    ),
    "prefix-space": (
        _set("pre_tokenizer", value={"type": "ByteLevel", "add_prefix_space": True}),
        ['"pre_tokenizer"', "add_prefix_space"],
    ),
    "byte-fallback": (_set("model", "byte_fallback", value=True), ['"model.byte_fallback"']),
    "decoder": (_set("decoder", value={"type": "WordPiece"}), ['"decoder"', "WordPiece"]),
    "post-processor": (
        _set("post_processor", value={"type": "TemplateProcessing"}),
        ['"post_processor"', "TemplateProcessing"],
    ),
    "added-not-special": (
        lambda d: d["added_tokens"][0].__setitem__("special", False),
        ['"added_tokens" entry 0', "not special"],
    ),
    "added-lstrip": (
        lambda d: d["added_tokens"][1].__setitem__("lstrip", True),
        ['"added_tokens" entry 1', "lstrip"],
    ),
    "added-wrong-id": (
        lambda d: d["added_tokens"][0].__setitem__("id", 7),
        ['"added_tokens" entry 0', "id 7"],
    ),
}


@pytest.mark.parametrize("case", BAD_HF)
def test_bad_hf_file_is_one_line_naming_file_and_key(case: str, tmp_path: Path) -> None:
    change, fragments = BAD_HF[case]
    path = tmp_path / f"{case}.json"
    path.write_text(json.dumps(mutated(change)), encoding="utf-8")
    message = one_line_error(load_hf_tokenizer, path)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b'{"model": {"type": "BPE", "vocab": {"a": 0}, "merg', "not valid JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"format": "scratchlm-bpe", "version": 1}', "scratchlm tokenizer file"),
    ],
)
def test_unreadable_hf_file(content: bytes, fragment: str, tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_bytes(content)
    message = one_line_error(load_hf_tokenizer, path)
    assert str(path) in message and fragment in message
    assert str(tmp_path / "nope.json") in one_line_error(load_hf_tokenizer, tmp_path / "nope.json")


def test_hf_bytelevel_pre_tokenizer_means_gpt2_split() -> None:
    # GPT-2's own tokenizer.json uses ByteLevel with its built-in regex.
    byte_level = {
        "type": "ByteLevel",
        "add_prefix_space": False,
        "trim_offsets": True,
        "use_regex": True,
    }
    data = mutated(_set("pre_tokenizer", value=byte_level))
    tok = hf_format_module.from_hf_json(data)
    hf = tokenizers.Tokenizer.from_str(json.dumps(data))
    hf.encode_special_tokens = True
    for text in [PYDOC_TEXT[:20_000], *ADVERSARIAL]:
        assert hf.encode(text).ids == tok.encode(text)


# ------------------------------------------------------------------------ GPT-2's own files

# openai-whisper shipped GPT-2's vocabulary as vocab.json + merges.txt until March 2023.
WHISPER = "openai-whisper==20230306"
GPT2_FILES = {
    "vocab.json": "3ba3c3109ff33976c4bd966589c11ee14fcaa1f4c9e5e154c2ed7f99d80709e7",
    "merges.txt": "fe36cab26d4f4421ed725e10a2e9ddb7f799449c603a96e7f29b5a3c82a95862",
}


@functools.cache
def gpt2_files() -> tuple[Path, Path]:
    """GPT-2's vocab.json and merges.txt, downloaded into the cache on first use."""
    folder = cache_dir() / "gpt2-files"
    paths = [folder / name for name in GPT2_FILES]
    if all(p.is_file() for p in paths):
        return paths[0], paths[1]
    with tempfile.TemporaryDirectory(prefix="scratchlm-gpt2-") as tmp:
        # The 2023 sdist's setup.py imports pkg_resources, gone from setuptools 81.
        constraint = Path(tmp) / "build-constraints.txt"
        constraint.write_text("setuptools<81\n", encoding="utf-8")
        download = Path(tmp) / "download"
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
        command += ["--no-binary", ":all:", "--build-constraint", str(constraint)]
        done = subprocess.run(
            [*command, "-d", str(download), WHISPER], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, f"could not download {WHISPER}:\n{done.stderr}"
        (archive,) = download.iterdir()
        with tarfile.open(archive) as tf:
            for name, sha256 in GPT2_FILES.items():
                member = tf.extractfile(
                    f"{archive.name.removesuffix('.tar.gz')}/whisper/assets/gpt2/{name}"
                )
                assert member is not None
                data = member.read()
                assert hashlib.sha256(data).hexdigest() == sha256, name
                atomic_write_bytes(folder / name, data)
    return paths[0], paths[1]


def test_gpt2_files_give_tiktokens_gpt2() -> None:
    vocab, merges = gpt2_files()
    tok, reference = load_gpt2_files(vocab, merges), ours("gpt2")
    assert tok.merges == reference.merges
    assert tok.byte_ids == reference.byte_ids
    assert tok.special_tokens == reference.special_tokens == {EOT: 50256}
    assert tok.pattern == reference.pattern
    text = PYDOC_TEXT[:100_000]
    assert tok.encode(text, engine="python") == reference.encode(text, engine="tiktoken")


def test_gpt2_reader_agrees_with_tiktokens_data_gym_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    tiktoken_load = pytest.importorskip("tiktoken.load")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # read the files, cache nothing
    vocab, merges = gpt2_files()
    ranks = tiktoken_load.data_gym_to_mergeable_bpe_ranks(str(merges), str(vocab))
    assert tokenizer_ranks(load_gpt2_files(vocab, merges)) == ranks


def test_gpt2_files_encode_as_tokenizers_own_gpt2_pipeline() -> None:
    # tokenizers reads vocab.json + merges.txt itself: an independent reading of the files.
    vocab, merges = gpt2_files()
    hf = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(vocab), str(merges)))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok = load_gpt2_files(vocab, merges)
    for text in [PYDOC_TEXT[:50_000], *ADVERSARIAL]:
        assert hf.encode(text).ids == tok.encode(text), text[:40]


def test_gpt2_export_reproduces_the_real_files() -> None:
    vocab, merges = gpt2_files()
    vocab_text, merges_text = gpt2_files_text(ours("gpt2"))
    assert vocab_text == vocab.read_text(encoding="utf-8")
    real = merges.read_text(encoding="utf-8").split("\n")
    assert merges_text.split("\n")[0] == "#version: 0.2" and real[0].startswith("#version: 0.2")
    assert merges_text.split("\n")[1:] == real[1:]


def test_gpt2_round_trip_and_pattern_check(tmp_path: Path) -> None:
    tok = ours("trained-gpt2")
    save_gpt2_files(tok, tmp_path / "encoder.json", tmp_path / "vocab.bpe")
    back = load_gpt2_files(tmp_path / "encoder.json", tmp_path / "vocab.bpe", pattern="gpt2")
    assert (back.merges, back.special_tokens, back.byte_ids) == (
        tok.merges,
        tok.special_tokens,
        tok.byte_ids,
    )
    message = one_line_error(save_gpt2_files, ours("trained-gpt4"), tmp_path / "a", tmp_path / "b")
    assert "gpt4 pattern" in message and not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    ("vocab_text", "merges_text", "fragments"),
    [
        ('{"a": 0', "#version: 0.2\n", ["vocab.json", "not valid JSON"]),
        ("[]", "#version: 0.2\n", ["vocab.json", "not an object"]),
        (None, "#version: 0.2\nĠ t\nĠt h e\n", ["merges.txt line 3", "not two tokens"]),
        (None, "#version: 0.2\nĠ t\nĠt hh\n", ["merges.txt line 3", "'hh'", "vocab.json"]),
        (None, "#version: 0.2\nĠ q\n", ["merges.txt line 2", "'Ġq'", "not in"]),
    ],
)
def test_bad_gpt2_files(
    vocab_text: str | None, merges_text: str, fragments: list[str], tmp_path: Path
) -> None:
    bytes_only = {BYTE_TO_CHAR[b]: b for b in range(256)} | {"Ġt": 256}
    vocab, merges = tmp_path / "vocab.json", tmp_path / "merges.txt"
    vocab.write_text(vocab_text or json.dumps(bytes_only), encoding="utf-8")
    merges.write_text(merges_text, encoding="utf-8")
    message = one_line_error(load_gpt2_files, vocab, merges)
    for fragment in fragments:
        assert fragment in message, message


# ----------------------------------------------------------------------------------- the CLI


def scratchlm(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m scratchlm COMMAND` (split like a shell line) in a subprocess."""
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    return subprocess.run(
        [sys.executable, "-m", "scratchlm", *shlex.split(command)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


def user_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit status 2 and exactly one line on stderr, "error: ...", holding `fragments`."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_cli_export_and_import_every_format(tmp_path: Path) -> None:
    ours("trained-o200k").save(tmp_path / "tok.json")
    original = (tmp_path / "tok.json").read_text(encoding="utf-8")
    out = ok(scratchlm("tokenizer export --tokenizer tok.json --format hf --out hf.json", tmp_path))
    assert "checked: the tokenizers library encodes it as scratchlm does" in out
    ok(scratchlm("tokenizer import hf.json --format hf --out from-hf.json", tmp_path))
    assert (tmp_path / "from-hf.json").read_text(encoding="utf-8") == original

    export = "tokenizer export --tokenizer tok.json --format tiktoken --out t.tiktoken"
    out = ok(scratchlm(export, tmp_path))
    # The message says how to import the rank file again (pattern, specials); do just that.
    command = out.splitlines()[-1].split("to read it back: scratchlm ")[1]
    ok(scratchlm(command.replace("TOKENIZER.json", "from-tiktoken.json"), tmp_path))
    assert (tmp_path / "from-tiktoken.json").read_text(encoding="utf-8") == original

    ours("trained-gpt2").save(tmp_path / "tok2.json")
    ok(scratchlm("tokenizer export --tokenizer tok2.json --format gpt2 --out gpt2", tmp_path))
    assert sorted(p.name for p in (tmp_path / "gpt2").iterdir()) == ["merges.txt", "vocab.json"]
    files = "gpt2/vocab.json gpt2/merges.txt"
    ok(scratchlm(f"tokenizer import {files} --format gpt2 --pattern gpt2 --out g.json", tmp_path))
    assert (tmp_path / "g.json").read_text(encoding="utf-8") == (tmp_path / "tok2.json").read_text(
        encoding="utf-8"
    )


def test_cli_import_pretrained(tmp_path: Path) -> None:
    pretrained("gpt2")  # the rank file is in the cache
    out = ok(scratchlm("tokenizer import --pretrained gpt2 --out gpt2.json", tmp_path))
    assert "saved a 50,257-token tokenizer to gpt2.json" in out
    tok = BPETokenizer.load(tmp_path / "gpt2.json")
    assert tok.merges == ours("gpt2").merges and tok.byte_ids == ours("gpt2").byte_ids


def test_cli_errors(tmp_path: Path) -> None:
    ours("trained-gpt4").save(tmp_path / "tok.json")
    before = (tmp_path / "tok.json").read_bytes()
    user_error(
        scratchlm("tokenizer export --tokenizer tok.json --format hf --out tok.json", tmp_path),
        "tok.json already exists",
        "--overwrite",
    )
    assert (tmp_path / "tok.json").read_bytes() == before
    (tmp_path / "broken.json").write_text('{"model": {"type": "BPE", "vocab": ', encoding="utf-8")
    user_error(
        scratchlm("tokenizer import broken.json --format hf --out x.json", tmp_path),
        "broken.json",
        "not valid JSON",
    )
    user_error(
        scratchlm("tokenizer import --format hf tok.json --out x.json", tmp_path),
        "tok.json",
        "scratchlm tokenizer file",
    )
    user_error(
        scratchlm("tokenizer import t.tiktoken --format tiktoken --out x.json", tmp_path),
        "needs --pattern",
    )
    user_error(
        scratchlm("tokenizer export --tokenizer tok.json --format gpt2 --out g", tmp_path),
        "gpt4 pattern",
    )
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "g").exists()
    for command in ("export", "import"):
        assert ok(scratchlm(f"tokenizer {command} --help", tmp_path)).startswith(
            f"usage: scratchlm tokenizer {command}"
        )
