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

    python benchmarks/inference.py [--rounds 3] [--new-tokens 32] [--threads N] [--json out]
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

from scratchlm.batch_generation import BatchGenerator
from scratchlm.inference_dtype import cast_for_inference, resolve_inference_dtype
from scratchlm.model import GPT
from scratchlm.model.gguf_runs import pretrained_run
from scratchlm.model.hf_format import save_hf_model
from scratchlm.run_dir import load_trained_model

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
    engine = BatchGenerator(model, prompts, n, temperature=0.0)
    out: list[list[int]] = [[] for _ in prompts]
    for step in engine.steps():
        for row, token in step:
            out[row].append(token)
    return out


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prefill-tokens", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: as is)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    _, tokenizer, model = load_trained_model(pretrained_run("smollm2-135m-instruct"))
    dtype = resolve_inference_dtype(args.dtype, torch.device("cpu"))
    cast_for_inference(model, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        save_hf_model(model, Path(tmp) / "hf")
        hf = transformers.LlamaForCausalLM.from_pretrained(Path(tmp) / "hf", dtype=dtype).eval()
    pad_id = tokenizer.special_tokens.get("<|endoftext|>", 0)

    prompts = [tokenizer.encode(p, allowed_special="none") for p in PROMPTS]
    long_text = " ".join(PROMPTS) * 40
    long_prompt = tokenizer.encode(long_text, allowed_special="none")[: args.prefill_tokens]
    n = args.new_tokens

    runners: dict[str, Callable[[list[list[int]], int], list[list[int]]]] = {
        "scratchlm": lambda p, k: ours_generate(model, p, k),
        "transformers": lambda p, k: hf_generate(hf, p, k, pad_id),
    }
    cases = {"batch 1": prompts[:1], "batch 8": prompts}
    best: dict[str, float] = {}

    def keep(key: str, seconds: float) -> None:
        best[key] = min(best.get(key, float("inf")), seconds)

    outputs: dict[str, dict[str, list[list[int]]]] = {case: {} for case in cases}
    for name, run in runners.items():  # warm-up, and the tokens to compare
        for case, ps in cases.items():
            outputs[case][name] = run(ps, n)
        run([long_prompt], 1)
    for _ in range(args.rounds):  # interleaved: a burst of load hits both alike
        for name, run in runners.items():
            for case, ps in cases.items():
                keep(f"{name} {case} n", timed(lambda: run(ps, n)))  # noqa: B023
                keep(f"{name} {case} 1", timed(lambda: run(ps, 1)))  # noqa: B023
            keep(f"{name} prefill", timed(lambda: run([long_prompt], 1)))  # noqa: B023

    bandwidth = memory_bandwidth()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bound = bandwidth / weight_bytes
    load = os.getloadavg()
    print(
        f"SmolLM2-135M-Instruct, {str(dtype).removeprefix('torch.')}, greedy, KV cache; "
        f"{torch.get_num_threads()} threads; torch {torch.__version__}, transformers "
        f"{transformers.__version__}; best of {args.rounds} interleaved rounds; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    results: dict[str, Any] = {"load_average": load, "threads": torch.get_num_threads()}
    print(f"{'':24}{'scratchlm':>12}{'transformers':>14}{'ratio':>8}  same tokens")
    for case, ps in cases.items():
        rate = {
            name: len(ps) * (n - 1) / (best[f"{name} {case} n"] - best[f"{name} {case} 1"])
            for name in runners
        }
        same = outputs[case]["scratchlm"] == outputs[case]["transformers"]
        ratio = rate["scratchlm"] / rate["transformers"]
        print(
            f"{'decode tok/s, ' + case:24}{rate['scratchlm']:12.1f}{rate['transformers']:14.1f}"
            f"{ratio:7.2f}x  {same}"
        )
        results[f"decode {case}"] = {**rate, "ratio": ratio, "same_tokens": same}
    prefill = {name: len(long_prompt) / best[f"{name} prefill"] for name in runners}
    ratio = prefill["scratchlm"] / prefill["transformers"]
    label = f"prefill tok/s, {len(long_prompt)}"
    print(f"{label:24}{prefill['scratchlm']:12.1f}{prefill['transformers']:14.1f}{ratio:7.2f}x")
    results["prefill"] = {**prefill, "ratio": ratio}
    ours1 = results["decode batch 1"]["scratchlm"]
    print(
        f"memory bandwidth (sum of 512 MB) {bandwidth / 1e9:.1f} GB/s; weights "
        f"{weight_bytes / 1e6:.0f} MB read per decode step -> at most {bound:.1f} tok/s at "
        f"batch 1; scratchlm reaches {ours1 / bound:.0%} of it"
    )
    results["bandwidth_GBps"] = bandwidth / 1e9
    results["weight_MB"] = weight_bytes / 1e6
    results["bound_tok_s"] = bound
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
