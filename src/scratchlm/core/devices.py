"""Which device to run on, and what the CPU can do natively."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import torch

from scratchlm.core.errors import ScratchLMError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple's MPS, then the CPU. In a job torchrun started, 'auto'
    and 'cuda' mean this rank's own GPU, cuda:LOCAL_RANK (every rank on one GPU would
    share its memory and serialise)."""
    local_rank = os.environ.get("LOCAL_RANK")
    if name in ("auto", "cuda") and local_rank is not None and torch.cuda.is_available():
        return torch.device("cuda", int(local_rank))
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


@cache
def cpu_has_native_bf16() -> bool:
    """True when this CPU has bf16 matrix instructions (AMX-BF16 or AVX512-BF16).

    PyTorch's CPU capability only says "AVX512" at best, not whether bf16 is in it, so the
    feature flags are read from /proc/cpuinfo (Linux); without it, assume not.
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return bool({"amx_bf16", "avx512_bf16"} & set(flags.split()))
