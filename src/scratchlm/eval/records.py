"""Evaluations kept with the run: runs/<name>/evaluations.json, one entry per evaluation (a
kind and its task), with its metrics, when it ran and the command that ran it. Running the
same evaluation again replaces its entry; the report card (`scratchlm report`) reads them."""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scratchlm.core.atomic_files import atomic_write_text
from scratchlm.core.errors import ScratchLMError

RECORDS_FILE = "evaluations.json"


@dataclass
class EvaluationRecord:
    kind: str  # "language-modelling", "multiple-choice", "humaneval", ...
    task: str  # what was evaluated: a task file's name, a corpus, "validation shards"
    metrics: dict[str, Any]  # e.g. {"acc": 0.61, "acc_stderr": 0.02, "n": 500}
    command: str = field(default_factory=lambda: shlex.join(["scratchlm", *sys.argv[1:]]))
    date: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    checkpoint: str = ""  # the checkpoint folder evaluated ("" : the run's latest)


def read_evaluations(run_dir: Path) -> list[EvaluationRecord]:
    """The run's recorded evaluations, oldest first ([] when none)."""
    path = run_dir / RECORDS_FILE
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        return [EvaluationRecord(**entry) for entry in entries]
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
        raise ScratchLMError(
            f"{path} is damaged ({e}); delete it and run the evaluations again"
        ) from None


def record_evaluation(run_dir: Path, record: EvaluationRecord) -> None:
    """Keep `record` with the run, replacing an earlier one of the same kind and task."""
    kept = [r for r in read_evaluations(run_dir) if (r.kind, r.task) != (record.kind, record.task)]
    entries = [asdict(r) for r in [*kept, record]]
    atomic_write_text(run_dir / RECORDS_FILE, json.dumps(entries, indent=2) + "\n")
