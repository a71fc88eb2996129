"""BPE merges of one long chunk in O(n log n): a heap of pair ranks over a linked list of ids.

The textbook loop (find the earliest-learned pair present, merge every occurrence, repeat)
rescans the whole chunk once per merge, so a 100,000-character word with no spaces, which the
split pattern leaves as one chunk, takes tens of seconds. Here every adjacent pair that has a
merge sits in a heap keyed by (rank, position); the tokens form a doubly linked list, so a merge
only touches its two neighbours and pushes the (at most two) pairs it creates. Entries made stale
by a neighbour's merge stay in the heap and are skipped when popped (lazy deletion).

The result is the textbook loop's, id for id. A merge's new id is its rank, and a merge that
uses id c has a larger id than c, so a merge never creates a pair ranked at or before its own:
all occurrences of the lowest-ranked pair are merged before any other pair, the leftmost first
(the heap breaks ties by position), which is what the loop's left-to-right scan does, and what
tiktoken does with the same ranks.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from scratchlm.tokenizer.chunks import Pair

# Marks a node absorbed into its left neighbour; real ids are never negative.
_GONE = -1


def merge_with_heap(ids: Sequence[int], merges: dict[Pair, int]) -> list[int]:
    """Apply `merges` (pair -> new id, the id doubling as rank) to `ids`, lowest rank first."""
    return _merge(ids, merges)[0]


def count_heap_operations(ids: Sequence[int], merges: dict[Pair, int]) -> int:
    """Pushes and pops `merge_with_heap` makes on `ids`: at most 3n pushes and as many pops,
    each O(log n), which is what keeps a long chunk O(n log n). For tests."""
    return _merge(ids, merges)[1]


def _merge(ids: Sequence[int], merges: dict[Pair, int]) -> tuple[list[int], int]:
    tokens = list(ids)
    n = len(tokens)
    if n < 2:
        return tokens, 0
    get = merges.get
    # Node i holds tokens[i]; following_node[i] == n means it is the last one. The first node is
    # never absorbed (only a right-hand node is), so the list always starts at 0.
    following_node = list(range(1, n + 1))
    previous_node = list(range(-1, n - 1))
    heap = [
        (rank, i) for i in range(n - 1) if (rank := get((tokens[i], tokens[i + 1]))) is not None
    ]
    heapq.heapify(heap)
    operations = len(heap)
    heappop, heappush = heapq.heappop, heapq.heappush
    while heap:
        rank, left = heappop(heap)
        operations += 1
        left_token = tokens[left]
        if left_token == _GONE:
            continue
        right = following_node[left]
        # Stale if either side has changed since the entry was pushed: the pair is no longer
        # the one ranked `rank`. (If it is, the entry is as good as a fresh one.)
        if right == n or get((left_token, tokens[right])) != rank:
            continue
        tokens[left] = rank  # the new id is the rank
        tokens[right] = _GONE
        after = following_node[right]
        following_node[left] = after
        if after != n:
            previous_node[after] = left
            new_rank = get((rank, tokens[after]))
            if new_rank is not None:
                heappush(heap, (new_rank, left))
                operations += 1
        before = previous_node[left]
        if before != -1:
            new_rank = get((tokens[before], rank))
            if new_rank is not None:
                heappush(heap, (new_rank, before))
                operations += 1
    merged = []
    node = 0
    while node != n:
        merged.append(tokens[node])
        node = following_node[node]
    return merged, operations
