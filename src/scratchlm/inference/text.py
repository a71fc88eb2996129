"""Text out: the decoding engine with the tokenizer, each row's text streamed as it is final.

continue_ids is the one loop every text front end runs (generate_texts, LanguageModel): token
ids in (already encoded, special tokens where a chat template put them), and for each row a
Completion: its text (whole UTF-8 characters, cut before a stop string), the tokens sampled
and, when asked, their log-probabilities.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from scratchlm.core.messages import note
from scratchlm.inference.config import SampleConfig, Sampling
from scratchlm.inference.engine import BatchGenerator, NewToken, crop_prompt
from scratchlm.inference.stop_strings import StopStringMatcher, check_stop_strings
from scratchlm.model import GPT
from scratchlm.tokenizer import BPETokenizer


@dataclass
class Completion:
    """What one prompt was continued with.

    text: the new text, cut before the first stop string. tokens: every token sampled for it,
    the ones that spelled a stop string included (an end-of-text token is not). logprobs: one
    per token, log p(token) before temperature (engine.NewToken), or None when not asked.
    """

    text: str
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None


def continue_ids(
    model: GPT,
    tokenizer: BPETokenizer,
    prompts: Sequence[Sequence[int]],
    sampling: Sampling,
    stop: Sequence[str] = (),
    on_text: Callable[[int, str], None] | None = None,
    on_token: Callable[[NewToken], None] | None = None,
    stop_ids: Collection[int] | None = None,
    use_cache: bool = True,
    logprobs: bool = False,
) -> list[Completion]:
    """Continue every prompt (token ids), in one batch; returns each one's Completion.

    A row ends at one of `stop_ids` (default: every special token of the tokenizer), at
    max_new_tokens, or as soon as its text contains one of the `stop` strings. on_text(row,
    piece) gets each row's text as soon as it is final (whole UTF-8 characters, never a piece
    of a stop string); on_token(new) gets each token as it is sampled.
    """
    stop = check_stop_strings(stop)
    if stop_ids is None:
        stop_ids = set(tokenizer.special_tokens.values())
    for prompt_ids in prompts:
        kept, dropped = crop_prompt(list(prompt_ids), model.config.block_size)
        if dropped:
            note(
                f"the prompt is {len(prompt_ids)} tokens but the context holds "
                f"{model.config.block_size}; cropped it to its last {len(kept)} tokens"
            )
    engine = BatchGenerator(model, prompts, sampling, stop_ids, use_cache, logprobs)
    # A token may end in the middle of a multi-byte character; the incremental decoder holds
    # the partial bytes back until the character is complete.
    decoders = [codecs.getincrementaldecoder("utf-8")(errors="replace") for _ in prompts]
    matchers = [StopStringMatcher(stop) for _ in prompts]
    completions = [Completion("", [], [] if logprobs else None) for _ in prompts]
    pieces: list[list[str]] = [[] for _ in prompts]

    def emit(row: int, text: str) -> None:
        if text:
            pieces[row].append(text)
            if on_text is not None:
                on_text(row, text)

    for step in engine.steps():
        for new in step:
            row, done = new.row, completions[new.row]
            done.tokens.append(new.token)
            if done.logprobs is not None and new.logprob is not None:
                done.logprobs.append(new.logprob)
            if on_token is not None:
                on_token(new)
            emit(row, matchers[row].feed(decoders[row].decode(tokenizer.decode_bytes([new.token]))))
            if matchers[row].stopped:
                engine.finish(row)
    for row, (decoder, matcher) in enumerate(zip(decoders, matchers, strict=True)):
        emit(row, matcher.feed(decoder.decode(b"", final=True)))
        emit(row, matcher.flush())
        completions[row].text = "".join(pieces[row])
    return completions


def generate_texts(
    model: GPT,
    tokenizer: BPETokenizer,
    prompts: Sequence[str],
    config: SampleConfig,
    stop: Sequence[str] = (),
    on_text: Callable[[int, str], None] | None = None,
    use_cache: bool = True,
) -> list[str]:
    """Continue every text prompt, in one batch; returns each one's completion.

    Prompts are encoded as plain text: a "<|endoftext|>" typed by a user is just characters,
    never the control token. Row b samples with seed config.seed + b; see continue_ids.
    """
    stop = check_stop_strings(stop)  # before encoding anything
    ids = [tokenizer.encode(p, allowed_special="none") for p in prompts]
    done = continue_ids(
        model, tokenizer, ids, config.sampling(), stop, on_text=on_text, use_cache=use_cache
    )
    return [c.text for c in done]


def sample_text(
    model: GPT,
    tokenizer: BPETokenizer,
    prompt: str,
    config: SampleConfig,
    out: TextIO | None = None,
    use_cache: bool = True,
    stop: Sequence[str] = (),
) -> str:
    """Continue one `prompt`; write each piece to `out` as soon as it is final text."""

    def write(_: int, piece: str) -> None:
        if out is not None:
            out.write(piece)
            out.flush()

    return generate_texts(model, tokenizer, [prompt], config, stop, write, use_cache)[0]
