"""The pretraining loop: next-token prediction with AdamW, warmup + cosine, clipping, accumulation.

One optimizer step = `grad_accum_steps` micro-batches of `batch_size` sequences, so the
effective batch is batch_size * grad_accum_steps * block_size tokens whatever fits in memory.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from scratchlm.config import RunConfig
from scratchlm.data.loader import TokenBatches
from scratchlm.devices import autocast_context, resolve_device
from scratchlm.eval.perplexity import evaluate_loss, perplexity
from scratchlm.model import GPT
from scratchlm.run_dir import RunPaths
from scratchlm.tokenizer import BPETokenizer
from scratchlm.train.checkpoint import (
    TrainingState,
    check_tokenizer_fingerprint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from scratchlm.train.interrupt import StopRequest
from scratchlm.train.metrics import MetricsLog, plot_loss
from scratchlm.train.optimizer import build_optimizer
from scratchlm.train.schedule import learning_rate_at

# The data loader's state (generator, epoch, cursor) is saved beside the torch RNG state, each
# tensor under this prefix.
LOADER_PREFIX = "train_loader."


@dataclass
class TrainResult:
    steps: int  # optimizer steps of the run so far
    new_steps: int  # of which this call made
    val_loss: float | None
    interrupted: bool
    checkpoint: Path | None
    seconds: float


def train_model(config: RunConfig, resume: bool = False, quiet: bool = False) -> TrainResult:
    """Train the model of a prepared run directory (see run_dir.prepare_run)."""
    paths = RunPaths(config.run_dir)
    tc = config.train
    device = resolve_device(tc.device)
    torch.manual_seed(tc.seed)

    model = GPT(config.model).to(device)
    optimizer = build_optimizer(model, tc)
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
    metrics = MetricsLog(paths.metrics)
    tokenizer_fingerprint = BPETokenizer.load(paths.tokenizer).fingerprint()
    state = TrainingState(extra={"tokenizer": tokenizer_fingerprint})
    if resume and list_checkpoints(paths.root):
        last = list_checkpoints(paths.root)[-1]
        state, rng = load_checkpoint(last, model, optimizer)
        check_tokenizer_fingerprint(last, state, tokenizer_fingerprint)
        state.extra["tokenizer"] = tokenizer_fingerprint
        torch.set_rng_state(rng["torch"])
        train_batches.load_state_dict(
            {
                k.removeprefix(LOADER_PREFIX): v
                for k, v in rng.items()
                if k.startswith(LOADER_PREFIX)
            }
        )
        metrics.truncate_after(state.step)
        if state.step >= tc.max_steps:
            print(
                f"{paths.root} is already trained to step {state.step:,} (train.max_steps is "
                f"{tc.max_steps:,}); nothing to do. Raise --train.max_steps to continue."
            )
            return TrainResult(state.step, 0, None, False, last, 0.0)
        print(f"resuming from {last} (step {state.step:,} of {tc.max_steps:,})")
    elif not resume:
        metrics.path.unlink(missing_ok=True)

    autocast = autocast_context(device, tc.dtype)
    tokens_per_step = tc.batch_size * tc.grad_accum_steps * config.model.block_size
    n_params = model.num_parameters()
    if not quiet:
        print(
            f"model: {n_params:,} parameters | {tokens_per_step:,} tokens per step | "
            f"device {device}, {tc.dtype}"
        )

    def rng_states() -> dict[str, torch.Tensor]:
        loader = {LOADER_PREFIX + k: v for k, v in train_batches.state_dict().items()}
        return {"torch": torch.get_rng_state(), **loader}

    def checkpoint() -> Path:
        return save_checkpoint(
            paths.root, model, optimizer, state, rng_states(), keep=tc.keep_checkpoints
        )

    def validate() -> float:
        loss = evaluate_loss(model, val_batches.eval_batches(tc.eval_batches), autocast)
        metrics.append({"step": state.step, "val_loss": loss, "val_perplexity": perplexity(loss)})
        if state.best_val_loss is None or loss < state.best_val_loss:
            state.best_val_loss = loss
        return loss

    model.train()
    start = time.perf_counter()
    first_step = state.step
    val_loss: float | None = None
    last_checkpoint: Path | None = None
    interrupted = False
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
    with StopRequest() as stop:
        while state.step < tc.max_steps:
            lr = learning_rate_at(state.step, tc)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            for _ in range(tc.grad_accum_steps):
                x, y = train_batches.next_batch()
                with autocast:
                    _, loss = model(x, y)
                # Each micro-batch contributes its share of the mean over the whole step.
                (loss / tc.grad_accum_steps).backward()
                loss_sum += float(loss.detach())
            if tc.grad_clip > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip))
            else:
                grad_norm = math.nan
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.tokens_seen += tokens_per_step
            window_tokens += tokens_per_step
            train_loss = loss_sum / tc.grad_accum_steps
            bar.update(1)

            if state.step % tc.log_interval == 0 or state.step == tc.max_steps:
                now = time.perf_counter()
                tokens_per_s = window_tokens / max(now - window_start, 1e-9)
                window_tokens, window_start = 0, now
                metrics.append(
                    {
                        "step": state.step,
                        "train_loss": train_loss,
                        "lr": lr,
                        "grad_norm": grad_norm,
                        "tokens_per_s": tokens_per_s,
                        "tokens_seen": state.tokens_seen,
                        "elapsed_s": now - start,
                    }
                )
                bar.set_postfix(
                    loss=f"{train_loss:.3f}", tok_s=f"{tokens_per_s:,.0f}", lr=f"{lr:.1e}"
                )
            if state.step % tc.eval_interval == 0 or state.step == tc.max_steps:
                val_loss = validate()
                bar.write(
                    f"step {state.step:>6,}: train loss {train_loss:.4f} | val loss {val_loss:.4f} "
                    f"| val perplexity {perplexity(val_loss):.2f}"
                )
            if stop.requested:
                last_checkpoint = checkpoint()
                interrupted = True
                break
            if state.step % tc.checkpoint_interval == 0 or state.step == tc.max_steps:
                last_checkpoint = checkpoint()
    bar.close()
    if paths.metrics.is_file():
        plot_loss(paths.metrics, paths.loss_plot, title=config.name)
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
