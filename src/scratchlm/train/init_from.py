"""train.init_from: start a run from another run's weights (fine-tuning, continued
pretraining on new data) instead of random ones.

Only the weights come over: the new run starts at step 0 with a fresh optimizer and its own
schedule, data and checkpoints. The model's shape must be the source's; settings that only
matter while training (dropout, activation checkpointing) may differ.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

from torch import nn

from scratchlm.core.errors import ScratchLMError
from scratchlm.model.config import ModelConfig
from scratchlm.runs.checkpoint import latest_checkpoint, load_checkpoint, read_checkpoint_meta
from scratchlm.runs.loading import read_model_config

# ModelConfig fields that do not change what the weights mean.
TRAINING_ONLY_FIELDS = ("preset", "dropout", "activation_checkpointing")


def init_checkpoint(source: str) -> Path:
    """The checkpoint folder train.init_from names: itself, or a run directory's latest."""
    path = Path(source).expanduser()
    if (path / "meta.json").is_file():
        return path
    if (path / "checkpoints").is_dir():
        return latest_checkpoint(path)
    raise ScratchLMError(
        f"train.init_from = {source!r} is neither a run directory nor a checkpoint folder "
        "(run/checkpoints/step_NNNNNN); give one of those, or leave it empty for random weights"
    )


def load_initial_weights(
    source: str, model: nn.Module, config: ModelConfig, tokenizer_fingerprint: str
) -> dict[str, Any]:
    """Load the weights of train.init_from into `model` after checking that they fit; returns
    what to record in the new run's checkpoints (where the weights came from)."""
    checkpoint = init_checkpoint(source)
    meta = read_checkpoint_meta(checkpoint)
    extra = meta.get("extra", {})
    recorded = extra.get("tokenizer")
    if recorded is not None and recorded != tokenizer_fingerprint:
        raise ScratchLMError(
            f"cannot start from {checkpoint}: it was trained with another tokenizer "
            f"(fingerprint {recorded}) than this run's ({tokenizer_fingerprint}); prepare "
            "this run with the source run's tokenizer, or drop train.init_from"
        )
    differences = _shape_differences(_source_model(checkpoint, extra), config)
    if differences:
        raise ScratchLMError(
            f"cannot start from {checkpoint}: its model differs from this run's "
            f"({'; '.join(differences)}); set [model] to match it, or drop train.init_from"
        )
    load_checkpoint(checkpoint, model)  # checks every file's checksum and each tensor's shape
    return {"checkpoint": str(checkpoint.resolve()), "step": int(meta["step"])}


def _source_model(checkpoint: Path, extra: dict[str, Any]) -> dict[str, Any] | None:
    """The source's model config: recorded in its checkpoint, or else its run's config.toml
    (an imported run records none)."""
    if isinstance(extra.get("model"), dict):
        return dict(extra["model"])
    with contextlib.suppress(ScratchLMError):
        return dataclasses.asdict(read_model_config(checkpoint.parent.parent))
    return None  # nothing to compare; loading still names a tensor whose shape differs


def _shape_differences(source: dict[str, Any] | None, config: ModelConfig) -> list[str]:
    if source is None:
        return []
    ours = dataclasses.asdict(config)
    return [
        f"model.{key} was {source[key]!r}, now {ours[key]!r}"
        for key in sorted(source.keys() & ours.keys())
        if key not in TRAINING_ONLY_FIELDS and source[key] != ours[key]
    ]
