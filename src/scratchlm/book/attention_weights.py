"""The attention weights a trained model computes, per layer and head, for the book's figures.

The model never materialises softmax(QK^T / sqrt(D) + M): it calls PyTorch's fused
scaled_dot_product_attention, which returns only the weighted sum of the values. To draw the
weights without writing a second copy of the attention code, the book records the q, k, v
and mask each layer hands to that function (gpt.py calls it through torch.nn.functional, so a
temporary stand-in there sees every call), recomputes the weights from them, and checks that
the weights times v give back the output the model used.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from torch import Tensor

from scratchlm.model import GPT


@dataclass(frozen=True)
class AttentionCall:
    """One layer's call of scaled_dot_product_attention: q (B, H, T, D), k and v (B, K, S, D)."""

    q: Tensor
    k: Tensor
    v: Tensor
    mask: Tensor | None  # bool, True = attend
    is_causal: bool
    out: Tensor  # (B, H, T, D), what the model went on with


@contextmanager
def recorded_attention() -> Iterator[list[AttentionCall]]:
    """While open, every scaled_dot_product_attention call is recorded (and still computed)."""
    calls: list[AttentionCall] = []
    original = F.scaled_dot_product_attention

    def recording(q: Tensor, k: Tensor, v: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        out = original(q, k, v, *args, **kwargs)
        mask = kwargs.get("attn_mask", args[0] if args else None)
        calls.append(AttentionCall(q, k, v, mask, bool(kwargs.get("is_causal", False)), out))
        return out

    with mock.patch.object(F, "scaled_dot_product_attention", recording):
        yield calls


def attention_weights(call: AttentionCall) -> Tensor:
    """softmax(q k^T / sqrt(D) + M) of one recorded call: (B, H, T, S), rows summing to 1."""
    q, k = call.q.double(), call.k.double()
    group = q.size(1) // k.size(1)  # grouped-query attention: H/K query heads share a key head
    k = k.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))  # (B, H, T, S)
    T, S = scores.shape[-2:]
    if call.mask is not None:
        scores = scores.masked_fill(~call.mask, float("-inf"))
    elif call.is_causal:
        future = torch.ones(T, S, dtype=torch.bool, device=scores.device).triu(S - T + 1)
        scores = scores.masked_fill(future, float("-inf"))
    return torch.softmax(scores, dim=-1)


def output_error(call: AttentionCall, weights: Tensor) -> float:
    """max |weights v - the fused kernel's output|: how faithfully the weights are the model's."""
    v = call.v.double().repeat_interleave(call.q.size(1) // call.v.size(1), dim=1)
    return float((weights @ v - call.out.double()).abs().max())


def model_attention(model: GPT, ids: list[int]) -> tuple[list[Tensor], float]:
    """Each layer's attention weights (H, T, T) for the token ids, and the largest output_error
    over the layers."""
    with torch.no_grad(), recorded_attention() as calls:
        model(torch.tensor([ids], device=model.lm_head.weight.device))
    weights = [attention_weights(call) for call in calls]
    error = max(output_error(call, w) for call, w in zip(calls, weights, strict=True))
    return [w[0].cpu() for w in weights], error
