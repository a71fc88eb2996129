"""Byte-level BPE tokenizer: learn merges from text, encode text to ids, decode ids to text.

Every string is first encoded as UTF-8, so the 256 byte values are the base vocabulary and any
text can be encoded without an "unknown" token. Training repeatedly merges the most frequent
adjacent pair of ids into a new id. A regex first cuts the text into chunks (words, numbers,
punctuation, whitespace) and merges never cross a chunk boundary, which keeps tokens meaningful.

Special tokens such as "<|endoftext|>" are added after training, with the ids that follow the
last merge. They are never produced from ordinary text: `encode` only recognises them when the
caller allows it, so a document cannot smuggle in a control token.

Text that is not valid Unicode is handled as tiktoken handles it, so ids match: a UTF-16
surrogate pair in a Python string (as JSON's "\\ud83d\\ude00" decodes) is joined into the
character it spells, and a lone surrogate becomes U+FFFD. Raw bytes that are not UTF-8 go
through `encode_bytes`, which keeps every byte.

Ids. A tokenizer we train has byte b as id b, merge k as id 256 + k and the special tokens next.
A vocabulary from elsewhere (tiktoken's, GPT-2's) numbers its 256 byte tokens in its own order,
so `byte_ids[b]` gives the id of byte b; merges still have ids that grow in merge order, so a
smaller id always means an earlier merge, and special tokens may sit anywhere after them.

Engines. `encode` runs our own BPE in Python ("python"), or hands the same ranks to tiktoken's
Rust core ("tiktoken", the optional extra `fast`). "auto", the default, takes tiktoken when it
is installed and gives the same ids: the tests check both engines agree id for id.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import unicodedata
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any, Literal

import regex

from scratchlm.core.atomic_files import atomic_write_text
from scratchlm.core.errors import ScratchLMError
from scratchlm.core.user_files import read_json
from scratchlm.core.workers import spawn_pool
from scratchlm.tokenizer.chunks import (
    EOT_TOKEN,
    Pair,
    alternation,
    check_special_names,
    is_named_pattern,
    split_chunks,
    utf8,
    valid_unicode,
)
from scratchlm.tokenizer.fast import build_tiktoken_encoding
from scratchlm.tokenizer.merge_heap import merge_with_heap
from scratchlm.tokenizer.patterns import GPT4_SPLIT_PATTERN, compile_pattern, resolve_pattern
from scratchlm.tokenizer.ranks import merges_from_ranks
from scratchlm.tokenizer.training import learn_bpe

__all__ = ["EOT_TOKEN", "BPETokenizer", "Pair", "train_bpe_from_files", "valid_unicode"]

FILE_FORMAT = "scratchlm-bpe"
# Version 1: bytes are ids 0..255, merges 256.. in order, specials right after (what `train`
# makes). Version 2 adds `byte_ids` and explicit merge ids for vocabularies numbered otherwise.
# `save` writes the compact version 1 whenever the layout allows it.
FILE_VERSION = 1
FILE_VERSION_GENERAL = 2

Specials = Literal["all", "none"] | AbstractSet[str]
Engine = Literal["auto", "python", "tiktoken"]
ENGINES = ("auto", "python", "tiktoken")

# The python engine of encode_batch starts worker processes only when there is this much text:
# starting them costs far more than encoding a few pages.
_PARALLEL_MIN_CHARS = 1 << 20

# Encoded chunks are cached because natural text repeats the same words constantly. The cache
# is bounded so that encoding a huge corpus with many rare words cannot exhaust memory, and a
# chunk longer than _CACHED_CHUNK_CHARS (a run of digits, a base64 blob: rarely seen twice) is
# not kept at all, so 65,536 entries stay a few megabytes.
_CHUNK_CACHE_SIZE = 1 << 16
_CACHED_CHUNK_CHARS = 64


class BPETokenizer:
    """A trained byte-level BPE tokenizer.

    Attributes:
        pattern: regex that splits text into chunks before BPE.
        merges: pair of ids -> the id it merges into; ids run 256, 257, ... in training order,
            so a smaller id means an earlier (more frequent) merge.
        special_tokens: special token string -> id; ids follow the last merge.
        byte_ids: byte_ids[b] is the id of the single byte b (0..255 for a trained tokenizer).
        vocab: id -> the bytes it stands for (special tokens map to their UTF-8 bytes).

    Treat an instance as immutable: encodings are cached, so editing `merges` afterwards would
    give inconsistent results. Build a new tokenizer instead.
    """

    def __init__(
        self,
        pattern: str = GPT4_SPLIT_PATTERN,
        merges: dict[Pair, int] | None = None,
        special_tokens: dict[str, int] | None = None,
        byte_ids: Sequence[int] | None = None,
    ) -> None:
        self.pattern: str = resolve_pattern(pattern)
        self.merges: dict[Pair, int] = dict(merges or {})
        self.special_tokens: dict[str, int] = dict(special_tokens or {})
        self.byte_ids: tuple[int, ...] = tuple(range(256) if byte_ids is None else byte_ids)
        _check_ids(self.byte_ids, self.merges, self.special_tokens)
        self.vocab: dict[int, bytes] = _build_vocab(self.byte_ids, self.merges, self.special_tokens)
        self._vocab_size = max(self.vocab) + 1
        self._identity_bytes = self.byte_ids == tuple(range(256))
        self._splitter = compile_pattern(self.pattern)
        self._special_splitters: dict[frozenset[str], regex.Pattern[str]] = {}
        self._chunk_cache: dict[str, list[int]] = {}
        self._ids_by_bytes: dict[bytes, int] | None = None
        # The tiktoken engine, built on first use; None with a reason when it cannot be used.
        self._fast: Any = None
        self._fast_problem: str | None = None
        # Set by from_tiktoken_ranks, whose merges are tiktoken's by construction.
        self._merges_match_ranks = False

    # Pickling (for encode_batch's worker processes) sends only what defines the tokenizer.
    def __getstate__(self) -> dict[str, Any]:
        return {
            "pattern": self.pattern,
            "merges": self.merges,
            "special_tokens": self.special_tokens,
            "byte_ids": self.byte_ids,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

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
        text: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        vocab_size: int,
        pattern: str = GPT4_SPLIT_PATTERN,
        special_tokens: Sequence[str] = (EOT_TOKEN,),
        progress: bool = False,
        workers: int | None = None,
    ) -> BPETokenizer:
        """Learn `vocab_size - 256 - len(special_tokens)` merges from `text`.

        `text` is one string, or an iterable of documents: strings, or paths (`pathlib.Path`)
        of UTF-8 text files, each file one document. It is read lazily, a piece at a time, so
        a generator of documents or a list of files never has to fit in memory: memory grows
        with the number of distinct chunks, not with the corpus (see
        scratchlm.tokenizer.training). `vocab_size` counts everything: the 256 byte tokens, the
        merges and the special tokens. `pattern` is "gpt2", "gpt4" or a regex. Occurrences of
        the special token strings in the text act as hard boundaries and are not learned from.
        `progress` shows progress bars (bytes counted, merges learned) with rate and time left.
        `workers` caps the processes that count a large text (default: one per core; 1 counts
        in this process); the result is the same whatever it is.

        Ties: when several pairs are equally frequent, the lexicographically smallest pair of
        ids wins, e.g. (97, 98) before (97, 99) before (256, 97). This makes training fully
        deterministic.

        If the text runs out of pairs before reaching `vocab_size`, training stops early with a
        warning and the tokenizer is smaller; its `vocab_size` property gives the true size.
        """
        pattern, merges, specials = learn_bpe(
            text, vocab_size, pattern, special_tokens, progress, workers
        )
        return cls(pattern, merges, specials)

    @classmethod
    def from_tiktoken_ranks(
        cls,
        ranks: dict[bytes, int],
        pattern: str,
        special_tokens: dict[str, int] | None = None,
    ) -> BPETokenizer:
        """A tokenizer from tiktoken ranks (token bytes -> rank), which become our ids; its
        merges are recovered from the ranks, so it encodes exactly as tiktoken does."""
        byte_ids, merges = merges_from_ranks(ranks)
        tokenizer = cls(pattern, merges, special_tokens, byte_ids)
        tokenizer._merges_match_ranks = True  # recovered from the ranks, so no need to re-check
        return tokenizer

    # ----------------------------------------------------------------------------- encoding

    def encode(
        self,
        text: str,
        allowed_special: Specials = "none",
        disallowed_special: Specials = "none",
        engine: Engine = "auto",
    ) -> list[int]:
        """Encode `text` to ids.

        Special tokens are recognised only if `allowed_special` allows them ("all", or a set of
        their strings). By default any other occurrence is encoded as the ordinary text it
        spells, so untrusted text can never produce a special id. Callers who would rather
        refuse such text name the tokens in `disallowed_special` ("all" means every special
        token not allowed): an occurrence then raises ScratchLMError naming the token and its
        position. `engine` is "python", "tiktoken" or "auto" (see the module docstring).
        """
        allowed = self._allowed_specials(allowed_special)
        disallowed = self._disallowed_specials(disallowed_special, allowed)
        text = valid_unicode(text)
        if disallowed:
            _refuse_disallowed(text, disallowed)
        fast = self._engine(engine)
        if fast is not None:
            return self._fast_encode(fast, text, allowed)
        if not allowed:
            return self._encode_ordinary_python(text)
        # split() with a capturing group returns [text, special, text, special, ..., text].
        parts = self._special_splitter(allowed).split(text)
        ids: list[int] = []
        for i, part in enumerate(parts):
            if i % 2:
                ids.append(self.special_tokens[part])
            elif part:
                ids.extend(self._encode_ordinary_python(part))
        return ids

    def encode_ordinary(self, text: str, engine: Engine = "auto") -> list[int]:
        """Encode `text` to ids, treating special token strings as plain text."""
        text = valid_unicode(text)
        fast = self._engine(engine)
        if fast is not None:
            return self._fast_encode(fast, text, set())
        return self._encode_ordinary_python(text)

    def encode_bytes(self, data: bytes, engine: Engine = "auto") -> list[int]:
        """Encode raw bytes, which need not be valid UTF-8; `decode_bytes` gives them back.

        Valid UTF-8 is encoded like `encode_ordinary`. Otherwise, as tiktoken does it (the case
        it is made for is text cut off in the middle of a character): the valid prefix is split
        and encoded as usual, then its last chunk (with any whitespace-only tokens just before
        it) and all the bytes from the first invalid one on are encoded as a single chunk.
        """
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            valid = e.start  # everything before the first error is valid UTF-8
        else:
            return self.encode_ordinary(text, engine)
        fast = self._engine(engine)
        if fast is not None and is_named_pattern(self.pattern):
            ids: list[int] = fast._encode_bytes(data)
            return ids
        chunks = split_chunks(self._splitter, data[:valid].decode("utf-8"))
        ids = []
        last_chunk_tokens = 0
        for chunk in chunks:
            chunk_ids = self._encode_chunk(utf8(chunk))
            ids.extend(chunk_ids)
            last_chunk_tokens = len(chunk_ids)
        # The split of the prefix may change once the rest of the text is known, and a chunk of
        # whitespace can grow (cl100k's \s*[\r\n]); so whitespace tokens are re-encoded too.
        vocab = self.vocab
        if last_chunk_tokens and _all_whitespace(vocab[ids[-last_chunk_tokens]]):
            while last_chunk_tokens < len(ids) and _all_whitespace(
                vocab[ids[-last_chunk_tokens - 1]]
            ):
                last_chunk_tokens += 1
        tail = data[valid:]
        if last_chunk_tokens:
            tail = self.decode_bytes(ids[-last_chunk_tokens:]) + tail
            del ids[-last_chunk_tokens:]
        whole = self._token_ids().get(tail)
        ids.extend([whole] if whole is not None else self._encode_chunk(tail))
        return ids

    def _token_ids(self) -> dict[bytes, int]:
        """Bytes -> id of every ordinary token, built on first use."""
        if self._ids_by_bytes is None:
            specials = set(self.special_tokens.values())
            self._ids_by_bytes = {token: i for i, token in self.vocab.items() if i not in specials}
        return self._ids_by_bytes

    def encode_batch(
        self,
        texts: Sequence[str],
        allowed_special: Specials = "none",
        disallowed_special: Specials = "none",
        engine: Engine = "auto",
        num_threads: int = 2,
    ) -> list[list[int]]:
        """Encode many texts; the same ids as `encode` on each, using up to `num_threads` cores.

        The tiktoken engine runs its Rust encoder on `num_threads` threads. The python engine
        starts `num_threads` worker processes, but only when there is at least 1 MiB of text;
        below that it encodes in this process, which is faster than starting workers.
        """
        if isinstance(texts, str):
            raise ScratchLMError("encode_batch takes a list of strings; for one string use encode")
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise ScratchLMError(f"num_threads must be a positive integer, got {num_threads!r}")
        allowed = self._allowed_specials(allowed_special)
        disallowed = self._disallowed_specials(disallowed_special, allowed)
        for text in texts:
            if not isinstance(text, str):
                raise ScratchLMError(f"encode_batch takes strings, found {type(text).__name__}")
        texts = [valid_unicode(text) for text in texts]
        if disallowed:
            for text in texts:
                _refuse_disallowed(text, disallowed)
        fast = self._engine(engine)
        if fast is not None:
            batch = fast.encode_batch(
                texts, num_threads=num_threads, allowed_special=allowed, disallowed_special=()
            )
            if not is_named_pattern(self.pattern):
                for text, ids in zip(texts, batch, strict=True):
                    self._check_coverage(text, ids)
            return list(batch)
        total = sum(map(len, texts))
        if num_threads == 1 or len(texts) < 2 or total < _PARALLEL_MIN_CHARS:
            return [self.encode(t, allowed_special=allowed, engine="python") for t in texts]
        workers = min(num_threads, len(texts))
        with spawn_pool(workers, initializer=_start_worker, initargs=(self, allowed)) as pool:
            chunksize = max(1, len(texts) // (workers * 4))
            return list(pool.map(_encode_in_worker, texts, chunksize=chunksize))

    def _encode_ordinary_python(self, text: str) -> list[int]:
        ids: list[int] = []
        cache = self._chunk_cache
        for chunk in split_chunks(self._splitter, text):
            chunk_ids = cache.get(chunk)
            if chunk_ids is None:
                chunk_ids = self._encode_chunk(utf8(chunk))
                if len(chunk) <= _CACHED_CHUNK_CHARS:
                    if len(cache) >= _CHUNK_CACHE_SIZE:
                        # Dicts keep insertion order, so this evicts the oldest entry.
                        del cache[next(iter(cache))]
                    cache[chunk] = chunk_ids
            ids.extend(chunk_ids)
        return ids

    def _encode_chunk(self, data: bytes) -> list[int]:
        # Replay training: repeatedly apply the earliest-learned merge present in the chunk.
        # Merge ids increase in training order, so the id doubles as the merge's rank.
        ids = list(data) if self._identity_bytes else [self.byte_ids[b] for b in data]
        if len(ids) == 2:
            # The commonest short case, without building the heap.
            new_id = self.merges.get((ids[0], ids[1]))
            return ids if new_id is None else [new_id]
        # O(n log n) however long the chunk (a word with no spaces can be megabytes); faster
        # than rescanning the chunk per merge from 4 bytes on.
        return merge_with_heap(ids, self.merges)

    def _allowed_specials(self, allowed: Specials) -> set[str]:
        return self._special_set(allowed, "allowed_special")

    def _disallowed_specials(self, disallowed: Specials, allowed: set[str]) -> set[str]:
        if disallowed == "all":
            return set(self.special_tokens) - allowed
        names = self._special_set(disallowed, "disallowed_special")
        both = names & allowed
        if both:
            raise ScratchLMError(
                f"{sorted(both)} cannot be both allowed and disallowed; "
                "remove them from one of allowed_special and disallowed_special"
            )
        return names

    def _special_set(self, names: Specials, argument: str) -> set[str]:
        if names == "all":
            return set(self.special_tokens)
        if names == "none":
            return set()
        if isinstance(names, str) or not isinstance(names, AbstractSet | list | tuple):
            raise ScratchLMError(
                f'{argument} must be "all", "none" or a set of special token strings, got {names!r}'
            )
        unknown = set(names) - self.special_tokens.keys()
        if unknown:
            raise ScratchLMError(
                f"{argument} names {sorted(unknown)}, which are not special tokens of this "
                f"tokenizer (it has {sorted(self.special_tokens)})"
            )
        return set(names)

    # ----------------------------------------------------------------------------- tiktoken

    def tiktoken_encoding(self) -> Any:
        """This tokenizer as a `tiktoken.Encoding` (the same ids), built once and then reused.

        Raises ScratchLMError saying why when that is impossible: tiktoken is not installed,
        its regex engine cannot compile our pattern, or our merges are not the ones tiktoken
        would derive from the token ranks (see scratchlm.tokenizer.fast).
        """
        if self._fast is None and self._fast_problem is None:
            try:
                self._fast = build_tiktoken_encoding(
                    self.pattern,
                    self.vocab,
                    self.merges,
                    self.special_tokens,
                    self._merges_match_ranks,
                )
            except ScratchLMError as e:
                self._fast_problem = str(e)
        if self._fast is None:
            raise ScratchLMError(f"the tiktoken engine cannot be used: {self._fast_problem}")
        return self._fast

    def _engine(self, engine: Engine) -> Any:
        """The tiktoken.Encoding to encode with, or None for our own Python encoder."""
        if engine == "python":
            return None
        if engine == "tiktoken":
            return self.tiktoken_encoding()
        if engine != "auto":
            raise ScratchLMError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        try:
            return self.tiktoken_encoding()
        except ScratchLMError:
            return None

    def _fast_encode(self, fast: Any, text: str, allowed: set[str]) -> list[int]:
        if allowed:
            ids: list[int] = fast.encode(text, allowed_special=allowed, disallowed_special=())
        else:
            ids = fast.encode_ordinary(text)
        if not is_named_pattern(self.pattern):
            self._check_coverage(text, ids)
        return ids

    def _check_coverage(self, text: str, ids: list[int]) -> None:
        # tiktoken silently drops text a custom pattern does not match; the Python engine
        # raises for it, so run that to get the same error.
        vocab = self.vocab
        if sum(len(vocab[i]) for i in ids) != len(text.encode("utf-8")):
            self._encode_ordinary_python(text)
            raise ScratchLMError(f"split pattern {self.pattern!r} skips some of the text")

    def _special_splitter(self, allowed: set[str]) -> regex.Pattern[str]:
        key = frozenset(allowed)
        splitter = self._special_splitters.get(key)
        if splitter is None:
            splitter = alternation(allowed, capture=True)
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
                    f"(valid ids are 0 to {self.vocab_size - 1}"
                    f"{'' if len(self.vocab) == self.vocab_size else ', with gaps'})"
                ) from None
        return b"".join(pieces)

    def decode(self, ids: Iterable[int]) -> str:
        """Decode ids to text; byte sequences that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ----------------------------------------------------------------------------- properties

    @property
    def vocab_size(self) -> int:
        """One more than the largest id: 256 bytes + merges + special tokens when ids have no
        gaps (as in every tokenizer `train` makes; cl100k_base has unused ids among its
        special tokens). This is the number of rows a model's embedding needs."""
        return self._vocab_size

    def fingerprint(self) -> str:
        """A short hash of everything that decides the ids: pattern, byte ids, merges, specials.

        Checkpoints record it, so a model is never paired with a tokenizer it was not trained
        with (two tokenizers of the same size would otherwise pass unnoticed).
        """
        content = [
            self.pattern,
            list(self.byte_ids),
            sorted([a, b, new_id] for (a, b), new_id in self.merges.items()),
            sorted(self.special_tokens.items()),
        ]
        return hashlib.sha256(json.dumps(content).encode("utf-8")).hexdigest()[:16]

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
        """Write the tokenizer as one JSON file (written atomically), one merge per line.

        A tokenizer numbered like a trained one is written as version 1; any other (a
        vocabulary imported from tiktoken or GPT-2) as version 2, with its byte ids and
        merge ids spelled out.
        """
        ordered = sorted(self.merges.items(), key=lambda item: item[1])
        if self._has_v1_layout():
            version = FILE_VERSION
            merge_lines = ",\n".join(f"    [{a}, {b}]" for (a, b), _ in ordered)
            extra = ""
        else:
            version = FILE_VERSION_GENERAL
            merge_lines = ",\n".join(f"    [{a}, {b}, {n}]" for (a, b), n in ordered)
            extra = f'  "byte_ids": {json.dumps(list(self.byte_ids))},\n'
        merges_json = f"[\n{merge_lines}\n  ]" if ordered else "[]"
        text = (
            "{\n"
            f'  "format": {json.dumps(FILE_FORMAT)},\n'
            f'  "version": {version},\n'
            f'  "pattern": {json.dumps(self.pattern)},\n'
            f'  "special_tokens": {json.dumps(self.special_tokens)},\n'
            f"{extra}"
            f'  "merges": {merges_json}\n'
            "}\n"
        )
        atomic_write_text(path, text)

    def _has_v1_layout(self) -> bool:
        first_special = 256 + len(self.merges)
        return (
            self._identity_bytes
            and sorted(self.merges.values()) == list(range(256, first_special))
            and sorted(self.special_tokens.values())
            == list(range(first_special, first_special + len(self.special_tokens)))
        )

    def save_vocab(self, path: str | os.PathLike[str]) -> None:
        """Write a human-readable listing of every token, for inspection only (not loadable).

        Merged tokens are shown with the two tokens they were built from:
        `[ t][he] -> [ the] 300`.
        """
        parents = {new_id: pair for pair, new_id in self.merges.items()}
        special_ids = set(self.special_tokens.values())
        lines = []
        for token_id, token in sorted(self.vocab.items()):
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
        data = read_json(path, what="tokenizer file")
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
        version = data.get("version")
        if version not in (FILE_VERSION, FILE_VERSION_GENERAL) or isinstance(version, bool):
            raise ScratchLMError(
                f'"version" is {version!r}, but this scratchlm reads only '
                f"versions {FILE_VERSION} and {FILE_VERSION_GENERAL}"
            )
        pattern = data.get("pattern")
        if not isinstance(pattern, str):
            raise ScratchLMError(f'"pattern" must be a string, found {pattern!r}')

        general = version == FILE_VERSION_GENERAL
        width = 3 if general else 2
        raw_merges = data.get("merges")
        if not isinstance(raw_merges, list):
            shape = "[id, id, new id] triples" if general else "[id, id] pairs"
            raise ScratchLMError(f'"merges" must be a list of {shape}')
        merges: dict[Pair, int] = {}
        for k, item in enumerate(raw_merges):
            if not (
                isinstance(item, list) and len(item) == width and all(_is_json_int(x) for x in item)
            ):
                raise ScratchLMError(f'merge #{k} in "merges" is {item!r}, not {width} integer ids')
            pair = (item[0], item[1])
            if pair in merges:
                raise ScratchLMError(f"merge #{k} repeats the pair {list(pair)}")
            merges[pair] = item[2] if general else 256 + k

        raw_specials = data.get("special_tokens")
        if not isinstance(raw_specials, dict) or not all(
            _is_json_int(v) for v in raw_specials.values()
        ):
            raise ScratchLMError('"special_tokens" must be an object mapping strings to ids')
        if not general:
            _check_v1_special_ids(len(merges), raw_specials)
            return cls(pattern, merges, raw_specials)
        byte_ids = data.get("byte_ids")
        if not isinstance(byte_ids, list):
            raise ScratchLMError('"byte_ids" must be a list of 256 ids (version 2)')
        return cls(pattern, merges, raw_specials, byte_ids)


def train_bpe_from_files(
    paths: Iterable[str | os.PathLike[str]],
    vocab_size: int,
    pattern: str = GPT4_SPLIT_PATTERN,
    special_tokens: Sequence[str] = (EOT_TOKEN,),
    progress: bool = False,
    workers: int | None = None,
) -> BPETokenizer:
    """Train on UTF-8 text files, one document per file, reading each about 1 MB at a time.

    The same tokenizer as training on the documents `scratchlm.data.documents.read_documents`
    makes of text files (strict UTF-8, a leading byte-order mark dropped, \\r\\n and \\r read as
    \\n, files of only whitespace skipped), without holding them in memory. The other
    arguments are those of `BPETokenizer.train`.
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    files = [Path(p) for p in paths]
    return BPETokenizer.train(files, vocab_size, pattern, special_tokens, progress, workers)


# --------------------------------------------------------------------------------- helpers


def _check_ids(
    byte_ids: tuple[int, ...], merges: dict[Pair, int], special_tokens: dict[str, int]
) -> None:
    """Check that every id is defined once, and each merge only uses ids defined before it."""
    if len(byte_ids) != 256 or not all(_is_json_int(i) and i >= 0 for i in byte_ids):
        raise ScratchLMError("byte_ids must be 256 non-negative integer ids, one per byte value")
    if len(set(byte_ids)) != 256:
        raise ScratchLMError("byte_ids gives two byte values the same id")
    for pair, new_id in merges.items():
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(_is_json_int(x) for x in pair)):
            raise ScratchLMError(f"merge {pair!r} -> {new_id!r} is not a pair of integer ids")
        if not _is_json_int(new_id) or new_id < 0:
            raise ScratchLMError(f"merge {list(pair)} -> {new_id!r}: the new id is not an id")
    defined = set(byte_ids)
    # Merge ids double as ranks: a merge may use bytes and merges with smaller ids only.
    for (a, b), new_id in sorted(merges.items(), key=lambda item: item[1]):
        if new_id in defined:
            raise ScratchLMError(f"merge [{a}, {b}] -> {new_id} reuses id {new_id}")
        for part in (a, b):
            if part not in defined:
                raise ScratchLMError(
                    f"merge [{a}, {b}] -> {new_id} uses id {part}, which does not exist yet "
                    f"(a merge may use only bytes and merges with smaller ids)"
                )
        defined.add(new_id)
    check_special_names(list(special_tokens))
    for name, token_id in special_tokens.items():
        if not _is_json_int(token_id) or token_id < 0:
            raise ScratchLMError(f"special token {name!r} has id {token_id!r}, not an id")
        if token_id in defined:
            raise ScratchLMError(
                f"special token {name!r} has id {token_id}, which is already used by a byte, "
                "a merge or another special token"
            )
        defined.add(token_id)


def _check_v1_special_ids(num_merges: int, special_tokens: dict[str, int]) -> None:
    first_special = 256 + num_merges
    if sorted(special_tokens.values()) != list(
        range(first_special, first_special + len(special_tokens))
    ):
        raise ScratchLMError(
            f"special token ids {sorted(special_tokens.values())} must be exactly "
            f"{first_special} to {first_special + len(special_tokens) - 1}, "
            "the ids that follow the last merge"
        )


def _build_vocab(
    byte_ids: tuple[int, ...], merges: dict[Pair, int], special_tokens: dict[str, int]
) -> dict[int, bytes]:
    vocab = {token_id: bytes([b]) for b, token_id in enumerate(byte_ids)}
    for (a, b), new_id in sorted(merges.items(), key=lambda item: item[1]):
        vocab[new_id] = vocab[a] + vocab[b]
    for name, token_id in special_tokens.items():
        vocab[token_id] = utf8(name)
    return vocab


def _refuse_disallowed(text: str, disallowed: set[str]) -> None:
    found = alternation(disallowed, capture=False).search(text)
    if found is None:
        return
    line = text.count("\n", 0, found.start()) + 1
    column = found.start() - (text.rfind("\n", 0, found.start()) + 1) + 1
    raise ScratchLMError(
        f"the text contains the special token {found.group()!r} at character {found.start()} "
        f"(line {line}, column {column}), and disallowed_special forbids it; pass it in "
        "allowed_special to encode it as a special token, or leave it out of "
        "disallowed_special to encode it as plain text"
    )


def _all_whitespace(token: bytes) -> bool:
    return all(b in b" \n\t" for b in token)


# Each worker process receives the tokenizer once, at start-up, not with every text.
_worker_job: tuple[BPETokenizer, set[str]] | None = None


def _start_worker(tokenizer: BPETokenizer, allowed: set[str]) -> None:
    global _worker_job
    _worker_job = (tokenizer, allowed)


def _encode_in_worker(text: str) -> list[int]:
    assert _worker_job is not None, "worker not started"
    tokenizer, allowed = _worker_job
    return tokenizer.encode(text, allowed_special=allowed, engine="python")


def _render(token: bytes) -> str:
    # Show control characters (newlines, tabs, ...) as escapes so each token stays on one line.
    text = token.decode("utf-8", errors="replace")
    return "".join(
        f"\\u{ord(ch):04x}" if unicodedata.category(ch).startswith("C") else ch for ch in text
    )


def _is_json_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
