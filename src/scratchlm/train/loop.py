"""The pretraining loop: next-token prediction, a scheduled optimizer, clipping, accumulation.

One optimizer step = `grad_accum_steps` micro-batches of `batch_size` sequences (or as many as
train.batch_tokens asks for), so the effective batch is batch_size * grad_accum_steps *
block_size tokens whatever fits in memory.

Nothing is lost when things go wrong: checkpoints are atomic (checkpoint.py), SIGINT/SIGTERM
finish the step and save (interrupt.py), a step whose loss or gradient is not finite is
skipped (and max_bad_steps of them in a row stop the run with its last good checkpoint), and a
resume refuses a checkpoint whose model shape, tokenizer, data or optimizer differ.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor
from tqdm import tqdm

from scratchlm.core.devices import resolve_device
from scratchlm.core.errors import ScratchLMError
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
    save_checkpoint,
)
from scratchlm.runs.layout import RunPaths
from scratchlm.tokenizer import BPETokenizer
from scratchlm.train.config import TrainConfig
from scratchlm.train.flops import flops_per_token, peak_flops, raise_peak
from scratchlm.train.interrupt import StopRequest
from scratchlm.train.metrics import MetricsLog, plot_learning_rate, plot_loss
from scratchlm.train.optimizer import build_optimizer
from scratchlm.train.precision import autocast_context, resolve_dtype
from scratchlm.train.schedule import lr_factor_at
from scratchlm.train.validation import evaluate_loss, perplexity

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
class TrainResult:
    steps: int  # optimizer steps of the run so far
    new_steps: int  # of which this call made
    val_loss: float | None
    interrupted: bool
    checkpoint: Path | None
    seconds: float


def train_model(config: TrainableRun, resume: bool = False, quiet: bool = False) -> TrainResult:
    """Train the model of a prepared run directory (see runs/preparation.py)."""
    paths = RunPaths(config.run_dir)
    tc = config.train
    accum = tc.accumulation_steps(config.model.block_size)
    device = resolve_device(tc.device)
    torch.manual_seed(tc.seed)

    model = GPT(config.model).to(device)
    optimizer = build_optimizer(model, tc)
    # Each group's peak rate comes from the config, not from a checkpoint's saved groups, so a
    # changed --train.muon_lr on resume takes effect.
    base_lrs = [group["base_lr"] for group in optimizer.param_groups]
    train_batches = TokenBatches(
        paths.shards("train"),
        config.model.block_size,
        tc.batch_size,
        seed=tc.seed,
        sampling=config.data.sampling,
        device=str(device),
    )
    val_batches = TokenBatches(
        paths.shards("val"),
        config.model.block_size,
        tc.batch_size,
        seed=tc.seed + 1,
        device=str(device),
    )
    identity: dict[str, Any] = {
        "tokenizer": BPETokenizer.load(paths.tokenizer).fingerprint(),
        "model": dataclasses.asdict(config.model),
        "data": data_fingerprint(paths.data),
        "train": {"optimizer": tc.optimizer},
    }
    state = TrainingState(extra={**identity, "skipped_steps": 0})
    if resume and list_checkpoints(paths.root):
        last = list_checkpoints(paths.root)[-1]
        recorded = read_checkpoint_meta(last).get("extra", {})
        # Before loading anything: name what differs rather than fail on a tensor's shape.
        check_tokenizer_fingerprint(last, TrainingState(extra=recorded), identity["tokenizer"])
        check_run_matches(last, recorded, identity)
        state, rng = load_checkpoint(last, model, optimizer)
        state.extra = {**identity, "skipped_steps": int(state.extra.get("skipped_steps", 0))}
        torch.set_rng_state(rng["torch"])
        train_batches.load_state_dict(
            {
                k.removeprefix(LOADER_PREFIX): v
                for k, v in rng.items()
                if k.startswith(LOADER_PREFIX)
            }
        )
        MetricsLog(paths.metrics).truncate_after(state.step)
        if state.step >= tc.max_steps:
            print(
                f"{paths.root} is already trained to step {state.step:,} (train.max_steps is "
                f"{tc.max_steps:,}); nothing to do. Raise --train.max_steps to continue."
            )
            return TrainResult(state.step, 0, None, False, last, 0.0)
        print(f"resuming from {last} (step {state.step:,} of {tc.max_steps:,})")
    elif not resume:
        paths.metrics.unlink(missing_ok=True)
    metrics = MetricsLog(paths.metrics, paths.tensorboard if tc.tensorboard else None)

    dtype = resolve_dtype(device, tc.dtype, config.model.n_embd)
    autocast = autocast_context(device, dtype)
    tokens_per_step = tc.batch_size * accum * config.model.block_size
    n_params = model.num_parameters()
    step_flops = flops_per_token(config.model, model.num_parameters(exclude_embeddings=True))
    peak_dtype = torch.float32 if dtype == "float32" else torch.bfloat16
    peak = peak_flops(device, peak_dtype)
    if not quiet:
        print(
            f"model: {n_params:,} parameters | {tokens_per_step:,} tokens per step "
            f"({accum} x {tc.batch_size} x {config.model.block_size}) | device {device}, "
            f"{dtype}{' (auto)' if tc.dtype == 'auto' else ''} | {tc.optimizer}, "
            f"{tc.schedule} schedule | measured peak {peak / 1e9:,.1f} GFLOP/s"
        )
    loss_fn = make_loss_fn(model, tc)

    def rng_states() -> dict[str, torch.Tensor]:
        loader = {LOADER_PREFIX + k: v for k, v in train_batches.state_dict().items()}
        return {"torch": torch.get_rng_state(), **loader}

    def checkpoint() -> Path:
        return save_checkpoint(
            paths.root,
            model,
            optimizer,
            state,
            rng_states(),
            keep=tc.keep_checkpoints,
            protect=state.best_step if tc.keep_best else None,
        )

    def validate() -> tuple[float, bool]:
        loss = evaluate_loss(model, val_batches.eval_batches(tc.eval_batches), autocast)
        metrics.append({"step": state.step, "val_loss": loss, "val_perplexity": perplexity(loss)})
        improved = state.best_val_loss is None or loss < state.best_val_loss
        if improved:
            state.best_val_loss, state.best_step = loss, state.step
        return loss, improved

    model.train()
    start = time.perf_counter()
    first_step = state.step
    val_loss: float | None = None
    last_checkpoint: Path | None = None
    interrupted = False
    bad_in_a_row = 0
    window_tokens, window_start = 0, time.perf_counter()
    bar = tqdm(
        total=tc.max_steps,
        initial=state.step,
        unit="step",
        desc="training",
        dynamic_ncols=True,
        disable=quiet,
        mininterval=1.0,
        file=sys.stderr,
    )
    try:
        with StopRequest() as stop:
            while state.step < tc.max_steps:
                factor = lr_factor_at(state.step, tc)
                for group, base_lr in zip(optimizer.param_groups, base_lrs, strict=True):
                    group["lr"] = base_lr * factor
                lr = tc.learning_rate * factor
                step_start = time.perf_counter()
                train_loss = forward_backward(loss_fn, train_batches.next_batch, accum, autocast)
                grad_norm = clip_grad_norm(model, tc.grad_clip)
                if tc.compile and state.step == first_step:
                    compile_s = time.perf_counter() - step_start
                    metrics.append({"step": state.step, "compile_s": compile_s})
                    bar.write(f"torch.compile: the first step took {compile_s:.1f}s (compiling)")
                    window_start = time.perf_counter()  # keep compiling out of tokens/s

                if not (math.isfinite(train_loss) and math.isfinite(grad_norm)):
                    # A bad batch or a spike: drop this step's gradients, keep the weights and
                    # optimizer state as they were, and go on with the next batch.
                    optimizer.zero_grad(set_to_none=True)
                    bad_in_a_row += 1
                    state.extra["skipped_steps"] += 1
                    metrics.append(
                        {
                            "step": state.step,
                            "skipped_step": True,
                            "bad_steps_in_a_row": bad_in_a_row,
                            "skipped_steps": state.extra["skipped_steps"],
                        }
                    )
                    if bad_in_a_row >= tc.max_bad_steps:
                        kept = list_checkpoints(paths.root)
                        raise ScratchLMError(
                            f"stopped at step {state.step:,}: {bad_in_a_row} steps in a row had "
                            f"a non-finite loss or gradient (loss {train_loss}, gradient norm "
                            f"{grad_norm}; train.max_bad_steps is {tc.max_bad_steps}). "
                            + (
                                f"The last good checkpoint is {kept[-1]}; lower "
                                f"train.learning_rate and resume with `scratchlm train --resume "
                                f"{paths.root} --train.learning_rate ...`"
                                if kept
                                else "No checkpoint was written yet; lower train.learning_rate "
                                "and start again"
                            )
                        )
                    if stop.requested:
                        last_checkpoint, interrupted = checkpoint(), True
                        break
                    continue
                bad_in_a_row = 0
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                state.tokens_seen += tokens_per_step
                window_tokens += tokens_per_step
                bar.update(1)

                if state.step % tc.log_interval == 0 or state.step == tc.max_steps:
                    now = time.perf_counter()
                    tokens_per_s = window_tokens / max(now - window_start, 1e-9)
                    window_tokens, window_start = 0, now
                    flops_per_s = tokens_per_s * step_flops
                    if flops_per_s > peak:  # the cached peak was measured too low
                        peak = raise_peak(device, peak_dtype, flops_per_s)
                    remaining = (tc.max_steps - state.step) * tokens_per_step
                    metrics.append(
                        {
                            "step": state.step,
                            "train_loss": train_loss,
                            "lr": lr,
                            "grad_norm": grad_norm,
                            "tokens_per_s": tokens_per_s,
                            "flops_per_s": flops_per_s,
                            "mfu": flops_per_s / peak if peak > 0 else math.nan,
                            "tokens_seen": state.tokens_seen,
                            "elapsed_s": now - start,
                            "eta_s": remaining / max(tokens_per_s, 1e-9),
                            "skipped_steps": state.extra["skipped_steps"],
                        }
                    )
                    bar.set_postfix(
                        loss=f"{train_loss:.3f}",
                        tok_s=f"{tokens_per_s:,.0f}",
                        mfu=f"{flops_per_s / peak:.1%}" if peak > 0 else "?",
                        lr=f"{lr:.1e}",
                    )
                improved = False
                if state.step % tc.eval_interval == 0 or state.step == tc.max_steps:
                    val_loss, improved = validate()
                    bar.write(
                        f"step {state.step:>6,}: train loss {train_loss:.4f} | val loss "
                        f"{val_loss:.4f} | val perplexity {perplexity(val_loss):.2f}"
                    )
                if stop.requested:
                    last_checkpoint, interrupted = checkpoint(), True
                    break
                due = state.step % tc.checkpoint_interval == 0 or state.step == tc.max_steps
                if due or (improved and tc.keep_best):  # the best is kept, so it must exist
                    last_checkpoint = checkpoint()
    finally:
        bar.close()
        metrics.close()
    if paths.metrics.is_file():
        plot_loss(paths.metrics, paths.loss_plot, title=config.name)
        plot_learning_rate(paths.metrics, paths.lr_plot, title=config.name)
    if interrupted:
        print(
            f"stopped at step {state.step:,}; checkpoint saved to {last_checkpoint}\n"
            f"resume with: scratchlm train --resume {paths.root}"
        )
    return TrainResult(
        steps=state.step,
        new_steps=state.step - first_step,
        val_loss=val_loss,
        interrupted=interrupted,
        checkpoint=last_checkpoint,
        seconds=time.perf_counter() - start,
    )


LossFn = Callable[[Tensor, Tensor], Tensor]


def make_loss_fn(model: GPT, tc: TrainConfig) -> LossFn:
    """(x, y) -> the mean loss of one micro-batch, as training computes it: the fused,
    chunked head and cross-entropy (train.fused_loss) or forward's, torch.compile'd with
    train.compile (compiled on the first call; the loop reports that step's time apart)."""

    def loss_fn(x: Tensor, y: Tensor) -> Tensor:
        if tc.fused_loss:
            return model.training_loss(x, y)
        _, loss = model(x, y)
        assert loss is not None
        return loss

    return torch.compile(loss_fn) if tc.compile else loss_fn


def forward_backward(
    loss_fn: LossFn,
    next_batch: Callable[[], tuple[Tensor, Tensor]],
    accum: int,
    autocast: AbstractContextManager[object],
) -> float:
    """Forward and backward passes of `accum` micro-batches, gradients summed into .grad;
    returns the mean loss over them."""
    loss_sum = 0.0
    for _ in range(accum):
        x, y = next_batch()
        with autocast:
            loss = loss_fn(x, y)
        # Each micro-batch contributes its share of the mean over the whole step.
        (loss / accum).backward()
        loss_sum += float(loss.detach())
    return loss_sum / accum


def clip_grad_norm(model: torch.nn.Module, clip: float) -> float:
    """The global gradient norm (inf or nan if any gradient is), clipped to `clip` when > 0."""
    if clip > 0:
        return float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
