"""The `scratchlm` command: one subcommand per pipeline stage, each a thin call into its stage.

    scratchlm data list | fetch NAME | prepare SOURCE... --tokenizer T --out DIR | report DIR
    scratchlm tokenizer train SOURCE... --vocab-size N --out T | encode | decode
    scratchlm tokenizer study --input SOURCE... --sizes 512,1024,2048 [--width W] [--out DIR]
    scratchlm tokenizer export --tokenizer T --format hf|tiktoken|gpt2 --out PATH
    scratchlm tokenizer import FILE... --format hf|tiktoken|gpt2 | --pretrained NAME --out T
    scratchlm train --config configs/demo.toml [--train.max_steps 100 ...] | --resume RUN_DIR
    scratchlm generate RUN_DIR|smollm2-135m-instruct --prompt "..."
    scratchlm eval RUN_DIR
    scratchlm plot RUN_DIR
    scratchlm plan --model gpt2-1558m --gpus 8 --nodes 4 --parallel fsdp --micro-batch 4 ...
    scratchlm export RUN_DIR --format hf --out DIR | --format gguf --out FILE [--dtype f16]
    scratchlm import hf DIR --out RUN_DIR | gguf FILE --out RUN_DIR

Each module of this package registers its command's options and handler; main only parses and
dispatches. A user's mistake (ScratchLMError), on the command line or later, is printed as one
line with exit status 2, no traceback; so is a filesystem problem on a path (an OSError that
names a file: permission denied, a full or read-only disk, a file where a folder should be),
in core.user_paths' words, as the last resort behind each command's own checks.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

# Each command's module (imported as modules, not from the package, which imports this one).
import scratchlm.cli.data as data_command
import scratchlm.cli.eval as eval_command
import scratchlm.cli.generate as generate_command
import scratchlm.cli.models as models_command
import scratchlm.cli.plan as plan_command
import scratchlm.cli.plot as plot_command
import scratchlm.cli.tokenizer as tokenizer_command
import scratchlm.cli.train as train_command
from scratchlm.cli.parser import CommandParser
from scratchlm.core.errors import ScratchLMError
from scratchlm.core.user_paths import os_error_message

# Heavy imports (torch, the model) happen inside the handlers, so `--help` is instant.


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        if not hasattr(args, "handler"):
            parser.print_help()
            return 2
        args.handler(args)
    except ScratchLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `scratchlm generate ... | head`
        return 0
    except OSError as e:
        if e.filename is None:
            raise  # not about a path the user can fix: a bug, so the traceback helps
        print(f"error: {os_error_message(e)}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="scratchlm", description="Build a large language model from scratch."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (
        data_command,
        tokenizer_command,
        train_command,
        generate_command,
        eval_command,
        plot_command,
        models_command,
        plan_command,
    ):
        module.register(commands)
    return parser
