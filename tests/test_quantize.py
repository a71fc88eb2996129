"""Weight-only int8 / int4 quantisation for CPU decoding (inference/quantize.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.core.errors import ScratchLMError
from scratchlm.inference.dtype import cast_for_inference, resolve_inference_dtype
from scratchlm.inference.generate import generate_batch
from scratchlm.inference.quantize import (
    INT4_GROUP,
    Int4Linear,
    Int8Linear,
    int4_codes,
    int8_codes,
    quantize_model,
)
from scratchlm.model import GPT
from scratchlm.model.config import model_preset


def q4_1_weight(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """A weight as a GGUF Q4_1 file dequantises to: per block of 32, d · q + m with float16
    d and m and codes q in 0..15 (not every block uses code 0 or 15)."""
    g = torch.Generator().manual_seed(seed)
    blocks = cols // INT4_GROUP
    d = (torch.rand(rows, blocks, 1, generator=g) * 0.02 + 1e-3).half().float()
    m = (-torch.rand(rows, blocks, 1, generator=g) * 0.1).half().float()
    q = torch.randint(0, 16, (rows, blocks, INT4_GROUP), generator=g)
    q[: rows // 2] = q[: rows // 2].clamp(2, 13)  # blocks that do not span the whole range
    return (d * q + m).view(rows, cols)


def dequantise_int4(q: torch.Tensor, scale: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    N, K = q.shape
    blocks = q.view(N, K // INT4_GROUP, INT4_GROUP).float()
    return (blocks * scale[..., None] + low[..., None]).view(N, K)


def test_int4_codes_of_a_q4_1_weight_are_exact() -> None:
    w = q4_1_weight(64, 128)
    q, scale, low = int4_codes(w)
    assert q.dtype == torch.uint8 and int(q.max()) <= 15
    assert torch.equal(dequantise_int4(q, scale, low), w)


def test_int4_codes_of_any_weight_round_to_the_nearest_level() -> None:
    w = torch.randn(48, 96, generator=torch.Generator().manual_seed(1))
    q, scale, low = int4_codes(w)
    error = (dequantise_int4(q, scale, low) - w).abs().view(48, -1, INT4_GROUP)
    assert (error <= scale[..., None] / 2 + 1e-6).all()
    # min-max grid: each group's smallest and largest weight are levels 0 and 15 exactly
    assert torch.equal(q.view(48, -1, INT4_GROUP).amin(-1), torch.zeros(48, 3, dtype=torch.uint8))
    assert (q.view(48, -1, INT4_GROUP).amax(-1) == 15).all()


def test_int4_codes_of_a_constant_group() -> None:
    w = torch.full((8, 32), 0.25)
    q, scale, low = int4_codes(w)
    assert torch.equal(dequantise_int4(q, scale, low), w)


def test_int8_codes_round_to_the_nearest_level() -> None:
    w = torch.randn(40, 70, generator=torch.Generator().manual_seed(2))
    w[3] = 0  # an all-zero row must not divide by zero
    q, scale = int8_codes(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127
    error = (q.float() * scale[:, None] - w).abs()
    assert (error <= scale[:, None] / 2 + 1e-6).all()
    assert torch.equal(q[3], torch.zeros(70, dtype=torch.int8))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("layer", [Int4Linear, Int8Linear])
def test_quantised_linear_equals_its_dequantised_matmul(
    layer: type[Int4Linear] | type[Int8Linear], bias: bool
) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(96, 80, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(q4_1_weight(80, 96))
    quantised = layer(linear, torch.bfloat16)
    if layer is Int4Linear:
        dense = dequantise_int4(*int4_codes(linear.weight))
    else:
        q, scale = int8_codes(linear.weight)
        dense = q.float() * scale[:, None]
    x = torch.randn(2, 3, 96).bfloat16()
    with torch.inference_mode():
        ours = quantised(x)
        reference = F.linear(x.float(), dense, None if linear.bias is None else linear.bias)
    assert ours.shape == (2, 3, 80) and ours.dtype == torch.bfloat16
    # bf16 activations, scales and output: a few bf16 rounding steps apart at most
    torch.testing.assert_close(ours.float(), reference, rtol=2e-2, atol=2e-2)


def quantisable_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    config = model_preset("llama-tiny", vocab_size=128, mlp_hidden=192)
    model = GPT(config).eval()
    with torch.no_grad():  # sharper weights, so greedy decoding is not a coin toss
        for block in model.blocks:
            block.mlp.c_proj.weight.mul_(4)
    return model


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantised_model_decodes_like_the_bf16_model(mode: str) -> None:
    dense = cast_for_inference(quantisable_model(), torch.bfloat16)
    quantised = quantize_model(
        cast_for_inference(quantisable_model(), torch.bfloat16), mode, torch.bfloat16
    )
    assert sum(isinstance(m, Int4Linear | Int8Linear) for m in quantised.modules()) == 8
    assert not any(
        isinstance(m, nn.Linear) and m is not quantised.lm_head for m in quantised.modules()
    )
    idx = torch.randint(0, 128, (3, 20), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ours, _ = quantised(idx)
        reference, _ = dense(idx)
    # Close to the unquantised model, not equal: quantisation moves the weights a little.
    agree = (ours.argmax(-1) == reference.argmax(-1)).float().mean().item()
    assert agree > 0.8, agree
    rel = (ours.float() - reference.float()).norm() / reference.float().norm()
    assert rel < (0.05 if mode == "int8" else 0.25), rel
    # The KV-cache engine runs on quantised layers: batched equals one by one.
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9]]
    batch = generate_batch(quantised, prompts, max_new_tokens=6, temperature=0.0)
    alone = [generate_batch(quantised, [p], max_new_tokens=6, temperature=0.0)[0] for p in prompts]
    assert batch == alone


def test_quantize_bad_input() -> None:
    model = quantisable_model()
    with pytest.raises(ScratchLMError, match="unknown quantisation 'int3'"):
        quantize_model(model, "int3", torch.bfloat16)
    narrow = GPT(model_preset("llama-tiny", n_embd=48, n_head=4, n_kv_head=2, vocab_size=64))
    with pytest.raises(
        ScratchLMError,
        match=r"h\.0\.attn\.c_attn has 48 inputs and 96 outputs; use --quantize int8",
    ):
        quantize_model(narrow, "int4", torch.bfloat16)
    odd_mlp = GPT(model_preset("llama-tiny", mlp_hidden=100, vocab_size=64))
    with pytest.raises(ScratchLMError, match=r"h\.0\.mlp\.c_fc has 64 inputs and 200 outputs"):
        quantize_model(odd_mlp, "int4", torch.bfloat16)
    quantize_model(odd_mlp, "int8", torch.bfloat16)  # int8 has no groups: any width works


def test_auto_dtype_with_quantisation_is_bfloat16() -> None:
    cpu = torch.device("cpu")
    assert resolve_inference_dtype("auto", cpu, quantize="int4") == torch.bfloat16
    assert resolve_inference_dtype("float32", cpu, quantize="int4") == torch.float32
