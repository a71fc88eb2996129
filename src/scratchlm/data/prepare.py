"""Documents -> token shards and meta.json, the files the training loader reads.

Documents stream through in order: each is sent to train or val (split.py), gathered into a
batch of a few megabytes of text, encoded on every core at once with the tokenizer's
`encode_batch`, and appended to that split's TokenShardWriter (shards.py) with an end-of-text
id after each document. Memory holds one batch of text and its ids, however big the corpus.

The output folder holds train_000000.bin, ..., val_000000.bin, ... and meta.json, which lists
the shards and the counts. meta.json is removed first and written last, so its presence means
the preparation finished.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence, Sized
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Protocol

from scratchlm.core.atomic_files import atomic_write_text
from scratchlm.core.document_split import DocumentSplit, Split
from scratchlm.core.errors import ScratchLMError
from scratchlm.core.messages import progress as progress_bar
from scratchlm.core.workers import available_cores
from scratchlm.data.shards import DEFAULT_SHARD_TOKENS, TokenShardWriter, token_dtype

FORMAT = "scratchlm-token-shards"
FORMAT_VERSION = 1
SPLITS: tuple[Split, Split] = ("train", "val")

# Text per encode_batch call: enough documents to keep every core busy and to make starting
# the python engine's worker processes worth it, little enough that the ids (Python lists, ~36
# bytes per token) stay around a hundred megabytes.
BATCH_CHARS = 8 << 20


class TextEncoder(Protocol):
    """What this stage needs from a tokenizer (scratchlm.tokenizer.bpe.BPETokenizer has it)."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def eot_id(self) -> int: ...

    def encode_batch(self, texts: Sequence[str], *, num_threads: int) -> list[list[int]]: ...


def prepare_shards(
    documents: Iterable[str],
    tokenizer: TextEncoder,
    out_dir: str | os.PathLike[str],
    val_fraction: float,
    seed: int,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    num_threads: int | None = None,
    batch_chars: int = BATCH_CHARS,
    progress: bool = True,
) -> dict[str, Any]:
    """Split, tokenize and write the shards and meta.json into out_dir; return the meta.

    `documents` may be a list (split exactly; see split.py) or any iterable, read once.
    `num_threads` defaults to every available core.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)  # "prepared" only once we are done
    count = len(documents) if isinstance(documents, Sized) else None
    rule = DocumentSplit(val_fraction, seed, count)
    threads = num_threads or available_cores()
    stats = {split: {"documents": 0, "chars": 0, "bytes": 0} for split in SPLITS}

    with ExitStack() as stack:
        writers = {
            split: stack.enter_context(
                TokenShardWriter(
                    out_dir, split, tokenizer.vocab_size, tokenizer.eot_id, shard_tokens
                )
            )
            for split in SPLITS
        }
        bar = stack.enter_context(
            progress_bar(total=count, desc="tokenizing", unit="doc", enabled=progress)
        )
        batch: list[tuple[Split, str]] = []
        batch_size = 0

        def encode_and_write() -> None:
            ids = tokenizer.encode_batch([text for _, text in batch], num_threads=threads)
            for (split, text), doc_ids in zip(batch, ids, strict=True):
                writers[split].add_document(doc_ids)
                stats[split]["documents"] += 1
                stats[split]["chars"] += len(text)
                stats[split]["bytes"] += len(text.encode("utf-8"))
            batch.clear()

        for index, document in enumerate(documents):
            for split, text in rule.parts(index, document):
                batch.append((split, text))
                batch_size += len(text)
            if batch_size >= batch_chars:
                encode_and_write()
                batch_size = 0
            bar.update(1)
        if batch:
            encode_and_write()

    if not stats["train"]["documents"] or not stats["val"]["documents"]:
        empty = "val" if stats["train"]["documents"] else "train"
        total = stats["train"]["documents"] + stats["val"]["documents"]
        _remove_shards(out_dir, keep=[])
        raise ScratchLMError(
            f"the seeded split left the {empty} set empty ({total} documents, val_fraction "
            f"{val_fraction}); give more documents, or another val_fraction or seed"
        )
    shards = {split: writers[split].paths for split in SPLITS}
    _remove_shards(out_dir, keep=[p for paths in shards.values() for p in paths])

    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dtype": token_dtype(tokenizer.vocab_size).name,
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "val_fraction": val_fraction,
        "seed": seed,
        "split_by": rule.by,
        "shard_tokens": shard_tokens,
    }
    for split in SPLITS:
        meta[f"{split}_shards"] = [p.name for p in shards[split]]
        meta[f"{split}_documents"] = stats[split]["documents"]
        meta[f"{split}_tokens"] = writers[split].num_tokens
        meta[f"{split}_chars"] = stats[split]["chars"]
        meta[f"{split}_bytes"] = stats[split]["bytes"]
    # Compression of the text itself: UTF-8 bytes per token, not counting end-of-text tokens.
    documents_total = meta["train_documents"] + meta["val_documents"]
    text_tokens = meta["train_tokens"] + meta["val_tokens"] - documents_total
    text_bytes = meta["train_bytes"] + meta["val_bytes"]
    meta["bytes_per_token"] = round(text_bytes / text_tokens, 4) if text_tokens else 0.0
    atomic_write_text(out_dir / "meta.json", json.dumps(meta, indent=2) + "\n")
    return meta


def _remove_shards(out_dir: Path, keep: list[Path]) -> None:
    # Shards of an earlier, bigger preparation into the same folder, and the single-file
    # train.bin / val.bin of the format before shards: nothing would read them any more.
    kept = {p.name for p in keep}
    for split in SPLITS:
        stale = [*out_dir.glob(f"{split}_[0-9]*.bin"), out_dir / f"{split}.bin"]
        for path in stale:
            if path.name not in kept:
                path.unlink(missing_ok=True)


def prepared_shards(data_dir: str | os.PathLike[str], split: Split) -> list[Path]:
    """The shards of `split` that `prepare_shards` wrote into data_dir, from its meta.json."""
    data_dir = Path(data_dir)
    meta_path = data_dir / "meta.json"
    if not meta_path.is_file():
        raise ScratchLMError(
            f"{data_dir} holds no prepared data (meta.json is missing); run `scratchlm data "
            "prepare`, or train the run again"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ScratchLMError(f"{meta_path} is not valid JSON; prepare the data again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        if (data_dir / f"{split}.bin").is_file():
            what = "the single-file train.bin / val.bin format of scratchlm before token shards"
        else:
            what = "an unknown format (its meta.json does not name the token shard format)"
        raise ScratchLMError(
            f"{data_dir} holds token files in {what}, which this version no longer reads; "
            "rebuild them as shards: `scratchlm train --config RECIPE --overwrite` for a run, "
            "or `scratchlm data prepare ... --out` that folder"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise ScratchLMError(
            f"{meta_path}: token shard layout version {meta.get('format_version')}, but this "
            f"scratchlm reads version {FORMAT_VERSION}; prepare the data again"
        )
    return [data_dir / name for name in meta[f"{split}_shards"]]
