"""Multiple choice by log-likelihood: the model picks the choice it finds most likely.

Every choice of a question is scored as a continuation of the question's prompt (its k-shot
prompt, tasks/prompt.py) with eval/scoring.py, all questions of all tasks in one batched pass.
Three accuracies, as lm-evaluation-harness computes them:

    acc        the choice with the highest summed log-probability is right
    acc_norm   the same, each log-probability divided by its choice's length in characters
               (lm-eval's acc_norm: len(choice), without the delimiter), so that long choices,
               whose many tokens each cost probability, are not penalised for their length
    acc_bytes  the same per UTF-8 byte (lm-eval's acc_bytes): independent of the tokenizer
               and of how a script spells a character; equal to acc_norm on ASCII text

with lm-eval's standard errors (the sample standard deviation of the 0/1 scores over the square
root of their number), and the chance level: what picking a choice at random scores.

With chat=True a chat model sees the prompt as a user's message through its chat template and
each choice is scored as its reply, as lm-eval's --apply_chat_template does: the description
becomes a system message and the target delimiter is dropped (the reply starts the choice).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchlm.core.errors import ScratchLMError
from scratchlm.eval.records import EvaluationRecord
from scratchlm.eval.scoring import TokenPair, encode_pair, score_token_pairs
from scratchlm.eval.tasks import Item, Task, fewshot_examples, load_tasks, prompt_text
from scratchlm.eval.tasks.prompt import check_shots
from scratchlm.inference.language_model import LanguageModel

DEFAULT_SEED = 1234  # lm-eval's default few-shot seed


@dataclass(frozen=True)
class ItemScore:
    """How the model answered one question."""

    logprobs: tuple[float, ...]  # summed log p of each choice, in nats
    prediction: int  # the choice with the highest log p (the first, on a tie)
    prediction_norm: int  # the highest log p per character
    prediction_bytes: int  # the highest log p per UTF-8 byte
    correct: bool
    correct_norm: bool
    correct_bytes: bool


@dataclass(frozen=True)
class TaskScores:
    """One row of the table: a task's accuracies with their standard errors."""

    task: str
    n: int
    acc: float
    acc_stderr: float
    acc_norm: float
    acc_norm_stderr: float
    acc_bytes: float
    acc_bytes_stderr: float
    chance: float
    shots: int

    @classmethod
    def of(
        cls, name: str, items: Sequence[Item], scores: Sequence[ItemScore], shots: int
    ) -> TaskScores:
        correct = [float(s.correct) for s in scores]
        correct_norm = [float(s.correct_norm) for s in scores]
        correct_bytes = [float(s.correct_bytes) for s in scores]
        return cls(
            task=name,
            n=len(scores),
            acc=mean(correct),
            acc_stderr=mean_stderr(correct),
            acc_norm=mean(correct_norm),
            acc_norm_stderr=mean_stderr(correct_norm),
            acc_bytes=mean(correct_bytes),
            acc_bytes_stderr=mean_stderr(correct_bytes),
            chance=mean([len(i.answers) / len(i.choices) for i in items]),
            shots=shots,
        )

    def metrics(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "acc": self.acc,
            "acc_stderr": self.acc_stderr,
            "acc_norm": self.acc_norm,
            "acc_norm_stderr": self.acc_norm_stderr,
            "acc_bytes": self.acc_bytes,
            "acc_bytes_stderr": self.acc_bytes_stderr,
            "chance": self.chance,
            "shots": self.shots,
        }


@dataclass(frozen=True)
class TaskResult:
    task: Task
    scores: TaskScores
    items: tuple[ItemScore, ...]  # one per question scored, in the task's order


@dataclass
class MultipleChoiceResult:
    """What `scratchlm eval --task` prints and keeps."""

    source: str  # the task file, or "default suite"
    results: list[TaskResult]
    seed: int
    chat: bool
    overall: TaskScores | None = field(default=None)  # every question of every task, if several

    def __post_init__(self) -> None:
        if len(self.results) > 1 and self.overall is None:
            items = [i for r in self.results for i in r.task.items[: r.scores.n]]
            scores = [s for r in self.results for s in r.items]
            shots = {r.scores.shots for r in self.results}
            self.overall = TaskScores.of(
                "all", items, scores, shots.pop() if len(shots) == 1 else -1
            )

    @property
    def rows(self) -> list[TaskScores]:
        return [r.scores for r in self.results] + ([self.overall] if self.overall else [])

    def lines(self) -> list[str]:
        """A small aligned table: a task a row, then all of them together if several."""
        mode = ", through the chat template" if self.chat else ""
        header = ("task", "n", "acc", "±", "acc_norm", "±", "acc_bytes", "±", "chance", "shots")
        table = [header] + [
            (
                row.task,
                str(row.n),
                f"{row.acc:.3f}",
                _stderr(row.acc_stderr),
                f"{row.acc_norm:.3f}",
                _stderr(row.acc_norm_stderr),
                f"{row.acc_bytes:.3f}",
                _stderr(row.acc_bytes_stderr),
                f"{row.chance:.3f}",
                str(row.shots) if row.shots >= 0 else "mixed",
            )
            for row in self.rows
        ]
        widths = [max(len(r[c]) for r in table) for c in range(len(header))]
        lines = [f"multiple choice: {self.source} (seed {self.seed}{mode})"]
        for row in table:
            cells = [row[0].ljust(widths[0])]
            cells += [v.rjust(w) for v, w in zip(row[1:], widths[1:], strict=True)]
            lines.append("  ".join(cells).rstrip())
        return lines

    def record(self) -> EvaluationRecord:
        """The entry kept with the run: the overall (or only) row's metrics, and each task's."""
        main = self.overall or self.results[0].scores
        metrics = main.metrics() | {"seed": self.seed, "chat": self.chat}
        if len(self.results) > 1:
            metrics["tasks"] = {r.scores.task: r.scores.metrics() for r in self.results}
        shots = "default shots" if main.shots < 0 else f"{main.shots}-shot"
        task = f"{self.source} ({shots}{', chat' if self.chat else ''})"
        return EvaluationRecord(kind="multiple-choice", task=task, metrics=metrics)


def evaluate_multiple_choice(
    lm: LanguageModel,
    task: str | Path | None = None,
    task_format: str | None = None,
    shots: int | None = None,
    seed: int = DEFAULT_SEED,
    batch_size: int = 16,
    chat: bool = False,
    limit: int | None = None,
) -> MultipleChoiceResult:
    """Score `lm` on a task file or folder (task_format: by flag, default by its shape), or on
    the default suite when task is None.

    shots: few-shot examples per question (default: each task's own, 0 but MMLU's 5); seed:
    which examples; chat: through the model's chat template; limit: the first N questions of
    each task only.
    """
    if task is None:
        from scratchlm.eval.default_suite import default_suite

        tasks, source = default_suite(), "default suite"
    else:
        tasks, source = load_tasks(task, task_format), str(task)
    return MultipleChoiceResult(
        source, score_tasks(lm, tasks, shots, seed, batch_size, chat, limit), seed, chat
    )


def score_tasks(
    lm: LanguageModel,
    tasks: Sequence[Task],
    shots: int | None = None,
    seed: int = DEFAULT_SEED,
    batch_size: int = 16,
    chat: bool = False,
    limit: int | None = None,
) -> list[TaskResult]:
    """Every question of every task scored in one batched pass."""
    if limit is not None and limit < 1:
        raise ScratchLMError(f"the question limit must be at least 1, got {limit}")
    pairs: list[TokenPair] = []
    for task in tasks:
        check_shots(task, task.default_shots if shots is None else shots)
    for task in tasks:
        k = task.default_shots if shots is None else shots
        for index, item in enumerate(task.items[:limit]):
            examples = fewshot_examples(task, index, k, seed)
            pairs.extend(_choice_pairs(lm, task, item, examples, chat))
    logprobs = iter(s.logprob for s in score_token_pairs(lm, pairs, batch_size, "choices"))
    results = []
    for task in tasks:
        k = task.default_shots if shots is None else shots
        items = task.items[:limit]
        scored = tuple(judge(item, [next(logprobs) for _ in item.choices]) for item in items)
        results.append(TaskResult(task, TaskScores.of(task.name, items, scored, k), scored))
    return results


def judge(item: Item, logprobs: Sequence[float]) -> ItemScore:
    """Which choice the model picks, by total, per-character and per-byte log-probability."""
    pairs = list(zip(logprobs, item.choices, strict=True))
    prediction = argmax(logprobs)
    prediction_norm = argmax([lp / len(choice) for lp, choice in pairs])
    prediction_bytes = argmax([lp / len(choice.encode("utf-8")) for lp, choice in pairs])
    return ItemScore(
        tuple(logprobs),
        prediction,
        prediction_norm,
        prediction_bytes,
        prediction in item.answers,
        prediction_norm in item.answers,
        prediction_bytes in item.answers,
    )


def _choice_pairs(
    lm: LanguageModel, task: Task, item: Item, examples: list[Item], chat: bool
) -> list[TokenPair]:
    if not chat:
        text = prompt_text(task, item, examples)
        return [encode_pair(lm, text, task.target_delimiter + c) for c in item.choices]
    body = prompt_text(task, item, examples, description=False)
    messages = [{"role": "system", "content": task.description}] if task.description else []
    context = lm.encode_chat([*messages, {"role": "user", "content": body}])
    # As lm-eval's encode_pair on the rendered template: whitespace that ends the context (the
    # newline after "assistant") is scored as the start of every choice.
    trailing = ""
    while context and context[-1] not in lm.tokenizer.special_tokens.values():
        piece = lm.tokenizer.decode([context[-1]])
        if piece.strip():
            break
        trailing, context = piece + trailing, context[:-1]
    return [(context, lm.encode(trailing + choice)) for choice in item.choices]


def argmax(values: Sequence[float]) -> int:
    """The index of the largest value, the first on a tie (numpy's argmax, as lm-eval)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def mean_stderr(values: Sequence[float]) -> float:
    """lm-eval's stderr of a mean: the sample standard deviation (n - 1) over sqrt(n); NaN for
    fewer than two values."""
    n = len(values)
    if n < 2:
        return math.nan
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1) / n)


def _stderr(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"
