"""The data stage: named corpora and local text -> documents -> token files -> batches."""

from scratchlm.data.cache import cache_dir
from scratchlm.data.documents import DocumentSet, load_documents, read_documents
from scratchlm.data.loader import TokenBatches
from scratchlm.data.prepare import TextEncoder, load_tokens, prepare_tokens, split_documents
from scratchlm.data.sources import CorpusInfo, fetch_corpus, list_corpora

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
