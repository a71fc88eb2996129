"""The server's engine thread (serve/scheduler.py): concurrent jobs get their solo tokens, a job
that arrives mid-way joins at once, text never splits a UTF-8 character or shows a stop
string, cancelled jobs free their rows, and a full queue says so."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest
import torch

from scratchlm.core.errors import ScratchLMError
from scratchlm.inference.continuous import RowSettings
from scratchlm.inference.language_model import LanguageModel, load_for_inference
from scratchlm.inference.text import continue_ids
from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig
from scratchlm.runs.imported import save_imported_run
from scratchlm.serve.scheduler import Job, JobStream, QueueFull, Scheduler, Update
from scratchlm.tokenizer import BPETokenizer

SPECIALS = {"<|endoftext|>": 256}


def byte_script_model(script: dict[int, int | None], block_size: int = 128) -> GPT:
    """A byte-level model that follows `script` (next byte after each byte; None: end of text),
    whatever came before: blocks zeroed, one-hot embeddings, the head maps byte to byte."""
    config = ModelConfig(
        vocab_size=257, block_size=block_size, n_layer=1, n_head=2, n_embd=260, pos_encoding="rope"
    )
    config.tie_embeddings = False
    model = GPT(config)
    with torch.no_grad():
        for p in model.transformer["h"].parameters():
            p.zero_()
        wte = model.get_parameter("transformer.wte.weight")
        wte.zero_()
        wte[:, :257] = torch.eye(257)
        model.lm_head.weight.zero_()
        for token, after in script.items():
            model.lm_head.weight[256 if after is None else after, token] = 30.0
    return model


def chain(text: str, end: bool = True) -> dict[int, int | None]:
    """A script that spells `text` (UTF-8 bytes, each byte value used once) after a newline."""
    data = b"\n" + text.encode()
    assert len(set(data)) == len(data), "each byte may appear once"
    script: dict[int, int | None] = {a: b for a, b in itertools.pairwise(data)}
    script[data[-1]] = None if end else data[1]
    return script


def random_run(path: Path) -> Path:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=257, block_size=96, n_layer=2, n_head=4, n_embd=32)
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8)
    save_imported_run(path, model, BPETokenizer(special_tokens=SPECIALS), source="test")
    return path


@pytest.fixture(scope="module")
def random_lm(tmp_path_factory: pytest.TempPathFactory) -> LanguageModel:
    return load_for_inference(random_run(tmp_path_factory.mktemp("sched") / "r"), dtype="float32")


def scripted_lm(tmp_path: Path, script: dict[int, int | None]) -> LanguageModel:
    run = tmp_path / "scripted"
    save_imported_run(run, byte_script_model(script), BPETokenizer(special_tokens=SPECIALS), "t")
    return load_for_inference(run, dtype="float32")


async def collect(stream: JobStream) -> list[Update]:
    return [update async for update in stream]


def run(coro_fn, lm: LanguageModel, **kwargs):  # type: ignore[no-untyped-def]
    """Run coro_fn(scheduler) in a fresh event loop with a started scheduler."""
    scheduler = Scheduler(lm, **kwargs)
    scheduler.start()
    try:
        return asyncio.run(asyncio.wait_for(coro_fn(scheduler), timeout=60))
    finally:
        scheduler.close()


def text_of(updates: list[Update]) -> str:
    return "".join(u.text for u in updates)


def test_eight_concurrent_jobs_get_their_solo_tokens(random_lm: LanguageModel) -> None:
    prompts = [random_lm.encode(f"prompt number {i}: " + "ab" * i) for i in range(8)]
    settings = RowSettings(max_new_tokens=20, temperature=0)

    async def go(scheduler: Scheduler) -> list[list[Update]]:
        streams = [scheduler.submit(Job(p, settings)) for p in prompts]
        return await asyncio.gather(*(collect(s) for s in streams))

    results = run(go, random_lm, max_batch=8)
    stop_ids = set(random_lm.tokenizer.special_tokens.values())
    for prompt, updates in zip(prompts, results, strict=True):
        [solo] = continue_ids(
            random_lm.model,
            random_lm.tokenizer,
            [prompt],
            random_lm.sampling(max_new_tokens=20, temperature=0),
            stop_ids=stop_ids,
        )
        assert [t.token for u in updates for t in u.tokens] == solo.tokens
        assert text_of(updates) == solo.text
        assert updates[-1].finish_reason in ("stop", "length")
        assert all(u.finish_reason is None for u in updates[:-1])


def test_the_late_job_finishes_before_the_long_ones(random_lm: LanguageModel) -> None:
    async def go(scheduler: Scheduler) -> list[str]:
        order: list[str] = []

        async def watch(name: str, stream: JobStream) -> None:
            await collect(stream)
            order.append(name)

        long = RowSettings(max_new_tokens=60, temperature=0)
        tasks = [
            asyncio.create_task(watch(f"long{i}", scheduler.submit(Job([65 + i], long))))
            for i in range(3)
        ]
        await asyncio.sleep(0)  # the long ones are submitted first
        while scheduler.running < 3:
            await asyncio.sleep(0.005)
        short = scheduler.submit(Job([70], RowSettings(max_new_tokens=3, temperature=0)))
        tasks.append(asyncio.create_task(watch("short", short)))
        await asyncio.gather(*tasks)
        return order

    assert run(go, random_lm, max_batch=4)[0] == "short"


def test_text_never_splits_a_character_and_hides_stop_strings(tmp_path: Path) -> None:
    lm = scripted_lm(tmp_path, chain("hé ж😀_END"))

    async def go(scheduler: Scheduler) -> tuple[list[Update], list[Update]]:
        settings = RowSettings(max_new_tokens=40, temperature=0)
        plain = await collect(scheduler.submit(Job(lm.encode("\n"), settings)))
        stopped = await collect(scheduler.submit(Job(lm.encode("\n"), settings, ("ж",))))
        return plain, stopped

    plain, stopped = run(go, lm)
    assert text_of(plain) == "hé ж😀_END"
    assert plain[-1].finish_reason == "stop"
    # One token per byte: the 4-byte emoji took 4 steps and appeared whole, in one update.
    assert sum(len(u.tokens) for u in plain) == len("hé ж😀_END".encode())
    assert "😀" in [u.text for u in plain]
    assert all("\ufffd" not in u.text for u in plain)
    assert text_of(stopped) == "hé " and stopped[-1].finish_reason == "stop"


def test_cancel_frees_the_row_and_a_full_queue_refuses(tmp_path: Path) -> None:
    lm = scripted_lm(tmp_path, chain("abcdefgh", end=False))  # never ends on its own
    endless = RowSettings(max_new_tokens=10_000, temperature=0)

    async def go(scheduler: Scheduler) -> None:
        streams = [scheduler.submit(Job(lm.encode("\n"), endless)) for _ in range(3)]
        with pytest.raises(QueueFull, match="busy"):
            scheduler.submit(Job(lm.encode("\n"), endless))  # 2 running + 1 waiting: full
        await anext(aiter(streams[0]))
        for s in streams:
            s.cancel()
        deadline = time.monotonic() + 10
        while scheduler.running or scheduler.waiting:
            assert time.monotonic() < deadline, "cancelled rows were not freed"
            await asyncio.sleep(0.01)
        done = await collect(scheduler.submit(Job(lm.encode("\n"), RowSettings(4, 0))))
        assert text_of(done) == "abcd" and done[-1].finish_reason == "length"

    run(go, lm, max_batch=2, max_queue=1)


def test_prompt_logprobs_equal_an_in_process_forward(random_lm: LanguageModel) -> None:
    ids = random_lm.encode("the quick brown fox")

    async def go(scheduler: Scheduler):  # type: ignore[no-untyped-def]
        return await scheduler.prompt_logprobs(ids, top=2)

    scored = run(go, random_lm)
    assert scored[0] is None and len(scored) == len(ids)
    expected = random_lm.score(ids[:1], ids[1:])
    for got, want in zip(scored[1:], expected, strict=True):
        assert got is not None and got.logprob == pytest.approx(want, abs=1e-4)
        assert len(got.top) == 2 and got.top[0][1] >= got.top[1][1]
        assert got.top[0][1] >= got.logprob - 1e-6


def test_a_job_the_engine_refuses_fails_alone(random_lm: LanguageModel) -> None:
    async def go(scheduler: Scheduler) -> str:
        bad = scheduler.submit(Job([999_999], RowSettings(max_new_tokens=2, temperature=0)))
        with pytest.raises(ScratchLMError, match="outside the vocabulary"):
            await collect(bad)
        good = await collect(scheduler.submit(Job([65], RowSettings(3, temperature=0))))
        assert scheduler.running == scheduler.waiting == 0
        return good[-1].finish_reason or ""

    assert run(go, random_lm) in ("stop", "length")
