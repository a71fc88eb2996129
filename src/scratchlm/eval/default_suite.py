"""The default multiple-choice suite: HellaSwag-style tasks built from the project's own corpora,
so `scratchlm eval RUN --task default` means something with no benchmark downloaded.

Each question is a passage and four candidate continuations: the passage's true next line and
three distractor lines drawn from other documents of the same source, so only the passage
itself tells them apart (style and vocabulary do not):

    shakespeare  the lines before (speakers' names included) -> the next line of the play;
                 distractors are lines of other plays
    kjv          the verses before -> the next verse; distractors are verses of other books
    chitchat     the messages before -> the next message; distractors come from other chats

Distractors are within 0.75x-1.33x of the true line's length, so picking by length (the short
one has the highest log-probability; acc_norm undoes that) gains little. The right answer's
position is random. **Chance level: 0.25** for acc and acc_norm alike (1 right of 4).

The suite is built deterministically: the corpora are pinned by SHA-256 (data/sources.py), the
documents are read in sorted order and every draw comes from random.Random seeded with the
suite's version and the source's name. It is cached as plain JSON task files (tasks/plain.py),
<cache>/eval/default-suite-v1/<source>.json, which a user can read, or score with --task.
"""

from __future__ import annotations

import bisect
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from scratchlm.core.atomic_files import atomic_write_text
from scratchlm.core.cache import cache_dir
from scratchlm.core.errors import ScratchLMError
from scratchlm.core.messages import status
from scratchlm.eval.tasks.plain import load_plain_json
from scratchlm.eval.tasks.task import Task

SUITE_VERSION = 1  # bump when anything below changes what is built
QUESTIONS_PER_SOURCE = 200
CHOICES = 4
CHANCE = 1 / CHOICES
LENGTH_RATIO = 4 / 3  # a distractor's length is within [L / ratio, L * ratio]
CONTEXT_CHARS = 300  # the passage: whole lines before the answer, up to this many characters


@dataclass(frozen=True)
class Source:
    """How one corpus is cut into lines and which lines make answers."""

    corpus: str
    joiner: str  # between the lines of a passage, and before the answer
    min_chars: int  # an answer's (and distractor's) length in characters
    max_chars: int
    skip_header_lines: int = 0  # lines at a document's start that are not its text

    def lines(self, text: str) -> list[str]:
        lines = [line.strip() for line in text.splitlines()]
        return [line for line in lines[self.skip_header_lines :] if line]

    def is_answer(self, line: str) -> bool:
        if not self.min_chars <= len(line) <= self.max_chars:
            return False
        if self.corpus == "shakespeare":
            # Not a speaker's name ("HAMLET.") or a stage direction ("Enter ...", "[Exit.]").
            return not (line.isupper() or line.startswith(("[", "Enter ", "Exit", "Re-enter")))
        return True


SOURCES = (
    Source("shakespeare", "\n", 30, 80),
    Source("kjv", " ", 40, 200, skip_header_lines=1),  # each book starts with its name
    Source("chitchat", "\n", 20, 150),
)


def suite_folder() -> Path:
    return cache_dir() / "eval" / f"default-suite-v{SUITE_VERSION}"


def default_suite() -> list[Task]:
    """The suite's tasks, built (and the corpora fetched) the first time."""
    folder = suite_folder()
    tasks = []
    for source in SOURCES:
        path = folder / f"{source.corpus}.json"
        if not path.is_file():
            write_suite_task(path, source)
        tasks.append(load_plain_json(path))
    return tasks


def write_suite_task(path: Path, source: Source) -> None:
    from scratchlm.data.sources import fetch_corpus

    corpus = fetch_corpus(source.corpus)
    documents = [p.read_text(encoding="utf-8") for p in sorted(corpus.glob("*.txt"))]
    status(f"building the default suite's {source.corpus} task ({len(documents)} documents)")
    items = build_questions(source, documents, QUESTIONS_PER_SOURCE)
    task = {
        "description": "",
        "target_delimiter": source.joiner,
        "items": [{"context": c, "choices": list(x), "answer": a} for c, x, a in items],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(task, indent=1, ensure_ascii=False) + "\n")


Question = tuple[str, tuple[str, ...], int]  # (passage, choices, index of the true line)


def build_questions(source: Source, documents: Sequence[str], count: int) -> list[Question]:
    """`count` questions from `documents`, the same every time for the same documents."""
    rng = random.Random(f"scratchlm default suite v{SUITE_VERSION} {source.corpus}")
    lines = [source.lines(text) for text in documents]
    # Every line that may be an answer or a distractor, by length: (length, document, line).
    pool = sorted(
        (len(line), d, i)
        for d, doc in enumerate(lines)
        for i, line in enumerate(doc)
        if source.is_answer(line)
    )
    lengths = [length for length, _, _ in pool]
    answers = [(d, i) for _, d, i in pool if i > 0]  # a passage needs a line before it
    answers.sort()  # document order, so the draw below does not depend on the length sort
    if len(answers) < count or len({d for d, _ in answers}) < 2:
        raise ScratchLMError(
            f"the {source.corpus} corpus is too small for the default suite ({len(answers)} "
            f"candidate lines in {len(documents)} documents)"
        )
    questions: list[Question] = []
    for d, i in rng.sample(answers, len(answers)):
        if len(questions) == count:
            break
        passage = _passage(lines[d][:i], source.joiner)
        if passage is None:
            continue
        true_line = lines[d][i]
        distractors = _distractors(true_line, d, passage, lines, pool, lengths, rng)
        if distractors is None:
            continue
        choices = list(distractors)
        answer = rng.randrange(CHOICES)
        choices.insert(answer, true_line)
        questions.append((passage, tuple(choices), answer))
    if len(questions) < count:
        raise ScratchLMError(f"the {source.corpus} corpus gave only {len(questions)} questions")
    return questions


def _passage(before: list[str], joiner: str) -> str | None:
    """The whole lines just before the answer, up to CONTEXT_CHARS (None: the line just before
    is longer than that)."""
    taken: list[str] = []
    size = 0
    for line in reversed(before):
        size += len(line) + len(joiner)
        if size > CONTEXT_CHARS:
            break
        taken.append(line)
    return joiner.join(reversed(taken)) if taken else None


def _distractors(
    true_line: str,
    document: int,
    passage: str,
    lines: list[list[str]],
    pool: list[tuple[int, int, int]],
    lengths: list[int],
    rng: random.Random,
) -> list[str] | None:
    """CHOICES - 1 distinct lines of similar length from other documents (None: too few)."""
    low = bisect.bisect_left(lengths, len(true_line) / LENGTH_RATIO)
    high = bisect.bisect_right(lengths, len(true_line) * LENGTH_RATIO)
    chosen: list[str] = []
    for _ in range(100):  # a few draws each; the pools hold thousands of lines
        if len(chosen) == CHOICES - 1 or high <= low:
            break
        _, d, i = pool[rng.randrange(low, high)]
        line = lines[d][i]
        if d == document or line == true_line or line in chosen or line in passage:
            continue
        chosen.append(line)
    return chosen if len(chosen) == CHOICES - 1 else None
