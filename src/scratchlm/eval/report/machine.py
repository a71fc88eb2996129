"""The machine and software the report was written with: CPU, memory, GPUs, OS and versions.

A run does not record the machine it trained on, so the card says this is where the report was
written (usually the same machine, right after training or evaluation)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's name as the kernel reports it ('model name'), else what platform knows."""
    try:
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            # x86 says "model name"; some ARM kernels only "Hardware" or "CPU part".
            if key.strip() in ("model name", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def memory_gib(meminfo: Path = Path("/proc/meminfo")) -> float | None:
    try:
        for line in meminfo.read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def gpus() -> str:
    import torch

    if not torch.cuda.is_available():
        return "none"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    distinct = sorted(set(names))
    return ", ".join(f"{names.count(n)} x {n}" for n in distinct) + f" (CUDA {torch.version.cuda})"


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_fields() -> list[tuple[str, str]]:
    memory = memory_gib()
    return [
        ("CPU", f"{cpu_model()} ({os.cpu_count() or '?'} logical cores)"),
        ("Memory", f"{memory:.1f} GiB" if memory is not None else "unknown"),
        ("GPUs", gpus()),
        ("Operating system", platform.platform()),
        ("Python", platform.python_version()),
        ("PyTorch", version("torch")),
        ("scratchlm", version("scratchlm")),
    ]
