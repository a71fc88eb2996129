"""Which dtype to decode in: `--dtype float32 | bfloat16 | auto`, and casting a model to it.

Decoding one token reads every weight once, so bf16 weights halve the bytes read per token,
and they are fast everywhere bf16 arithmetic is native: CUDA GPUs, and CPUs with AMX or
AVX512-BF16. Elsewhere PyTorch emulates bf16: its matrix-vector products (a decode step) still
run faster than float32, but the matrix-matrix products of a prompt's prefill run several times
slower (benchmarks/inference.py measures both), so "auto" keeps the more accurate float32
there and `--dtype bfloat16` is the choice for long generations from short prompts. With
--quantize (quantize.py) "auto" is bfloat16 everywhere: the int8/int4 kernels are fast only
with bfloat16 activations.
"""

from __future__ import annotations

import torch

from scratchlm.core.devices import cpu_has_native_bf16
from scratchlm.core.errors import ScratchLMError
from scratchlm.model import GPT

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_inference_dtype(
    name: str, device: torch.device, quantize: str | None = None
) -> torch.dtype:
    """The torch dtype for `name`; "auto" picks bfloat16 only where it is native or the
    weights are quantised (see above)."""
    if name == "auto":
        if quantize is not None:
            return torch.bfloat16
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise ScratchLMError(f"unknown dtype {name!r}; use auto, float32 or bfloat16")
    return DTYPES[name]


def cast_for_inference(model: GPT, dtype: torch.dtype) -> GPT:
    """Cast the weights to `dtype` in place; the position tables stay float32 (bf16 angles
    would be off by whole degrees at long positions), and new KV caches follow the weights."""
    if model.lm_head.weight.dtype == dtype:
        return model
    model.to(dtype)
    model.init_buffers(model.lm_head.weight.device)
    return model
