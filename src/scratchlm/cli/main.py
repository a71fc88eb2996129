"""The `scratchlm` command: one subcommand per pipeline stage, each a thin call into its stage.

    scratchlm data list | fetch NAME | prepare SOURCE... --tokenizer T --out DIR | report DIR
    scratchlm tokenizer train SOURCE... --vocab-size N --out T | encode | decode
    scratchlm tokenizer study --input SOURCE... --sizes 512,1024,2048 [--width W] [--out DIR]
    scratchlm tokenizer export --tokenizer T --format hf|tiktoken|gpt2 --out PATH
    scratchlm tokenizer import FILE... --format hf|tiktoken|gpt2 | --pretrained NAME --out T
    scratchlm train --config configs/demo.toml [--train.max_steps 100 ...] | --resume RUN_DIR
                    [--nproc N]   (or under torchrun, with --train.parallel ddp|fsdp|tp)
    scratchlm generate RUN_DIR|smollm2-135m-instruct --prompt "..."
    scratchlm chat RUN_DIR|smollm2-135m-instruct [--system TEXT] [--message TEXT ...]
    scratchlm serve RUN_DIR|smollm2-135m-instruct [--port 8000] [--api-key KEY] [--max-batch 8]
    scratchlm eval RUN_DIR
    scratchlm plot RUN_DIR
    scratchlm report RUN_DIR
    scratchlm book [RUN_DIR] [--out book.pdf]
    scratchlm plan --model gpt2-1558m --gpus 8 --nodes 4 --parallel fsdp --micro-batch 4 ...
    scratchlm export RUN_DIR --format hf --out DIR | --format gguf --out FILE [--dtype f16]
    scratchlm import hf DIR --out RUN_DIR | gguf FILE --out RUN_DIR

Each module of this package registers its command's options and handler; main only parses and
dispatches. A user's mistake (ScratchLMError), on the command line or later, is printed as one
line with exit status 2, no traceback; so is a filesystem problem on a path (an OSError that
names a file: permission denied, a full or read-only disk, a file where a folder should be),
in core.user_paths' words, as the last resort behind each command's own checks.

In a job of several processes (torchrun's RANK and WORLD_SIZE), an error is reported once. Rank
0 reports its own at once. Another rank first gives the launcher time to stop it: a mistake
every rank finds (a bad config value, a missing file) makes rank 0 fail too, and torchrun then
stops the other ranks, so the job prints rank 0's line alone. A rank still running after that
wait had an error of its own and reports it, with its rank. A rank that lost contact with the
others (a collective failed because another rank died) waits longest: the rank that died, or
the launcher, has the story to tell; it says one line, never a traceback, if it is still here.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

# Each command's module (imported as modules, not from the package, which imports this one).
import scratchlm.cli.book as book_command
import scratchlm.cli.chat as chat_command
import scratchlm.cli.classify as classify_command
import scratchlm.cli.data as data_command
import scratchlm.cli.eval as eval_command
import scratchlm.cli.finetune as finetune_command
import scratchlm.cli.generate as generate_command
import scratchlm.cli.models as models_command
import scratchlm.cli.plan as plan_command
import scratchlm.cli.plot as plot_command
import scratchlm.cli.report as report_command
import scratchlm.cli.serve as serve_command
import scratchlm.cli.tokenizer as tokenizer_command
import scratchlm.cli.train as train_command
from scratchlm.cli.parser import CommandParser
from scratchlm.core.errors import ScratchLMError
from scratchlm.core.user_paths import os_error_message

# Heavy imports (torch, the model) happen inside the handlers, so `--help` is instant.


def main(argv: Sequence[str] | None = None) -> int:
    rank = job_rank()
    try:
        return _run(argv, rank)
    except SystemExit as e:
        # A rank other than 0 leaving quietly, because rank 0 reports why: rank 0 must get to
        # print before torchrun, seeing this rank fail, stops it.
        if rank and e.code not in (0, None):
            _wait_for_the_launcher(LAUNCHER_GRACE_S)
        raise
    except Exception as e:
        if rank is None:
            raise
        if _lost_contact(e):
            _wait_for_the_launcher(2 * LAUNCHER_GRACE_S)
            print(f"error: {_rank_prefix(rank)}{_lost_contact_message(e)}", file=sys.stderr)
            return 1
        if rank:
            _wait_for_the_launcher(LAUNCHER_GRACE_S)
            print(f"rank {rank}: unexpected error:", file=sys.stderr)
        raise  # a bug: the traceback helps


def _run(argv: Sequence[str] | None, rank: int | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        if not hasattr(args, "handler"):
            parser.print_help()
            return 2
        args.handler(args)
    except ScratchLMError as e:
        return _report_error(str(e), rank)
    except KeyboardInterrupt:
        if not rank:  # Ctrl-C reaches every rank; rank 0 says it
            print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `scratchlm generate ... | head`
        return 0
    except OSError as e:
        if e.filename is None:
            raise  # not about a path the user can fix: a bug, so the traceback helps
        return _report_error(os_error_message(e), rank)
    return 0


# How long a rank other than 0 waits, after its error, for torchrun to stop it (torchrun checks
# its processes every 0.1 s and stops the rest of a job as soon as one fails), and how much
# longer each next process of a machine waits: on the other machines of a job, which learn of
# rank 0's failure late, the first of each machine to fail reports, and its torchrun stops
# the rest.
LAUNCHER_GRACE_S = 5.0
LOCAL_RANK_STAGGER_S = 0.5


def job_rank() -> int | None:
    """This process's rank in a job of several processes (torchrun sets RANK and WORLD_SIZE),
    None in a plain process. Read from the environment: it holds before torch is imported."""
    try:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return int(os.environ.get("RANK", "0"))
    except ValueError:
        pass
    return None


def _report_error(message: str, rank: int | None) -> int:
    """A user's mistake, one line (status 2): at once from rank 0; from another rank only if
    the launcher did not stop it meanwhile (rank 0 did not fail the same way), with its rank."""
    if rank:
        _wait_for_the_launcher(LAUNCHER_GRACE_S)
    print(f"error: {_rank_prefix(rank)}{message}", file=sys.stderr)
    return 2


def _rank_prefix(rank: int | None) -> str:
    return f"rank {rank}: " if rank else ""


def _wait_for_the_launcher(seconds: float) -> None:
    """Sleep, so that torchrun stops this process (SIGTERM) if another rank already failed."""
    sys.stdout.flush()
    try:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        local_rank = 0
    time.sleep(seconds + LOCAL_RANK_STAGGER_S * local_rank)


def _lost_contact(error: Exception) -> bool:
    """Whether a collective failed because another rank is gone (it failed or was killed):
    gloo says so in a RuntimeError, NCCL and the store raise torch.distributed's DistError."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        sign in text for sign in ("closed by peer", "reset by peer", "Broken pipe")
    )


def _lost_contact_message(error: Exception) -> str:
    # gloo's first line: "[.../pair.cc:553] Connection closed by peer [127.0.0.1]:33153. ..."
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    detail = first.split("] ", 1)[-1].split(". ")[0]
    return (
        f"lost contact with the other ranks of this job ({detail}); another rank failed or "
        "was stopped: its own output, or torchrun's summary, says why"
    )


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
        chat_command,
        serve_command,
        book_command,
        eval_command,
        finetune_command,
        classify_command,
        plot_command,
        report_command,
        models_command,
        plan_command,
    ):
        module.register(commands)
    # The book's command reference reads the whole parser (cli/book.py), without importing
    # this module back; only the book's own options carry it.
    commands.choices["book"].set_defaults(root_parser=parser)
    return parser
