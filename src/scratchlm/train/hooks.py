"""What happens around the optimizer steps, as hooks the loop calls: metrics and the progress
bar, evaluation, checkpoints and plots. Only the main rank has them (training_hooks), so
every other rank of a job only computes, except where the model is split among the ranks
(FSDP, TP): then every rank evaluates and gathers checkpoints with it, and rank 0 writes.

The loop calls, in order: on_start; on_compiled after a compiled first step; on_step after
each optimizer step or on_skipped_step after a step thrown away; on_stop when SIGINT/SIGTERM
asked to stop; on_end when the loop is over without an error; close always.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from scratchlm.core.messages import progress, status
from scratchlm.model import GPT
from scratchlm.runs.checkpoint import checkpoint_dir, save_checkpoint
from scratchlm.train.distributed import broadcast_from_main
from scratchlm.train.flops import flops_per_token, peak_flops, raise_peak
from scratchlm.train.metrics import TOKEN_LOSS, MetricsLog, plot_learning_rate, plot_loss
from scratchlm.train.setup import TrainingContext
from scratchlm.train.sharding import gather_model_tensors, gather_optimizer_state
from scratchlm.train.validation import evaluate_loss, perplexity


@dataclass
class StepReport:
    """One optimizer step as the loop saw it."""

    step: int  # steps completed, this one included
    train_loss: float
    grad_norm: float
    lr: float  # the peak group's learning rate (train.learning_rate times the schedule)
    # Each rank's tokens/s over the last log window, in rank order (at log steps only).
    rank_tokens_per_s: list[float] | None = None


def is_due(step: int, interval: int, max_steps: int) -> bool:
    """Whether something done every `interval` steps (and at the last) happens after `step`."""
    return step % interval == 0 or step == max_steps


class TrainingHook:
    """The events of a run; each method does nothing unless a hook overrides it."""

    def on_start(self, ctx: TrainingContext) -> None:
        pass

    def on_compiled(self, ctx: TrainingContext, seconds: float) -> None:
        pass

    def on_step(self, ctx: TrainingContext, report: StepReport) -> None:
        pass

    def on_skipped_step(self, ctx: TrainingContext, bad_in_a_row: int) -> None:
        pass

    def on_stop(self, ctx: TrainingContext) -> None:
        pass

    def on_end(self, ctx: TrainingContext) -> None:
        pass

    def close(self) -> None:
        pass


class TrainingLog(TrainingHook):
    """metrics.jsonl (and TensorBoard) with throughput and MFU every train.log_interval steps,
    and the progress bar with its rate, ETA and the latest numbers."""

    def __init__(self, ctx: TrainingContext, resume: bool) -> None:
        paths, tc = ctx.paths, ctx.config
        if resume:  # records past the checkpoint will be logged again
            MetricsLog(paths.metrics).truncate_after(ctx.state.step)
        else:
            paths.metrics.unlink(missing_ok=True)
        self.metrics = MetricsLog(paths.metrics, paths.tensorboard if tc.tensorboard else None)
        self.bar: Any = None
        self.peak_dtype = torch.float32 if ctx.dtype == "float32" else torch.bfloat16
        self.peak = 0.0
        self.step_flops = 0.0
        self.start = self.window_start = time.perf_counter()
        self.window_tokens = 0

    def append(self, record: dict[str, Any]) -> None:
        self.metrics.append(record)

    def on_start(self, ctx: TrainingContext) -> None:
        tc, model = ctx.config, cast(Any, ctx.model)  # a GPT, or a model around one
        self.step_flops = flops_per_token(
            ctx.run.model, model.num_parameters(exclude_embeddings=True)
        )
        self.peak = peak_flops(ctx.device, self.peak_dtype)
        status(
            f"model: {model.num_parameters():,} parameters | {ctx.tokens_per_step:,} tokens per "
            f"step ({ctx.accum} x {tc.batch_size} x {ctx.row_tokens or ctx.run.model.block_size}"
            f"{f' x {ctx.ranks.world_size} ranks' if ctx.ranks.world_size > 1 else ''}) | device "
            f"{ctx.device}, {ctx.dtype}{' (auto)' if tc.dtype == 'auto' else ''} | "
            f"{tc.optimizer}, {tc.schedule} schedule | measured peak "
            f"{self.peak / 1e9:,.1f} GFLOP/s"
        )
        self.bar = progress(
            total=tc.max_steps,
            initial=ctx.state.step,
            desc="training",
            unit="step",
            mininterval=1.0,
        )
        self.start = self.window_start = time.perf_counter()

    def on_compiled(self, ctx: TrainingContext, seconds: float) -> None:
        self.append({"step": ctx.state.step, "compile_s": seconds})
        status(f"torch.compile: the first step took {seconds:.1f}s (compiling)")
        self.window_start = time.perf_counter()  # keep compiling out of tokens/s

    def on_step(self, ctx: TrainingContext, report: StepReport) -> None:
        tc, state = ctx.config, ctx.state
        self.window_tokens += ctx.tokens_per_step
        self.bar.update(1)
        if not is_due(report.step, tc.log_interval, tc.max_steps):
            return
        now = time.perf_counter()
        tokens_per_s = self.window_tokens / max(now - self.window_start, 1e-9)
        self.window_tokens, self.window_start = 0, now
        flops_per_s = tokens_per_s * self.step_flops
        if flops_per_s > self.peak:  # the cached peak was measured too low
            self.peak = raise_peak(ctx.device, self.peak_dtype, flops_per_s)
        remaining = (tc.max_steps - report.step) * ctx.tokens_per_step
        self.append(
            {
                "step": report.step,
                "train_loss": report.train_loss,
                "lr": report.lr,
                "grad_norm": report.grad_norm,
                "tokens_per_s": tokens_per_s,
                **(
                    {"rank_tokens_per_s": report.rank_tokens_per_s}
                    if report.rank_tokens_per_s and len(report.rank_tokens_per_s) > 1
                    else {}
                ),
                "flops_per_s": flops_per_s,
                "mfu": flops_per_s / self.peak if self.peak > 0 else math.nan,
                "tokens_seen": state.tokens_seen,
                "elapsed_s": now - self.start,
                "eta_s": remaining / max(tokens_per_s, 1e-9),
                "skipped_steps": state.extra["skipped_steps"],
            }
        )
        self.bar.set_postfix(
            loss=f"{report.train_loss:.3f}",
            tok_s=f"{tokens_per_s:,.0f}",
            mfu=f"{flops_per_s / self.peak:.1%}" if self.peak > 0 else "?",
            lr=f"{report.lr:.1e}",
        )

    def on_skipped_step(self, ctx: TrainingContext, bad_in_a_row: int) -> None:
        self.append(
            {
                "step": ctx.state.step,
                "skipped_step": True,
                "bad_steps_in_a_row": bad_in_a_row,
                "skipped_steps": ctx.state.extra["skipped_steps"],
            }
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.metrics.close()


class Evaluation(TrainingHook):
    """The validation loss every train.eval_interval steps and at the last, logged, printed
    and kept as the best if it is (so CheckpointPolicy keeps that checkpoint). Ranks other
    than the main one (log None) take part when the model is split among them."""

    def __init__(self, log: TrainingLog | None) -> None:
        self.log = log

    def on_step(self, ctx: TrainingContext, report: StepReport) -> None:
        tc, state = ctx.config, ctx.state
        if not is_due(report.step, tc.eval_interval, tc.max_steps):
            return
        metrics = validation_metrics(ctx)
        loss = metrics["val_loss"]
        if ctx.sharded:
            # Which checkpoint is the best is decided on one number, the same on every rank.
            loss = metrics["val_loss"] = broadcast_from_main(loss, ctx.ranks)
        if state.best_val_loss is None or loss < state.best_val_loss:
            state.best_val_loss, state.best_step = loss, report.step
        ctx.val_loss = loss
        if self.log is None:
            return
        self.log.append({"step": report.step, **metrics})
        shown = " | ".join(
            f"{name.replace('_', ' ')} {value:.4f}" for name, value in metrics.items()
        )
        status(f"step {report.step:>6,}: train loss {report.train_loss:.4f} | {shown}")


def validation_metrics(ctx: TrainingContext) -> dict[str, float]:
    """The run's validation: a fine-tuning task's own metrics, or the loss and perplexity on
    the validation windows."""
    if ctx.validate is not None:
        metrics = ctx.validate()
        assert "val_loss" in metrics, "a validation must report val_loss"
        return metrics
    assert ctx.val_batches is not None
    batches = ctx.val_batches.eval_batches(ctx.config.eval_batches)
    loss = evaluate_loss(ctx.model, batches, ctx.autocast, ctx.eval_loss_fn)
    return {"val_loss": loss, "val_perplexity": perplexity(loss)}


class CheckpointPolicy(TrainingHook):
    """A checkpoint every train.checkpoint_interval steps, at the last step, at a new best
    validation loss (with train.keep_best, which keeps it), and when asked to stop. A split
    model is gathered whole by every rank, and saved by rank 0, as a one-process run's is."""

    def __init__(self) -> None:
        self.saved_step: int | None = None

    def on_step(self, ctx: TrainingContext, report: StepReport) -> None:
        tc, state = ctx.config, ctx.state
        due = is_due(report.step, tc.checkpoint_interval, tc.max_steps)
        # A best checkpoint is kept, so it must exist.
        new_best = tc.keep_best and state.best_step == report.step
        if due or new_best:
            self.save(ctx)

    def on_stop(self, ctx: TrainingContext) -> None:
        if self.saved_step != ctx.state.step:
            self.save(ctx)

    def save(self, ctx: TrainingContext) -> Path:
        tc, state = ctx.config, ctx.state
        model: Any = ctx.model
        optimizer: Any = ctx.optimizer
        if ctx.sharded:  # every rank takes part in gathering; rank 0 keeps the result
            main = ctx.ranks.is_main
            gpt = cast(GPT, ctx.model)  # only pretraining splits a model
            model = gather_model_tensors(gpt, ctx.tp, keep=main)
            optimizer = gather_optimizer_state(ctx.optimizer, gpt, ctx.tp, keep=main)
        elif ctx.checkpoint_weights is not None:
            model = ctx.checkpoint_weights()
        self.saved_step = state.step
        if not ctx.ranks.is_main:
            ctx.last_checkpoint = checkpoint_dir(ctx.paths.root, state.step)
            return ctx.last_checkpoint
        ctx.last_checkpoint = save_checkpoint(
            ctx.paths.root,
            model,
            optimizer,
            state,
            ctx.rng_states(),
            keep=tc.keep_checkpoints,
            protect=state.best_step if tc.keep_best else None,
        )
        return ctx.last_checkpoint


class Plots(TrainingHook):
    """loss.png and lr.png from metrics.jsonl once the loop is over."""

    def on_end(self, ctx: TrainingContext) -> None:
        paths = ctx.paths
        if paths.metrics.is_file():
            label = ctx.loss_label or TOKEN_LOSS
            plot_loss(paths.metrics, paths.loss_plot, title=ctx.run.name, loss_label=label)
            plot_learning_rate(paths.metrics, paths.lr_plot, title=ctx.run.name)


class Hooks(TrainingHook):
    """Several hooks called in order as one."""

    def __init__(self, hooks: list[TrainingHook]) -> None:
        self.hooks = hooks

    def on_start(self, ctx: TrainingContext) -> None:
        for hook in self.hooks:
            hook.on_start(ctx)

    def on_compiled(self, ctx: TrainingContext, seconds: float) -> None:
        for hook in self.hooks:
            hook.on_compiled(ctx, seconds)

    def on_step(self, ctx: TrainingContext, report: StepReport) -> None:
        for hook in self.hooks:
            hook.on_step(ctx, report)

    def on_skipped_step(self, ctx: TrainingContext, bad_in_a_row: int) -> None:
        for hook in self.hooks:
            hook.on_skipped_step(ctx, bad_in_a_row)

    def on_stop(self, ctx: TrainingContext) -> None:
        for hook in self.hooks:
            hook.on_stop(ctx)

    def on_end(self, ctx: TrainingContext) -> None:
        for hook in self.hooks:
            hook.on_end(ctx)

    def close(self) -> None:
        for hook in self.hooks:
            hook.close()


def training_hooks(ctx: TrainingContext, resume: bool) -> Hooks:
    """The hooks of a run: all of them on the main rank; on the others none (their output,
    files and evaluation would only repeat the main rank's), or, when the model is split among
    the ranks, the evaluation and checkpoints they must take part in."""
    if not ctx.ranks.is_main:
        return Hooks([Evaluation(None), CheckpointPolicy()] if ctx.sharded else [])
    log = TrainingLog(ctx, resume)
    return Hooks([log, Evaluation(log), CheckpointPolicy(), Plots()])
