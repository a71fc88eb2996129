"""LoRA (finetune/lora.py, finetune/lora_peft.py) on tiny GPTs built here: the update is zero at
first, only the adapters train, a target adapts exactly its rows of a stacked matrix, merging is
exact both ways, adapters save, load and refuse another base, and `peft` loads the export onto
our Hugging Face export with the same logits."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from random_models import random_gpt
from scratchlm.core.errors import ScratchLMError
from scratchlm.finetune.lora import (
    LoRALinear,
    adaptable_layers,
    apply_lora,
    load_lora,
    load_lora_state_dict,
    lora_adapters,
    lora_config,
    lora_parameters,
    lora_state_dict,
    merge_and_unload_lora,
    merge_lora,
    read_lora_config,
    save_lora,
    select_layers,
    unmerge_lora,
)
from scratchlm.finetune.lora_peft import export_peft_adapter
from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig

BASE: dict[str, Any] = dict(vocab_size=257, block_size=32, n_layer=2, n_head=4, n_embd=32)
LLAMA: dict[str, Any] = dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", bias=False)
SHAPES: dict[str, dict[str, Any]] = {
    "gpt2": {},
    "llama-gqa": dict(LLAMA, n_kv_head=2, tie_embeddings=False),
}
# Shapes only the PEFT export is tested on (the rest of LoRA does not depend on them).
PEFT_SHAPES: dict[str, dict[str, Any]] = {
    **SHAPES,
    "qwen3-gqa": dict(LLAMA, qk_norm=True, n_kv_head=2),
    "gpt_neox": dict(pos_encoding="rope", mlp="gelu", bias=False),
    "gpt_neox-bias": dict(pos_encoding="rope", mlp="gelu", tie_embeddings=False),
    "stablelm": dict(pos_encoding="rope", mlp="swiglu", bias=False, n_kv_head=2),
}


def tiny_gpt(shape: str = "llama-gqa", seed: int = 0) -> GPT:
    return random_gpt(ModelConfig(**{**BASE, **PEFT_SHAPES[shape]}), seed)


def randomize_adapters(model: GPT, seed: int = 1) -> None:
    """Non-zero B (it starts at zero), large enough that the update shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in lora_adapters(model).values():
            adapter.B.copy_(torch.randn(adapter.B.shape, generator=g) * 0.2)


def tokens(n: int = 12, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, 257, (2, n), generator=torch.Generator().manual_seed(seed))


def logits(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(idx)
    return out.logits if hasattr(out, "logits") else out[0]


@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_new_adapter_changes_nothing(shape: str) -> None:
    model, idx = tiny_gpt(shape), tokens()
    before = logits(model, idx)
    apply_lora(model, "all", r=4, alpha=8, quiet=True)
    assert all(float(a.B.detach().abs().sum()) == 0 for a in lora_adapters(model).values())
    assert all(float(a.A.detach().abs().sum()) > 0 for a in lora_adapters(model).values())
    assert torch.equal(logits(model, idx), before)  # B = 0: exactly the base model


def test_a_kaiming_uniform_and_scale_alpha_over_r() -> None:
    model = tiny_gpt()
    summary = apply_lora(model, ["q"], r=4, alpha=12, quiet=True)
    adapter = lora_adapters(model)["transformer.h.0.attn.q"]
    assert adapter.scale == 3.0 == summary.config.scale
    bound = 1 / math.sqrt(32)  # kaiming_uniform_(a=sqrt(5)) over fan_in 32: U(-1/sqrt(32), ...)
    assert float(adapter.A.detach().abs().max()) <= bound
    assert float(adapter.A.detach().abs().max()) > 0.8 * bound


def test_only_adapter_weights_get_gradients(capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_gpt("gpt2").train()
    summary = apply_lora(model, ["q", "v", "down"], r=2, alpha=4)
    assert str(summary) in capsys.readouterr().err  # printed, as a status line
    randomize_adapters(model)  # so that A gets a gradient too (it is B's input)
    idx = tokens()
    model.training_loss(idx, idx).backward()  # the training loop's fused loss
    trainable = {id(p) for p in lora_parameters(model)}
    for name, p in model.named_parameters():
        if id(p) in trainable:
            assert p.requires_grad and p.grad is not None and float(p.grad.abs().sum()) > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name
    # q and v: 2 x (2 x 32 + 32 x 2); down: 2 x 128 + 32 x 2 ... in each of 2 blocks
    per_block = 2 * (2 * 32 + 32 * 2) + (2 * 128 + 32 * 2)
    assert summary.trainable == 2 * per_block == sum(p.numel() for p in lora_parameters(model))
    assert summary.per_layer == {"q": 256, "v": 256, "down": 640}
    assert summary.total == model.num_parameters()
    assert "on 6 layers (q 256, v 256, down 640): 1,152 trainable parameters of" in str(summary)


@pytest.mark.parametrize("kind", ["q", "k", "v", "gate", "up"])
def test_a_target_in_a_stacked_matrix_adapts_only_its_rows(kind: str) -> None:
    """c_attn stacks q | k | v (k and v 16 rows each with 2 of 4 heads), c_fc gate | up: the
    output of the adapted layer moves by exactly scale · B A x, every other row not at all."""
    model = tiny_gpt("llama-gqa")
    layer = next(x for x in adaptable_layers(model) if x.name.startswith("transformer.h.0.")
                 and x.name.endswith(f".{kind}"))  # fmt: skip
    base = model.get_submodule(layer.module)
    x = torch.randn(3, base.in_features, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = base(x)
        first, second = model.blocks[0].mlp.c_fc.halves(x)
    apply_lora(model, [layer.name], r=2, alpha=2, quiet=True)
    randomize_adapters(model)
    adapted = model.get_submodule(layer.module)
    assert isinstance(adapted, LoRALinear) and adapted.weight is base.weight
    adapter = lora_adapters(model)[layer.name]
    with torch.no_grad():
        after = adapted(x)
        delta = x @ adapter.A.T @ adapter.B.T  # scale 1
    expected = before.clone()
    expected[:, layer.start : layer.stop] += delta
    assert torch.allclose(after, expected, atol=1e-6)
    assert torch.equal(after[:, : layer.start], before[:, : layer.start])
    assert torch.equal(after[:, layer.stop :], before[:, layer.stop :])
    if kind in ("gate", "up"):  # SwiGLU calls halves(), which must add the same update
        with torch.no_grad():
            new_first, new_second = adapted.halves(x)
        assert torch.allclose(torch.cat([new_first, new_second], -1), expected, atol=1e-6)
        assert torch.equal(new_second if kind == "gate" else new_first,
                           second if kind == "gate" else first)  # fmt: skip


def test_targets_by_name_alias_group_and_pattern() -> None:
    model = tiny_gpt("llama-gqa")

    def names(targets: Any) -> list[str]:
        return [x.name.removeprefix("transformer.h.") for x in select_layers(model, targets)]

    assert names("q,v") == ["0.attn.q", "0.attn.v", "1.attn.q", "1.attn.v"]
    assert names(["q_proj", "down_proj"]) == ["0.attn.q", "0.mlp.down", "1.attn.q", "1.mlp.down"]
    assert names("mlp") == ["0.mlp.gate", "0.mlp.up", "0.mlp.down", "1.mlp.gate", "1.mlp.up",
                            "1.mlp.down"]  # fmt: skip
    assert names("transformer.h.1.attn.*") == ["1.attn.q", "1.attn.k", "1.attn.v", "1.attn.o"]
    assert len(names("all")) == 14


def test_targets_that_match_no_layer_list_the_layers_there_are() -> None:
    model = tiny_gpt("gpt2")
    with pytest.raises(ScratchLMError) as e:
        apply_lora(model, ["q", "gate"], quiet=True)  # a GELU MLP has no gate
    message = str(e.value)
    assert "\n" not in message
    assert "'gate' matches no layer" in message
    assert "transformer.h.N.{attn.q, attn.k, attn.v, attn.o, mlp.up, mlp.down} for N = 0..1" in (
        message
    )
    assert not lora_layers_of(model)  # nothing was changed
    for bad, words in [
        (dict(targets=[]), "no LoRA targets"),
        (dict(targets="q", r=0), "rank r"),
        (dict(targets="q", alpha=-1.0), "alpha"),
        (dict(targets="q", dropout=1.0), "dropout"),
    ]:
        with pytest.raises(ScratchLMError, match=words):
            apply_lora(model, quiet=True, **bad)
    apply_lora(model, "q", quiet=True)
    with pytest.raises(ScratchLMError, match="already has LoRA adapters"):
        apply_lora(model, "v", quiet=True)


def lora_layers_of(model: GPT) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, LoRALinear)]


@pytest.mark.parametrize("shape", list(SHAPES))
def test_merge_and_unmerge(shape: str) -> None:
    model, idx = tiny_gpt(shape), tokens()
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_lora(model, "all", r=4, alpha=8, dropout=0.1, quiet=True)
    randomize_adapters(model)
    adapted = logits(model, idx)
    assert not torch.allclose(adapted, logits(tiny_gpt(shape), idx), atol=1e-3)
    assert merge_lora(model) == 4 * 2  # c_attn, c_proj, c_fc, c_proj in each block
    assert torch.allclose(logits(model, idx), adapted, rtol=0, atol=1e-5)
    unmerge_lora(model)
    for name, p in model.named_parameters():
        if name in weights:
            assert torch.allclose(p, weights[name], rtol=0, atol=1e-6), name
    assert torch.allclose(logits(model, idx), adapted, rtol=0, atol=1e-5)
    # Merged and unloaded: a plain GPT (state dict of the base's names) with the same logits.
    merge_and_unload_lora(model)
    assert not lora_layers_of(model) and lora_config(model) is None
    assert set(model.state_dict()) == set(tiny_gpt(shape).state_dict())
    assert torch.allclose(logits(model, idx), adapted, rtol=0, atol=1e-5)


def test_dropout_on_the_adapter_input_in_training_only() -> None:
    model, idx = tiny_gpt(), tokens()
    apply_lora(model, "q", r=2, alpha=2, dropout=0.5, quiet=True)
    randomize_adapters(model)
    assert torch.equal(logits(model, idx), logits(model, idx))  # eval: no dropout
    base = tiny_gpt()
    model.train(), base.train()
    assert not torch.allclose(logits(model, idx), logits(model, idx))
    # Only the update is dropped out: with B = 0 again, training mode is the base model.
    with torch.no_grad():
        for adapter in lora_adapters(model).values():
            adapter.B.zero_()
    assert torch.equal(logits(model, idx), logits(base, idx))


def test_training_through_merged_weights_is_refused() -> None:
    model = tiny_gpt()
    apply_lora(model, "q", quiet=True)
    merge_lora(model)
    model.train()
    with pytest.raises(ScratchLMError, match="unmerge_lora"):
        model(tokens())


def test_save_and_load_onto_the_base(tmp_path: Path) -> None:
    model, idx = tiny_gpt(), tokens()
    apply_lora(model, ["q", "v", "mlp"], r=3, alpha=6, dropout=0.05, base_name="tiny-base",
               quiet=True)  # fmt: skip
    randomize_adapters(model)
    expected = logits(model, idx)
    folder = save_lora(model, tmp_path / "adapter")
    config = json.loads((folder / "lora.json").read_text())
    assert (config["targets"], config["r"], config["alpha"]) == (["q", "v", "mlp"], 3, 6.0)
    assert config["base"]["name"] == "tiny-base" and len(config["base"]["fingerprint"]) == 16
    assert config["base"]["shape"]["n_kv_head"] == 2
    assert len(config["layers"]) == 2 * 5
    # The adapter alone: 2 tensors per layer, none of the base's.
    from safetensors.torch import load_file

    saved = load_file(folder / "lora.safetensors")
    assert len(saved) == 2 * 10 and "transformer.h.1.mlp.gate.lora_B" in saved

    fresh = tiny_gpt()
    summary = load_lora(fresh, folder)
    assert summary.config.base.name == "tiny-base"
    assert torch.allclose(logits(fresh, idx), expected, rtol=0, atol=1e-6)
    merged = tiny_gpt()
    load_lora(merged, folder, merge=True)
    assert torch.allclose(logits(merged, idx), expected, rtol=0, atol=1e-5)
    # Resuming: the same adapters, their weights replaced (also while merged).
    unmerge_lora(merged)
    randomize_adapters(merged, seed=9)
    merge_lora(merged)
    assert not torch.allclose(logits(merged, idx), expected, rtol=0, atol=1e-3)
    load_lora(merged, folder)
    assert torch.allclose(logits(merged, idx), expected, rtol=0, atol=1e-5)
    # A merged model saves the same adapter.
    save_lora(merged, tmp_path / "again")
    assert read_lora_config(tmp_path / "again") == read_lora_config(folder)
    with pytest.raises(ScratchLMError, match="already exists"):
        save_lora(model, folder)


def test_an_adapter_for_another_base_is_refused_by_name(tmp_path: Path) -> None:
    model = tiny_gpt(seed=0)
    apply_lora(model, "q", base_name="runs/base-a", quiet=True)
    folder = save_lora(model, tmp_path / "adapter")
    # Same shape, other weights.
    with pytest.raises(ScratchLMError) as e:
        load_lora(tiny_gpt(seed=5), folder, base_name="runs/base-b")
    message = str(e.value)
    assert "\n" not in message
    assert "'runs/base-a'" in message and "'runs/base-b'" in message
    assert "other weights" in message
    # Another shape.
    with pytest.raises(ScratchLMError, match=r"base-a'.*2 layers, width 32.*not for 'gpt2-tiny'"):
        load_lora(tiny_gpt("gpt2"), folder, base_name="gpt2-tiny")
    # The same weights in bfloat16 are the same base.
    load_lora(tiny_gpt(seed=0).to(torch.bfloat16), folder)


def test_damaged_adapters_are_one_line(tmp_path: Path) -> None:
    model = tiny_gpt()
    apply_lora(model, "q", quiet=True)
    folder = save_lora(model, tmp_path / "adapter")
    with pytest.raises(ScratchLMError, match="not a scratchlm LoRA adapter"):
        load_lora(tiny_gpt(), tmp_path)
    with pytest.raises(ScratchLMError, match="no such LoRA adapter folder"):
        load_lora(tiny_gpt(), tmp_path / "nowhere")
    other = tiny_gpt()
    apply_lora(other, "q,v", quiet=True)
    with pytest.raises(
        ScratchLMError, match=r"r=8, alpha=16 on 2 layers, but this model's .* on 4"
    ):
        load_lora(other, folder)
    state = lora_state_dict(model)
    del state["transformer.h.1.attn.q.lora_B"]
    with pytest.raises(ScratchLMError, match=r"ckpt is missing transformer.h.1.attn.q.lora_B \(1 "):
        load_lora_state_dict(model, state, where="ckpt")
    (folder / "lora.safetensors").write_bytes(b"garbage")
    with pytest.raises(ScratchLMError, match="truncated or corrupted"):
        load_lora(tiny_gpt(), folder)
    (folder / "lora.json").write_text("{")
    with pytest.raises(ScratchLMError, match="not valid JSON"):
        load_lora(tiny_gpt(), folder)


# --- PEFT -------------------------------------------------------------------------------------


def _tiny_run(tmp_path: Path, model: GPT) -> Path:
    from scratchlm.runs.imported import save_imported_run
    from scratchlm.tokenizer import BPETokenizer

    tokenizer = BPETokenizer(special_tokens={"<|endoftext|>": 256})  # 257 tokens, no merges
    return save_imported_run(tmp_path / "run", model, tokenizer, source="test")


@pytest.mark.parametrize(
    ("shape", "targets"),
    [("llama-gqa", ["q", "k", "v", "o", "gate", "up", "down"]), ("llama-gqa", ["transformer.h.1.attn.q", "v"]),
     ("gpt2", ["q", "v", "o", "up", "down"]), ("gpt2", ["transformer.h.0.attn.k"]),
     ("qwen3-gqa", ["q", "k", "v", "o", "gate", "up", "down"]), ("stablelm", ["q", "v", "gate"]),
     ("gpt_neox", ["q", "k", "v", "o", "up", "down"]), ("gpt_neox-bias", ["k", "transformer.h.1.attn.q"])],
)  # fmt: skip
def test_peft_loads_the_export_onto_our_hf_export(
    shape: str, targets: list[str], tmp_path: Path
) -> None:
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from scratchlm.runs.hf import export_hf_run

    model = tiny_gpt(shape)
    run = _tiny_run(tmp_path, model)
    export_hf_run(run, tmp_path / "hf")
    apply_lora(model, targets, r=2, alpha=5, quiet=True)
    randomize_adapters(model)
    export_peft_adapter(model, tmp_path / "peft", base_model_name_or_path=str(tmp_path / "hf"))
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 2 and config["lora_alpha"] == 5

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    idx = tokens(16)
    base = logits(hf, idx)
    assert not torch.allclose(base, logits(model, idx), atol=1e-3)  # the adapter matters
    with_adapter = peft.PeftModel.from_pretrained(hf, tmp_path / "peft").eval()
    assert torch.allclose(logits(with_adapter, idx), logits(model, idx), rtol=0, atol=1e-5)
    if shape == "llama-gqa" and len(targets) == 7:
        from safetensors.torch import load_file

        names = set(load_file(tmp_path / "peft" / "adapter_model.safetensors"))
        assert "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight" in names
        assert "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight" in names
        assert config["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                            "up_proj", "down_proj"]  # fmt: skip


def test_peft_export_needs_an_hf_shaped_model(tmp_path: Path) -> None:
    model = GPT(ModelConfig(**{**BASE, "mlp": "relu2"}))
    apply_lora(model, "q", quiet=True)
    with pytest.raises(ScratchLMError, match="no Hugging Face equivalent"):
        export_peft_adapter(model, tmp_path / "peft")
    with pytest.raises(ScratchLMError, match="no LoRA adapters"):
        export_peft_adapter(tiny_gpt(), tmp_path / "peft")
