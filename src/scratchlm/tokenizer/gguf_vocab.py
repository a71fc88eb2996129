"""A tokenizer as GGUF stores it: byte-level BPE in llama.cpp's metadata keys, read and written.

GGUF (llama.cpp's model file) keeps the tokenizer as metadata: every token spelled in GPT-2's
byte-to-unicode alphabet (tokenizer.ggml.model "gpt2"), the merges as "first second" strings,
a type per token (1 normal, 3 control = our special tokens) and a pre-tokenizer name that
stands for the split regex (see _PRE_TOKENIZERS). scratchlm.runs.gguf_file reads and
writes the rest of the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scratchlm.core.errors import ScratchLMError
from scratchlm.tokenizer.bpe import BPETokenizer
from scratchlm.tokenizer.char import CHAR_SPLIT_PATTERN
from scratchlm.tokenizer.gpt2_format import (
    BYTE_TO_CHAR,
    byte_level_merges,
    from_byte_level,
    from_byte_level_bpe,
    to_byte_level,
)
from scratchlm.tokenizer.patterns import (
    CL100K_SPLIT_PATTERN,
    GPT2_SPLIT_PATTERN,
    GPT4_SPLIT_PATTERN,
    O200K_SPLIT_PATTERN,
    R50K_SPLIT_PATTERN,
)

# Not a llama.cpp key (it ignores keys it does not know): our exact split regex.
PATTERN_KEY = "tokenizer.scratchlm.pattern"

# llama.cpp's pre-tokenizer names -> our split regex. "smollm" (StarCoder's family) first cuts
# every digit out on its own, then applies GPT-2's regex to each piece between digits. As one
# regex: GPT-2's without its number branch, a single digit as a chunk, and whitespace allowed to
# end right before a digit (within a piece, the end of the piece satisfied GPT-2's (?!\S)).
SMOLLM_SPLIT_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s"""
)
_PRE_TOKENIZERS: dict[str, str] = {
    "smollm": SMOLLM_SPLIT_PATTERN,
    "starcoder": SMOLLM_SPLIT_PATTERN,
    "refact": SMOLLM_SPLIT_PATTERN,
    "gpt-2": R50K_SPLIT_PATTERN,
    "gpt2": R50K_SPLIT_PATTERN,  # what scratchlm wrote before it knew llama.cpp's spelling
    "default": R50K_SPLIT_PATTERN,
    "llama-bpe": CL100K_SPLIT_PATTERN,
    "gpt-4o": O200K_SPLIT_PATTERN,
}
# On export, the name llama.cpp knows for each of our patterns: each splits text exactly as
# llama.cpp's regex of that name does (GPT-2's and r50k's, GPT-4's and cl100k's are the same
# splits; tests/test_llama_cpp.py checks tokenization against llama.cpp itself). A character
# tokenizer has no merges across characters, so any split that keeps characters whole gives
# the same tokens: GPT-2's does, and the exact pattern travels in PATTERN_KEY.
_PRE_TOKENIZER_NAMES: dict[str, str] = {
    SMOLLM_SPLIT_PATTERN: "smollm",
    GPT2_SPLIT_PATTERN: "gpt-2",
    R50K_SPLIT_PATTERN: "gpt-2",
    CL100K_SPLIT_PATTERN: "llama-bpe",
    GPT4_SPLIT_PATTERN: "llama-bpe",
    O200K_SPLIT_PATTERN: "gpt-4o",
    CHAR_SPLIT_PATTERN: "gpt-2",
}

# llama.cpp's token types (llama_token_type).
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_UNUSED = 1, 3, 5
_TOKEN_TYPE_NAMES = {0: "undefined", 2: "unknown", 4: "user-defined", 6: "byte"}


def tokenizer_from_metadata(metadata: Mapping[str, Any]) -> BPETokenizer:
    """Our BPETokenizer from GGUF tokenizer metadata (byte-level BPE only)."""
    model = metadata.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ScratchLMError(
            f'tokenizer.ggml.model is {model!r}; only byte-level BPE ("gpt2") can be imported'
        )
    pre = metadata.get("tokenizer.ggml.pre", "default")
    if pre not in _PRE_TOKENIZERS:
        raise ScratchLMError(
            f"tokenizer.ggml.pre is {pre!r}, a pre-tokenizer scratchlm has no split regex for; "
            f"supported: {', '.join(sorted(_PRE_TOKENIZERS))}"
        )
    tokens = metadata.get("tokenizer.ggml.tokens")
    merges = metadata.get("tokenizer.ggml.merges")
    if not isinstance(tokens, list) or not isinstance(merges, list):
        raise ScratchLMError("tokenizer.ggml.tokens or tokenizer.ggml.merges is missing")
    types = metadata.get("tokenizer.ggml.token_type") or [TOKEN_NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise ScratchLMError(
            f"tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens"
        )
    vocab: dict[str, int] = {}
    specials: dict[str, int] = {}
    for token_id, (token, kind) in enumerate(zip(tokens, types, strict=True)):
        if kind == TOKEN_UNUSED:
            continue  # a placeholder that pads the vocabulary; its id stays a gap
        if kind not in (TOKEN_NORMAL, TOKEN_CONTROL):
            raise ScratchLMError(
                f"token {token_id} ({token!r}) has type {_TOKEN_TYPE_NAMES.get(kind, kind)}; "
                "only normal and control tokens are supported"
            )
        if kind == TOKEN_CONTROL:
            specials[token] = token_id
        if token in vocab:
            raise ScratchLMError(f"token {token!r} appears twice ({vocab[token]} and {token_id})")
        vocab[token] = token_id
    _add_missing_bytes(vocab, len(tokens))
    pairs: list[tuple[str, str]] = []
    for k, merge in enumerate(merges):
        parts = merge.split(" ") if isinstance(merge, str) else []
        if len(parts) != 2:
            raise ScratchLMError(f"tokenizer.ggml.merges entry {k} is {merge!r}, not 'a b'")
        pairs.append((parts[0], parts[1]))
    # Our own export also records the exact regex: several of ours share one llama.cpp name.
    pattern = metadata.get(PATTERN_KEY)
    if not (isinstance(pattern, str) and _PRE_TOKENIZER_NAMES.get(pattern) == pre):
        pattern = _PRE_TOKENIZERS[pre]
    return from_byte_level_bpe(
        vocab,
        pairs,
        pattern,
        specials,
        vocab_name="tokenizer.ggml.tokens",
        merge_name=lambda k: f"tokenizer.ggml.merges entry {k}",
    )


def _add_missing_bytes(vocab: dict[str, int], first_free: int) -> None:
    """Give each byte the vocabulary lacks an id after all of the file's ids.

    A vocabulary learned from text can lack bytes that never occurred (SmolLM2's lacks 21:
    six control characters and bytes that valid UTF-8 never or rarely uses, like 0xC0 and
    0xF5-0xFF). Our tokenizer needs all 256 so that any text encodes; Hugging Face and
    llama.cpp instead drop such a byte from the text. Ids past the model's vocabulary keep the
    two apart: ordinary text never produces them, and text that does is easy to spot.
    """
    have = {data[0] for t in vocab if (data := from_byte_level(t)) is not None and len(data) == 1}
    for offset, byte in enumerate(b for b in range(256) if b not in have):
        vocab[BYTE_TO_CHAR[byte]] = first_free + offset


# ------------------------------------------------------------------------------------ write


def check_ids_fit(tokenizer: BPETokenizer, vocab_size: int) -> None:
    """Every id must have a row, except the ids _add_missing_bytes gave to bytes a GGUF
    vocabulary lacked: they are left out again, and reading the file back recreates them."""
    beyond = sorted(i for i in tokenizer.vocab if i >= vocab_size)
    missing_bytes = [i for i in tokenizer.byte_ids if i >= vocab_size]
    if not beyond == missing_bytes == list(range(vocab_size, vocab_size + len(beyond))):
        raise ScratchLMError(
            f"the tokenizer has {tokenizer.vocab_size} ids but the model only {vocab_size} rows"
        )


def add_tokenizer_metadata(
    writer: Any,
    tokenizer: BPETokenizer,
    vocab_size: int,
    config: Mapping[str, Any],
    chat_template: str | None,
) -> None:
    from gguf import GGUFValueType

    pre = _PRE_TOKENIZER_NAMES.get(tokenizer.pattern)
    if pre is None:
        raise ScratchLMError(
            f"the tokenizer's split pattern {tokenizer.pattern!r} has no llama.cpp "
            "pre-tokenizer name, so a GGUF reader would split text differently; GGUF export "
            "supports the gpt2, r50k, gpt4, cl100k, o200k, smollm and character patterns"
        )
    specials = {token_id: name for name, token_id in tokenizer.special_tokens.items()}
    tokens: list[str] = []
    types: list[int] = []
    for token_id in range(vocab_size):
        if token_id in specials:
            tokens.append(specials[token_id])
            types.append(TOKEN_CONTROL)
        elif token_id in tokenizer.vocab:
            tokens.append(to_byte_level(tokenizer.vocab[token_id]))
            types.append(TOKEN_NORMAL)
        else:
            # Rows of the embedding that no token uses (a vocabulary padded to a round size).
            tokens.append(f"[PAD{token_id}]")
            types.append(TOKEN_UNUSED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_string(PATTERN_KEY, tokenizer.pattern)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    merges = [f"{a} {b}" for a, b in byte_level_merges(tokenizer)]
    # llama.cpp needs the key even when it is empty (a character tokenizer of ASCII text has
    # no merges), and GGUFWriter.add_array skips empty arrays (gguf_file.py's writer packs them).
    writer.add_key_value(
        "tokenizer.ggml.merges", merges, GGUFValueType.ARRAY, sub_type=GGUFValueType.STRING
    )
    ids = {
        "bos": config.get("bos_token_id"),
        "eos": config.get("eos_token_id"),
        "pad": config.get("pad_token_id"),
    }
    eot = tokenizer.special_tokens.get("<|endoftext|>")
    ids = {k: (v if v is not None else eot) for k, v in ids.items()}
    if ids["bos"] is not None:
        writer.add_bos_token_id(int(ids["bos"]))
    if ids["eos"] is not None:
        writer.add_eos_token_id(int(ids["eos"]))
    if ids["pad"] is not None:
        writer.add_pad_token_id(int(ids["pad"]))
    writer.add_add_bos_token(False)  # scratchlm's encode adds nothing to the text
    if chat_template:
        writer.add_chat_template(chat_template)
