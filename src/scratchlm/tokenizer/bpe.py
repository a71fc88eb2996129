"""Byte-level BPE tokenizer: learn merges from text, encode text to ids, decode ids to text.

Every string is first encoded as UTF-8, so the 256 byte values are the base vocabulary and any
text can be encoded without an "unknown" token. Training repeatedly merges the most frequent
adjacent pair of ids into a new id. A regex first cuts the text into chunks (words, numbers,
punctuation, whitespace) and merges never cross a chunk boundary, which keeps tokens meaningful.

Special tokens such as "<|endoftext|>" are added after training, with the ids that follow the
last merge. They are never produced from ordinary text: `encode` only recognises them when the
caller allows it, so a document cannot smuggle in a control token.

Input text must be encodable as UTF-8; a Python string holding a lone surrogate (U+D800 to
U+DFFF) is rejected with ScratchLMError.
"""

from __future__ import annotations

import heapq
import itertools
import json
import operator
import os
import unicodedata
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any, Literal

import regex
from tqdm import tqdm

from scratchlm.atomic_files import atomic_write_text
from scratchlm.errors import ScratchLMError
from scratchlm.tokenizer.patterns import GPT4_SPLIT_PATTERN, compile_pattern, resolve_pattern

Pair = tuple[int, int]

FILE_FORMAT = "scratchlm-bpe"
FILE_VERSION = 1
EOT_TOKEN = "<|endoftext|>"

# Encoded chunks are cached because natural text repeats the same words constantly. The cache
# is bounded so that encoding a huge corpus with many rare words cannot exhaust memory.
_CHUNK_CACHE_SIZE = 1 << 16
# Rank used for pairs that have no merge: larger than any real merge id.
_NO_MERGE = 1 << 62


class BPETokenizer:
    """A trained byte-level BPE tokenizer.

    Attributes:
        pattern: regex that splits text into chunks before BPE.
        merges: pair of ids -> the id it merges into; ids run 256, 257, ... in training order,
            so a smaller id means an earlier (more frequent) merge.
        special_tokens: special token string -> id; ids follow the last merge.
        vocab: id -> the bytes it stands for (special tokens map to their UTF-8 bytes).

    Treat an instance as immutable: encodings are cached, so editing `merges` afterwards would
    give inconsistent results. Build a new tokenizer instead.
    """

    def __init__(
        self,
        pattern: str = GPT4_SPLIT_PATTERN,
        merges: dict[Pair, int] | None = None,
        special_tokens: dict[str, int] | None = None,
    ) -> None:
        self.pattern: str = resolve_pattern(pattern)
        self.merges: dict[Pair, int] = dict(merges or {})
        self.special_tokens: dict[str, int] = dict(special_tokens or {})
        _check_ids(self.merges, self.special_tokens)
        self.vocab: dict[int, bytes] = _build_vocab(self.merges, self.special_tokens)
        self._splitter = compile_pattern(self.pattern)
        self._special_splitters: dict[frozenset[str], regex.Pattern[str]] = {}
        self._chunk_cache: dict[str, list[int]] = {}

    def __repr__(self) -> str:
        specials = list(self.special_tokens)
        return (
            f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
            f"special_tokens={specials})"
        )

    # ----------------------------------------------------------------------------- training

    @classmethod
    def train(
        cls,
        text: str | Iterable[str],
        vocab_size: int,
        pattern: str = GPT4_SPLIT_PATTERN,
        special_tokens: Sequence[str] = (EOT_TOKEN,),
        progress: bool = False,
    ) -> BPETokenizer:
        """Learn `vocab_size - 256 - len(special_tokens)` merges from `text`.

        `text` is one string or an iterable of documents. `vocab_size` counts everything: the
        256 byte tokens, the merges and the special tokens. `pattern` is "gpt2", "gpt4" or a
        regex. Occurrences of the special token strings in the text act as hard boundaries and
        are not learned from.

        Ties: when several pairs are equally frequent, the lexicographically smallest pair of
        ids wins, e.g. (97, 98) before (97, 99) before (256, 97). This makes training fully
        deterministic.

        If the text runs out of pairs before reaching `vocab_size`, training stops early with a
        warning and the tokenizer is smaller; its `vocab_size` property gives the true size.
        """
        pattern = resolve_pattern(pattern)
        special_tokens = _check_special_names(special_tokens)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise ScratchLMError(f"vocab_size must be an integer, got {vocab_size!r}")
        minimum = 256 + len(special_tokens)
        if vocab_size < minimum:
            raise ScratchLMError(
                f"vocab_size {vocab_size} is too small: the minimum is {minimum} "
                f"(256 byte tokens + {len(special_tokens)} special tokens)"
            )
        chunk_counts = _count_chunks(text, compile_pattern(pattern), special_tokens)
        wanted = vocab_size - minimum
        merges = _learn_merges(chunk_counts, wanted, progress)
        if len(merges) < wanted:
            warnings.warn(
                f"the training text ran out of pairs after {len(merges)} of {wanted} merges; "
                f"the tokenizer has {minimum + len(merges)} tokens instead of {vocab_size}",
                stacklevel=2,
            )
        first_special = 256 + len(merges)
        specials = {name: first_special + i for i, name in enumerate(special_tokens)}
        return cls(pattern, merges, specials)

    # ----------------------------------------------------------------------------- encoding

    def encode(
        self,
        text: str,
        allowed_special: Literal["all", "none"] | AbstractSet[str] = "none",
    ) -> list[int]:
        """Encode `text` to ids.

        Special tokens are recognised only if `allowed_special` allows them ("all", or a set of
        their strings); any other occurrence is encoded as the ordinary text it spells, so
        untrusted text can never produce a special id.
        """
        allowed = self._allowed_specials(allowed_special)
        if not allowed:
            return self.encode_ordinary(text)
        # split() with a capturing group returns [text, special, text, special, ..., text].
        parts = self._special_splitter(allowed).split(text)
        ids: list[int] = []
        for i, part in enumerate(parts):
            if i % 2:
                ids.append(self.special_tokens[part])
            elif part:
                ids.extend(self.encode_ordinary(part))
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode `text` to ids, treating special token strings as plain text."""
        ids: list[int] = []
        cache = self._chunk_cache
        for chunk in _split(self._splitter, text):
            chunk_ids = cache.get(chunk)
            if chunk_ids is None:
                chunk_ids = self._encode_chunk(_utf8(chunk))
                if len(cache) >= _CHUNK_CACHE_SIZE:
                    # Dicts keep insertion order, so this evicts the oldest entry.
                    del cache[next(iter(cache))]
                cache[chunk] = chunk_ids
            ids.extend(chunk_ids)
        return ids

    def _encode_chunk(self, data: bytes) -> list[int]:
        # Replay training: repeatedly apply the earliest-learned merge present in the chunk.
        # Merge ids increase in training order, so the id doubles as the merge's rank.
        merges = self.merges
        ids = list(data)
        while len(ids) >= 2:
            pair = min(itertools.pairwise(ids), key=lambda p: merges.get(p, _NO_MERGE))
            new_id = merges.get(pair)
            if new_id is None:
                break
            ids = _merge(ids, pair, new_id)
        return ids

    def _allowed_specials(self, allowed: Literal["all", "none"] | AbstractSet[str]) -> set[str]:
        if allowed == "all":
            return set(self.special_tokens)
        if allowed == "none":
            return set()
        if isinstance(allowed, str) or not isinstance(allowed, AbstractSet):
            raise ScratchLMError(
                f'allowed_special must be "all", "none" or a set of special token strings, '
                f"got {allowed!r}"
            )
        unknown = set(allowed) - self.special_tokens.keys()
        if unknown:
            raise ScratchLMError(
                f"allowed_special names {sorted(unknown)}, which are not special tokens of this "
                f"tokenizer (it has {sorted(self.special_tokens)})"
            )
        return set(allowed)

    def _special_splitter(self, allowed: set[str]) -> regex.Pattern[str]:
        key = frozenset(allowed)
        splitter = self._special_splitters.get(key)
        if splitter is None:
            splitter = _alternation(allowed, capture=True)
            self._special_splitters[key] = splitter
        return splitter

    # ----------------------------------------------------------------------------- decoding

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Concatenate the bytes of `ids`. Raises ScratchLMError for an id not in the vocab."""
        vocab = self.vocab
        ids = list(ids)
        try:
            return b"".join([vocab[i] for i in ids])
        except (KeyError, TypeError):
            pass
        # Slow path: accept integer-like ids (numpy ints, 0-d integer tensors) and name a bad one.
        pieces = []
        for i in ids:
            try:
                pieces.append(vocab[operator.index(i)])
            except (KeyError, TypeError):
                raise ScratchLMError(
                    f"token id {i!r} is not in the vocabulary "
                    f"(valid ids are 0 to {self.vocab_size - 1})"
                ) from None
        return b"".join(pieces)

    def decode(self, ids: Iterable[int]) -> str:
        """Decode ids to text; byte sequences that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ----------------------------------------------------------------------------- properties

    @property
    def vocab_size(self) -> int:
        """Number of ids: 256 bytes + merges + special tokens."""
        return len(self.vocab)

    @property
    def eot_id(self) -> int:
        """The id of "<|endoftext|>", the separator between documents."""
        try:
            return self.special_tokens[EOT_TOKEN]
        except KeyError:
            raise ScratchLMError(
                f"this tokenizer has no {EOT_TOKEN} special token "
                f"(it has {sorted(self.special_tokens)}); train it with "
                f"special_tokens=({EOT_TOKEN!r},)"
            ) from None

    # ----------------------------------------------------------------------------- files

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the tokenizer as one JSON file (written atomically), one merge per line."""
        ordered = sorted(self.merges.items(), key=lambda item: item[1])
        merge_lines = ",\n".join(f"    [{a}, {b}]" for (a, b), _ in ordered)
        merges_json = f"[\n{merge_lines}\n  ]" if ordered else "[]"
        text = (
            "{\n"
            f'  "format": {json.dumps(FILE_FORMAT)},\n'
            f'  "version": {FILE_VERSION},\n'
            f'  "pattern": {json.dumps(self.pattern)},\n'
            f'  "special_tokens": {json.dumps(self.special_tokens)},\n'
            f'  "merges": {merges_json}\n'
            "}\n"
        )
        atomic_write_text(path, text)

    def save_vocab(self, path: str | os.PathLike[str]) -> None:
        """Write a human-readable listing of every token, for inspection only (not loadable).

        Merged tokens are shown with the two tokens they were built from:
        `[ t][he] -> [ the] 300`.
        """
        parents = {new_id: pair for pair, new_id in self.merges.items()}
        special_ids = set(self.special_tokens.values())
        lines = []
        for token_id, token in self.vocab.items():
            shown = _render(token)
            if token_id in parents:
                a, b = parents[token_id]
                left, right = _render(self.vocab[a]), _render(self.vocab[b])
                lines.append(f"[{left}][{right}] -> [{shown}] {token_id}")
            elif token_id in special_ids:
                lines.append(f"[{shown}] {token_id} (special)")
            else:
                lines.append(f"[{shown}] {token_id}")
        atomic_write_text(path, "\n".join(lines) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BPETokenizer:
        """Read a tokenizer written by `save`. Any problem raises ScratchLMError naming the file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ScratchLMError(f"tokenizer file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ScratchLMError(f"cannot read tokenizer file {path}: {e}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ScratchLMError(
                f"tokenizer file {path} is not valid JSON ({e.msg} at line {e.lineno}, "
                f"column {e.colno}); is it truncated or not a tokenizer file?"
            ) from None
        try:
            return cls._from_json(data)
        except ScratchLMError as e:
            raise ScratchLMError(f"tokenizer file {path}: {e}") from None

    @classmethod
    def _from_json(cls, data: Any) -> BPETokenizer:
        if not isinstance(data, dict):
            raise ScratchLMError(f"expected a JSON object, found {type(data).__name__}")
        if data.get("format") != FILE_FORMAT:
            raise ScratchLMError(
                f'"format" is {data.get("format")!r}, expected {FILE_FORMAT!r}; '
                "this is not a scratchlm tokenizer file"
            )
        if data.get("version") != FILE_VERSION:
            raise ScratchLMError(
                f'"version" is {data.get("version")!r}, but this scratchlm reads only '
                f"version {FILE_VERSION}"
            )
        pattern = data.get("pattern")
        if not isinstance(pattern, str):
            raise ScratchLMError(f'"pattern" must be a string, found {pattern!r}')

        raw_merges = data.get("merges")
        if not isinstance(raw_merges, list):
            raise ScratchLMError('"merges" must be a list of [id, id] pairs')
        merges: dict[Pair, int] = {}
        for k, item in enumerate(raw_merges):
            if not (
                isinstance(item, list) and len(item) == 2 and all(_is_json_int(x) for x in item)
            ):
                raise ScratchLMError(f'merge #{k} in "merges" is {item!r}, not a pair of ids')
            pair = (item[0], item[1])
            if pair in merges:
                raise ScratchLMError(f"merge #{k} repeats the pair {list(pair)}")
            merges[pair] = 256 + k

        raw_specials = data.get("special_tokens")
        if not isinstance(raw_specials, dict) or not all(
            _is_json_int(v) for v in raw_specials.values()
        ):
            raise ScratchLMError('"special_tokens" must be an object mapping strings to ids')
        return cls(pattern, merges, raw_specials)


# --------------------------------------------------------------------------------- training


def _count_chunks(
    text: str | Iterable[str], splitter: regex.Pattern[str], special_tokens: Sequence[str]
) -> dict[bytes, int]:
    """Split every document into chunks and count how often each distinct chunk occurs.

    Natural text has far fewer distinct chunks than chunks, so training works on the distinct
    ones, each weighted by its count.
    """
    documents = [text] if isinstance(text, str) else text
    separator = _alternation(special_tokens, capture=False) if special_tokens else None
    counts: Counter[str] = Counter()
    has_text = False
    for doc in documents:
        if not isinstance(doc, str):
            raise ScratchLMError(
                f"training text must be a string or an iterable of strings, "
                f"found an item of type {type(doc).__name__}"
            )
        has_text = has_text or (bool(doc) and not doc.isspace())
        # Special tokens are document boundaries: no chunk (and so no merge) spans one.
        for piece in separator.split(doc) if separator else (doc,):
            counts.update(_split(splitter, piece))
    if not has_text:
        raise ScratchLMError(
            "training text is empty (or only whitespace); there is nothing to learn"
        )
    return {_utf8(chunk): n for chunk, n in counts.items()}


def _learn_merges(
    chunk_counts: dict[bytes, int], num_merges: int, progress: bool
) -> dict[Pair, int]:
    """Learn up to `num_merges` merges, most frequent pair first, ties to the smallest pair.

    Recounting all pairs after every merge would cost O(corpus) per merge. Instead we keep:
      pair_counts: pair -> occurrences, weighted by chunk counts;
      where:       pair -> indices of the words (distinct chunks) containing it;
      heap:        (-count, pair) entries, so popping gives the best pair and, among equal
                   counts, the smallest pair.
    A merge then only rewrites the words that contain the chosen pair. Heap entries are not
    removed when a count drops; a popped entry whose count is out of date is re-queued with
    the current count instead ("lazy invalidation"). A count can only rise for a pair that
    contains the new id, and those are pushed fresh after every merge.
    """
    words = [list(chunk) for chunk in chunk_counts]
    weights = list(chunk_counts.values())
    pair_counts: dict[Pair, int] = defaultdict(int)
    where: dict[Pair, set[int]] = defaultdict(set)
    for index, word in enumerate(words):
        for pair in itertools.pairwise(word):
            pair_counts[pair] += weights[index]
            where[pair].add(index)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges: dict[Pair, int] = {}
    with tqdm(total=num_merges, desc="BPE merges", unit="merge", disable=not progress) as bar:
        while len(merges) < num_merges and heap:
            neg_count, pair = heapq.heappop(heap)
            count = pair_counts.get(pair, 0)
            if count != -neg_count:
                if count > 0:
                    heapq.heappush(heap, (-count, pair))
                continue
            new_id = 256 + len(merges)
            merges[pair] = new_id
            for gained in _apply_merge(pair, new_id, words, weights, pair_counts, where):
                heapq.heappush(heap, (-pair_counts[gained], gained))
            bar.update()
    return merges


def _apply_merge(
    pair: Pair,
    new_id: int,
    words: list[list[int]],
    weights: list[int],
    pair_counts: dict[Pair, int],
    where: dict[Pair, set[int]],
) -> set[Pair]:
    """Merge `pair` in every word containing it; update counts and index; return new pairs."""
    new_pairs: set[Pair] = set()
    for index in where.pop(pair):
        old = words[index]
        new = _merge(old, pair, new_id)
        words[index] = new
        weight = weights[index]
        old_set = set(itertools.pairwise(old))
        new_set = set(itertools.pairwise(new))
        for p in itertools.pairwise(old):
            pair_counts[p] -= weight
        for p in itertools.pairwise(new):
            pair_counts[p] += weight
        # A pair absent from the new word can only have lost occurrences; drop it when gone.
        for p in old_set - new_set:
            if p == pair:
                continue
            where[p].discard(index)
            if pair_counts[p] == 0:
                del pair_counts[p], where[p]
        # A pair absent from the old word must contain new_id, so its count only grows.
        for p in new_set - old_set:
            where[p].add(index)
            new_pairs.add(p)
    del pair_counts[pair]
    return new_pairs


# --------------------------------------------------------------------------------- helpers


def _merge(ids: list[int], pair: Pair, new_id: int) -> list[int]:
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


def _split(splitter: regex.Pattern[str], text: str) -> list[str]:
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


def _alternation(strings: Iterable[str], capture: bool) -> regex.Pattern[str]:
    # Longest first, so that a special token that extends another one wins.
    body = "|".join(regex.escape(s) for s in sorted(strings, key=lambda s: (-len(s), s)))
    return regex.compile(f"({body})" if capture else body)


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ScratchLMError(
            f"text contains {text[e.start : e.end]!r}, a lone surrogate that is not valid UTF-8; "
            "decode the source with errors='replace' first"
        ) from None


def _check_special_names(special_tokens: Sequence[str]) -> tuple[str, ...]:
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


def _check_ids(merges: dict[Pair, int], special_tokens: dict[str, int]) -> None:
    """Check that merges use ids 256.. in order and special tokens the ids right after them."""
    for pair, new_id in merges.items():
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(_is_json_int(x) for x in pair)):
            raise ScratchLMError(f"merge {pair!r} -> {new_id!r} is not a pair of integer ids")
    if sorted(merges.values()) != list(range(256, 256 + len(merges))):
        raise ScratchLMError(f"merge ids must be exactly 256 to {255 + len(merges)}, one each")
    for (a, b), new_id in merges.items():
        if not (0 <= a < new_id and 0 <= b < new_id):
            raise ScratchLMError(
                f"merge [{a}, {b}] -> {new_id} uses an id that does not exist yet "
                f"(only ids 0 to {new_id - 1} are defined before it)"
            )
    first_special = 256 + len(merges)
    for name in special_tokens:
        _check_special_names([name])
    if sorted(special_tokens.values()) != list(
        range(first_special, first_special + len(special_tokens))
    ):
        raise ScratchLMError(
            f"special token ids {sorted(special_tokens.values())} must be exactly "
            f"{first_special} to {first_special + len(special_tokens) - 1}, "
            "the ids that follow the last merge"
        )


def _build_vocab(merges: dict[Pair, int], special_tokens: dict[str, int]) -> dict[int, bytes]:
    vocab = {i: bytes([i]) for i in range(256)}
    for (a, b), new_id in sorted(merges.items(), key=lambda item: item[1]):
        vocab[new_id] = vocab[a] + vocab[b]
    for name, token_id in special_tokens.items():
        vocab[token_id] = _utf8(name)
    return vocab


def _render(token: bytes) -> str:
    # Show control characters (newlines, tabs, ...) as escapes so each token stays on one line.
    text = token.decode("utf-8", errors="replace")
    return "".join(
        f"\\u{ord(ch):04x}" if unicodedata.category(ch).startswith("C") else ch for ch in text
    )


def _is_json_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
