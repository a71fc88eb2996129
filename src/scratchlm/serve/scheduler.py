"""The engine loop: one ContinuousBatcher stepping in one thread, fed from asyncio.

    scheduler = Scheduler(lm, max_batch=8, max_queue=64); scheduler.start()  # or .run()
    stream = scheduler.submit(Job(prompt_ids, RowSettings(max_new_tokens=64)))  # in the loop
    async for update in stream:   # Update(text, tokens, finish_reason)
        ...
    stream.cancel()               # the client went away: the row leaves at the next step

The model runs in one thread only, between steps taking commands (add, cancel, score) from a
thread-safe inbox, so the event loop never waits on the model and requests arriving while
others decode join at the next step. `scratchlm serve` runs the loop in the main thread
(`run()`) and the HTTP server beside it: PyTorch's small CPU matmuls ran 2-3x slower in a
second thread than in the main one (OpenMP's worker threads of both then outnumber the cores,
and libgomp stops spinning between parallel regions), which halved a decode step's speed. Text is made here, per row: the incremental UTF-8 decoder
holds back the bytes of an unfinished character, and the stop-string matcher holds back what
could still become a stop string, so every Update's text is final, streamed or not.
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import queue
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from scratchlm.inference.continuous import (
    ContinuousBatcher,
    FinishReason,
    RowEvent,
    RowSettings,
    TokenLogprob,
)
from scratchlm.inference.language_model import LanguageModel
from scratchlm.inference.stop_strings import StopStringMatcher


@dataclass(frozen=True)
class Job:
    """One completion to generate: a prompt, how to sample, and the stop strings."""

    prompt_ids: list[int]
    settings: RowSettings
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Update:
    """What a job produced in one step."""

    text: str  # newly final text (whole UTF-8 characters, never part of a stop string)
    tokens: tuple[TokenLogprob, ...]  # the tokens sampled since the last update
    finish_reason: FinishReason | None  # set on the last update only


class QueueFull(Exception):
    """More jobs than running rows plus the queue's limit: answer 503, try again later."""


class JobStream:
    """A submitted job's updates, as an async iterator; cancel() when nobody reads them."""

    def __init__(self, scheduler: Scheduler, key: int) -> None:
        self._scheduler = scheduler
        self.key = key
        # Updates, or the error that ended the job (raised to the reader).
        self._updates: asyncio.Queue[Update | Exception] = asyncio.Queue()
        self.done = False

    def _put(self, update: Update | Exception) -> None:  # in the event loop
        self._updates.put_nowait(update)

    async def __aiter__(self) -> AsyncIterator[Update]:
        while not self.done:
            update = await self._updates.get()
            if isinstance(update, Exception):
                self.done = True
                raise update
            if update.finish_reason is not None:
                self.done = True
            yield update

    def cancel(self) -> None:
        """Stop the job (idempotent); its row is freed before the next step."""
        if not self.done:
            self.done = True
            self._scheduler._send(("cancel", self.key))


@dataclass
class _Text:
    """One running job's text state, in the engine thread."""

    stream: JobStream
    matcher: StopStringMatcher
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )


class Scheduler:
    """Runs `lm` for many jobs at once: up to max_batch decode together, up to max_queue
    more wait; submit() beyond that raises QueueFull."""

    def __init__(self, lm: LanguageModel, max_batch: int = 8, max_queue: int = 64) -> None:
        self.lm = lm
        self.max_batch = max_batch
        self.max_queue = max_queue
        stop_ids = set(lm.tokenizer.special_tokens.values())
        self.batcher = ContinuousBatcher(lm.model, max_batch, stop_ids)
        self._inbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._open = 0  # jobs submitted and not yet ended (running + waiting)
        self._running = 0
        self._next_key = 0
        self.failure: BaseException | None = None  # what stopped the engine thread, if it died

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return max(0, self._open - self._running)

    def start(self) -> None:
        """Run the engine loop in a thread of its own (tests, and Python programs)."""
        self._thread = threading.Thread(target=self.run, name="scratchlm-engine", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """End the engine loop (from any thread); waits for a thread start() made."""
        self._send(("close",))
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def submit(self, job: Job) -> JobStream:
        """Queue `job` (call in the event loop); its updates come through the returned stream.
        Raises QueueFull when max_batch + max_queue jobs are already open."""
        if self.failure is not None:
            raise RuntimeError(f"the model stopped working: {self.failure!r}")
        self._loop = asyncio.get_running_loop()
        with self._lock:
            if self._open >= self.max_batch + self.max_queue:
                raise QueueFull(
                    f"the server is busy: {self._open} requests open (--max-batch "
                    f"{self.max_batch} + --max-queue {self.max_queue}); retry shortly"
                )
            self._open += 1
            key = self._next_key
            self._next_key += 1
        stream = JobStream(self, key)
        self._send(("add", key, job, stream))
        return stream

    async def prompt_logprobs(self, ids: list[int], top: int) -> list[TokenLogprob | None]:
        """log p of each prompt token given the ones before it (None for the first), with its
        `top` most likely alternatives: what echo=true with logprobs returns."""
        future: concurrent.futures.Future[list[TokenLogprob | None]] = concurrent.futures.Future()
        self._send(("score", ids, top, future))
        return await asyncio.wrap_future(future)

    def _send(self, command: tuple[Any, ...]) -> None:
        self._inbox.put(command)

    # --- the engine thread ----------------------------------------------------------------

    def run(self) -> None:
        """The engine loop, in the calling thread, until close()."""
        texts: dict[int, _Text] = {}  # batcher rid -> the job's text state
        rids: dict[int, int] = {}  # job key -> batcher rid
        try:
            while True:
                # Block for a command when idle; between steps only take what is there.
                commands = [] if self.batcher.has_work else [self._inbox.get()]
                while True:
                    try:
                        commands.append(self._inbox.get_nowait())
                    except queue.Empty:
                        break
                for command in commands:
                    if command[0] == "close":
                        return
                    self._handle(command, texts, rids)
                if self.batcher.has_work:
                    events = self.batcher.step()
                    self._running = self.batcher.running
                    self._deliver(events, texts, rids)
        except BaseException as e:  # the model failed: end every open job rather than hang
            self.failure = e
            for state in texts.values():
                self._push(state.stream, RuntimeError(f"the model failed: {e!r}"))
            raise

    def _handle(
        self, command: tuple[Any, ...], texts: dict[int, _Text], rids: dict[int, int]
    ) -> None:
        kind = command[0]
        if kind == "add":
            _, key, job, stream = command
            if stream.done:  # cancelled before it got here
                self._job_ended()
                return
            try:
                rid = self.batcher.add(job.prompt_ids, job.settings)
            except Exception as e:  # the HTTP layer checks first; this job alone fails
                self._job_ended()
                self._push(stream, e)
                return
            rids[key] = rid
            texts[rid] = _Text(stream, StopStringMatcher(job.stop))
        elif kind == "cancel":
            rid = rids.pop(command[1], -1)
            if rid in texts:
                self.batcher.cancel(rid)
                del texts[rid]
                self._job_ended()
        elif kind == "score":
            _, ids, top, future = command
            try:
                future.set_result(self._score(ids, top))
            except Exception as e:
                future.set_exception(e)

    def _deliver(
        self, events: list[RowEvent], texts: dict[int, _Text], rids: dict[int, int]
    ) -> None:
        tokenizer = self.lm.tokenizer
        for event in events:
            state = texts.get(event.rid)
            if state is None:  # cancelled meanwhile
                continue
            piece = ""
            tokens: tuple[TokenLogprob, ...] = ()
            if event.token is not None:
                tokens = (event.token,)
                raw = tokenizer.decode_bytes([event.token.token])
                piece = state.matcher.feed(state.decoder.decode(raw))
            finish = event.finish
            if state.matcher.stopped and finish is None:
                finish = "stop"
                self.batcher.cancel(event.rid)  # a stop string: nothing more to sample
            if finish is not None:
                piece += state.matcher.feed(state.decoder.decode(b"", final=True))
                piece += state.matcher.flush()
                del texts[event.rid]
                rids.pop(state.stream.key, None)
                self._job_ended()
            self._push(state.stream, Update(piece, tokens, finish))

    def _job_ended(self) -> None:
        with self._lock:
            self._open -= 1

    def _push(self, stream: JobStream, update: Update | Exception) -> None:
        loop = self._loop
        assert loop is not None
        put: Callable[[Update | Exception], None] = stream._put
        loop.call_soon_threadsafe(put, update)

    @torch.inference_mode()
    def _score(self, ids: list[int], top: int) -> list[TokenLogprob | None]:
        model = self.lm.model
        was_training = model.training
        model.eval()
        try:
            logits, _ = model(torch.tensor([ids], device=self.lm.device))  # (1, T, V)
        finally:
            model.train(was_training)
        logprobs = torch.log_softmax(logits[0, :-1].float(), dim=-1)  # predicts tokens 1..T-1
        chosen = logprobs.gather(1, torch.tensor(ids[1:], device=logprobs.device)[:, None])
        best = logprobs.topk(top, dim=-1) if top else None
        scored: list[TokenLogprob | None] = [None]
        for t, (token, lp) in enumerate(zip(ids[1:], chosen[:, 0].tolist(), strict=True)):
            alternatives: tuple[tuple[int, float], ...] = ()
            if best is not None:
                alternatives = tuple(
                    zip(best.indices[t].tolist(), best.values[t].tolist(), strict=True)
                )
            scored.append(TokenLogprob(token, lp, alternatives))
        return scored
