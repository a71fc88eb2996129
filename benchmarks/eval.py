"""Multiple-choice scoring throughput: scratchlm's adapter against lm-eval's own `hf` backend,
side by side on the same lm-eval task and the same weights.

The task is HellaSwag-shaped and built here, deterministically, from the King James Bible
corpus (`scratchlm data` fetches it): the context is a few consecutive verses, the choices are
the true next verse and three verses drawn from elsewhere; acc and acc_norm as lm-eval computes
them. The model is SmolLM2-135M-Instruct: ours is the imported run, theirs LlamaForCausalLM
loaded by lm-eval's hf backend from our Hugging Face export of that run, both float32, same
batch size. Both go through lm_eval.simple_evaluate, so lm-eval's own request building and
metric code is shared and only the model differs. Rounds alternate (the machine may be
shared); the best time of each is kept. Reported: requests (choices) per second, the ratio,
and whether both reached the same accuracy.

    python benchmarks/eval.py [--questions 100] [--rounds 2] [--batch-size 16] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_description, load_average

from scratchlm.data.sources import KingJamesBible
from scratchlm.eval.scoring import prefix_token
from scratchlm.inference.language_model import load_for_inference
from scratchlm.runs.hf import export_hf_run
from scratchlm.runs.pretrained import pretrained_run

CHOICES = 4
CONTEXT_VERSES = 2


def build_task(folder: Path, questions: int, seed: int = 0) -> str:
    """A HellaSwag-style lm-eval task in `folder` (JSONL data and its YAML); its name."""
    verses = []
    for path in sorted(KingJamesBible().fetch().glob("*.txt")):
        lines = path.read_text(encoding="utf-8").splitlines()
        verses.append([v for v in lines[1:] if len(v) > 20])  # the first line is the title
    rng = random.Random(seed)
    pool = [v for book in verses for v in book]
    rows = []
    while len(rows) < questions:
        book = rng.choice([b for b in verses if len(b) > CONTEXT_VERSES + 1])
        at = rng.randrange(len(book) - CONTEXT_VERSES)
        context, truth = " ".join(book[at : at + CONTEXT_VERSES]), book[at + CONTEXT_VERSES]
        endings = [truth, *rng.sample([v for v in pool if v != truth][::97], CHOICES - 1)]
        rng.shuffle(endings)
        rows.append({"ctx": context, "endings": endings, "label": endings.index(truth)})
    data = folder / "kjv_mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / "kjv_mc.yaml").write_text(
        "task: kjv_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{ctx}}'\n"
        "doc_to_choice: '{{endings}}'\n"
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n",
        encoding="utf-8",
    )
    return "kjv_mc"


def evaluate(model: str, model_args: str, task: str, manager: Any, batch: int) -> tuple[float, Any]:
    import lm_eval

    start = time.perf_counter()
    results = lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=[task],
        task_manager=manager,
        batch_size=batch,
        device="cpu",
        bootstrap_iters=0,
        log_samples=False,
    )
    return time.perf_counter() - start, results["results"][task]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import lm_eval.models  # noqa: F401  (registers lm-eval's own backends, "hf" among them)
    from lm_eval.tasks import TaskManager

    import scratchlm.eval.lm_eval_adapter  # noqa: F401  (registers "scratchlm")

    run = pretrained_run("smollm2-135m-instruct")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        task = build_task(folder, args.questions)
        export_hf_run(run, folder / "hf")
        manager = TaskManager(include_path=str(folder), include_defaults=False)
        # The exported folder names no bos/eos for transformers' tokenizer: give hf the token
        # our scoring puts before an empty context (never used by this task, but hf asks).
        prefix = prefix_token(load_for_inference(run, dtype="float32"))
        backends = {
            "scratchlm": ("scratchlm", f"run={run},dtype=float32"),
            "lm-eval hf": (
                "hf",
                f"pretrained={folder / 'hf'},dtype=float32,prefix_token_id={prefix}",
            ),
        }
        best: dict[str, float] = {}
        scores: dict[str, Any] = {}
        for _ in range(args.rounds):
            for name, (model, model_args) in backends.items():
                seconds, scores[name] = evaluate(model, model_args, task, manager, args.batch_size)
                best[name] = min(best.get(name, float("inf")), seconds)

    requests = args.questions * CHOICES
    print(f"CPU: {cpu_description()}; torch threads {torch.get_num_threads()}")
    print(
        f"task: {args.questions} questions x {CHOICES} choices (KJV, HellaSwag-style), "
        f"SmolLM2-135M-Instruct float32, batch {args.batch_size}, best of {args.rounds}"
    )
    print(f"{'backend':<12} {'seconds':>8} {'requests/s':>11} {'acc':>7} {'acc_norm':>9}")
    for name in backends:
        acc, norm = scores[name]["acc,none"], scores[name]["acc_norm,none"]
        print(
            f"{name:<12} {best[name]:>8.2f} {requests / best[name]:>11.1f} {acc:>7.3f} {norm:>9.3f}"
        )
    ours, theirs = scores["scratchlm"], scores["lm-eval hf"]
    same = all(ours[k] == theirs[k] for k in ("acc,none", "acc_norm,none"))
    print(f"ratio (scratchlm / hf): {best['lm-eval hf'] / best['scratchlm']:.2f}x faster")
    print(f"same accuracy: {'yes' if same else 'NO'}; load average {load_average()}")


if __name__ == "__main__":
    main()
