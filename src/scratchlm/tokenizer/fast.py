"""The tiktoken engine: our ranks handed to tiktoken's Rust encoder, for speed.

tiktoken does not use a merge list: it joins the adjacent pair whose joined bytes has the
lowest rank. Our encoder applies the merge with the lowest id. The two agree when every token
is distinct bytes and each merge is the pair tiktoken's procedure would reach for that token
(scratchlm.tokenizer.tiktoken_format explains the recovery). Tokenizers loaded from rank files
have this by construction; for a trained one we check it once, here, and otherwise refuse, so
the "auto" engine falls back to our own encoder rather than give different ids.
"""

from __future__ import annotations

from typing import Any

from scratchlm.core.errors import ScratchLMError
from scratchlm.tokenizer.bpe import BPETokenizer
from scratchlm.tokenizer.tiktoken_format import bpe_parts, tokenizer_ranks


def build_tiktoken_encoding(tokenizer: BPETokenizer) -> Any:
    """A tiktoken.Encoding giving the same ids as `tokenizer`; ScratchLMError says why not."""
    try:
        import tiktoken
    except ImportError:
        raise ScratchLMError("tiktoken is not installed (pip install 'scratchlm[fast]')") from None
    ranks = tokenizer_ranks(tokenizer)
    if not tokenizer._merges_match_ranks:
        _check_merges_match_ranks(tokenizer, ranks)
    try:
        return tiktoken.Encoding(
            name="scratchlm",
            pat_str=tokenizer.pattern,
            mergeable_ranks=ranks,
            special_tokens=tokenizer.special_tokens,
        )
    except ValueError as e:  # tiktoken's regex engine (fancy-regex) rejected the pattern
        raise ScratchLMError(f"tiktoken cannot compile the split pattern: {e}") from None


def _check_merges_match_ranks(tokenizer: BPETokenizer, ranks: dict[bytes, int]) -> None:
    vocab = tokenizer.vocab
    for (a, b), new_id in tokenizer.merges.items():
        parts = bpe_parts(ranks, vocab[new_id], new_id)
        if parts != [vocab[a], vocab[b]]:
            raise ScratchLMError(
                f"merge [{a}, {b}] -> {new_id} is not the pair tiktoken would join for "
                f"{vocab[new_id]!r}, so tiktoken would encode differently"
            )
