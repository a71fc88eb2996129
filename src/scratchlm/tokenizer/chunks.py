"""The groundwork that training and encoding share: chunks of text, special tokens, UTF-8.

Training (scratchlm.tokenizer.training) and the tokenizer (scratchlm.tokenizer.bpe) must cut
text the same way and repair it the same way, or the merges learned would not be the merges
applied. So both take these from here, and neither needs the other to do it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import regex

from scratchlm.core.errors import ScratchLMError
from scratchlm.tokenizer.patterns import NAMED_PATTERNS

# Two token ids that a merge joins into one.
Pair = tuple[int, int]

EOT_TOKEN = "<|endoftext|>"


def split_chunks(splitter: regex.Pattern[str], text: str) -> list[str]:
    """Cut text into chunks, insisting that the chunks cover the text exactly."""
    chunks = splitter.findall(text)
    covered = sum(map(len, chunks))
    if covered != len(text):
        # A pattern like r"\w+" would silently drop spaces and break decode(encode(s)) == s.
        raise ScratchLMError(
            f"split pattern {splitter.pattern!r} skips {len(text) - covered} characters of "
            "the text; a pattern must match every character (add an alternative such as |\\s+)"
        )
    return chunks


def is_named_pattern(pattern: str) -> bool:
    """True for our named patterns, which match every character of any text."""
    return pattern in NAMED_PATTERNS.values()


def alternation(strings: Iterable[str], capture: bool) -> regex.Pattern[str]:
    """A regex matching any of `strings`; longest first, so a token that extends another wins."""
    body = "|".join(regex.escape(s) for s in sorted(strings, key=lambda s: (-len(s), s)))
    return regex.compile(f"({body})" if capture else body)


def utf8(text: str) -> bytes:
    """`text` as UTF-8; a lone surrogate is a ScratchLMError naming it."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ScratchLMError(
            f"text contains {text[e.start : e.end]!r}, a lone surrogate that is not valid UTF-8; "
            "decode the source with errors='replace' first"
        ) from None


def valid_unicode(text: str) -> str:
    """`text` with UTF-16 surrogate pairs joined and lone surrogates replaced by U+FFFD.

    Python strings may hold surrogates (U+D800..U+DFFF), which UTF-8 cannot encode; tiktoken
    repairs them this way before encoding, and so do we, so that ids agree.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def check_special_names(special_tokens: Sequence[str]) -> tuple[str, ...]:
    """The special token strings as a tuple: non-empty strings, each once."""
    if isinstance(special_tokens, str):
        raise ScratchLMError(
            f"special_tokens must be a sequence of strings, not the string {special_tokens!r}; "
            f"write ({special_tokens!r},)"
        )
    names = tuple(special_tokens)
    for name in names:
        if not isinstance(name, str) or not name:
            raise ScratchLMError(f"special token {name!r} must be a non-empty string")
    if len(set(names)) != len(names):
        raise ScratchLMError(f"special_tokens contains duplicates: {list(names)}")
    return names


def merge_pair(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """Replace each occurrence of `pair` in `ids`, scanning left to right, with `new_id`."""
    first, second = pair
    out: list[int] = []
    i, n = 0, len(ids)
    while i < n:
        if ids[i] == first and i + 1 < n and ids[i + 1] == second:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out
