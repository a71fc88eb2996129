"""Training precision: train.dtype ("auto" resolved by device and model width) and the
autocast context the training step runs in."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch

from scratchlm.core.errors import ScratchLMError
from scratchlm.train import flops


def autocast_context(device: torch.device, dtype: str) -> AbstractContextManager[object]:
    """bf16 autocast runs matmuls in bfloat16 (fast on AMX CPUs and GPUs), weights stay fp32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    if dtype == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ScratchLMError(f"unknown dtype {dtype!r}; use auto, float32 or bfloat16")


# Below this width, "auto" trains in float32 on a CPU even where bf16 matmuls are fast: the
# matmuls of a narrow model are too small for bf16's speed to outweigh autocast's casts. On a
# CPU without bf16 instructions bf16 loses at every width, so "auto" also asks the measured
# peaks (below). The threshold follows the DESIGN note of an AMX CPU where a 384-wide GPT
# trains faster in bf16.
CPU_BF16_MIN_WIDTH = 256
# bf16 must be at least this much faster in measured matmul peak to be worth autocasting.
BF16_MIN_SPEEDUP = 1.5


def resolve_dtype(device: torch.device, dtype: str, n_embd: int) -> str:
    """train.dtype with "auto" replaced by the faster precision for this device and width:
    bf16 on a GPU that supports it, on a CPU only for a wide enough model and only where the
    measured bf16 matmul peak beats fp32 (flops.peak_flops, cached after the first run)."""
    if dtype != "auto":
        return dtype
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if device.type != "cpu" or n_embd < CPU_BF16_MIN_WIDTH:
        return "float32"
    fp32 = flops.peak_flops(device, torch.float32)
    bf16 = flops.peak_flops(device, torch.bfloat16)
    return "bfloat16" if bf16 >= BF16_MIN_SPEEDUP * fp32 else "float32"
