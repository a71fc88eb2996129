"""`scratchlm eval RUN`: how good a model is.

    scratchlm eval RUN                         validation loss and perplexity (quick: batches)
    scratchlm eval RUN --val --text kjv FILE   loss, perplexity and bits per byte of every
                                               validation document, corpus or file, rolling
                                               windows over long texts (--stride)
    scratchlm eval RUN --task tasks.jsonl      multiple choice: acc and acc_norm (--shots K,
    scratchlm eval RUN --task default          --format mmlu|hellaswag|arc|bigbench|plain,
                                               --chat); `default` is the built-in suite
    scratchlm eval RUN --humaneval             pass@k on HumanEval, every program run in a
                                               sandbox (--samples N --k 1 --k 10; --chat:
                                               asked through the chat template)

RUN is a run directory or a pretrained model's name (smollm2-135m-instruct). Each evaluation
is kept with the run (evaluations.json) for `scratchlm report`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any


def register(commands: Any) -> None:
    p = commands.add_parser(
        "eval",
        help="evaluate a model: loss, perplexity, bits per byte",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN", help="a run directory or smollm2-135m-instruct")
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the latest")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or auto")
    p.add_argument("--batch-size", type=int, default=16, help="requests scored together")
    p.add_argument("--batches", type=int, default=None, help="quick validation: batches to average")
    lm = p.add_argument_group("language modelling (loss, perplexity, bits per byte)")
    lm.add_argument(
        "--text",
        action="append",
        default=[],
        metavar="SOURCE",
        help="a corpus name (scratchlm data list), a text file or a folder; repeatable",
    )
    lm.add_argument("--val", action="store_true", help="every document of the validation shards")
    lm.add_argument("--stride", type=int, default=None, help="of the windows (default: context)")
    lm.add_argument("--max-tokens", type=int, default=None, help="per source (default: all)")
    mc = p.add_argument_group("multiple choice (accuracy by log-likelihood)")
    mc.add_argument(
        "--task",
        metavar="PATH|default",
        help="a task file (JSONL/JSON, BIG-bench JSON, HellaSwag/ARC JSONL), an MMLU folder, or "
        "default: the built-in suite",
    )
    mc.add_argument(
        "--format",
        choices=("plain", "bigbench", "mmlu", "hellaswag", "arc"),
        default=None,
        help="the task's layout (default: from the file)",
    )
    mc.add_argument("--shots", type=int, default=None, help="few-shot examples (default: task's)")
    mc.add_argument("--seed", type=int, default=1234, help="which few-shot examples")
    mc.add_argument(
        "--chat",
        action="store_true",
        help="through the model's chat template (also for --humaneval)",
    )
    mc.add_argument("--limit", type=int, default=None, help="the first N questions of a task")
    he = p.add_argument_group("HumanEval (pass@k; generated code runs only in the sandbox)")
    he.add_argument("--humaneval", action="store_true", help="run HumanEval")
    he.add_argument("--samples", type=int, default=1, help="completions per problem")
    he.add_argument("--k", type=int, action="append", default=None, help="pass@k (repeatable)")
    he.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    he.add_argument("--top-p", type=float, default=1.0)
    he.add_argument("--max-new-tokens", type=int, default=384)
    he.add_argument("--problems", type=int, default=None, help="the first N problems (all)")
    he.add_argument("--timeout", type=float, default=10.0, help="seconds per program (and CPU)")
    he.add_argument(
        "--weak-sandbox",
        action="store_true",
        help="run even where the sandbox cannot keep programs from your files and processes "
        "(not root and no user namespaces: rlimits and a socket guard only)",
    )
    p.set_defaults(handler=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> None:
    if args.task is not None:
        _multiple_choice(args)
    if args.text or args.val:
        _language_modeling(args)
    if args.humaneval:
        _humaneval(args)
    if args.task is not None or args.text or args.val or args.humaneval:
        return
    from scratchlm.eval.perplexity import evaluate_run

    result = evaluate_run(Path(args.run_dir), args.checkpoint, args.batches, args.device)
    print(
        f"val loss {result.val_loss:.4f} | val perplexity {result.perplexity:.2f} "
        f"({result.batches} batches)"
    )


def _evaluate(args: argparse.Namespace, evaluate: Callable[[Any], Any]) -> None:
    """Load the model, run one evaluation on it, print its table and keep it with the run."""
    from scratchlm.eval.records import record_evaluation
    from scratchlm.inference.language_model import load_for_inference

    lm = load_for_inference(args.run_dir, args.checkpoint, args.device, args.dtype)
    result = evaluate(lm)
    print("\n".join(result.lines()))
    if lm.run_dir is not None:
        record = result.record()
        record.checkpoint = str(args.checkpoint or "")
        record_evaluation(lm.run_dir, record)


def _language_modeling(args: argparse.Namespace) -> None:
    from scratchlm.eval.language_modeling import evaluate_language_modeling

    _evaluate(
        args,
        lambda lm: evaluate_language_modeling(
            lm, args.text, args.val, args.stride, args.max_tokens, args.batch_size
        ),
    )


def _multiple_choice(args: argparse.Namespace) -> None:
    from scratchlm.eval.multiple_choice import evaluate_multiple_choice

    task = None if args.task == "default" else Path(args.task)
    _evaluate(
        args,
        lambda lm: evaluate_multiple_choice(
            lm, task, args.format, args.shots, args.seed, args.batch_size, args.chat, args.limit
        ),
    )


def _humaneval(args: argparse.Namespace) -> None:
    from scratchlm.eval.humaneval import evaluate_humaneval
    from scratchlm.eval.sandbox import SandboxLimits

    limits = SandboxLimits(timeout_s=args.timeout, cpu_s=max(1, round(args.timeout)))
    _evaluate(
        args,
        lambda lm: evaluate_humaneval(
            lm,
            samples=args.samples,
            ks=tuple(args.k or [1]),
            temperature=args.temperature,
            top_p=args.top_p,
            max_new_tokens=args.max_new_tokens,
            limit=args.problems,
            batch_size=args.batch_size,
            limits=limits,
            chat=args.chat,
            weak_sandbox=args.weak_sandbox,
        ),
    )
