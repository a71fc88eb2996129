"""MinHash and LSH banding: find pairs of documents that share most of their word shingles.

Similarity. A document's shingles are its overlapping runs of k words ("the cat sat", "cat sat
on", ... for k = 3). Two documents are near-duplicates when their shingle sets A and B have a
high Jaccard similarity J = |A ∩ B| / |A ∪ B|. Comparing every pair of documents exactly costs
n² set intersections; MinHash and LSH get the same answer, with high probability, in about n.

MinHash. Shuffle all possible shingles with a random permutation π and look at the first
shingle of A ∪ B in that order: it is in A ∩ B with probability J, and exactly then
min π(A) = min π(B). So with `num_perm` independent permutations, the share of positions where
two signatures (the vectors of minima) agree estimates J, with standard error √(J(1−J)/num_perm):
0.035 at J = 0.8 with 128 permutations. A signature is a fixed size, however long the document.

Permutations. A true random permutation of 2⁶⁴ shingle hashes cannot be stored, so each is
imitated by a universal hash h(x) = (a·x + b) mod p with p = 2⁶¹ − 1 (a Mersenne prime) and
random a ∈ [1, p), b ∈ [0, p): for distinct x, y < p the pair (h(x), h(y)) is uniform over
distinct pairs, which is what the argument above needs of a "random order" (shingle hashes are
reduced mod p first). a·x has up to 122 bits, more than numpy's 64, so `_universal_hash`
multiplies in 32-bit halves and uses 2⁶¹ ≡ 1 (mod p) to fold the high bits back in. All of it
is seeded: the same text and seed give the same signature on every machine (shingles are
hashed with BLAKE2b, never with Python's hash(), which is salted per process).

LSH banding. Cut each signature into b bands of r rows (b·r ≤ num_perm). Two documents become a
candidate pair when all r rows of at least one band agree. At similarity s one band agrees with
probability s^r, so the pair is a candidate with probability

    P(s) = 1 − (1 − s^r)^b,

an S-shaped curve that rises steeply near s ≈ (1/b)^(1/r). `lsh_bands` picks b and r for a
threshold t by minimising the weighted areas of the two kinds of mistake, with s uniform:

    false positives  FP = ∫₀ᵗ P(s) ds        (pairs below t that become candidates)
    false negatives  FN = ∫ₜ¹ 1 − P(s) ds    (pairs above t that do not)
    minimise  w_fp · FP + w_fn · FN  over all b, r with b·r ≤ num_perm.

This is the criterion the datasketch library uses; the integrals here are Simpson's rule on a
fine grid, for every (b, r) at once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

MERSENNE_61 = (1 << 61) - 1
_P = np.uint64(MERSENNE_61)
_LOW32 = np.uint64((1 << 32) - 1)
_LOW29 = np.uint64((1 << 29) - 1)
_EMPTY_HASH = np.uint64(MERSENNE_61)  # the minimum of no hashes: larger than any h(x) < p

# Letters, digits and underscores: punctuation and case do not make two texts different.
_WORD = re.compile(r"\w+")

Signature = NDArray[np.uint64]


# ---------------------------------------------------------------------------------------------
# Shingles
# ---------------------------------------------------------------------------------------------


def shingle_words(text: str) -> list[str]:
    """The words shingles are made of: runs of letters and digits, lowercased."""
    return _WORD.findall(text.lower())


@lru_cache(maxsize=1 << 18)
def _word_hash(word: str) -> int:
    # Each distinct word is hashed once per process (the cache keeps the common ones).
    digest = hashlib.blake2b(word.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def mix64(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """The splitmix64 finaliser: every input bit flips about half the output bits.

    Multiplication of uint64 arrays wraps around modulo 2⁶⁴, which is what this wants.
    """
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def shingle_hashes(text: str, size: int = 5) -> NDArray[np.uint64]:
    """The distinct 64-bit hashes of the document's `size`-word shingles, sorted.

    Each word is hashed with BLAKE2b; a shingle's hash mixes its words' hashes in order
    (h = mix(h ^ word) for each word), all shingles of the document at once. A document shorter
    than `size` words is one shingle of all its words; one with no words has none.
    """
    words = shingle_words(text)
    if not words:
        return np.empty(0, dtype=np.uint64)
    word_hashes = np.fromiter(map(_word_hash, words), dtype=np.uint64, count=len(words))
    count = max(len(words) - size + 1, 1)
    hashes = np.zeros(count, dtype=np.uint64)
    for offset in range(min(size, len(words))):
        hashes = mix64(hashes ^ word_hashes[offset : offset + count])
    return np.unique(hashes)


def jaccard(a: NDArray[np.uint64], b: NDArray[np.uint64]) -> float:
    """Exact Jaccard similarity of two sorted sets of distinct hashes (two empty sets: 1)."""
    if a.size == 0 and b.size == 0:
        return 1.0
    common = np.intersect1d(a, b, assume_unique=True).size
    return common / (a.size + b.size - common)


# ---------------------------------------------------------------------------------------------
# Signatures
# ---------------------------------------------------------------------------------------------


def _fold(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """A number ≡ x (mod p) below p + 8: since 2⁶¹ ≡ 1, x = hi·2⁶¹ + lo ≡ hi + lo."""
    return (x & _P) + (x >> np.uint64(61))


def _mod_p(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """x mod p for any uint64 x."""
    x = _fold(x)
    # Now x < 2p. If x >= p, x - p is the answer; if not, x - p wraps around to a huge number,
    # so the smaller of the two is right either way (and costs no comparison array).
    return np.minimum(x, x - _P)


def _universal_hash(
    a: tuple[NDArray[np.uint64], NDArray[np.uint64]], b: NDArray[np.uint64], x: NDArray[np.uint64]
) -> NDArray[np.uint64]:
    """(a·x + b) mod p for a, b, x < p = 2⁶¹ − 1, without a 128-bit product.

    `a` comes split as (a1, a0) with a = a1·2³² + a0; split x = x1·2³² + x0 too (a1, x1 < 2²⁹):
        a·x = a1·x1·2⁶⁴ + (a1·x0 + a0·x1)·2³² + a0·x0,
    where every product fits in 64 bits. Modulo p, 2⁶⁴ = 8·2⁶¹ ≡ 8, and the middle term
    m = m1·2²⁹ + m0 times 2³² is m1·2⁶¹ + m0·2³² ≡ m1 + m0·2³². Each of the four terms
    (b included) is below 2⁶¹ + 2³⁴, so their sum fits in 64 bits, and one reduction ends it.
    """
    # The same arithmetic as the formulas, written into a few reused arrays: with one new
    # array per operation the allocations cost as much as the arithmetic.
    a1, a0 = a
    x1, x0 = x >> np.uint64(32), x & _LOW32
    total = np.multiply(a1, x1)
    total <<= np.uint64(3)  # a1·x1·8
    middle = np.multiply(a1, x0)
    scratch = np.multiply(a0, x1)
    middle += scratch  # m = a1·x0 + a0·x1
    np.right_shift(middle, np.uint64(29), out=scratch)
    middle &= _LOW29
    middle <<= np.uint64(32)
    middle += scratch  # m1 + m0·2³²
    total += middle
    np.multiply(a0, x0, out=scratch)
    np.bitwise_and(scratch, _P, out=middle)
    scratch >>= np.uint64(61)
    scratch += middle  # _fold(a0·x0)
    total += scratch
    total += b
    np.bitwise_and(total, _P, out=scratch)
    total >>= np.uint64(61)
    total += scratch  # _fold(total)
    np.subtract(total, _P, out=scratch)
    return np.minimum(total, scratch, out=total)  # as in _mod_p


class MinHasher:
    """Turns a set of shingle hashes into a signature of `num_perm` minima; seeded."""

    # Shingles hashed per step: (num_perm x chunk) arrays of half a megabyte stay in the CPU's
    # cache, which is faster than fewer, larger steps.
    chunk = 512

    def __init__(self, num_perm: int = 128, seed: int = 0) -> None:
        if num_perm < 1:
            raise ValueError(f"num_perm must be >= 1, got {num_perm}")
        rng = np.random.default_rng(seed)
        self.num_perm = num_perm
        self.seed = seed
        # One (a, b) per permutation, as columns so they broadcast against a row of shingles.
        self.a = rng.integers(1, MERSENNE_61, size=(num_perm, 1), dtype=np.uint64)
        self.b = rng.integers(0, MERSENNE_61, size=(num_perm, 1), dtype=np.uint64)
        self._a_split = (self.a >> np.uint64(32), self.a & _LOW32)

    def signature(self, shingles: NDArray[np.uint64]) -> Signature:
        """min over the shingles x of (a·x + b) mod p, for each permutation (a, b)."""
        minima = np.full(self.num_perm, _EMPTY_HASH, dtype=np.uint64)
        values = _mod_p(np.asarray(shingles, dtype=np.uint64))[np.newaxis, :]
        for start in range(0, values.shape[1], self.chunk):
            hashed = _universal_hash(self._a_split, self.b, values[:, start : start + self.chunk])
            np.minimum(minima, hashed.min(axis=1), out=minima)
        return minima

    def text_signature(self, text: str, shingle_size: int = 5) -> Signature:
        return self.signature(shingle_hashes(text, shingle_size))


def estimated_jaccard(a: Signature, b: Signature) -> float:
    """The share of permutations whose minima agree: an unbiased estimate of J."""
    return float(np.mean(a == b))


# ---------------------------------------------------------------------------------------------
# LSH banding
# ---------------------------------------------------------------------------------------------


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
    """P(s) = 1 − (1 − s^r)^b: how likely a pair of similarity s shares at least one band."""
    return float(1.0 - (1.0 - similarity**rows) ** bands)


def lsh_bands(
    threshold: float,
    num_perm: int,
    false_positive_weight: float = 0.5,
    false_negative_weight: float = 0.5,
) -> tuple[int, int]:
    """(bands, rows) minimising the weighted false positive and negative areas (module doc)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    pairs = [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)]
    bands = np.array([b for b, _ in pairs], dtype=np.float64)[:, np.newaxis]
    rows = np.array([r for _, r in pairs], dtype=np.float64)[:, np.newaxis]

    def probability(s: NDArray[np.float64]) -> NDArray[np.float64]:
        return 1.0 - (1.0 - s[np.newaxis, :] ** rows) ** bands

    false_positive = _simpson(probability, 0.0, threshold)
    false_negative = _simpson(lambda s: 1.0 - probability(s), threshold, 1.0)
    error = false_positive_weight * false_positive + false_negative_weight * false_negative
    best = int(np.argmin(error))  # the first minimum: fewest bands among equals
    return pairs[best]


def _simpson(
    f: Callable[[NDArray[np.float64]], NDArray[np.float64]],
    low: float,
    high: float,
    intervals: int = 1000,
) -> NDArray[np.float64]:
    """∫ f over [low, high] by Simpson's rule, for each row of what f returns."""
    s = np.linspace(low, high, intervals + 1)
    weights = np.ones(intervals + 1)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    return f(s) @ weights * (high - low) / (3 * intervals)
