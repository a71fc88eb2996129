"""Training a byte-level BPE tokenizer: count the chunks of the text, then learn the merges.

`BPETokenizer.train` (scratchlm.tokenizer.bpe) is the entry point, and calls `learn_bpe` here;
this module knows nothing of the tokenizer class. Training has two phases.

1. Counting. The split regex cuts the text into chunks, and merges never cross a chunk boundary,
   so all that training needs from the text is how often each distinct chunk occurs. The text is
   read a piece at a time (a document, or about a megabyte of a file or of a long document) and
   only the counts are kept, so memory grows with the number of distinct chunks, not with the
   size of the corpus. A large corpus is counted by worker processes on every core.

2. Merging. Repeatedly merge the most frequent adjacent pair of ids (counted over the distinct
   chunks, each weighted by how often it occurs) into a new id. Ties go to the smallest pair,
   compared as (first id, second id), so training is deterministic.

Where a long text may be cut. Counting the pieces of a text separately gives the same counts as
counting the whole text only if the split regex finds the same chunks in the pieces as in the
whole. With the named patterns (gpt2, gpt4, r50k, cl100k, o200k) that holds at two kinds of
places, found all through ordinary text:

    "X "    before the space,      e.g. "...the end| of the line"
    "X\\nL"  after the newline,     e.g. "...the end.\\n|Next line"

where X is any character but whitespace and L is a letter (\\p{L}). Why: no chunk of those
patterns holds a non-space character followed by a space, or a newline followed by a letter
(a chunk may put one space or punctuation character before a letter, never a newline; o200k
may put "/" after a newline, hence the letter), so a chunk ends at the cut. The patterns never
look behind, so the chunks after the cut are the same as in the whole text; and they only look
ahead at the end of a run of whitespace, which the chunk before the cut is not, as X is not
whitespace. A cut is also never made inside a special token. A custom pattern gives no such
guarantee, so with one each document and file is counted whole, as one piece. The tests check
the rule on every short string of the characters that matter.
"""

from __future__ import annotations

import codecs
import heapq
import itertools
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import lru_cache, partial
from operator import add
from pathlib import Path

import regex
from tqdm import tqdm

from scratchlm.core.errors import ScratchLMError
from scratchlm.core.messages import progress as progress_bar
from scratchlm.core.messages import warn
from scratchlm.core.user_files import not_utf8_error
from scratchlm.core.workers import available_cores, spawn_pool
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
from scratchlm.tokenizer.patterns import GPT4_SPLIT_PATTERN, compile_pattern, resolve_pattern

# One item of training text: a document, or the path of a UTF-8 text file (one document).
Source = str | os.PathLike[str]

# Long documents and files are counted in pieces of about this many characters.
PIECE_CHARS = 1 << 20
# Files are read this many bytes at a time.
READ_BYTES = 1 << 20
# Pieces are sent to a worker process in batches of about this many bytes.
BATCH_BYTES = 1 << 20
# A worker process takes a few tenths of a second to start, so workers are started only once
# this much text is waiting; less is counted in this process alone.
PARALLEL_MIN_BYTES = 4 << 20
# Words hold token ids as characters (see learn_merges), so an id must be a Unicode code point.
MAX_VOCAB_SIZE = 0x110000

# A place where a long text may be cut (see the module docstring): before the space of "X ", or
# after the newline of "X\nL". (?r) searches backwards, for the last one before a position.
_CUT = r"\S |\S\n\p{L}"
_CUT_FORWARD = regex.compile(_CUT)
_CUT_BACKWARD = regex.compile(f"(?r){_CUT}")


def learn_bpe(
    text: Source | Iterable[Source],
    vocab_size: int,
    pattern: str = GPT4_SPLIT_PATTERN,
    special_tokens: Sequence[str] = (EOT_TOKEN,),
    progress: bool = False,
    workers: int | None = None,
    warn_if_short: bool = True,
) -> tuple[str, dict[Pair, int], dict[str, int]]:
    """What `BPETokenizer.train` does (see there): (pattern, merges, special tokens).

    `warn_if_short=False` is for callers that ask for more merges than the text has on purpose.
    """
    pattern = resolve_pattern(pattern)
    special_tokens = check_special_names(special_tokens)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise ScratchLMError(f"vocab_size must be an integer, got {vocab_size!r}")
    minimum = 256 + len(special_tokens)
    if vocab_size < minimum:
        raise ScratchLMError(
            f"vocab_size {vocab_size} is too small: the minimum is {minimum} "
            f"(256 byte tokens + {len(special_tokens)} special tokens)"
        )
    if vocab_size > MAX_VOCAB_SIZE:
        raise ScratchLMError(
            f"vocab_size {vocab_size:,} is too large: training supports at most "
            f"{MAX_VOCAB_SIZE:,} tokens"
        )
    chunk_counts = count_chunks(text, pattern, special_tokens, progress, workers)
    wanted = vocab_size - minimum
    merges = learn_merges(chunk_counts, wanted, progress)
    if len(merges) < wanted and warn_if_short:
        warn(
            f"the training text ran out of pairs after {len(merges)} of {wanted} merges; "
            f"the tokenizer has {minimum + len(merges)} tokens instead of {vocab_size}"
        )
    first_special = 256 + len(merges)
    specials = {name: first_special + i for i, name in enumerate(special_tokens)}
    return pattern, merges, specials


# --------------------------------------------------------------------------------- counting


def count_chunks(
    text: Source | Iterable[Source],
    pattern: str,
    special_tokens: Sequence[str] = (),
    progress: bool = False,
    workers: int | None = None,
) -> dict[bytes, int]:
    """How often each distinct chunk (as UTF-8 bytes) occurs in `text`.

    `text` is a string, a file path, or an iterable of them; it is read lazily, a piece at a
    time. Special tokens are hard boundaries: no chunk spans one, and they are not counted.
    `workers` caps the processes that count, this one included (default: one per core); with
    1, or on less than PARALLEL_MIN_BYTES of text, this process counts alone.
    """
    pattern = resolve_pattern(pattern)
    if workers is None:
        workers = available_cores()
    elif isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ScratchLMError(f"workers must be a positive integer, got {workers!r}")
    reader = _TextReader(text, pattern, tuple(special_tokens))
    total = reader.total_bytes() if progress else None
    with progress_bar(
        total=total,
        desc="counting chunks",
        unit="B",
        enabled=progress,
        unit_scale=True,
        unit_divisor=1024,
    ) as bar:
        batches = _batches(iter(reader))
        if workers > 1:
            # Look ahead: start workers only if there is enough text to repay their start-up.
            waiting: list[_Batch] = []
            waiting_bytes = 0
            for batch in batches:
                waiting.append(batch)
                waiting_bytes += batch.bytes
                if waiting_bytes >= PARALLEL_MIN_BYTES:
                    break
            else:
                workers = 1
            batches = itertools.chain(waiting, batches)
        if workers > 1:
            counts = _count_in_workers(batches, pattern, reader.special_tokens, workers, bar)
        else:
            counts = Counter()
            for batch in batches:
                _count_pieces(counts, batch.pieces, pattern, reader.special_tokens)
                bar.update(batch.bytes)
    if not reader.has_text:
        raise ScratchLMError(
            "training text is empty (or only whitespace); there is nothing to learn"
            + (f" in {_names(reader.files)}" if reader.files else "")
        )
    return {utf8(chunk): n for chunk, n in counts.items()}


@dataclass
class _Batch:
    pieces: list[str]
    bytes: int  # of the input they came from, for the progress bar


def _batches(pieces: Iterator[tuple[str, int]]) -> Iterator[_Batch]:
    """Group pieces into batches of at least BATCH_BYTES (the last may be smaller)."""
    batch = _Batch([], 0)
    for piece, size in pieces:
        batch.pieces.append(piece)
        batch.bytes += size
        if batch.bytes >= BATCH_BYTES:
            yield batch
            batch = _Batch([], 0)
    if batch.pieces or batch.bytes:
        yield batch


def _count_pieces(
    counts: Counter[str], pieces: list[str], pattern: str, special_tokens: tuple[str, ...]
) -> None:
    """Add the chunks of `pieces` to `counts`; special tokens separate chunks."""
    splitter, separator = _compiled(pattern, special_tokens)
    # The named patterns match every character of any text; a custom one is checked, since
    # one that skips characters would make tokens that cannot give the text back.
    split = splitter.findall if is_named_pattern(pattern) else partial(split_chunks, splitter)
    for piece in pieces:
        # `in` is much faster than a regex search, and most text holds no special token.
        if separator and any(token in piece for token in special_tokens):
            for part in separator.split(piece):
                counts.update(split(part))
        else:
            counts.update(split(piece))


@lru_cache(maxsize=8)
def _compiled(
    pattern: str, special_tokens: tuple[str, ...]
) -> tuple[regex.Pattern[str], regex.Pattern[str] | None]:
    separator = alternation(special_tokens, capture=False) if special_tokens else None
    return compile_pattern(pattern), separator


def _count_batch(pieces: list[str], pattern: str, special_tokens: tuple[str, ...]) -> Counter[str]:
    """The job of a worker process: the chunk counts of one batch."""
    counts: Counter[str] = Counter()
    _count_pieces(counts, pieces, pattern, special_tokens)
    return counts


def _count_in_workers(
    batches: Iterator[_Batch],
    pattern: str,
    special_tokens: tuple[str, ...],
    workers: int,
    bar: tqdm,
) -> Counter[str]:
    """Count batches in `workers - 1` worker processes and in this one; add up the counts.

    A worker takes a few tenths of a second to start (a new Python that imports this module),
    so batches go to the workers only once one has started; until then, and whenever each
    worker has two batches waiting, this process counts the next batch itself. So starting the
    workers costs no time, memory stays bounded however long the input is, and no core idles
    while this process adds up the workers' counts (about 5% of the time they took).

    If the workers die, most often because they could not start (a script that trains at its
    top level, without `if __name__ == "__main__":`, is run again by each of them), this
    process counts their batches and the rest itself, with a warning.
    """
    counts: Counter[str] = Counter()
    broken = False

    def count_here(batch: _Batch) -> None:
        _count_pieces(counts, batch.pieces, pattern, special_tokens)
        bar.update(batch.bytes)

    pool = spawn_pool(workers - 1)
    started = pool.submit(os.getpid)  # done once a worker is up
    pending: dict[Future[Counter[str]], _Batch] = {}

    def collect(done: Iterable[Future[Counter[str]]]) -> None:
        nonlocal broken
        for future in done:
            batch = pending.pop(future)
            try:
                counts.update(future.result())  # re-raises a worker's error here
            except BrokenProcessPool:
                broken = True
                count_here(batch)
            else:
                bar.update(batch.bytes)

    try:
        for batch in batches:
            if started.done() and started.exception() is not None:
                broken = True
            if started.done() and not broken and len(pending) < 2 * (workers - 1):
                try:
                    pending[pool.submit(_count_batch, batch.pieces, pattern, special_tokens)] = (
                        batch
                    )
                    continue
                except BrokenProcessPool:
                    broken = True
            count_here(batch)
            collect([future for future in pending if future.done()])
        collect(list(pending))
    finally:
        # A worker still starting up (when the text ran out first) is left to finish alone.
        pool.shutdown(wait=False, cancel_futures=True)
    if broken:
        warn(
            "the worker processes that count chunks stopped, so this process counted alone "
            "(the result is the same). If the training script calls BPETokenizer.train at its "
            'top level, put that under `if __name__ == "__main__":`, or pass workers=1.'
        )
    return counts


class _TextReader:
    """The training text as (piece, UTF-8 bytes) pairs; each piece can be counted on its own.

    A document is one piece, or several if it is long; a file is read READ_BYTES at a time.
    Reading notes whether any of the text is more than whitespace (`has_text`).
    """

    def __init__(
        self, text: Source | Iterable[Source], pattern: str, special_tokens: tuple[str, ...]
    ) -> None:
        self.sources: Iterable[Source] = [text] if isinstance(text, str | os.PathLike) else text
        # Only the named patterns are known to be safe to cut (see the module docstring).
        self.cuttable = is_named_pattern(pattern)
        self.special_tokens = special_tokens
        self.specials = alternation(special_tokens, capture=False) if special_tokens else None
        self.longest_special = max(map(len, special_tokens), default=0)
        self.has_text = False
        self.files: list[Path] = []  # the files read, to name them if they hold no text

    def total_bytes(self) -> int | None:
        """The size of the whole input, if it can be known without reading it."""
        if not isinstance(self.sources, Sequence):
            return None  # a generator: reading it to measure would use it up
        total = 0
        for source in self.sources:
            if isinstance(source, str):
                total += _utf8_size(source)
            elif isinstance(source, os.PathLike):
                try:
                    total += os.path.getsize(source)
                except OSError:
                    return None  # reading will report it
        return total

    def __iter__(self) -> Iterator[tuple[str, int]]:
        for source in self.sources:
            if isinstance(source, str):
                yield from self._document(source)
            elif isinstance(source, os.PathLike):
                self.files.append(Path(source))
                yield from self._file(Path(source))
            else:
                raise ScratchLMError(
                    "training text must be a string, a file path, or an iterable of them; "
                    f"found an item of type {type(source).__name__}"
                )

    def _document(self, text: str) -> Iterator[tuple[str, int]]:
        # Surrogates repaired as encode repairs them, so training sees what encoding will.
        text = valid_unicode(text)
        pieces = self._cut(text) if self.cuttable and len(text) > PIECE_CHARS else [text]
        for piece in pieces:
            self._note(piece)
            yield piece, _utf8_size(piece)

    def _file(self, path: Path) -> Iterator[tuple[str, int]]:
        held: list[str] = []  # the text read since the last cut, block by block
        held_bytes = 0
        cut_before = False
        for block, size in _read_text_blocks(path):
            held.append(block)
            held_bytes += size
            if not self.cuttable:
                continue  # a custom pattern: the file is one piece
            # Search the new block, and the text just before it: a cut there may need the new
            # block's first characters, and special tokens within reach of a cut forbid it.
            # A special token may straddle the end of the block, so no cut is made that close
            # to the end.
            reach = 2 * self.longest_special + 2
            blocks = 1
            while blocks < len(held) and sum(map(len, held[-blocks:-1])) < reach:
                blocks += 1
            text = "".join(held[-blocks:])
            end = len(text) - max(self.longest_special - 1, 0)
            cut = self._find_cut(text, 0, end, end)
            if cut < 0:
                continue  # no safe cut yet: keep reading
            piece = "".join([*held[:-blocks], text[:cut]])
            held = [text[cut:]]
            self._note(piece)
            yield piece, held_bytes
            held_bytes = 0
            cut_before = True
        piece = "".join(held)
        if not cut_before and piece.isspace():
            # A file of nothing but whitespace is no document, as in scratchlm.data.documents.
            # (A file that was cut has more: a cut follows a character that is not whitespace.)
            piece = ""
        self._note(piece)
        yield piece, held_bytes

    def _note(self, piece: str) -> None:
        if not self.has_text and piece and not piece.isspace():
            self.has_text = True

    def _cut(self, text: str) -> list[str]:
        """Cut a long document into pieces of about PIECE_CHARS, at safe places."""
        pieces = []
        start = 0
        while len(text) - start > PIECE_CHARS:
            cut = self._find_cut(text, start, start + PIECE_CHARS, len(text))
            if cut < 0:
                break
            pieces.append(text[start:cut])
            start = cut
        pieces.append(text[start:])
        return pieces

    def _find_cut(self, text: str, low: int, target: int, end: int) -> int:
        """A safe cut in (low, end]: the last at or before `target`, else the first after it;
        -1 if there is none."""
        for found in itertools.chain(
            _CUT_BACKWARD.finditer(text, low, min(target, end) + 2),
            _CUT_FORWARD.finditer(text, target, end + 2),
        ):
            cut = found.start() + (1 if found.group()[1] == " " else 2)
            if low < cut <= end and not self._in_special(text, cut):
                return cut
        return -1

    def _in_special(self, text: str, cut: int) -> bool:
        if self.specials is None:
            return False
        # Any special token within reach of the cut vetoes it (more often than needed, which
        # is harmless: another cut is found).
        reach = self.longest_special - 1
        return self.specials.search(text, max(cut - reach, 0), cut + reach) is not None


def _names(paths: list[Path], most: int = 3) -> str:
    names = ", ".join(str(path) for path in paths[:most])
    return names + (f" and {len(paths) - most} more files" if len(paths) > most else "")


def _utf8_size(text: str) -> int:
    # isascii() is instant in CPython, and most text is ASCII: no need to encode it.
    return len(text) if text.isascii() else len(text.encode("utf-8", errors="surrogatepass"))


def _read_text_blocks(path: Path) -> Iterator[tuple[str, int]]:
    """The text of a file, READ_BYTES at a time: (text, bytes read).

    The same text as scratchlm.data.documents.read_documents gives: strict UTF-8, no byte-order
    mark ("utf-8-sig" drops it), and \\r\\n and \\r read as \\n.
    """
    decoder = codecs.getincrementaldecoder("utf-8-sig")("strict")
    offset = lines = 0  # bytes and newlines before the current block, for error messages
    hold = ""  # a \r that ended the previous block: it may be the first half of \r\n
    try:
        with path.open("rb") as stream:
            while True:
                block = stream.read(READ_BYTES)
                final = not block
                try:
                    text = hold + decoder.decode(block, final=final)
                except UnicodeDecodeError as e:
                    bad = bytes(e.object)
                    raise not_utf8_error(str(path), bad, e.start, offset, lines) from None
                offset += len(block)
                lines += block.count(b"\n")
                hold = "\r" if text.endswith("\r") and not final else ""
                if hold:
                    text = text[:-1]
                yield text.replace("\r\n", "\n").replace("\r", "\n"), len(block)
                if final:
                    return
    except OSError as e:
        raise ScratchLMError(f"cannot read training file {path}: {e.strerror or e}") from None


# --------------------------------------------------------------------------------- merging


def learn_merges(
    chunk_counts: Mapping[bytes, int], num_merges: int, progress: bool = False
) -> dict[Pair, int]:
    """Learn up to `num_merges` merges, most frequent pair first, ties to the smallest pair.

    Words. Each distinct chunk becomes a "word": a str whose characters are token ids, chr(id),
    starting with chr(byte) for each of its bytes (which is what decoding as latin-1 does). A
    pair of ids is then a 2-character str, and the work per word runs in C: `word.find(pair)`
    finds a pair, `word.replace(pair, chr(new_id))` merges it exactly as BPE does (left to
    right, without overlaps), and comparing pairs as strings compares them as (first id,
    second id), which is the tie-break. (It also makes a pair a cheap dictionary key.)

    Recounting all pairs after every merge would cost O(corpus) per merge. Instead we keep:
      pair_counts: pair -> occurrences, weighted by chunk counts;
      where:       pair -> indices of the words that held it when it appeared; a word may since
                   have lost it, which costs only a quick `find` when that pair is merged;
      heap:        (-count, pair) entries, so popping gives the best pair and, among equal
                   counts, the smallest pair.
    A merge then only rewrites the words that contain the chosen pair. Heap entries are not
    removed when a count drops; a popped entry whose count is out of date is re-queued with
    the current count instead ("lazy invalidation"). A count can only rise for a pair that
    contains the new id, and those are pushed after every merge.
    """
    if 256 + num_merges > MAX_VOCAB_SIZE:
        raise ScratchLMError(f"at most {MAX_VOCAB_SIZE - 256:,} merges can be learned")
    words: list[str] = []
    weights: list[int] = []
    for chunk, count in chunk_counts.items():
        if len(chunk) >= 2:  # a single byte has no pair to merge
            words.append(chunk.decode("latin-1"))
            weights.append(count)

    pair_counts: dict[str, int] = defaultdict(int)
    where: dict[str, list[int]] = defaultdict(list)
    for index, word in enumerate(words):
        weight = weights[index]
        for pair in map(add, word, word[1:]):  # adjacent characters, joined: "abc" -> ab, bc
            pair_counts[pair] += weight
            holders = where[pair]
            if not holders or holders[-1] != index:  # a word may hold a pair twice
                holders.append(index)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges: dict[str, str] = {}
    with progress_bar(
        total=num_merges, desc="learning merges", unit="merge", enabled=progress
    ) as bar:
        while len(merges) < num_merges and heap:
            neg_count, pair = heapq.heappop(heap)
            count = pair_counts.get(pair, 0)
            if count != -neg_count:  # out of date
                if count > 0:
                    heapq.heappush(heap, (-count, pair))
                continue
            new = chr(256 + len(merges))
            merges[pair] = new
            for gained in _apply_merge(pair, new, words, weights, pair_counts, where):
                if pair_counts[gained] > 0:
                    heapq.heappush(heap, (-pair_counts[gained], gained))
            bar.update()
    return {(ord(pair[0]), ord(pair[1])): ord(new) for pair, new in merges.items()}


def _apply_merge(
    pair: str,
    new: str,
    words: list[str],
    weights: list[int],
    pair_counts: dict[str, int],
    where: dict[str, list[int]],
) -> Iterable[str]:
    """Merge `pair` into `new` in every word holding it; update the counts; return the new pairs.

    Each occurrence of the pair a b, between neighbours x and y, turns x a b y into x new y:
    (x, a) and (b, y) lose the word's weight and (x, new) and (new, y) gain it. x is taken from
    the word as merged so far (it is `new` itself when the previous occurrence ended just
    before), y from the word as it was; so in "a b a b" -> "new new", the first occurrence
    adds (new, a) and the second takes it away again and adds (new, new).
    """
    first, second = pair[0], pair[1]
    gained: dict[str, list[int]] = {}  # the pairs that contain `new` -> the words holding them
    for index in where.pop(pair):
        word = words[index]
        at = word.find(pair)
        if at < 0:
            continue  # the word lost the pair to an earlier merge
        weight = weights[index]
        last = len(word) - 2  # an occurrence before `last` has a right neighbour
        previous_end = -1
        while at >= 0:
            # Written out rather than calling a helper: this loop is where training spends
            # its time, and a function call per neighbour adds a noticeable share to it.
            if at > 0:
                left = new if at == previous_end else word[at - 1]
                pair_counts[left + first] -= weight
                gain = left + new
                pair_counts[gain] += weight
                holders = gained.get(gain)
                if holders is None:
                    gained[gain] = [index]
                elif holders[-1] != index:
                    holders.append(index)
            if at < last:
                right = word[at + 2]
                pair_counts[second + right] -= weight
                gain = new + right
                pair_counts[gain] += weight
                holders = gained.get(gain)
                if holders is None:
                    gained[gain] = [index]
                elif holders[-1] != index:
                    holders.append(index)
            previous_end = at + 2
            at = word.find(pair, previous_end)
        words[index] = word.replace(pair, new)
    del pair_counts[pair]
    where.update(gained)
    return gained
