"""The pretraining loop: next-token prediction, a scheduled optimizer, clipping, accumulation.

One optimizer step = `grad_accum_steps` micro-batches of `batch_size` sequences (or as many as
train.batch_tokens asks for), so the effective batch is batch_size * grad_accum_steps *
block_size tokens whatever fits in memory.

Nothing is lost when things go wrong: checkpoints are atomic (runs/checkpoint.py), SIGINT and
SIGTERM finish the step and save (interrupt.py), a step whose loss or gradient is not finite
is skipped (and max_bad_steps of them in a row stop the run with its last good checkpoint),
and a resume refuses a checkpoint whose model shape, tokenizer, data or optimizer differ.

The parts: setup.py builds the run (and resumes it, or starts from train.init_from's
weights), step.py is one step's arithmetic, hooks.py is everything around the steps
(metrics, evaluation, checkpoints, plots), which only the main rank of a job runs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from scratchlm.core.errors import ScratchLMError
from scratchlm.core.messages import is_quiet, quietly
from scratchlm.runs.checkpoint import list_checkpoints
from scratchlm.train.config import TrainConfig
from scratchlm.train.distributed import any_rank, barrier, gather_values, mean_over_ranks
from scratchlm.train.hooks import Hooks, StepReport, is_due, training_hooks
from scratchlm.train.interrupt import StopRequest
from scratchlm.train.ranks import current_ranks
from scratchlm.train.schedule import lr_factor_at
from scratchlm.train.setup import TrainableRun, TrainingContext, set_up_training
from scratchlm.train.step import accumulate_gradients, clip_grad_norm, set_learning_rates


@dataclass
class TrainResult:
    steps: int  # optimizer steps of the run so far
    new_steps: int  # of which this call made
    val_loss: float | None
    interrupted: bool
    checkpoint: Path | None
    seconds: float


def train_model(config: TrainableRun, resume: bool = False, quiet: bool = False) -> TrainResult:
    """Train the model of a prepared run directory (see runs/preparation.py): from random
    weights, from train.init_from's, or on from its last checkpoint with resume. With quiet
    (and on every rank but the main one) it prints nothing but warnings."""
    start = time.perf_counter()
    ranks = current_ranks()
    with quietly(quiet or not ranks.is_main):
        ctx = set_up_training(config, resume, ranks)
        first_step = ctx.state.step
        if ctx.resumed_from is not None:
            max_steps = ctx.config.max_steps
            if first_step >= max_steps:
                # Before any hook: a command with nothing to do leaves every file as it was.
                _say(
                    f"{ctx.paths.root} is already trained to step {first_step:,} "
                    f"(train.max_steps is {max_steps:,}); nothing to do. Raise "
                    "--train.max_steps to continue."
                )
                return TrainResult(first_step, 0, None, False, ctx.resumed_from, 0.0)
            _say(f"resuming from {ctx.resumed_from} (step {first_step:,} of {max_steps:,})")
        hooks = training_hooks(ctx, resume)
        try:
            interrupted = run_steps(ctx, hooks)
        finally:
            hooks.close()
        if interrupted:
            _say(
                f"stopped at step {ctx.state.step:,}; checkpoint saved to "
                f"{ctx.last_checkpoint}\nresume with: scratchlm train --resume {ctx.paths.root}"
            )
    return train_result(ctx, first_step, interrupted, start)


def train_result(
    ctx: TrainingContext, first_step: int, interrupted: bool, start: float
) -> TrainResult:
    """Where a call that began at first_step (at perf_counter() = start) left the run."""
    return TrainResult(
        steps=ctx.state.step,
        new_steps=ctx.state.step - first_step,
        val_loss=ctx.val_loss,
        interrupted=interrupted,
        checkpoint=ctx.last_checkpoint,
        seconds=time.perf_counter() - start,
    )


def _say(line: str) -> None:
    """A line of the command's result on stdout (scripts read where a run stopped or resumed),
    unless quiet."""
    if not is_quiet():
        print(line)


def run_steps(ctx: TrainingContext, hooks: Hooks) -> bool:
    """Optimizer steps until train.max_steps, or until SIGINT/SIGTERM asks to stop (then True).

    A step whose loss or gradient is not finite (a bad batch, a spike) is thrown away: its
    gradients are dropped, the weights and optimizer state stay as they were, and the next
    batch is tried; train.max_bad_steps of them in a row stop the run.
    """
    tc, state, model, optimizer = ctx.config, ctx.state, ctx.model, ctx.optimizer
    first_step = state.step
    # This rank's own throughput over each log window (all ranks report theirs at log steps).
    window_start, window_steps = time.perf_counter(), 0
    bad_in_a_row = 0
    interrupted = False
    model.train()
    hooks.on_start(ctx)
    with StopRequest() as stop:
        while state.step < tc.max_steps:
            factor = lr_factor_at(state.step, tc)
            set_learning_rates(optimizer, ctx.base_lrs, factor)
            step_start = time.perf_counter()
            # The step's mean loss over every rank, read back once (a GPU sync).
            loss = float(
                mean_over_ranks(
                    accumulate_gradients(
                        ctx.loss_fn,
                        ctx.train_batches.next_batch,
                        ctx.accum,
                        ctx.autocast,
                        ctx.no_sync,
                    ),
                    ctx.ranks,
                )
            )
            grad_norm = clip_grad_norm(model, tc.grad_clip)
            if tc.compile and state.step == first_step:
                hooks.on_compiled(ctx, time.perf_counter() - step_start)

            if math.isfinite(loss) and math.isfinite(grad_norm):
                bad_in_a_row = 0
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                state.tokens_seen += ctx.tokens_per_step
                report = StepReport(state.step, loss, grad_norm, tc.learning_rate * factor)
                window_steps += 1
                if is_due(state.step, tc.log_interval, tc.max_steps):
                    now = time.perf_counter()
                    rate = window_steps * ctx.tokens_per_rank / max(now - window_start, 1e-9)
                    report.rank_tokens_per_s = gather_values(rate, ctx.ranks)
                    window_start, window_steps = now, 0
                hooks.on_step(ctx, report)
                if _main_rank_writes(tc, state.step):
                    # Rank 0 evaluated or saved a checkpoint: the others wait for it here.
                    barrier(ctx.ranks)
            else:
                optimizer.zero_grad(set_to_none=True)
                bad_in_a_row += 1
                state.extra["skipped_steps"] += 1
                hooks.on_skipped_step(ctx, bad_in_a_row)
                if bad_in_a_row >= tc.max_bad_steps:
                    raise _too_many_bad_steps(ctx, bad_in_a_row, loss, grad_norm)

            # Every rank stops at the same step, or the others would wait for it forever.
            if any_rank(stop.requested, ctx.ranks, ctx.device):
                hooks.on_stop(ctx)
                interrupted = True
                break
    hooks.on_end(ctx)
    return interrupted


def _main_rank_writes(tc: TrainConfig, step: int) -> bool:
    """Whether the hooks evaluate or may save a checkpoint after this step."""
    return any(
        is_due(step, interval, tc.max_steps)
        for interval in (tc.eval_interval, tc.checkpoint_interval)
    )


def _too_many_bad_steps(
    ctx: TrainingContext, bad_in_a_row: int, loss: float, grad_norm: float
) -> ScratchLMError:
    tc, root = ctx.config, ctx.paths.root
    kept = list_checkpoints(root)
    return ScratchLMError(
        f"stopped at step {ctx.state.step:,}: {bad_in_a_row} steps in a row had a non-finite "
        f"loss or gradient (loss {loss}, gradient norm {grad_norm}; train.max_bad_steps is "
        f"{tc.max_bad_steps}). "
        + (
            f"The last good checkpoint is {kept[-1]}; lower train.learning_rate and resume "
            f"with `scratchlm train --resume {root} --train.learning_rate ...`"
            if kept
            else "No checkpoint was written yet; lower train.learning_rate and start again"
        )
    )
