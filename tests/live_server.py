"""`scratchlm serve` as a real process on a free port, for tests that talk to it over HTTP.

    with live_server(run_dir, "--api-key", "k") as url:   # "http://127.0.0.1:PORT"
        openai.OpenAI(base_url=url + "/v1", api_key="k")...

The server is started with --port 0; its one line on standard output says where it listens.
It is stopped (SIGTERM, then SIGKILL) when the block ends, whatever happened in it.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, NoReturn

SCRATCHLM = Path(sys.executable).parent / "scratchlm"
URL_LINE = re.compile(r"^Serving (.+) at (http://\S+) \(OpenAI API: \2/v1, chat page: \2/\)$")


@contextmanager
def live_server(source: Path | str, *args: str, timeout: float = 60) -> Iterator[str]:
    """Run `scratchlm serve SOURCE --port 0 ARGS...`; yield its base URL once /health
    answers. Its standard error is kept in a file and shown if it fails to start."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with tempfile.TemporaryFile("w+", encoding="utf-8") as stderr:
        process = subprocess.Popen(
            [str(SCRATCHLM), "serve", str(source), "--port", "0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            text=True,
        )
        try:
            deadline = time.monotonic() + timeout
            url = _read_url(process, deadline, stderr)
            _wait_for_health(url, process, deadline, stderr)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)
            assert process.stdout is not None
            process.stdout.close()


def _read_url(process: subprocess.Popen[str], deadline: float, stderr: IO[str]) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while not selector.select(timeout=max(0.0, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                _fail("did not print its URL in time", process, stderr)
    line = process.stdout.readline().rstrip("\n")
    match = URL_LINE.match(line)
    if match is None:
        _fail(f"printed {line!r} instead of its URL line", process, stderr)
    return match.group(2)


def _wait_for_health(
    url: str,
    process: subprocess.Popen[str],
    deadline: float,
    stderr: IO[str],
) -> None:
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as response:
                if json.load(response).get("status") == "ok":
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        if process.poll() is not None or time.monotonic() >= deadline:
            _fail("never answered GET /health", process, stderr)
        time.sleep(0.05)  # polling a server that prints its URL before answering: rare


def _fail(
    what: str,
    process: subprocess.Popen[str],
    stderr: IO[str],
) -> NoReturn:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=15)
    stderr.seek(0)
    raise RuntimeError(
        f"scratchlm serve {what} (exit status {process.returncode}); its standard error:\n"
        + stderr.read()[-4000:]
    )
