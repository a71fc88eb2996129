"""Text in, text out: tokenizer + decoding engine, streaming each row's text as it arrives."""

from __future__ import annotations

import codecs
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from scratchlm.inference.config import SampleConfig
from scratchlm.inference.engine import BatchGenerator, crop_prompt
from scratchlm.inference.stop_strings import StopStringMatcher, check_stop_strings
from scratchlm.model import GPT
from scratchlm.tokenizer import BPETokenizer


def generate_texts(
    model: GPT,
    tokenizer: BPETokenizer,
    prompts: Sequence[str],
    config: SampleConfig,
    stop: Sequence[str] = (),
    on_text: Callable[[int, str], None] | None = None,
    use_cache: bool = True,
) -> list[str]:
    """Continue every prompt, in one batch; returns each one's completion.

    Prompts are encoded as plain text: a "<|endoftext|>" typed by a user is just characters,
    never the control token. A row ends at an end-of-text token, at max_new_tokens, or as soon
    as its text contains one of the `stop` strings (left out of the completion). on_text(row,
    piece) is called with each row's text as soon as it is final (whole UTF-8 characters, and
    never a piece of a stop string). Row b samples with seed config.seed + b.
    """
    stop = check_stop_strings(stop)
    ids = [tokenizer.encode(p, allowed_special="none") for p in prompts]
    for prompt_ids in ids:
        kept, dropped = crop_prompt(prompt_ids, model.config.block_size)
        if dropped:
            print(
                f"note: the prompt is {len(prompt_ids)} tokens but the context holds "
                f"{model.config.block_size}; cropped it to its last {len(kept)} tokens",
                file=sys.stderr,
            )
    engine = BatchGenerator(
        model,
        ids,
        config.max_new_tokens,
        temperature=config.temperature,
        top_k=config.top_k,
        top_p=config.top_p,
        repetition_penalty=config.repetition_penalty,
        stop_ids=set(tokenizer.special_tokens.values()),
        seed=config.seed,
        use_cache=use_cache,
    )
    # A token may end in the middle of a multi-byte character; the incremental decoder holds
    # the partial bytes back until the character is complete.
    decoders = [codecs.getincrementaldecoder("utf-8")(errors="replace") for _ in prompts]
    matchers = [StopStringMatcher(stop) for _ in prompts]
    pieces: list[list[str]] = [[] for _ in prompts]

    def emit(row: int, text: str) -> None:
        if text:
            pieces[row].append(text)
            if on_text is not None:
                on_text(row, text)

    for step in engine.steps():
        for row, token in step:
            emit(row, matchers[row].feed(decoders[row].decode(tokenizer.decode_bytes([token]))))
            if matchers[row].stopped:
                engine.finish(row)
    for row, (decoder, matcher) in enumerate(zip(decoders, matchers, strict=True)):
        emit(row, matcher.feed(decoder.decode(b"", final=True)))
        emit(row, matcher.flush())
    return ["".join(p) for p in pieces]


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
