"""Training-step throughput: scratchlm's GPT + AdamW against transformers' GPT2LMHeadModel.

    python benchmarks/train_throughput.py [--steps 3] [--rounds 2] [--dtypes float32,bfloat16]
                                          [--bf16-batch 16] [--threads 2] [--json out.json]
                                          [--ours ours,ours-unfused,ours-compile,...]

Both sides train the same GPT-2-shaped model (6 layers, 384 wide, 6 heads, context 256, vocab
8,192, learned positions, LayerNorm, GELU, tied head) from the same weights: ours is built
first and its tensors are copied into GPT2LMHeadModel (hf_format.gpt2_state_dict_from_gpt).
The first step of every contender takes the same batch; the script checks their losses agree.

One training step is forward, cross-entropy, backward, clip the gradient norm to 1.0,
optimizer step, zero_grad(set_to_none=True):

- scratchlm: exactly what `scratchlm train` runs per optimizer step, through the loop's own
  functions (train/step.py: make_loss_fn, forward_backward, clip_grad_norm) and the optimizer
  build_optimizer makes for train.optimizer = "adamw" (our foreach AdamW, decay on matrices
  only). --ours picks which train.* settings to time, each a contender of its own:
  "ours" (the defaults: train.fused_loss = true, the fused chunked head + cross-entropy),
  "ours-unfused" (train.fused_loss = false: forward's logits + F.cross_entropy),
  "ours-compile" and "ours-compile-unfused" (train.compile = true; their first step, which
  compiles, is reported in its own column and never counted in tokens/s);
- transformers: `GPT2LMHeadModel` in a plain eager loop with `torch.optim.AdamW(model.parameters())`
  (its default implementation for CPU tensors), lr 1e-3, betas (0.9, 0.95), weight decay 0.1,
  loss `F.cross_entropy` on the logits.

Timing: --rounds rounds; each runs --steps steps of every contender, the order rotating from
round to round, and each contender's best step is kept, so a burst of load from other work on
the machine hits every side and is mostly filtered out. tokens/s = batch * context / best
step seconds. The load average is printed before and after: read the ratios, not the absolute
numbers, when it is high.

bf16 rows use torch.autocast(bfloat16) on both sides (fp32 master weights). On a CPU without
bf16 instructions (AVX2 only) bf16 matmuls are emulated and ~40x slower than fp32, so a full
batch takes minutes per step; --bf16-batch shrinks the bf16 rows' batch (the same for all).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from machine import cpu_description, load_average
from torch import Tensor

from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig
from scratchlm.model.hf_format import gpt2_state_dict_from_gpt, model_config_to_gpt2_config
from scratchlm.train.config import TrainConfig
from scratchlm.train.optimizer import build_optimizer
from scratchlm.train.step import clip_grad_norm, forward_backward, make_loss_fn

MODEL = ModelConfig(vocab_size=8192, block_size=256, n_layer=6, n_head=6, n_embd=384)
LR, BETAS, WEIGHT_DECAY, CLIP = 1e-3, (0.9, 0.95), 0.1, 1.0
SEED = 1337

# Our contenders: train.* settings of a real run (see --ours). "ours" is the default config.
VARIANTS: dict[str, dict[str, Any]] = {
    "ours": {},
    "ours-unfused": {"fused_loss": False},
    "ours-compile": {"compile": True},
    "ours-compile-unfused": {"compile": True, "fused_loss": False},
}

Step = Callable[[Tensor, Tensor], float]


@dataclass
class Row:
    dtype: str
    batch: int
    first_loss: dict[str, float]
    best_s: dict[str, float]  # each contender's best step
    first_step_s: dict[str, float]  # each contender's first step (compiling, when compiled)

    @property
    def tokens(self) -> int:
        return self.batch * MODEL.block_size

    def ratio(self, name: str) -> float:
        return self.best_s["hf"] / self.best_s[name]  # ours / HF in tokens per second


def build_hf(ours: GPT) -> torch.nn.Module:
    import transformers

    hf_config = model_config_to_gpt2_config(ours.config)
    for key in ("architectures", "model_type", "torch_dtype"):
        hf_config.pop(key)
    # GPT-2's token ids for BOS/EOS lie outside an 8,192 vocabulary; nothing here uses them.
    config = transformers.GPT2Config(**hf_config, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    result = model.load_state_dict(gpt2_state_dict_from_gpt(ours), strict=False)
    # lm_head.weight is tied to wte in HF, so it is the only key the copy may leave out.
    assert set(result.missing_keys) <= {"lm_head.weight"} and not result.unexpected_keys, result
    model.tie_weights()
    return model


def our_step(model: GPT, variant: dict[str, Any], autocast: Any) -> Step:
    """One optimizer step exactly as `scratchlm train` takes it (train/step.py's functions)."""
    tc = TrainConfig(
        learning_rate=LR, beta1=BETAS[0], beta2=BETAS[1], weight_decay=WEIGHT_DECAY,
        grad_clip=CLIP, **variant,
    )  # fmt: skip
    optimizer = build_optimizer(model, tc)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"]
    loss_fn = make_loss_fn(model, tc)

    def step(x: Tensor, y: Tensor) -> float:
        loss = forward_backward(loss_fn, lambda: (x, y), 1, autocast())
        clip_grad_norm(model, tc.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def hf_step(hf: torch.nn.Module, autocast: Any) -> Step:
    """A plain eager AdamW loop over GPT2LMHeadModel."""
    optimizer = torch.optim.AdamW(hf.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)

    def step(x: Tensor, y: Tensor) -> float:
        with autocast():
            logits = hf(input_ids=x).logits
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def measure(dtype: str, batch: int, steps: int, rounds: int, variants: list[str]) -> Row:
    if dtype == "bfloat16":

        def autocast() -> Any:
            return torch.autocast("cpu", dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext
    contenders: list[tuple[str, Step]] = []
    for name in variants:
        # Each contender its own copy of the same initial weights.
        torch.manual_seed(SEED)
        ours = GPT(MODEL).train()
        if name == "hf":
            contenders.append(("hf", hf_step(build_hf(ours).train(), autocast)))
        else:
            contenders.append((name, our_step(ours, VARIANTS[name], autocast)))
    generator = torch.Generator().manual_seed(SEED)

    def batch_of_tokens() -> tuple[Tensor, Tensor]:
        tokens = torch.randint(
            0, MODEL.vocab_size, (batch, MODEL.block_size + 1), generator=generator
        )
        return tokens[:, :-1], tokens[:, 1:]

    # The first step (the same batch for all) is the warm-up (and torch.compile's compile) and
    # the agreement check.
    x, y = batch_of_tokens()
    first_loss, first_s = {}, {}
    for name, step in contenders:
        start = time.perf_counter()
        first_loss[name] = step(x, y)
        first_s[name] = time.perf_counter() - start
    best = {name: float("inf") for name, _ in contenders}
    for r in range(rounds):
        # Rotate who goes first, so a burst of load from other work hits every contender.
        shift = r % len(contenders)
        for name, step in contenders[shift:] + contenders[:shift]:
            for _ in range(steps):
                x, y = batch_of_tokens()
                start = time.perf_counter()
                step(x, y)
                best[name] = min(best[name], time.perf_counter() - start)
        so_far = ", ".join(f"{name} {s:.2f}s" for name, s in best.items())
        print(
            f"  {dtype} round {r + 1}/{rounds}: best step so far {so_far} "
            f"(load {os.getloadavg()[0]:.1f})",
            flush=True,
        )
    return Row(dtype, batch, first_loss, best, first_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--bf16-batch", type=int, default=16, help="batch of the bf16 rows")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--ours", default="ours",
        help=f"our contenders, comma-separated, from: {', '.join(VARIANTS)}",
    )  # fmt: skip
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import transformers

    def load() -> str:
        return load_average()

    print(
        f"{cpu_description()}, "
        f"{args.threads} threads, torch {torch.__version__} "
        f"({torch.backends.cpu.get_cpu_capability()}), transformers {transformers.__version__}; "
        f"load average {load()}",
        flush=True,
    )
    variants = ["hf", *args.ours.split(",")]
    for name in variants[1:]:
        if name not in VARIANTS:
            parser.error(f"--ours: unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    rows = []
    for dtype in args.dtypes.split(","):
        batch = args.bf16_batch if dtype == "bfloat16" else args.batch
        rows.append(measure(dtype, batch, args.steps, args.rounds, variants))

    print(f"\nload average at the end {load()}")
    print(
        f"{'dtype':<9} {'batch':>5} {'contender':<21} {'first loss':>10} {'first step':>10} "
        f"{'tok/s':>7} {'vs HF':>6}"
    )
    for row in rows:
        for name in variants:
            agree = abs(row.first_loss[name] - row.first_loss["hf"]) < 1e-3 * row.first_loss["hf"]
            print(
                f"{row.dtype:<9} {row.batch:>5} {name:<21} {row.first_loss[name]:>10.5f}"
                f"{'' if agree else '!'} {row.first_step_s[name]:>9.1f}s "
                f"{row.tokens / row.best_s[name]:>7,.0f} {row.ratio(name):>5.2f}x"
            )
            if not agree:
                print(f"  ! {name}'s first-step loss differs from HF's by more than 0.1%")
    if args.json:
        results: list[dict[str, Any]] = [
            {
                "dtype": r.dtype,
                "batch": r.batch,
                "context": MODEL.block_size,
                "first_loss": r.first_loss,
                "first_step_s": r.first_step_s,
                "best_step_s": r.best_s,
                "tokens_per_s": {n: r.tokens / s for n, s in r.best_s.items()},
                "ratio_vs_hf": {n: r.ratio(n) for n in r.best_s},
            }
            for r in rows
        ]
        with open(args.json, "w") as f:
            json.dump({"load_average_end": os.getloadavg(), "rows": results}, f, indent=2)


if __name__ == "__main__":
    main()
