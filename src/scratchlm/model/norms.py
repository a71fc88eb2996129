"""Normalisation layers: LayerNorm (GPT-2) or RMSNorm (Llama), chosen by the config."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchlm.model.config import ModelConfig


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich, 2019): x / sqrt(mean(x²) + eps) · weight.

    LayerNorm without the mean subtraction and the bias: cheaper, and as good in practice.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in float32 (a bfloat16 mean of squares loses digits), as Llama does, then
        # cast back before the gain so the multiply happens in the activations' dtype.
        # F.rms_norm without a weight is x32 · rsqrt(mean(x32²) + eps) in one call.
        normed = F.rms_norm(x.float(), (x.size(-1),), eps=self.eps)
        return self.weight * normed.type_as(x)


def make_norm(config: ModelConfig, dim: int | None = None) -> nn.Module:
    """The config's norm over the last `dim` channels (default n_embd)."""
    dim = config.n_embd if dim is None else dim
    if config.norm == "rmsnorm":
        return RMSNorm(dim, eps=config.norm_eps)
    return nn.LayerNorm(dim, eps=config.norm_eps, bias=config.bias)
