"""What every request passes before a route sees it: the API key and the body size limit.

Both are plain ASGI middleware rather than FastAPI dependencies, so they also guard unknown
routes and bodies sent in chunks (no Content-Length), and answer in OpenAI's error shape.

A refused request's body is read and dropped (up to DRAIN_LIMIT bytes) before the answer:
a client still sending a large body to a server that answered and closed the connection
gets "connection reset" instead of the answer.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scratchlm.serve.protocol import error_body

DRAIN_LIMIT = 64 * 1024 * 1024


class BodyTooLarge(Exception):
    """Raised from a request's receive() once its body passes the limit."""

    def __init__(self, more_body: bool) -> None:
        super().__init__()
        self.more_body = more_body  # whether some of the body is still to come


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def drain(receive: Receive, limit: int = DRAIN_LIMIT) -> None:
    """Read what is left of the request body (at most `limit` bytes) and drop it."""
    read = 0
    while read <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return  # http.disconnect
        read += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class LimitBodySize:
    """Answer 413 to a request whose body is over max_bytes: at once when its Content-Length
    says so, else as soon as that many bytes have arrived."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(receive, send)
            return
        received = 0
        answered = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(message.get("more_body", False))
            return message

        async def watching_send(message: Message) -> None:
            nonlocal answered
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge as e:
            if answered:  # too late to answer 413; nothing reads a body after answering
                raise
            await self._refuse(receive, send, more_body=e.more_body)

    async def _refuse(self, receive: Receive, send: Send, more_body: bool = True) -> None:
        if more_body:  # past the end, receive() would wait for the client to hang up
            await drain(receive)
        mib = self.max_bytes / 2**20
        message = (
            f"the request body is larger than this server's limit of {self.max_bytes:,} bytes "
            f"({mib:g} MiB); send a smaller request"
        )
        await send_json(send, 413, error_body(message, code="request_too_large"))


class RequireAPIKey:
    """Answer 401 to a request without `Authorization: Bearer KEY`, but on open_paths."""

    def __init__(self, app: ASGIApp, api_key: str, open_paths: frozenset[str]) -> None:
        self.app = app
        self.expected = b"Bearer " + api_key.encode()
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        given = header(scope, b"authorization")
        if given is not None and hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        if given is None:
            message = (
                "no API key: send the header `Authorization: Bearer KEY` with the key this "
                "server was started with (scratchlm serve --api-key)"
            )
        else:
            message = "incorrect API key provided; use the key given to scratchlm serve --api-key"
        await drain(receive)
        await send_json(
            send,
            401,
            error_body(message, code="invalid_api_key"),
            headers=[(b"www-authenticate", b"Bearer")],
        )
