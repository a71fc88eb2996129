"""Validation loss and perplexity.

Perplexity is exp(mean cross-entropy in nats per token): the number of equally likely tokens
the model is, on average, choosing between. A uniform guess over V tokens has perplexity V.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

import torch
from torch import nn


@torch.no_grad()
def evaluate_loss(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    autocast: AbstractContextManager[object] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Mean cross-entropy over `batches` (each weighted by its number of tokens), computed by
    model(x, y) or, if given, loss_fn(x, y) (a sharded model's, which runs on every rank)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for x, y in batches:
            with autocast or contextlib.nullcontext():
                if loss_fn is None:
                    _, loss = model(x, y)
                else:
                    loss = loss_fn(x, y)
            n = int((y != -1).sum())
            total += float(loss) * n
            count += n
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no tokens to evaluate")
    return total / count


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 700.0))  # exp overflows a float past ~709
