"""AdamW, written out: Adam's moment estimates plus decoupled weight decay.

Loshchilov & Hutter's point is that weight decay should shrink the weights directly
(w -= lr * wd * w) rather than be added to the gradient, where Adam's per-parameter scaling
would distort it. We decay only matrices (the weights that multiply activations); biases,
norm gains and embeddings are left alone, as in GPT-2 / nanoGPT.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from scratchlm.config import TrainConfig


class AdamW(torch.optim.Optimizer):
    """AdamW on PyTorch tensors. torch.optim.Optimizer gives us param groups and state_dict."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError("lr, eps and weight_decay must be non-negative")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        assert closure is None, "closures are not supported"
        for group in self.param_groups:
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = int(state["step"].item())
                m, v = state["exp_avg"], state["exp_avg_sq"]
                # Decoupled decay first: it uses the weights before this step's update.
                if wd != 0:
                    p.mul_(1 - lr * wd)
                m.lerp_(p.grad, 1 - beta1)  # m = beta1 * m + (1 - beta1) * g
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                # Bias correction: early on m and v are biased towards their zero start.
                bias1 = 1 - beta1**step
                bias2 = 1 - beta2**step
                denom = (v.sqrt() / math.sqrt(bias2)).add_(eps)
                p.addcdiv_(m, denom, value=-lr / bias1)


def build_optimizer(model: nn.Module, config: TrainConfig) -> AdamW:
    """AdamW with weight decay on matrices only (see the module docstring)."""
    decay, no_decay = model.decay_and_no_decay_params()  # type: ignore[operator]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return AdamW(groups, lr=config.learning_rate, betas=(config.beta1, config.beta2))
