"""Regex split patterns: how text is cut into chunks before BPE sees it.

BPE never merges across a chunk boundary, so the pattern decides what a token can span. Both
patterns keep letters, digits and punctuation apart and attach a leading space to the word that
follows it, so " the" becomes one token instead of many "e " / " t" style tokens.
"""

from __future__ import annotations

import regex

from scratchlm.core.errors import ScratchLMError

# GPT-2: English contractions, then runs of letters / digits / other symbols, each with an
# optional leading space, then whitespace (the lookahead leaves the last space for the next word).
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# GPT-4 (cl100k_base): case-insensitive contractions, numbers in groups of at most three digits,
# and newlines kept apart from other whitespace, which suits code and long documents better.
GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)

# The exact patterns of tiktoken's encodings (as published in tiktoken_ext/openai_public.py).
# r50k (GPT-2, GPT-3) and cl100k say the same as GPT2_SPLIT_PATTERN and GPT4_SPLIT_PATTERN
# with possessive quantifiers, which are faster; "$" is only reached after \s++ took every
# whitespace character, so Python's "$ before a final newline" never differs from Rust's "$".
R50K_SPLIT_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)
CL100K_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
# o200k (GPT-4o): words are split at case changes (CamelCase -> Camel, Case), contractions
# stay attached to their word, and "/" may follow punctuation.
O200K_SPLIT_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"""
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"""
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

# Names accepted wherever a pattern is; every one of them matches every character of any text.
NAMED_PATTERNS = {
    "gpt2": GPT2_SPLIT_PATTERN,
    "gpt4": GPT4_SPLIT_PATTERN,
    "r50k": R50K_SPLIT_PATTERN,
    "cl100k": CL100K_SPLIT_PATTERN,
    "o200k": O200K_SPLIT_PATTERN,
}


def resolve_pattern(name_or_regex: str) -> str:
    """Return the regex for a name in NAMED_PATTERNS; any other string is taken as a regex.

    Raises ScratchLMError if the regex does not compile, so a typo in a config fails at once
    instead of when the first text is encoded. A custom pattern should match every character
    (the chunks must concatenate back to the text); the tokenizer checks this when it splits.
    """
    pattern = NAMED_PATTERNS.get(name_or_regex, name_or_regex)
    compile_pattern(pattern)
    return pattern


def compile_pattern(pattern: str) -> regex.Pattern[str]:
    """Compile a split regex, reporting a bad one as a one-line ScratchLMError."""
    if not isinstance(pattern, str):
        raise ScratchLMError(f"split pattern must be a string, got {type(pattern).__name__}")
    try:
        return regex.compile(pattern)
    except regex.error as e:
        raise ScratchLMError(f"split pattern {pattern!r} is not a valid regex: {e}") from None
