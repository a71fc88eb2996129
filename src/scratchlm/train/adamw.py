"""AdamW, written out: Adam's moment estimates plus decoupled weight decay.

Loshchilov & Hutter's point is that weight decay should shrink the weights directly
(w -= lr * wd * w) rather than be added to the gradient, where Adam's per-parameter scaling
would distort it. Which parameters decay is the caller's choice, per param group (see
optimizer.py: matrices only). `adamw_update` is also Muon's update for its non-matrix groups.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from scratchlm.train.sharding import mesh_groups


class AdamW(torch.optim.Optimizer):
    """AdamW on PyTorch tensors. torch.optim.Optimizer gives us param groups and state_dict.

    foreach=True updates a whole group with one torch._foreach_* call per operation instead of
    one Python-level call per tensor: the same arithmetic (a test checks it against the loop
    and torch.optim.AdamW), with the per-tensor overhead gone, which is most of an optimizer
    step for a small model (see adamw_step_seconds in benchmarks or the README's numbers).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        foreach: bool = True,
    ) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError("lr, eps and weight_decay must be non-negative")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.foreach = foreach

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        assert closure is None, "closures are not supported"
        for group in self.param_groups:
            adamw_update(self, group, foreach=self.foreach)


def _adam_state(optimizer: torch.optim.Optimizer, p: Tensor) -> dict[str, Tensor]:
    state = optimizer.state[p]
    if not state:
        # The step count is a CPU tensor, so reading it never waits for a GPU.
        state["step"] = torch.zeros((), dtype=torch.float32)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state


@torch.no_grad()
def adamw_update(
    optimizer: torch.optim.Optimizer, group: dict[str, Any], foreach: bool = True
) -> None:
    """One AdamW step for the parameters of `group` that have gradients (also used by Muon for
    its non-matrix parameters)."""
    lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
    beta1, beta2 = group["betas"]
    params = [p for p in group["params"] if p.grad is not None]
    if not params:
        return
    groups = mesh_groups(params)
    if foreach and len(groups) > 1:
        # Tensor parallelism splits some parameters and leaves others whole (or split on
        # another mesh); a foreach kernel takes one kind at a time.
        for indices in groups:
            kind = [params[i] for i in indices]
            adamw_update(optimizer, {**group, "params": kind}, foreach)
        return
    states = [_adam_state(optimizer, p) for p in params]
    for state in states:
        state["step"] += 1
    steps = [int(state["step"].item()) for state in states]
    # Bias correction: early on m and v are biased towards their zero start.
    bias1 = [1 - beta1**s for s in steps]
    bias2_sqrt = [math.sqrt(1 - beta2**s) for s in steps]
    if foreach:
        grads = [p.grad for p in params]
        ms = [s["exp_avg"] for s in states]
        vs = [s["exp_avg_sq"] for s in states]
        # Decoupled decay first: it uses the weights before this step's update.
        if wd != 0:
            torch._foreach_mul_(params, 1 - lr * wd)
        torch._foreach_lerp_(ms, grads, 1 - beta1)  # m = beta1 * m + (1 - beta1) * g
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, grads, grads, value=1 - beta2)
        # m / b1 / (sqrt(v) / b2 + eps) = (b2 / b1) m / (sqrt(v) + eps b2): one pass fewer.
        denom = torch._foreach_sqrt(vs)
        torch._foreach_add_(denom, [eps * b for b in bias2_sqrt])
        steps_sizes = [-lr * b2 / b1 for b1, b2 in zip(bias1, bias2_sqrt, strict=True)]
        torch._foreach_addcdiv_(params, ms, denom, steps_sizes)
        return
    for p, state, b1, b2 in zip(params, states, bias1, bias2_sqrt, strict=True):
        m, v = state["exp_avg"], state["exp_avg_sq"]
        if wd != 0:
            p.mul_(1 - lr * wd)
        m.lerp_(p.grad, 1 - beta1)
        v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        v_hat_sqrt = (v.sqrt() / b2).add_(eps)
        p.addcdiv_(m, v_hat_sqrt, value=-lr / b1)
