"""`scratchlm train`: pretrain a GPT from a recipe (data -> tokenizer -> model), or resume one.

Every key of every section is an option, `--section.key VALUE`, registered from the settings
dataclasses; they go to scratchlm.config's load_config as the overrides of the recipe, so the
recipe's rules (a depth-N preset's learning rate, a later --model.preset replacing earlier
model keys) apply as they would in the TOML file.

Under torchrun, every rank runs this command. When torchrun restarts the job (--max-restarts,
after a rank died), the same command line continues the run from its last checkpoint, as
--resume would; with no checkpoint yet it starts the run again. Not under torchrun, `--nproc N`
starts it for the user (cli/launch.py).
"""

from __future__ import annotations

import argparse
import os
import socket
import typing
from pathlib import Path
from typing import Any

from scratchlm.cli.options import add_section_options, as_overrides, given_options
from scratchlm.config import SECTIONS, RunConfig
from scratchlm.core.errors import ScratchLMError

# What a checkpoint does not fix: a resumed run may train longer or sample differently.
RESUMABLE_SECTIONS = ("train", "sample")


def register(commands: Any) -> None:
    p = commands.add_parser("train", help="pretrain a GPT (data -> tokenizer -> model)")
    p.add_argument("--config", type=Path, help="TOML recipe, e.g. configs/demo.toml")
    p.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="continue a run from its checkpoint"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing run of the same name"
    )
    p.add_argument("--no-samples", action="store_true", help="skip the samples at the end")
    p.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train as N processes on this machine: starts torchrun for you (torchrun "
        "--nproc-per-node N -m scratchlm train ... is the canonical form)",
    )
    add_section_options(p, "", RunConfig)
    sections = typing.get_type_hints(RunConfig)
    for section in SECTIONS:
        add_section_options(p, section, sections[section])
    p.set_defaults(handler=cmd_train)


def cmd_train(args: argparse.Namespace) -> None:
    given = given_options(args)
    _check_nproc(args.nproc)
    if args.resume is not None:
        if args.config is not None:
            raise ScratchLMError("--resume continues a run with its own config; drop --config")
        fixed = [g for g in given if g.section not in RESUMABLE_SECTIONS]
        if fixed:
            raise ScratchLMError(
                f"{fixed[0].flag} cannot change when resuming (the data, tokenizer and "
                "model are fixed by the checkpoint); only --train.* and --sample.* can"
            )
        from scratchlm.config import load_run_config

        config = load_run_config(args.resume, as_overrides(given))
    else:
        from scratchlm.config import load_config

        # Check the config before importing torch, so a typo is reported at once.
        config = load_config(args.config, as_overrides(given))
    if args.nproc is not None and args.nproc > 1:
        raise SystemExit(_launch(args, given, config.train.parallel))
    from scratchlm.runs.layout import RunPaths
    from scratchlm.train.distributed import distributed_job

    # Under torchrun with train.parallel = "ddp", every rank runs this command; rank 0 alone
    # prepares the run's files and prints (cli/main.py reports a mistake every rank finds once).
    with distributed_job(config.train.parallel) as ranks:
        result = _train(args, config, given, ranks)
    if result is None or result.interrupted or not ranks.is_main:
        return
    if result.val_loss is not None:
        from scratchlm.train.validation import perplexity

        print(
            f"done: {result.steps:,} steps in {result.seconds:.0f}s | val loss "
            f"{result.val_loss:.4f} | val perplexity {perplexity(result.val_loss):.2f}"
        )
    print(f"run saved in {config.run_dir} (loss plot: {RunPaths(config.run_dir).loss_plot})")
    if not args.no_samples:
        from scratchlm.cli.generate import print_samples

        print_samples(config.run_dir, out_file=RunPaths(config.run_dir).samples)


def _check_nproc(nproc: int | None) -> None:
    if nproc is None:
        return
    if "WORLD_SIZE" in os.environ:
        raise ScratchLMError(
            "--nproc starts torchrun, but this command already runs under torchrun (WORLD_SIZE "
            "is set); drop --nproc and give torchrun --nproc-per-node"
        )
    if nproc < 1:
        raise ScratchLMError(f"--nproc must be at least 1 (the number of processes), got {nproc}")


def _launch(args: argparse.Namespace, given: list[Any], parallel: str) -> int:
    """Run this command as a torchrun job of args.nproc processes; its exit status."""
    from scratchlm.cli.launch import launch_job, torchrun_command
    from scratchlm.core.messages import note

    train_args = same_command_line(args, given)
    if parallel == "none":
        note("train.parallel is 'none', but --nproc starts several processes: using ddp")
        train_args += ["--train.parallel", "ddp"]
    return launch_job(torchrun_command(args.nproc, train_args))


def same_command_line(args: argparse.Namespace, given: list[Any]) -> list[str]:
    """The arguments of this `scratchlm train` command, but --nproc (each option as typed)."""
    words = [*(["--config", str(args.config)] if args.config is not None else []),
             *(["--resume", str(args.resume)] if args.resume is not None else []),
             *(["--overwrite"] if args.overwrite else []),
             *(["--no-samples"] if args.no_samples else [])]  # fmt: skip
    # "--flag=value": a value that starts with "-" stays a value.
    return words + [f"{g.flag}={g.text}" for g in given]


def _train(args: argparse.Namespace, config: RunConfig, given: list[Any], ranks: Any) -> Any:
    """Train (or resume) the run on this rank; None when a resume had nothing to do."""
    from scratchlm.runs.layout import RunPaths
    from scratchlm.train.distributed import main_rank_first
    from scratchlm.train.loop import train_model

    if args.resume is not None:
        paths = RunPaths(config.run_dir)
        if not paths.is_prepared():
            raise ScratchLMError(
                f"{args.resume} has no prepared data; start it again without --resume"
            )
        # Only rank 0 rewrites the run's config.toml.
        result = _resume(config, paths, remember=bool(given) and ranks.is_main)
        return None if result.new_steps == 0 else result
    from scratchlm.config import load_run_config
    from scratchlm.core.user_paths import check_output
    from scratchlm.runs.preparation import prepare_run

    restart, has_checkpoint = _restart_of_job(config.run_dir, ranks)
    if restart and has_checkpoint:
        # torchrun relaunched the job (--max-restarts) after a rank died: the same command
        # continues the run from its last checkpoint, as --resume would.
        if ranks.is_main:
            print(f"restart {restart} of this torchrun job: resuming {config.run_dir}")
        resumable = [g for g in given if g.section in RESUMABLE_SECTIONS]
        result = train_model(load_run_config(config.run_dir, as_overrides(resumable)), True)
        return None if result.new_steps == 0 else result
    if restart and ranks.is_main:
        print(f"restart {restart} of this torchrun job: no checkpoint yet; starting again")

    def prepare() -> None:
        check_output(config.run_dir, folder=True)  # before the corpus is read
        prepare_run(config, overwrite=args.overwrite)

    main_rank_first(ranks, prepare)
    if not ranks.is_main:
        _check_run_is_here(config.run_dir)
        # The prepared config.toml holds what preparation decided (the tokenizer's vocab_size).
        config = load_run_config(config.run_dir)
    return train_model(config)


def restart_count() -> int:
    """How many times torchrun has restarted this machine's processes of the job (0: the first
    launch, or not under torchrun)."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def _restart_of_job(run_dir: Path, ranks: Any) -> tuple[int, bool]:
    """Which restart of the job this is (0: its first launch), and whether the run has a
    checkpoint, as rank 0 sees it. Every rank gets the same answer, or one would resume while
    another prepares and their collectives no longer match; torchrun counts restarts per
    machine (one whose processes did not fail may still say 0), so the ranks take the largest.
    """
    from scratchlm.runs.checkpoint import list_checkpoints
    from scratchlm.train.distributed import gather_values

    restarts = gather_values(float(restart_count()), ranks)
    found = gather_values(float(ranks.is_main and bool(list_checkpoints(run_dir))), ranks)
    return int(max(restarts)), any(found)


def _check_run_is_here(run_dir: Path) -> None:
    """Rank 0 prepared the run; the other ranks read it: on another machine (torchrun
    --nnodes), only if the run's folder is on storage they share."""
    from scratchlm.runs.layout import RunPaths

    if not RunPaths(run_dir).is_prepared():
        raise ScratchLMError(
            f"{run_dir} is not here on {socket.gethostname()}: rank 0 prepared it, but every "
            "machine of the job must see the run's folder; put --out_dir on storage they share"
        )


def _resume(config: RunConfig, paths: Any, remember: bool) -> Any:
    """Continue the run. With `remember`, the run's config.toml takes the new --train.* and
    --sample.* values first (a longer max_steps holds for the next resume too), and gets its
    old text back if the resume saved no checkpoint: refused, or with nothing to do, the
    command leaves every file as it was."""
    from scratchlm.core.atomic_files import atomic_write_bytes, atomic_write_text
    from scratchlm.runs.checkpoint import list_checkpoints
    from scratchlm.train.loop import train_model

    if not remember:
        return train_model(config, resume=True)
    before, saved = paths.config.read_bytes(), list_checkpoints(paths.root)
    atomic_write_text(paths.config, config.to_toml())
    try:
        return train_model(config, resume=True)
    finally:
        if list_checkpoints(paths.root) == saved:
            atomic_write_bytes(paths.config, before)
