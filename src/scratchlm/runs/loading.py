"""A trained model from a run directory: its [model] shape, tokenizer and checked weights."""

from __future__ import annotations

from pathlib import Path

import torch

from scratchlm.core.config_files import read_toml
from scratchlm.core.errors import ScratchLMError
from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig, model_config_from_table
from scratchlm.model.loading import gpt_from_state_dict, open_safetensors
from scratchlm.runs.checkpoint import (
    TrainingState,
    check_tokenizer_fingerprint,
    damaged_checkpoint_advice,
    file_sha256,
    latest_checkpoint,
    read_checkpoint_meta,
)
from scratchlm.runs.layout import RunPaths, load_tokenizer
from scratchlm.tokenizer import BPETokenizer


def read_model_config(run_dir: Path) -> ModelConfig:
    """The [model] section of a run's config.toml, checked."""
    paths = RunPaths(Path(run_dir))
    paths.check_is_run()
    table = read_toml(paths.config).get("model", {})
    if not isinstance(table, dict):
        raise ScratchLMError(f"{paths.config}: [model] must be a table of keys")
    config = model_config_from_table(table, str(paths.config))
    config.validate()
    return config


def load_trained_model(
    run_dir: Path, checkpoint: Path | None = None, device: torch.device | None = None
) -> tuple[ModelConfig, BPETokenizer, GPT]:
    """The run's model shape, tokenizer and model with the weights of `checkpoint` (default:
    the latest), in eval mode on `device`."""
    config = read_model_config(run_dir)
    tokenizer = load_tokenizer(run_dir)
    if tokenizer.vocab_size != config.vocab_size:
        raise ScratchLMError(
            f"{run_dir}: tokenizer.json has {tokenizer.vocab_size} tokens but the model was "
            f"built for {config.vocab_size}; the tokenizer does not belong to this run"
        )
    checkpoint = checkpoint or latest_checkpoint(Path(run_dir))
    meta = read_checkpoint_meta(checkpoint)
    state = TrainingState(step=int(meta["step"]), extra=meta.get("extra", {}))
    check_tokenizer_fingerprint(checkpoint, state, tokenizer.fingerprint())
    weights = checkpoint / "model.safetensors"
    _check_sha256(weights, meta["sha256"].get(weights.name))
    # Built on the meta device and filled with views of the memory-mapped file: a large model
    # is never in memory twice (model/loading.py).
    model = gpt_from_state_dict(config, open_safetensors(weights), where=str(weights))
    model.to(device or torch.device("cpu")).eval()
    return config, tokenizer, model


def _check_sha256(path: Path, digest: str | None) -> None:
    if not path.is_file():
        raise ScratchLMError(f"checkpoint {path.parent} is incomplete: {path.name} is missing")
    if digest is not None and file_sha256(path) != digest:
        raise ScratchLMError(
            f"checkpoint {path.parent} is corrupted: {path.name} does not match its checksum; "
            + damaged_checkpoint_advice(path.parent)
        )
