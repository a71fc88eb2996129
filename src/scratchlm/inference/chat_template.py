"""Chat templates: how a model's authors format a conversation, as a Jinja template.

A pretrained chat model (SmolLM2: ChatML) was fine-tuned on conversations laid out one way;
prompting it any other way costs quality. The template ships with the model (GGUF metadata,
or chat_template.jinja in a run directory) and is rendered in Jinja's sandbox.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from scratchlm.core.errors import ScratchLMError


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
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # The sandbox: a template comes from a downloaded file and must not reach Python objects.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message: str) -> None:
        raise ScratchLMError(f"the chat template refused the messages: {message}")

    env.globals["raise_exception"] = raise_exception
    for k, message in enumerate(messages):
        if not isinstance(message, Mapping) or not {"role", "content"} <= set(message):
            raise ScratchLMError(f"message {k} must have a role and a content, got {message!r}")
    try:
        return env.from_string(template).render(
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            **dict(special_tokens or {}),
        )
    except TemplateError as e:
        raise ScratchLMError(f"cannot render the chat template: {e}") from None
