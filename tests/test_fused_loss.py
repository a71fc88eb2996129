"""The fused, chunked LM head + cross-entropy (model/fused_loss.py) against the plain one, and
the training options that use it (train.fused_loss, train.compile)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch

from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig
from scratchlm.model.fused_loss import chunk_rows, linear_cross_entropy
from scratchlm.train.config import TrainConfig
from scratchlm.train.step import forward_backward, make_loss_fn


def tiny_gpt(**overrides: Any) -> GPT:
    torch.manual_seed(0)
    config = dict(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=32)
    return GPT(ModelConfig(**{**config, **overrides}))  # type: ignore[arg-type]


def grads(model: GPT) -> dict[str, torch.Tensor]:
    result = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return result


@pytest.mark.parametrize("softcap", [0.0, 5.0])
@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_same_loss_and_gradients_as_forward(softcap: float, chunk: int) -> None:
    model = tiny_gpt(logit_softcap=softcap)
    idx = torch.randint(0, 97, (4, 16))
    targets = torch.randint(0, 97, (4, 16))
    targets[0, :9] = -1  # ignored positions, across a chunk boundary
    _, plain = model(idx, targets)
    assert plain is not None
    plain.backward()
    expected = grads(model)

    x = model.transformer["ln_f"](model.hidden_states(idx)).view(-1, 32)
    fused = linear_cross_entropy(x, model.lm_head.weight, targets.view(-1), softcap, chunk)
    fused.backward()
    got = grads(model)
    assert torch.allclose(fused, plain, atol=1e-6)
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=1e-6, rtol=1e-4), name


def test_training_loss_is_forwards_loss_and_scales_with_the_incoming_gradient() -> None:
    model = tiny_gpt()
    idx, targets = torch.randint(0, 97, (2, 16)), torch.randint(0, 97, (2, 16))
    (3.0 * model(idx, targets)[1]).backward()  # type: ignore[operator]
    expected = grads(model)
    (3.0 * model.training_loss(idx, targets)).backward()
    for name, grad in grads(model).items():
        assert torch.allclose(grad, expected[name], atol=1e-6, rtol=1e-4), name


def test_all_targets_ignored_gives_zero_not_nan() -> None:
    model = tiny_gpt()
    loss = model.training_loss(torch.zeros(1, 4, dtype=torch.long), torch.full((1, 4), -1))
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bfloat16_autocast_runs_the_head_in_bfloat16_and_agrees() -> None:
    model = tiny_gpt()
    idx, targets = torch.randint(0, 97, (2, 16)), torch.randint(0, 97, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, plain = model(idx, targets)
        fused = model.training_loss(idx, targets)
    assert fused.dtype == torch.float32
    assert abs(float(fused.detach()) - float(plain)) < 1e-3  # type: ignore[arg-type]
    fused.backward()
    assert model.lm_head.weight.grad is not None
    assert model.lm_head.weight.grad.dtype == torch.float32


def test_chunks_are_sized_by_the_vocabulary() -> None:
    assert chunk_rows(8192) == 512
    assert chunk_rows(50257) == 128  # at least 128 rows, for efficient matmuls
    assert chunk_rows(97) >= 40_000


@pytest.mark.parametrize("fused_loss", [True, False])
def test_the_loop_uses_the_configured_loss(fused_loss: bool) -> None:
    model = tiny_gpt()
    idx, targets = torch.randint(0, 97, (2, 16)), torch.randint(0, 97, (2, 16))
    loss_fn = make_loss_fn(model, TrainConfig(fused_loss=fused_loss))
    loss = forward_backward(loss_fn, lambda: (idx, targets), 2, contextlib.nullcontext())
    _, expected = model(idx, targets)
    assert abs(loss - float(expected)) < 1e-5  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.parametrize("fused_loss", [True, False])
def test_compiled_step_matches_eager(fused_loss: bool) -> None:
    eager, compiled = tiny_gpt(), tiny_gpt()
    idx, targets = torch.randint(0, 97, (2, 16)), torch.randint(0, 97, (2, 16))
    no_autocast = contextlib.nullcontext()
    for model, compile in ((eager, False), (compiled, True)):
        loss_fn = make_loss_fn(model, TrainConfig(fused_loss=fused_loss, compile=compile))
        forward_backward(loss_fn, lambda: (idx, targets), 1, no_autocast)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None
        assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), name
