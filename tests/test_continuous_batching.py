"""Continuous batching (inference/continuous.py): rows that join and leave a running batch get
exactly the tokens they get alone, and the KV cache of independent rows matches a solo cache."""

from __future__ import annotations

import random

import pytest
import torch

from scratchlm.core.errors import ScratchLMError
from scratchlm.inference.config import Sampling
from scratchlm.inference.continuous import ContinuousBatcher, RowEvent, RowSettings
from scratchlm.inference.engine import BatchGenerator
from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig

VOCAB = 97


def make_model(shape: str, block_size: int = 64) -> GPT:
    """A random model with sharpened weights (varied text, not one repeated token)."""
    torch.manual_seed(0)
    llama = dict(
        pos_encoding="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False
    )
    extra: dict[str, object] = {
        "gpt2": {},
        "llama": {**llama, "n_kv_head": 2},
        "window": {**llama, "sliding_window": 6},
        "sinusoidal": {"pos_encoding": "sinusoidal"},
    }[shape]
    config = ModelConfig(
        vocab_size=VOCAB, block_size=block_size, n_layer=2, n_head=4, n_embd=32, **extra
    )  # type: ignore[arg-type]
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8)
    return model


def alone(
    model: GPT, prompt: list[int], settings: RowSettings, stop_ids: frozenset[int] = frozenset()
) -> list[int]:
    """The tokens BatchGenerator gives this prompt on its own (the reference)."""
    sampling = Sampling(
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_k=settings.top_k,
        top_p=settings.top_p,
        repetition_penalty=settings.repetition_penalty,
        seed=settings.seed,
    )
    engine = BatchGenerator(model, [prompt], sampling, stop_ids)
    return [new.token for step in engine.steps() for new in step]


def run_staggered(
    batcher: ContinuousBatcher,
    jobs: list[tuple[list[int], RowSettings]],
    arrivals: list[int],
) -> tuple[dict[int, list[int]], dict[int, RowEvent]]:
    """Add job i at step arrivals[i]; run until every row ends. Returns each job's tokens and
    its final event."""
    tokens: dict[int, list[int]] = {}
    finals: dict[int, RowEvent] = {}
    rid_of: dict[int, int] = {}
    step = 0
    while len(finals) < len(jobs):
        for i, at in enumerate(arrivals):
            if at == step:
                rid_of[batcher.add(*jobs[i])] = i
        for event in batcher.step():
            job = rid_of[event.rid]
            if event.token is not None:
                tokens.setdefault(job, []).append(event.token.token)
            if event.finish is not None:
                finals[job] = event
        step += 1
        assert step < 500, "the batcher does not finish"
    return tokens, finals


def prompts(n: int, seed: int = 1) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(VOCAB) for _ in range(rng.randint(1, 20))] for _ in range(n)]


@pytest.mark.parametrize("shape", ["gpt2", "llama", "window", "sinusoidal"])
def test_eight_staggered_greedy_rows_equal_their_solo_runs(shape: str) -> None:
    model = make_model(shape)
    jobs = [
        (p, RowSettings(max_new_tokens=6 + 3 * i, temperature=0)) for i, p in enumerate(prompts(8))
    ]
    arrivals = [0, 0, 1, 3, 3, 7, 12, 20]  # some join while others decode, some after others left
    batcher = ContinuousBatcher(model, max_batch=8, cache_len=8)  # small: the cache must grow
    tokens, finals = run_staggered(batcher, jobs, arrivals)
    for i, (prompt, settings) in enumerate(jobs):
        assert tokens[i] == alone(model, prompt, settings), f"job {i}"
        assert finals[i].finish == "length"
    assert len({tuple(t) for t in tokens.values()}) == len(jobs)  # varied: a leak would show
    assert not batcher.has_work and batcher.running == 0


def test_sampled_rows_with_their_own_settings_equal_their_solo_runs() -> None:
    model = make_model("llama")
    settings = [
        RowSettings(max_new_tokens=10, temperature=1.0, seed=1),
        RowSettings(max_new_tokens=12, temperature=0.7, top_k=20, seed=2),
        RowSettings(max_new_tokens=8, temperature=1.3, top_p=0.8, seed=3),
        RowSettings(max_new_tokens=9, temperature=0, repetition_penalty=1.5),
        RowSettings(max_new_tokens=11, temperature=0.9, repetition_penalty=1.3, seed=4),
        RowSettings(max_new_tokens=10, temperature=1.0, seed=1),  # as row 0, another prompt
    ]
    jobs = list(zip(prompts(len(settings), seed=2), settings, strict=True))
    tokens, _ = run_staggered(ContinuousBatcher(model, max_batch=4), jobs, [0, 0, 2, 2, 5, 9])
    for i, (prompt, s) in enumerate(jobs):
        assert tokens[i] == alone(model, prompt, s), f"job {i}"


def test_more_requests_than_rows_wait_their_turn() -> None:
    model = make_model("gpt2")
    jobs = [(p, RowSettings(max_new_tokens=5, temperature=0)) for p in prompts(5, seed=3)]
    batcher = ContinuousBatcher(model, max_batch=2)
    for job in jobs:
        batcher.add(*job)
    running = []
    tokens: dict[int, list[int]] = {}
    while batcher.has_work:
        for event in batcher.step():
            assert event.token is not None
            tokens.setdefault(event.rid, []).append(event.token.token)
        running.append(batcher.running)
    assert max(running) == 2
    assert [tokens[i] for i in range(5)] == [alone(model, *job) for job in jobs]


def test_stop_ids_end_a_row_and_are_not_returned() -> None:
    model = make_model("llama")
    prompt = prompts(1, seed=4)[0]
    settings = RowSettings(max_new_tokens=12, temperature=0)
    free = alone(model, prompt, settings)
    stop = free[4]
    batcher = ContinuousBatcher(model, stop_ids={stop})
    tokens, finals = run_staggered(batcher, [(prompt, settings)], [0])
    assert tokens.get(0, []) == free[: free.index(stop)]
    assert finals[0].finish == "stop" and finals[0].token is None


def test_cancel_frees_the_row_at_the_next_step() -> None:
    model = make_model("gpt2")
    batcher = ContinuousBatcher(model, max_batch=2)
    a, b = (batcher.add(p, RowSettings(max_new_tokens=30, temperature=0)) for p in prompts(2))
    batcher.step()
    batcher.cancel(a)
    events = batcher.step()
    assert [e.rid for e in events] == [b] and batcher.running == 1
    c = batcher.add(prompts(1, seed=9)[0], RowSettings(max_new_tokens=3, temperature=0))
    assert {e.rid for e in batcher.step()} == {b, c}


def test_a_row_ends_when_the_context_is_full() -> None:
    model = make_model("llama", block_size=16)
    prompt = list(range(1, 11))  # 10 tokens: room for 6 new ones
    tokens, finals = run_staggered(
        ContinuousBatcher(model), [(prompt, RowSettings(max_new_tokens=50, temperature=0))], [0]
    )
    assert len(tokens[0]) == 6 and finals[0].finish == "length"
    assert tokens[0] == alone(model, prompt, RowSettings(max_new_tokens=6, temperature=0))


def test_logprobs_are_the_solo_log_softmax_and_top_is_sorted() -> None:
    model = make_model("llama")
    prompt = prompts(1, seed=5)[0]
    batcher = ContinuousBatcher(model)
    batcher.add(prompts(1, seed=6)[0], RowSettings(max_new_tokens=4, temperature=1.0, seed=0))
    rid = batcher.add(prompt, RowSettings(max_new_tokens=4, temperature=0, top_logprobs=3))
    got = [e.token for _ in range(4) for e in batcher.step() if e.rid == rid]
    ids = prompt + [t.token for t in got if t is not None]
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]))
    expected = torch.log_softmax(logits[0, len(prompt) - 1 : -1].float(), dim=-1)
    for t, row in zip(got, expected, strict=True):
        assert t is not None
        assert t.logprob == pytest.approx(row[t.token].item(), abs=1e-4)
        assert [tok for tok, _ in t.top] == row.topk(3).indices.tolist()
        assert t.top[0] == (t.token, pytest.approx(t.logprob, abs=1e-6))  # greedy: the best one


def test_bad_requests_are_one_line_errors() -> None:
    batcher = ContinuousBatcher(make_model("gpt2", block_size=16))
    with pytest.raises(ScratchLMError, match="context holds 16"):
        batcher.add(list(range(16)), RowSettings(max_new_tokens=1))
    with pytest.raises(ScratchLMError, match="outside the vocabulary"):
        batcher.add([VOCAB], RowSettings(max_new_tokens=1))
    with pytest.raises(ScratchLMError, match="empty"):
        batcher.add([], RowSettings(max_new_tokens=1))
    with pytest.raises(ScratchLMError, match="max_new_tokens"):
        batcher.add([1], RowSettings(max_new_tokens=0))
    with pytest.raises(ScratchLMError, match="temperature"):
        batcher.add([1], RowSettings(max_new_tokens=1, temperature=-1))
    assert not batcher.has_work
