"""Token shards on disk, the train/val split, preparing shards in batches, and the loader."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from scratchlm.config import load_config
from scratchlm.core.document_split import DocumentSplit, split_documents, split_text
from scratchlm.core.errors import ScratchLMError
from scratchlm.data import (
    TokenShardWriter,
    open_shard,
    prepare_shards,
    prepared_shards,
)
from scratchlm.data.loader import TokenBatches
from scratchlm.data.shards import HEADER_SIZE, MAGIC
from scratchlm.tokenizer import BPETokenizer

Batch = tuple[torch.Tensor, torch.Tensor]


class ByteTokenizer:
    """Token ids are the UTF-8 bytes; 256 is <|endoftext|>. Remembers its encode_batch calls."""

    eot_id = 256

    def __init__(self, vocab_size: int = 257) -> None:
        self.vocab_size = vocab_size
        self.calls: list[tuple[int, int]] = []  # (number of texts, num_threads)

    def encode_batch(self, texts: Sequence[str], *, num_threads: int) -> list[list[int]]:
        self.calls.append((len(texts), num_threads))
        return [list(text.encode("utf-8")) for text in texts]


def write_shards(folder: Path, docs: list[list[int]], shard_tokens: int = 10**9) -> list[Path]:
    with TokenShardWriter(folder, "train", 1000, eot_id=999, shard_tokens=shard_tokens) as w:
        for ids in docs:
            w.add_document(ids)
    return w.paths


def counting_shards(folder: Path, lengths: list[int]) -> list[Path]:
    """One document per shard whose tokens count up, so every token is unique and traceable.

    The document is `length - 1` ids and its end-of-text token (here: the next number too)."""
    paths, start = [], 0
    for i, length in enumerate(lengths):
        eot = start + length - 1
        with TokenShardWriter(folder, f"s{i}", 2**20, eot_id=eot) as w:
            w.add_document(np.arange(start, eot))
        paths += w.paths
        start += length
    return paths


def decode_split(folder: Path, split: str) -> list[str]:
    docs = []
    for path in prepared_shards(folder, split):
        shard = open_shard(path)
        docs += [bytes(shard.document(i).tolist()).decode() for i in range(shard.num_documents)]
    return docs


def same(a: Batch, b: Batch) -> bool:
    return torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# --- the shard file ----------------------------------------------------------------------------


def test_shard_round_trip_and_header(tmp_path: Path) -> None:
    docs = [[1, 2, 3], [], [500, 7]]
    (path,) = write_shards(tmp_path, docs)
    assert path.name == "train_000000.bin"
    raw = path.read_bytes()
    magic, version, itemsize, tokens, documents, eot, vocab = struct.unpack("<8sIIQQII", raw[:40])
    assert (magic, version, itemsize, tokens, documents, eot, vocab) == (
        MAGIC, 1, 2, 8, 3, 999, 1000
    )  # fmt: skip
    assert raw[40:HEADER_SIZE] == bytes(24)

    shard = open_shard(path)
    assert shard.tokens.tolist() == [1, 2, 3, 999, 999, 500, 7, 999]  # end-of-text after each
    assert shard.doc_starts.tolist() == [0, 4, 5]
    assert [shard.document(i).tolist() for i in range(3)] == docs
    assert isinstance(shard.tokens, np.memmap) and not shard.tokens.flags.writeable
    assert (shard.eot_id, shard.vocab_size) == (999, 1000)
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_token_width_follows_vocab_size(tmp_path: Path) -> None:
    for vocab, width in ((2**16, 2), (2**16 + 1, 4)):
        with TokenShardWriter(tmp_path / str(vocab), "val", vocab, eot_id=vocab - 1) as w:
            w.add_document([0, vocab - 2])
        shard = open_shard(w.paths[0])
        assert shard.tokens.dtype.itemsize == width
        assert shard.tokens.tolist() == [0, vocab - 2, vocab - 1]


def test_shards_rotate_at_document_boundaries(tmp_path: Path) -> None:
    docs = [list(range(n)) for n in (3, 3, 3, 20, 1, 1)]  # 4, 4, 4, 21, 2, 2 tokens stored
    paths = write_shards(tmp_path, docs, shard_tokens=10)
    shards = [open_shard(p) for p in paths]
    assert [p.name for p in paths] == [f"train_{i:06d}.bin" for i in range(4)]
    # At most 10 tokens each, except the one document longer than that, which is never split.
    assert [s.num_tokens for s in shards] == [8, 4, 21, 4]
    assert [s.document(i).tolist() for s in shards for i in range(s.num_documents)] == docs


def test_out_of_range_ids_are_refused(tmp_path: Path) -> None:
    with TokenShardWriter(tmp_path, "train", 1000, eot_id=999) as w:
        for bad in ([1000], [-1]):
            with pytest.raises(ValueError, match="out of range"):
                w.add_document(bad)


def test_a_crash_leaves_no_torn_shard(tmp_path: Path) -> None:
    writer = TokenShardWriter(tmp_path, "train", 1000, eot_id=999, shard_tokens=5)
    with pytest.raises(KeyboardInterrupt), writer:
        writer.add_document([1, 2, 3])
        writer.add_document([4, 5, 6])  # rotates: shard 0 is finished
        assert not (tmp_path / "train_000001.bin").exists()  # not until it is whole
        raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["train_000000.bin"]
    assert open_shard(tmp_path / "train_000000.bin").tokens.tolist() == [1, 2, 3, 999]


def _set_version(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8:12] = struct.pack("<I", 7)
    path.write_bytes(bytes(data))


def _cut(keep: int) -> object:
    def damage(path: Path) -> None:
        path.write_bytes(path.read_bytes()[:keep])

    return damage


DAMAGE = {
    "not-a-shard": (lambda p: p.write_bytes(b"hello world, this is text" * 4), "not a scratchlm token shard"),
    "empty-file": (_cut(0), "truncated token shard"),
    "short-header": (_cut(20), "truncated token shard"),
    "truncated-tokens": (_cut(HEADER_SIZE + 3), "token shard is truncated"),
    "trailing-bytes": (lambda p: p.write_bytes(p.read_bytes() + b"x"), "longer than its header"),
    "newer-version": (_set_version, "format version 7, but this scratchlm reads version 1"),
    "offsets-damaged": (lambda p: p.write_bytes(p.read_bytes()[:-8] + bytes(8)), "offsets do not match"),
    "missing": (lambda p: p.unlink(), "no such token shard"),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_shard_is_one_clear_line(kind: str, tmp_path: Path) -> None:
    damage, fragment = DAMAGE[kind]
    (path,) = write_shards(tmp_path, [[1, 2, 3], [4, 5]])
    damage(path)
    with pytest.raises(ScratchLMError) as e:
        open_shard(path)
    message = str(e.value)
    assert message.startswith(f"{path}: ") and fragment in message
    assert "scratchlm data prepare" in message and "\n" not in message


# --- the train/val split ----------------------------------------------------------------------


def test_split_by_documents_is_exact_and_seeded() -> None:
    docs = [f"doc {i}\n" for i in range(40)]
    first = split_documents(docs, 0.25, seed=1)
    assert split_documents(docs, 0.25, seed=1) == first
    assert split_documents(docs, 0.25, seed=2) != first
    train, val, how = first
    assert how == "documents" and len(val) == 10 and sorted(train + val) == sorted(docs)
    assert train == [d for d in docs if d in train]  # the original order is kept


def test_streamed_split_needs_no_count() -> None:
    # Without a count each document is decided by a seeded hash of its index alone.
    rule = DocumentSplit(0.1, seed=3)
    decisions = [rule.is_val(i) for i in range(20_000)]
    assert decisions == [DocumentSplit(0.1, seed=3).is_val(i) for i in range(20_000)]
    assert decisions != [DocumentSplit(0.1, seed=4).is_val(i) for i in range(20_000)]
    assert 0.09 < sum(decisions) / len(decisions) < 0.11
    assert [rule.is_val(i) for i in range(5000, 5100)] == decisions[5000:5100]


def test_single_document_is_split_at_a_line_boundary() -> None:
    text = "".join(f"line {i}\n" for i in range(100))
    train, val, how = split_documents([text], 0.05, seed=0)
    assert how == "lines" and train[0] + val[0] == text
    assert train[0].endswith("\n") and val[0].startswith("line ")
    assert 0.02 < len(val[0]) / len(text) < 0.1
    assert all(split_text("x" * 50, 0.1))  # even with no line breaks at all, val gets some


# --- preparing shards --------------------------------------------------------------------------


def test_prepare_writes_shards_and_meta(tmp_path: Path) -> None:
    documents = [f"document {i}: caf\u00e9 \u2603\n" * (i + 1) for i in range(20)]
    tokenizer = ByteTokenizer()
    meta = prepare_shards(
        documents, tokenizer, tmp_path, 0.1, seed=7, shard_tokens=300, progress=False
    )
    train, val = decode_split(tmp_path, "train"), decode_split(tmp_path, "val")
    expected_train, expected_val, _ = split_documents(documents, 0.1, seed=7)
    assert (train, val) == (expected_train, expected_val)  # the rule the tokenizer trains on
    assert json.loads((tmp_path / "meta.json").read_text()) == meta
    assert meta["format"] == "scratchlm-token-shards" and meta["split_by"] == "documents"
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 257 and meta["eot_id"] == 256
    assert len(meta["train_shards"]) > 1 and meta["val_shards"][0] == "val_000000.bin"
    assert prepared_shards(tmp_path, "train") == [tmp_path / n for n in meta["train_shards"]]
    train_bytes = sum(len(d.encode()) for d in train)
    assert (meta["train_documents"], meta["val_documents"]) == (18, 2)
    assert meta["train_tokens"] == train_bytes + 18
    assert meta["train_chars"] == sum(map(len, train)) and meta["train_bytes"] == train_bytes
    assert meta["bytes_per_token"] == 1.0  # one token per byte for this tokenizer
    assert not list(tmp_path.glob(".*"))


def test_prepare_encodes_in_batches_on_every_core(tmp_path: Path) -> None:
    documents = [f"{i} " * 50 for i in range(100)]  # 100 or 150 characters each
    tokenizer = ByteTokenizer()
    prepare_shards(
        documents, tokenizer, tmp_path, 0.1, 0, num_threads=3, batch_chars=1000, progress=False
    )
    # Batches of about 1,000 characters: the whole corpus is never held as ids at once.
    assert len(tokenizer.calls) > 10 and all(n <= 10 for n, _ in tokenizer.calls)
    assert sum(n for n, _ in tokenizer.calls) == 100
    assert {threads for _, threads in tokenizer.calls} == {3}


def test_prepare_matches_encoding_each_document(tmp_path: Path) -> None:
    documents = [f"def f{i}(x):\n    return x * {i}  # caf\u00e9\n" for i in range(30)]
    tokenizer = BPETokenizer.train(documents, 290)
    prepare_shards(documents, tokenizer, tmp_path, 0.2, seed=1, progress=False)
    train, val, _ = split_documents(documents, 0.2, seed=1)
    for split, texts in (("train", train), ("val", val)):
        (path,) = prepared_shards(tmp_path, split)
        expected = [i for t in texts for i in [*tokenizer.encode_ordinary(t), tokenizer.eot_id]]
        assert open_shard(path).tokens.tolist() == expected


def test_prepare_from_a_stream(tmp_path: Path) -> None:
    def stream() -> Iterator[str]:
        for i in range(200):
            yield f"streamed document {i}\n"

    meta = prepare_shards(stream(), ByteTokenizer(), tmp_path, 0.1, seed=5, progress=False)
    rule = DocumentSplit(0.1, seed=5)
    expected_val = [f"streamed document {i}\n" for i in range(200) if rule.is_val(i)]
    assert decode_split(tmp_path, "val") == expected_val and meta["split_by"] == "documents"
    assert meta["train_documents"] + meta["val_documents"] == 200

    # A stream too short for the hashed split to hold any document out is refused clearly.
    with pytest.raises(ScratchLMError, match="left the val set empty"):
        prepare_shards(iter(["one\n"]), ByteTokenizer(), tmp_path / "x", 0.01, 0, progress=False)
    assert not list((tmp_path / "x").iterdir())


def test_single_document_corpus_is_split_by_lines(tmp_path: Path) -> None:
    text = "".join(f"line {i}\n" for i in range(100))
    meta = prepare_shards([text], ByteTokenizer(), tmp_path, 0.05, 0, progress=False)
    assert meta["split_by"] == "lines" and meta["val_documents"] == 1
    assert "".join(decode_split(tmp_path, "train") + decode_split(tmp_path, "val")) == text


def test_preparing_again_replaces_stale_and_old_format_files(tmp_path: Path) -> None:
    prepare_shards(["a" * 500] * 20, ByteTokenizer(), tmp_path, 0.1, 0, 600, progress=False)
    assert len(prepared_shards(tmp_path, "train")) == 18
    (tmp_path / "train.bin").write_bytes(b"old headerless tokens")
    prepare_shards(["b" * 50] * 20, ByteTokenizer(), tmp_path, 0.1, 0, 600, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "meta.json", "train_000000.bin", "train_000001.bin", "val_000000.bin"
    ]  # fmt: skip


def test_old_single_file_format_is_explained(tmp_path: Path) -> None:
    for name in ("train.bin", "val.bin"):
        (tmp_path / name).write_bytes(bytes(100))
    (tmp_path / "meta.json").write_text('{"dtype": "uint16", "train_tokens": 50}')
    with pytest.raises(ScratchLMError) as e:
        prepared_shards(tmp_path, "train")
    assert "train.bin / val.bin" in str(e.value) and "--overwrite" in str(e.value)
    with pytest.raises(ScratchLMError, match=r"meta\.json is missing"):
        prepared_shards(tmp_path / "nothing", "val")


# --- random windows ----------------------------------------------------------------------------


def test_batches_are_windows_shifted_by_one(tmp_path: Path) -> None:
    paths = counting_shards(tmp_path, [1000])
    loader = TokenBatches(paths, block_size=16, batch_size=4, seed=0)
    x, y = loader.next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)
    assert torch.equal(x, x[:, :1] + torch.arange(16))  # contiguous runs from the file
    assert int(y.max()) <= 999


def test_random_windows_cover_every_start_of_every_shard(tmp_path: Path) -> None:
    paths = counting_shards(tmp_path, [10, 3, 12])  # the 3-token shard holds no window
    loader = TokenBatches(paths, block_size=8, batch_size=256, seed=0)
    x, y = loader.next_batch()
    assert torch.equal(y, x + 1)  # so no window runs from one shard into the next
    assert set(x[:, 0].tolist()) == {0, 1, 13, 14, 15, 16}


def test_random_ranks_split_one_global_draw(tmp_path: Path) -> None:
    paths = counting_shards(tmp_path, [5000])
    single = TokenBatches(paths, 8, batch_size=6, seed=4)
    ranks = [TokenBatches(paths, 8, 3, seed=4, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        x, _ = single.next_batch()
        assert torch.equal(x, torch.cat([rank.next_batch()[0] for rank in ranks]))


def test_too_short_data_is_reported(tmp_path: Path) -> None:
    paths = counting_shards(tmp_path, [10])
    with pytest.raises(ScratchLMError, match=r"has 10 tokens.*block_size \+ 1 = 17.*smaller"):
        TokenBatches(paths, block_size=16, batch_size=2, seed=0)
    with pytest.raises(ScratchLMError, match="no token shards"):
        TokenBatches([], block_size=16, batch_size=2, seed=0)
    with pytest.raises(ScratchLMError, match="rank must be in"):
        TokenBatches(paths, block_size=4, batch_size=2, seed=0, rank=2, world_size=2)


def test_eval_batches_are_fixed_and_shared_by_ranks(tmp_path: Path) -> None:
    paths = counting_shards(tmp_path, [1000, 1000])
    loader = TokenBatches(paths, block_size=16, batch_size=4, seed=0)
    first = list(loader.eval_batches(5))
    loader.next_batch()  # training draws must not move the evaluation windows
    other = TokenBatches(paths, block_size=16, batch_size=4, seed=42, sampling="epoch")
    for batches in (list(loader.eval_batches(5)), list(other.eval_batches(5))):
        assert len(batches) == 5 and all(map(same, batches, first))
    assert int(first[0][0][0, 0]) == 0 and int(first[-1][1][-1, -1]) == 1999  # both ends
    ranks = [TokenBatches(paths, 16, 4, 0, rank=r, world_size=2) for r in range(2)]
    mine = [list(rank.eval_batches(5)) for rank in ranks]
    assert len(mine[0]) == 3 and len(mine[1]) == 2
    assert all(map(same, [mine[i % 2][i // 2] for i in range(5)], first))


# --- epochs ------------------------------------------------------------------------------------


def window_starts(batches: list[Batch]) -> list[int]:
    return [int(s) for x, _ in batches for s in x[:, 0]]


def test_epoch_sees_every_token_once(tmp_path: Path) -> None:
    paths = counting_shards(tmp_path, [41, 30, 5])  # windows of 8+1: 5, 3 and 0 of them
    loader = TokenBatches(paths, block_size=8, batch_size=2, seed=1, sampling="epoch")
    assert loader.windows_per_epoch == 8
    batches = [loader.next_batch() for _ in range(8)]  # two epochs, 16 windows
    epochs = [window_starts(batches[:4]), window_starts(batches[4:])]
    expected = [*range(0, 40, 8), *range(41, 65, 8)]
    for starts in epochs:
        assert sorted(starts) == expected  # each window exactly once, none across shards
    assert epochs[0] != epochs[1]  # a new order each epoch
    targets = sorted(int(t) for x, y in batches[:4] for t in y.flatten())
    assert targets == [*range(1, 41), *range(42, 66)]  # every token predicted once
    assert (loader.epoch, loader.cursor) == (2, 0)


def test_batches_straddle_epochs_without_dropping_windows(tmp_path: Path) -> None:
    paths = counting_shards(tmp_path, [51])  # 10 windows of 5 + 1 tokens
    loader = TokenBatches(paths, block_size=5, batch_size=4, seed=0, sampling="epoch")
    batches = [loader.next_batch() for _ in range(5)]  # 20 windows: exactly two epochs
    starts = window_starts(batches)
    assert sorted(starts[:10]) == sorted(starts[10:]) == list(range(0, 50, 5))
    assert (loader.epoch, loader.cursor) == (2, 0)


def test_two_ranks_take_disjoint_windows_covering_the_epoch(tmp_path: Path) -> None:
    paths = counting_shards(tmp_path, [200, 130])  # 24 + 16 = 40 windows of 8 + 1
    ranks = [
        TokenBatches(paths, 8, 4, seed=9, sampling="epoch", rank=r, world_size=2) for r in range(2)
    ]
    seen = [window_starts([rank.next_batch() for _ in range(5)]) for rank in ranks]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == [*range(0, 192, 8), *range(200, 328, 8)]
    single = TokenBatches(paths, 8, batch_size=8, seed=9, sampling="epoch")
    for step in range(5):  # the same windows as one process with twice the batch
        assert (
            window_starts([single.next_batch()])
            == seen[0][4 * step : 4 * step + 4] + seen[1][4 * step : 4 * step + 4]
        )


@pytest.mark.parametrize("sampling", ["random", "epoch"])
@pytest.mark.parametrize("world_size", [1, 2])
def test_resume_gives_exactly_the_uninterrupted_batches(
    sampling: str, world_size: int, tmp_path: Path
) -> None:
    paths = counting_shards(tmp_path, [300, 257, 90])

    def make(rank: int, seed: int = 123) -> TokenBatches:
        return TokenBatches(paths, 16, 3, seed, sampling, rank, world_size)

    for rank in range(world_size):
        straight = make(rank)
        expected = [straight.next_batch() for _ in range(20)]  # past an epoch boundary (39 windows)
        for k in (0, 7, 13):
            first = make(rank)
            for _ in range(k):
                first.next_batch()
            save_file(first.state_dict(), str(tmp_path / "loader.safetensors"))
            resumed = make(rank, seed=999)  # the saved state overrides the seed
            resumed.load_state_dict(load_file(str(tmp_path / "loader.safetensors")))
            assert all(map(same, [resumed.next_batch() for _ in range(20 - k)], expected[k:]))


def test_bad_loader_state_is_refused(tmp_path: Path) -> None:
    paths = counting_shards(tmp_path, [300])
    epoch = TokenBatches(paths, 16, 3, 0, sampling="epoch")
    with pytest.raises(ScratchLMError, match="no data loader state"):
        epoch.load_state_dict({})
    with pytest.raises(ScratchLMError, match="sampled windows by 'random'"):
        epoch.load_state_dict(TokenBatches(paths, 16, 3, 0).state_dict())
    shorter = TokenBatches(counting_shards(tmp_path / "b", [200]), 16, 3, 0, sampling="epoch")
    with pytest.raises(ScratchLMError, match="training data changed"):
        epoch.load_state_dict(shorter.state_dict())


def test_sampling_is_a_checked_config_key(tmp_path: Path) -> None:
    assert load_config().data.sampling == "random"
    assert load_config(overrides=["--data.sampling", "epoch"]).data.sampling == "epoch"
    with pytest.raises(ScratchLMError, match=r"data.sampling = 'shuffle'.*'random', 'epoch'"):
        load_config(overrides=["--data.sampling", "shuffle"])
