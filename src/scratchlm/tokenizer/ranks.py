"""tiktoken's ranks and the merges they imply.

tiktoken does not use a merge list: it encodes by repeatedly joining the adjacent pair whose
joined bytes has the lowest rank. So the merge that made a token can be recovered: run that
same procedure on the token's bytes using only the tokens ranked below it, and the two parts it
stops at are the pair. The rank doubles as our id, so the recovered merges encode exactly as
tiktoken does. The 256 single bytes need not be ranks 0..255 in byte order (GPT-2's are
shuffled), which is what `BPETokenizer.byte_ids` is for.
"""

from __future__ import annotations

from collections.abc import Mapping

from scratchlm.core.errors import ScratchLMError
from scratchlm.tokenizer.chunks import Pair


def ranks_of(vocab: Mapping[int, bytes], special_ids: set[int]) -> dict[bytes, int]:
    """The ordinary (non-special) tokens of `vocab` as bytes -> id; each bytes must be unique."""
    ranks: dict[bytes, int] = {}
    for token_id, token in sorted(vocab.items()):
        if token_id in special_ids:
            continue
        if token in ranks:
            raise ScratchLMError(
                f"ids {ranks[token]} and {token_id} are both the bytes {token!r}; a rank file "
                "(and tiktoken) needs every token to be distinct bytes"
            )
        ranks[token] = token_id
    return ranks


def bpe_parts(ranks: dict[bytes, int], token: bytes, below: int) -> list[bytes]:
    """tiktoken's procedure on `token` using only ranks below `below`: join the adjacent pair
    whose joined bytes has the lowest rank (leftmost on a tie) until no pair is a token."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best_rank, best_at = below, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best_rank, best_at = rank, i
        if best_at < 0:
            break
        parts[best_at : best_at + 2] = [parts[best_at] + parts[best_at + 1]]
    return parts


def merges_from_ranks(ranks: dict[bytes, int]) -> tuple[list[int], dict[Pair, int]]:
    """Recover (byte_ids, merges) from a rank table. Raises if it is not a BPE vocabulary."""
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ScratchLMError(
            f"the ranks have no token for {len(missing)} of the 256 single bytes "
            f"(first: {bytes([missing[0]])!r}), so some text could not be encoded"
        )
    byte_ids = [ranks[bytes([b])] for b in range(256)]
    merges: dict[Pair, int] = {}
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = bpe_parts(ranks, token, rank)
        if len(parts) != 2:
            raise ScratchLMError(
                f"token {token!r} (rank {rank}) is not the merge of two tokens ranked below it "
                f"(its bytes stop at {len(parts)} pieces), so these are not BPE ranks"
            )
        merges[(ranks[parts[0]], ranks[parts[1]])] = rank
    return byte_ids, merges
