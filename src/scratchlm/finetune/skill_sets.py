"""Skills to teach and check exactly: conversations the project generates with a seed, each
with one right reply, so held-out exact-match accuracy says whether the skill was learned.

    addition  "What is 47 + 38?" -> "85"                       two-digit sums
    dates     "Write 2024-03-07 as a date in words." -> "7 March 2024"

SmolLM2-135M-Instruct answers neither in the expected form (it explains instead of answering,
and gets sums wrong): a LoRA fine-tune teaches it (README, "Fine-tuning").
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable

Conversation = list[dict[str, str]]
SKILL_EXAMPLES = 3000  # conversations a set holds; held-out ones are split off by the run
SKILL_SEED = 0  # a set is the same everywhere: runs and their evaluations agree on it

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")  # fmt: skip


def _exchange(question: str, answer: str) -> Conversation:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def addition(n: int = SKILL_EXAMPLES, seed: int = SKILL_SEED) -> list[Conversation]:
    """n distinct sums of two two-digit numbers (of the 8,100 there are)."""
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    random.Random(f"addition:{seed}").shuffle(pairs)
    return [_exchange(f"What is {a} + {b}?", str(a + b)) for a, b in pairs[:n]]


def dates(n: int = SKILL_EXAMPLES, seed: int = SKILL_SEED) -> list[Conversation]:
    """n distinct ISO dates between 1900 and 2099, to be written out in words."""
    rng = random.Random(f"dates:{seed}")
    first = datetime.date(1900, 1, 1).toordinal()
    last = datetime.date(2099, 12, 31).toordinal()
    days = rng.sample(range(first, last + 1), n)
    conversations = []
    for ordinal in days:
        day = datetime.date.fromordinal(ordinal)
        words = f"{day.day} {MONTHS[day.month - 1]} {day.year}"
        conversations.append(_exchange(f"Write {day.isoformat()} as a date in words.", words))
    return conversations


SKILL_SETS: dict[str, Callable[[], list[Conversation]]] = {
    "addition": addition,
    "dates": dates,
}
