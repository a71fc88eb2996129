"""HellaSwag as Zellers et al. publish it (hellaswag_{train,val}.jsonl): one line per item with
activity_label, ctx_a, ctx_b (or ctx), endings and label.

Preprocessed as lm-eval's `hellaswag` task: the query is "<activity label>: <ctx_a> <Ctx_b>"
and WikiHow's bracketed artefacts ("[title]", "[step]") are removed from query and endings;
each ending is scored as " " + ending. acc_norm is the number the papers report.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from scratchlm.core.errors import ScratchLMError
from scratchlm.eval.tasks.reading import read_json_lines, require
from scratchlm.eval.tasks.task import Item, Task, make_item, nonempty


def is_hellaswag(record: dict[str, Any]) -> bool:
    return "endings" in record and ("ctx" in record or "ctx_a" in record)


def load_hellaswag(path: Path) -> Task:
    items = [hellaswag_item(record, where) for where, record in read_json_lines(path)]
    return Task(path.stem, nonempty(items, str(path)))


def hellaswag_item(record: dict[str, Any], where: str) -> Item:
    if "ctx_a" in record:
        context = require(record, "ctx_a", str, where) + " "
        context += require(record, "ctx_b", str, where).capitalize()
    else:
        context = require(record, "ctx", str, where)
    label = require(record, "activity_label", str, where)
    endings = require(record, "endings", list, where)
    gold = require(record, "label", (int, str), where)
    try:
        answer = int(gold)
    except ValueError:
        raise ScratchLMError(
            f'{where}: "label" must be an ending\'s index, got {gold!r} (the test split has '
            "no labels; use the val split)"
        ) from None
    choices = [preprocess(e) if isinstance(e, str) else e for e in endings]
    return make_item(preprocess(label + ": " + context), choices, [answer], where)


def preprocess(text: str) -> str:
    """lm-eval's hellaswag preprocess, step for step."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")
