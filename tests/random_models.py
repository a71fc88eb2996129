"""Tiny random GPTs for the export tests, and their logits whatever the model's class."""

from __future__ import annotations

import torch

from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig


def random_gpt(config: ModelConfig, seed: int = 0) -> GPT:
    """A GPT of `config` in eval mode, with norm gains and biases moved away from 1 and 0 so
    that an export that dropped or swapped them shows in the logits."""
    torch.manual_seed(seed)
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def logits_of(model: torch.nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """(B, T, V) logits of ours (logits, loss) or of a transformers model (.logits)."""
    with torch.no_grad():
        out = model(idx)
    return out.logits if hasattr(out, "logits") else out[0]
