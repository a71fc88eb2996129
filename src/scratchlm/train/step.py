"""One training step's parts: the loss function, forward and backward over accumulated
micro-batches, and gradient clipping (the loop and the benchmarks share them)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor

from scratchlm.model import GPT
from scratchlm.train.config import TrainConfig
from scratchlm.train.sharding import mesh_groups

# A micro-batch is a tuple of tensors, and the loss takes them as its arguments: (x, y) for
# next-token prediction; a fine-tuning task's batches may hold more (finetune/task.py).
Batch = tuple[Tensor, ...]
LossFn = Callable[..., Tensor]


def model_loss(model: GPT, tc: TrainConfig) -> LossFn:
    """(x, y) -> the mean loss of one micro-batch, as training computes it: the fused, chunked
    head and cross-entropy (train.fused_loss) or forward's."""

    def loss_fn(x: Tensor, y: Tensor) -> Tensor:
        if tc.fused_loss:
            return model.training_loss(x, y)
        _, loss = model(x, y)
        assert loss is not None
        return loss

    return loss_fn


def compiled(loss_fn: LossFn, tc: TrainConfig) -> LossFn:
    """loss_fn, torch.compile'd with train.compile (compiled on the first call; the loop
    reports that step's time apart)."""
    return torch.compile(loss_fn) if tc.compile else loss_fn


def make_loss_fn(model: GPT, tc: TrainConfig) -> LossFn:
    """model_loss as training runs it (compiled with train.compile)."""
    return compiled(model_loss(model, tc), tc)


def accumulate_gradients(
    loss_fn: LossFn,
    next_batch: Callable[[], Batch],
    accum: int,
    autocast: AbstractContextManager[object],
    no_sync: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> Tensor:
    """Forward and backward passes of `accum` micro-batches, gradients summed into .grad;
    returns the mean loss over them as a detached tensor on the model's device (reading it
    is a GPU sync: the caller does it once per step, not once per micro-batch). All but the
    last micro-batch run under `no_sync` (DDP's: only the last backward all-reduces)."""
    loss_sum: Tensor | None = None
    for i in range(accum):
        batch = next_batch()
        with no_sync() if i < accum - 1 else nullcontext():
            with autocast:
                loss = loss_fn(*batch)
            # Each micro-batch contributes its share of the mean over the whole step.
            (loss / accum).backward()
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
    assert loss_sum is not None, "accum must be at least 1"
    return loss_sum.float() / accum


def forward_backward(
    loss_fn: LossFn,
    next_batch: Callable[[], Batch],
    accum: int,
    autocast: AbstractContextManager[object],
) -> float:
    """accumulate_gradients, its mean loss read back as a float."""
    return float(accumulate_gradients(loss_fn, next_batch, accum, autocast))


def clip_grad_norm(model: torch.nn.Module, clip: float) -> float:
    """The global gradient norm (inf or nan if any gradient is), clipped to `clip` when > 0."""
    params = [p for p in model.parameters() if p.grad is not None]
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    groups = mesh_groups(grads)
    if len(groups) == 1 and not isinstance(grads[0], DTensor):
        if clip > 0:
            return float(torch.nn.utils.clip_grad_norm_(params, clip))
        return float(torch.nn.utils.get_total_norm(grads))
    # A split model: torch's foreach kernels take the gradients of one mesh at a time (plain
    # tensors apart), and each group's norm is made whole before they are added up.
    norms = []
    for group in groups:
        norm = torch.nn.utils.get_total_norm([grads[i] for i in group])
        norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    total = torch.linalg.vector_norm(torch.stack(norms))
    if clip > 0:
        for group in groups:
            torch.nn.utils.clip_grads_with_norm_([params[i] for i in group], clip, total)
    return float(total)


def set_learning_rates(
    optimizer: torch.optim.Optimizer, base_lrs: list[float], factor: float
) -> None:
    """Every param group at `factor` times its own peak rate (the schedule's shape)."""
    for group, base_lr in zip(optimizer.param_groups, base_lrs, strict=True):
        group["lr"] = base_lr * factor
