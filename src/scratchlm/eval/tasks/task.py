"""What every multiple-choice format becomes: a Task of Items, plus how its prompts are laid out.

An Item is a query (the text before the answer) and its choices; each choice is scored as the
continuation `target_delimiter + choice` after the prompt, as lm-evaluation-harness's
multiple_choice tasks do. The prompt is the task's description, then k solved examples, each
`query + target_delimiter + right choice`, joined by `fewshot_delimiter`, then the query
(tasks/prompt.py builds it). Each format file (plain.py, bigbench.py, mmlu.py, hellaswag.py,
arc.py) fills these fields as its reference harness lays out its prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from scratchlm.core.errors import ScratchLMError
from scratchlm.core.user_files import json_kind

FewshotOrder = Literal["random", "first"]


@dataclass(frozen=True)
class Item:
    """One question, its choices, and which of them are right."""

    query: str
    choices: tuple[str, ...]
    answers: tuple[int, ...]  # indices of the right choices: one, but BIG-bench allows ties
    where: str  # "tasks.jsonl:12": where it came from, for messages

    @property
    def answer(self) -> int:
        """The right choice a solved few-shot example shows."""
        return self.answers[0]


@dataclass(frozen=True)
class Task:
    name: str
    items: tuple[Item, ...]
    fewshot: tuple[Item, ...] = ()  # the task's own pool of examples; empty: the other items
    description: str = ""  # text before everything (lm-eval's description)
    target_delimiter: str = " "  # between a query and its choice
    fewshot_delimiter: str = "\n\n"  # between solved examples, and before the query
    default_shots: int = 0  # k when the user gives none (MMLU: 5)
    fewshot_order: FewshotOrder = "random"  # "first": the pool's first k, as MMLU's dev split

    @property
    def chance(self) -> float:
        """Expected accuracy of picking a choice uniformly at random."""
        return sum(len(i.answers) / len(i.choices) for i in self.items) / len(self.items)


def make_item(query: str, choices: Sequence[object], answers: Sequence[int], where: str) -> Item:
    """An Item, checked: at least two distinct non-empty text choices, answers among them."""
    if not isinstance(choices, (list, tuple)):
        raise ScratchLMError(f"{where}: choices must be a list of texts, got {json_kind(choices)}")
    if len(choices) < 2:
        raise ScratchLMError(
            f"{where}: a question needs at least 2 choices, this one has {len(choices)}"
        )
    for number, choice in enumerate(choices):
        if not isinstance(choice, str):
            raise ScratchLMError(f"{where}: choice {number} is {json_kind(choice)}, not text")
        if not choice.strip():
            raise ScratchLMError(f"{where}: choice {number} is empty")
    for answer in answers:
        if not 0 <= answer < len(choices):
            raise ScratchLMError(
                f"{where}: the answer {answer} is not a choice index (0 to {len(choices) - 1})"
            )
    return Item(query, tuple(str(c) for c in choices), tuple(answers), where)


def nonempty(items: Sequence[Item], source: str) -> tuple[Item, ...]:
    """`items` as a tuple; a task file with none (`source`: its path) is an error."""
    if not items:
        raise ScratchLMError(f"{source}: the task has no questions; add at least one")
    return tuple(items)
