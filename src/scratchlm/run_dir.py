"""A run directory holds everything one training run made:

    runs/<name>/
      config.toml          the full resolved config (model.vocab_size set from the tokenizer)
      tokenizer.json       the tokenizer the run trained, and tokenizer.vocab to read it
      token_roles.json     imported runs: which special tokens are bos, eos and pad
      data/                token shards train_000000.bin, ..., val_000000.bin, ... and meta.json,
                           the data report (report.json, report.txt, lengths.png)
      checkpoints/step_NNNNNN/
      metrics.jsonl, loss.png, samples.txt

so it can be resumed, evaluated or sampled from without any other input.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from scratchlm.atomic_files import atomic_write_text
from scratchlm.config import RunConfig, load_config
from scratchlm.data.dataset import WORK, install_prepared, staging_folder, warn, write_prepared
from scratchlm.data.pipeline import PipelineSettings, run_pipeline
from scratchlm.data.prepare import prepared_shards
from scratchlm.data.split import DocumentSplit, Split
from scratchlm.errors import ScratchLMError
from scratchlm.model import GPT
from scratchlm.model.loading import gpt_from_state_dict, open_safetensors
from scratchlm.tokenizer import BPETokenizer, resolve_pattern
from scratchlm.tokenizer.char import train_char_tokenizer
from scratchlm.train.checkpoint import (
    TrainingState,
    check_tokenizer_fingerprint,
    file_sha256,
    latest_checkpoint,
    list_checkpoints,
    read_checkpoint_meta,
)


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer.json"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def loss_plot(self) -> Path:
        return self.root / "loss.png"

    @property
    def lr_plot(self) -> Path:
        return self.root / "lr.png"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def samples(self) -> Path:
        return self.root / "samples.txt"

    def shards(self, split: Split) -> list[Path]:
        """The token shards of `split` ("train" or "val"), as data/meta.json lists them."""
        return prepared_shards(self.data, split)

    def is_prepared(self) -> bool:
        files = (self.config, self.tokenizer, self.data / "meta.json")
        return all(p.is_file() for p in files)


def prepare_run(config: RunConfig, overwrite: bool = False) -> BPETokenizer:
    """Run the data pipeline, train the tokenizer, write token shards, the data report and
    config.toml into the run dir."""
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
                training_text, config.tokenizer.special_tokens, progress=True
            )
        else:
            tokenizer = BPETokenizer.train(
                training_text,
                vocab_size=config.tokenizer.vocab_size,
                pattern=pattern,
                special_tokens=config.tokenizer.special_tokens,
                progress=True,
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


def load_run_config(run_dir: Path, overrides: list[str] | None = None) -> RunConfig:
    paths = RunPaths(Path(run_dir))
    if not paths.root.is_dir():
        raise ScratchLMError(f"no such run directory: {paths.root}")
    if not paths.config.is_file():
        raise ScratchLMError(
            f"{paths.root} is not a scratchlm run (config.toml is missing); train one with "
            "`scratchlm train --config configs/demo.toml`"
        )
    config = load_config(paths.config, overrides)
    # The run lives where it was found, even if it was moved since it was made.
    config.out_dir, config.name = str(paths.root.parent), paths.root.name
    return config


def load_tokenizer(run_dir: Path) -> BPETokenizer:
    return BPETokenizer.load(RunPaths(Path(run_dir)).tokenizer)


def load_trained_model(
    run_dir: Path, checkpoint: Path | None = None, device: torch.device | None = None
) -> tuple[RunConfig, BPETokenizer, GPT]:
    """The run's config, tokenizer and model with the weights of `checkpoint` (default: latest)."""
    config = load_run_config(run_dir)
    tokenizer = load_tokenizer(run_dir)
    if tokenizer.vocab_size != config.model.vocab_size:
        raise ScratchLMError(
            f"{run_dir}: tokenizer.json has {tokenizer.vocab_size} tokens but the model was "
            f"built for {config.model.vocab_size}; the tokenizer does not belong to this run"
        )
    checkpoint = checkpoint or latest_checkpoint(Path(run_dir))
    meta = read_checkpoint_meta(checkpoint)
    state = TrainingState(step=int(meta["step"]), extra=meta.get("extra", {}))
    check_tokenizer_fingerprint(checkpoint, state, tokenizer.fingerprint())
    weights = checkpoint / "model.safetensors"
    _check_sha256(weights, meta["sha256"].get(weights.name))
    # Built on the meta device and filled with views of the memory-mapped file: a large model
    # is never in memory twice (model/loading.py).
    model = gpt_from_state_dict(config.model, open_safetensors(weights), where=str(weights))
    model.to(device or torch.device("cpu")).eval()
    return config, tokenizer, model


def _check_sha256(path: Path, digest: str | None) -> None:
    if not path.is_file():
        raise ScratchLMError(f"checkpoint {path.parent} is incomplete: {path.name} is missing")
    if digest is not None and file_sha256(path) != digest:
        raise ScratchLMError(
            f"checkpoint {path.parent} is corrupted: {path.name} does not match its checksum; "
            "use an earlier checkpoint (--checkpoint) or retrain"
        )


TOKEN_ROLES_FILE = "token_roles.json"
TOKEN_ROLES = ("bos", "eos", "pad")


def token_role_ids(run_dir: Path, tokenizer: BPETokenizer) -> dict[str, int]:
    """The ids of the run's bos, eos and pad tokens, for exports: what an imported model named
    (token_roles.json; SmolLM2-Instruct ends a reply with <|im_end|>), and otherwise
    <|endoftext|> for each role, the one special token scratchlm's tokenizers train with."""
    from scratchlm.user_files import read_json

    roles: dict[str, str] = {}
    path = Path(run_dir) / TOKEN_ROLES_FILE
    if path.is_file():
        roles = read_json(path, "token roles file")
        if not isinstance(roles, dict):
            raise ScratchLMError(
                f'{path}: expected an object like {{"eos": "<|im_end|>"}}; fix or delete it'
            )
    ids = {}
    for role in TOKEN_ROLES:
        token = roles.get(role, "<|endoftext|>")
        if token in tokenizer.special_tokens:
            ids[role] = tokenizer.special_tokens[token]
    return ids


def save_imported_run(
    run_dir: Path,
    model: GPT,
    tokenizer: BPETokenizer,
    source: str,
    overwrite: bool = False,
    token_roles: dict[str, int] | None = None,
) -> RunConfig:
    """Make `run_dir` a run of an imported model: config.toml, tokenizer.json and one
    checkpoint (step 0, weights only), so generate, eval and export treat it like a trained run.
    token_roles maps bos / eos / pad to the ids the source named; special tokens among them are
    kept (token_roles.json) for exports.

    Built in a staging folder beside it and renamed into place when complete; an existing
    folder is replaced only with overwrite=True.
    """
    import json

    import safetensors.torch

    from scratchlm.train.checkpoint import CHECKPOINT_FORMAT, checkpoint_dir

    run_dir = Path(run_dir)
    if run_dir.exists() and not overwrite:
        raise ScratchLMError(f"{run_dir} already exists; pass --overwrite to replace it")
    config = RunConfig(name=run_dir.name, out_dir=str(run_dir.parent), model=model.config)
    # A run pairs a model with a tokenizer of exactly its vocabulary size (load_trained_model).
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ScratchLMError(
            f"{source}: the tokenizer has {tokenizer.vocab_size:,} tokens but the model "
            f"{model.config.vocab_size:,} embeddings; scratchlm needs them equal"
        )
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with staging_folder(run_dir) as stage:
        tokenizer.save(stage / "tokenizer.json")
        atomic_write_text(stage / "config.toml", config.to_toml())
        names = {i: token for token, i in tokenizer.special_tokens.items()}
        roles = {
            role: names[i]
            for role, i in (token_roles or {}).items()
            if role in TOKEN_ROLES and i in names
        }
        if roles:
            atomic_write_text(stage / TOKEN_ROLES_FILE, json.dumps(roles, indent=2) + "\n")
        weights = checkpoint_dir(stage, 0)
        weights.mkdir(parents=True)
        safetensors.torch.save_model(model, str(weights / "model.safetensors"))
        meta = {
            "format": CHECKPOINT_FORMAT,
            "step": 0,
            "tokens_seen": 0,
            "best_val_loss": None,
            "extra": {"tokenizer": tokenizer.fingerprint(), "imported_from": source},
            "sha256": {"model.safetensors": file_sha256(weights / "model.safetensors")},
        }
        atomic_write_text(weights / "meta.json", json.dumps(meta, indent=2) + "\n")
        if overwrite and run_dir.exists():
            shutil.rmtree(run_dir)
        os.replace(stage, run_dir)
    return config
