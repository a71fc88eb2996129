"""`scratchlm train`: pretrain a GPT from a recipe (data -> tokenizer -> model), or resume one.

Every key of every section is an option, `--section.key VALUE`, registered from the settings
dataclasses; they go to scratchlm.config's load_config as the overrides of the recipe, so the
recipe's rules (a depth-N preset's learning rate, a later --model.preset replacing earlier
model keys) apply as they would in the TOML file.
"""

from __future__ import annotations

import argparse
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
    add_section_options(p, "", RunConfig)
    sections = typing.get_type_hints(RunConfig)
    for section in SECTIONS:
        add_section_options(p, section, sections[section])
    p.set_defaults(handler=cmd_train)


def cmd_train(args: argparse.Namespace) -> None:
    given = given_options(args)
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
    from scratchlm.runs.layout import RunPaths
    from scratchlm.train.distributed import distributed_job

    # Under torchrun with train.parallel = "ddp", every rank runs this command; rank 0 alone
    # prepares the run's files and prints, and a mistake every rank finds is its line alone.
    with distributed_job(config.train.parallel) as ranks:
        try:
            result = _train(args, config, given, ranks)
        except ScratchLMError:
            if not ranks.is_main:
                raise SystemExit(2) from None
            raise
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
    from scratchlm.core.user_paths import check_output
    from scratchlm.runs.preparation import prepare_run

    def prepare() -> None:
        check_output(config.run_dir, folder=True)  # before the corpus is read
        prepare_run(config, overwrite=args.overwrite)

    main_rank_first(ranks, prepare)
    if not ranks.is_main:
        from scratchlm.config import load_run_config

        # The prepared config.toml holds what preparation decided (the tokenizer's vocab_size).
        config = load_run_config(config.run_dir)
    return train_model(config)


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
