"""The HTTP side of `scratchlm serve`: OpenAI's endpoints on top of the scheduler.

    GET  /                      the chat page (static/chat.html)
    GET  /health                {"status": "ok", "model", "running", "waiting"}
    GET  /v1/models             the one model served
    POST /v1/chat/completions   chat, streamed (Server-Sent Events) or not
    POST /v1/completions        text or token-id prompts; echo + logprobs score a prompt
    GET  /tokenizer_info, POST /tokenize, POST /detokenize
                                vLLM's tokenizer endpoints: lm-eval's local-completions finds
                                them and tokenises with the served model's own tokenizer

Each request becomes one scheduler job per choice (n, and on /v1/completions each prompt);
their updates are merged as they come. A client that goes away (a closed stream, a cancelled
request) cancels its jobs at once, freeing their rows for the next request. Every error is
answered in OpenAI's shape, {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from importlib import resources
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from scratchlm.core.errors import ScratchLMError
from scratchlm.inference.continuous import RowSettings, TokenLogprob
from scratchlm.inference.language_model import LanguageModel
from scratchlm.serve import protocol as api
from scratchlm.serve.guards import LimitBodySize, RequireAPIKey
from scratchlm.serve.protocol import APIError, Choice
from scratchlm.serve.scheduler import Job, JobStream, QueueFull, Scheduler
from scratchlm.serve.streams import EventStream, Run, server_stopping, sse, sse_done

MAX_BODY_BYTES = 10 * 1024 * 1024
OPEN_PATHS = frozenset({"/", "/health"})  # reachable without the API key
# The page is self-contained; this keeps anything injected into it from loading or sending
# elsewhere.
PAGE_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; frame-ancestors 'none'"
)

RequestModel = TypeVar("RequestModel", bound=BaseModel)


def create_app(
    lm: LanguageModel,
    scheduler: Scheduler,
    model_name: str,
    api_key: str | None = None,
    max_n: int = 8,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The server's ASGI app; the caller starts and closes `scheduler`."""
    app = FastAPI(title="scratchlm", docs_url=None, redoc_url=None, openapi_url=None)
    # Set by the server when it shuts down: replies in flight end with a 503 (streams.Run).
    app.state.stopping = asyncio.Event()
    routes = Routes(lm, scheduler, model_name, max_n, app.state.stopping)
    app.add_api_route("/", routes.chat_page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/health", routes.health, methods=["GET"])
    app.add_api_route("/v1/models", routes.models, methods=["GET"])
    app.add_api_route("/v1/models/{model_id:path}", routes.model, methods=["GET"])
    app.add_api_route("/v1/chat/completions", routes.chat_completions, methods=["POST"])
    app.add_api_route("/v1/completions", routes.completions, methods=["POST"])
    app.add_api_route("/tokenizer_info", routes.tokenizer_info, methods=["GET"])
    app.add_api_route("/tokenize", routes.tokenize, methods=["POST"])
    app.add_api_route("/detokenize", routes.detokenize, methods=["POST"])
    install_error_handlers(app)
    # The last added runs first: the key is checked before the body is read.
    app.add_middleware(LimitBodySize, max_bytes=max_body_bytes)
    if api_key is not None:
        app.add_middleware(RequireAPIKey, api_key=api_key, open_paths=OPEN_PATHS)
    return app


# ---------------------------------------------------------------------------------- errors


def install_error_handlers(app: FastAPI) -> None:
    def answer(error: APIError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    async def api_error(_: Request, error: Exception) -> Response:
        assert isinstance(error, APIError)
        return answer(error)

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        method, path = request.method, request.url.path
        if error.status_code == 404:
            found = APIError(
                404,
                f"unknown request URL: {method} {path}; this server has /v1/chat/completions, "
                "/v1/completions, /v1/models and /health",
                code="unknown_url",
            )
        elif error.status_code == 405:
            allowed = (error.headers or {}).get("Allow", "another method")
            found = APIError(
                405, f"{method} is not allowed on {path}; use {allowed}", code="method_not_allowed"
            )
        else:
            found = APIError(error.status_code, str(error.detail))
        response = answer(found)
        response.headers.update(error.headers or {})
        return response

    async def validation_error(_: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        where = api.field_path([p for p in error.errors()[0]["loc"] if p != "body"])
        return answer(APIError(400, f"{where}: {error.errors()[0]['msg']}", param=where or None))

    async def unexpected(_: Request, error: Exception) -> Response:
        return answer(APIError(500, f"internal server error: {error!r}", type="server_error"))

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)


async def parse_body(request: Request, model: type[RequestModel]) -> RequestModel:
    """The request's JSON body as `model`, or a 400 naming what is wrong and where."""
    body = await request.body()
    if not body.strip():
        raise APIError(400, "the request body is empty; send a JSON object", code="invalid_json")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
        raise APIError(
            400, f"the request body is not valid JSON: {e}", code="invalid_json"
        ) from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        message, param = api.validation_message(e)
        raise APIError(400, message, param=param) from None


# ---------------------------------------------------------------------------------- routes


class Routes:
    def __init__(
        self,
        lm: LanguageModel,
        scheduler: Scheduler,
        model_name: str,
        max_n: int,
        stopping: asyncio.Event,
    ) -> None:
        self.lm = lm
        self.stopping = stopping
        self.scheduler = scheduler
        self.model_name = model_name
        self.max_n = max_n
        self.started = int(time.time())
        self.tokens = api.TokenStrings(lm.tokenizer)

    async def chat_page(self) -> Response:
        try:
            page = resources.files("scratchlm.serve").joinpath("static", "chat.html")
            html = page.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            raise APIError(
                500,
                "the chat page (scratchlm/serve/static/chat.html) is missing from this "
                "installation of scratchlm; reinstall it",
                type="server_error",
            ) from None
        headers = {"Content-Security-Policy": PAGE_POLICY, "X-Content-Type-Options": "nosniff"}
        return HTMLResponse(html, headers=headers)

    async def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "model": self.model_name,
            "running": self.scheduler.running,
            "waiting": self.scheduler.waiting,
        }

    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [api.model_card(self.model_name, self.started)]}

    async def model(self, model_id: str) -> dict[str, Any]:
        self.check_model(model_id)
        return api.model_card(self.model_name, self.started)

    # ---- chat

    async def chat_completions(self, request: Request) -> Response:
        req = await parse_body(request, api.ChatCompletionRequest)
        self.check_model(req.model)
        n = self.check_n(req)
        if req.top_logprobs and not req.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        limit, limit_field = req.requested_max_tokens()
        max_tokens = self.check_max_tokens(limit, limit_field, echo=False)
        prompt = self.encode_chat(req.messages)
        self.check_fits(prompt, "messages")
        top = (req.top_logprobs or 0) if req.logprobs else 0
        settings = self.row_settings(req, max_tokens, top)
        run = self.start([prompt], n, settings, req.stop_strings())
        reply = Reply("chatcmpl", self.model_name)
        logprobs = bool(req.logprobs)
        if req.stream:
            events = self.chat_events(run, request, reply, len(prompt), logprobs, req)
            return EventStream(events, run)
        choices = await run.collect(request)
        if choices is None:
            return Response(status_code=499)  # nobody is listening
        return JSONResponse(
            api.reply_object(
                "chat.completion",
                reply.id,
                reply.created,
                reply.model,
                [
                    api.chat_choice(
                        c.index,
                        c.text,
                        c.finish_reason,
                        self.tokens.chat_logprobs(c.tokens) if logprobs else None,
                    )
                    for c in choices
                ],
                api.usage(len(prompt), sum(len(c.tokens) for c in choices)),
            )
        )

    async def chat_events(
        self,
        run: Run,
        request: Request,
        reply: Reply,
        prompt_tokens: int,
        logprobs: bool,
        req: api.ChatCompletionRequest,
    ) -> AsyncIterator[str]:
        with_usage = req.include_usage

        def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
            return sse(
                api.reply_object(
                    "chat.completion.chunk",
                    reply.id,
                    reply.created,
                    reply.model,
                    choices,
                    usage,
                    with_usage,
                )
            )

        for i in range(run.count):
            yield chunk([api.chat_delta(i, {"role": "assistant", "content": ""})])
        completion_tokens = 0
        async for i, update in run.updates(request):
            completion_tokens += len(update.tokens)
            if update.text or update.tokens:
                shown = self.tokens.chat_logprobs(update.tokens) if logprobs else None
                yield chunk([api.chat_delta(i, {"content": update.text}, logprobs=shown)])
            if update.finish_reason:
                yield chunk([api.chat_delta(i, {}, update.finish_reason)])
        if run.client_gone:
            return
        if with_usage:
            yield chunk([], api.usage(prompt_tokens, completion_tokens))
        yield sse_done()

    def encode_chat(self, messages: Sequence[api.ChatMessage]) -> list[int]:
        if self.lm.chat_template is None:
            raise APIError(
                400,
                f"{self.model_name} has no chat template, so it cannot chat; send a prompt to "
                "/v1/completions instead",
                param="messages",
                code="no_chat_template",
            )
        try:
            return self.lm.encode_chat([m.as_template_message() for m in messages])
        except ScratchLMError as e:  # the template refused the conversation
            raise APIError(400, f"messages: {e}", param="messages") from None

    # ---- completions

    async def completions(self, request: Request) -> Response:
        req = await parse_body(request, api.CompletionRequest)
        self.check_model(req.model)
        n = self.check_n(req)
        echo = bool(req.echo)
        max_tokens = self.check_max_tokens(req.max_tokens, "max_tokens", echo)
        prompts = [self.encode_prompt(p, i) for i, p in enumerate(req.prompts())]
        for ids in prompts:
            self.check_fits(ids, "prompt", scoring_only=max_tokens == 0)
        scored: list[list[TokenLogprob | None]] = []
        if echo and req.logprobs is not None:
            scored = [await self.scheduler.prompt_logprobs(ids, req.logprobs) for ids in prompts]
        echoed = [
            self.echo_text(p, ids) if echo else ""
            for p, ids in zip(req.prompts(), prompts, strict=True)
        ]
        settings = self.row_settings(req, max(max_tokens, 1), req.logprobs or 0)
        run = self.start(prompts if max_tokens else [], n, settings, req.stop_strings())
        reply = Reply("cmpl", self.model_name)
        job = CompletionJob(prompts, n, echoed, scored, req.logprobs is not None, max_tokens)
        if req.stream:
            return EventStream(self.completion_events(run, request, reply, job, req), run)
        choices = await run.collect(request)
        if choices is None:
            return Response(status_code=499)
        if not max_tokens:  # echo alone: the prompts scored, nothing generated
            choices = [Choice(i, finish_reason="length") for i in range(len(prompts) * n)]
        return JSONResponse(
            api.reply_object(
                "text_completion",
                reply.id,
                reply.created,
                reply.model,
                [job.choice(self.tokens, c) for c in choices],
                api.usage(job.prompt_tokens, sum(len(c.tokens) for c in choices)),
            )
        )

    async def completion_events(
        self,
        run: Run,
        request: Request,
        reply: Reply,
        job: CompletionJob,
        req: api.CompletionRequest,
    ) -> AsyncIterator[str]:
        with_usage = req.include_usage

        def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
            reply_chunk = api.reply_object(
                "text_completion", reply.id, reply.created, reply.model, choices, usage, with_usage
            )
            return sse(reply_chunk)

        # Where each choice's text has got to, for text_offset.
        written = [0] * job.choices
        if job.echoed_any:
            for index in range(job.choices):
                p = index // job.n
                shown = job.logprobs_of(self.tokens, p, [], 0) if job.scored else None
                yield chunk([api.completion_choice(index, job.echoed[p], None, shown)])
                written[index] = len(job.echoed[p])
        completion_tokens = 0
        if not job.max_tokens:
            for index in range(job.choices):
                yield chunk([api.completion_choice(index, "", "length", None)])
        async for index, update in run.updates(request):
            completion_tokens += len(update.tokens)
            if update.text or update.tokens:
                shown = None
                if job.logprobs:
                    shown = self.tokens.completion_logprobs(update.tokens, [], written[index])
                written[index] += len(update.text)
                yield chunk([api.completion_choice(index, update.text, None, shown)])
            if update.finish_reason:
                yield chunk([api.completion_choice(index, "", update.finish_reason, None)])
        if run.client_gone:
            return
        if with_usage:
            yield chunk([], api.usage(job.prompt_tokens, completion_tokens))
        yield sse_done()

    def encode_prompt(self, prompt: api.Prompt, index: int) -> list[int]:
        where = "prompt" if index == 0 else f"prompt[{index}]"
        if isinstance(prompt, str):
            ids = self.lm.encode(prompt)
        else:
            vocab = self.lm.tokenizer.vocab
            if bad := [t for t in prompt if t not in vocab]:
                raise APIError(
                    400,
                    f"{where}: token id {bad[0]} is not in the model's vocabulary "
                    f"(ids 0 to {self.lm.tokenizer.vocab_size - 1})",
                    param="prompt",
                )
            ids = list(prompt)
        if not ids:
            raise APIError(400, f"{where} is empty; give some text or token ids", param="prompt")
        return ids

    def echo_text(self, prompt: api.Prompt, ids: list[int]) -> str:
        return prompt if isinstance(prompt, str) else self.lm.tokenizer.decode(ids)

    # ---- the tokenizer, for lm-eval's remote tokenizer

    async def tokenizer_info(self) -> dict[str, Any]:
        names = {i: s for s, i in self.lm.tokenizer.special_tokens.items()}
        roles = {role: names.get(i) for role, i in self.lm.token_roles.items()}
        eos = roles.get("eos") or ("<|endoftext|>" if "<|endoftext|>" in names.values() else None)
        return {
            "eos_token": eos,
            "bos_token": roles.get("bos"),
            "pad_token": roles.get("pad"),
            "chat_template": self.lm.chat_template,
            "model_max_length": self.lm.block_size,
        }

    async def tokenize(self, request: Request) -> dict[str, Any]:
        req = await parse_body(request, api.TokenizeRequest)
        # As Hugging Face tokenizers (and vLLM) do, special tokens' strings become their ids
        # here: lm-eval finds the end-of-text id by tokenising its string. Prompts sent as
        # text to /v1 are encoded as plain text; ids can be sent directly either way.
        ids = self.lm.tokenizer.encode(req.prompt, allowed_special="all")
        return {"tokens": ids, "count": len(ids), "max_model_len": self.lm.block_size}

    async def detokenize(self, request: Request) -> dict[str, Any]:
        req = await parse_body(request, api.DetokenizeRequest)
        try:
            return {"prompt": self.lm.tokenizer.decode(req.tokens)}
        except ScratchLMError as e:
            raise APIError(400, f"tokens: {e}", param="tokens") from None

    # ---- checks shared by the generation endpoints

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise APIError(
                404,
                f"the model {model!r} does not exist; this server serves {self.model_name!r}",
                param="model",
                code="model_not_found",
            )

    def check_n(self, req: api.SamplingRequest) -> int:
        n = req.choices_per_prompt
        if n > self.max_n:
            raise APIError(
                400,
                f"n is {n} but this server gives at most {self.max_n} choices a request "
                "(scratchlm serve --max-n)",
                param="n",
            )
        return n

    def check_max_tokens(self, limit: int | None, name: str, echo: bool) -> int:
        """The number of tokens to generate; 0 only with echo (score the prompt alone)."""
        block = self.lm.block_size
        if limit is None:
            return self.lm.defaults.max_new_tokens
        if limit < 0 or (limit == 0 and not echo):
            also = " (0 only with echo, to score a prompt)" if name == "max_tokens" else ""
            raise APIError(400, f"{name} must be >= 1{also}, got {limit}", param=name)
        if limit > block:
            raise APIError(
                400,
                f"{name} is {limit} but the model's context holds {block} tokens, prompt "
                f"included; ask for at most {block}",
                param=name,
            )
        return limit

    def check_fits(self, ids: list[int], param: str, scoring_only: bool = False) -> None:
        block = self.lm.block_size
        room = block if scoring_only else block - 1  # a reply needs at least one token
        if len(ids) > room:
            what = "your messages are" if param == "messages" else "the prompt is"
            left = (
                ""
                if scoring_only
                else f", with room for at least one new token ({room} for the prompt)"
            )
            raise APIError(
                400,
                f"this model's context holds {block} tokens{left}, but {what} {len(ids)} tokens; "
                f"shorten the {param}",
                param=param,
                code="context_length_exceeded",
            )

    def row_settings(
        self, req: api.SamplingRequest, max_tokens: int, top_logprobs: int
    ) -> RowSettings:
        defaults = self.lm.defaults

        def given(value: Any, default: Any) -> Any:
            return default if value is None else value

        settings = RowSettings(
            max_new_tokens=max_tokens,
            temperature=given(req.temperature, defaults.temperature),
            top_k=given(req.top_k, defaults.top_k),
            top_p=given(req.top_p, defaults.top_p),
            repetition_penalty=given(req.repetition_penalty, defaults.repetition_penalty),
            seed=req.seed,  # none given: a fresh one each time, as OpenAI
            top_logprobs=top_logprobs,
        )
        try:
            settings.check()
        except ScratchLMError as e:
            raise APIError(400, str(e)) from None
        return settings

    def start(
        self, prompts: list[list[int]], n: int, settings: RowSettings, stop: tuple[str, ...]
    ) -> Run:
        """Submit one job per prompt and choice; choice i*n + j is prompt i's j-th, with seed
        seed + j."""
        if self.stopping.is_set():
            raise server_stopping()
        streams: list[JobStream] = []
        try:
            for ids in prompts:
                for j in range(n):
                    seed = None if settings.seed is None else settings.seed + j
                    job = Job(ids, replace(settings, seed=seed), stop)
                    streams.append(self.scheduler.submit(job))
        except QueueFull:
            for stream in streams:
                stream.cancel()
            raise APIError(
                503,
                "the server is overloaded: its queue of requests is full; try again shortly",
                type="server_error",
                code="overloaded",
            ) from None
        except ScratchLMError as e:
            for stream in streams:
                stream.cancel()
            raise APIError(400, str(e)) from None
        return Run(streams, self.stopping)


# ---------------------------------------------------------------------------------- helpers


class Reply:
    """What every chunk of one reply repeats: its id, creation time and model."""

    def __init__(self, prefix: str, model: str) -> None:
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model


class CompletionJob:
    """What a /v1/completions reply needs besides the generated choices."""

    def __init__(
        self,
        prompts: list[list[int]],
        n: int,
        echoed: list[str],
        scored: list[list[TokenLogprob | None]],
        logprobs: bool,
        max_tokens: int,
    ) -> None:
        self.prompts, self.n, self.echoed, self.scored = prompts, n, echoed, scored
        self.logprobs, self.max_tokens = logprobs, max_tokens
        self.choices = len(prompts) * n
        self.echoed_any = any(echoed)
        # Counted once a prompt, as OpenAI does, however many choices it has.
        self.prompt_tokens = sum(len(ids) for ids in prompts)

    def logprobs_of(
        self, names: api.TokenStrings, p: int, tokens: Sequence[TokenLogprob], start: int
    ) -> dict[str, Any]:
        """Prompt p's echoed tokens (if scored) then `tokens`, text_offset from `start`."""
        prompt_part = self.scored[p] if self.scored else []
        return names.completion_logprobs([*prompt_part, *tokens], self.prompts[p], start)

    def choice(self, names: api.TokenStrings, c: Choice) -> dict[str, Any]:
        p = c.index // self.n
        shown = self.logprobs_of(names, p, c.tokens, 0) if self.logprobs else None
        return api.completion_choice(c.index, self.echoed[p] + c.text, c.finish_reason, shown)
