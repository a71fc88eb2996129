"""`scratchlm serve` answered by the official `openai` client, as a user's program would talk to
it: chat and completions, streamed and not, stop strings, n, seeds, logprobs (echo included,
as lm-eval's local-completions reads them), usage, the API key, and clients that go away.

One live server for the file, on a byte-level model with random weights: it writes varied
printable text (so seeds matter and stop strings can be picked from its output), never ends a
reply by itself, and its context (8192) is long enough for a reply that outlasts a test.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import openai
import pytest
import torch
from lm_eval.models.openai_completions import LocalCompletionsAPI
from openai.types import Completion
from openai.types.chat import ChatCompletionMessageParam

from live_server import live_server
from scratchlm.finetune.conversations import CHATML_TEMPLATE
from scratchlm.inference.language_model import LanguageModel, load_for_inference
from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig
from scratchlm.runs.imported import save_imported_run
from scratchlm.tokenizer import BPETokenizer

KEY = "test-key"
MODEL = "noise"
CHAT_SPECIALS = {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258}
PRINTABLE = range(32, 127)
QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say something."}]
# A greedy reply this long takes ~10 s here: long past the 2 s a cancelled one may take to go.
LONG = 8000


def save_noise_run(run: Path, block_size: int = 8192) -> Path:
    """A byte-level chat run whose random model spreads its probability over printable ASCII
    (logits ~ N(0, 3^2)); every other byte and the special tokens get logit 0, far below the
    best, so greedy text is printable and never ends before max_tokens."""
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=259,
        block_size=block_size,
        n_layer=1,
        n_head=2,
        n_embd=32,
        pos_encoding="rope",
        tie_embeddings=False,
        bias=False,
    )
    model = GPT(config)
    with torch.no_grad():
        head = model.lm_head.weight
        head.zero_()
        head[PRINTABLE.start : PRINTABLE.stop] = torch.randn(len(PRINTABLE), 32) * 3 / 32**0.5
    tokenizer = BPETokenizer(special_tokens=CHAT_SPECIALS)
    save_imported_run(run, model, tokenizer, source="test", token_roles={"eos": 258})
    (run / "chat_template.jinja").write_text(CHATML_TEMPLATE, encoding="utf-8")
    return run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_noise_run(tmp_path_factory.mktemp("serve") / MODEL)


@pytest.fixture(scope="module")
def url(run: Path) -> Iterator[str]:
    with live_server(run, "--api-key", KEY, "--max-n", "4") as base:
        yield base


@pytest.fixture(scope="module")
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def lm(run: Path) -> LanguageModel:
    return load_for_inference(run, dtype="float32")


def get_json(url: str, headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def wait_until(url: str, condition: Callable[[dict[str, Any]], bool], seconds: float = 2) -> bool:
    """Whether /health meets `condition` within `seconds` (the server's state, seen from
    outside: there is no event to wait on)."""
    deadline = time.monotonic() + seconds
    while not condition(get_json(url + "/health")):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_health_and_models_name_the_run(url: str, client: openai.OpenAI) -> None:
    assert get_json(url + "/health") == {"status": "ok", "model": MODEL, "running": 0, "waiting": 0}
    [model] = client.models.list().data
    assert (model.id, model.object, model.owned_by) == (MODEL, "model", "scratchlm")
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_streamed_equals_not_streamed(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=24,
        temperature=0,
    )
    [choice] = whole.choices
    assert whole.object == "chat.completion" and whole.model == MODEL
    assert choice.message.role == "assistant" and choice.finish_reason == "length"
    assert len(choice.message.content or "") == 24  # one printable byte a token
    assert whole.usage is not None
    assert whole.usage.completion_tokens == 24
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + 24

    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert {(c.id, c.created, c.model, c.object) for c in chunks} == {
        (chunks[0].id, chunks[0].created, MODEL, "chat.completion.chunk")
    }
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert text == choice.message.content
    assert finishes[-1] == "length" and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_completions_streamed_equals_not_streamed(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=20, temperature=0)
    [choice] = whole.choices
    assert whole.object == "text_completion" and choice.finish_reason == "length"
    assert len(choice.text) == 20
    assert whole.usage is not None
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (9, 20)
    chunks = list(
        client.completions.create(
            model=MODEL, prompt="Once upon", max_tokens=20, temperature=0, stream=True
        )
    )
    assert len({c.id for c in chunks}) == 1
    assert "".join(c.choices[0].text for c in chunks) == choice.text
    assert chunks[-1].choices[0].finish_reason == "length"

    # Echo and logprobs, streamed: the prompt first, then the new tokens, offsets running on.
    def echoed(stream: bool) -> tuple[str, list[Any]]:
        asked: dict[str, Any] = {"prompt": "Once", "max_tokens": 6, "echo": True, "logprobs": 2}
        pieces: list[Completion] = (
            list(client.completions.create(model=MODEL, temperature=0, stream=True, **asked))
            if stream
            else [client.completions.create(model=MODEL, temperature=0, **asked)]
        )
        text = "".join(c.choices[0].text for c in pieces)
        rows = [
            row
            for c in pieces
            if (lp := c.choices[0].logprobs)
            for row in zip(
                lp.tokens or [],
                lp.token_logprobs or [],
                lp.top_logprobs or [],
                lp.text_offset or [],
                strict=True,
            )
        ]
        return text, rows

    text, rows = echoed(stream=False)
    assert text.startswith("Once") and len(rows) == 4 + 6
    assert [offset for *_, offset in rows] == list(range(10))
    assert echoed(stream=True) == (text, rows)


def test_a_stop_string_ends_the_text_before_it(client: openai.OpenAI) -> None:
    def complete(stop: list[str] | None = None) -> tuple[str, str]:
        [choice] = client.completions.create(
            model=MODEL, prompt="abc", max_tokens=30, temperature=0, stop=stop
        ).choices
        return choice.text, choice.finish_reason

    text, _ = complete()
    stop = text[10:13]  # a stop string may span tokens (here: 3)
    assert complete([stop, "never!"]) == (text[: text.index(stop)], "stop")
    streamed = list(
        client.completions.create(
            model=MODEL, prompt="abc", max_tokens=30, temperature=0, stop=stop, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in streamed) == text[: text.index(stop)]
    assert streamed[-1].choices[0].finish_reason == "stop"

    def chat(stop: str | None = None) -> tuple[str | None, str]:
        [choice] = client.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=30, temperature=0, stop=stop
        ).choices
        return choice.message.content, choice.finish_reason

    reply, _ = chat()
    assert reply is not None
    stop = reply[12:15]
    assert chat(stop) == (reply[: reply.index(stop)], "stop")


def test_a_seed_gives_the_same_text_and_n_choices_take_the_next_seeds(
    client: openai.OpenAI,
) -> None:
    def chat(seed: int, n: int = 1) -> list[str]:
        reply = client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            max_tokens=16,
            temperature=1,
            seed=seed,
            n=n,
        )
        assert [c.index for c in reply.choices] == list(range(n))
        return [c.message.content or "" for c in reply.choices]

    first = chat(7)
    assert chat(7) == first
    assert chat(8) != first
    assert chat(7, n=3) == [*first, *chat(8), *chat(9)]


def test_completions_give_n_choices_for_each_prompt(client: openai.OpenAI) -> None:
    prompts = ["Hello", "World"]
    reply = client.completions.create(
        model=MODEL, prompt=prompts, max_tokens=8, temperature=1, seed=3, n=2
    )
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    for index, choice in enumerate(reply.choices):
        prompt, j = prompts[index // 2], index % 2
        alone = client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=8, temperature=1, seed=3 + j
        )
        assert choice.text == alone.choices[0].text
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (10, 32)


def test_chat_logprobs_list_each_token_with_its_alternatives(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=12,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    [choice] = reply.choices
    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = choice.logprobs.content
    assert reply.usage is not None and len(content) == reply.usage.completion_tokens == 12
    assert "".join(t.token for t in content) == choice.message.content
    for t in content:
        assert bytes(t.bytes or []).decode() == t.token
        assert len(t.top_logprobs) == 3
        # Greedy: the chosen token is the most likely, and the alternatives come best first.
        assert (t.top_logprobs[0].token, t.top_logprobs[0].logprob) == (t.token, t.logprob)
        assert [a.logprob for a in t.top_logprobs] == sorted(
            (a.logprob for a in t.top_logprobs), reverse=True
        )
        assert t.logprob < 0
    streamed = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=12,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        stream=True,
    )
    pieces = [
        t
        for c in streamed
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content or []
    ]
    assert pieces == content


def test_echo_logprobs_equal_the_in_process_scores(
    client: openai.OpenAI, lm: LanguageModel
) -> None:
    """What lm-eval's local-completions sends for a loglikelihood request, and reads back."""
    context, continuation = lm.encode("The capital of "), lm.encode("France")
    ids = context + continuation
    reply = client.completions.create(
        model=MODEL, prompt=[ids], max_tokens=1, logprobs=1, echo=True, temperature=0, seed=1234
    )
    [choice] = reply.choices
    assert choice.logprobs is not None
    lp = choice.logprobs
    assert lp.token_logprobs is not None and lp.top_logprobs is not None and lp.tokens is not None
    assert len(lp.token_logprobs) == len(ids) + 1  # the prompt's tokens, then the new one
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert choice.text.startswith("The capital of France")
    assert "".join(lp.tokens) == choice.text
    expected = lm.score(ids[:1], ids[1:])
    assert lp.token_logprobs[1 : len(ids)] == pytest.approx(expected, abs=1e-4)

    # lm-eval's own parsing: the sum of the continuation's log-probabilities, and whether each
    # of its tokens was the model's first choice.
    [(total, greedy)] = LocalCompletionsAPI.parse_logprobs(
        reply.model_dump(), tokens=[ids], ctxlens=[len(context)]
    )
    assert total == pytest.approx(sum(lm.score(context, continuation)), abs=1e-4)
    with torch.no_grad():
        logits, _ = lm.model(torch.tensor([ids]))
    argmax = logits[0, len(context) - 1 : -1].argmax(-1).tolist()
    assert greedy == (argmax == continuation)
    # The model's own greedy continuation is greedy by lm-eval's reckoning too.
    best = logits[0, -1].argmax().item()
    [(_, greedy_too)] = LocalCompletionsAPI.parse_logprobs(
        client.completions.create(
            model=MODEL,
            prompt=[[*ids, best]],
            max_tokens=1,
            logprobs=1,
            echo=True,
            temperature=0,
        ).model_dump(),
        ctxlens=[len(ids)],
    )
    assert greedy_too


def test_echo_with_max_tokens_0_scores_the_prompt_alone(
    client: openai.OpenAI, lm: LanguageModel
) -> None:
    reply = client.completions.create(
        model=MODEL, prompt="Hi there", max_tokens=0, echo=True, logprobs=0
    )
    [choice] = reply.choices
    assert (choice.text, choice.finish_reason) == ("Hi there", "length")
    assert choice.logprobs is not None and choice.logprobs.token_logprobs is not None
    assert choice.logprobs.token_logprobs[1:] == pytest.approx(lm.score("H", "i there"), abs=1e-4)
    assert choice.logprobs.text_offset == list(range(8))
    assert reply.usage is not None and reply.usage.completion_tokens == 0


def test_the_tokenizer_endpoints_serve_lm_evals_remote_tokenizer(
    url: str, lm: LanguageModel
) -> None:
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    def post(path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(url + path, json.dumps(body).encode(), headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    info = get_json(url + "/tokenizer_info", headers)
    assert info["eos_token"] == "<|im_end|>" and info["chat_template"] == CHATML_TEMPLATE
    assert post("/tokenize", {"prompt": "ab<|im_end|>"})["tokens"] == [97, 98, 258]
    assert post("/detokenize", {"tokens": lm.encode("héllo")})["prompt"] == "héllo"


def test_a_wrong_or_missing_key_is_refused(url: str) -> None:
    wrong = openai.OpenAI(base_url=url + "/v1", api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        wrong.models.list()
    assert refused.value.status_code == 401
    assert refused.value.code == "invalid_api_key"
    with pytest.raises(urllib.error.HTTPError) as missing:
        get_json(url + "/v1/models")
    assert missing.value.code == 401
    assert json.load(missing.value)["error"]["code"] == "invalid_api_key"
    assert get_json(url + "/health")["status"] == "ok"  # open without a key
    with urllib.request.urlopen(url + "/", timeout=10) as page:
        assert page.headers["Content-Type"].startswith("text/html")


def test_a_closed_stream_frees_its_row_at_once(url: str, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=LONG, temperature=0, stream=True
    )
    for i, _ in enumerate(stream):
        if i == 5:
            break
    assert get_json(url + "/health")["running"] == 1
    stream.close()
    assert wait_until(url, lambda health: health["running"] == 0)


def test_a_request_given_up_before_its_reply_frees_its_row(url: str) -> None:
    address = urlparse(url)
    connection = http.client.HTTPConnection(address.netloc, timeout=10)
    body = {"model": MODEL, "prompt": "x", "max_tokens": LONG, "temperature": 0}
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    connection.request("POST", "/v1/completions", json.dumps(body), headers)
    assert wait_until(url, lambda health: health["running"] == 1)
    connection.close()
    assert wait_until(url, lambda health: health["running"] == health["waiting"] == 0)


def test_eight_concurrent_streams_get_exactly_their_solo_replies(client: openai.OpenAI) -> None:
    questions = [f"Question {i}: {'why ' * i}?" for i in range(8)]

    def ask(question: str) -> tuple[str, float, float]:
        """The streamed reply, and when its first and last pieces came."""
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": question}],
            max_tokens=300,  # long enough that all 8 are open at once
            temperature=0,
            stream=True,
        )
        pieces, times = [], []
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
                times.append(time.monotonic())
        return "".join(pieces), times[0], times[-1]

    with ThreadPoolExecutor(len(questions)) as pool:
        together = list(pool.map(ask, questions))
    alone = [ask(q)[0] for q in questions]
    assert [text for text, _, _ in together] == alone
    assert len(set(alone)) >= 6  # replies that differ: a row that leaked would show
    # They ran at once: every stream had begun before any had ended.
    assert max(first for _, first, _ in together) < min(last for _, _, last in together)


def test_a_request_arriving_mid_way_joins_without_waiting(client: openai.OpenAI) -> None:
    long = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=LONG, temperature=0, stream=True
    )
    chunks = iter(long)
    for _ in range(5):
        next(chunks)  # the long reply is being decoded
    short = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=5, temperature=0
    )
    assert short.usage is not None and short.usage.completion_tokens == 5
    # Done while the long reply is far from done: it did not wait for a batch to drain.
    more = next(chunks)
    assert more.choices and more.choices[0].finish_reason is None
    long.close()
