"""A task file or folder to Tasks: the format named (--format), or told by the file's shape.

folder or .csv                      mmlu
.json with examples/target_scores   bigbench
.json otherwise                     plain (a list of questions, or {"items": [...]})
.jsonl with endings and ctx(_a)     hellaswag
.jsonl with answerKey               arc
.jsonl otherwise                    plain (one {"question", "choices", "answer"} a line)
"""

from __future__ import annotations

from pathlib import Path

from scratchlm.core.errors import ScratchLMError
from scratchlm.core.user_files import read_json
from scratchlm.eval.tasks.arc import is_arc, load_arc
from scratchlm.eval.tasks.bigbench import is_bigbench, load_bigbench
from scratchlm.eval.tasks.hellaswag import is_hellaswag, load_hellaswag
from scratchlm.eval.tasks.mmlu import load_mmlu
from scratchlm.eval.tasks.plain import load_plain_json, load_plain_jsonl
from scratchlm.eval.tasks.reading import read_json_lines
from scratchlm.eval.tasks.task import Task

TASK_FORMATS = ("plain", "bigbench", "mmlu", "hellaswag", "arc")


def load_tasks(path: str | Path, task_format: str | None = None) -> list[Task]:
    """The tasks in `path` (MMLU: one per subject; every other format: one)."""
    path = Path(path)
    if task_format is not None and task_format not in TASK_FORMATS:
        raise ScratchLMError(
            f"unknown task format {task_format!r}; use one of {', '.join(TASK_FORMATS)}"
        )
    if not path.exists():
        raise ScratchLMError(f"task file {path} does not exist")
    task_format = task_format or detect_format(path)
    if task_format == "mmlu":
        return load_mmlu(path)
    if path.is_dir():
        raise ScratchLMError(f"{path} is a folder; a {task_format} task is one file")
    if task_format == "bigbench":
        return [load_bigbench(path)]
    if task_format == "hellaswag":
        return [load_hellaswag(path)]
    if task_format == "arc":
        return [load_arc(path)]
    return [load_plain_json(path) if path.suffix == ".json" else load_plain_jsonl(path)]


def detect_format(path: Path) -> str:
    """The format of `path` by its shape; a .jsonl file by its first record."""
    if path.is_dir() or path.suffix == ".csv":
        return "mmlu"
    if path.suffix == ".json":
        return "bigbench" if is_bigbench(read_json(path, "task file")) else "plain"
    records = read_json_lines(path)
    if not records:
        return "plain"  # which reports the empty task
    _, first = records[0]
    if is_hellaswag(first):
        return "hellaswag"
    if is_arc(first):
        return "arc"
    return "plain"
