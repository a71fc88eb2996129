"""`scratchlm plot RUN_DIR`: a run's loss and learning-rate curves as PNG files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from scratchlm.core.errors import ScratchLMError
from scratchlm.core.user_paths import check_output


def register(commands: Any) -> None:
    p = commands.add_parser(
        "plot", help="loss and learning-rate curves of a run as PNG (from its metrics.jsonl)"
    )
    p.add_argument("run_dir", type=Path)
    p.set_defaults(handler=cmd_plot)


def cmd_plot(args: argparse.Namespace) -> None:
    from scratchlm.runs.layout import RunPaths
    from scratchlm.train.metrics import plot_learning_rate, plot_loss, read_metrics

    paths = RunPaths(args.run_dir)
    if not read_metrics(paths.metrics):
        raise ScratchLMError(f"{paths.metrics} is missing or empty; train the run first")
    for plot in (paths.loss_plot, paths.lr_plot):  # before matplotlib is imported
        check_output(plot, folder=False)
    name = paths.root.name
    plot_loss(paths.metrics, paths.loss_plot, title=name)
    plot_learning_rate(paths.metrics, paths.lr_plot, title=name)
    print(f"wrote {paths.loss_plot} and {paths.lr_plot}")
