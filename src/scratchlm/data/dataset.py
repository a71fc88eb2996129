"""Sources → a prepared data folder: the pipeline's output as token shards, with its report.

    prepare_dataset(settings, tokenizer, "data/web")

runs the pipeline (pipeline.py), tokenizes what it keeps into train/val shards (prepare.py) and
writes the data report (report.py). All of it is made in a staging folder beside the output
(`.web.partial-XXXX`, with the pipeline's spill file inside), and moved into the output folder
only when everything succeeded: a run that fails, on bad input or Ctrl-C, leaves the output
folder as it was. A folder that already holds a preparation is replaced only with
`overwrite` (--overwrite, as for every command that would replace its output); then files of
ours from the earlier preparation that the new one does not have (stale shards) are removed,
and other files in the folder are left alone.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scratchlm.core.atomic_files import fsync_dir, staging_folder
from scratchlm.core.errors import ScratchLMError
from scratchlm.core.messages import warn
from scratchlm.core.user_paths import check_output
from scratchlm.data.pipeline import CleanCorpus, PipelineSettings, run_pipeline
from scratchlm.data.prepare import TextEncoder, prepare_shards
from scratchlm.data.report import REPORT_FILES, build_report, write_report
from scratchlm.data.shards import DEFAULT_SHARD_TOKENS
from scratchlm.data.sources import CORPORA

WORK = ".work"  # the pipeline's spill, inside the staging folder
# Files a preparation writes; an earlier preparation's that the new one lacks are removed.
_OURS = re.compile(r"(train|val)(_\d+)?\.bin|meta\.json|" + "|".join(map(re.escape, REPORT_FILES)))


def prepare_dataset(
    settings: PipelineSettings,
    tokenizer: TextEncoder,
    out: str | os.PathLike[str],
    val_fraction: float,
    seed: int,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    report_settings: dict[str, Any] | None = None,
    on_problem: Callable[[str], None] = warn,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Read, clean, dedup, tokenize and report into the folder `out`; return the report.

    An earlier preparation in `out` is replaced only with `overwrite`."""
    out = Path(out)
    check_output_folder(out, overwrite)
    settings = exclude_output(settings, out)
    with staging_folder(out) as stage:
        corpus = run_pipeline(settings, stage / WORK)
        for problem in corpus.read.problems():
            on_problem(problem)
        report = write_prepared(
            corpus, tokenizer, stage, str(out), val_fraction, seed, shard_tokens, report_settings
        )
        install_prepared(stage, out)
    return report


def write_prepared(
    corpus: CleanCorpus,
    tokenizer: TextEncoder,
    folder: Path,
    name: str,
    val_fraction: float,
    seed: int,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    report_settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Shards, meta.json and the data report of `corpus` into `folder`; return the report.

    `name` is what the report calls the folder (its final place, not the staging folder)."""
    start = time.perf_counter()
    meta = prepare_shards(
        corpus,
        tokenizer,
        folder,
        val_fraction,
        seed,
        shard_tokens=shard_tokens,
        progress=corpus.settings.progress,
    )
    corpus.seconds["tokenize_write_shards"] = time.perf_counter() - start
    extra = {"val_fraction": val_fraction, "seed": seed, **(report_settings or {})}
    report = build_report(corpus, meta, folder, extra)
    write_report(report, folder, name)
    return report


def check_output_folder(out: Path, overwrite: bool = False) -> None:
    """Refuse, before any work, an output folder that cannot be written, or that holds an
    earlier preparation when not `overwrite`."""
    check_output(out, folder=True)
    if not overwrite and out.is_dir() and any(_OURS.fullmatch(p.name) for p in out.iterdir()):
        raise ScratchLMError(
            f"{out} already holds prepared data; pass --overwrite to replace it, or choose "
            "another --out"
        )


def exclude_output(settings: PipelineSettings, out: Path) -> PipelineSettings:
    """The settings, also excluding the output folder where it is inside a source folder (so
    a second preparation does not read the first one's report.txt as text)."""
    target = out.resolve()
    patterns = []
    for source in settings.sources:
        if source in CORPORA:
            continue
        try:
            folder = Path(source).expanduser().resolve()
        except (RuntimeError, OSError):  # a symbolic link loop: the reader says so in one line
            continue
        if folder.is_dir() and target.is_relative_to(folder) and target != folder:
            patterns.append(target.relative_to(folder).as_posix() + "/*")
    if not patterns:
        return settings
    return dataclasses.replace(settings, exclude=[*settings.exclude, *patterns])


def install_prepared(stage: Path, out: Path) -> None:
    """Move the prepared files from `stage` into `out`, meta.json last.

    meta.json marks a finished preparation (prepare.py), so it is removed first: if this is
    interrupted, the folder says it is unfinished rather than mixing two preparations.
    """
    shutil.rmtree(stage / WORK, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)
    new = {path.name for path in stage.iterdir()}
    for path in sorted(stage.iterdir()):
        if path.name != "meta.json":
            os.replace(path, out / path.name)
    for path in out.iterdir():
        if path.name not in new and _OURS.fullmatch(path.name) and path.is_file():
            path.unlink()
    os.replace(stage / "meta.json", out / "meta.json")
    fsync_dir(out)
