"""OpenAI's API shapes: the requests `scratchlm serve` accepts (pydantic models, checked field
by field) and the replies, stream chunks and errors it sends (plain dicts built here, so the
routes in app.py only decide what to say, never how OpenAI spells it).

Requests are validated strictly, as OpenAI does: "5" is not a number and 1.0 is not an
integer. Fields OpenAI has and we do not use (user, frequency_penalty, ...) are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from scratchlm.inference.continuous import TokenLogprob
from scratchlm.tokenizer import BPETokenizer

MAX_STOP_STRINGS = 4  # as OpenAI
MAX_CHAT_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default on /v1/completions
# OpenAI's stand-in for a log-probability of -inf (JSON has no infinity).
LOGPROB_FLOOR = -9999.0

ErrorType = Literal["invalid_request_error", "server_error"]


class APIError(Exception):
    """A request we answer with an error: its HTTP status and OpenAI's error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        type: ErrorType = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type,
            param,
            code,
        )

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# ---------------------------------------------------------------------------------- requests


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


class StreamOptions(_Request):
    include_usage: bool = False


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    # "developer" is OpenAI's newer name for "system".
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    @field_validator("content", mode="before")
    @classmethod
    def _string_or_parts(cls, value: Any) -> Any:
        if not isinstance(value, str | list):
            raise ValueError('must be a string or a list of {"type": "text", "text": ...} parts')
        return value

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)

    def as_template_message(self) -> dict[str, str]:
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": self.text()}


class SamplingRequest(_Request):
    """The fields both generation endpoints take. None: the run's [sample] default."""

    # OpenAI requires it; left out, the one model served answers (as vLLM and llama.cpp do),
    # so a quick curl needs no name.
    model: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)  # an extra (not OpenAI's)
    repetition_penalty: float | None = Field(None, gt=0)  # an extra (not OpenAI's)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_strings(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            value = [] if value is None else [value]
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise ValueError(f"must be a string or a list of up to {MAX_STOP_STRINGS} strings")
        if len(value) > MAX_STOP_STRINGS:
            raise ValueError(f"has {len(value)} strings; at most {MAX_STOP_STRINGS} are allowed")
        if any(s == "" for s in value):
            raise ValueError("contains an empty string, which would stop before the first token")
        return value

    def stop_strings(self) -> tuple[str, ...]:
        if isinstance(self.stop, str):
            return (self.stop,)
        return tuple(self.stop or ())

    @property
    def choices_per_prompt(self) -> int:
        return self.n or 1

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None  # OpenAI's newer name for max_tokens
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_CHAT_TOP_LOGPROBS)

    def requested_max_tokens(self) -> tuple[int | None, str]:
        """The limit asked for and the field that asked."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"


Prompt = str | list[int]


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = COMPLETIONS_DEFAULT_MAX_TOKENS
    echo: bool | None = False
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_shape(cls, value: Any) -> Any:
        # One clear line rather than pydantic's four (one per shape of the union).
        shapes = "a string, a list of strings, a list of token ids or a list of such lists"
        if isinstance(value, str):
            return value
        if not isinstance(value, list) or not value:
            raise ValueError(f"must be {shapes}" + (" (it is empty)" if value == [] else ""))
        if all(isinstance(p, str) for p in value):
            return value
        if all(_is_int(t) for t in value):
            return value
        if all(isinstance(p, list) and p and all(_is_int(t) for t in p) for p in value):
            return value
        raise ValueError(f"must be {shapes} (non-empty)")

    def prompts(self) -> list[Prompt]:
        """Each prompt on its own: a string or a list of token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(t, int) for t in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


def _is_int(value: Any) -> bool:
    return type(value) is int  # JSON's true is not a token id


def validation_message(error: ValidationError) -> tuple[str, str | None]:
    """pydantic's errors as one line naming the field (messages[1].role: ...), and the field."""
    # The deepest error is the most specific: for content = [{"type": "image_url"}], the one
    # inside the list of parts, not "content is not a string".
    first = max(error.errors(include_url=False), key=lambda e: len(e["loc"]))
    where = field_path([part for part in first["loc"] if not _union_tag(part)])
    kind, text = first["type"], first["msg"].removeprefix("Value error, ")
    if not where:
        return f"the request body must be a JSON object ({text})", None
    if kind == "missing":
        return f"{where} is required", where
    shown = first.get("input")
    got = "" if kind in ("value_error", "too_short") else f" (got {_short_repr(shown)})"
    return f"{where}: {text}{got}", where


def _union_tag(part: int | str) -> bool:
    """Whether a part of an error's location names a member of a union (pydantic's 'str',
    'list[TextPart]'), not a field."""
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool"))


def field_path(loc: Sequence[int | str]) -> str:
    """('messages', 1, 'role') -> 'messages[1].role'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------- replies


@dataclass
class Choice:
    """One generated continuation as it grows: its text, tokens and how it ended."""

    index: int
    text: str = ""
    tokens: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else LOGPROB_FLOOR


class TokenStrings:
    """How tokens are shown in logprobs: their text (bytes of a partial UTF-8 character
    replaced by U+FFFD, as OpenAI does) and their raw bytes."""

    def __init__(self, tokenizer: BPETokenizer) -> None:
        self.tokenizer = tokenizer

    def raw(self, token: int) -> bytes:
        return self.tokenizer.decode_bytes([token])

    def text(self, token: int) -> str:
        return self.raw(token).decode("utf-8", errors="replace")

    def chat_entry(self, token: int, logprob: float) -> dict[str, Any]:
        return {
            "token": self.text(token),
            "logprob": finite(logprob),
            "bytes": list(self.raw(token)),
        }

    def chat_logprobs(self, tokens: Sequence[TokenLogprob]) -> dict[str, Any]:
        """Chat's shape: {"content": [{token, logprob, bytes, top_logprobs: [...]}]}."""
        return {
            "content": [
                {
                    **self.chat_entry(t.token, t.logprob),
                    "top_logprobs": [self.chat_entry(i, lp) for i, lp in t.top],
                }
                for t in tokens
            ]
        }

    def completion_logprobs(
        self, tokens: Sequence[TokenLogprob | None], prompt: Sequence[int], text_start: int
    ) -> dict[str, Any]:
        """/v1/completions' shape: parallel lists, one entry a token. `tokens` holds None for
        the first echoed prompt token (nothing predicts it); its id comes from `prompt`.
        text_offset counts characters from the start of the choice's text at text_start."""
        strings: list[str] = []
        token_logprobs: list[float | None] = []
        top_logprobs: list[dict[str, float] | None] = []
        offsets: list[int] = []
        offset = text_start
        for i, t in enumerate(tokens):
            token = prompt[i] if t is None else t.token
            strings.append(self.text(token))
            offsets.append(offset)
            offset += len(strings[-1])
            if t is None:
                token_logprobs.append(None)
                top_logprobs.append(None)
                continue
            token_logprobs.append(finite(t.logprob))
            top: dict[str, float] = {}
            for alternative, lp in t.top:  # best first: two tokens spelled alike keep the best
                top.setdefault(self.text(alternative), finite(lp))
            top_logprobs.append(top)
        return {
            "tokens": strings,
            "token_logprobs": token_logprobs,
            "top_logprobs": top_logprobs,
            "text_offset": offsets,
        }


def chat_choice(
    index: int, text: str, finish_reason: str | None, logprobs: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "index": index,
        "message": {"role": "assistant", "content": text},
        "logprobs": logprobs,
        "finish_reason": finish_reason,
    }


def chat_delta(
    index: int,
    delta: dict[str, str],
    finish_reason: str | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}


ReplyKind = Literal["chat.completion", "chat.completion.chunk", "text_completion"]


def reply_object(
    kind: ReplyKind,
    id: str,
    created: int,
    model: str,
    choices: Sequence[dict[str, Any]],
    usage: dict[str, int] | None = None,
    with_usage: bool = True,
) -> dict[str, Any]:
    """OpenAI's envelope of a reply or of one stream chunk (the completions API calls its
    chunks "text_completion" too). with_usage: a usage field, which in a stream with
    stream_options.include_usage is null but on the last chunk (whose choices are empty)."""
    reply: dict[str, Any] = {
        "id": id,
        "object": kind,
        "created": created,
        "model": model,
        "choices": list(choices),
    }
    if with_usage:
        reply["usage"] = usage
    return reply


def completion_choice(
    index: int, text: str, finish_reason: str | None, logprobs: dict[str, Any] | None
) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def model_card(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "scratchlm"}


# ------------------------------------------------- the tokenizer endpoints (vLLM's shapes)


class TokenizeRequest(_Request):
    prompt: str
    add_special_tokens: bool = True  # our tokenizers add none either way


class DetokenizeRequest(_Request):
    tokens: list[int]
