"""Weight-only quantisation for decoding on a CPU: int8 per output channel, int4 in groups.

Decoding one token at batch 1 reads every weight once and does two FLOPs per weight, so it
runs at the speed of memory, and the bytes per weight set the speed: 4 in float32, 2 in
bfloat16, 1 in int8, a little over 0.5 in int4. Only the weights are quantised; activations
stay in floating point, and each matmul unpacks its weights on the fly inside PyTorch's kernels
(`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`). Those kernels are fast with bfloat16
activations (float32 and float16 activations take a much slower path in PyTorch's CPU
kernels), so a quantised model decodes in bfloat16 unless told otherwise.

    int8  w ≈ scale[n] · q[n, k], q in [-127, 127]: one scale per output channel.
    int4  w ≈ scale[n, g] · q[n, k] + low[n, g], q in [0, 15], one (scale, low) per group of
          32 inputs: the layout of GGUF's Q4_1 blocks (llama.cpp), so a model imported from a
          Q4_1 file gets its own 4-bit codes back (see `int4_codes`), not a second rounding.

Only the Linear layers of the blocks are quantised. The head stays in the activations' dtype:
it is usually tied to the token embedding, whose rows the first layer looks up.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from scratchlm.core.errors import ScratchLMError
from scratchlm.model.gpt import GPT

QuantizeMode = Literal["int8", "int4"]
QUANTIZE_MODES: tuple[str, ...] = ("int8", "int4")
INT4_GROUP = 32  # inputs per (scale, low) pair, as GGUF's Q4_0/Q4_1 blocks


def int8_codes(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-row int8: (q (N, K) int8, scale (N,) float32) with weight ≈ scale[:, None] · q."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / 127
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)  # an all-zero row: q = 0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def int4_codes(weight: Tensor, group: int = INT4_GROUP) -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric 4-bit codes per group of `group` inputs: (q (N, K) in 0..15, scale (N, K/group),
    low (N, K/group)) with weight ≈ scale · q + low, group by group.

    A group whose values already lie on a grid of at most 16 evenly spaced levels (a weight
    dequantised from Q4_1, or from any 4-bit format) keeps that grid: its step is the smallest
    clear gap between its sorted values, and the codes reproduce it exactly. Any other group
    gets the usual min-max grid: low = min, scale = (max - min) / 15, codes rounded to nearest.
    """
    w = weight.detach().float()
    N, K = w.shape
    g = w.view(N, K // group, group)  # (N, G, group)
    low, high = g.amin(dim=-1), g.amax(dim=-1)  # (N, G)
    span = high - low
    minmax_step = span / 15
    # The grid a quantised group already sits on: its smallest gap well above float noise.
    gaps = g.sort(dim=-1).values.diff(dim=-1)  # (N, G, group - 1)
    clear = gaps > span[..., None] * 1e-3
    grid_step = torch.where(clear, gaps, torch.full_like(gaps, float("inf"))).amin(dim=-1)
    position = (g - low[..., None]) / grid_step[..., None]
    on_grid = (
        torch.isfinite(grid_step)
        & ((position - position.round()).abs() < 1e-2).all(dim=-1)
        & (position.round().amax(dim=-1) <= 15)
    )
    scale = torch.where(on_grid, grid_step, minmax_step)
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)  # a constant group: q = 0
    q = torch.round((g - low[..., None]) / safe[..., None]).clamp_(0, 15).to(torch.uint8)
    return q.view(N, K), scale, low


class QuantizedLinear(nn.Module):
    """What the int8 and int4 layers share: shape, bias and dtype handling around a kernel that
    multiplies (rows, K) activations by the packed weights into (rows, N). It stands in for an
    nn.Linear (or a SplitLinear) in the model, with the same calls, so the model needs no
    special case for it."""

    bias: Tensor | None

    def __init__(self, linear: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype))
        self.dtype = dtype

    def matmul(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        y = self.matmul(x.reshape(-1, shape[-1]).to(self.dtype))  # (rows, N)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features).to(x.dtype)

    def halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The two halves of the output, as model.gpt.SplitLinear gives them (SwiGLU's gate
        and up): here one kernel call and a split, since the packed weights go in whole."""
        first, second = self(x).chunk(2, dim=-1)
        return first, second


class Int8Linear(QuantizedLinear):
    """A Linear layer with int8 weights, one float scale per output channel."""

    q: Tensor  # (N, K) int8
    scale: Tensor  # (N,)

    def __init__(self, linear: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__(linear, dtype)
        q, scale = int8_codes(linear.weight)
        self.register_buffer("q", q)
        self.register_buffer("scale", scale.to(dtype))

    def matmul(self, x: Tensor) -> Tensor:
        return torch._weight_int8pack_mm(x, self.q, self.scale)


class Int4Linear(QuantizedLinear):
    """A Linear layer with 4-bit weights in groups of INT4_GROUP inputs, packed two per byte
    in the tiled layout of PyTorch's CPU int4 kernel."""

    packed: Tensor  # (N, K/2) uint8
    scales_and_zeros: Tensor  # (K/group, N, 2)

    def __init__(self, linear: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__(linear, dtype)
        q, scale, low = int4_codes(linear.weight)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
        self.register_buffer("packed", packed)
        # The kernel computes (q - 8) · scale + zero, so zero = low + 8 · scale.
        scales_and_zeros = torch.stack((scale.t(), (low + 8 * scale).t()), dim=-1)
        self.register_buffer("scales_and_zeros", scales_and_zeros.to(dtype).contiguous())

    def matmul(self, x: Tensor) -> Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(
            x, self.packed, INT4_GROUP, self.scales_and_zeros
        )


def quantize_model(model: GPT, mode: str, dtype: torch.dtype) -> GPT:
    """Replace the Linear layers of every block by int8 or int4 ones, in place, for inference.

    `dtype` is the activations' dtype (the model should already be cast to it). The model can
    no longer be trained or saved as a checkpoint; reload the run for that.
    """
    if mode not in QUANTIZE_MODES:
        raise ScratchLMError(f"unknown quantisation {mode!r}; use int8 or int4")
    device = model.lm_head.weight.device
    if device.type != "cpu":
        raise ScratchLMError(
            f"--quantize runs on the CPU only (its kernels are PyTorch's CPU ones); on {device} "
            "use --dtype bfloat16 instead"
        )
    layer: type[Int8Linear] | type[Int4Linear] = Int8Linear if mode == "int8" else Int4Linear
    linears = [
        (f"h.{i}.{part}.{name}", parent, name, child)
        for i, block in enumerate(model.blocks)
        for part, parent in (("attn", block.attn), ("mlp", block.mlp))
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear)
    ]
    for where, _, _, child in linears:  # check them all before changing any
        if mode == "int4" and (child.in_features % INT4_GROUP or child.out_features % 16):
            raise ScratchLMError(
                f"int4 needs layers with inputs in multiples of {INT4_GROUP} and outputs in "
                f"multiples of 16, but {where} has {child.in_features} inputs and "
                f"{child.out_features} outputs; use --quantize int8"
            )
    for _, parent, name, child in linears:
        setattr(parent, name, layer(child, dtype))
    model.eval()
    return model
