"""Language-modelling evaluation: rolling log-likelihood (lm-eval's windows, any stride) and
loss, perplexity and bits per byte per source, checked on tiny models by hand."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from scratchlm.core.errors import ScratchLMError
from scratchlm.data.prepare import prepare_shards
from scratchlm.data.shards import open_shard
from scratchlm.eval.language_modeling import VALIDATION, evaluate_language_modeling
from scratchlm.eval.rolling import rolling_loglikelihood, rolling_loglikelihoods, rolling_windows
from scratchlm.inference.language_model import LanguageModel
from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig
from scratchlm.runs.layout import RunPaths
from scratchlm.tokenizer import BPETokenizer

EOT = 256
TEXT = (
    "The café on the corner serves naïve coffee. The corner café is small.\n"
    "Über den Wolken: the sky is blue, the sea is blue, the café is open.\n"
)
DOCUMENTS = [
    f"Document {i}: the café by the sea, {'ä' * (i % 3)} and the sky is blue." for i in range(40)
]


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    # Merges, so tokens and bytes differ; multi-byte characters, so bytes and characters do.
    return BPETokenizer.train(TEXT * 3, vocab_size=300)


def tiny_lm(tokenizer: BPETokenizer, block_size: int, run_dir: Path | None = None) -> LanguageModel:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32
    )
    model = GPT(config).eval()
    return LanguageModel(
        model=model, tokenizer=tokenizer, token_roles={"bos": EOT, "eos": EOT}, run_dir=run_dir
    )


@pytest.fixture(scope="module")
def lm(tokenizer: BPETokenizer) -> LanguageModel:
    return tiny_lm(tokenizer, block_size=16)


def lm_eval_windows(
    ids: list[int], prefix: int, max_seq_len: int, context_len: int
) -> Iterator[tuple[list[int], list[int]]]:
    """lm-evaluation-harness's get_rolling_token_windows + make_disjoint_window, transcribed
    (lm_eval/utils.py), as the reference for our windows."""
    if not ids:
        return
    pred_len = max_seq_len - context_len + 1
    predicted = 0
    first_seq_len = min(max_seq_len, len(ids))
    windows = [([prefix, *ids[: first_seq_len - 1]], ids[:first_seq_len])]
    predicted += first_seq_len
    while predicted < len(ids):
        window_pred_len = min(len(ids) - predicted, pred_len)
        window_end = predicted + window_pred_len
        windows.append(
            (
                ids[window_end - max_seq_len - 1 : window_end - 1],
                ids[window_end - window_pred_len : window_end],
            )
        )
        predicted += window_pred_len
    for a, b in windows:
        yield a[: len(a) - (len(b) - 1)], b


def next_token_logprob(lm: LanguageModel, context: list[int], token: int) -> float:
    """log p(token | context): one forward pass over the context, its last position's logits."""
    with torch.no_grad():
        logits, _ = lm.model(torch.tensor([context]))
    return float(torch.log_softmax(logits[0, -1].double(), dim=-1)[token])


# ------------------------------------------------------------------------------ windows


def test_windows_by_hand() -> None:
    ids = [10, 11, 12, 13, 14, 15, 16]
    # Disjoint (stride = block = 4): the second window's input is 4 tokens ending before 16.
    assert rolling_windows(ids, 0, 4, 4) == [([0], [10, 11, 12, 13]), ([12, 13], [14, 15, 16])]
    # Stride 2: each later window has block + 1 - 2 = 3 tokens of context (or more at the end).
    assert rolling_windows(ids, 0, 4, 2) == [
        ([0], [10, 11, 12, 13]),
        ([11, 12, 13], [14, 15]),
        ([12, 13, 14, 15], [16]),
    ]
    assert rolling_windows(ids[:3], 0, 4, 1) == [([0], [10, 11, 12])]
    assert rolling_windows([], 0, 4, 4) == []


@pytest.mark.parametrize("block", [1, 3, 8])
def test_windows_are_lm_evals_and_cover_every_token_once(block: int) -> None:
    for n in range(0, 30):
        ids = list(range(100, 100 + n))
        for stride in range(1, block + 1):
            windows = rolling_windows(ids, 7, block, stride)
            assert windows == list(lm_eval_windows(ids, 7, block, block + 1 - stride))
            assert [t for _, cont in windows for t in cont] == ids
            assert all(len(ctx) + len(cont) <= block + 1 for ctx, cont in windows)


def test_rolling_equals_one_window_when_the_text_fits(lm: LanguageModel) -> None:
    ids = lm.encode("The café is open.")
    assert 1 < len(ids) <= lm.block_size
    logprob, tokens = rolling_loglikelihood(lm, ids)
    assert tokens == len(ids)
    assert logprob == pytest.approx(sum(lm.score([EOT], ids)), abs=1e-5)
    # Text in gives the same as its ids.
    assert rolling_loglikelihood(lm, "The café is open.") == (logprob, tokens)
    assert rolling_loglikelihood(lm, "") == (0.0, 0)


def test_a_smaller_stride_scores_with_more_context_as_computed_by_hand(
    lm: LanguageModel,
) -> None:
    ids = lm.encode(TEXT)[:40]
    block = lm.block_size  # 16

    def by_hand(stride: int) -> float:
        # Token t is predicted from what its window shows of the tokens before it: the prefix
        # and every token in the first window; after it, the block_size - 1 tokens before
        # the window's last token, and those of the window before t.
        total = sum(next_token_logprob(lm, [EOT, *ids[:t]], ids[t]) for t in range(block))
        predicted = block
        while predicted < len(ids):
            end = min(predicted + stride, len(ids))
            start = end - 1 - block
            total += sum(
                next_token_logprob(lm, ids[start:t], ids[t]) for t in range(predicted, end)
            )
            predicted = end
        return total

    disjoint, tokens = rolling_loglikelihood(lm, ids, stride=block)
    overlapping, tokens_4 = rolling_loglikelihood(lm, ids, stride=4)
    assert tokens == tokens_4 == 40
    assert disjoint == pytest.approx(by_hand(block), abs=1e-4)
    assert overlapping == pytest.approx(by_hand(4), abs=1e-4)
    assert overlapping != pytest.approx(disjoint, abs=1e-3)  # the context changed the score
    # Token 16 (the second window's first) sees 1 token of context disjoint, 13 at stride 4.
    assert rolling_windows(ids, EOT, block, block)[1][0] == ids[15:16]
    assert rolling_windows(ids, EOT, block, 4)[1][0] == ids[3:16]


def test_many_texts_score_as_each_alone(lm: LanguageModel) -> None:
    texts = [TEXT, "a", TEXT[:50]]
    together = rolling_loglikelihoods(lm, texts, stride=5, batch_size=3)
    for text, (logprob, tokens) in zip(texts, together, strict=True):
        alone = rolling_loglikelihood(lm, text, stride=5)
        assert tokens == alone[1] and logprob == pytest.approx(alone[0], abs=1e-4)


# ------------------------------------------------------------------------------ metrics


def test_bits_per_byte_of_a_uniform_model(tokenizer: BPETokenizer, tmp_path: Path) -> None:
    torch.manual_seed(0)
    vocab = tokenizer.vocab_size
    config = ModelConfig(
        vocab_size=vocab, block_size=16, n_layer=1, n_head=2, n_embd=32, tie_embeddings=False
    )
    model = GPT(config).eval()
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0: p = 1 / vocab for every token
    uniform = LanguageModel(model=model, tokenizer=tokenizer, token_roles={"eos": EOT})
    path = tmp_path / "text.txt"
    path.write_text(TEXT * 2, encoding="utf-8")
    result = evaluate_language_modeling(uniform, [str(path)], stride=5)
    [score] = result.sources
    tokens, size = len(tokenizer.encode(TEXT * 2)), len((TEXT * 2).encode("utf-8"))
    assert (score.documents, score.tokens, score.bytes) == (1, tokens, size)
    assert tokens < size  # merges, and multi-byte characters
    assert score.bits_per_byte == pytest.approx(math.log2(vocab) * tokens / size, rel=1e-6)
    assert score.loss == pytest.approx(math.log(vocab), rel=1e-6)
    assert score.perplexity == pytest.approx(vocab, rel=1e-5)


@pytest.fixture(scope="module")
def run_with_shards(tokenizer: BPETokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    prepare_shards(DOCUMENTS, tokenizer, RunPaths(run).data, 0.25, seed=0, progress=False)
    return run


def test_validation_shards(tokenizer: BPETokenizer, run_with_shards: Path) -> None:
    lm = tiny_lm(tokenizer, 16, run_with_shards)
    result = evaluate_language_modeling(lm)  # no source named: the validation shards
    [score] = result.sources
    [path] = RunPaths(run_with_shards).shards("val")
    shard = open_shard(path)
    documents = [shard.document(i).tolist() for i in range(shard.num_documents)]
    assert 0 < len(documents) < len(DOCUMENTS)
    texts = [tokenizer.decode(ids) for ids in documents]
    assert all(text in DOCUMENTS for text in texts)
    # Every document token is scored, no end-of-text; the bytes are the documents' text.
    assert score.source == VALIDATION and score.documents == len(documents)
    assert score.tokens == shard.num_tokens - shard.num_documents
    assert score.bytes == sum(len(t.encode("utf-8")) for t in texts)
    expected = sum(rolling_loglikelihood(lm, ids)[0] for ids in documents)
    assert score.logprob == pytest.approx(expected, abs=1e-4)


def test_per_source_totals_add_up(
    tokenizer: BPETokenizer, run_with_shards: Path, tmp_path: Path
) -> None:
    lm = tiny_lm(tokenizer, 16, run_with_shards)
    a, b = tmp_path / "a.txt", tmp_path / "b.jsonl"
    a.write_text(TEXT, encoding="utf-8")
    b.write_text('{"text": "the sky is blue"}\n{"text": "the café"}\n', encoding="utf-8")
    result = evaluate_language_modeling(lm, [str(a), str(b)], validation=True, stride=8)
    assert [s.source for s in result.sources] == [VALIDATION, str(a), str(b)]
    assert [s.documents for s in result.sources][1:] == [1, 2]
    total = result.total
    for name in ("documents", "tokens", "bytes", "logprob"):
        assert getattr(total, name) == pytest.approx(sum(getattr(s, name) for s in result.sources))
    assert total.bits_per_byte == pytest.approx(
        -sum(s.logprob for s in result.sources) / sum(s.bytes for s in result.sources) / math.log(2)
    )
    # Each source scores as it does alone.
    [alone] = evaluate_language_modeling(lm, [str(b)], stride=8).sources
    assert alone.tokens == result.sources[2].tokens
    assert alone.logprob == pytest.approx(result.sources[2].logprob, abs=1e-5)

    lines = result.lines()
    assert lines[0].split() == ["source", "docs", "tokens", "bytes", "loss", "ppl", "bits/byte"]
    assert lines[4].startswith("total") and f"{total.tokens:,}" in lines[4]
    assert len({len(line) for line in lines[:5]}) == 1  # aligned columns
    assert "stride 8" in lines[5]
    record = result.record()
    assert (record.kind, record.task) == ("language-modelling", f"validation, {a}, {b}")
    assert record.metrics["tokens"] == total.tokens
    assert record.metrics["sources"][str(a)]["bits_per_byte"] == result.sources[1].bits_per_byte


def test_max_tokens_cuts_each_source(lm: LanguageModel, tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(f'{{"text": "{d}"}}\n' for d in DOCUMENTS[:5]), encoding="utf-8")
    lengths = [len(lm.encode(d)) for d in DOCUMENTS[:5]]
    limit = lengths[0] + 3
    [score] = evaluate_language_modeling(lm, [str(path)], max_tokens=limit).sources
    kept = lm.encode(DOCUMENTS[1])[:3]
    assert (score.documents, score.tokens) == (2, limit)
    assert score.bytes == len(DOCUMENTS[0].encode()) + len(lm.tokenizer.decode_bytes(kept))
    assert "the first" in evaluate_language_modeling(lm, [str(path)], max_tokens=2).lines()[-1]


# ------------------------------------------------------------------------------ bad input


def test_bad_input_is_one_clear_line(lm: LanguageModel, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("line one\ncaf\xe9\n".encode("latin-1"))
    good = tmp_path / "good.txt"
    good.write_text("text", encoding="utf-8")
    cases = [
        ({"sources": [str(empty)]}, "empty.txt"),
        ({"sources": [str(latin1)]}, "latin1.txt: not UTF-8 text: byte 0xe9 at byte offset 12"),
        ({"sources": [str(tmp_path / "missing.txt")]}, "missing.txt"),
        ({"sources": [str(good)], "stride": 0}, "stride must be a whole number of tokens from 1"),
        ({"sources": [str(good)], "stride": 17}, "to the model's context (16), got 17"),
        ({"sources": [str(good)], "max_tokens": 0}, "max tokens must be a positive"),
        ({"sources": [], "validation": False}, "nothing to evaluate"),
        ({}, "has no prepared data, so no validation shards"),  # a model without a run's data
    ]
    for kwargs, message in cases:
        with pytest.raises(ScratchLMError, match=None) as caught:
            evaluate_language_modeling(lm, **kwargs)  # type: ignore[arg-type]
        assert message in str(caught.value), (kwargs, str(caught.value))
        assert "\n" not in str(caught.value)
    with pytest.raises(ScratchLMError, match="stride must be"):
        rolling_loglikelihood(lm, "text", stride=lm.block_size + 1)
    # A bad file after a good one fails before any scoring.
    with pytest.raises(ScratchLMError, match="not UTF-8"):
        evaluate_language_modeling(lm, [str(good), str(latin1)])


def test_windows_equal_lm_evals_own() -> None:
    utils = pytest.importorskip("lm_eval.utils")  # the optional lm-eval extra
    for n in range(0, 20):
        ids = list(range(100, 100 + n))
        for stride in range(1, 6):
            theirs = [
                tuple(map(list, utils.make_disjoint_window(window)))
                for window in utils.get_rolling_token_windows(ids, 7, 5, 6 - stride)
            ]
            assert rolling_windows(ids, 7, 5, stride) == theirs
