"""MMLU as Hendrycks et al. publish it: data/{dev,val,test}/<subject>_<split>.csv, no header,
each row question, A, B, C, D, answer letter.

Scored as the original (and lm-eval's `mmlu`): per subject, the header "The following are
multiple choice questions (with answers) about <subject>.\\n\\n", the dev split's first five
questions solved, then the question with its lettered options and "Answer:"; the choices are
the letters, each scored as " A" .. " D", so the model picks a letter, not an answer text.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from scratchlm.core.errors import ScratchLMError
from scratchlm.core.user_files import read_text
from scratchlm.eval.tasks.task import Item, Task, make_item, nonempty

LETTERS = ("A", "B", "C", "D")
SHOTS = 5  # the original's k, drawn in order from the dev split


def load_mmlu(path: Path, split: str = "test") -> list[Task]:
    """One Task per subject: from the data folder (with dev/ and test/), a split's folder, or
    one <subject>_<split>.csv; the few-shot examples come from the sibling dev/ folder."""
    if path.is_file():
        files = [path]
    elif (path / split).is_dir():
        files = sorted((path / split).glob(f"*_{split}.csv"))
    else:
        files = sorted(path.glob("*.csv"))
    if not files:
        raise ScratchLMError(
            f"{path} has no MMLU files; give the data folder (with {split}/<subject>_{split}.csv "
            "and dev/<subject>_dev.csv) or one subject's CSV"
        )
    return [_subject_task(file) for file in files]


def _subject_task(file: Path) -> Task:
    stem = file.stem
    subject, _, split = stem.rpartition("_")
    if not subject or split not in ("dev", "val", "test"):
        subject = stem  # a file named otherwise: its whole stem is the subject
    items = read_mmlu_csv(file)
    dev_file = file.parent.parent / "dev" / f"{subject}_dev.csv"
    pool = read_mmlu_csv(dev_file) if dev_file.is_file() and dev_file != file else []
    return Task(
        subject,
        nonempty(items, str(file)),
        fewshot=tuple(pool),
        description=(
            "The following are multiple choice questions (with answers) about "
            f"{subject.replace('_', ' ')}.\n\n"
        ),
        target_delimiter=" ",
        fewshot_delimiter="\n\n",
        default_shots=min(SHOTS, len(pool)),
        fewshot_order="first",
    )


def read_mmlu_csv(file: Path) -> list[Item]:
    items = []
    rows = csv.reader(io.StringIO(read_text(file, "MMLU file"), newline=""))
    for row in rows:
        where = f"{file}:{rows.line_num}"
        if not row or not "".join(row).strip():
            continue
        if len(row) != 6:
            raise ScratchLMError(
                f"{where}: an MMLU row has 6 columns (question, A, B, C, D, answer letter), "
                f"this one has {len(row)}"
            )
        question, *options, letter = row
        if letter.strip() not in LETTERS:
            raise ScratchLMError(f"{where}: the answer must be A, B, C or D, got {letter!r}")
        query = question.strip() + "".join(
            f"\n{letter_}. {option}" for letter_, option in zip(LETTERS, options, strict=True)
        )
        items.append(
            make_item(query + "\nAnswer:", LETTERS, [LETTERS.index(letter.strip())], where)
        )
    return items
