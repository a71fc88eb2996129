"""Bad requests to `scratchlm serve`: each is answered with the right 4xx (or 503) and OpenAI's
error JSON, {"error": {"message", "type", "param", "code"}}, and the server goes on serving.
Also the command's own mistakes (no such run, a port in use): one line, exit status 2.

One live server for the file (--max-batch 1 --max-queue 1 --max-n 2), on the random byte-level
model of test_serve_api (a context of 8192; greedy replies never end by themselves).
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import openai
import pytest
from fastapi.testclient import TestClient

from live_server import SCRATCHLM, live_server
from scratchlm.inference.language_model import load_for_inference
from scratchlm.serve.app import MAX_BODY_BYTES, create_app
from scratchlm.serve.scheduler import Scheduler
from scratchlm.serve.server import base_url, is_loopback
from test_chat import SAYS_HI, save_chat_run
from test_serve_api import LONG, MODEL, QUESTION, save_noise_run, wait_until

BLOCK = 8192
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
USER = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    run = save_noise_run(tmp_path_factory.mktemp("serve-errors") / MODEL, block_size=BLOCK)
    with live_server(run, "--max-batch", "1", "--max-queue", "1", "--max-n", "2") as base:
        yield base


def send(
    url: str,
    path: str,
    body: bytes | Iterable[bytes] | dict[str, Any] | None,
    method: str = "POST",
    chunked: bool = False,
) -> tuple[int, Any]:
    """The status and JSON body of one raw request (bodies a client library would refuse)."""
    connection = http.client.HTTPConnection(urlparse(url).netloc, timeout=30)
    try:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        headers = {"Content-Type": "application/json"}
        connection.request(method, path, data, headers, encode_chunked=chunked)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def assert_openai_error(body: Any, param: str | None = None, code: str | None = None) -> str:
    """body is OpenAI's error shape (with this param and code, when given); its message."""
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    error = body["error"]
    assert error["type"] in ("invalid_request_error", "server_error")
    assert error["message"] and "\n" not in error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return str(error["message"])


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": USER, **fields}


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "Hi", **fields}


BAD_REQUESTS = [
    # (what, path, body, status, param, code, words in the message)
    (
        "malformed JSON",
        CHAT,
        b'{"model": "noise", "messages": [',
        400,
        None,
        "invalid_json",
        "JSON",
    ),
    ("an empty body", CHAT, b"", 400, None, "invalid_json", "empty"),
    ("not an object", CHAT, b"[1, 2]", 400, None, None, "JSON object"),
    ("text for a number", CHAT, chat(max_tokens="lots"), 400, "max_tokens", None, "integer"),
    ("text for a float", CHAT, chat(temperature="hot"), 400, "temperature", None, "number"),
    ("a float for an int", COMPLETIONS, completion(n=1.5), 400, "n", None, "integer"),
    ("text for a bool", CHAT, chat(stream="yes"), 400, "stream", None, "boolean"),
    (
        "a string for messages",
        CHAT,
        {"model": MODEL, "messages": "Hi"},
        400,
        "messages",
        None,
        "list",
    ),
    ("missing messages", CHAT, {"model": MODEL}, 400, "messages", None, "required"),
    ("no messages", CHAT, chat(messages=[]), 400, "messages", None, "at least 1"),
    (
        "an unknown role",
        CHAT,
        chat(messages=[*USER, {"role": "robot", "content": "beep"}]),
        400,
        "messages[1].role",
        None,
        "'robot'",
    ),
    (
        "a message without content",
        CHAT,
        chat(messages=[{"role": "user"}]),
        400,
        "messages[0].content",
        None,
        "required",
    ),
    (
        "an image part",
        CHAT,
        chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
        400,
        "messages[0].content[0].type",
        None,
        "'text'",
    ),
    ("an unknown model", CHAT, chat(model="gpt-4"), 404, "model", "model_not_found", "gpt-4"),
    (
        "a chat longer than the context",
        CHAT,
        chat(messages=[{"role": "user", "content": "x" * BLOCK}]),
        400,
        "messages",
        "context_length_exceeded",
        f"holds {BLOCK} tokens",
    ),
    (
        "a prompt longer than the context",
        COMPLETIONS,
        completion(prompt="x" * BLOCK),
        400,
        "prompt",
        "context_length_exceeded",
        f"the prompt is {BLOCK} tokens",
    ),
    (
        "a prompt that fills the context, to score it with a new token",
        COMPLETIONS,
        completion(prompt=[1] * BLOCK, echo=True, logprobs=1, max_tokens=1),
        400,
        "prompt",
        "context_length_exceeded",
        "",
    ),
    ("max_tokens 0", CHAT, chat(max_tokens=0), 400, "max_tokens", None, ">= 1"),
    (
        "max_tokens 0 without echo",
        COMPLETIONS,
        completion(max_tokens=0),
        400,
        "max_tokens",
        None,
        "echo",
    ),
    ("max_tokens < 0", COMPLETIONS, completion(max_tokens=-5), 400, "max_tokens", None, ">= 1"),
    (
        "max_completion_tokens 0",
        CHAT,
        chat(max_completion_tokens=0),
        400,
        "max_completion_tokens",
        None,
        ">= 1",
    ),
    ("huge max_tokens", CHAT, chat(max_tokens=10**9), 400, "max_tokens", None, f"at most {BLOCK}"),
    ("n over the limit", CHAT, chat(n=3), 400, "n", None, "--max-n"),
    ("n 0", CHAT, chat(n=0), 400, "n", None, "greater than or equal to 1"),
    ("temperature over 2", CHAT, chat(temperature=2.5), 400, "temperature", None, "2"),
    ("top_p 0", CHAT, chat(top_p=0), 400, "top_p", None, "greater than 0"),
    ("five stop strings", CHAT, chat(stop=list("abcde")), 400, "stop", None, "at most 4"),
    ("an empty stop string", CHAT, chat(stop=""), 400, "stop", None, "empty"),
    (
        "top_logprobs over 20",
        CHAT,
        chat(logprobs=True, top_logprobs=21),
        400,
        "top_logprobs",
        None,
        "20",
    ),
    ("top_logprobs alone", CHAT, chat(top_logprobs=2), 400, "top_logprobs", None, "logprobs"),
    ("logprobs over 5", COMPLETIONS, completion(logprobs=6), 400, "logprobs", None, "5"),
    (
        "a token id outside the vocabulary",
        COMPLETIONS,
        completion(prompt=[1, 259]),
        400,
        "prompt",
        None,
        "259",
    ),
    ("an empty prompt", COMPLETIONS, completion(prompt=""), 400, "prompt", None, "empty"),
    (
        "a prompt of mixed lists",
        COMPLETIONS,
        completion(prompt=[1, "a"]),
        400,
        "prompt",
        None,
        "list",
    ),
    ("bad ids to detokenize", "/detokenize", {"tokens": [999]}, 400, "tokens", None, "999"),
    ("an unknown route", "/v1/embeddings", {}, 404, None, "unknown_url", "/v1/embeddings"),
    ("a wrong method", CHAT, None, 405, None, "method_not_allowed", "POST"),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "param", "code", "words"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_a_bad_request_gets_a_clear_openai_error(
    url: str,
    path: str,
    body: Any,
    status: int,
    param: str | None,
    code: str | None,
    words: str,
) -> None:
    got, answer = send(url, path, body, method="GET" if body is None else "POST")
    assert got == status, answer
    assert words in assert_openai_error(answer, param, code)


def test_the_openai_client_raises_its_own_errors(url: str) -> None:
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-4", messages=QUESTION)
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model=MODEL, prompt="x" * BLOCK)
    assert too_long.value.code == "context_length_exceeded"
    assert too_long.value.param == "prompt"


def test_a_body_over_10_mb_is_refused(url: str) -> None:
    big = b"x" * (MAX_BODY_BYTES + 1)
    status, answer = send(url, CHAT, big)  # Content-Length says so
    assert status == 413
    assert "10,485,760 bytes" in assert_openai_error(answer, code="request_too_large")
    mb = 1 << 20
    pieces = (big[i : i + mb] for i in range(0, len(big), mb))
    status, answer = send(url, CHAT, pieces, chunked=True)  # no Content-Length: counted
    assert status == 413
    assert_openai_error(answer, code="request_too_large")
    # Just under the limit is read (and an unknown field ignored, as OpenAI does).
    status, answer = send(url, COMPLETIONS, completion(max_tokens=1, padding="x" * 9_000_000))
    assert status == 200 and answer["usage"]["completion_tokens"] == 1


def test_a_full_queue_answers_503_and_frees_up(url: str) -> None:
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)

    def long_reply() -> openai.Stream[Any]:
        return client.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=LONG, temperature=0, stream=True
        )

    running, waiting = long_reply(), long_reply()  # one row (--max-batch 1), one in the queue
    try:
        assert wait_until(url, lambda health: (health["running"], health["waiting"]) == (1, 1))
        with pytest.raises(openai.InternalServerError) as full:
            client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=1)
        assert full.value.status_code == 503
        assert full.value.code == "overloaded"
        assert full.value.type == "server_error"
    finally:
        running.close()
        waiting.close()
    assert wait_until(url, lambda health: (health["running"], health["waiting"]) == (0, 0))


def test_the_server_still_serves_after_all_that(url: str) -> None:
    status, answer = send(url, COMPLETIONS, completion(max_tokens=3, temperature=0))
    assert status == 200
    assert len(answer["choices"][0]["text"]) == 3
    status, answer = send(url, CHAT, chat(max_tokens=2, temperature=0, n=2))
    assert status == 200 and [c["index"] for c in answer["choices"]] == [0, 1]
    # No model named: the one served answers (a quick curl need not know its name).
    status, answer = send(url, CHAT, {"messages": USER, "max_tokens": 2})
    assert status == 200 and answer["model"] == MODEL


@pytest.fixture
def plain_app(tmp_path: Path) -> TestClient:
    """The app in-process, on a model with no chat template (its scheduler never started:
    the requests here never reach it)."""
    lm = load_for_inference(save_chat_run(tmp_path / "plain", SAYS_HI, template=False))
    return TestClient(create_app(lm, Scheduler(lm), "plain"))


def test_chat_with_a_model_without_a_chat_template_says_to_use_completions(
    plain_app: TestClient,
) -> None:
    response = plain_app.post(CHAT, json={"model": "plain", "messages": USER})
    assert response.status_code == 400
    message = assert_openai_error(response.json(), "messages", "no_chat_template")
    assert "/v1/completions" in message


def test_a_missing_chat_page_is_a_clear_500(
    plain_app: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("scratchlm.serve.app.resources.files", lambda _: tmp_path / "nothing")
    response = plain_app.get("/")
    assert response.status_code == 500
    assert "chat.html" in assert_openai_error(response.json(), code=None)
    assert response.json()["error"]["type"] == "server_error"


# ------------------------------------------------------------------- the command's mistakes


def serve_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRATCHLM), "serve", *args], capture_output=True, text=True, timeout=60
    )


def test_no_such_run_is_one_line_and_exit_status_2(tmp_path: Path) -> None:
    done = serve_command(str(tmp_path / "missing"), "--port", "0")
    assert done.returncode == 2 and done.stdout == ""
    [line] = done.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: ") and "missing" in line
    assert "Traceback" not in done.stderr


def test_a_port_in_use_is_one_line_and_exit_status_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = serve_command(str(tmp_path / "any"), "--port", str(port))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == (
        f"error: cannot listen on 127.0.0.1:{port}: it is in use (another server?); choose "
        "another --port (0: any free port)"
    )


def test_hosts_other_than_this_machine_are_told_apart() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.2", "::", "example.com"))
    assert base_url("::1", 8000) == "http://[::1]:8000"


def test_sigterm_ends_the_replies_in_flight_and_the_server_cleanly(tmp_path: Path) -> None:
    run = save_noise_run(tmp_path / MODEL, block_size=BLOCK)
    server = subprocess.Popen(
        [str(SCRATCHLM), "serve", str(run), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        url = line.split(" at ", 1)[1].split(" ", 1)[0]
        connection = http.client.HTTPConnection(urlparse(url).netloc, timeout=30)
        body = chat(max_tokens=LONG, temperature=0, stream=True)
        connection.request("POST", CHAT, json.dumps(body), {"Content-Type": "application/json"})
        reply = connection.getresponse()
        assert reply.status == 200 and reply.readline().startswith(b"data: ")
        server.terminate()
        assert server.wait(timeout=10) == 0
        events = [e for e in reply.read().split(b"\n\n") if e.startswith(b"data: ")]
        assert_openai_error(json.loads(events[-1][6:]), code="server_shutting_down")
        assert server.stdout.read() == ""  # the URL line was all
        connection.close()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)
