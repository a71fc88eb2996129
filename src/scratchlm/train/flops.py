"""How much arithmetic a training step does, and how much the device could do: MFU.

FLOPs per token (the PaLM paper's count, appendix B): a matmul of an n-vector by an n x m
matrix is 2nm FLOPs, and the backward pass costs twice the forward (gradients for both the
input and the weight), so every weight that multiplies an activation costs 6 FLOPs per
token. On top of that, attention compares each token with the T tokens of its context,
QK^T and the weighted sum of V, 2 * 2 * T * d FLOPs per layer forward, 12 * L * T * d
training:

    flops_per_token = 6 N + 12 L T d

N counts the weights that multiply: every Linear of the blocks plus the output head (tied to
the token embedding or not; an embedding lookup itself costs nothing, so the position
embedding is left out). Biases and norm gains are counted like weights, as nanoGPT does;
they are a fraction of a percent of N. Attention is counted over the full context,
as PaLM and nanoGPT do, although a causal mask skips half of it; MFU figures are comparable
with theirs that way.

The peak is measured, not read from a spec sheet: the best rate of large square matmuls in
the run's dtype on the run's device and thread count, measured once and cached in
<cache dir>/device_peaks.json, so MFU says how close training gets to what this machine
really does.
"""

from __future__ import annotations

import contextlib
import json
import platform
import time

import torch

from scratchlm.core.atomic_files import atomic_write_text
from scratchlm.core.cache import cache_dir
from scratchlm.model.config import ModelConfig

PEAKS_FILE = "device_peaks.json"


def flops_per_token(config: ModelConfig, non_embedding_params: int) -> float:
    """Training FLOPs (forward + backward) per token; see the module docstring."""
    multiplying = non_embedding_params + config.vocab_size * config.n_embd  # + the head
    attention = 12 * config.n_layer * config.block_size * config.n_embd
    return 6.0 * multiplying + attention


def device_key(device: torch.device, dtype: torch.dtype) -> str:
    """Names what the peak depends on: the chip, the thread count (CPU) and the dtype."""
    if device.type == "cuda":
        chip = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        chip = f"{_cpu_name()} x{torch.get_num_threads()} threads"
    else:
        chip = device.type
    return (
        f"{device.type}: {chip} | {str(dtype).removeprefix('torch.')} | torch {torch.__version__}"
    )


def _cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def measure_peak_flops(device: torch.device, dtype: torch.dtype, budget_s: float = 0.5) -> float:
    """The best matmul rate (FLOP/s) seen within about budget_s seconds.

    Sizes grow from 256 while a single matmul stays fast, so a slow path (bf16 on a CPU without
    bf16 instructions is many times slower than fp32) cannot make the measurement take minutes.
    Each size is run once untimed first: the first matmul also starts the thread pool.
    """
    best = 0.0
    deadline = time.perf_counter() + budget_s
    for n in (256, 512, 1024, 2048, 4096, 8192):
        # Its own generator: measuring must not move the global RNG a training run relies on.
        gen = torch.Generator(device=device).manual_seed(n)
        a = torch.randn(n, n, device=device, generator=gen).to(dtype)
        b = torch.randn(n, n, device=device, generator=gen).to(dtype)
        a @ b
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        one = time.perf_counter() - t0
        reps = max(1, min(50, int(budget_s / 8 / max(one, 1e-9))))
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0), 2 * n**3 / one)
        # The next size costs 8x per matmul, and takes at least three of them.
        if time.perf_counter() + 24 * one > deadline:
            break
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """The cached measured peak for this device and dtype, measured now if not cached yet."""
    peaks = _read_peaks()
    key = device_key(device, dtype)
    if key in peaks and peaks[key] > 0:
        return peaks[key]
    peaks[key] = measure_peak_flops(device, dtype)
    _write_peaks(peaks)
    return peaks[key]


def raise_peak(device: torch.device, dtype: torch.dtype, achieved: float) -> float:
    """The peak, raised to `achieved` FLOP/s (and cached) if training just ran faster than it.

    A measurement taken while other processes held the cores can come out far too low, and a
    cached peak would then make every later MFU nonsense (over 100%). What a training step
    achieved is a true lower bound of what the device can do, so it corrects the cache for good.
    """
    peaks = _read_peaks()
    key = device_key(device, dtype)
    if achieved > peaks.get(key, 0.0):
        peaks[key] = achieved
        _write_peaks(peaks)
    return peaks[key]


def _read_peaks() -> dict[str, float]:
    with contextlib.suppress(OSError, ValueError, TypeError):
        loaded = json.loads((cache_dir() / PEAKS_FILE).read_text(encoding="utf-8"))
        if isinstance(loaded, dict):
            return {k: float(v) for k, v in loaded.items()}
    return {}


def _write_peaks(peaks: dict[str, float]) -> None:
    with contextlib.suppress(OSError):  # a read-only cache only costs a re-measurement
        atomic_write_text(cache_dir() / PEAKS_FILE, json.dumps(peaks, indent=2) + "\n")
