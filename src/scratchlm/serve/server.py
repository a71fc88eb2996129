"""Run `scratchlm serve`: load the model, listen with uvicorn in a thread, run the engine.

The model runs in the main thread (Scheduler.run; why: serve/scheduler.py) and uvicorn's event
loop in a second one; the signal handlers, which only the main thread gets, tell uvicorn to
stop, and when it has, the engine loop ends.

The port is taken before the model is loaded, so a port in use is reported at once (one line,
exit status 2). Once listening, standard output gets exactly one line, the URL, which scripts
and tests read:

    Serving NAME at http://127.0.0.1:8000 (OpenAI API: http://127.0.0.1:8000/v1, chat page: ...)

uvicorn's own messages (warnings, the access log) go to standard error. Ctrl-C or SIGTERM stops
accepting requests and ends the replies in flight at once (503, or an error event in a
stream), then closes the engine: exit status 0 after SIGTERM, 130 after Ctrl-C.
"""

from __future__ import annotations

import asyncio
import copy
import errno
import ipaddress
import logging
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.config import LOGGING_CONFIG

from scratchlm.core.errors import ScratchLMError
from scratchlm.core.messages import status, warn
from scratchlm.serve.scheduler import Scheduler

# How long uvicorn lets responses finish after Ctrl-C / SIGTERM; replies being generated are
# ended at once (AnnouncingServer.shutdown), so this is for the rest.
GRACEFUL_SHUTDOWN_S = 5


def serve(
    source: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_batch: int = 8,
    max_queue: int = 64,
    max_n: int = 8,
    checkpoint: Path | None = None,
    device: str = "cpu",
    dtype: str = "auto",
    quantize: str | None = None,
) -> None:
    """Serve `source` (a run folder, or a pretrained model's name) until stopped."""
    from scratchlm.inference.language_model import load_for_inference
    from scratchlm.serve.app import create_app

    check_settings(port, api_key, max_batch, max_queue, max_n)
    if not is_loopback(host):
        warn(
            f"serving on {host}: anyone who can reach this machine can use the model"
            + ("" if api_key else " (--api-key KEY makes requests need a key)")
        )
    listener = listen(host, port)
    try:
        name = model_name(source)
        status(f"loading {name}...")
        lm = load_for_inference(source, checkpoint, device, dtype, quantize)
        scheduler = Scheduler(lm, max_batch=max_batch, max_queue=max_queue)
        app = create_app(lm, scheduler, name, api_key=api_key, max_n=max_n)
        url = base_url(host, listener.getsockname()[1])
        line = f"Serving {name} at {url} (OpenAI API: {url}/v1, chat page: {url}/)"
        run_beside_uvicorn(scheduler, app, listener, line)
    finally:
        listener.close()


def check_settings(
    port: int, api_key: str | None, max_batch: int, max_queue: int, max_n: int
) -> None:
    if not 0 <= port <= 65535:
        raise ScratchLMError(f"--port must be 0 to 65535 (0: any free port), got {port}")
    if api_key is not None and not api_key.strip():
        raise ScratchLMError("--api-key is empty; give the key clients must send")
    for option, value, least in (
        ("--max-batch", max_batch, 1),
        ("--max-queue", max_queue, 0),
        ("--max-n", max_n, 1),
    ):
        if value < least:
            raise ScratchLMError(f"{option} must be >= {least}, got {value}")


def model_name(source: str | Path) -> str:
    """What clients call the model: the run folder's name, or the pretrained name given."""
    path = Path(source)
    return path.resolve().name if path.exists() else str(source)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False


def base_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host  # an IPv6 address
    return f"http://{shown}:{port}"


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port and listening (port 0: a free one), or one clear line."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        raise ScratchLMError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    try:
        # As uvicorn does: a restarted server may take its port back at once.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        why = "it is in use (another server?)" if e.errno == errno.EADDRINUSE else e.strerror
        raise ScratchLMError(
            f"cannot listen on {host}:{port}: {why}; choose another --port (0: any free port)"
        ) from None
    sock.set_inheritable(True)
    return sock


class AnnouncingServer(uvicorn.Server):
    """uvicorn's server, printing `line` on standard output once it is listening, and
    setting `stopping` when it shuts down (the replies in flight then end at once)."""

    def __init__(self, config: uvicorn.Config, line: str, stopping: asyncio.Event) -> None:
        super().__init__(config)
        self.line = line
        self.stopping = stopping

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            print(self.line, flush=True)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.stopping.set()
        await super().shutdown(sockets)


def run_beside_uvicorn(
    scheduler: Scheduler, app: FastAPI, listener: socket.socket, line: str
) -> None:
    """uvicorn in a thread, the engine loop here, until SIGTERM (returns) or Ctrl-C (raises
    KeyboardInterrupt once both have stopped: exit status 130)."""
    config = uvicorn.Config(
        app,
        log_config=log_config(),
        log_level="warning",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        server_header=False,
    )
    # Requests are logged (on standard error); uvicorn's start-up chatter is not.
    logging.getLogger("uvicorn.access").setLevel(logging.INFO)
    server = AnnouncingServer(config, line, app.state.stopping)
    received: list[int] = []

    def stop(signum: int, _: object) -> None:
        # The first signal asks for a graceful stop, a second one for an immediate one.
        if received:
            server.force_exit = True
        received.append(signum)
        server.should_exit = True

    def serve_http() -> None:
        try:
            server.run(sockets=[listener])  # in a thread: uvicorn leaves signals alone
        finally:
            scheduler.close()  # the engine loop below ends

    in_main = threading.current_thread() is threading.main_thread()
    signals = (signal.SIGINT, signal.SIGTERM) if in_main else ()
    previous = {sig: signal.signal(sig, stop) for sig in signals}
    http = threading.Thread(target=serve_http, name="scratchlm-http")
    http.start()
    try:
        scheduler.run()
    finally:
        server.should_exit = True  # if the engine failed: stop serving too
        http.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if signal.SIGINT in received:
        raise KeyboardInterrupt


def log_config() -> dict[str, Any]:
    """uvicorn's logging, with the access log on standard error: standard output is for
    the URL line alone."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    return config
