"""`scratchlm report RUN_DIR`: the run's report card, RUN_DIR/report.md and report.html."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: Any) -> None:
    p = commands.add_parser(
        "report",
        help="a run's report card: model, data, training, evaluations, samples (Markdown + HTML)",
    )
    p.add_argument("run_dir", help="a run directory, or smollm2-135m-instruct")
    p.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> None:
    from scratchlm.eval.report import write_report

    for line in write_report(args.run_dir).lines():
        print(line)
