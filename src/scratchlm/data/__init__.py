"""The data stage: corpora and local text -> clean, deduplicated documents -> token shards
-> batches, with a data report of what was removed and why."""

from typing import TYPE_CHECKING, Any

from scratchlm.core.cache import cache_dir
from scratchlm.data.dataset import prepare_dataset
from scratchlm.data.documents import DocumentSet, load_documents, read_documents
from scratchlm.data.pipeline import CleanCorpus, PipelineSettings, run_pipeline
from scratchlm.data.prepare import TextEncoder, prepare_shards, prepared_shards
from scratchlm.data.report import load_report
from scratchlm.data.shards import TokenShard, TokenShardWriter, open_shard
from scratchlm.data.sources import CorpusInfo, fetch_corpus, list_corpora
from scratchlm.data.split import DocumentSplit, split_documents

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
    "CleanCorpus",
    "CorpusInfo",
    "DocumentSet",
    "DocumentSplit",
    "PipelineSettings",
    "TextEncoder",
    "TokenBatches",
    "TokenShard",
    "TokenShardWriter",
    "cache_dir",
    "fetch_corpus",
    "list_corpora",
    "load_documents",
    "load_report",
    "open_shard",
    "prepare_dataset",
    "prepare_shards",
    "prepared_shards",
    "read_documents",
    "run_pipeline",
    "split_documents",
]
