"""Peak memory (RSS) of a training step of GPT-2 124M, with and without activation checkpointing.

    python benchmarks/train_memory.py [--batch 1] [--context 1024] [--threads 2] [--unfused]
        [--json out.json]

Each configuration runs in a child process of its own (a fresh interpreter, so one run's freed
memory cannot hide the next one's peak), which builds `model_preset("gpt2-124m")` at the given
context, our AdamW (`build_optimizer`), and takes one fp32 training step on random tokens:
forward, cross-entropy, backward, clip to 1.0, optimizer step, the loss computed as `scratchlm
train` computes it (train/step.py's make_loss_fn: the fused head + cross-entropy by default,
`--unfused` for forward's plain logits and cross-entropy). It reports the process's peak
resident set (VmHWM from /proc/self/status) at three points:

- after building the model and optimizer (the weights: 124M x 4 bytes, ~0.5 GB);
- after the backward pass: the peak of forward + backward (weights, gradients, activations);
- after the optimizer step: the peak of the whole step (its first step also allocates AdamW's
  two moment buffers, another 2 x 0.5 GB).

Activation checkpointing (model.activation_checkpointing) keeps only each block's input and
recomputes the block in the backward pass, so it shrinks the forward + backward peak; the
optimizer's first step can then be the larger peak. The step's time is printed too (not a
benchmark of speed: recomputation costs about one more forward).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

from machine import cpu_description, load_average

GIB = 1024**3


def vm_hwm() -> int:
    """The peak resident set size of this process so far, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(
    batch: int, context: int, checkpointing: bool, threads: int, fused: bool
) -> dict[str, Any]:
    import torch

    from scratchlm.model import GPT
    from scratchlm.model.config import model_preset
    from scratchlm.train.config import TrainConfig
    from scratchlm.train.optimizer import build_optimizer
    from scratchlm.train.step import make_loss_fn

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = model_preset("gpt2-124m", block_size=context, activation_checkpointing=checkpointing)
    model = GPT(config).train()
    train_config = TrainConfig(fused_loss=fused)
    optimizer = build_optimizer(model, train_config)
    loss_fn = make_loss_fn(model, train_config)
    tokens = torch.randint(0, config.vocab_size, (batch, context + 1))
    built = vm_hwm()
    start = time.perf_counter()
    loss = loss_fn(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    backward = vm_hwm()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {
        "checkpointing": checkpointing,
        "built_bytes": built,
        "forward_backward_peak_bytes": backward,
        "step_peak_bytes": vm_hwm(),
        "step_s": time.perf_counter() - start,
        "loss": float(loss.detach()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--unfused", action="store_true", help="forward's logits + cross-entropy")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child(args.batch, args.context, args.child == "on", args.threads, not args.unfused)
        print(json.dumps(result))
        return

    load = load_average()
    print(
        f"{cpu_description()}; gpt2-124m, "
        f"batch {args.batch}, context {args.context}, fp32, "
        f"{'unfused' if args.unfused else 'fused'} loss; load average {load}",
        flush=True,
    )
    results = {}
    for flag in ("off", "on"):
        command = [sys.executable, __file__, "--child", flag]
        command += ["--batch", str(args.batch), "--context", str(args.context)]
        command += ["--threads", str(args.threads)] + (["--unfused"] if args.unfused else [])
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[flag] = json.loads(out.strip().splitlines()[-1])
        r = results[flag]
        print(f"  checkpointing {flag}: step {r['step_s']:.1f}s, loss {r['loss']:.4f}", flush=True)

    off, on = results["off"], results["on"]
    print(f"\n{'peak RSS (GiB)':<34} {'without':>8} {'with':>8} {'with / without':>15}")
    for key, label in (
        ("built_bytes", "model + optimizer built"),
        ("forward_backward_peak_bytes", "forward + backward"),
        ("step_peak_bytes", "whole step (incl. AdamW's state)"),
    ):
        print(
            f"{label:<34} {off[key] / GIB:>8.2f} {on[key] / GIB:>8.2f} {on[key] / off[key]:>14.2f}x"
        )
    activations_off = off["forward_backward_peak_bytes"] - off["built_bytes"]
    activations_on = on["forward_backward_peak_bytes"] - on["built_bytes"]
    print(
        f"{'forward + backward above the model':<34} {activations_off / GIB:>8.2f} "
        f"{activations_on / GIB:>8.2f} {activations_on / activations_off:>14.2f}x"
    )
    print(f"load average at the end {load_average()}")
    if args.json:
        with open(args.json, "w") as f:
            # The machine and date travel with the numbers (the book prints them beside them).
            record = {"machine": cpu_description(), "date": time.strftime("%Y-%m-%d %H:%M %Z")}
            json.dump({**record, "args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
