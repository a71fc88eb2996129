"""The GPT model (see gpt.py)."""

from scratchlm.model.gpt import GPT, KVCache

__all__ = ["GPT", "KVCache"]
