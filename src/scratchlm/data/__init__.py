"""The data stage: corpora and local text -> clean, deduplicated documents -> token shards
-> batches, with a data report of what was removed and why."""

from scratchlm.data.dataset import prepare_dataset
from scratchlm.data.documents import DocumentSet, load_documents, read_documents
from scratchlm.data.pipeline import CleanCorpus, PipelineSettings, run_pipeline
from scratchlm.data.prepare import TextEncoder, prepare_shards, prepared_shards
from scratchlm.data.report import load_report
from scratchlm.data.shards import TokenShard, TokenShardWriter, open_shard
from scratchlm.data.sources import CorpusInfo, fetch_corpus, list_corpora

__all__ = [
    "CleanCorpus",
    "CorpusInfo",
    "DocumentSet",
    "PipelineSettings",
    "TextEncoder",
    "TokenShard",
    "TokenShardWriter",
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
]
