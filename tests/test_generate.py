"""Generation: sampling rules, KV-cache decoding against full recomputation, stopping, cropping."""

from __future__ import annotations

from typing import Literal

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchlm.core.errors import ScratchLMError
from scratchlm.inference.generate import (
    crop_prompt,
    generate_batch,
    generate_tokens,
    sample_next_token,
)
from scratchlm.inference.sampling import apply_repetition_penalty
from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig

POS_ENCODINGS: list[Literal["learned", "rope"]] = ["learned", "rope"]
VOCAB = 97
BLOCK = 32


def make_model(pos_encoding: Literal["learned", "rope"] = "learned", seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=VOCAB,
        block_size=BLOCK,
        n_layer=2,
        n_head=4,
        n_embd=32,
        pos_encoding=pos_encoding,
    )
    return GPT(config)


PROMPT = [5, 17, 3, 88, 42, 0, 61, 9, 23, 70]  # 10 tokens


# ---------------------------------------------------------------------------------------------
# sample_next_token
# ---------------------------------------------------------------------------------------------


def test_temperature_zero_is_argmax() -> None:
    logits = torch.randn(4, 50)
    assert torch.equal(sample_next_token(logits, 0.0, 0, 1.0, None), logits.argmax(-1))
    # top_k / top_p do not change greedy decoding.
    assert torch.equal(sample_next_token(logits, 0.0, 3, 0.5, None), logits.argmax(-1))


def test_top_k_one_and_tiny_top_p_are_greedy() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        logits = torch.randn(3, 50, generator=g)
        assert torch.equal(sample_next_token(logits, 1.0, 1, 1.0, g), logits.argmax(-1))
        assert torch.equal(sample_next_token(logits, 1.0, 0, 1e-6, g), logits.argmax(-1))


def test_top_p_keeps_the_smallest_nucleus() -> None:
    # Probabilities 0.5, 0.3, 0.15, 0.05: the top token alone reaches top_p 0.45, the top two
    # (0.5 + 0.3) reach 0.79, and 0.81 needs the third too.
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_next_token(logits, 1.0, 0, 0.45, g).tolist()) == {0}
    assert set(sample_next_token(logits, 1.0, 0, 0.79, g).tolist()) == {0, 1}
    assert set(sample_next_token(logits, 1.0, 0, 0.81, g).tolist()) == {0, 1, 2}
    assert set(sample_next_token(logits, 1.0, 0, 1.0, g).tolist()) == {0, 1, 2, 3}


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    top_k=st.integers(0, 50),  # also more than the 40 tokens
    top_p=st.floats(0.01, 1.0),
    temperature=st.floats(0.1, 3.0),
)
def test_samples_stay_in_top_k(seed: int, top_k: int, top_p: float, temperature: float) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(8, 40, generator=g) * 3
    ids = sample_next_token(logits, temperature, top_k, top_p, g)
    assert ids.shape == (8,) and ids.dtype == torch.long
    ranks = (logits > logits.gather(-1, ids[:, None])).sum(-1)  # 0 = the most likely token
    if top_k:
        assert torch.all(ranks < top_k)


# ---------------------------------------------------------------------------------------------
# generate_tokens
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pos_encoding", POS_ENCODINGS)
def test_kv_cache_greedy_equals_recomputation(pos_encoding: Literal["learned", "rope"]) -> None:
    model = make_model(pos_encoding)
    # 10 + 23 tokens: the last one is sampled from a full 32-token context, no slide yet.
    n = BLOCK - len(PROMPT) + 1
    cached = list(generate_tokens(model, PROMPT, n, temperature=0.0, use_cache=True))
    recomputed = list(generate_tokens(model, PROMPT, n, temperature=0.0, use_cache=False))
    assert len(cached) == n
    assert cached == recomputed


@pytest.mark.parametrize("pos_encoding", POS_ENCODINGS)
@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_past_block_size(
    pos_encoding: Literal["learned", "rope"], use_cache: bool
) -> None:
    # 60 new tokens after a 10-token prompt: the cache slides (refills) twice.
    model = make_model(pos_encoding)
    tokens = list(generate_tokens(model, PROMPT, 60, temperature=1.0, seed=1, use_cache=use_cache))
    assert len(tokens) == 60
    assert all(isinstance(t, int) and 0 <= t < VOCAB for t in tokens)


def test_kv_cache_sampling_equals_recomputation_before_the_slide() -> None:
    # Same seed, same random draws: with identical logits up to float noise, the samples agree.
    model = make_model("rope")
    kwargs = dict(temperature=0.9, top_k=20, seed=3)
    n = BLOCK - len(PROMPT) + 1
    cached = list(generate_tokens(model, PROMPT, n, use_cache=True, **kwargs))  # type: ignore[arg-type]
    recomputed = list(generate_tokens(model, PROMPT, n, use_cache=False, **kwargs))  # type: ignore[arg-type]
    assert cached == recomputed


def test_seed_makes_sampling_reproducible() -> None:
    model = make_model()
    a = list(generate_tokens(model, PROMPT, 20, seed=123))
    b = list(generate_tokens(model, PROMPT, 20, seed=123))
    c = list(generate_tokens(model, PROMPT, 20, seed=124))
    assert a == b
    assert a != c


def test_top_k_one_and_tiny_top_p_generate_greedily() -> None:
    model = make_model()
    greedy = list(generate_tokens(model, PROMPT, 15, temperature=0.0))
    assert list(generate_tokens(model, PROMPT, 15, temperature=1.0, top_k=1, seed=0)) == greedy
    assert list(generate_tokens(model, PROMPT, 15, temperature=1.0, top_p=1e-9, seed=0)) == greedy


def test_stop_ids_stop_before_the_stop_token() -> None:
    model = make_model()
    greedy = list(generate_tokens(model, PROMPT, 15, temperature=0.0))
    stop = greedy[5]
    first = greedy.index(stop)
    stopped = list(generate_tokens(model, PROMPT, 15, temperature=0.0, stop_ids={stop}))
    assert stopped == greedy[:first]
    assert list(generate_tokens(model, PROMPT, 0, temperature=0.0)) == []


def test_streaming_yields_one_token_at_a_time() -> None:
    model = make_model()
    it = generate_tokens(model, PROMPT, 5, temperature=0.0)
    first = next(it)
    assert isinstance(first, int)
    # Between tokens the caller is not left in inference mode.
    assert not torch.is_inference_mode_enabled()
    assert [first, *it] == list(generate_tokens(model, PROMPT, 5, temperature=0.0))


def test_model_mode_is_restored() -> None:
    model = make_model()
    model.train()
    it = generate_tokens(model, PROMPT, 3, temperature=0.0)
    next(it)
    assert not model.training  # eval while generating (no dropout)
    list(it)
    assert model.training


def test_crop_prompt_keeps_the_most_recent_tokens() -> None:
    assert crop_prompt([1, 2, 3], 8) == ([1, 2, 3], 0)
    assert crop_prompt(list(range(8)), 8) == (list(range(1, 8)), 1)
    assert crop_prompt(list(range(100)), 8) == (list(range(93, 100)), 93)
    assert crop_prompt([1, 2, 3], 1) == ([3], 2)


@pytest.mark.parametrize("use_cache", [True, False])
def test_over_long_prompt_still_generates(use_cache: bool) -> None:
    model = make_model()
    long_prompt = [i % VOCAB for i in range(3 * BLOCK)]
    tokens = list(generate_tokens(model, long_prompt, 10, temperature=0.0, use_cache=use_cache))
    assert len(tokens) == 10
    # Only the kept tail matters.
    kept, dropped = crop_prompt(long_prompt, BLOCK)
    assert dropped == len(long_prompt) - (BLOCK - 1)
    assert tokens == list(generate_tokens(model, kept, 10, temperature=0.0, use_cache=use_cache))


def test_empty_prompt_is_a_user_error() -> None:
    model = make_model()
    with pytest.raises(ScratchLMError, match="empty"):
        generate_tokens(model, [], 5)


def test_out_of_vocabulary_prompt_is_a_user_error() -> None:
    model = make_model()
    with pytest.raises(ScratchLMError, match="vocabulary"):
        generate_tokens(model, [1, VOCAB], 5)


def test_tiny_block_size_generates() -> None:
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=VOCAB, block_size=1, n_layer=1, n_head=2, n_embd=16))
    for use_cache in (True, False):
        tokens = list(generate_tokens(model, PROMPT, 5, temperature=0.0, use_cache=use_cache))
        assert len(tokens) == 5


# ---------------------------------------------------------------------------------------------
# batched generation, repetition penalty, seeds
# ---------------------------------------------------------------------------------------------

MIXED_PROMPTS = [PROMPT, [3], [7, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8], [8, 8]]


def make_gqa_model(seed: int = 0) -> GPT:
    """Llama shape: RoPE, RMSNorm, SwiGLU, grouped-query attention, untied head."""
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=VOCAB,
        block_size=BLOCK,
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        n_embd=32,
        pos_encoding="rope",
        norm="rmsnorm",
        mlp="swiglu",
        bias=False,
        tie_embeddings=False,
    )
    return sharpen(GPT(config))


def sharpen(model: GPT) -> GPT:
    """Scale the matrices up: a random model then writes varied text instead of repeating one
    token, so a row that saw another row's tokens or positions would show it."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8)
    return model


@pytest.mark.parametrize("shape", ["gpt2", "llama"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_batch_greedy_equals_one_by_one(shape: str, use_cache: bool) -> None:
    model = sharpen(make_model("learned")) if shape == "gpt2" else make_gqa_model()
    # 19 + 12 tokens: the longest row fills the context but never slides.
    n = 12
    batch = generate_batch(model, MIXED_PROMPTS, n, temperature=0.0, use_cache=use_cache)
    alone = [list(generate_tokens(model, p, n, temperature=0.0)) for p in MIXED_PROMPTS]
    assert batch == alone
    assert all(len(row) == n for row in batch)
    # The rows are not trivially alike (padding that leaked would show as shared tokens).
    assert len({tuple(row) for row in batch}) == len(MIXED_PROMPTS)


def test_batch_logits_equal_one_by_one() -> None:
    # Tighter than token equality: left padding changes no row's numbers beyond float noise.
    model = make_gqa_model().eval()
    prompts = [PROMPT, [3, 4]]
    cache = model.new_kv_cache(2)
    cache.set_left_padding([0, len(PROMPT) - 2])
    idx = torch.tensor([PROMPT, [0] * (len(PROMPT) - 2) + [3, 4]])
    with torch.no_grad():
        batched, _ = model(idx, kv_cache=cache)
        step, _ = model(torch.tensor([[5], [6]]), kv_cache=cache)
        for b, (prompt, nxt) in enumerate(zip(prompts, [5, 6], strict=True)):
            solo_cache = model.new_kv_cache(1)
            solo, _ = model(torch.tensor([prompt]), kv_cache=solo_cache)
            torch.testing.assert_close(batched[b, -1], solo[0, -1], rtol=1e-5, atol=1e-5)
            solo_step, _ = model(torch.tensor([[nxt]]), kv_cache=solo_cache)
            torch.testing.assert_close(step[b, 0], solo_step[0, 0], rtol=1e-5, atol=1e-5)


def test_batch_rows_stop_on_their_own() -> None:
    model = sharpen(make_model())
    alone = [list(generate_tokens(model, p, 10, temperature=0.0)) for p in MIXED_PROMPTS]
    stop = alone[0][3]  # row 0 stops before its 4th token; others stop wherever it appears
    batch = generate_batch(model, MIXED_PROMPTS, [10, 2, 10, 0], temperature=0.0, stop_ids={stop})
    expected = [row[: row.index(stop)] if stop in row else row for row in alone]
    assert batch[0] == expected[0] == alone[0][:3]
    assert batch[1] == expected[1][:2]
    assert batch[2] == expected[2]
    assert batch[3] == []


def test_batch_sampling_equals_one_by_one_with_seeds() -> None:
    model = make_gqa_model()
    kw = dict(temperature=1.0, top_k=30, seed=11)
    batch = generate_batch(model, MIXED_PROMPTS, 8, **kw)  # type: ignore[arg-type]
    for b, prompt in enumerate(MIXED_PROMPTS):
        kw_b = {**kw, "seed": 11 + b}
        assert batch[b] == list(generate_tokens(model, prompt, 8, **kw_b))  # type: ignore[arg-type]


def test_seed_does_not_touch_global_random_state() -> None:
    model = make_model()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    list(generate_tokens(model, PROMPT, 5, seed=1))
    list(generate_tokens(model, PROMPT, 5, seed=None))
    assert torch.equal(torch.rand(3), expected)


def test_repetition_penalty_equals_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=g) * 4
    input_ids = torch.randint(0, 50, (3, 12), generator=g)  # with repeats
    seen = torch.zeros(3, 50, dtype=torch.bool)
    seen.scatter_(1, input_ids, True)
    for penalty in (0.7, 1.3, 2.0):
        theirs = transformers.RepetitionPenaltyLogitsProcessor(penalty)(input_ids, logits.clone())
        ours = apply_repetition_penalty(logits, seen, penalty)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert apply_repetition_penalty(logits, seen, 1.0) is logits


def test_repetition_penalty_discourages_repeats() -> None:
    model = make_model()
    plain = list(generate_tokens(model, PROMPT, 25, temperature=0.0))
    penalised = list(generate_tokens(model, PROMPT, 25, temperature=0.0, repetition_penalty=1e6))
    assert len(set(plain)) < len(plain)  # this model repeats itself greedily
    assert plain != penalised
    # A huge penalty forbids every token already seen, prompt included, while others remain.
    assert len(set(penalised)) == len(penalised)
    assert not set(penalised) & set(PROMPT)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(repetition_penalty=0.0), "repetition_penalty must be a number > 0"),
        (dict(repetition_penalty=float("nan")), "repetition_penalty"),
        (dict(temperature=-1.0), "temperature must be >= 0"),
        (dict(top_p=0.0), "top_p must be in"),
        (dict(max_new_tokens=[1]), "one per prompt"),
    ],
)
def test_bad_batch_arguments(kwargs: dict[str, object], message: str) -> None:
    model = make_model()
    args: dict[str, object] = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(ScratchLMError, match=message):
        generate_batch(model, [PROMPT, [1]], **args)  # type: ignore[arg-type]
    with pytest.raises(ScratchLMError, match="no prompts"):
        generate_batch(model, [], 3)
    with pytest.raises(ScratchLMError, match="empty"):
        generate_batch(model, [PROMPT, []], 3)


def test_draw_samples_the_distribution_and_never_a_zero() -> None:
    from scratchlm.inference.sampling import draw

    probs = torch.tensor([0.5, 0.0, 0.2, 0.3, 0.0])
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.cat([draw(probs, g) for _ in range(20_000)]), minlength=5)
    assert counts[1] == counts[4] == 0
    # Within 4 standard deviations of the expected counts (binomial: sqrt(n p (1 - p)) <= 71).
    assert torch.allclose(counts.float() / 20_000, probs, atol=4 * 71 / 20_000)
    # Unnormalised weights work the same, and one seed gives one sequence.
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert [int(draw(probs * 7, g1)) for _ in range(50)] == [
        int(draw(probs, g2)) for _ in range(50)
    ]
