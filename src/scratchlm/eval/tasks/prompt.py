"""A question's k-shot prompt: the task's description, k solved examples, then the question.

    description + (example query + target_delimiter + its right choice + fewshot_delimiter) x k
                + query

which is lm-eval's layout. The examples come from the task's own few-shot pool (MMLU's dev
split, a plain file's "fewshot" lines) or else from the task's other questions, never the
question itself; they are drawn with a seed per question, so a question's prompt depends only
on the seed and its position, not on which other questions are scored with it.
"""

from __future__ import annotations

import random

from scratchlm.core.errors import ScratchLMError
from scratchlm.eval.tasks.task import Item, Task


def check_shots(task: Task, shots: int) -> None:
    """A clear error before any scoring when k cannot be met for `task`."""
    if shots < 0:
        raise ScratchLMError(f"the number of few-shot examples must be 0 or more, got {shots}")
    pool, what = (
        (len(task.fewshot), "few-shot examples")
        if task.fewshot
        else (len(task.items) - 1, "other questions to draw examples from")
    )
    if shots > pool:
        raise ScratchLMError(
            f"task {task.name}: {shots}-shot prompts need {shots} examples but it has only "
            f"{pool} {what}; lower the number of shots or add examples"
        )


def fewshot_examples(task: Task, index: int, shots: int, seed: int) -> list[Item]:
    """The `shots` solved examples for question `index` of `task`."""
    if shots == 0:
        return []
    check_shots(task, shots)
    pool = list(task.fewshot) or [item for j, item in enumerate(task.items) if j != index]
    if task.fewshot_order == "first":
        return pool[:shots]
    # A string seed is hashed (SHA-512) by random, the same on every machine and Python run.
    return random.Random(f"{seed}:{index}").sample(pool, shots)


def prompt_text(task: Task, item: Item, examples: list[Item], description: bool = True) -> str:
    """The text every choice of `item` is scored after (each choice as target_delimiter +
    choice); description=False leaves the task's description out (a chat's system message)."""
    solved = "".join(
        example.query
        + task.target_delimiter
        + example.choices[example.answer]
        + task.fewshot_delimiter
        for example in examples
    )
    return (task.description if description else "") + solved + item.query
