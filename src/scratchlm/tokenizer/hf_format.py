"""Hugging Face's `tokenizer.json`: export a BPETokenizer for the `tokenizers` library, and import
a byte-level BPE tokenizer.json back.

What we write (checked against tokenizers 0.23.3):

    pre_tokenizer  Sequence[Split(our pattern, "Isolated"), ByteLevel(add_prefix_space=false,
                   use_regex=false)]: cut the text with our regex, then spell each chunk's
                   bytes in GPT-2's byte-to-unicode alphabet (see gpt2_format)
    model          BPE over that alphabet: the vocab (token -> id, special tokens included,
                   because tokenizers renumbers an added token that is missing from it) and
                   the merges in id order, so that a merge's rank in the list is its priority
                   exactly as our smaller-id-first rule has it; ignore_merges=false (true
                   would look whole chunks up in the vocab first, which our encoder does
                   not), no unk token, byte_fallback=false, no dropout
    added_tokens   our special tokens, special=true, matched on the raw text
    decoder        ByteLevel; no normalizer and no post-processor

The pattern is rewritten for Oniguruma, the regex engine of tokenizers, where a few
constructs mean something else (scratchlm.tokenizer.regex_dialects); after writing, when
tokenizers is installed, `save_hf_tokenizer` loads the file with it and refuses the export if
a probe text encodes differently.

What a user of the file gets from `tokenizers.Tokenizer.from_file(path)`:

  * `encode(text).ids` equals our `encode(text, allowed_special="all")`: tokenizers matches
    added tokens anywhere in the text, so typed "<|endoftext|>" becomes the special id.
    Our default treats special token strings as plain text; to get that, set
    `tokenizer.encode_special_tokens = True` (a runtime setting that tokenizer.json cannot
    store). Then the ids equal our `encode(text)`.
  * `decode(ids)` skips special tokens unless given `skip_special_tokens=False`, drops ids
    it does not know (ours raises), and replaces invalid UTF-8 with U+FFFD as ours does.
  * `get_vocab_size()` counts tokens; ours is the largest id + 1, which is larger when the
    ids have gaps (cl100k_base: 100,261 tokens, ids up to 100,276).
  * Oniguruma knows an older Unicode than the regex module, so text using recently assigned
    characters (about 17,000 code points, mostly historic scripts) may be split differently.

Import (`load_hf_tokenizer`) takes only what has a faithful translation: a BPE model over the
byte-level alphabet with every byte in its vocab; no normalizer; a ByteLevel pre-tokenizer
(GPT-2's split) or Split + ByteLevel(use_regex=false); special added tokens without
lstrip/rstrip/single_word; merge ids growing in merge order. Anything else is refused with
one line naming the file and the key, never imported with a different meaning.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import regex

from scratchlm.core.atomic_files import atomic_write_text
from scratchlm.core.errors import ScratchLMError
from scratchlm.core.user_files import read_json
from scratchlm.tokenizer.bpe import BPETokenizer
from scratchlm.tokenizer.chunks import Pair, merge_pair
from scratchlm.tokenizer.gpt2_format import (
    byte_level_merges,
    byte_level_vocab,
    from_byte_level_bpe,
)
from scratchlm.tokenizer.patterns import NAMED_PATTERNS, R50K_SPLIT_PATTERN
from scratchlm.tokenizer.regex_dialects import from_oniguruma, to_oniguruma

# Text that exercises every part of the split patterns in use: contractions in both cases,
# digit runs, CamelCase, runs of spaces, tabs and newlines, CRLF, punctuation before
# newlines and slashes, multi-byte characters and emoji.
_PROBE = (
    "Hello, world! It's 12345 o'clock; THEY'LL say 'hi' — we'd've.\n\n"
    "  def f(x):\r\n\treturn x ** 2  # comment\n"
    "getHTTPResponseCode iPhone McDonald's 3.14159 1,000,000 0x7fff\n"
    "中文文本，日本語のテキスト、한국어 텍스트。 Grüße, café, naïve — “quotes”…\n"
    "emoji 😀👍🏽 🇫🇷 e\u0301 \u00a0nbsp\u2028sep   trailing   \n\n\n"
    "https://example.com/a/b?q=1&r=2 path/to/file.txt ---=== end"
)


# ------------------------------------------------------------------------------------ export


def hf_tokenizer_json(tokenizer: BPETokenizer) -> dict[str, Any]:
    """`tokenizer` as the object a tokenizer.json holds (see the module docstring)."""
    vocab = byte_level_vocab(tokenizer, "tokenizer.json's vocab")
    merges = [f"{a} {b}" for a, b in byte_level_merges(tokenizer)]
    added = [
        {
            "id": token_id,
            "content": name,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for name, token_id in sorted(tokenizer.special_tokens.items(), key=lambda kv: kv[1])
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": to_oniguruma(tokenizer.pattern)},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {
                    "type": "ByteLevel",
                    "add_prefix_space": False,
                    "trim_offsets": False,
                    "use_regex": False,
                },
            ],
        },
        "post_processor": None,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": False,
            "use_regex": False,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }


def hf_tokenizer_text(tokenizer: BPETokenizer) -> str:
    """The text of the tokenizer.json for `tokenizer` (UTF-8, one vocab entry per line)."""
    return json.dumps(hf_tokenizer_json(tokenizer), ensure_ascii=False, indent=2) + "\n"


def save_hf_tokenizer(
    tokenizer: BPETokenizer, path: str | os.PathLike[str], check: bool = True
) -> bool:
    """Write `tokenizer` as a Hugging Face tokenizer.json, atomically.

    With `check` (the default) and tokenizers installed, the file is first loaded with
    tokenizers and must encode a probe text exactly as `tokenizer` does; otherwise nothing is
    written and ScratchLMError says where they part. Returns whether that check ran. Also
    raises when the tokenizer cannot be expressed: two tokens with the same bytes, or a
    pattern construct Oniguruma lacks.
    """
    text = hf_tokenizer_text(tokenizer)
    checked = check and check_with_tokenizers(tokenizer, text)
    atomic_write_text(path, text)
    return checked


def check_with_tokenizers(tokenizer: BPETokenizer, text: str) -> bool:
    """Load tokenizer.json `text` with the tokenizers library and check that it encodes a probe
    text, with and without special tokens, as `tokenizer` does. Returns False when tokenizers
    is not installed (nothing checked); raises ScratchLMError on any difference."""
    try:
        import tokenizers
    except ImportError:
        return False
    try:
        theirs = tokenizers.Tokenizer.from_str(text)
    except Exception as e:  # tokenizers raises its own exception types
        raise ScratchLMError(
            f"tokenizers {tokenizers.__version__} cannot load the exported tokenizer.json: {e}"
        ) from None
    with_specials = _PROBE + "".join(f" {name}x" for name in tokenizer.special_tokens)
    cases = [(_PROBE, False), (with_specials, True), (with_specials, False)]
    if not hasattr(theirs, "encode_special_tokens"):  # tokenizers before 0.15
        cases = [(with_specials, True)]
    for probe, allow in cases:
        if not allow or hasattr(theirs, "encode_special_tokens"):
            theirs.encode_special_tokens = not allow
        got = theirs.encode(probe, add_special_tokens=False).ids
        expected = tokenizer.encode(probe, allowed_special="all" if allow else "none")
        if got != expected:
            k = next(
                (i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
                min(len(got), len(expected)),
            )
            near = tokenizer.decode(expected[max(0, k - 3) : k + 3])
            raise ScratchLMError(
                f"tokenizers {tokenizers.__version__} would encode this export differently "
                f"from scratchlm (token {k}, near {near!r}); the split pattern probably uses "
                "a construct its regex engine (Oniguruma) reads differently"
            )
    return True


# ------------------------------------------------------------------------------------ import


def load_hf_tokenizer(path: str | os.PathLike[str]) -> BPETokenizer:
    """Read a Hugging Face tokenizer.json holding a byte-level BPE tokenizer.

    Anything we cannot reproduce exactly raises a one-line ScratchLMError naming the file and
    the key (see the module docstring for what is supported).
    """
    path = Path(path)
    data = read_json(path, what="tokenizer.json")
    try:
        return from_hf_json(data)
    except ScratchLMError as e:
        raise ScratchLMError(f"{path}: {e}") from None


def from_hf_json(data: Any) -> BPETokenizer:
    """A BPETokenizer from the parsed contents of a tokenizer.json (see load_hf_tokenizer)."""
    if not isinstance(data, dict):
        raise ScratchLMError(
            f"expected a JSON object, found a {type(data).__name__}; is it a tokenizer.json?"
        )
    if data.get("format") == "scratchlm-bpe":
        raise ScratchLMError(
            "this is a scratchlm tokenizer file, not a Hugging Face tokenizer.json; "
            "it needs no import"
        )
    model = data.get("model")
    if not isinstance(model, dict):
        raise ScratchLMError('"model" is missing or not an object; is it a tokenizer.json?')
    model_type = model.get("type", "BPE" if "merges" in model else None)
    if model_type != "BPE":
        raise ScratchLMError(
            f'"model.type" is {model_type!r}, but only byte-level BPE models ("BPE") can be '
            "imported"
        )
    _check_model_options(model)
    if data.get("normalizer") not in (None, {"type": "Sequence", "normalizers": []}):
        raise ScratchLMError(
            f'"normalizer" is {_kind(data["normalizer"])}, but scratchlm does not normalize '
            "text; only null is supported"
        )
    for key in ("post_processor", "decoder"):
        value = data.get(key)
        if value is not None and _kind(value) != "ByteLevel":
            raise ScratchLMError(
                f'"{key}" is {_kind(value)}, but only null or ByteLevel is supported '
                "(scratchlm's encode adds no tokens and decodes bytes as they are)"
            )
    pattern = _pattern_from(data.get("pre_tokenizer"))

    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise ScratchLMError('"model.vocab" must be an object of token -> id')
    merges = _merges_from(model.get("merges"))
    specials = _specials_from(data.get("added_tokens", []), vocab)
    tokenizer = from_byte_level_bpe(
        vocab,
        merges,
        pattern,
        specials,
        vocab_name='"model.vocab"',
        merge_name=lambda k: f'"model.merges" entry {k}',
    )
    if model.get("ignore_merges"):
        _check_ignore_merges_is_moot(tokenizer)
    return tokenizer


def _check_model_options(model: dict[str, Any]) -> None:
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key) not in (None, ""):
            raise ScratchLMError(
                f'"model.{key}" is {model[key]!r}; byte-level BPE has none, so it is not supported'
            )
    if model.get("byte_fallback"):
        raise ScratchLMError(
            '"model.byte_fallback" is true (SentencePiece-style <0xNN> tokens), which is not '
            "byte-level BPE and is not supported"
        )
    if model.get("dropout") not in (None, 0, 0.0):
        raise ScratchLMError(
            f'"model.dropout" is {model["dropout"]!r}; BPE dropout makes encoding random and is '
            "not supported"
        )


def _pattern_from(pre: Any) -> str:
    """Our split pattern for a supported pre-tokenizer (see the module docstring)."""
    steps = pre.get("pretokenizers") if _kind(pre) == "Sequence" else [pre]
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise ScratchLMError(
            f'"pre_tokenizer" is {_kind(pre)}, but byte-level BPE needs a ByteLevel step'
        )
    kinds = [_kind(s) for s in steps]
    last = steps[-1] if steps else {}
    if not steps or kinds[-1] != "ByteLevel":
        raise ScratchLMError(
            f'"pre_tokenizer" is {" + ".join(kinds) or "empty"}; only ByteLevel, or Split '
            "followed by ByteLevel, is supported"
        )
    if last.get("add_prefix_space"):
        raise ScratchLMError(
            '"pre_tokenizer" ByteLevel has add_prefix_space true (a space is added before the '
            "text), which scratchlm does not do; only false is supported"
        )
    use_regex = last.get("use_regex", True)
    if kinds == ["ByteLevel"]:
        # use_regex: GPT-2's split, which tiktoken spells as r50k; without it, one chunk.
        return R50K_SPLIT_PATTERN if use_regex else r"(?s:.+)"
    if kinds != ["Split", "ByteLevel"] or use_regex:
        raise ScratchLMError(
            f'"pre_tokenizer" is {" + ".join(kinds)}'
            f"{' with ByteLevel use_regex true' if use_regex else ''}; only ByteLevel, or "
            "Split followed by ByteLevel with use_regex false, is supported"
        )
    split = steps[0]
    if split.get("behavior") != "Isolated" or split.get("invert", False):
        raise ScratchLMError(
            f'"pre_tokenizer" Split has behavior {split.get("behavior")!r} and invert '
            f"{split.get('invert', False)!r}; only Isolated without invert is supported"
        )
    spec = split.get("pattern")
    if isinstance(spec, dict) and isinstance(spec.get("Regex"), str):
        onig = spec["Regex"]
    elif isinstance(spec, dict) and isinstance(spec.get("String"), str):
        return _escape_literal(spec["String"])
    else:
        raise ScratchLMError(
            '"pre_tokenizer" Split "pattern" must be {"Regex": "..."} or {"String": "..."}'
        )
    for name, ours in NAMED_PATTERNS.items():
        if to_oniguruma(ours) == onig:
            return NAMED_PATTERNS[name]
    return from_oniguruma(onig)


def _escape_literal(text: str) -> str:
    # Isolated keeps both the matches and the text between them as chunks.
    return f"{regex.escape(text)}|(?s:(?:(?!{regex.escape(text)}).)+)"


def _merges_from(raw: Any) -> list[tuple[str, str]]:
    if not isinstance(raw, list):
        raise ScratchLMError('"model.merges" must be a list')
    merges = []
    for k, item in enumerate(raw):
        if isinstance(item, str):
            parts = item.split(" ")
        elif isinstance(item, list):
            parts = item
        else:
            parts = []
        if len(parts) != 2 or not all(isinstance(p, str) and p for p in parts):
            raise ScratchLMError(
                f'"model.merges" entry {k} is {item!r}, not "first second" or [first, second]'
            )
        merges.append((parts[0], parts[1]))
    return merges


def _specials_from(raw: Any, vocab: dict[str, Any]) -> dict[str, int]:
    """Added tokens -> our special tokens, with the ids tokenizers itself would give them."""
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise ScratchLMError('"added_tokens" must be a list of objects')
    specials: dict[str, int] = {}
    # tokenizers keeps the vocab's id for an added token found there, and numbers the others
    # from the vocab's size up, in order of their ids in the file.
    outside = sorted(
        (t for t in raw if t.get("content") not in vocab), key=lambda t: _int_or(t.get("id"))
    )
    assigned = {id(t): len(vocab) + n for n, t in enumerate(outside)}
    for k, token in enumerate(raw):
        where = f'"added_tokens" entry {k}'
        content, token_id = token.get("content"), token.get("id")
        if not isinstance(content, str) or not content:
            raise ScratchLMError(f'{where} has "content" {content!r}, not a non-empty string')
        if not isinstance(token_id, int) or isinstance(token_id, bool):
            raise ScratchLMError(f'{where} ({content!r}) has "id" {token_id!r}, not an integer')
        if not token.get("special", False):
            raise ScratchLMError(
                f"{where} ({content!r}) is not special; scratchlm only has special tokens, "
                "which ordinary text never produces"
            )
        for option in ("single_word", "lstrip", "rstrip"):
            if token.get(option):
                raise ScratchLMError(
                    f'{where} ({content!r}) has "{option}" true, which scratchlm does not '
                    "support (special tokens match exactly their own text)"
                )
        actual = vocab[content] if content in vocab else assigned[id(token)]
        if actual != token_id:
            raise ScratchLMError(
                f"{where} ({content!r}) says id {token_id}, but tokenizers would give it id "
                f"{actual} ({'its id in model.vocab' if content in vocab else 'the next free'})"
            )
        if content in specials:
            raise ScratchLMError(f"{where} repeats the added token {content!r}")
        specials[content] = token_id
    return specials


def _check_ignore_merges_is_moot(tokenizer: BPETokenizer) -> None:
    """With ignore_merges, tokenizers first looks a whole chunk up in the vocab. Our encoder
    has no such shortcut, so accept the file only if BPE already gives every token's bytes as
    that one token (true of tiktoken-style vocabularies, e.g. Llama 3's)."""
    merges = tokenizer.merges
    byte_ids = tokenizer.byte_ids
    vocab = tokenizer.vocab
    for token_id in sorted(merges.values()):
        ids = [byte_ids[b] for b in vocab[token_id]]
        while len(ids) > 1:
            best: Pair | None = None
            best_id = -1
            for pair in itertools.pairwise(ids):
                new_id = merges.get(pair)
                if new_id is not None and (best is None or new_id < best_id):
                    best, best_id = pair, new_id
            if best is None:
                break
            ids = merge_pair(ids, best, best_id)
        if ids != [token_id]:
            raise ScratchLMError(
                f'"model.ignore_merges" is true, and the merges turn token {token_id} '
                f"({vocab[token_id]!r}) into {ids} rather than itself, so tokenizers and "
                "scratchlm would encode that text differently"
            )


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return str(value.get("type", "an object without a type"))
    return f"a {type(value).__name__}"


def _int_or(value: Any, default: int = 1 << 62) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default
