"""Training-step throughput: scratchlm's GPT + AdamW against transformers' GPT2LMHeadModel.

    python benchmarks/train_throughput.py [--steps 3] [--rounds 2] [--dtypes float32,bfloat16]
                                          [--bf16-batch 16] [--threads 2] [--json out.json]

Both sides train the same GPT-2-shaped model (6 layers, 384 wide, 6 heads, context 256, vocab
8,192, learned positions, LayerNorm, GELU, tied head) from the same weights: ours is built
first and its tensors are copied into GPT2LMHeadModel (hf_format.gpt2_state_dict_from_gpt).
Before any timing, both compute the loss of the same batch; the script checks that they agree.

One training step is what scratchlm's loop does per optimizer step: forward, cross-entropy,
backward, clip the gradient norm to 1.0, optimizer step, zero_grad(set_to_none=True).

- scratchlm: `GPT` and the optimizer `build_optimizer` makes from train.optimizer = "adamw"
  (our foreach AdamW, decay on matrices only);
- transformers: `GPT2LMHeadModel` with a plain `torch.optim.AdamW(model.parameters())` (its
  default implementation for CPU tensors), lr 1e-3, betas (0.9, 0.95), weight decay 0.1. Its
  loss is `F.cross_entropy` on the logits, the same call as ours (no label shifting copy).

Timing: --rounds rounds; each runs --steps steps of each side, the sides taking turns going
first, and each side's best step is kept, so a burst of load from other work on the machine
hits both sides and is mostly filtered out. tokens/s = batch * context / best step seconds.
The load average is printed before and after: read the ratio, not the absolute numbers, when
it is high.

bf16 rows use torch.autocast(bfloat16) on both sides (fp32 master weights). On a CPU without
bf16 instructions (AVX2 only) bf16 matmuls are emulated and ~40x slower than fp32, so a full
batch takes minutes per step; --bf16-batch shrinks the bf16 rows' batch (the same for both).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from scratchlm.config import ModelConfig, TrainConfig
from scratchlm.model import GPT
from scratchlm.model.hf_format import gpt2_state_dict_from_gpt, model_config_to_gpt2_config
from scratchlm.train.optimizer import build_optimizer

MODEL = ModelConfig(vocab_size=8192, block_size=256, n_layer=6, n_head=6, n_embd=384)
LR, BETAS, WEIGHT_DECAY, CLIP = 1e-3, (0.9, 0.95), 0.1, 1.0
SEED = 1337

Step = Callable[[Tensor, Tensor], float]


@dataclass
class Row:
    dtype: str
    batch: int
    first_loss_ours: float
    first_loss_hf: float
    ours_s: float
    hf_s: float

    @property
    def tokens(self) -> int:
        return self.batch * MODEL.block_size

    @property
    def ratio(self) -> float:
        return self.hf_s / self.ours_s  # ours / HF in tokens per second


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


def make_steps(ours: GPT, hf: torch.nn.Module, autocast: Any) -> tuple[Step, Step]:
    ours_opt = build_optimizer(
        ours, TrainConfig(learning_rate=LR, beta1=BETAS[0], beta2=BETAS[1], weight_decay=0.1)
    )
    for group in ours_opt.param_groups:
        group["lr"] = group["base_lr"]
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)

    def ours_step(x: Tensor, y: Tensor) -> float:
        with autocast():
            _, loss = ours(x, y)
        assert loss is not None
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), CLIP)
        ours_opt.step()
        ours_opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def hf_step(x: Tensor, y: Tensor) -> float:
        with autocast():
            logits = hf(input_ids=x).logits
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), CLIP)
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return ours_step, hf_step


def measure(dtype: str, batch: int, steps: int, rounds: int) -> Row:
    torch.manual_seed(SEED)
    ours = GPT(MODEL).train()
    hf = build_hf(ours).train()
    if dtype == "bfloat16":

        def autocast() -> Any:
            return torch.autocast("cpu", dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext
    ours_step, hf_step = make_steps(ours, hf, autocast)
    generator = torch.Generator().manual_seed(SEED)

    def batch_of_tokens() -> tuple[Tensor, Tensor]:
        tokens = torch.randint(
            0, MODEL.vocab_size, (batch, MODEL.block_size + 1), generator=generator
        )
        return tokens[:, :-1], tokens[:, 1:]

    # The first step (the same batch for both) doubles as the warm-up and the agreement check.
    x, y = batch_of_tokens()
    first_ours, first_hf = ours_step(x, y), hf_step(x, y)
    best = {"ours": float("inf"), "hf": float("inf")}
    contenders: list[tuple[str, Step]] = [("ours", ours_step), ("hf", hf_step)]
    for r in range(rounds):
        for name, step in contenders if r % 2 == 0 else contenders[::-1]:
            for _ in range(steps):
                x, y = batch_of_tokens()
                start = time.perf_counter()
                step(x, y)
                best[name] = min(best[name], time.perf_counter() - start)
        print(
            f"  {dtype} round {r + 1}/{rounds}: best step so far ours {best['ours']:.2f}s, "
            f"HF {best['hf']:.2f}s (load {os.getloadavg()[0]:.1f})",
            flush=True,
        )
    return Row(dtype, batch, first_ours, first_hf, best["ours"], best["hf"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--bf16-batch", type=int, default=16, help="batch of the bf16 rows")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import transformers

    def load() -> str:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())

    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{args.threads} threads, torch {torch.__version__} "
        f"({torch.backends.cpu.get_cpu_capability()}), transformers {transformers.__version__}; "
        f"load average {load()}",
        flush=True,
    )
    rows = []
    for dtype in args.dtypes.split(","):
        batch = args.bf16_batch if dtype == "bfloat16" else args.batch
        rows.append(measure(dtype, batch, args.steps, args.rounds))

    print(f"\nload average at the end {load()}")
    print(
        f"{'dtype':<9} {'batch':>5} {'first loss ours / HF':>22} {'ours tok/s':>11} "
        f"{'HF tok/s':>9} {'ours / HF':>9}"
    )
    for row in rows:
        agree = abs(row.first_loss_ours - row.first_loss_hf) < 1e-3 * abs(row.first_loss_hf)
        print(
            f"{row.dtype:<9} {row.batch:>5} "
            f"{row.first_loss_ours:>9.5f} / {row.first_loss_hf:.5f}{'' if agree else ' !'} "
            f"{row.tokens / row.ours_s:>11,.0f} {row.tokens / row.hf_s:>9,.0f} "
            f"{row.ratio:>8.2f}x"
        )
        if not agree:
            print(f"  ! the {row.dtype} first-step losses differ by more than 0.1%")
    if args.json:
        results: list[dict[str, Any]] = [
            {
                "dtype": r.dtype,
                "batch": r.batch,
                "context": MODEL.block_size,
                "first_loss_ours": r.first_loss_ours,
                "first_loss_hf": r.first_loss_hf,
                "ours_step_s": r.ours_s,
                "hf_step_s": r.hf_s,
                "ours_tokens_per_s": r.tokens / r.ours_s,
                "hf_tokens_per_s": r.tokens / r.hf_s,
                "ratio": r.ratio,
            }
            for r in rows
        ]
        with open(args.json, "w") as f:
            json.dump({"load_average_end": os.getloadavg(), "rows": results}, f, indent=2)


if __name__ == "__main__":
    main()
