"""StableLM (StableLmForCausalLM) folders: LayerNorm + RoPE + SwiGLU models, both ways.

StableLM is Llama's layout (separate q/k/v, gate/up/down, grouped-query attention, RoPE on
halves) with LayerNorm instead of RMSNorm, so config and tensors are Llama's (hf_llama.py)
plus each norm's bias. It computes our model exactly when set to our choices:

    partial_rotary_factor 1.0    RoPE on the whole head (StableLM's default rotates a quarter)
    use_parallel_residual false  our blocks add attention, then the MLP
    qk_layernorm false           its q/k norms are LayerNorms per head, not our shared RMSNorm
    bias false                   its o_proj and MLP have no biases (use_qkv_bias alone exists),
                                 and our one bias switch would give them some; its LayerNorms
                                 always have biases, written as zeros
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from scratchlm.core.errors import ScratchLMError
from scratchlm.model.config import ModelConfig
from scratchlm.model.gpt import GPT
from scratchlm.model.hf_fields import (
    decoder_config,
    decoder_shape,
    expect_field,
    requirements,
    take_zeros,
    validated_config,
)
from scratchlm.model.hf_llama import gpt_names_from_llama, llama_state_dict_from_gpt

MODEL_TYPE = "stablelm"


def stablelm_requirements(config: ModelConfig) -> dict[str, tuple[Any, Any]]:
    """What StableLM computes, as {option: (this config's value, the value StableLM needs)}.
    Grouped-query attention, widths, eps, RoPE base and tied embeddings are free."""
    return requirements(
        config,
        pos_encoding="rope",
        rope_scaling="none",
        norm="layernorm",
        mlp="swiglu",
        qk_norm=False,
        bias=False,
    )


# --- config.json <-> ModelConfig ---------------------------------------------------------------


def model_config_to_stablelm_config(config: ModelConfig) -> dict[str, Any]:
    """The config.json of StableLmForCausalLM for a StableLM-shaped ModelConfig."""
    return {
        "architectures": ["StableLmForCausalLM"],
        "model_type": MODEL_TYPE,
        **decoder_config(config),
        "num_key_value_heads": config.kv_heads,
        "layer_norm_eps": config.norm_eps,
        "hidden_act": "silu",
        "use_qkv_bias": False,
        "qk_layernorm": False,
        "use_parallel_residual": False,
        "hidden_dropout": config.dropout,
        "attention_dropout": config.dropout,
        # transformers 5 reads rope_parameters; 4.x and llama.cpp's converter the top-level keys.
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": config.rope_base,
            "partial_rotary_factor": 1.0,
        },
        "rope_theta": config.rope_base,
        "partial_rotary_factor": 1.0,
    }


def stablelm_config_to_model_config(hf: Mapping[str, Any], where: str) -> ModelConfig:
    """A ModelConfig from a StableLM config.json; the options our blocks cannot compute
    (StableLM 2's partial RoPE and q/k biases, parallel residual, per-head q/k norms) are
    refused by name."""
    expect_field(hf, "hidden_act", ("silu",), where, "silu")
    rope = dict(hf.get("rope_parameters") or {})
    rotary = float(rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 0.25)))
    unsupported = {
        "partial_rotary_factor": (rotary, 1.0),
        "use_parallel_residual": (bool(hf.get("use_parallel_residual", False)), False),
        "qk_layernorm": (bool(hf.get("qk_layernorm", False)), False),
        "use_qkv_bias": (bool(hf.get("use_qkv_bias", False)), False),
        "rope_type": (rope.get("rope_type", "default"), "default"),
    }
    for key, (have, want) in unsupported.items():
        if have != want:
            raise ScratchLMError(
                f"{where}: {key} = {have!r} is not supported for StableLM (scratchlm needs {want!r})"
            )
    shape = decoder_shape(hf, where)
    n_kv_head = int(hf.get("num_key_value_heads") or shape["n_head"])
    config = ModelConfig(
        **shape,
        n_kv_head=0 if n_kv_head == shape["n_head"] else n_kv_head,
        mlp="swiglu",
        norm="layernorm",
        norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
        bias=False,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        pos_encoding="rope",
        rope_base=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
    )
    return validated_config(config, where)


# --- tensors: ours <-> transformers' -----------------------------------------------------------


def _norms(config: ModelConfig) -> list[str]:
    """StableLM's LayerNorms, whose biases we write as zeros and read back as nothing."""
    layers = [
        f"model.layers.{i}.{norm}"
        for i in range(config.n_layer)
        for norm in ("input_layernorm", "post_attention_layernorm")
    ]
    return [*layers, "model.norm"]


def stablelm_state_dict_from_gpt(model: GPT) -> dict[str, Tensor]:
    """StableLmForCausalLM's tensors: Llama's, plus a zero bias for every LayerNorm."""
    state = llama_state_dict_from_gpt(model)
    for norm in _norms(model.config):
        weight = state[f"{norm}.weight"]
        state[f"{norm}.bias"] = torch.zeros_like(weight)
    return state


def gpt_names_from_stablelm(
    config: ModelConfig, state: Mapping[str, Tensor], where: str
) -> dict[str, Tensor]:
    """Our names for StableLmForCausalLM's tensors: the LayerNorm biases, which must be zero
    (our bias-free LayerNorms have none), then Llama's."""
    remaining = dict(state)
    for norm in _norms(config):
        why = "scratchlm's StableLM-shaped models have no biases (one switch for all layers)"
        take_zeros(remaining, f"{norm}.bias", where, why)
    return gpt_names_from_llama(config, remaining, where)
