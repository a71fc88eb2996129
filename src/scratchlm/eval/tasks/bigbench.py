"""BIG-bench JSON tasks (task.json): multiple choice by "target_scores".

    {"task_prefix": "...", "example_input_prefix": "\\nQ: ", "example_output_prefix": "\\nA: ",
     "choice_prefix": "\\n  choice: ", "append_choices_to_input": true,
     "few_shot_example_separator": "\\n",
     "examples": [{"input": "...", "target_scores": {"yes": 1, "no": 0}}, ...]}

Laid out as BIG-bench's json_task (and lm-eval's port of it) does, with its defaults: the prompt
is task_prefix, solved examples joined by the separator, then input_prefix + input, the choices
listed after choice_prefix (sorted, then permuted by numpy's RandomState(42), as BIG-bench
does), and output_prefix. Each target_scores key is scored right after output_prefix (whose
final space belongs to the continuation); the highest-scoring keys are right (ties allowed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scratchlm.core.errors import ScratchLMError
from scratchlm.core.user_files import json_kind, read_json
from scratchlm.eval.tasks.reading import as_object, require
from scratchlm.eval.tasks.task import Task, make_item, nonempty

PERMUTATION_SEED = 42  # BIG-bench's json_task seed for the order of listed choices


def is_bigbench(data: Any) -> bool:
    """Whether parsed JSON looks like a BIG-bench task: examples with target_scores."""
    if not isinstance(data, dict) or not isinstance(data.get("examples"), list):
        return False
    return any(isinstance(e, dict) and "target_scores" in e for e in data["examples"])


def load_bigbench(path: Path) -> Task:
    data = as_object(read_json(path, "BIG-bench task"), str(path))
    where = str(path)
    examples = require(data, "examples", list, where)

    def text(key: str, default: str) -> str:
        return str(require(data, key, str, where)) if key in data else default

    input_prefix = text("example_input_prefix", "\nQ: ")
    output_prefix = text("example_output_prefix", "\nA: ")
    choice_prefix = text("choice_prefix", "\n  choice: ")
    append = data.get("append_choices_to_input", True)
    if not isinstance(append, bool):
        raise ScratchLMError(f'{where}: "append_choices_to_input" must be true or false')
    items = []
    for number, example in enumerate(examples):
        at = f"{path}: examples[{number}]"
        example = as_object(example, at)
        query = require(example, "input", str, at)
        scores = require(example, "target_scores", dict, at)
        for choice, score in scores.items():
            if not isinstance(score, (int, float)) or isinstance(score, bool):
                raise ScratchLMError(
                    f'{at}: target_scores["{choice}"] must be a number, got {json_kind(score)}'
                )
        choices = list(scores)
        if len(choices) >= 2 and append:
            listed = np.random.RandomState(PERMUTATION_SEED).permutation(sorted(choices))
            query += choice_prefix + choice_prefix.join(str(c) for c in listed)
        best = max(scores.values()) if scores else 0
        answers = [i for i, c in enumerate(choices) if scores[c] == best]
        items.append(make_item(input_prefix + query + output_prefix, choices, answers, at))
    return Task(
        str(data.get("name", path.stem)),
        nonempty(items, where),
        description=text("task_prefix", ""),
        target_delimiter="",
        fewshot_delimiter=text("few_shot_example_separator", "\n"),
    )
