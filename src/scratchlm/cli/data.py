"""`scratchlm data list | fetch | prepare | report`: corpora in, token shards and a report out."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from scratchlm.cli.options import add_section_options, section_from_args
from scratchlm.core.errors import ScratchLMError
from scratchlm.data.config import CleaningConfig, DataConfig, DedupConfig

# The [data] keys `data prepare` takes; the sources are its SOURCE arguments, and how training
# windows are sampled is a training matter.
PREPARE_SKIPS = ("sources", "sampling")
PREPARE_ALIASES = {
    "val_fraction": "--val-fraction",
    "seed": "--seed",
    "include": "--include",
    "exclude": "--exclude",
    "text_field": "--text-field",
}


def register(commands: Any) -> None:
    data = commands.add_parser("data", help="fetch corpora and turn text into token files")
    actions = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = actions.add_parser("list", help="named corpora you can fetch")
    p.set_defaults(handler=cmd_data_list)
    p = actions.add_parser("fetch", help="download a named corpus into the cache")
    p.add_argument("name", help="corpus name (see `scratchlm data list`)")
    p.set_defaults(handler=cmd_data_fetch)

    p = actions.add_parser(
        "prepare",
        help="text -> cleaned, deduplicated train and val token shards, and a data report",
    )
    p.add_argument(
        "sources",
        nargs="+",
        help="named corpora, files (text, JSONL, Parquet; maybe .gz or .zst), folders of "
        "them, or - for standard input",
    )
    p.add_argument("--tokenizer", required=True, type=Path, help="tokenizer.json to encode with")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the prepared data already in --out"
    )
    p.add_argument(
        "--stdin-format",
        choices=("text", "jsonl"),
        default="text",
        help="standard input (-) as one document, or one JSON object a line",
    )
    p.add_argument(
        "--config", type=Path, help="take the [clean] and [dedup] settings from this recipe"
    )
    p.add_argument("--no-clean", action="store_true", help="neither normalise nor filter")
    p.add_argument("--no-filters", action="store_true", help="normalise, but apply no quality rule")
    p.add_argument("--no-dedup", action="store_true", help="no deduplication of any kind")
    p.add_argument(
        "--workers", type=int, default=0, help="processes for cleaning and MinHash (0: all cores)"
    )
    add_section_options(p, "data", DataConfig, PREPARE_ALIASES, skip=PREPARE_SKIPS)
    add_section_options(p, "clean", CleaningConfig)
    add_section_options(p, "dedup", DedupConfig)
    p.set_defaults(handler=cmd_data_prepare)

    p = actions.add_parser("report", help="print the data report of a prepared folder")
    p.add_argument("folder", type=Path, help="a `data prepare` output folder, or a run directory")
    p.set_defaults(handler=cmd_data_report)


def cmd_data_list(args: argparse.Namespace) -> None:
    from scratchlm.data.sources import list_corpora

    for info in list_corpora():
        status = "cached" if info.cached else "not fetched"
        print(f"{info.name:<14} {status:<12} {info.licence:<36} {info.description}")


def cmd_data_fetch(args: argparse.Namespace) -> None:
    from scratchlm.data.sources import fetch_corpus

    folder = fetch_corpus(args.name)
    files = sorted(folder.glob("*.txt"))
    size = sum(f.stat().st_size for f in files)
    print(f"{args.name}: {len(files)} documents, {size / 1e6:.2f} MB in {folder}")


def cmd_data_prepare(args: argparse.Namespace) -> None:
    if args.workers < 0:
        raise ScratchLMError(f"--workers must be >= 0, got {args.workers}")
    clean, dedup = CleaningConfig(), DedupConfig()
    if args.config is not None:
        from scratchlm.config import load_config

        recipe = load_config(args.config)  # checks every key and value, with suggestions
        clean, dedup = recipe.clean, recipe.dedup
    data = section_from_args(args, "data", DataConfig(sources=args.sources))
    clean = section_from_args(args, "clean", clean)
    dedup = section_from_args(args, "dedup", dedup)
    if args.no_clean:
        clean.enabled = False
    if args.no_filters:
        clean.filters = False
    if args.no_dedup:
        dedup.exact = dedup.lines = dedup.near = False

    from scratchlm.data.dataset import check_output_folder, prepare_dataset
    from scratchlm.data.pipeline import PipelineSettings
    from scratchlm.tokenizer import BPETokenizer

    # Before any work: an output that cannot be written, or a bad tokenizer, fails at once.
    check_output_folder(args.out, args.overwrite)
    tokenizer = BPETokenizer.load(args.tokenizer)
    settings = PipelineSettings(
        sources=data.sources,
        include=data.include,
        exclude=data.exclude,
        text_field=data.text_field,
        stdin_format=args.stdin_format,
        clean=clean.clean_config(),
        exact=dedup.exact,
        lines=dedup.line_config(),
        near=dedup.near_config(),
        workers=args.workers,
        progress=sys.stderr.isatty(),
    )
    report = prepare_dataset(
        settings,
        tokenizer,
        args.out,
        data.val_fraction,
        data.seed,
        report_settings={"tokenizer": str(args.tokenizer)},
        overwrite=args.overwrite,
    )
    splits, totals = report["splits"], report["totals"]
    shards = len(splits["train"]["shards"]) + len(splits["val"]["shards"])
    print(
        f"wrote {splits['train']['tokens']:,} train and {splits['val']['tokens']:,} validation "
        f"tokens to {args.out} ({shards} shards)"
    )
    kept_bytes = totals["bytes_out"] / totals["bytes_in"] if totals["bytes_in"] else 0.0
    print(
        f"kept {totals['documents_out']:,} of {totals['documents_in']:,} documents "
        f"({kept_bytes:.1%} of the text); the data report is {args.out / 'report.txt'}"
    )


def cmd_data_report(args: argparse.Namespace) -> None:
    from scratchlm.data.report import format_report, load_report

    print(format_report(load_report(args.folder), str(args.folder)))
