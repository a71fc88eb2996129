"""Checkpoints: everything needed to resume a run exactly, in safetensors and JSON, never pickles.

    checkpoints/step_000500/
      model.safetensors       weights (the tied head is stored once)
      optimizer.safetensors   AdamW moments and step counts; param groups in its metadata
      state.safetensors       RNG states (torch, data loader) as uint8 tensors
      meta.json               step, tokens seen, best val loss, sha256 of each file above,
                              and what the run was trained with (model shape, tokenizer, data)

A checkpoint is written into a hidden temporary folder and renamed into place only when every
file is complete and fsynced, so a crash, Ctrl-C or a full disk mid-save never leaves a torn
checkpoint and never harms the previous one; the checksums catch files damaged later. Older
checkpoints are removed only after the new one is in place.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from scratchlm.core.atomic_files import atomic_write_text, fsync_dir
from scratchlm.core.errors import ScratchLMError

CHECKPOINT_FORMAT = 1
_STEP_DIR = re.compile(r"^step_(\d{6,})$")


@dataclass
class TrainingState:
    """The counters of a run, saved in meta.json."""

    step: int = 0  # optimizer steps completed
    tokens_seen: int = 0
    best_val_loss: float | None = None
    best_step: int | None = None  # the step whose checkpoint has best_val_loss (kept)
    extra: dict[str, Any] = field(default_factory=dict)


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:06d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary folders are ignored)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def damaged_checkpoint_advice(checkpoint: Path) -> str:
    """What works with a damaged `checkpoint` (a run's checkpoints/step_N): `train --resume`
    takes the latest and has no --checkpoint, so it is told to delete the damaged one."""
    run_dir = checkpoint.parent.parent

    def step(folder: Path) -> int:
        return int(folder.name.split("_")[1])

    named = _STEP_DIR.match(checkpoint.name) is not None
    earlier = [p for p in list_checkpoints(run_dir) if named and step(p) < step(checkpoint)]
    if not earlier:
        return "no earlier checkpoint exists: retrain the run (`scratchlm train --overwrite`)"
    return (
        f"delete {checkpoint} so that `scratchlm train --resume {run_dir}` continues from "
        f"{earlier[-1]}, or give generate, eval or export --checkpoint {earlier[-1]}"
    )


def latest_checkpoint(run_dir: Path) -> Path:
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise ScratchLMError(
            f"{run_dir} has no checkpoints yet; train first with `scratchlm train`"
        )
    return checkpoints[-1]


def save_checkpoint(
    run_dir: Path,
    model: nn.Module | Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | dict[str, Any],
    state: TrainingState,
    rng_states: dict[str, torch.Tensor],
    keep: int | None = None,
    protect: int | None = None,
) -> Path:
    """Write checkpoints/step_NNNNNN atomically; then keep only the newest `keep` checkpoints
    and the one of step `protect` (the best by validation loss).

    model and optimizer are the objects, or (for a sharded model, gathered whole) the model's
    tensors by name, each shared tensor once, and the optimizer's state_dict().

    A failed write (a full disk, say) raises ScratchLMError naming the checkpoint that is
    still intact; nothing older is removed before the new checkpoint is complete.
    """
    final = checkpoint_dir(run_dir, state.step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        _save_model(model, tmp / "model.safetensors")
        _save_optimizer(optimizer, tmp / "optimizer.safetensors")
        safetensors.torch.save_file(
            {k: v.contiguous() for k, v in rng_states.items()}, tmp / "state.safetensors"
        )
        files = ("model.safetensors", "optimizer.safetensors", "state.safetensors")
        for name in files:
            with open(tmp / name, "rb+") as f:
                os.fsync(f.fileno())
        meta = {
            "format": CHECKPOINT_FORMAT,
            "step": state.step,
            "tokens_seen": state.tokens_seen,
            "best_val_loss": state.best_val_loss,
            "best_step": state.best_step,
            "extra": state.extra,
            "sha256": {name: file_sha256(tmp / name) for name in files},
        }
        atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=2) + "\n")
        if final.exists():  # re-saving the same step (e.g. interrupted right after a save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = [p for p in list_checkpoints(run_dir) if p != final]
        kept = (
            f"the previous checkpoint {previous[-1]} is intact; resume from it with "
            f"`scratchlm train --resume {run_dir}`"
            if previous
            else "no earlier checkpoint exists"
        )
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        raise ScratchLMError(
            f"could not write checkpoint {final}"
            + (" because the disk is full" if full else "")
            + f" ({e.strerror or e}); {kept}"
            + (" once there is free space" if full and previous else "")
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep is not None:
        for old in list_checkpoints(run_dir)[:-keep]:
            if protect is None or old != checkpoint_dir(run_dir, protect):
                shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    load_weights: bool = True,
) -> tuple[TrainingState, dict[str, torch.Tensor]]:
    """Load weights (and optimizer state) in place; return the counters and RNG states.
    Without load_weights, every file is still checked but the model is left as it is."""
    meta = read_checkpoint_meta(path)
    for name, digest in meta["sha256"].items():
        if not (path / name).is_file():
            raise ScratchLMError(f"checkpoint {path} is incomplete: {name} is missing")
        if file_sha256(path / name) != digest:
            raise ScratchLMError(
                f"checkpoint {path} is corrupted: {name} does not match its checksum; "
                + damaged_checkpoint_advice(path)
            )
    if load_weights:
        load_model_weights(path / "model.safetensors", model)
    if optimizer is not None:
        _load_optimizer(optimizer, path / "optimizer.safetensors")
    rng_states = _read_safetensors(path / "state.safetensors")
    state = TrainingState(
        step=int(meta["step"]),
        tokens_seen=int(meta["tokens_seen"]),
        best_val_loss=meta.get("best_val_loss"),
        best_step=meta.get("best_step"),
        extra=meta.get("extra", {}),
    )
    return state, rng_states


def check_tokenizer_fingerprint(path: Path, state: TrainingState, fingerprint: str) -> None:
    """Refuse a checkpoint trained with another tokenizer than the one given (see
    BPETokenizer.fingerprint); checkpoints from before fingerprints were recorded pass."""
    recorded = state.extra.get("tokenizer")
    if recorded is not None and recorded != fingerprint:
        raise ScratchLMError(
            f"checkpoint {path} was trained with another tokenizer (fingerprint {recorded}) "
            f"than the run's tokenizer.json ({fingerprint}); put back the tokenizer.json the "
            "run was trained with, or train a new run with this tokenizer"
        )


def check_run_matches(path: Path, recorded: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint whose model shape or data differ from the run's now.

    `recorded` and `current` map "model" to the ModelConfig as a dict, "data" to
    data_fingerprint() and "train" to {"optimizer": name}. Only keys on both sides are
    compared, so only a real difference of a setting both know stops the run.
    """
    for section, fix in (
        ("model", "put back the run's config.toml [model] table, or start a new run"),
        ("data", "put back the data the run was prepared with, or start a new run"),
        ("train", "its optimizer state cannot carry over; set it back, or start a new run"),
    ):
        old, new = recorded.get(section), current.get(section)
        if not isinstance(old, dict) or not isinstance(new, dict):
            continue
        differences = [
            f"{section}.{key} was {old[key]!r}, now {new[key]!r}"
            for key in sorted(old.keys() & new.keys())
            if old[key] != new[key]
        ]
        if differences:
            raise ScratchLMError(
                f"cannot resume from {path}: the {section} differs from the one it was "
                f"trained with ({'; '.join(differences)}); {fix}"
            )


def data_fingerprint(data_dir: Path) -> dict[str, Any]:
    """What identifies a run's prepared data: the counts of data/meta.json and a sha256 over
    the size and first 64 KiB of every shard (cheap at any data size, and a re-tokenised or
    different corpus changes it)."""
    meta = json.loads((data_dir / "meta.json").read_text(encoding="utf-8"))
    digest = hashlib.sha256()
    for split in ("train", "val"):
        for name in meta.get(f"{split}_shards", []):
            shard = data_dir / name
            digest.update(f"{name}:{shard.stat().st_size}:".encode())
            with open(shard, "rb") as f:
                digest.update(f.read(1 << 16))
    counted = ("tokens", "documents", "bytes")
    found = {f"{s}_{c}": meta[f"{s}_{c}"] for s in ("train", "val") for c in counted
             if f"{s}_{c}" in meta}  # fmt: skip
    return {**found, "shards_sha256": digest.hexdigest()[:16]}


def read_checkpoint_meta(path: Path) -> dict[str, Any]:
    meta_path = path / "meta.json"
    if not path.is_dir():
        raise ScratchLMError(f"no such checkpoint folder: {path}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScratchLMError(f"checkpoint {path} is incomplete: meta.json is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ScratchLMError(
            f"checkpoint {meta_path} is corrupted: {e}; {damaged_checkpoint_advice(path)}"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise ScratchLMError(
            f"{meta_path}: not a scratchlm checkpoint of format {CHECKPOINT_FORMAT}"
        )
    return meta


def load_model_weights(path: Path, model: nn.Module) -> None:
    """Load a model.safetensors into `model`, naming any tensor whose shape does not fit."""
    tensors = _read_safetensors(path)
    own = model.state_dict()
    for name, tensor in tensors.items():
        if name in own and own[name].shape != tensor.shape:
            raise ScratchLMError(
                f"{path}: tensor {name} has shape {tuple(tensor.shape)} but the model expects "
                f"{tuple(own[name].shape)}; the config does not match this checkpoint"
            )
    missing, unexpected = safetensors.torch.load_model(model, path, strict=False)
    if missing or unexpected:
        raise ScratchLMError(
            f"{path}: the checkpoint does not fit the model (missing: {missing[:3]}, "
            f"unexpected: {unexpected[:3]})"
        )


def _save_model(model: nn.Module | Mapping[str, torch.Tensor], path: Path) -> None:
    if isinstance(model, nn.Module):
        # save_model drops the second name of shared (tied) tensors; load_model restores the tie.
        safetensors.torch.save_model(model, str(path))
    else:
        safetensors.torch.save_file({k: v.contiguous() for k, v in model.items()}, str(path))


def _save_optimizer(optimizer: torch.optim.Optimizer | dict[str, Any], path: Path) -> None:
    state_dict = (
        optimizer.state_dict() if isinstance(optimizer, torch.optim.Optimizer) else optimizer
    )
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    metadata = {
        "param_groups": json.dumps(state_dict["param_groups"]),
        "scalars": json.dumps(scalars),
    }
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)


def _load_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    load_optimizer_state(optimizer, read_optimizer_state(path), path)


def read_optimizer_state(path: Path) -> dict[str, Any]:
    """An optimizer.safetensors as the state_dict() it was saved from."""
    tensors = _read_safetensors(path)
    with safetensors.safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    param_groups = json.loads(metadata["param_groups"])
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in json.loads(metadata.get("scalars", "{}")).items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": param_groups}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, state_dict: dict[str, Any], path: Path
) -> None:
    """optimizer.load_state_dict, with a mismatch named as the checkpoint's (at `path`)."""
    try:
        optimizer.load_state_dict(state_dict)
    except (ValueError, KeyError) as e:
        raise ScratchLMError(f"{path}: optimizer state does not fit this model: {e}") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ScratchLMError(f"missing file: {path}")
    try:
        return safetensors.torch.load_file(str(path))
    except Exception as e:  # safetensors raises several types for a damaged header
        raise ScratchLMError(
            f"{path} is truncated or corrupted ({type(e).__name__}: {e}); "
            + damaged_checkpoint_advice(path.parent)
        ) from None


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read a MiB at a time, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


__all__ = [
    "TrainingState",
    "check_run_matches",
    "check_tokenizer_fingerprint",
    "checkpoint_dir",
    "damaged_checkpoint_advice",
    "data_fingerprint",
    "file_sha256",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_model_weights",
    "load_optimizer_state",
    "read_checkpoint_meta",
    "read_optimizer_state",
    "save_checkpoint",
]
