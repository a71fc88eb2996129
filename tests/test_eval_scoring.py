"""Log-likelihood scoring (eval/scoring.py): batched, and a context shared by several
continuations read once into a KV cache. Every score is checked against the plain definition,
one forward pass over context + continuation per request, on models of each architecture."""

from __future__ import annotations

import random

import pytest
import torch

from scratchlm.core.errors import ScratchLMError
from scratchlm.eval.scoring import Score, score_token_pairs
from scratchlm.inference.language_model import LanguageModel
from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig
from scratchlm.tokenizer import BPETokenizer

VOCAB = 300
BLOCK = 24
ARCHITECTURES = {
    "gpt2": {},
    "llama": {
        "pos_encoding": "rope",
        "norm": "rmsnorm",
        "mlp": "swiglu",
        "n_kv_head": 1,
        "bias": False,
        "tie_embeddings": False,
    },
    "sliding-window": {"pos_encoding": "rope", "sliding_window": 6, "qk_norm": True},
}


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    return BPETokenizer.train("the cat sat on the mat and the dog sat on the log " * 4, VOCAB)


def tiny_lm(tokenizer: BPETokenizer, architecture: str) -> LanguageModel:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=VOCAB,
        block_size=BLOCK,
        n_layer=2,
        n_head=2,
        n_embd=32,
        **ARCHITECTURES[architecture],  # type: ignore[arg-type]
    )
    return LanguageModel(model=GPT(config).eval(), tokenizer=tokenizer, token_roles={})


def by_definition(lm: LanguageModel, context: list[int], continuation: list[int]) -> Score:
    """log p(continuation | context) from one forward pass over the pair alone, cut to the
    model's context as lm-eval cuts it (oldest tokens first)."""
    ids = (context + continuation)[-(BLOCK + 1) :]
    with torch.no_grad():
        logits, _ = lm.model(torch.tensor([ids[:-1]]))
    n = len(continuation)
    predicting = logits[0, -n:].double()
    logprobs = torch.log_softmax(predicting, dim=-1)
    target = torch.tensor(continuation)
    chosen = float(logprobs.gather(1, target[:, None]).sum())
    return Score(chosen, n, bool((predicting.argmax(-1) == target).all()))


def questions(seed: int) -> list[tuple[list[int], list[int]]]:
    """Pairs as a multiple-choice task makes them: contexts of many lengths, each with a few
    continuations (one token, several, repeated), and a few contexts that stand alone or are
    too long to fit whole."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(12):
        context = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 20))]
        choices = [
            [rng.randrange(VOCAB) for _ in range(rng.choice([1, 1, 2, 5, 8]))]
            for _ in range(rng.randint(1, 5))
        ]
        choices.append(choices[0])  # the same request twice
        pairs += [(context, choice) for choice in choices]
    long = [rng.randrange(VOCAB) for _ in range(BLOCK + 5)]
    pairs += [(long, [1, 2, 3]), (long, [4]), (long[:-8], [5, 6, 7, 8, 9, 10])]
    rng.shuffle(pairs)
    return pairs


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_shared_contexts_score_as_each_request_alone(
    tokenizer: BPETokenizer, architecture: str, batch_size: int
) -> None:
    lm = tiny_lm(tokenizer, architecture)
    pairs = questions(seed=batch_size)
    scores = score_token_pairs(lm, pairs, batch_size=batch_size)
    assert len(scores) == len(pairs)
    for (context, continuation), score in zip(pairs, scores, strict=True):
        expected = by_definition(lm, context, continuation)
        assert score.tokens == expected.tokens
        assert score.logprob == pytest.approx(expected.logprob, abs=2e-5)
        assert score.greedy == expected.greedy


def test_a_long_context_and_a_long_continuation_go_in_different_batches(
    tokenizer: BPETokenizer,
) -> None:
    # Each pair fits, but the first question's context and the second's continuation together
    # are longer than the model's context: left-padded to one width they cannot share a batch.
    lm = tiny_lm(tokenizer, "llama")
    long, short = list(range(1, 21)), list(range(30, 43))
    pairs = [(long, [1, 2]), (long, [3, 4]), (short, [5] * 8), (short, [6] * 7)]
    for (context, continuation), score in zip(pairs, score_token_pairs(lm, pairs), strict=True):
        expected = by_definition(lm, context, continuation)
        assert score.logprob == pytest.approx(expected.logprob, abs=2e-5)


def test_a_certain_continuation_is_greedy_and_scores_zero(tokenizer: BPETokenizer) -> None:
    # A model whose head always puts all its weight on token 7: log p = 0 for 7s, -inf-ish else.
    lm = tiny_lm(tokenizer, "llama")
    head = lm.model.lm_head
    with torch.no_grad():
        head.weight.zero_()
        lm.model.transformer["ln_f"].weight.zero_()
        head.weight[7] = 0.0
    bias = torch.full((VOCAB,), -1e4)
    bias[7] = 0.0
    head.bias = torch.nn.Parameter(bias)
    context = [3, 4, 5]
    scores = score_token_pairs(lm, [(context, [7, 7, 7]), (context, [7, 8]), (context, [7])])
    assert [s.greedy for s in scores] == [True, False, True]
    assert scores[0].logprob == pytest.approx(0.0, abs=1e-6)
    assert scores[1].logprob < -1e3
    assert [s.tokens for s in scores] == [3, 2, 1]


def test_bad_requests(tokenizer: BPETokenizer) -> None:
    lm = tiny_lm(tokenizer, "gpt2")
    with pytest.raises(ScratchLMError, match="no tokens"):
        score_token_pairs(lm, [([1], [])])
    with pytest.raises(ScratchLMError, match="does not fit"):
        score_token_pairs(lm, [([1], [2] * (BLOCK + 1))])
    with pytest.raises(ScratchLMError, match="batch size"):
        score_token_pairs(lm, [([1], [2])], batch_size=0)
