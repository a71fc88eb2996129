"""Parity with Hugging Face transformers: our GPT exported as GPT2LMHeadModel / LlamaForCausalLM
and their folders imported back, logits equal to 1e-5 in float32. Small random models only, so
nothing is downloaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from random_models import logits_of, random_gpt
from scratchlm.core.errors import ScratchLMError
from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig, model_preset
from scratchlm.model.hf_format import (
    gpt_from_hf_state_dict,
    hf_architecture,
    llama_config_to_model_config,
    load_hf_model,
    model_config_to_llama_config,
    save_hf_model,
)

transformers = pytest.importorskip("transformers")

BASE: dict[str, Any] = dict(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=32)
LLAMA: dict[str, Any] = dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", bias=False)

SHAPES: dict[str, dict[str, Any]] = {
    "gpt2-tied": {},
    "gpt2-untied": dict(tie_embeddings=False, mlp_hidden=48),
    "llama-mha-tied": dict(LLAMA),
    "llama-gqa-untied": dict(LLAMA, n_kv_head=2, tie_embeddings=False, rope_base=500000.0),
    "llama-mqa-bias-llama3-rope": dict(
        LLAMA, n_kv_head=1, bias=True, rope_scaling="llama3", rope_factor=4.0,
        rope_original_context=16,
    ),
}  # fmt: skip

HF_CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}


def random_shape(shape: str, seed: int = 0) -> GPT:
    return random_gpt(ModelConfig(**{**BASE, **SHAPES[shape]}), seed)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_export_loads_in_transformers_with_the_same_logits(shape: str, tmp_path: Path) -> None:
    ours = random_shape(shape)
    arch = save_hf_model(ours, tmp_path / "hf")
    assert arch == ("gpt2" if shape.startswith("gpt2") else "llama")
    hf = getattr(transformers, HF_CLASSES[arch]).from_pretrained(tmp_path / "hf").eval()
    # Everything was loaded, nothing left at its random init.
    assert sum(p.numel() for p in hf.parameters()) == ours.num_parameters()
    idx = torch.randint(0, 97, (2, 32), generator=torch.Generator().manual_seed(1))
    expected = logits_of(ours, idx)
    assert torch.allclose(logits_of(hf, idx), expected, rtol=0, atol=1e-5)
    # ... and the folder comes back as the same model.
    back = load_hf_model(tmp_path / "hf").eval()
    # The same config, but for the MLP width, which a Llama config.json always states.
    assert replace(back.config, mlp_hidden=0) == replace(ours.config, mlp_hidden=0)
    assert back.config.ffn_hidden == ours.config.ffn_hidden
    assert torch.allclose(logits_of(back, idx), expected, rtol=0, atol=1e-5)


def hf_random_model(shape: str) -> Any:
    torch.manual_seed(2)
    config = ModelConfig(**{**BASE, **SHAPES[shape]})
    if shape.startswith("gpt2"):
        hf_config = transformers.GPT2Config(
            vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4,
            n_inner=config.ffn_hidden, tie_word_embeddings=config.tie_embeddings,
        )  # fmt: skip
        model = transformers.GPT2LMHeadModel(hf_config)
    else:
        model = transformers.LlamaForCausalLM(
            transformers.LlamaConfig(**model_config_to_llama_config(config))
        )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.mark.parametrize("shape", list(SHAPES))
def test_import_of_a_transformers_folder_gives_the_same_logits(shape: str, tmp_path: Path) -> None:
    hf = hf_random_model(shape)
    hf.save_pretrained(tmp_path / "hf")
    ours = load_hf_model(tmp_path / "hf").eval()
    assert ours.config.tie_embeddings == SHAPES[shape].get("tie_embeddings", True)
    idx = torch.randint(0, 97, (2, 32), generator=torch.Generator().manual_seed(3))
    expected = logits_of(hf, idx)
    assert torch.allclose(logits_of(ours, idx), expected, rtol=0, atol=1e-5)
    # The KV cache path agrees too: prefill 20 tokens, then one at a time.
    cache = ours.new_kv_cache(2)
    with torch.no_grad():
        steps = [ours(idx[:, :20], kv_cache=cache)[0]]
        steps += [ours(idx[:, t : t + 1], kv_cache=cache)[0] for t in range(20, 32)]
    assert torch.allclose(torch.cat(steps, dim=1), expected, rtol=0, atol=1e-5)


def test_original_gpt2_names_without_prefix_and_mask_buffers_import() -> None:
    # openai-community/gpt2's model.safetensors names tensors "h.0.attn.c_attn.weight", and
    # carries the causal mask as "h.0.attn.bias".
    hf = hf_random_model("gpt2-tied")
    state = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items()}
    state.pop("lm_head.weight")
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.ones(1, 1, 32, 32)
    config = json.loads(hf.config.to_json_string())
    ours = gpt_from_hf_state_dict(config, state).eval()
    idx = torch.randint(0, 97, (1, 16))
    assert torch.allclose(logits_of(ours, idx), logits_of(hf, idx), rtol=0, atol=1e-5)


def test_hf_llama_state_dict_api_for_other_importers() -> None:
    # What gguf_format.py uses: a Llama config.json dict + HF-named tensors -> GPT.
    hf = hf_random_model("llama-gqa-untied")
    config_dict = json.loads(hf.config.to_json_string())
    model_config = llama_config_to_model_config(config_dict)
    assert (model_config.n_kv_head, model_config.rope_base) == (2, 500000.0)
    for config in (config_dict, model_config):
        ours = gpt_from_hf_state_dict(config, hf.state_dict()).eval()
        idx = torch.randint(0, 97, (1, 16))
        assert torch.allclose(logits_of(ours, idx), logits_of(hf, idx), rtol=0, atol=1e-5)


def test_transformers_4_style_llama_config_keys() -> None:
    # SmolLM2's config.json (transformers 4.x): rope_theta at the top, rope_scaling null.
    config = llama_config_to_model_config(
        {
            "model_type": "llama", "hidden_act": "silu", "hidden_size": 576,
            "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
            "rope_theta": 100000, "rope_scaling": None, "tie_word_embeddings": True,
            "vocab_size": 49152, "attention_bias": False,
        }
    )  # fmt: skip
    assert config == model_preset("smollm2-135m", preset="")


@pytest.mark.parametrize("name", ["smollm2-135m", "llama3.2-1b"])
def test_llama_presets_match_transformers_llama(name: str) -> None:
    config = model_preset(name)
    hf_config = transformers.LlamaConfig(**model_config_to_llama_config(config))
    with torch.device("meta"):
        ours = GPT(config)
        hf = transformers.LlamaForCausalLM(hf_config)
    assert ours.num_parameters() == sum(p.numel() for p in hf.parameters())
    assert llama_config_to_model_config(hf_config.to_dict()) == model_preset(name, preset="")
    if name == "smollm2-135m":
        assert ours.num_parameters() == 134_515_008  # SmolLM2-135M's published count
        assert (hf_config.num_key_value_heads, hf_config.intermediate_size) == (3, 1536)
        assert hf_config.rope_parameters["rope_theta"] == 100000.0
        assert hf_config.tie_word_embeddings and hf_config.rms_norm_eps == 1e-5
        assert hf_config.max_position_embeddings == 8192


# --- bad input ---------------------------------------------------------------------------------


def test_a_model_with_no_hf_equivalent_is_refused_naming_the_options(tmp_path: Path) -> None:
    # (qk_norm alone or ReLU² alone no longer is: they export as Qwen3 and Arcee.)
    model = GPT(ModelConfig(**{**BASE, **LLAMA, "mlp": "relu2", "qk_norm": True}))
    with pytest.raises(ScratchLMError, match="mlp = 'relu2'"):
        save_hf_model(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    assert hf_architecture(ModelConfig(**BASE)) == "gpt2"
    assert hf_architecture(ModelConfig(**{**BASE, **LLAMA, "bias": True})) == "llama"
    with pytest.raises(ScratchLMError, match="for GPT-2 it would need to change pos_encoding"):
        hf_architecture(ModelConfig(**{**BASE, "pos_encoding": "sinusoidal"}))


def test_export_refuses_to_overwrite(tmp_path: Path) -> None:
    model = random_shape("gpt2-tied")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("mine")
    with pytest.raises(ScratchLMError, match="already exists; pass --overwrite"):
        save_hf_model(model, tmp_path / "hf")
    assert (tmp_path / "hf" / "keep.txt").read_text() == "mine"
    save_hf_model(model, tmp_path / "hf", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]


def test_hf_folders_with_missing_or_wrong_parts_are_one_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    save_hf_model(random_shape("llama-gqa-untied"), folder)
    (folder / "model.safetensors").rename(tmp_path / "weights")
    with pytest.raises(ScratchLMError, match=r"missing model\.safetensors"):
        load_hf_model(folder)
    (tmp_path / "weights").rename(folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").unlink()
    with pytest.raises(ScratchLMError, match=r"missing config\.json"):
        load_hf_model(folder)
    with pytest.raises(ScratchLMError, match="no such folder"):
        load_hf_model(tmp_path / "nowhere")
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "mistral"}))
    with pytest.raises(ScratchLMError, match="model_type 'mistral' is not supported"):
        load_hf_model(folder)
    # A config that does not fit the weights names the tensor and both shapes.
    (folder / "config.json").write_text(json.dumps({**config, "num_key_value_heads": 4}))
    with pytest.raises(ScratchLMError, match=r"c_attn.weight has shape \(64, 32\).*\(96, 32\)"):
        load_hf_model(folder)
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(
        ScratchLMError, match=r"model\.layers\.2\.input_layernorm\.weight is missing"
    ):
        load_hf_model(folder)


# --- the command line ----------------------------------------------------------------------------


def scratchlm(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SCRATCHLM_CACHE": str(cwd / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "scratchlm", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_import_generate_export_round_trip(tmp_path: Path) -> None:
    # A Hugging Face Llama folder with a tokenizer of the model's vocabulary size.
    from pydoc_data.topics import topics  # Python's own documentation: always there

    from scratchlm.tokenizer import BPETokenizer
    from scratchlm.tokenizer.hf_format import save_hf_tokenizer

    tokenizer = BPETokenizer.train(list(topics.values())[:20], vocab_size=300)
    assert tokenizer.vocab_size == 300
    hf = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            **model_config_to_llama_config(ModelConfig(**{**BASE, **LLAMA, "vocab_size": 300}))
        )
    ).eval()
    hf.save_pretrained(tmp_path / "hf")
    save_hf_tokenizer(tokenizer, tmp_path / "hf" / "tokenizer.json")

    done = scratchlm("import", "hf", "hf", "--out", "runs/imported", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "imported hf" in done.stdout
    done = scratchlm(
        "generate", "runs/imported", "--prompt", "the cat", "--max-new-tokens", "5",
        "--temperature", "0", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "the cat" in done.stdout

    done = scratchlm("export", "runs/imported", "--format", "hf", "--out", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "LlamaForCausalLM" in done.stdout
    back = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    idx = torch.randint(0, 300, (1, 32))
    assert torch.allclose(logits_of(back, idx), logits_of(hf, idx), rtol=0, atol=1e-5)
    assert BPETokenizer.load(tmp_path / "runs/imported/tokenizer.json").fingerprint() == (
        tokenizer.fingerprint()
    )

    # Refusals: one line each, nothing overwritten.
    for args, message in [
        (("export", "runs/imported", "--format", "hf", "--out", "out"), "out already exists"),
        (("import", "hf", "hf", "--out", "runs/imported"), "already exists; pass --overwrite"),
        (("import", "hf", "runs", "--out", "x"), "missing config.json"),
    ]:
        done = scratchlm(*args, cwd=tmp_path)
        assert done.returncode == 2
        assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    (tmp_path / "hf" / "tokenizer.json").unlink()
    done = scratchlm("import", "hf", "hf", "--out", "y", cwd=tmp_path)
    assert done.returncode == 2 and "missing tokenizer.json" in done.stderr
    assert not (tmp_path / "y").exists()
