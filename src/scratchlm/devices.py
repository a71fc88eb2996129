"""Which device to run on, and the mixed-precision context for it."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch

from scratchlm.errors import ScratchLMError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple's MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ScratchLMError(
            f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ScratchLMError(f"device {name!r} asked for, but this machine has no CUDA GPU")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ScratchLMError(f"device {name!r} asked for, but MPS is not available here")
    return device


def autocast_context(device: torch.device, dtype: str) -> AbstractContextManager[object]:
    """bf16 autocast runs matmuls in bfloat16 (fast on AMX CPUs and GPUs), weights stay fp32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    if dtype == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ScratchLMError(f"unknown dtype {dtype!r}; use float32 or bfloat16")
