"""Preparing a run: the data pipeline, the tokenizer trained on its training split, token
shards and the data report, then config.toml, all in the run directory."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from scratchlm.core.atomic_files import atomic_write_text, staging_folder
from scratchlm.core.document_split import DocumentSplit
from scratchlm.core.errors import ScratchLMError
from scratchlm.data.config import CleaningConfig, DataConfig, DedupConfig
from scratchlm.data.dataset import WORK, install_prepared, warn, write_prepared
from scratchlm.data.pipeline import PipelineSettings, run_pipeline
from scratchlm.model.config import ModelConfig
from scratchlm.runs.checkpoint import list_checkpoints
from scratchlm.runs.layout import RunPaths
from scratchlm.tokenizer import BPETokenizer, resolve_pattern
from scratchlm.tokenizer.char import train_char_tokenizer
from scratchlm.tokenizer.config import TokenizerConfig


class PreparableRun(Protocol):
    """What preparing a run reads of its config (scratchlm.config.RunConfig has all of it)."""

    @property
    def run_dir(self) -> Path: ...

    data: DataConfig
    clean: CleaningConfig
    dedup: DedupConfig
    tokenizer: TokenizerConfig
    model: ModelConfig

    def to_toml(self) -> str: ...


def prepare_run(config: PreparableRun, overwrite: bool = False) -> BPETokenizer:
    """Run the data pipeline, train the tokenizer, write token shards, the data report and
    config.toml (with model.vocab_size set to the tokenizer's) into the run dir."""
    paths = RunPaths(config.run_dir)
    if list_checkpoints(paths.root) and not overwrite:
        raise ScratchLMError(
            f"{paths.root} already holds a trained run; continue it with "
            f"`scratchlm train --resume {paths.root}`, pick another --name, or pass "
            "--overwrite to replace it"
        )
    # Everything that can fail on bad input (corpus, pattern, tokenizer) happens in a staging
    # folder beside the run before an old run is touched, so a mistake never costs the user a
    # trained model.
    pattern = resolve_pattern(config.tokenizer.pattern)  # fail on a bad regex before any work
    settings = PipelineSettings.from_config(
        config.data, config.clean, config.dedup, progress=sys.stderr.isatty()
    )
    with staging_folder(paths.root) as stage:
        corpus = run_pipeline(settings, stage / WORK)
        for problem in corpus.read.problems():
            warn(problem)
        print(
            f"corpus: {len(corpus):,} documents, {corpus.bytes:,} bytes (of "
            f"{corpus.read.documents:,} documents, {corpus.read.bytes:,} bytes read)"
        )

        t0 = time.perf_counter()
        # The tokenizer learns from the training split only, so validation text stays unseen.
        split = DocumentSplit(config.data.val_fraction, config.data.seed, len(corpus))
        training_text = _limit_chars(
            (text for i, document in enumerate(corpus) for side, text in split.parts(i, document)
             if side == "train"),
            config.tokenizer.max_train_chars,
        )  # fmt: skip
        if config.tokenizer.kind == "char":
            tokenizer = train_char_tokenizer(
                training_text, config.tokenizer.special_tokens, progress=sys.stderr.isatty()
            )
        else:
            tokenizer = BPETokenizer.train(
                training_text,
                vocab_size=config.tokenizer.vocab_size,
                pattern=pattern,
                special_tokens=config.tokenizer.special_tokens,
                progress=sys.stderr.isatty(),
            )
        print(
            f"tokenizer: {tokenizer.vocab_size:,} tokens trained in {time.perf_counter() - t0:.1f}s"
        )
        report = write_prepared(
            corpus,
            tokenizer,
            stage / "data",
            str(paths.data),
            config.data.val_fraction,
            config.data.seed,
        )
        tokenizer.save(stage / paths.tokenizer.name)
        tokenizer.save_vocab(stage / "tokenizer.vocab")
        if overwrite and paths.root.exists():
            shutil.rmtree(paths.root)
        paths.root.mkdir(parents=True, exist_ok=True)
        install_prepared(stage / "data", paths.data)
        for name in (paths.tokenizer.name, "tokenizer.vocab"):
            os.replace(stage / name, paths.root / name)
    splits = report["splits"]
    print(
        f"data: {splits['train']['tokens']:,} train and {splits['val']['tokens']:,} validation "
        f"tokens (report: {paths.data / 'report.txt'})"
    )
    config.model.vocab_size = tokenizer.vocab_size
    atomic_write_text(paths.config, config.to_toml())
    return tokenizer


def _limit_chars(documents: Iterable[str], max_chars: int) -> Iterator[str]:
    """The documents, cut off after `max_chars` characters in all (0: no limit)."""
    total = 0
    for doc in documents:
        if max_chars > 0:
            if total >= max_chars:
                return
            doc = doc[: max_chars - total]
        total += len(doc)
        yield doc
