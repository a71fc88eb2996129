"""Language-modelling evaluation: loss, perplexity and bits per byte of a model on text.

The text comes from the run's validation shards (token ids, decoded to count their bytes), from
a named corpus (shakespeare, kjv, ...) or from files and folders of text, JSONL or Parquet,
read as `data prepare` reads them (scratchlm.data.readers, strict UTF-8) but not cleaned or
deduplicated: the corpus as it is. Each document is scored on its own with rolling windows
(rolling.py), its first token predicted after the prefix token, as lm-eval scores wikitext.

    loss          nats per token: -log p(text) / tokens
    perplexity    exp(loss), per token: it depends on the tokenizer
    bits/byte     -log p(text) / (UTF-8 bytes of the text x ln 2): the same text costs the same
                  bytes whatever the tokenizer, so models with different vocabularies compare

The bytes are those of the text scored: each document's, no end-of-text or other special
token (none is predicted either). With max_tokens a source stops after that many tokens, its
last document cut there and its bytes counted from the tokens kept.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from scratchlm.core.errors import ScratchLMError
from scratchlm.eval.records import EvaluationRecord
from scratchlm.eval.rolling import check_stride, rolling_loglikelihoods
from scratchlm.inference.language_model import LanguageModel

KIND = "language-modelling"
VALIDATION = "validation"  # the name of the run's validation shards in tables and records


@dataclass(frozen=True)
class SourceScore:
    """The summed log-likelihood of one source's text and what it is over."""

    source: str  # "validation", a corpus name, a path as given
    documents: int
    tokens: int  # tokens predicted (every token of every document)
    bytes: int  # UTF-8 bytes of the text those tokens spell
    logprob: float  # summed, in nats

    @property
    def loss(self) -> float:
        return -self.logprob / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_byte(self) -> float:
        return -self.logprob / (self.bytes * math.log(2))

    def metrics(self) -> dict[str, float | int]:
        return {
            "loss": self.loss,
            "perplexity": self.perplexity,
            "bits_per_byte": self.bits_per_byte,
            "documents": self.documents,
            "tokens": self.tokens,
            "bytes": self.bytes,
        }


@dataclass(frozen=True)
class LanguageModelingResult:
    sources: list[SourceScore]
    block_size: int
    stride: int
    max_tokens: int | None = None
    total: SourceScore = field(init=False)

    def __post_init__(self) -> None:
        # Totals are sums, not averages of averages: bigger sources weigh more.
        total = SourceScore(
            "total",
            sum(s.documents for s in self.sources),
            sum(s.tokens for s in self.sources),
            sum(s.bytes for s in self.sources),
            sum(s.logprob for s in self.sources),
        )
        object.__setattr__(self, "total", total)

    def lines(self) -> list[str]:
        """The table the command prints, a total row under several sources."""
        rows = [*self.sources, self.total] if len(self.sources) > 1 else self.sources
        header = ("source", "docs", "tokens", "bytes", "loss", "ppl", "bits/byte")
        cells = [
            (
                s.source,
                f"{s.documents:,}",
                f"{s.tokens:,}",
                f"{s.bytes:,}",
                f"{s.loss:.4f}",
                f"{s.perplexity:.2f}",
                f"{s.bits_per_byte:.4f}",
            )
            for s in rows
        ]
        widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]

        def line(row: Sequence[str]) -> str:
            first = row[0].ljust(widths[0])
            return "  ".join(
                [first, *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))]
            )

        cut = f", the first {self.max_tokens:,} tokens of each source" if self.max_tokens else ""
        return [
            line(header),
            *(line(row) for row in cells),
            f"context {self.block_size} tokens, stride {self.stride}{cut}; loss in nats per token",
        ]

    def record(self) -> EvaluationRecord:
        """The total and each source's numbers, kept with the run under the sources' names."""
        metrics: dict[str, object] = {
            **self.total.metrics(),
            "stride": self.stride,
            "block_size": self.block_size,
            "max_tokens": self.max_tokens,
            "sources": {s.source: s.metrics() for s in self.sources},
        }
        return EvaluationRecord(KIND, ", ".join(s.source for s in self.sources), metrics)


def evaluate_language_modeling(
    lm: LanguageModel,
    sources: Sequence[str] = (),
    validation: bool | None = None,
    stride: int | None = None,
    max_tokens: int | None = None,
    batch_size: int = 16,
) -> LanguageModelingResult:
    """Loss, perplexity and bits per byte of `lm` on each source and in total.

    sources: corpus names, files and folders (each its own row, in order). validation: the
    run's validation shards first; default True when no source is named. stride: of the
    rolling windows, 1..block_size (default block_size: lm-eval's loglikelihood_rolling).
    max_tokens: score only the first that many tokens of each source.
    """
    block = lm.block_size
    stride = block if stride is None else stride
    check_stride(stride, block)
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise ScratchLMError(f"max tokens must be a positive whole number, got {max_tokens!r}")
    if validation is None:
        validation = not sources
    if not validation and not sources:
        raise ScratchLMError(
            "nothing to evaluate: name a corpus or a file, or evaluate the validation shards"
        )
    # Read (and check) every source before the slow part, so a bad file fails at once.
    named: list[tuple[str, list[list[int]]]] = []
    if validation:
        named.append((VALIDATION, _cut(_validation_documents(lm), max_tokens)))
    for source in sources:
        named.append((source, _cut(_text_documents(lm, source), max_tokens)))
    scores = []
    for name, documents in named:
        totals = rolling_loglikelihoods(lm, documents, stride, batch_size, desc=name)
        scores.append(
            SourceScore(
                source=name,
                documents=len(documents),
                tokens=sum(tokens for _, tokens in totals),
                bytes=sum(len(lm.tokenizer.decode_bytes(ids)) for ids in documents),
                logprob=sum(logprob for logprob, _ in totals),
            )
        )
    return LanguageModelingResult(scores, block, stride, max_tokens)


def _validation_documents(lm: LanguageModel) -> Iterator[list[int]]:
    """The ids of each document of the run's validation shards, without its end-of-text."""
    from scratchlm.data.shards import open_shard
    from scratchlm.runs.layout import RunPaths

    if lm.run_dir is None or not (RunPaths(lm.run_dir).data / "meta.json").is_file():
        where = lm.run_dir or "this model"
        raise ScratchLMError(
            f"{where} has no prepared data, so no validation shards (an imported model has "
            "none); name a corpus or a file to evaluate on instead"
        )
    paths = RunPaths(lm.run_dir).shards("val")
    if not paths:
        raise ScratchLMError(
            f"{lm.run_dir} has no validation shards (its data.val_fraction is 0?); name a "
            "corpus or a file to evaluate on instead"
        )
    vocab = lm.model.config.vocab_size
    for path in paths:
        shard = open_shard(path)
        if shard.vocab_size > vocab:
            raise ScratchLMError(
                f"{path} holds ids of a {shard.vocab_size}-token vocabulary but the model has "
                f"{vocab}; were the run's shards prepared with another tokenizer?"
            )
        for i in range(shard.num_documents):
            yield shard.document(i).tolist()


def _text_documents(lm: LanguageModel, source: str) -> Iterator[list[int]]:
    """The ids of each document of a corpus, file or folder, encoded as plain text."""
    from scratchlm.data.documents import load_documents

    for text in load_documents([source]).texts:
        yield lm.encode(text)


def _cut(documents: Iterator[list[int]], max_tokens: int | None) -> list[list[int]]:
    """The documents in order until max_tokens tokens in all, the last one cut to fit."""
    kept: list[list[int]] = []
    left = max_tokens
    for ids in documents:
        if not ids:
            continue
        if left is not None:
            ids = ids[:left]
            left -= len(ids)
        kept.append(ids)
        if left == 0:
            break
    return kept
