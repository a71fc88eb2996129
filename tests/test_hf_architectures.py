"""The Hugging Face architectures beyond GPT-2 and Llama: Qwen3 (QK-norm), Arcee (ReLU²) and
GPT-NeoX (RoPE with LayerNorm and GELU, the demo recipe's shape). Each exported on a tiny random model, loaded by
transformers' AutoModelForCausalLM in float32 with logits equal to ours to 1e-5 and the same
greedy tokens, and imported back with identical weights. Nothing is downloaded."""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from random_models import logits_of, random_gpt
from scratchlm.core.errors import ScratchLMError
from scratchlm.inference.generate import generate_tokens
from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig, model_config_from_table, model_preset
from scratchlm.model.hf_arcee import model_config_to_arcee_config
from scratchlm.model.hf_format import (
    HF_CLASSES,
    gpt_from_hf_state_dict,
    hf_architecture,
    hf_config_to_model_config,
    hf_export_problem,
    load_hf_model,
    save_hf_model,
)
from scratchlm.model.hf_neox import model_config_to_neox_config, neox_config_to_model_config
from scratchlm.model.hf_qwen3 import model_config_to_qwen3_config

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parent.parent
BASE: dict[str, Any] = dict(vocab_size=97, block_size=48, n_layer=2, n_head=4, n_embd=32)
QWEN3: dict[str, Any] = dict(
    pos_encoding="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, bias=False
)
NEOX: dict[str, Any] = dict(pos_encoding="rope", norm="layernorm", mlp="gelu")
STABLELM: dict[str, Any] = dict(pos_encoding="rope", norm="layernorm", mlp="swiglu", bias=False)
ARCEE: dict[str, Any] = dict(pos_encoding="rope", norm="rmsnorm", mlp="relu2", bias=False)

SHAPES: dict[str, dict[str, Any]] = {
    "qwen3-mha-tied": dict(QWEN3),
    "qwen3-gqa-untied": dict(QWEN3, n_kv_head=2, tie_embeddings=False, rope_base=500000.0),
    "qwen3-mqa-eps": dict(QWEN3, n_kv_head=1, norm_eps=1e-6, mlp_hidden=40),
    "arcee-mha-tied": dict(ARCEE),
    "arcee-gqa-untied": dict(ARCEE, n_kv_head=2, tie_embeddings=False, mlp_hidden=48,
                             rope_base=500000.0),
    "arcee-mqa-llama3-rope": dict(ARCEE, n_kv_head=1, norm_eps=1e-6, rope_scaling="llama3",
                                  rope_factor=4.0, rope_original_context=16),
    "gpt_neox-nobias-tied": dict(NEOX, bias=False),
    "gpt_neox-bias-untied": dict(NEOX, tie_embeddings=False, mlp_hidden=48, rope_base=500.0),
    "gpt_neox-nobias-untied": dict(NEOX, bias=False, tie_embeddings=False),
    "gpt_neox-bias-tied": dict(NEOX, norm_eps=1e-6),
    "stablelm-tied": dict(STABLELM),
    "stablelm-gqa-untied": dict(STABLELM, n_kv_head=2, tie_embeddings=False, rope_base=500.0,
                                norm_eps=1e-6),
}  # fmt: skip


def check_in_transformers(ours: GPT, folder: Path, arch: str) -> None:
    """transformers loads `folder` as `arch`, every parameter from the file, and computes our
    logits and greedy tokens; load_hf_model gives back the very same weights."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert type(hf).__name__ == dict(HF_CLASSES)[arch]
    # Everything came from the file, nothing left at its random init: as many parameters as
    # ours, plus the zero biases a bias-free model gets in NeoX's LayerNorms (two per layer and
    # the final one) and MLP (F + C per layer).
    L, C, F = ours.config.n_layer, ours.config.n_embd, ours.config.ffn_hidden
    extra = (2 * L + 1) * C + L * (F + C) if arch == "gpt_neox" and not ours.config.bias else 0
    if arch == "stablelm":  # its LayerNorms' zero biases
        extra = (2 * L + 1) * C
    assert sum(p.numel() for p in hf.parameters()) == ours.num_parameters() + extra
    V = ours.config.vocab_size
    idx = torch.randint(0, V, (2, 24), generator=torch.Generator().manual_seed(1))
    expected = logits_of(ours, idx)
    assert torch.allclose(logits_of(hf, idx), expected, rtol=0, atol=1e-5)

    prompt = idx[0, :8].tolist()
    mine = list(generate_tokens(ours, prompt, 20, temperature=0.0))
    with torch.no_grad():
        # No eos id in config.json: both run the full 20 tokens.
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False)
    theirs = out[0, len(prompt) :].tolist()
    assert mine == theirs

    back = load_hf_model(folder).eval()
    # The same config, but for the MLP width, which config.json always states.
    assert replace(back.config, mlp_hidden=0) == replace(ours.config, mlp_hidden=0)
    assert back.config.ffn_hidden == ours.config.ffn_hidden
    mine_state, back_state = ours.state_dict(), back.state_dict()
    assert mine_state.keys() == back_state.keys()
    for name, tensor in mine_state.items():
        assert torch.equal(back_state[name], tensor), name


@pytest.mark.parametrize("shape", list(SHAPES))
def test_export_runs_in_transformers_and_imports_back(shape: str, tmp_path: Path) -> None:
    ours = random_gpt(ModelConfig(**{**BASE, **SHAPES[shape]}))
    arch = save_hf_model(ours, tmp_path / "hf")
    assert arch == shape.split("-")[0]
    check_in_transformers(ours, tmp_path / "hf", arch)


def test_neox_query_key_value_is_laid_out_per_head(tmp_path: Path) -> None:
    # NeoX reads query_key_value as (heads, 3, head_dim) rows: head 0's q, k, v come first.
    ours = random_gpt(ModelConfig(**{**BASE, **NEOX}))
    save_hf_model(ours, tmp_path / "hf")
    from safetensors.torch import load_file

    qkv = load_file(tmp_path / "hf" / "model.safetensors")[
        "gpt_neox.layers.0.attention.query_key_value.weight"
    ]
    c_attn = ours.state_dict()["transformer.h.0.attn.c_attn.weight"]  # (q; k; v), (96, 32)
    D, C = 8, 32
    assert torch.equal(qkv[:D], c_attn[:D])  # head 0's query
    assert torch.equal(qkv[D : 2 * D], c_attn[C : C + D])  # head 0's key
    assert torch.equal(qkv[2 * D : 3 * D], c_attn[2 * C : 2 * C + D])  # head 0's value
    assert torch.equal(qkv[3 * D : 4 * D], c_attn[D : 2 * D])  # head 1's query


# --- the other direction: folders transformers wrote --------------------------------------------


TO_HF_CONFIG = {
    "qwen3": model_config_to_qwen3_config,
    "arcee": model_config_to_arcee_config,
    "gpt_neox": model_config_to_neox_config,
}
IMPORTED: dict[str, dict[str, Any]] = {
    "qwen3-gqa-untied": SHAPES["qwen3-gqa-untied"],
    "arcee-gqa-untied": SHAPES["arcee-gqa-untied"],
    # Arcee with biases does not export (llama.cpp's Arcee has no o_proj or MLP biases), but
    # transformers' has them, and such a folder imports.
    "arcee-bias-mqa": dict(ARCEE, bias=True, n_kv_head=1, tie_embeddings=False),
    "gpt_neox-bias-untied": SHAPES["gpt_neox-bias-untied"],
}


@pytest.mark.parametrize("shape", list(IMPORTED))
def test_import_of_a_transformers_folder_gives_the_same_logits(shape: str, tmp_path: Path) -> None:
    config = ModelConfig(**{**BASE, **IMPORTED[shape]})
    hf_config = transformers.AutoConfig.for_model(**TO_HF_CONFIG[shape.split("-")[0]](config))
    hf = transformers.AutoModelForCausalLM.from_config(hf_config)
    assert hf.config.model_type == shape.split("-")[0]
    torch.manual_seed(2)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.eval().save_pretrained(tmp_path / "hf")
    ours = load_hf_model(tmp_path / "hf").eval()
    idx = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(3))
    expected = logits_of(hf, idx)
    assert torch.allclose(logits_of(ours, idx), expected, rtol=0, atol=1e-5)
    # The KV cache path agrees too: prefill 16 tokens, then one at a time.
    cache = ours.new_kv_cache(2)
    with torch.no_grad():
        steps = [ours(idx[:, :16], kv_cache=cache)[0]]
        steps += [ours(idx[:, t : t + 1], kv_cache=cache)[0] for t in range(16, 24)]
    assert torch.allclose(torch.cat(steps, dim=1), expected, rtol=0, atol=1e-5)
    # The state-dict API other importers use takes a ModelConfig and tells the names apart.
    again = gpt_from_hf_state_dict(ours.config, hf.state_dict()).eval()
    assert torch.allclose(logits_of(again, idx), expected, rtol=0, atol=1e-5)


def test_arcee_configs_are_read_as_relu2_and_other_activations_refused() -> None:
    config = model_config_to_arcee_config(ModelConfig(**{**BASE, **ARCEE}))
    assert (config["model_type"], config["hidden_act"]) == ("arcee", "relu2")
    assert hf_config_to_model_config(config).mlp == "relu2"
    with pytest.raises(ScratchLMError, match="hidden_act = 'silu' is not supported"):
        hf_config_to_model_config({**config, "hidden_act": "silu"})
    with pytest.raises(ScratchLMError, match="attention_bias = True but mlp_bias = False"):
        hf_config_to_model_config({**config, "attention_bias": True})
    # A Llama folder's gate_proj has no place in an Arcee model.
    state = {"model.layers.0.mlp.gate_proj.weight": torch.zeros(128, 32)}
    hf = transformers.ArceeForCausalLM(transformers.ArceeConfig(**config))
    with pytest.raises(ScratchLMError, match=r"gate_proj\.weight has no place in a 2-layer Arcee"):
        gpt_from_hf_state_dict(config, {**hf.state_dict(), **state})


def test_a_peft_adapter_loads_onto_the_arcee_export(tmp_path: Path) -> None:
    # LoRA on q, v, up (all of c_fc, Arcee's up_proj) and down: PEFT's adapter on the Arcee
    # export computes what our adapted model does.
    peft = pytest.importorskip("peft")
    from scratchlm.finetune.lora import apply_lora, lora_adapters
    from scratchlm.finetune.lora_peft import export_peft_adapter

    ours = random_gpt(ModelConfig(**{**BASE, **SHAPES["arcee-gqa-untied"]}))
    save_hf_model(ours, tmp_path / "hf")
    apply_lora(ours, ["q", "v", "up", "down"], r=2, alpha=5, quiet=True)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # B starts at zero: make the update show
        for adapter in lora_adapters(ours).values():
            adapter.B.copy_(torch.randn(adapter.B.shape, generator=g) * 0.2)
    export_peft_adapter(ours, tmp_path / "peft", base_model_name_or_path=str(tmp_path / "hf"))
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["target_modules"] == ["q_proj", "v_proj", "up_proj", "down_proj"]

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    idx = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(3))
    expected = logits_of(ours, idx)
    assert not torch.allclose(logits_of(hf.eval(), idx), expected, atol=1e-3)  # it matters
    with_adapter = peft.PeftModel.from_pretrained(hf, tmp_path / "peft").eval()
    assert torch.allclose(logits_of(with_adapter, idx), expected, rtol=0, atol=1e-5)


def test_neox_without_biases_refuses_nonzero_mlp_biases(tmp_path: Path) -> None:
    config = ModelConfig(**{**BASE, **NEOX, "bias": False})
    hf = transformers.GPTNeoXForCausalLM(
        transformers.GPTNeoXConfig(**model_config_to_neox_config(config))
    )
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(".bias"):
                p.zero_()  # zeros load: what a bias-free export writes
        hf.gpt_neox.layers[1].mlp.dense_h_to_4h.bias.fill_(0.5)
    hf.save_pretrained(tmp_path / "hf")
    with pytest.raises(ScratchLMError, match=r"layers\.1\.mlp\.dense_h_to_4h\.bias is not zero"):
        load_hf_model(tmp_path / "hf")


def test_pythia_style_neox_configs_are_refused_by_name() -> None:
    config = model_config_to_neox_config(ModelConfig(**{**BASE, **NEOX}))
    for change, message in [
        ({"use_parallel_residual": True}, "use_parallel_residual = true"),
        ({"rotary_pct": 0.25, "rope_parameters": None}, "rotary_pct = 0.25"),
        ({"hidden_act": "gelu"}, "hidden_act = 'gelu' is not supported"),
    ]:
        with pytest.raises(ScratchLMError, match=message):
            neox_config_to_model_config({**config, **change}, "config.json")
    # transformers 4.x keys alone (no rope_parameters) read the same.
    old = {k: v for k, v in config.items() if k != "rope_parameters"}
    assert neox_config_to_model_config(old, "x") == neox_config_to_model_config(config, "x")


# --- which architecture, and the refusals ----------------------------------------------------------


def recipe_model(name: str, **overrides: Any) -> ModelConfig:
    path = ROOT / "configs" / f"{name}.toml"
    table = tomllib.loads(path.read_text(encoding="utf-8"))["model"]
    return model_config_from_table({**table, **overrides}, str(path))


def test_the_demo_recipe_exports_as_gpt_neox(tmp_path: Path) -> None:
    ours = random_gpt(recipe_model("demo", vocab_size=256))
    assert hf_export_problem(ours.config) is None
    assert save_hf_model(ours, tmp_path / "hf") == "gpt_neox"
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (hf_config["attention_bias"], hf_config["use_parallel_residual"]) == (False, False)
    check_in_transformers(ours, tmp_path / "hf", "gpt_neox")


def test_the_char_recipe_and_the_depth_preset_export_as_qwen3(tmp_path: Path) -> None:
    # Both were ReLU² with QK-norm, which no architecture carries; they are Qwen3-shaped now.
    for name, config in [
        ("char", recipe_model("shakespeare-char", vocab_size=257)),
        # The preset's name is not a model option, and does not travel in config.json.
        ("depth", replace(model_preset("depth-1", vocab_size=256, block_size=32), preset="")),
    ]:
        ours = random_gpt(config)
        assert hf_export_problem(ours.config) is None
        assert save_hf_model(ours, tmp_path / name) == "qwen3"
        check_in_transformers(ours, tmp_path / name, "qwen3")


def test_qk_norm_with_relu2_is_refused_in_one_line() -> None:
    config = ModelConfig(**{**BASE, **QWEN3, "mlp": "relu2"})
    with pytest.raises(ScratchLMError) as refused:
        hf_architecture(config)
    message = str(refused.value)
    assert "\n" not in message and message == hf_export_problem(config)
    # ReLU² has a home (Arcee), QK-norm too (Qwen3), but not the two together: the two
    # one-change ways out come first, Qwen3's (which keeps QK-norm, that lets the recipe use
    # its learning rates) before Arcee's; the line stops there.
    assert message == (
        "this model has no Hugging Face equivalent: for Qwen3 it would need to change "
        "mlp = 'relu2' to 'swiglu'; for Arcee it would need to change qk_norm = True to False"
    )


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        (dict(QWEN3, bias=True), ["for Qwen3 it would need to change bias = True to False"]),
        (dict(NEOX, n_kv_head=2), ["for GPT-NeoX it would need to change n_kv_head = 2 to 4"]),
        (
            dict(QWEN3, rope_scaling="llama3"),
            ["for Qwen3 it would need to change rope_scaling = 'llama3' to 'none'"],
        ),
        (dict(QWEN3, logit_softcap=30.0), ["no architecture has logit_softcap = 30.0"]),
        (dict(ARCEE, bias=True), ["for Arcee it would need to change bias = True to False"]),
        (dict(ARCEE, sliding_window=8), ["no architecture has sliding_window = 8", "Arcee"]),
        (dict(NEOX, sliding_window=16), ["no architecture has sliding_window = 16", "GPT-NeoX"]),
    ],
)
def test_options_no_architecture_carries_are_named(
    options: dict[str, Any], fragments: list[str], tmp_path: Path
) -> None:
    model = GPT(ModelConfig(**{**BASE, **options}))
    with pytest.raises(ScratchLMError, match="no Hugging Face equivalent") as refused:
        save_hf_model(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    for fragment in fragments:
        assert fragment in str(refused.value)


def test_each_shape_picks_its_architecture() -> None:
    picks = {shape: hf_architecture(ModelConfig(**{**BASE, **o})) for shape, o in SHAPES.items()}
    assert picks == {shape: shape.split("-")[0] for shape in SHAPES}
    assert hf_architecture(ModelConfig(**BASE)) == "gpt2"
    assert hf_architecture(ModelConfig(**{**BASE, **QWEN3, "qk_norm": False})) == "llama"


def test_gpt2_without_biases_exports_with_zero_ones(tmp_path: Path) -> None:
    """nanoGPT's bias = False: GPT-2 always has biases, so they are written as zeros and
    transformers computes our logits and greedy text; read back, it is a model with (zero)
    biases and the same logits."""
    ours = random_gpt(ModelConfig(**{**BASE, "bias": False}))
    assert save_hf_model(ours, tmp_path / "hf") == "gpt2"
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    L, C, F = ours.config.n_layer, ours.config.n_embd, ours.config.ffn_hidden
    zero_biases = L * (7 * C + F) + C  # ln_1, c_attn (3C), c_proj, ln_2, c_fc (F), c_proj; ln_f
    assert sum(p.numel() for p in hf.parameters()) == ours.num_parameters() + zero_biases
    idx = torch.randint(0, BASE["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(logits_of(hf.eval(), idx), logits_of(ours, idx), rtol=0, atol=1e-5)
    prompt = idx[0, :8].tolist()
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False)
    assert out[0, 8:].tolist() == list(generate_tokens(ours, prompt, 20, temperature=0.0))
    back = load_hf_model(tmp_path / "hf").eval()
    assert back.config == replace(ours.config, bias=True)
    assert torch.equal(logits_of(back, idx), logits_of(ours, idx))
