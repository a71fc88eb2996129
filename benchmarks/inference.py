"""Inference speed: scratchlm's decoding engine against transformers' generate(), side by side.

Both run SmolLM2-135M-Instruct with the same weights (our imported run, and LlamaForCausalLM
loaded from our Hugging Face export of it), in the same dtype, greedy, with a KV cache
(use_cache=True). Reported, best of interleaved rounds (the machine may be shared):

- decode tokens/s at batch 1 and batch 8 (the time of n new tokens less the time of 1, i.e.
  without the prefill), and the ratio ours / theirs;
- prefill tokens/s of a 512-token prompt (generating 1 token);
- the memory-bandwidth bound of decoding: every step reads all the weights once, so at batch 1
  tokens/s can be at most (measured bandwidth) / (bytes of weights); and how close we get;
- whether both produced the same tokens.

- weight-only quantised rows (int4 as GGUF Q4_1 in groups of 32, int8 per channel; bfloat16
  activations), scratchlm only: transformers has no CPU kernel for these, so they are compared
  with the fastest transformers row, and their tokens with transformers in float32.

    python benchmarks/inference.py [--rounds 3] [--new-tokens 32] [--threads N]
        [--dtypes float32,bfloat16] [--quantize int4,int8] [--json out]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from machine import cpu_description

from scratchlm.inference.dtype import cast_for_inference, resolve_inference_dtype
from scratchlm.inference.generate import generate_batch
from scratchlm.model import GPT
from scratchlm.model.hf_format import save_hf_model
from scratchlm.runs.loading import load_trained_model
from scratchlm.runs.pretrained import pretrained_run

PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "The three primary colours are red,",
    "Water boils at",
    "In 1492, Columbus",
    "A haiku about the sea:\n",
    "The quick brown fox jumps over the lazy dog. The quick brown fox",
]


def ours_generate(model: GPT, prompts: list[list[int]], n: int) -> list[list[int]]:
    return generate_batch(model, prompts, n, temperature=0.0)


def hf_generate(hf: Any, prompts: list[list[int]], n: int, pad_id: int) -> list[list[int]]:
    longest = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (longest - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    with torch.inference_mode():
        out = hf.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=n,
            min_new_tokens=n,  # no early stop at EOS: both make exactly n tokens
            do_sample=False,
            use_cache=True,
            pad_token_id=pad_id,
        )
    return [row[longest:].tolist() for row in out]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def memory_bandwidth(mb: int = 512, repeats: int = 5) -> float:
    """Read bandwidth in bytes/s: the best of `repeats` sums of a tensor far larger than cache."""
    x = torch.ones(mb * 2**20 // 4)
    best = min(timed(lambda: x.sum()) for _ in range(repeats))
    return x.numel() * 4 / best


INTS = (torch.int8, torch.uint8)  # the dtypes of quantised weights


def model_bytes_per_step(model: GPT) -> int:
    """Bytes of weights one decode step reads: every parameter and quantised buffer once (a
    tied embedding/head matrix once: the lookup reads a single row of it)."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in seen or t.dim() < 1 or not (t.dtype.is_floating_point or t.dtype in INTS):
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    tables = [getattr(model, name, None) for name in ("rope_cos", "rope_sin", "pos_table")]
    total -= sum(t.numel() * t.element_size() for t in tables if t is not None)  # one row each
    return total


def first_difference(a: list[list[int]], b: list[list[int]]) -> float:
    """Mean over rows of how many tokens a and b share before they first differ."""
    shared = []
    for x, y in zip(a, b, strict=True):
        k = next((i for i, (s, t) in enumerate(zip(x, y, strict=False)) if s != t), len(x))
        shared.append(k)
    return sum(shared) / len(shared)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prefill-tokens", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: as is)")
    parser.add_argument(
        "--dtypes", default="float32,bfloat16", help="comma-separated; each runs on both sides"
    )
    parser.add_argument(
        "--quantize",
        default="int4,int8",
        help="comma-separated scratchlm-only rows (bfloat16 activations); '' for none",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    from scratchlm.inference.quantize import quantize_model

    run = pretrained_run("smollm2-135m-instruct")
    _, tokenizer, reference = load_trained_model(run)
    ours: dict[str, GPT] = {}
    theirs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        save_hf_model(reference, Path(tmp) / "hf")
        for name in args.dtypes.split(","):
            dtype = resolve_inference_dtype(name, torch.device("cpu"))
            label = str(dtype).removeprefix("torch.")
            ours[label] = cast_for_inference(load_trained_model(run)[2], dtype).eval()
            theirs[label] = transformers.LlamaForCausalLM.from_pretrained(
                Path(tmp) / "hf", dtype=dtype
            ).eval()
    for mode in filter(None, args.quantize.split(",")):
        model = cast_for_inference(load_trained_model(run)[2], torch.bfloat16)
        ours[f"{mode} weights"] = quantize_model(model, mode, torch.bfloat16)
    del reference
    pad_id = tokenizer.special_tokens.get("<|endoftext|>", 0)

    prompts = [tokenizer.encode(p, allowed_special="none") for p in PROMPTS]
    long_text = " ".join(PROMPTS) * 40
    long_prompt = tokenizer.encode(long_text, allowed_special="none")[: args.prefill_tokens]
    n = args.new_tokens

    runners: dict[str, Callable[[list[list[int]], int], list[list[int]]]] = {}
    for label, hf in theirs.items():
        runners[f"transformers {label}"] = lambda p, k, hf=hf: hf_generate(hf, p, k, pad_id)
    for label, model in ours.items():
        runners[f"scratchlm {label}"] = lambda p, k, model=model: ours_generate(model, p, k)
    cases = {"batch 1": prompts[:1], "batch 8": prompts}
    best: dict[str, float] = {}

    def keep(key: str, seconds: float) -> None:
        best[key] = min(best.get(key, float("inf")), seconds)

    outputs: dict[str, dict[str, list[list[int]]]] = {case: {} for case in cases}
    for name, generate in runners.items():  # warm-up, and the tokens to compare
        for case, ps in cases.items():
            outputs[case][name] = generate(ps, n)
        generate([long_prompt], 1)
    for _ in range(args.rounds):  # interleaved: a burst of load hits all alike
        for name, generate in runners.items():
            for case, ps in cases.items():
                keep(f"{name} {case} n", timed(lambda: generate(ps, n)))  # noqa: B023
                keep(f"{name} {case} 1", timed(lambda: generate(ps, 1)))  # noqa: B023
            keep(f"{name} prefill", timed(lambda: generate([long_prompt], 1)))  # noqa: B023

    bandwidth = memory_bandwidth()
    load = os.getloadavg()
    print(
        f"SmolLM2-135M-Instruct, greedy, KV cache; {torch.get_num_threads()} threads; torch "
        f"{torch.__version__}, transformers {transformers.__version__}; best of {args.rounds} "
        f"interleaved rounds; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    results: dict[str, Any] = {
        "load_average": load,
        "threads": torch.get_num_threads(),
        "bandwidth_GBps": bandwidth / 1e9,
    }
    # Each row against transformers in its own dtype where there is one, and against the
    # fastest transformers row (the quantised rows have no transformers counterpart).
    rates: dict[str, dict[str, float]] = {}
    for case, ps in cases.items():
        rates[case] = {
            name: len(ps) * (n - 1) / (best[f"{name} {case} n"] - best[f"{name} {case} 1"])
            for name in runners
        }
    rates["prefill"] = {name: len(long_prompt) / best[f"{name} prefill"] for name in runners}
    print(
        f"{'':28}{'decode b1':>10}{'decode b8':>10}{'prefill':>9}"
        f"{'weights MB':>11}{'bound b1':>9}  tokens = transformers (of {n})"
    )
    hf_fp32 = "transformers float32" if "transformers float32" in runners else None
    for name in runners:
        label = name.split(" ", 1)[1]
        model_bytes = (
            model_bytes_per_step(ours[label])
            if name.startswith("scratchlm")
            else sum(p.numel() * p.element_size() for p in theirs[label].parameters())
        )
        bound = bandwidth / model_bytes
        same_as = f"transformers {label}" if f"transformers {label}" in runners else hf_fp32
        agree = (
            first_difference(outputs["batch 1"][name], outputs["batch 1"][same_as])
            if same_as and same_as != name
            else float("nan")
        )
        row = {case: rates[case][name] for case in rates}
        print(
            f"{name:28}{row['batch 1']:10.1f}{row['batch 8']:10.1f}{row['prefill']:9.0f}"
            f"{model_bytes / 1e6:11.0f}{bound:9.1f}  "
            + (f"{agree:.0f} (vs {same_as.split(' ', 1)[1]})" if agree == agree else "")
        )
        results[name] = {**row, "weight_MB": model_bytes / 1e6, "bound_tok_s": bound}
    print("ratios, scratchlm / transformers:")
    fastest_hf = {
        case: max((v, k) for k, v in rates[case].items() if k.startswith("transformers"))
        for case in rates
    }
    for name in runners:
        if not name.startswith("scratchlm"):
            continue
        label = name.split(" ", 1)[1]
        twin = f"transformers {label}"
        parts = []
        for case in rates:
            mine = rates[case][name]
            same = f"{mine / rates[case][twin]:.2f}x same dtype, " if twin in runners else ""
            top, top_name = fastest_hf[case]
            parts.append(f"{case} {same}{mine / top:.2f}x vs {top_name.split(' ', 1)[1]}")
        print(f"  {name}: " + "; ".join(parts))
        results[name]["ratios"] = parts
    print(
        f"memory bandwidth (sum of 512 MB): {bandwidth / 1e9:.1f} GB/s; 'bound b1' = bandwidth "
        "/ weight bytes read per decode step"
    )
    if args.json:
        # The machine and date travel with the numbers (the book prints them beside them).
        record = {"machine": cpu_description(), "date": time.strftime("%Y-%m-%d %H:%M %Z")}
        args.json.write_text(json.dumps({**record, **results}, indent=2))


if __name__ == "__main__":
    main()
