"""Backpropagation by hand: the backward pass of each layer the model uses, written out.

Appendix A of the book lists these functions and checks each one, while the book is built,
against torch.autograd differentiating the model's own operations (F.cross_entropy, F.linear,
F.layer_norm, F.rms_norm, F.gelu(approximate="tanh"), F.scaled_dot_product_attention) on
random float64 inputs. A hand gradient off by more than GRADIENT_TOLERANCE is a bug, and
`verified_gradient_checks` refuses to let the book print it.

Shapes: N rows (positions), C channels, V classes, F outputs; attention q, k, v are (H, T, D).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# float64 leaves a correct hand gradient ~1e-15 from autograd's; a wrong one misses by O(1).
GRADIENT_TOLERANCE = 1e-6
GRADIENT_SEED = 0  # the book's checks are reproducible: tests re-measure the printed numbers
GELU_CUBIC = 0.044715  # the cubic term of GELU's tanh approximation (Hendrycks & Gimpel, 2016)


def softmax_cross_entropy_backward(logits: Tensor, targets: Tensor) -> Tensor:
    """d loss / d logits for loss = mean over N rows of -log softmax(logits)[target].

    logits (N, V), targets (N,) -> (N, V): (softmax(z) - onehot(y)) / N.
    """
    n = logits.size(0)
    probs = torch.softmax(logits, dim=-1)
    probs[torch.arange(n), targets] -= 1.0  # subtract the one-hot of each row's target
    return probs / n


def linear_backward(x: Tensor, weight: Tensor, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """y = x W^T + b with x (N, C), W (F, C): given dL/dy (N, F), return dL/dx, dL/dW, dL/db."""
    grad_x = grad_out @ weight  # (N, C)
    grad_weight = grad_out.T @ x  # (F, C): each output row's sum over the N inputs
    grad_bias = grad_out.sum(dim=0)  # (F,): the bias is added to every row
    return grad_x, grad_weight, grad_bias


def layer_norm_backward(
    x: Tensor, weight: Tensor, grad_out: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """y = weight * (x - mean) / sqrt(var + eps) + bias over the last axis of x (N, C):
    dL/dx, dL/dweight, dL/dbias."""
    mean = x.mean(dim=-1, keepdim=True)
    rstd = 1.0 / torch.sqrt(x.var(dim=-1, unbiased=False, keepdim=True) + eps)  # (N, 1)
    x_hat = (x - mean) * rstd
    grad_hat = grad_out * weight  # through the gain
    # x_hat depends on x directly and through the mean and the variance: the two means below
    # remove the parts of grad_hat along those two directions.
    grad_x = rstd * (
        grad_hat
        - grad_hat.mean(dim=-1, keepdim=True)
        - x_hat * (grad_hat * x_hat).mean(dim=-1, keepdim=True)
    )
    return grad_x, (grad_out * x_hat).sum(dim=0), grad_out.sum(dim=0)


def rms_norm_backward(
    x: Tensor, weight: Tensor, grad_out: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    """y = weight * x / sqrt(mean(x^2) + eps) over the last axis of x (N, C):
    dL/dx, dL/dweight. LayerNorm's gradient without the mean's term."""
    rrms = 1.0 / torch.sqrt(x.square().mean(dim=-1, keepdim=True) + eps)  # (N, 1)
    x_hat = x * rrms
    grad_hat = grad_out * weight
    grad_x = rrms * (grad_hat - x_hat * (grad_hat * x_hat).mean(dim=-1, keepdim=True))
    return grad_x, (grad_out * x_hat).sum(dim=0)


def gelu_tanh_backward(x: Tensor, grad_out: Tensor) -> Tensor:
    """GELU's tanh form, g(x) = x/2 (1 + tanh(u)), u = sqrt(2/pi) (x + GELU_CUBIC x^3): dL/dx."""
    c = math.sqrt(2.0 / math.pi)
    t = torch.tanh(c * (x + GELU_CUBIC * x**3))
    du_dx = c * (1.0 + 3 * GELU_CUBIC * x**2)
    return grad_out * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t**2) * du_dx)


def causal_attention_backward(
    q: Tensor, k: Tensor, v: Tensor, grad_out: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """O = softmax(Q K^T / sqrt(D) + M) V per head, q, k, v (H, T, D), M the causal mask:
    given dL/dO, return dL/dQ, dL/dK, dL/dV."""
    T, D = q.size(-2), q.size(-1)
    scale = 1.0 / math.sqrt(D)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)  # key after query: weight 0
    scores = (q @ k.transpose(-1, -2)) * scale
    probs = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)  # (H, T, T)
    grad_v = probs.transpose(-1, -2) @ grad_out
    grad_probs = grad_out @ v.transpose(-1, -2)
    # Softmax's Jacobian applied row by row: P * (dP - sum_j dP_j P_j). Masked entries have
    # P = 0, so they get no gradient, as the -inf they were set to has none.
    grad_scores = probs * (grad_probs - (grad_probs * probs).sum(dim=-1, keepdim=True))
    grad_q = grad_scores @ k * scale
    grad_k = grad_scores.transpose(-1, -2) @ q * scale
    return grad_q, grad_k, grad_v


@dataclass(frozen=True)
class GradientCase:
    """One layer to check: autograd differentiates `forward(*inputs)`; `backward(*inputs,
    grad_out)` is the hand-written gradient of every input, in the same order."""

    name: str
    backward_symbol: str  # the hand backward, as the book lists it
    forward: Callable[..., Tensor]
    backward: Callable[..., Tensor | tuple[Tensor, ...]]
    inputs: tuple[Tensor, ...]


@dataclass(frozen=True)
class GradientCheck:
    name: str
    backward_symbol: str
    max_error: float  # largest |hand - autograd| over every entry of every gradient


def gradient_cases(seed: int = GRADIENT_SEED) -> list[GradientCase]:
    """The appendix's layers, each with random float64 inputs drawn from `seed`."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    N, C, V, Fo, H, T, D = 6, 8, 11, 5, 2, 7, 4
    eps = 1e-5
    targets = torch.randint(0, V, (N,), generator=gen)
    gain, shift = 1.0 + 0.1 * randn(C), 0.1 * randn(C)  # away from the trivial 1 and 0
    module = "scratchlm.book.derivatives"
    return [
        GradientCase(
            "Softmax + cross-entropy",
            f"{module}:softmax_cross_entropy_backward",
            lambda z: F.cross_entropy(z, targets),
            lambda z, g: softmax_cross_entropy_backward(z, targets) * g,
            (randn(N, V),),
        ),
        GradientCase(
            "Linear layer",
            f"{module}:linear_backward",
            F.linear,
            lambda x, w, b, g: linear_backward(x, w, g),
            (randn(N, C), randn(Fo, C), randn(Fo)),
        ),
        GradientCase(
            "LayerNorm",
            f"{module}:layer_norm_backward",
            lambda x, w, b: F.layer_norm(x, (C,), w, b, eps),
            lambda x, w, b, g: layer_norm_backward(x, w, g, eps),
            (randn(N, C), gain, shift),
        ),
        GradientCase(
            "RMSNorm",
            f"{module}:rms_norm_backward",
            lambda x, w: F.rms_norm(x, (C,), w, eps),
            lambda x, w, g: rms_norm_backward(x, w, g, eps),
            (randn(N, C), gain),
        ),
        GradientCase(
            "GELU (tanh form)",
            f"{module}:gelu_tanh_backward",
            lambda x: F.gelu(x, approximate="tanh"),
            gelu_tanh_backward,
            (2.0 * randn(N, C),),  # wide enough to reach both tails
        ),
        GradientCase(
            "Causal scaled dot-product attention",
            f"{module}:causal_attention_backward",
            lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
            causal_attention_backward,
            (randn(H, T, D), randn(H, T, D), randn(H, T, D)),
        ),
    ]


def max_gradient_error(case: GradientCase, seed: int = GRADIENT_SEED) -> float:
    """The largest difference between case's hand gradients and autograd's, for a random
    upstream gradient dL/d(output) drawn from `seed`."""
    inputs = [x.detach().clone().requires_grad_(True) for x in case.inputs]
    out = case.forward(*inputs)
    gen = torch.Generator().manual_seed(seed + 1)
    grad_out = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    expected = torch.autograd.grad(out, inputs, grad_out)
    with torch.no_grad():
        hand = case.backward(*(x.detach() for x in inputs), grad_out)
    hand_grads: Sequence[Tensor] = hand if isinstance(hand, tuple) else (hand,)
    if len(hand_grads) != len(expected):
        raise ValueError(
            f"{case.name}: {len(hand_grads)} hand gradients for {len(expected)} inputs"
        )
    return max(float((h - e).abs().max()) for h, e in zip(hand_grads, expected, strict=True))


def run_gradient_checks(seed: int = GRADIENT_SEED) -> list[GradientCheck]:
    """Every case of gradient_cases(seed), measured."""
    return [
        GradientCheck(case.name, case.backward_symbol, max_gradient_error(case, seed))
        for case in gradient_cases(seed)
    ]


def verified_gradient_checks(seed: int = GRADIENT_SEED) -> list[GradientCheck]:
    """run_gradient_checks, raising if any hand gradient misses autograd's by the tolerance:
    the book must never print a derivation its own code disproves."""
    checks = run_gradient_checks(seed)
    wrong = [c for c in checks if not c.max_error < GRADIENT_TOLERANCE]  # NaN counts as wrong
    if wrong:
        details = ", ".join(f"{c.backward_symbol} (max error {c.max_error:.3g})" for c in wrong)
        raise RuntimeError(
            f"hand-written gradients disagree with autograd beyond {GRADIENT_TOLERANCE}: {details}"
        )
    return checks
