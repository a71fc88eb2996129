"""The tiktoken engine: our ranks handed to tiktoken's Rust encoder, for speed.

tiktoken does not use a merge list: it joins the adjacent pair whose joined bytes has the
lowest rank. Our encoder applies the merge with the lowest id. The two agree when every token
is distinct bytes and each merge is the pair tiktoken's procedure would reach for that token
(scratchlm.tokenizer.ranks explains the recovery). Tokenizers loaded from rank files have this
by construction; for a trained one we check it once, here, and otherwise refuse, so the "auto"
engine falls back to our own encoder rather than give different ids.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scratchlm.core.errors import ScratchLMError
from scratchlm.tokenizer.chunks import Pair
from scratchlm.tokenizer.ranks import bpe_parts, ranks_of


def build_tiktoken_encoding(
    pattern: str,
    vocab: Mapping[int, bytes],
    merges: Mapping[Pair, int],
    special_tokens: dict[str, int],
    merges_match_ranks: bool = False,
) -> Any:
    """A tiktoken.Encoding giving the same ids as the tokenizer these parts make; ScratchLMError
    says why not. `merges_match_ranks` skips the check for merges recovered from ranks."""
    try:
        import tiktoken
    except ImportError:
        raise ScratchLMError("tiktoken is not installed (pip install 'scratchlm[fast]')") from None
    ranks = ranks_of(vocab, set(special_tokens.values()))
    if not merges_match_ranks:
        _check_merges_match_ranks(vocab, merges, ranks)
    try:
        return tiktoken.Encoding(
            name="scratchlm",
            pat_str=pattern,
            mergeable_ranks=ranks,
            special_tokens=special_tokens,
        )
    except ValueError as e:  # tiktoken's regex engine (fancy-regex) rejected the pattern
        raise ScratchLMError(f"tiktoken cannot compile the split pattern: {e}") from None


def _check_merges_match_ranks(
    vocab: Mapping[int, bytes], merges: Mapping[Pair, int], ranks: dict[bytes, int]
) -> None:
    for (a, b), new_id in merges.items():
        parts = bpe_parts(ranks, vocab[new_id], new_id)
        if parts != [vocab[a], vocab[b]]:
            raise ScratchLMError(
                f"merge [{a}, {b}] -> {new_id} is not the pair tiktoken would join for "
                f"{vocab[new_id]!r}, so tiktoken would encode differently"
            )
