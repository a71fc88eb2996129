"""ARC (AI2 Reasoning Challenge) JSONL, in either published layout:

    AI2's files:      {"id", "question": {"stem", "choices": [{"text", "label"}, ...]}, "answerKey"}
    Hugging Face's:   {"id", "question", "choices": {"text": [...], "label": [...]}, "answerKey"}

Prompted as lm-eval's arc_easy / arc_challenge: "Question: <question>\\nAnswer:", each choice's
text scored as " " + text; answerKey names the right choice's label ("A".."E" or "1".."5").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scratchlm.core.errors import ScratchLMError
from scratchlm.eval.tasks.reading import as_object, read_json_lines, require
from scratchlm.eval.tasks.task import Item, Task, make_item, nonempty


def is_arc(record: dict[str, Any]) -> bool:
    return "answerKey" in record


def load_arc(path: Path) -> Task:
    items = [arc_item(record, where) for where, record in read_json_lines(path)]
    return Task(path.stem, nonempty(items, str(path)))


def arc_item(record: dict[str, Any], where: str) -> Item:
    question = require(record, "question", (str, dict), where)
    if isinstance(question, dict):  # AI2's layout
        stem = require(question, "stem", str, where + " question")
        entries = require(question, "choices", list, where + " question")
        texts, labels = [], []
        for number, entry in enumerate(entries):
            at = f"{where} question.choices[{number}]"
            entry = as_object(entry, at)
            texts.append(require(entry, "text", str, at))
            labels.append(require(entry, "label", str, at))
    else:  # Hugging Face's layout
        stem = question
        choices = as_object(require(record, "choices", dict, where), where)
        texts = require(choices, "text", list, where + " choices")
        labels = require(choices, "label", list, where + " choices")
        if len(texts) != len(labels):
            raise ScratchLMError(
                f"{where}: choices has {len(texts)} texts but {len(labels)} labels"
            )
    key = require(record, "answerKey", str, where)
    if key not in labels:
        raise ScratchLMError(f"{where}: answerKey {key!r} is not one of the labels {labels}")
    return make_item(f"Question: {stem}\nAnswer:", texts, [labels.index(key)], where)
