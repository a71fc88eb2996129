"""The real text the benchmarks share: Shakespeare, the King James Bible and the chitchat
conversations (about 21 MB), shuffled by document and cut at a size."""

from __future__ import annotations

import random

from scratchlm.data.documents import read_documents

CORPORA = ("shakespeare", "kjv", "chitchat")


def sample_documents(max_mb: float, seed: int = 1337) -> list[str]:
    """The corpora's documents in a seeded order, up to max_mb MB of UTF-8.

    Shuffled before the cut so that a small --mb still mixes all three kinds of text.
    """
    documents = read_documents(list(CORPORA))  # fetches each corpus on first use
    random.Random(seed).shuffle(documents)
    chosen, total = [], 0
    for doc in documents:
        if total >= max_mb * 1e6:
            break
        chosen.append(doc)
        total += len(doc.encode("utf-8"))
    return chosen
