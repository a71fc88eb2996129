"""The plain task format: our own, the simplest a person writes by hand.

JSON Lines, one question a line:

    {"question": "2 + 2 =", "choices": ["3", "4"], "answer": 1}

"context" may stand for "question"; a line with "fewshot": true is a solved example for k-shot
prompts rather than a question to score. Each choice is scored as the continuation " " + choice
after the question (lm-eval's convention: the separating space belongs to the continuation).

Or one JSON file: a list of such objects, or an object that also sets the prompt's layout with
lm-eval's names:

    {"description": "...", "target_delimiter": " ", "fewshot_delimiter": "\\n\\n",
     "fewshot": [{...}, ...], "items": [{...}, ...]}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scratchlm.core.errors import ScratchLMError
from scratchlm.core.user_files import json_kind, read_json
from scratchlm.eval.tasks.reading import as_object, read_json_lines, require
from scratchlm.eval.tasks.task import Item, Task, make_item, nonempty

LAYOUT_KEYS = ("description", "target_delimiter", "fewshot_delimiter")


def load_plain_jsonl(path: Path) -> Task:
    items: list[Item] = []
    pool: list[Item] = []
    for where, record in read_json_lines(path):
        item = plain_item(record, where)
        is_example = record.get("fewshot", False)
        if not isinstance(is_example, bool):
            raise ScratchLMError(f'{where}: "fewshot" must be true or false')
        (pool if is_example else items).append(item)
    return Task(path.stem, nonempty(items, str(path)), fewshot=tuple(pool))


def load_plain_json(path: Path) -> Task:
    data = read_json(path, "task file")
    layout: dict[str, Any] = {}
    pool_data: list[Any] = []
    if isinstance(data, list):
        items_data = data
    else:
        data = as_object(data, str(path))
        unknown = set(data) - {"items", "fewshot", *LAYOUT_KEYS}
        if unknown:
            raise ScratchLMError(
                f"{path}: unknown key {sorted(unknown)[0]!r}; a task object has "
                f'"items" and optionally "fewshot", {", ".join(map(repr, LAYOUT_KEYS))}'
            )
        items_data = require(data, "items", list, str(path))
        pool_data = require(data, "fewshot", list, str(path)) if "fewshot" in data else []
        for key in LAYOUT_KEYS:
            if key in data:
                layout[key] = require(data, key, str, str(path))
    items = [plain_item(as_object(r, w), w) for w, r in _numbered(path, "items", items_data)]
    pool = [plain_item(as_object(r, w), w) for w, r in _numbered(path, "fewshot", pool_data)]
    return Task(path.stem, nonempty(items, str(path)), fewshot=tuple(pool), **layout)


def plain_item(record: dict[str, Any], where: str) -> Item:
    if "question" in record and "context" in record:
        raise ScratchLMError(f'{where}: has both "question" and "context"; keep one')
    if "question" not in record and "context" not in record:
        raise ScratchLMError(f'{where}: missing key "question" (or "context")')
    query = require(record, "question" if "question" in record else "context", str, where)
    choices = require(record, "choices", list, where)
    if "answer" not in record:
        raise ScratchLMError(f'{where}: missing key "answer" (the index of the right choice)')
    answer = record["answer"]
    if not isinstance(answer, int) or isinstance(answer, bool):
        raise ScratchLMError(
            f'{where}: "answer" must be the index of the right choice (0 for the first), '
            f"got {json_kind(answer)}"
        )
    return make_item(query, choices, [answer], where)


def _numbered(path: Path, key: str, values: list[Any]) -> list[tuple[str, Any]]:
    return [(f"{path}: {key}[{i}]", value) for i, value in enumerate(values)]
