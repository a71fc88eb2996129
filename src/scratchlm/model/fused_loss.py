"""The language-model head and its cross-entropy, fused and computed a chunk of rows at a time.

The plain way, `F.cross_entropy(x @ W.T, targets)`, materialises the logits of every position:
N x V floats (4,096 tokens x 8,192 vocabulary = 134 MB, or 206 MB per 1,024-token sequence at
GPT-2's 50,257), then reads and writes them again for the log-softmax, its gradient (a zeroed
N x V buffer first) and the two backward matmuls. On a CPU those passes over memory cost more
than the arithmetic.

Here the rows are taken `chunk` at a time. For each chunk: its logits (small enough to stay in
cache), their log-sum-exp, the loss, and right away the gradient of the mean loss with respect
to the logits, softmax(z) - onehot(target), divided by the number of counted targets. That
gradient becomes the chunk's input gradient (grad_z @ W) and is added into the weight gradient
(grad_z^T @ x), and the chunk's logits are dropped. The backward pass then only scales the two
stored gradients by the incoming gradient (1 for a loss that is backpropagated directly). Same
loss and gradients as the plain way (to float32 rounding; a test checks), the same three
matmuls, no N x V tensor.

Under autocast the matmuls run in the autocast dtype, as the plain way's would; the softmax and
the loss are computed in float32.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

IGNORE_INDEX = -1  # targets equal to this are not counted, as GPT.forward's cross-entropy


def chunk_rows(vocab_size: int) -> int:
    """Rows per chunk: about 4M logits (16 MB of float32), so a chunk stays in a CPU's L3 cache
    while it is read and written, and at least 128 rows, so its matmuls stay efficient."""
    return max(128, (1 << 22) // vocab_size)


def linear_cross_entropy(
    x: Tensor, weight: Tensor, targets: Tensor, softcap: float = 0.0, chunk: int = 0
) -> Tensor:
    """Mean cross-entropy of the logits x @ weight.T (optionally soft-capped) against targets.

    x (N, C) hidden states, weight (V, C) the head, targets (N,) with IGNORE_INDEX for positions
    that do not count. Returns a scalar; N x V logits never exist at once.
    """
    chunk = chunk or chunk_rows(weight.size(0))
    loss = _LinearCrossEntropy.apply(x, weight, targets, softcap, chunk)
    return loss  # type: ignore[no-any-return]


def _matmul_dtype(x: Tensor) -> torch.dtype:
    """The dtype autocast would run a matmul of x in (x's own without autocast)."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, weight: Tensor, targets: Tensor, softcap: float, chunk: int
    ) -> Tensor:
        compute = _matmul_dtype(x)
        w = weight.to(compute)
        # grad_z @ w multiplies two row-major matrices. On a CPU without bf16 instructions
        # PyTorch's bf16 GEMM is a plain loop that runs that layout several times slower than
        # when the right operand is stored transposed, so in bf16 it reads a column-major copy
        # of w (the same matrix; V x C, made once).
        w_for_grad = w.t().contiguous().t() if compute != torch.float32 else w
        counted = targets != IGNORE_INDEX  # (N,)
        # Mean over the counted targets; an all-ignored batch gives 0 / 1 = 0, not NaN.
        scale = 1.0 / counted.sum().clamp(min=1).float()
        want_x, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x = torch.empty_like(x) if want_x else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if want_w else None
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        # One logits buffer for every chunk: a fresh 16 MB tensor per chunk would cost page
        # faults (the allocator maps and unmaps blocks this large) on every one.
        buffer = torch.empty(min(chunk, x.size(0)), w.size(0), dtype=compute, device=x.device)
        for start in range(0, x.size(0), chunk):
            xc = x[start : start + chunk].to(compute)  # (n, C)
            tc = targets[start : start + chunk].clamp(min=0)[:, None]  # (n, 1), ignored -> 0
            kept = counted[start : start + chunk, None]  # (n, 1)
            z = torch.mm(xc, w.t(), out=buffer[: xc.size(0)]).float()  # (n, V) the logits
            if softcap:
                capped = torch.tanh(z / softcap)
                z = softcap * capped
            z_target = z.gather(1, tc)  # (n, 1)
            z_max = z.amax(dim=1, keepdim=True)
            p = z.sub_(z_max).exp_()  # in place: z is not needed again
            sum_exp = p.sum(dim=1, keepdim=True)
            log_sum_exp = z_max + sum_exp.log()  # (n, 1)
            total += ((log_sum_exp - z_target) * kept).sum()
            if grad_x is None and grad_w is None:
                continue
            # d(mean loss)/dz = (softmax(z) - onehot(target)) * scale, 0 on ignored rows.
            row_scale = kept * scale
            grad_z = p.mul_(row_scale / sum_exp)
            grad_z.scatter_add_(1, tc, -row_scale.expand_as(tc).float())
            if softcap:
                grad_z.mul_(1 - capped.square())  # d(cap * tanh(z / cap))/dz
            grad_z = grad_z.to(compute)
            if grad_x is not None and grad_x.dtype == compute:
                torch.mm(grad_z, w_for_grad, out=grad_x[start : start + chunk])  # (n, C)
            elif grad_x is not None:
                grad_x[start : start + chunk] = grad_z @ w_for_grad
            if grad_w is None:
                continue
            if compute == torch.float32:
                grad_w.addmm_(grad_z.t(), xc)  # (V, C), accumulated in place
            else:
                grad_w += grad_z.t() @ xc  # a bfloat16 product, accumulated in float32
        ctx.save_for_backward(grad_x, grad_w)
        ctx.weight_dtype = weight.dtype
        return total * scale

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        grad_x, grad_w = ctx.saved_tensors
        if grad_x is not None:
            grad_x = grad_x * grad_loss.to(grad_x.dtype)
        if grad_w is not None:
            grad_w = (grad_w * grad_loss).to(ctx.weight_dtype)
        return grad_x, grad_w, None, None, None
