"""`scratchlm finetune TASK`: fine-tune a trained model (a run, or smollm2-135m-instruct).

    scratchlm finetune sft --base runs/chat-base --data chitchat --name chat
    scratchlm finetune sft --base smollm2-135m-instruct --data talk.jsonl --lora.r 8
    scratchlm finetune classify --base smollm2-135m-instruct --data spam-assassin
    scratchlm finetune dpo --base smollm2-135m-instruct --data concise --lora.r 16
    scratchlm finetune sft --config configs/chat.toml       (the recipe's [finetune] table)
    scratchlm finetune sft --resume runs/chat               (on from its last checkpoint)

Every setting is an option (`--train.max_steps 300`, `--lora.r 8`, `--sft.batching pad`), from
the settings dataclasses of finetune/config.py; a recipe's [finetune] table holds the same keys.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from scratchlm.cli.options import add_section_options, given_options, section_from_args
from scratchlm.core.errors import ScratchLMError

TASK_HELP = {
    "sft": "instruction / chat SFT: the loss on the assistant's replies",
    "classify": "a text classifier: a head on the last token's hidden state",
    "dpo": "direct preference optimisation on chosen / rejected replies",
}
# The sections each task's command offers, beside the run's own keys.
TASK_SECTIONS = {
    "sft": ("sft", "lora", "train", "sample"),
    "classify": ("classify", "lora", "train"),
    "dpo": ("dpo", "lora", "train", "sample"),
}


def register(commands: Any) -> None:
    from scratchlm.finetune.config import FinetuneRun

    p = commands.add_parser(
        "finetune",
        help="fine-tune a model: sft, classify or dpo",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)
    for task, help_text in TASK_HELP.items():
        t = tasks.add_parser(task, help=help_text, description=help_text)
        t.add_argument("--config", type=Path, help="a recipe whose [finetune] table to use")
        t.add_argument(
            "--resume", type=Path, metavar="RUN_DIR", help="continue a run from its checkpoint"
        )
        t.add_argument(
            "--overwrite", action="store_true", help="replace an existing run of the same name"
        )
        add_section_options(t, "", FinetuneRun, skip=("task",))
        for section in TASK_SECTIONS[task]:
            add_section_options(t, section, type(getattr(FinetuneRun(), section)))
        t.set_defaults(handler=cmd_finetune)


def cmd_finetune(args: argparse.Namespace) -> None:
    from scratchlm.finetune.config import FinetuneRun, read_recipe, read_run

    if args.resume is not None:
        if args.config is not None:
            raise ScratchLMError("--resume continues a run with its own config; drop --config")
        fixed = [g for g in given_options(args) if g.section not in ("train", "sample")]
        if fixed:
            raise ScratchLMError(
                f"{fixed[0].flag} cannot change when resuming (the base, data and task are "
                "fixed by the checkpoint); only --train.* and --sample.* can"
            )
        run = read_run(args.resume)
        if run.task != args.task:
            raise ScratchLMError(
                f"{args.resume} is a {run.task} run; resume it with `scratchlm finetune "
                f"{run.task} --resume {args.resume}`"
            )
    else:
        run = read_recipe(args.config) if args.config is not None else FinetuneRun()
    run.task = args.task
    run = section_from_args(args, "", run)
    for section in TASK_SECTIONS[args.task]:
        setattr(run, section, section_from_args(args, section, getattr(run, section)))
    from scratchlm.finetune.training import finetune

    result = finetune(run, resume=args.resume is not None, overwrite=args.overwrite)
    if result.new_steps == 0 or result.interrupted:
        return
    for line in result.report:
        print(line)
    print(f"done: {result.steps:,} steps in {result.seconds:.0f}s; run saved in {run.run_dir}")
