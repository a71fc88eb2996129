"""Muon: momentum whose update for each hidden matrix is orthogonalised (Jordan et al., 2024).

For a weight matrix W, SGD with momentum would step along the momentum M. M is usually
dominated by a few directions (a few large singular values), so most directions of W barely
move. Muon replaces M = U S V^T by its nearest semi-orthogonal matrix U V^T, which moves every
direction equally; this trains hidden matrices of small transformers in noticeably fewer steps
than AdamW (the modded-nanogpt speedrun's optimizer).

U V^T is approximated without an SVD by a few Newton-Schulz iterations, only matmuls: each
iteration maps every singular value s to p(s) = a s + b s^3 + c s^5 and leaves U and V alone.
After scaling M so that s <= 1, five iterations of a polynomial tuned to grow small values
fast land every s somewhere in about [0.7, 1.2] rather than exactly on 1: exact enough for an
update direction, and much cheaper than iterating to convergence.

Only the 2-D hidden matrices use Muon. Embeddings (a lookup, not a linear map of the residual
stream), the output head and the norm gains and biases use AdamW, as in the speedrun: one
optimizer object with both kinds of group, so one state_dict saves and restores all of it.
The fused attention matrix c_attn (Q, K and V stacked) is orthogonalised as one matrix.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from scratchlm.train.adamw import adamw_update

# The quintic's coefficients: a is the slope at 0 (large, so tiny singular values grow fast);
# b and c bring p(1) to about 0.7 and keep p(s) in [0.7, 1.2] on the iterates.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5


def orthogonalize(matrix: Tensor, steps: int = NS_STEPS, eps: float = 1e-7) -> Tensor:
    """An approximation of U V^T for matrix = U S V^T (a batch of matrices in the leading dims).

    Computed in float32 whatever the input's dtype; the result has the input's shape.
    """
    a, b, c = NS_COEFFICIENTS
    x = matrix.float()
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide side: X X^T is then the smaller Gram matrix
        x = x.mT
    # The Frobenius norm bounds the largest singular value, so after this every s <= 1.
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if tall else x


class Muon(torch.optim.Optimizer):
    """Muon for groups with use_muon=True, our AdamW for the others (see the module docstring).

    Muon groups: lr, momentum (Nesterov), weight_decay (decoupled, as in AdamW). AdamW groups:
    lr, betas, eps, weight_decay.
    """

    def __init__(self, param_groups: Iterable[dict[str, Any]]) -> None:
        defaults = dict(
            lr=0.02, momentum=0.95, weight_decay=0.0, betas=(0.9, 0.95), eps=1e-8, use_muon=False
        )
        super().__init__(list(param_groups), defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if group["use_muon"] and p.dim() != 2:
                    raise ValueError(f"Muon takes 2-D matrices only, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        assert closure is None, "closures are not supported"
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_update(group)
            else:
                adamw_update(self, group)

    def _muon_update(self, group: dict[str, Any]) -> None:
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        buffers = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buffers.append(state["momentum_buffer"])
        torch._foreach_lerp_(buffers, grads, 1 - momentum)  # buf = mu * buf + (1 - mu) * g
        # Nesterov: step along where the momentum is heading, g + mu * (buf - g).
        directions = torch._foreach_lerp(grads, buffers, momentum)
        if wd != 0:
            torch._foreach_mul_(params, 1 - lr * wd)
        # Matrices of one shape are orthogonalised together, as one batch of matmuls.
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(params):
            by_shape.setdefault(tuple(p.shape), []).append(i)
        for (rows, cols), indices in by_shape.items():
            update = orthogonalize(torch.stack([directions[i] for i in indices]))
            # U V^T has unit singular values, so its RMS is sqrt(1 / cols) for a wide matrix;
            # scaling tall ones up by sqrt(rows / cols) gives every shape about the same RMS.
            scale = max(1.0, rows / cols) ** 0.5
            targets = [params[i] for i in indices]
            torch._foreach_add_(
                targets, [u.to(p.dtype) for u, p in zip(update.unbind(0), targets, strict=True)],
                alpha=-lr * scale,
            )  # fmt: skip
