"""GPT-2's vocabulary files: `encoder.json` + `vocab.bpe`, alias Hugging Face's `vocab.json` +
`merges.txt` (the same two files under the names Hugging Face gave them).

encoder.json maps every token to its id. vocab.bpe lists the merges in priority order, one
"first second" per line after a "#version: 0.2" header line. Both spell a token's bytes in
GPT-2's byte-to-unicode alphabet, which gives each of the 256 bytes a printable character
that is not a space, so that a token is a plain JSON string and a merge line splits on its
one space: the printable Latin-1 bytes stand for themselves ("a" is "a") and the 68 others
(control bytes, space, 0x7F-0xA0 and 0xAD) become U+0100 onwards in byte order (space is
"Ġ", newline "Ċ"). Hugging Face's tokenizer.json uses the same alphabet (see hf_format).

The files hold no split pattern: every reader assumes GPT-2's, so `load_gpt2_files` defaults
to it (tiktoken's spelling, "r50k", which splits the same and is faster) and
`save_gpt2_files` refuses a tokenizer that splits otherwise. Nor do they mark special
tokens: a token that is neither a single byte nor made by a merge (GPT-2's only one is
"<|endoftext|>", id 50256) can only be a special token, and is read as one.

`from_byte_level_bpe` does the work for both this format and tokenizer.json: it turns a
string -> id vocabulary and a list of merges into a BPETokenizer, checking on the way
everything our tokenizer relies on, each problem reported as one line naming the file and
the entry.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from scratchlm.core.atomic_files import atomic_write_text
from scratchlm.core.errors import ScratchLMError
from scratchlm.core.user_files import read_json, read_text
from scratchlm.tokenizer.bpe import BPETokenizer, Pair
from scratchlm.tokenizer.patterns import GPT2_SPLIT_PATTERN, NAMED_PATTERNS, R50K_SPLIT_PATTERN

MERGES_HEADER = "#version: 0.2"


def _byte_alphabet() -> tuple[str, ...]:
    printable = [b for b in range(256) if chr(b).isprintable() and b != ord(" ")]
    chars = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in chars]
    chars.update({b: chr(256 + n) for n, b in enumerate(others)})
    return tuple(chars[b] for b in range(256))


# BYTE_TO_CHAR[b] is the character that spells byte b; CHAR_TO_BYTE is its inverse.
BYTE_TO_CHAR: tuple[str, ...] = _byte_alphabet()
CHAR_TO_BYTE: dict[str, int] = {ch: b for b, ch in enumerate(BYTE_TO_CHAR)}


def to_byte_level(data: bytes) -> str:
    """Spell bytes in GPT-2's byte-to-unicode alphabet: b" hi\\n" -> "ĠhiĊ"."""
    return "".join([BYTE_TO_CHAR[b] for b in data])


def from_byte_level(text: str) -> bytes | None:
    """The bytes a byte-level string spells, or None if a character is not in the alphabet."""
    try:
        return bytes([CHAR_TO_BYTE[ch] for ch in text])
    except KeyError:
        return None


# ------------------------------------------------------------------------------------ reading


def from_byte_level_bpe(
    vocab: Mapping[str, Any],
    merges: Sequence[tuple[str, str]],
    pattern: str,
    special_tokens: Mapping[str, int] | None,
    vocab_name: str,
    merge_name: Callable[[int], str],
) -> BPETokenizer:
    """A BPETokenizer from a byte-level vocabulary (token string -> id) and merges (pairs of
    token strings, highest priority first).

    `special_tokens` maps special token strings to ids. When it is None (GPT-2's files, which
    do not mark them), every vocabulary entry that is neither a single byte nor made by a
    merge becomes a special token; otherwise such an entry is an error, since no encoder
    could produce it. `vocab_name` and `merge_name(k)` say where an entry came from, for
    error messages ("vocab.json", "vocab.bpe line 12").

    Our encoder applies the merge with the smallest id first, so the ids of merged tokens
    must grow in merge order; a file whose merge list disagrees with its ids is refused, as
    is one where two merges make the same token, since neither has a faithful translation.
    """
    ids_seen: dict[int, str] = {}
    for token, token_id in vocab.items():
        if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0:
            raise ScratchLMError(
                f"{vocab_name} gives {token!r} the id {token_id!r}, not a non-negative integer"
            )
        if token_id in ids_seen:
            raise ScratchLMError(
                f"{vocab_name} gives id {token_id} to both {ids_seen[token_id]!r} and {token!r}"
            )
        ids_seen[token_id] = token

    specials = dict(special_tokens or {})
    byte_ids: list[int | None] = [None] * 256
    made: set[str] = set()  # tokens that are single bytes or made by a merge so far
    for token, token_id in vocab.items():
        if token in specials:
            continue
        data = from_byte_level(token)
        if data is not None and len(data) == 1:
            byte_ids[data[0]] = token_id
            made.add(token)

    missing = [b for b in range(256) if byte_ids[b] is None]
    if missing:
        b = missing[0]
        raise ScratchLMError(
            f"{vocab_name} has no token for {len(missing)} of the 256 bytes (first: byte "
            f"{b:#04x}, spelled {BYTE_TO_CHAR[b]!r}); a byte-level vocabulary needs them all"
        )

    merge_ids: dict[Pair, int] = {}
    last_id, last_k = -1, -1
    for k, (first, second) in enumerate(merges):
        for part in (first, second):
            if part not in vocab:
                raise ScratchLMError(f"{merge_name(k)} uses {part!r}, which is not in {vocab_name}")
            if part not in made:
                raise ScratchLMError(
                    f"{merge_name(k)} uses {part!r}, which is neither a single byte nor made "
                    "by an earlier merge"
                )
        joined = first + second
        new_id = vocab.get(joined)
        if new_id is None:
            raise ScratchLMError(f"{merge_name(k)} makes {joined!r}, which is not in {vocab_name}")
        if joined in made:
            raise ScratchLMError(
                f"{merge_name(k)} makes {joined!r} (id {new_id}), which is already a single "
                "byte or made by an earlier merge; scratchlm gives each token one merge"
            )
        if new_id < last_id:
            raise ScratchLMError(
                f"{merge_name(k)} makes id {new_id}, but {merge_name(last_k)} before it made "
                f"id {last_id}: scratchlm applies merges in id order, so merged tokens' ids "
                "must grow in merge order"
            )
        merge_ids[(vocab[first], vocab[second])] = new_id
        made.add(joined)
        last_id, last_k = new_id, k

    for token, token_id in vocab.items():
        if token in made:
            continue
        if special_tokens is None:
            specials[token] = token_id
        elif token not in specials:
            raise ScratchLMError(
                f"{vocab_name} has {token!r} (id {token_id}), which is not a single byte, not "
                "made by any merge and not an added token, so no encoder can produce it"
            )
    try:
        return BPETokenizer(pattern, merge_ids, specials, [i for i in byte_ids if i is not None])
    except ScratchLMError as e:
        raise ScratchLMError(f"{vocab_name}: {e}") from None


def read_gpt2_vocab(path: str | os.PathLike[str]) -> dict[str, int]:
    """Read encoder.json / vocab.json: a JSON object of token string -> id."""
    path = Path(path)
    data = read_json(path, what=path.name)
    if not isinstance(data, dict):
        raise ScratchLMError(
            f"{path} holds a JSON {type(data).__name__}, not an object of token -> id; "
            "is it GPT-2's encoder.json (vocab.json)?"
        )
    return data


def load_gpt2_files(
    vocab_path: str | os.PathLike[str],
    merges_path: str | os.PathLike[str],
    pattern: str = "r50k",
) -> BPETokenizer:
    """A tokenizer from encoder.json + vocab.bpe (or vocab.json + merges.txt).

    `pattern` defaults to GPT-2's split pattern; give another one only for files known to
    belong to a tokenizer that splits differently. Any problem raises a one-line
    ScratchLMError naming the file and the entry.
    """
    vocab = read_gpt2_vocab(vocab_path)
    merges, lines = _read_merges(Path(merges_path))
    return from_byte_level_bpe(
        vocab,
        merges,
        pattern,
        None,
        vocab_name=str(vocab_path),
        merge_name=lambda k: f"{merges_path} line {lines[k]}",
    )


def _read_merges(path: Path) -> tuple[list[tuple[str, str]], list[int]]:
    """The merges, and the line number of each (for messages)."""
    merges: list[tuple[str, str]] = []
    numbers: list[int] = []
    for number, line in enumerate(read_text(path, what=path.name).split("\n"), start=1):
        line = line.removesuffix("\r")
        if (number == 1 and line.startswith("#version")) or not line:
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise ScratchLMError(
                f"{path} line {number} is {line[:60]!r}, not two tokens separated by one "
                "space; is it GPT-2's vocab.bpe (merges.txt)?"
            )
        merges.append((parts[0], parts[1]))
        numbers.append(number)
    return merges, numbers


# ------------------------------------------------------------------------------------ writing


def byte_level_vocab(tokenizer: BPETokenizer, format_name: str) -> dict[str, int]:
    """Token string -> id for every token, ordered by id: ordinary tokens in the byte-level
    alphabet, special tokens as they are written. Raises ScratchLMError when two ids would get
    the same string, which a string -> id vocabulary cannot hold."""
    special_ids = {token_id: name for name, token_id in tokenizer.special_tokens.items()}
    vocab: dict[str, int] = {}
    for token_id, data in sorted(tokenizer.vocab.items()):
        token = special_ids.get(token_id)
        spelled = token if token is not None else to_byte_level(data)
        if spelled in vocab:
            raise ScratchLMError(
                f"ids {vocab[spelled]} and {token_id} are both written {spelled!r}, and "
                f"{format_name} maps each string to one id; this tokenizer cannot be saved in it"
            )
        vocab[spelled] = token_id
    return vocab


def byte_level_merges(tokenizer: BPETokenizer) -> list[tuple[str, str]]:
    """The merges in priority (id) order, each as its two tokens in the byte-level alphabet."""
    vocab = tokenizer.vocab
    ordered = sorted(tokenizer.merges.items(), key=lambda item: item[1])
    return [(to_byte_level(vocab[a]), to_byte_level(vocab[b])) for (a, b), _ in ordered]


def gpt2_files_text(tokenizer: BPETokenizer, check_pattern: bool = True) -> tuple[str, str]:
    """The texts of (encoder.json, vocab.bpe) for `tokenizer`; see `save_gpt2_files`."""
    if check_pattern and tokenizer.pattern not in (GPT2_SPLIT_PATTERN, R50K_SPLIT_PATTERN):
        named = {regex: name for name, regex in NAMED_PATTERNS.items()}
        shown = named.get(tokenizer.pattern, repr(tokenizer.pattern))
        raise ScratchLMError(
            f"this tokenizer splits text with the {shown} pattern, but the GPT-2 files have "
            "no place for a pattern and every reader splits like GPT-2, so they would encode "
            "differently; export to the hf format (tokenizer.json), which keeps the pattern"
        )
    vocab = byte_level_vocab(tokenizer, "encoder.json")
    specials = set(tokenizer.special_tokens)
    for name in specials:
        data = from_byte_level(name)
        if data is not None and len(data) == 1:
            raise ScratchLMError(
                f"special token {name!r} is spelled like the single byte {data!r}, so a reader "
                "of encoder.json would take it for that byte"
            )
    vocab_text = json.dumps(vocab, ensure_ascii=False, separators=(",", ":"))
    merge_lines = [f"{a} {b}" for a, b in byte_level_merges(tokenizer)]
    return vocab_text, "\n".join([MERGES_HEADER, *merge_lines]) + "\n"


def save_gpt2_files(
    tokenizer: BPETokenizer,
    vocab_path: str | os.PathLike[str],
    merges_path: str | os.PathLike[str],
    check_pattern: bool = True,
) -> None:
    """Write `tokenizer` as encoder.json + vocab.bpe (name them vocab.json + merges.txt for
    Hugging Face), each atomically.

    Refuses (ScratchLMError) a tokenizer whose pattern is not GPT-2's unless `check_pattern`
    is False, and one that the format cannot hold: two tokens with the same bytes, or a
    special token spelled like a single byte.
    """
    vocab_text, merges_text = gpt2_files_text(tokenizer, check_pattern)
    atomic_write_text(vocab_path, vocab_text)
    atomic_write_text(merges_path, merges_text)


# ------------------------------------------------------------------------------------ helpers
