"""One request's jobs as one sequence of updates, and how a reply is streamed (SSE).

A request with n choices (and on /v1/completions, several prompts) is several scheduler jobs;
Run merges their updates as they come and ends them all early, at once, when the client goes
away or the server is shutting down, so their rows are freed for others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from scratchlm.serve.protocol import APIError, Choice
from scratchlm.serve.scheduler import JobStream, Update

log = logging.getLogger(__name__)


class _ClientGone(Exception):
    pass


class _Stopping(Exception):
    pass


class Run:
    """The jobs of one request, their updates merged into one sequence of (choice, update).

    stopping: set when the server shuts down; the replies in flight then end with a 503
    rather than being cut off mid-stream when uvicorn's grace period is over.
    """

    def __init__(self, streams: list[JobStream], stopping: asyncio.Event) -> None:
        self.streams = streams
        self.count = len(streams)
        self.stopping = stopping
        self.finished = [False] * len(streams)
        self.client_gone = False

    def cancel(self) -> None:
        for i, stream in enumerate(self.streams):
            if not self.finished[i]:
                self.finished[i] = True
                stream.cancel()

    async def updates(self, request: Request) -> AsyncIterator[tuple[int, Update]]:
        """Every job's updates until each has finished. If the client goes away first,
        client_gone is set and the iteration ends; if the server is stopping, APIError 503."""
        queue: asyncio.Queue[tuple[int, Update | None] | BaseException] = asyncio.Queue()

        async def pump(i: int, stream: JobStream) -> None:
            try:
                async for update in stream:
                    queue.put_nowait((i, update))
                queue.put_nowait((i, None))
            except Exception as e:
                queue.put_nowait(e)

        async def watch() -> None:
            gone = asyncio.create_task(disconnected(request.receive))
            stopping = asyncio.create_task(self.stopping.wait())
            try:
                await asyncio.wait({gone, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
                stopping.cancel()
            self.cancel()  # at once, even if the consumer never reads on
            self.client_gone = gone.done() and not gone.cancelled()
            queue.put_nowait(_ClientGone() if self.client_gone else _Stopping())

        tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(self.streams)]
        tasks.append(asyncio.create_task(watch()))
        try:
            remaining = sum(not f for f in self.finished)
            while remaining:
                item = await queue.get()
                if isinstance(item, _ClientGone):
                    return
                if isinstance(item, _Stopping):
                    raise server_stopping()
                if isinstance(item, BaseException):
                    raise item
                i, update = item
                if update is None:
                    if not self.finished[i]:
                        raise RuntimeError(f"job {i} ended without a finish reason")
                    continue
                if update.finish_reason is not None:
                    self.finished[i] = True
                    remaining -= 1
                yield i, update
        finally:
            self.cancel()
            for task in tasks:
                task.cancel()

    async def collect(self, request: Request) -> list[Choice] | None:
        """Each job's whole choice, or None when the client went away first."""
        choices = [Choice(i) for i in range(self.count)]
        async for i, update in self.updates(request):
            choice = choices[i]
            choice.text += update.text
            choice.tokens.extend(update.tokens)
            choice.finish_reason = update.finish_reason or choice.finish_reason
        return None if self.client_gone else choices


def server_stopping() -> APIError:
    return APIError(
        503,
        "the server is shutting down; try again when it is back",
        type="server_error",
        code="server_shutting_down",
    )


async def disconnected(receive: Receive) -> None:
    """Return when the client has gone: after the body, the server's next message says so."""
    while (await receive())["type"] != "http.disconnect":
        pass


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def sse_done() -> str:
    return "data: [DONE]\n\n"


async def telling_errors(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """`events`, and if they fail, an error event saying why (the 200 has gone out)."""
    try:
        async for event in events:
            yield event
    except APIError as e:
        yield sse(e.body())
    except Exception as e:
        log.exception("a streamed reply failed")
        yield sse(APIError(500, f"internal server error: {e!r}", type="server_error").body())
    finally:
        await events.aclose()  # type: ignore[attr-defined]


class EventStream(StreamingResponse):
    """A text/event-stream of `data:` events, the reply of `run`. A failure mid-stream is told
    in the stream as an error event (the openai client raises it); a client gone mid-stream
    is no error. However the response ends (even before its first event), run's jobs end."""

    def __init__(self, events: AsyncIterator[str], run: Run) -> None:
        self.run = run
        super().__init__(
            telling_errors(events),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            with contextlib.suppress(ClientDisconnect, OSError):
                await super().__call__(scope, receive, send)
        finally:
            self.run.cancel()
