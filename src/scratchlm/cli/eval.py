"""`scratchlm eval RUN_DIR`: the validation loss and perplexity of a trained run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(commands: Any) -> None:
    p = commands.add_parser("eval", help="validation loss and perplexity of a trained run")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the latest")
    p.add_argument("--batches", type=int, default=None, help="validation batches to average")
    p.add_argument("--device", default="cpu")
    p.set_defaults(handler=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> None:
    from scratchlm.eval.perplexity import evaluate_run

    result = evaluate_run(args.run_dir, args.checkpoint, args.batches, args.device)
    print(
        f"val loss {result.val_loss:.4f} | val perplexity {result.perplexity:.2f} "
        f"({result.batches} batches)"
    )
