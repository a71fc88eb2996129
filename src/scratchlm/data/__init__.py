"""The data stage: named corpora and local text -> documents -> token files -> batches."""

from typing import TYPE_CHECKING, Any

from scratchlm.data.cache import cache_dir
from scratchlm.data.documents import DocumentSet, load_documents, read_documents
from scratchlm.data.prepare import TextEncoder, load_tokens, prepare_tokens, split_documents
from scratchlm.data.sources import CorpusInfo, fetch_corpus, list_corpora

if TYPE_CHECKING:
    from scratchlm.data.loader import TokenBatches


def __getattr__(name: str) -> Any:
    # The loader needs torch, which takes seconds to import; load it only when it is asked
    # for, so `scratchlm data ...` and `scratchlm tokenizer ...` start at once.
    if name == "TokenBatches":
        from scratchlm.data.loader import TokenBatches

        return TokenBatches
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CorpusInfo",
    "DocumentSet",
    "TextEncoder",
    "TokenBatches",
    "cache_dir",
    "fetch_corpus",
    "list_corpora",
    "load_documents",
    "load_tokens",
    "prepare_tokens",
    "read_documents",
    "split_documents",
]
