"""Byte-level BPE tokenizer, written from scratch: train, encode, decode, save, load."""

from scratchlm.tokenizer.bpe import BPETokenizer
from scratchlm.tokenizer.patterns import GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, resolve_pattern

__all__ = ["GPT2_SPLIT_PATTERN", "GPT4_SPLIT_PATTERN", "BPETokenizer", "resolve_pattern"]
