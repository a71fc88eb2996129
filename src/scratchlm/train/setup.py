"""Everything a run needs before its first step: the model, optimizer and data loaders, what
identifies the run, and where its weights start (random, its own last checkpoint on resume,
or another run's weights with train.init_from)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from scratchlm.core.devices import resolve_device
from scratchlm.core.messages import warn
from scratchlm.data.config import DataConfig
from scratchlm.data.loader import TokenBatches
from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig
from scratchlm.model.hf_format import hf_export_problem
from scratchlm.runs.checkpoint import (
    TrainingState,
    check_run_matches,
    check_tokenizer_fingerprint,
    data_fingerprint,
    list_checkpoints,
    load_checkpoint,
    load_optimizer_state,
    read_checkpoint_meta,
    read_optimizer_state,
)
from scratchlm.runs.layout import RunPaths
from scratchlm.tokenizer import BPETokenizer
from scratchlm.train.config import TrainConfig
from scratchlm.train.distributed import (
    TrainingLoss,
    in_group,
    no_sync_context,
    wrap_data_parallel,
)
from scratchlm.train.init_from import load_initial_weights
from scratchlm.train.optimizer import build_optimizer
from scratchlm.train.precision import autocast_context, resolve_dtype
from scratchlm.train.ranks import Ranks
from scratchlm.train.sharding import (
    apply_fsdp,
    apply_tensor_parallel,
    build_mesh,
    check_tensor_parallel,
    data_parallel_ranks,
    mesh_shape,
    resharding,
    shard_optimizer_state,
)
from scratchlm.train.step import Batch, LossFn, compiled, model_loss

# The data loader's state (generator, epoch, cursor) is saved beside the torch RNG state, each
# tensor under this prefix.
LOADER_PREFIX = "train_loader."


class RunSettings(Protocol):
    """What the loop and its hooks read of a run's config: a pretraining run's
    (scratchlm.config.RunConfig) or a fine-tuning run's (finetune/config.py)."""

    @property
    def run_dir(self) -> Path: ...

    name: str
    model: ModelConfig
    train: TrainConfig


class TrainableRun(RunSettings, Protocol):
    """What pretraining reads of a run's config (scratchlm.config.RunConfig has all of it)."""

    data: DataConfig


class BatchSource(Protocol):
    """Training batches one after another, and where the source is, for exact resume."""

    def next_batch(self) -> Batch: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


@dataclass
class TrainingContext:
    """A run being trained: what set_up_training built, and what the hooks report back."""

    run: RunSettings
    paths: RunPaths
    ranks: Ranks
    # This rank's place among the data-parallel groups (the loader splits batches by it): the
    # job's ranks, except that tensor-parallel ranks share a batch.
    data_ranks: Ranks
    tp: int  # tensor-parallel degree (1: none)
    device: torch.device
    # The model itself, never DDP's or FSDP's wrapper: saved as it is (gathered when split).
    # A GPT, or what fine-tuning trains (a classifier around one).
    model: nn.Module
    optimizer: torch.optim.Optimizer
    # Each group's peak rate comes from the config, not from a checkpoint's saved groups, so a
    # changed --train.muon_lr on resume takes effect.
    base_lrs: list[float]
    train_batches: BatchSource
    val_batches: TokenBatches | None  # pretraining's validation windows (see validate)
    state: TrainingState
    accum: int  # micro-batches per optimizer step
    dtype: str  # "float32" or "bfloat16" ("auto" resolved)
    autocast: AbstractContextManager[object]
    # The loss the steps train on: the model's, through DDP in a job of several ranks (whose
    # no_sync the micro-steps but the last run under), torch.compile'd with train.compile.
    loss_fn: LossFn
    # With FSDP or TP every rank takes part in evaluating (the model is split among them),
    # through this loss; None: the main rank evaluates its whole copy of the model alone.
    eval_loss_fn: LossFn | None
    no_sync: Callable[[], AbstractContextManager[object]]
    resumed_from: Path | None  # the run's own checkpoint it continues, if any
    val_loss: float | None = None  # the latest validation loss
    last_checkpoint: Path | None = None  # the latest checkpoint saved by this call
    # Fine-tuning's own parts (finetune/training.py); pretraining leaves them unset.
    # Validation: metrics by name, "val_loss" among them (default: the loss on val_batches).
    validate: Callable[[], dict[str, float]] | None = None
    # The weights a checkpoint holds (default: the model's own state): a LoRA run saves
    # them merged, so every checkpoint is a plain model for generate, chat and export.
    checkpoint_weights: Callable[[], Mapping[str, torch.Tensor]] | None = None
    # More tensors for a checkpoint's state.safetensors (a LoRA run's adapters).
    extra_states: Callable[[], dict[str, torch.Tensor]] | None = None
    row_tokens: int = 0  # positions of a batch row, for throughput (0: model.block_size)
    loss_label: str = ""  # what loss.png calls the loss ("": cross-entropy per token)

    @property
    def config(self) -> TrainConfig:
        return self.run.train

    @property
    def sharded(self) -> bool:
        """Whether the model is split among the ranks (FSDP or TP): evaluating and gathering
        a checkpoint then take every rank."""
        return self.eval_loss_fn is not None

    @property
    def tokens_per_rank(self) -> int:
        """Tokens one rank computes on in an optimizer step."""
        row = self.row_tokens or self.run.model.block_size
        return self.config.batch_size * self.accum * row

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one optimizer step, all data-parallel ranks together."""
        return self.tokens_per_rank * self.data_ranks.world_size

    def rng_states(self) -> dict[str, torch.Tensor]:
        """The torch RNGs (the CPU's, and the GPU's on one) and the training loader's state,
        for a checkpoint."""
        loader = {LOADER_PREFIX + k: v for k, v in self.train_batches.state_dict().items()}
        rngs = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rngs["cuda"] = torch.cuda.get_rng_state(self.device)
        extra = self.extra_states() if self.extra_states is not None else {}
        return {**rngs, **loader, **extra}


def set_up_training(run: TrainableRun, resume: bool, ranks: Ranks) -> TrainingContext:
    """Build the run's model, optimizer and loaders; on resume, restore the run's latest
    checkpoint (after checking it belongs to this run); else start from train.init_from's
    weights if set, or from random ones. In a job of several ranks, wrap or split the model as
    train.parallel says, once its weights are final."""
    paths = RunPaths(run.run_dir)
    tc = run.train
    if not resume and (problem := hf_export_problem(run.model)) is not None:
        # Said before hours of training, not when the user reaches for transformers.
        warn(f"{problem} (it trains all the same; transformers and llama.cpp will not load it)")
    device = resolve_device(tc.device)
    torch.manual_seed(tc.seed)
    model = GPT(run.model).to(device)
    mesh = None
    tp = 1
    if in_group(ranks) and tc.parallel in ("fsdp", "tp"):
        shape = mesh_shape(tc.parallel, tc.tp, ranks.world_size)
        check_tensor_parallel(run.model, shape.tp)
        mesh, tp = build_mesh(shape, device), shape.tp
    data_ranks = data_parallel_ranks(mesh, ranks)
    accum = tc.accumulation_steps(run.model.block_size, data_ranks.world_size)
    train_batches = TokenBatches(
        paths.shards("train"),
        run.model.block_size,
        tc.batch_size,
        seed=tc.seed,
        sampling=run.data.sampling,
        rank=data_ranks.rank,
        world_size=data_ranks.world_size,
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
        state, _ = restore_checkpoint(resumed_from, identity, model, train_batches, device)
    else:
        state = TrainingState(extra={**identity, "skipped_steps": 0})
        if tc.init_from:
            state.extra["init_from"] = load_initial_weights(
                tc.init_from, model, run.model, identity["tokenizer"]
            )
    dtype = resolve_dtype(device, tc.dtype, run.model.n_embd)
    loss: LossFn = model_loss(model, tc)
    eval_loss: LossFn | None = None
    wrapped: torch.nn.Module | None = None
    if in_group(ranks) and tc.parallel == "ddp":
        # After the weights are final: DDP broadcasts rank 0's to the others as it wraps.
        loss = wrapped = wrap_data_parallel(model, loss, device)
    elif mesh is not None:
        if tp > 1:
            apply_tensor_parallel(model, mesh)
        if tc.parallel == "fsdp":
            root = TrainingLoss(model, loss)
            # Blocks compute in bf16 on a GPU (FSDP2 gathers them in bf16 too); gradients
            # are reduced in float32 either way.
            compute = torch.bfloat16 if device.type == "cuda" and dtype == "bfloat16" else None
            apply_fsdp(model, root, mesh, tc.reshard_after_forward, compute)
            loss = wrapped = root
            eval_loss = resharding(root)
        else:
            eval_loss = loss
    # Built on the model's parameters as they end up (FSDP and TP replace them with DTensors).
    optimizer = build_optimizer(model, tc)
    if resumed_from is not None:
        restore_optimizer(resumed_from, optimizer, model, tp)
    return TrainingContext(
        run=run,
        paths=paths,
        ranks=ranks,
        data_ranks=data_ranks,
        tp=tp,
        device=device,
        model=model,
        optimizer=optimizer,
        base_lrs=[group["base_lr"] for group in optimizer.param_groups],
        train_batches=train_batches,
        val_batches=val_batches,
        state=state,
        accum=accum,
        dtype=dtype,
        autocast=autocast_context(device, dtype),
        loss_fn=compiled(loss, tc),
        eval_loss_fn=eval_loss,
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
    model: nn.Module,
    train_batches: BatchSource,
    device: torch.device,
    load_weights: bool = True,
) -> tuple[TrainingState, dict[str, torch.Tensor]]:
    """Load a checkpoint of this run to continue it exactly: weights, counters, the torch RNGs
    and the data loader's place (the optimizer follows, once the model is wrapped or split:
    restore_optimizer). Returns the counters and the checkpoint's saved states (a LoRA run's
    adapters are among them: it loads those instead of the weights, load_weights=False)."""
    recorded = read_checkpoint_meta(checkpoint).get("extra", {})
    # Before loading anything: name what differs rather than fail on a tensor's shape.
    check_tokenizer_fingerprint(checkpoint, TrainingState(extra=recorded), identity["tokenizer"])
    check_run_matches(checkpoint, recorded, identity)
    state, rng = load_checkpoint(checkpoint, model, load_weights=load_weights)
    kept = {key: state.extra[key] for key in ("init_from",) if key in state.extra}
    state.extra = {
        **identity,
        **kept,
        "skipped_steps": int(state.extra.get("skipped_steps", 0)),
    }
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and "cuda" in rng:
        # Dropout on a GPU draws from the device's generator (a checkpoint from a CPU run has
        # none: the GPU's starts from the seed).
        torch.cuda.set_rng_state(rng["cuda"], device)
    train_batches.load_state_dict(
        {k.removeprefix(LOADER_PREFIX): v for k, v in rng.items() if k.startswith(LOADER_PREFIX)}
    )
    return state, rng


def restore_optimizer(
    checkpoint: Path, optimizer: torch.optim.Optimizer, model: nn.Module, tp: int = 1
) -> None:
    """The checkpoint's optimizer state (whole tensors) into `optimizer`, each moment split as
    its parameter is when the model is sharded."""
    path = checkpoint / "optimizer.safetensors"
    state_dict = read_optimizer_state(path)
    if any(isinstance(p, DTensor) for p in model.parameters()):
        state_dict = shard_optimizer_state(state_dict, optimizer, cast(GPT, model), tp)
    load_optimizer_state(optimizer, state_dict, path)
