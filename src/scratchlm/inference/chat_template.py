"""Chat templates: how a model's authors format a conversation, as a Jinja template.

A pretrained chat model (SmolLM2: ChatML) was fine-tuned on conversations laid out one way;
prompting it any other way costs quality. The template ships with the model (GGUF metadata,
or chat_template.jinja in a run directory) and is rendered in Jinja's sandbox. Its special
tokens (<|im_start|>, <|im_end|>) must reach the model as control tokens, while the same
strings typed inside a message must not: encode_chat keeps the two apart.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from scratchlm.core.errors import ScratchLMError
from scratchlm.tokenizer import BPETokenizer

if TYPE_CHECKING:
    import jinja2


def render_chat(
    template: str,
    messages: Sequence[Mapping[str, str]],
    add_generation_prompt: bool = True,
    special_tokens: Mapping[str, str] | None = None,
) -> str:
    """Render `messages` ([{"role": ..., "content": ...}, ...]) with a Jinja chat template.

    This is how the model's authors format a conversation (SmolLM2: ChatML, with a default
    system prompt when the first message is not a system message). `add_generation_prompt`
    ends the text with the opening of an assistant turn, so the model writes the reply.
    `special_tokens` supplies names such as bos_token that some templates use.
    """
    from jinja2 import TemplateError

    compiled = compiled_chat_template(template)
    for k, message in enumerate(messages):
        if not isinstance(message, Mapping) or not {"role", "content"} <= set(message):
            raise ScratchLMError(f"message {k} must have a role and a content, got {message!r}")
    try:
        return compiled.render(
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            **dict(special_tokens or {}),
        )
    except TemplateError as e:
        raise ScratchLMError(f"cannot render the chat template: {e}") from None


@functools.lru_cache(maxsize=16)
def compiled_chat_template(template: str) -> jinja2.Template:
    """The template compiled once: a chat renders it every turn, and fine-tuning's loss mask
    once per turn of every conversation (compiling costs 30 times a render)."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # The sandbox: a template comes from a downloaded file and must not reach Python objects.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message: str) -> None:
        raise ScratchLMError(f"the chat template refused the messages: {message}")

    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template)
    except TemplateError as e:
        raise ScratchLMError(f"cannot read the chat template: {e}") from None


def encode_chat(
    template: str,
    messages: Sequence[Mapping[str, str]],
    tokenizer: BPETokenizer,
    add_generation_prompt: bool = True,
    special_tokens: Mapping[str, str] | None = None,
) -> list[int]:
    """Token ids of `messages` rendered with `template`, where only the template's own text
    can become special tokens: a message whose content spells "<|im_end|>" gets the ordinary
    tokens of those characters, never the control token, so it cannot end its turn early.

    The template is rendered a second time with each content replaced by a placeholder; the
    text between placeholders is the template's (encoded with special tokens allowed) and each
    content goes in where its placeholder was (encoded as plain text). A template that changes
    the contents it prints (trims them, say) cannot be split that way; then the whole text is
    encoded with special tokens allowed, after checking that no content spells one.
    """
    rendered = render_chat(template, messages, add_generation_prompt, special_tokens)
    contents = [m["content"] for m in messages]
    marker = "\ue000"  # a private-use character, made longer until no content holds it
    while any(marker in c for c in contents):
        marker += "\ue000"
    placeholders = [f"{marker}{k}{marker}" for k in range(len(messages))]
    masked = [{**m, "content": p} for m, p in zip(messages, placeholders, strict=True)]
    skeleton = render_chat(template, masked, add_generation_prompt, special_tokens)
    content_of = dict(zip(placeholders, contents, strict=True))
    # [template text, placeholder, template text, ..., template text]
    pieces = re.split(f"({marker}\\d+{marker})", skeleton)
    texts = [content_of.get(piece, piece) if k % 2 else piece for k, piece in enumerate(pieces)]
    if "".join(texts) == rendered:
        ids: list[int] = []
        for k, text in enumerate(texts):
            ids.extend(tokenizer.encode(text, allowed_special="none" if k % 2 else "all"))
        return ids
    for k, content in enumerate(contents):
        for token in tokenizer.special_tokens:
            if token in content:
                raise ScratchLMError(
                    f"message {k} contains the special token {token!r}, and this chat "
                    "template changes message contents, so it cannot be kept as plain text; "
                    "remove it from the message"
                )
    return tokenizer.encode(rendered, allowed_special="all")
