"""Character-level tokenization: one token per character, as a BPE tokenizer with no merges
across characters.

The classic first experiment (char-level Shakespeare) predicts one character at a time. Here a
character tokenizer is a byte-level BPE tokenizer (bpe.py) whose split pattern cuts the text
into single characters, trained until no pair is left: BPE can then only merge the bytes of one
character, so an ASCII character is its byte's token and every multi-byte character seen in the
training text becomes one token of its own (its bytes merged, one to three merges). A character
never seen in training still encodes, as its UTF-8 bytes, so nothing is ever out of vocabulary.

Being a BPETokenizer, it saves, loads, fingerprints and exports like any other, and the fast
(tiktoken) encoder applies. The vocabulary holds all 256 byte tokens even when the text uses 65
of them: 256 + (multi-byte characters seen) + special tokens.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from scratchlm.tokenizer.bpe import EOT_TOKEN, BPETokenizer
from scratchlm.tokenizer.training import MAX_VOCAB_SIZE, learn_bpe

# Any one character, newlines included: every character is a chunk of its own.
CHAR_SPLIT_PATTERN = r"(?s:.)"

Text = str | os.PathLike[str]


def train_char_tokenizer(
    text: Text | Iterable[Text],
    special_tokens: Sequence[str] = (EOT_TOKEN,),
    progress: bool = False,
) -> BPETokenizer:
    """A one-token-per-character tokenizer for the characters of `text` (see the module
    docstring); `text` as for BPETokenizer.train."""
    # Running out of pairs is the point: every character's bytes are merged, nothing more.
    pattern, merges, specials = learn_bpe(
        text,
        MAX_VOCAB_SIZE,
        CHAR_SPLIT_PATTERN,
        special_tokens,
        progress,
        warn_if_short=False,
    )
    return BPETokenizer(pattern, merges, specials)


def is_char_tokenizer(tokenizer: BPETokenizer) -> bool:
    return tokenizer.pattern == CHAR_SPLIT_PATTERN
