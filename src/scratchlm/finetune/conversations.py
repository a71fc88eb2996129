"""Conversations into training examples: token ids and a loss mask, through a chat template.

Supervised fine-tuning (SFT) teaches a model to answer, so the loss counts the assistant's
replies only, each with the end-of-turn token that closes it (that token is how a reply learns
to stop); the system and user turns and the template's role headers are context the model reads
but is not asked to predict. `train_on_all=True` counts every token instead.

Our own models speak ChatML, with <|im_start|> and <|im_end|> as special tokens of the
tokenizer (a tokenizer trained without them cannot hold a turn, and chatml_format says so):

    <|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello!<|im_end|>\\n
                                                             ^^^^^^^^^^^^^^^^ trained

An imported model keeps its own template (chat_template.jinja). Either way the reply is found
without knowing the template's layout: the conversation rendered up to an assistant turn with
the generation prompt, and rendered through that turn, bracket the reply (the text between the
two renders), and the mask ends at the first special token after the reply's text (the
end-of-turn token; the newline after <|im_end|> belongs to no one and stays untrained). The
text is tokenised in pieces cut at those brackets and at every message's content, so no token
straddles a boundary, and contents are encoded as plain text: a user typing "<|im_end|>" gets
the ordinary tokens of those characters, never the control token (as inference's encode_chat).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from scratchlm.core.errors import ScratchLMError
from scratchlm.core.messages import progress
from scratchlm.inference.chat_template import compiled_chat_template, render_chat
from scratchlm.tokenizer import BPETokenizer

if TYPE_CHECKING:
    from scratchlm.inference.language_model import LanguageModel

ROLES = ("system", "user", "assistant")
Message = dict[str, str]

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# ChatML as SmolLM2 and Qwen write it, without a default system prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# What a run fine-tuned on ChatML writes to token_roles.json, so generation ends at a turn's end.
CHATML_TOKEN_ROLES = {"eos": IM_END}


def check_messages(messages: object) -> list[Message]:
    """The conversation as [{"role", "content"}, ...] (other keys dropped), in the OpenAI/HF
    convention: an optional system message, then user and assistant turns alternating, ending
    with the assistant's reply. Anything else raises ScratchLMError naming the first problem
    (the caller adds where: file and line)."""
    if not isinstance(messages, list) or not messages:
        raise ScratchLMError(
            '"messages" must be a non-empty list of {"role": ..., "content": ...} objects'
        )
    checked: list[Message] = []
    first = 1 if isinstance(messages[0], dict) and messages[0].get("role") == "system" else 0
    for k, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ScratchLMError(f"message {k} is not an object with a role and a content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ScratchLMError(
                f"message {k} has the unknown role {role!r}; roles are system, user, assistant"
            )
        if not isinstance(content, str):
            raise ScratchLMError(f"message {k} ({role}) has no text content")
        if not content.strip():
            raise ScratchLMError(f"message {k} ({role}) has empty content")
        expected = "user" if (k - first) % 2 == 0 else "assistant"
        if role == "system" and k > 0:
            raise ScratchLMError(
                f"roles out of order: message {k} is a system message; only the first may be"
            )
        if k >= first and role != expected:
            raise ScratchLMError(
                f"roles out of order: message {k} is {role} where {expected} was expected "
                "(an optional system message, then user and assistant alternating)"
            )
        checked.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in checked):
        raise ScratchLMError("no assistant turn: there is no reply to learn from")
    if checked[-1]["role"] != "assistant":
        raise ScratchLMError(
            f"the last message ({len(checked) - 1}) is a user turn; a conversation must end "
            "with the assistant's reply"
        )
    return checked


@dataclass(frozen=True)
class ChatExample:
    """One conversation as the model sees it: token ids, and mask[i] True where token i is a
    loss target (the assistant's reply tokens and their end-of-turn tokens)."""

    ids: list[int]
    mask: list[bool]
    exchange_starts: tuple[int, ...] = ()  # where each user turn's text begins (token index)
    truncated: bool = False  # cut at the length limit, so a reply may have lost its end

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def trained_tokens(self) -> int:
        """How many next-token targets count (token 0 is never predicted)."""
        return sum(self.mask[1:])

    def inputs_and_targets(self) -> tuple[list[int], list[int]]:
        """Next-token pairs: inputs ids[:-1], targets ids[1:], -1 where the mask is off (the
        ignore index of GPT.forward's cross-entropy)."""
        targets = [t if m else -1 for t, m in zip(self.ids[1:], self.mask[1:], strict=True)]
        return self.ids[:-1], targets

    def first(self, n: int) -> ChatExample:
        """The first n tokens: for a template that writes turn after turn, the first n tokens
        up to a user turn's start are the render of the turns before it."""
        starts = tuple(s for s in self.exchange_starts if s < n)
        return replace(self, ids=self.ids[:n], mask=self.mask[:n], exchange_starts=starts)

    def cropped(self, max_tokens: int) -> ChatExample:
        """The first max_tokens tokens; truncated if a trained token was cut off."""
        truncated = self.truncated or any(self.mask[max_tokens:])
        return replace(self.first(max_tokens), truncated=truncated)

    def without_untrained_tail(self) -> ChatExample:
        """Without the tokens after the last trained one (ChatML's final newline): they are
        targets of nothing, so they only take room."""
        last = max((i for i, m in enumerate(self.mask) if m), default=len(self.ids) - 1)
        return self.first(last + 1)


@dataclass
class FitReport:
    """What fitting conversations into a length limit did (ChatFormat.render_all)."""

    conversations: int = 0
    examples: int = 0
    split: int = 0  # conversations too long for one example, cut into several at user turns
    truncated: int = 0  # examples whose single exchange was still too long, cut at the limit
    dropped: int = 0  # conversations left with no reply token inside the limit
    tokens: int = 0
    trained_tokens: int = 0

    def describe(self) -> str:
        return (
            f"{self.conversations:,} conversations -> {self.examples:,} examples, "
            f"{self.tokens:,} tokens ({self.trained_tokens:,} trained); "
            f"{self.split:,} split at user turns, {self.truncated:,} truncated, "
            f"{self.dropped:,} dropped"
        )


@dataclass
class ChatFormat:
    """A chat template bound to a tokenizer: conversations in, ChatExamples out.

    template: Jinja source (CHATML_TEMPLATE for our own models, the model's own for imported
    ones). template_variables: names some templates use, such as bos_token.
    """

    tokenizer: BPETokenizer
    template: str = CHATML_TEMPLATE
    template_variables: Mapping[str, str] = field(default_factory=dict)
    train_on_all: bool = False

    def __post_init__(self) -> None:
        compiled_chat_template(self.template)  # a template that does not parse fails here
        self._special_ids = frozenset(self.tokenizer.special_tokens.values())

    def _render(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool) -> str:
        return render_chat(self.template, messages, add_generation_prompt, self.template_variables)

    def render(self, messages: Sequence[Mapping[str, str]]) -> ChatExample:
        """Token ids and loss mask of one conversation (checked with check_messages)."""
        msgs = check_messages([dict(m) for m in messages])
        full = self._render(msgs, add_generation_prompt=False)
        # Each assistant reply as (message index, first char, end char) in `full`, and where
        # each user turn's text begins.
        replies: list[tuple[int, int, int]] = []
        exchange_chars: list[int] = []
        rendered_through: dict[int, int] = {}  # k -> len(render(msgs[:k]))
        for k, message in enumerate(msgs):
            if message["role"] == "user":
                exchange_chars.append(self._prefix_length(msgs, k, False, full, rendered_through))
            elif message["role"] == "assistant":
                start = self._prefix_length(msgs, k, True, full, {})
                end = self._prefix_length(msgs, k + 1, False, full, rendered_through)
                if start > end:
                    raise ScratchLMError(
                        f"the chat template's generation prompt for message {k} is longer than "
                        "the assistant turn it renders; cannot find the reply's tokens"
                    )
                replies.append((k, start, end))
        contents = self._content_spans(msgs, full)
        cuts = {0, len(full), *exchange_chars}
        cuts.update(edge for _, start, end in replies for edge in (start, end))
        cuts.update(edge for _, start, end in contents for edge in (start, end))
        ids, token_at, from_template = self._encode_pieces(full, sorted(cuts), contents)

        mask = [self.train_on_all] * len(ids)
        for k, start, end in replies:
            first, last = token_at[start], token_at[end]
            # The reply's text ends at its content's end, where the template's closing text
            # begins; the template's first special token from there is the end of the turn.
            reply_end = max(
                (e for m, s, e in contents if m == k and start <= s < e <= end), default=start
            )
            stop = next(
                (
                    i
                    for i in range(token_at[reply_end], last)
                    if from_template[i] and ids[i] in self._special_ids
                ),
                last - 1,  # no special token: the template's whole closing text is the reply's
            )
            for i in range(first, stop + 1):
                mask[i] = True
        starts = tuple(token_at[c] for c in exchange_chars)
        return ChatExample(ids, mask, starts)

    def fit(self, messages: Sequence[Mapping[str, str]], max_tokens: int) -> list[ChatExample]:
        """The conversation as examples of at most max_tokens tokens each: whole if it fits,
        else cut at user turns into consecutive windows (each with the system message, if
        any), and an exchange longer than the limit on its own cut at the limit. Pieces left
        with no trained token are dropped, and each piece ends at its last trained token.

        A batch row of block_size next-token pairs holds an example of block_size + 1 tokens,
        so pass max_tokens = block_size + 1. Finding the replies renders a conversation once
        per turn, so a long one is never rendered whole: each window is rendered a little
        longer than the limit (guessing 4 characters a token) and cut at its last user turn
        that fits, which is the window's render for a template that writes turn after turn.
        """
        if max_tokens < 2:
            raise ScratchLMError(f"max_tokens must be at least 2, got {max_tokens}")
        msgs = check_messages([dict(m) for m in messages])
        head = msgs[:1] if msgs[0]["role"] == "system" else []
        exchanges = [msgs[i : i + 2] for i in range(len(head), len(msgs), 2)]
        guess = [sum(len(m["content"]) // 4 + 4 for m in pair) for pair in exchanges]
        head_guess = sum(len(m["content"]) // 4 + 4 for m in head)
        pieces: list[ChatExample] = []
        j = 0
        while j < len(exchanges):
            end, total = j, head_guess
            while end < len(exchanges) and total <= max_tokens:
                total += guess[end]
                end += 1
            while True:
                window = self.render(head + [m for pair in exchanges[j:end] for m in pair])
                # bounds[m]: where the window's first m + 1 exchanges end
                bounds = [*window.exchange_starts[1:], len(window)]
                fits = [
                    m
                    for m in range(len(bounds))
                    if len(window.first(bounds[m]).without_untrained_tail()) <= max_tokens
                ]
                if len(fits) < len(bounds) or end == len(exchanges):
                    break
                end = min(len(exchanges), end + max(1, end - j))  # guessed short: look further
            if fits:
                piece = window.first(bounds[fits[-1]]).without_untrained_tail()
                j += fits[-1] + 1
            else:
                piece = window.first(bounds[0]).without_untrained_tail().cropped(max_tokens)
                j += 1
            if piece.trained_tokens:
                pieces.append(piece)
        return pieces

    def render_all(
        self, conversations: Sequence[Sequence[Mapping[str, str]]], max_tokens: int
    ) -> tuple[list[ChatExample], FitReport]:
        """fit() for every conversation, with a progress bar and a count of what was done."""
        examples: list[ChatExample] = []
        report = FitReport(conversations=len(conversations))
        with progress(total=len(conversations), desc="rendering chats", unit="chat") as bar:
            for k, messages in enumerate(conversations):
                try:
                    pieces = self.fit(messages, max_tokens)
                except ScratchLMError as e:
                    raise ScratchLMError(f"conversation {k}: {e}") from None
                report.split += len(pieces) > 1
                report.dropped += not pieces
                for piece in pieces:
                    report.truncated += piece.truncated
                    report.tokens += len(piece)
                    report.trained_tokens += piece.trained_tokens
                examples.extend(pieces)
                bar.update()
        report.examples = len(examples)
        return examples, report

    def _prefix_length(
        self,
        msgs: list[Message],
        k: int,
        add_generation_prompt: bool,
        full: str,
        known: dict[int, int],
    ) -> int:
        """len(render(msgs[:k])), checked to be the start of the whole render: a template
        that lays out earlier turns differently once later ones exist gives no stable span."""
        if k in known:
            return known[k]
        text = self._render(msgs[:k], add_generation_prompt) if k else ""
        if not full.startswith(text):
            prompt = " and the generation prompt" if add_generation_prompt else ""
            raise ScratchLMError(
                f"the chat template renders the first {k} messages{prompt} differently from "
                "the start of the whole conversation, so the replies' tokens cannot be found; "
                "SFT needs a template that writes a conversation turn after turn"
            )
        known[k] = len(text)
        return len(text)

    def _content_spans(self, msgs: list[Message], full: str) -> list[tuple[int, int, int]]:
        """(message index, start, end) of each content in `full`, found by rendering with a
        placeholder for each content. [] when the template changes contents (trims them, say):
        then no content may spell a special token, since it could not be kept plain."""
        marker = "\ue000"  # a private-use character, longer until no content holds it
        while any(marker in m["content"] for m in msgs):
            marker += "\ue000"
        placeholders = [{**m, "content": f"{marker}{k}{marker}"} for k, m in enumerate(msgs)]
        skeleton = self._render(placeholders, add_generation_prompt=False)
        pieces = re.split(f"{marker}(\\d+){marker}", skeleton)
        spans, text, offset = [], [], 0
        for i, piece in enumerate(pieces):
            if i % 2:
                k = int(piece)
                content = msgs[k]["content"]
                spans.append((k, offset, offset + len(content)))
                piece = content
            text.append(piece)
            offset += len(piece)
        if "".join(text) == full:
            return spans
        for k, m in enumerate(msgs):
            for token in self.tokenizer.special_tokens:
                if token in m["content"]:
                    raise ScratchLMError(
                        f"message {k} contains the special token {token!r}, and this chat "
                        "template changes message contents, so it cannot be kept as plain "
                        "text; remove it from the message"
                    )
        return []

    def _encode_pieces(
        self, full: str, cuts: list[int], contents: list[tuple[int, int, int]]
    ) -> tuple[list[int], dict[int, int], list[bool]]:
        """Encode `full` piece by piece between consecutive cuts: contents as plain text, the
        template's text with its special tokens. Returns the ids, the token index at which
        each cut begins, and for each token whether the template wrote it."""
        content_starts = {start: end for _, start, end in contents}
        ids: list[int] = []
        from_template: list[bool] = []
        token_at: dict[int, int] = {}
        content_end = -1
        for start, end in itertools.pairwise(cuts):
            token_at[start] = len(ids)
            content_end = max(content_end, content_starts.get(start, -1))
            is_content = start < content_end
            piece = self.tokenizer.encode(
                full[start:end], allowed_special="none" if is_content else "all"
            )
            ids.extend(piece)
            from_template.extend([not is_content] * len(piece))
        token_at[cuts[-1]] = len(ids)
        return ids, token_at, from_template


def chatml_format(tokenizer: BPETokenizer, train_on_all: bool = False) -> ChatFormat:
    """ChatML for one of our own models; its tokenizer must hold <|im_start|> and <|im_end|>."""
    missing = [t for t in (IM_START, IM_END) if t not in tokenizer.special_tokens]
    if missing:
        raise ScratchLMError(
            f"the tokenizer has no special token {' or '.join(missing)}, which the ChatML chat "
            "format needs to mark turns; train the tokenizer with them: tokenizer.special_tokens "
            '= ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] (then pretrain on it)'
        )
    return ChatFormat(tokenizer, CHATML_TEMPLATE, {}, train_on_all)


def chat_format_for(
    tokenizer: BPETokenizer,
    chat_template: str | None,
    token_roles: Mapping[str, int] | None = None,
    train_on_all: bool = False,
) -> ChatFormat:
    """The model's own chat template when it has one (an imported chat model), else ChatML.
    token_roles (bos/eos/pad -> id) give the template its bos_token, eos_token, ... names."""
    if chat_template is None:
        return chatml_format(tokenizer, train_on_all)
    names = {i: name for name, i in tokenizer.special_tokens.items()}
    variables = {f"{role}_token": names[i] for role, i in (token_roles or {}).items() if i in names}
    return ChatFormat(tokenizer, chat_template, variables, train_on_all)


def chat_format_of(model: LanguageModel, train_on_all: bool = False) -> ChatFormat:
    """chat_format_for a loaded model (load_for_inference): its tokenizer, template, roles."""
    return chat_format_for(model.tokenizer, model.chat_template, model.token_roles, train_on_all)


def describe_mask(tokenizer: BPETokenizer, example: ChatExample) -> str:
    """The example's text with trained tokens in [brackets]: for eyes, in docs and errors."""
    out: list[str] = []
    for token, trained in zip(example.ids, example.mask, strict=True):
        text = tokenizer.decode([token])
        out.append(f"[{text}]" if trained else text)
    return "".join(out)
