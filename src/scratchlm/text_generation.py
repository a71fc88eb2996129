"""Text in, text out: tokenizer + model + sampler, streaming as tokens arrive."""

from __future__ import annotations

import codecs
import sys
from typing import TextIO

from scratchlm.config import SampleConfig
from scratchlm.generate import crop_prompt, generate_tokens
from scratchlm.model import GPT
from scratchlm.tokenizer import BPETokenizer


def sample_text(
    model: GPT,
    tokenizer: BPETokenizer,
    prompt: str,
    config: SampleConfig,
    out: TextIO | None = None,
    use_cache: bool = True,
) -> str:
    """Continue `prompt`; write each piece to `out` as soon as it is whole UTF-8 text.

    The prompt is encoded as plain text: a "<|endoftext|>" typed by a user is just characters,
    never the control token. Generation stops at the end-of-text token or max_new_tokens.
    """
    prompt_ids = tokenizer.encode(prompt, allowed_special="none")
    kept, dropped = crop_prompt(prompt_ids, model.config.block_size)
    if dropped:
        print(
            f"note: the prompt is {len(prompt_ids)} tokens but the context holds "
            f"{model.config.block_size}; cropped it to its last {len(kept)} tokens",
            file=sys.stderr,
        )
    stop_ids = [tokenizer.special_tokens[s] for s in tokenizer.special_tokens]
    # A token may end in the middle of a multi-byte character; the incremental decoder holds
    # the partial bytes back until the character is complete.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces = []
    for token in generate_tokens(
        model,
        prompt_ids,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_k=config.top_k,
        top_p=config.top_p,
        stop_ids=stop_ids,
        seed=config.seed,
        use_cache=use_cache,
    ):
        piece = decoder.decode(tokenizer.decode_bytes([token]))
        if piece:
            pieces.append(piece)
            if out is not None:
                out.write(piece)
                out.flush()
    tail = decoder.decode(b"", final=True)
    if tail:
        pieces.append(tail)
        if out is not None:
            out.write(tail)
            out.flush()
    return "".join(pieces)
