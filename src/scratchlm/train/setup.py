"""Everything a run needs before its first step: the model, optimizer and data loaders, what
identifies the run, and where its weights start (random, its own last checkpoint on resume,
or another run's weights with train.init_from)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from scratchlm.core.devices import resolve_device
from scratchlm.data.config import DataConfig
from scratchlm.data.loader import TokenBatches
from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig
from scratchlm.runs.checkpoint import (
    TrainingState,
    check_run_matches,
    check_tokenizer_fingerprint,
    data_fingerprint,
    list_checkpoints,
    load_checkpoint,
    read_checkpoint_meta,
)
from scratchlm.runs.layout import RunPaths
from scratchlm.tokenizer import BPETokenizer
from scratchlm.train.config import TrainConfig
from scratchlm.train.distributed import in_group, no_sync_context, wrap_data_parallel
from scratchlm.train.init_from import load_initial_weights
from scratchlm.train.optimizer import build_optimizer
from scratchlm.train.precision import autocast_context, resolve_dtype
from scratchlm.train.ranks import Ranks
from scratchlm.train.step import LossFn, compiled, model_loss

# The data loader's state (generator, epoch, cursor) is saved beside the torch RNG state, each
# tensor under this prefix.
LOADER_PREFIX = "train_loader."


class TrainableRun(Protocol):
    """What training reads of a run's config (scratchlm.config.RunConfig has all of it)."""

    @property
    def run_dir(self) -> Path: ...

    name: str
    model: ModelConfig
    data: DataConfig
    train: TrainConfig


@dataclass
class TrainingContext:
    """A run being trained: what set_up_training built, and what the hooks report back."""

    run: TrainableRun
    paths: RunPaths
    ranks: Ranks
    device: torch.device
    model: GPT  # the model itself, never DDP's wrapper: evaluated and saved as it is
    optimizer: torch.optim.Optimizer
    # Each group's peak rate comes from the config, not from a checkpoint's saved groups, so a
    # changed --train.muon_lr on resume takes effect.
    base_lrs: list[float]
    train_batches: TokenBatches
    val_batches: TokenBatches
    state: TrainingState
    accum: int  # micro-batches per optimizer step
    dtype: str  # "float32" or "bfloat16" ("auto" resolved)
    autocast: AbstractContextManager[object]
    # The loss the steps train on: the model's, through DDP in a job of several ranks (whose
    # no_sync the micro-steps but the last run under), torch.compile'd with train.compile.
    loss_fn: LossFn
    no_sync: Callable[[], AbstractContextManager[object]]
    resumed_from: Path | None  # the run's own checkpoint it continues, if any
    val_loss: float | None = None  # the latest validation loss
    last_checkpoint: Path | None = None  # the latest checkpoint saved by this call

    @property
    def config(self) -> TrainConfig:
        return self.run.train

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one optimizer step, all ranks together."""
        tokens_per_rank = self.config.batch_size * self.accum * self.run.model.block_size
        return tokens_per_rank * self.ranks.world_size

    def rng_states(self) -> dict[str, torch.Tensor]:
        """The torch RNG and the training loader's state, for a checkpoint."""
        loader = {LOADER_PREFIX + k: v for k, v in self.train_batches.state_dict().items()}
        return {"torch": torch.get_rng_state(), **loader}


def set_up_training(run: TrainableRun, resume: bool, ranks: Ranks) -> TrainingContext:
    """Build the run's model, optimizer and loaders; on resume, restore the run's latest
    checkpoint (after checking it belongs to this run); else start from train.init_from's
    weights if set, or from random ones."""
    paths = RunPaths(run.run_dir)
    tc = run.train
    device = resolve_device(tc.device)
    torch.manual_seed(tc.seed)
    model = GPT(run.model).to(device)
    optimizer = build_optimizer(model, tc)
    train_batches = TokenBatches(
        paths.shards("train"),
        run.model.block_size,
        tc.batch_size,
        seed=tc.seed,
        sampling=run.data.sampling,
        rank=ranks.rank,
        world_size=ranks.world_size,
        device=str(device),
    )
    # Every rank that evaluates reads the same validation windows.
    val_batches = TokenBatches(
        paths.shards("val"),
        run.model.block_size,
        tc.batch_size,
        seed=tc.seed + 1,
        device=str(device),
    )
    identity = run_identity(run, paths)
    checkpoints = list_checkpoints(paths.root) if resume else []
    resumed_from = checkpoints[-1] if checkpoints else None
    if resumed_from is not None:
        state = restore_checkpoint(resumed_from, identity, model, optimizer, train_batches)
    else:
        state = TrainingState(extra={**identity, "skipped_steps": 0})
        if tc.init_from:
            state.extra["init_from"] = load_initial_weights(
                tc.init_from, model, run.model, identity["tokenizer"]
            )
    dtype = resolve_dtype(device, tc.dtype, run.model.n_embd)
    loss: LossFn = model_loss(model, tc)
    wrapped = None
    if in_group(ranks):
        # After the weights are final: DDP broadcasts rank 0's to the others as it wraps.
        loss = wrapped = wrap_data_parallel(model, loss, device)
    return TrainingContext(
        run=run,
        paths=paths,
        ranks=ranks,
        device=device,
        model=model,
        optimizer=optimizer,
        base_lrs=[group["base_lr"] for group in optimizer.param_groups],
        train_batches=train_batches,
        val_batches=val_batches,
        state=state,
        accum=tc.accumulation_steps(run.model.block_size, ranks.world_size),
        dtype=dtype,
        autocast=autocast_context(device, dtype),
        loss_fn=compiled(loss, tc),
        no_sync=no_sync_context(wrapped),
        resumed_from=resumed_from,
    )


def run_identity(run: TrainableRun, paths: RunPaths) -> dict[str, Any]:
    """What a checkpoint must share with the run to be resumed by it (check_run_matches)."""
    return {
        "tokenizer": BPETokenizer.load(paths.tokenizer).fingerprint(),
        "model": dataclasses.asdict(run.model),
        "data": data_fingerprint(paths.data),
        "train": {"optimizer": run.train.optimizer},
    }


def restore_checkpoint(
    checkpoint: Path,
    identity: dict[str, Any],
    model: GPT,
    optimizer: torch.optim.Optimizer,
    train_batches: TokenBatches,
) -> TrainingState:
    """Load a checkpoint of this run to continue it exactly: weights, optimizer, counters, the
    torch RNG and the data loader's place."""
    recorded = read_checkpoint_meta(checkpoint).get("extra", {})
    # Before loading anything: name what differs rather than fail on a tensor's shape.
    check_tokenizer_fingerprint(checkpoint, TrainingState(extra=recorded), identity["tokenizer"])
    check_run_matches(checkpoint, recorded, identity)
    state, rng = load_checkpoint(checkpoint, model, optimizer)
    kept = {key: state.extra[key] for key in ("init_from",) if key in state.extra}
    state.extra = {
        **identity,
        **kept,
        "skipped_steps": int(state.extra.get("skipped_steps", 0)),
    }
    torch.set_rng_state(rng["torch"])
    train_batches.load_state_dict(
        {k.removeprefix(LOADER_PREFIX): v for k, v in rng.items() if k.startswith(LOADER_PREFIX)}
    )
    return state
