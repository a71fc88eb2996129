"""The tokenizer a run trains: the [tokenizer] section."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from scratchlm.core.errors import ScratchLMError


@dataclass
class TokenizerConfig:
    """Byte-level BPE trained on the run's own training text."""

    # "bpe": byte-level BPE of vocab_size tokens; "char": one token per character (the
    # character-level experiments; tokenizer/char.py), vocab_size and pattern unused.
    kind: Literal["bpe", "char"] = "bpe"
    vocab_size: int = 2048  # including the 256 byte tokens and the special tokens
    pattern: str = "gpt4"  # "gpt2", "gpt4" or a regex of your own
    special_tokens: list[str] = field(default_factory=lambda: ["<|endoftext|>"])
    max_train_chars: int = 0  # train on at most this many characters (0: all)

    def validate(self) -> None:
        if self.kind not in ("bpe", "char"):
            raise ScratchLMError(
                f"tokenizer.kind = {self.kind!r} is not allowed; choose 'bpe' or 'char'"
            )
        minimum = 256 + len(self.special_tokens)
        if self.vocab_size < minimum:
            raise ScratchLMError(
                f"tokenizer.vocab_size ({self.vocab_size}) must be at least 256 byte tokens "
                f"+ {len(self.special_tokens)} special tokens = {minimum}"
            )
