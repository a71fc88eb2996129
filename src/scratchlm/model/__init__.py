"""The GPT model (see gpt.py)."""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scratchlm.model.gpt import GPT, KVCache


def __getattr__(name: str) -> Any:
    # gpt.py needs torch, which takes seconds to import; load it only when it is asked for, so
    # reading model/config.py (every command's --help) does not import torch.
    if name in ("GPT", "KVCache"):
        from scratchlm.model import gpt

        return getattr(gpt, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["GPT", "KVCache"]
