"""Position information for the transformer: sinusoidal tables and rotary embeddings (RoPE).

Attention by itself is blind to order (it treats its keys as a set), so every model adds
position somewhere. GPT-2 learns a table (an nn.Embedding, in gpt.py); this file holds the two
that are computed from a formula instead:

- sinusoidal (Vaswani et al., 2017, section 3.5): a fixed (max_len, C) table added to the token
  embeddings, PE(pos, 2i) = sin(pos / 10000^(2i/C)) and PE(pos, 2i+1) = cos(same angle);
- RoPE (Su et al., 2021): q and k of every head are rotated by an angle proportional to their
  position, so q·k depends only on the distance between them. Llama 3 stretches the slow
  frequencies for long contexts (`llama3_inv_freq`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

SINUSOIDAL_BASE = 10000.0  # the constant of "Attention Is All You Need"


def sinusoidal_encoding(max_len: int, dim: int, base: float = SINUSOIDAL_BASE) -> Tensor:
    """The (max_len, dim) table the model adds to its token embeddings: even channels 2i hold
    sin(pos · base^(-2i/dim)), odd channels 2i+1 the cosine of the same angle."""
    if dim % 2:
        raise ValueError(f"the sinusoidal encoding needs an even width, got {dim}")
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (dim/2,)
    # float64 for the angles: pos · freq reaches thousands of radians, where float32's sin
    # would be off in the third decimal; the table is cast once at the end.
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)  # (L, dim/2)
    table = torch.empty(max_len, dim, dtype=torch.float64)
    table[:, 0::2] = angles.sin()
    table[:, 1::2] = angles.cos()
    return table.float()


def sinusoidal_table(
    positions: Sequence[int], pair_indices: Sequence[int], dim: int, base: float = SINUSOIDAL_BASE
) -> list[list[tuple[float, float]]]:
    """PE(pos, 2i) and PE(pos, 2i+1) for each pos in `positions` and each i in `pair_indices`.

    Returns rows[p][k] = (sin(pos_p / base^(2 i_k / dim)), cos(same)), the pair of channels
    2·i_k and 2·i_k + 1 at position pos_p: the table printed in the book. Computed in float64
    from the formula, so it is the reference that `sinusoidal_encoding` is tested against.
    """
    if dim % 2 or dim < 2:
        raise ValueError(f"dim must be a positive even number, got {dim}")
    bad = [i for i in pair_indices if not 0 <= i < dim // 2]
    if bad:
        raise ValueError(f"pair indices must be in [0, {dim // 2}) for dim={dim}, got {bad}")
    rows = []
    for pos in positions:
        row = []
        for i in pair_indices:
            angle = pos / base ** (2 * i / dim)
            row.append((math.sin(angle), math.cos(angle)))
        rows.append(row)
    return rows


def rope_inv_freq(head_dim: int, base: float) -> Tensor:
    """The D/2 rotation speeds of RoPE: pair i turns by base^(-2i/D) radians per position."""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def llama3_inv_freq(
    inv_freq: Tensor,
    factor: float,
    low_freq_factor: float,
    high_freq_factor: float,
    original_context: int,
) -> Tensor:
    """Llama 3's RoPE scaling: slow the low frequencies down by `factor`, keep the high ones.

    A pair whose wavelength (2π / freq, in positions) is shorter than original_context /
    high_freq_factor turns many times within the trained context and encodes local order: it is
    kept. One whose wavelength is longer than original_context / low_freq_factor never completed
    a turn in training: it is divided by `factor`, so the longer context maps into angles the
    model has seen. In between, the two are blended linearly in original_context / wavelength.
    """
    wavelength = 2 * math.pi / inv_freq
    # 0 at the long-wavelength end of the band, 1 at the short one.
    smooth = (original_context / wavelength - low_freq_factor) / (
        high_freq_factor - low_freq_factor
    )
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    scaled = torch.where(
        wavelength > original_context / low_freq_factor, inv_freq / factor, blended
    )
    return torch.where(wavelength < original_context / high_freq_factor, inv_freq, scaled)


def rope_cos_sin(inv_freq: Tensor, max_len: int) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotation angles position · inv_freq, each (max_len, D/2)."""
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq.float())
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate q or k (B, H, T, D) by the angles cos, sin (T, D/2).

    "Rotate-half" layout (as GPT-NeoX and LLaMA in Hugging Face): channel i is paired with
    channel i + D/2, not with its neighbour i + 1. Either layout works when used consistently;
    this one needs only two slices instead of a strided reshape, and it is the layout of
    Hugging Face's Llama checkpoints, so their q and k weights load unchanged.
    """
    half = x.size(-1) // 2
    # Rotate in float32 and cast back, so that bfloat16 activations keep accurate angles.
    x32 = x.float()
    x1, x2 = x32[..., :half], x32[..., half:]  # (B, H, T, D/2) each
    rotated = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.type_as(x)
