"""Qwen3 (Qwen3ForCausalLM) folders: Llama plus QK-norm, both ways.

Qwen3 is Llama (RoPE, RMSNorm, SwiGLU, grouped-query attention, separate q/k/v and gate/up
matrices) with an RMSNorm over each head's q and k, applied after the projection and before
RoPE, with the model's rms_norm_eps: exactly our qk_norm. So config and tensors are Llama's
(hf_format.py) plus `self_attn.q_norm` / `self_attn.k_norm`, and these options are fixed:

    bias false        Qwen3's MLP has no biases (attention_bias alone exists), and our one bias
                      switch would give the MLP biases too
    sliding window    off (use_sliding_window false); our sliding_window has no Qwen3 layout
    RoPE scaling      none: llama.cpp applies Llama 3's scaling to Llama models only
    head_dim          n_embd / n_head, the only head size scratchlm has
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from torch import Tensor

from scratchlm.core.errors import ScratchLMError
from scratchlm.model.config import ModelConfig
from scratchlm.model.gpt import GPT
from scratchlm.model.hf_fields import requirements, take_tensor, validated_config
from scratchlm.model.hf_llama import (
    gpt_names_from_llama,
    llama_config_to_model_config,
    llama_state_dict_from_gpt,
    model_config_to_llama_config,
)

MODEL_TYPE = "qwen3"
_NORMS = ("q_norm", "k_norm")


def qwen3_requirements(config: ModelConfig) -> dict[str, tuple[Any, Any]]:
    """What Qwen3 computes, as {option: (this config's value, the value Qwen3 needs)}.
    Grouped-query attention, widths, eps and tied embeddings are free."""
    return requirements(
        config,
        pos_encoding="rope",
        rope_scaling="none",
        norm="rmsnorm",
        mlp="swiglu",
        qk_norm=True,
        bias=False,
    )


# --- config.json <-> ModelConfig ---------------------------------------------------------------


def model_config_to_qwen3_config(config: ModelConfig) -> dict[str, Any]:
    """The config.json of Qwen3ForCausalLM for a Qwen3-shaped ModelConfig: Llama's keys, less
    mlp_bias (Qwen3 has none), with the sliding window switched off."""
    hf = model_config_to_llama_config(config)
    del hf["mlp_bias"]
    return {
        **hf,
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": MODEL_TYPE,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": config.n_layer,  # layers from this index on would slide: none
    }


def qwen3_config_to_model_config(hf: Mapping[str, Any], where: str) -> ModelConfig:
    """A ModelConfig from a Qwen3 config.json: read as Llama's, then QK-norm on."""
    n_layer = hf.get("num_hidden_layers")
    layer_types = hf.get("layer_types") or []
    slides = "sliding_attention" in layer_types or (
        bool(hf.get("use_sliding_window", False))
        and isinstance(n_layer, int)
        and int(hf.get("max_window_layers", 28)) < n_layer  # Qwen3Config's default
    )
    if slides:
        raise ScratchLMError(
            f"{where}: sliding-window layers (use_sliding_window = true) are not supported "
            "for Qwen3"
        )
    if hf.get("attention_bias", False):
        raise ScratchLMError(
            f"{where}: attention_bias = true is not supported for Qwen3 (scratchlm's one bias "
            "switch would give the MLP biases too, which Qwen3 has none of)"
        )
    config = llama_config_to_model_config({**hf, "mlp_bias": False}, where)
    if config.rope_scaling != "none":
        raise ScratchLMError(
            f"{where}: RoPE scaling {config.rope_scaling!r} is not supported for Qwen3"
        )
    return validated_config(replace(config, qk_norm=True), where)


# --- tensors: ours <-> transformers' -----------------------------------------------------------


def qwen3_state_dict_from_gpt(model: GPT) -> dict[str, Tensor]:
    """Qwen3ForCausalLM's tensors: Llama's, plus each layer's per-head q and k norm gains."""
    state = llama_state_dict_from_gpt(model)
    ours = model.state_dict()
    for i in range(model.config.n_layer):
        for norm in _NORMS:
            state[f"model.layers.{i}.self_attn.{norm}.weight"] = ours[
                f"transformer.h.{i}.attn.{norm}.weight"
            ]
    return state


def gpt_names_from_qwen3(
    config: ModelConfig, state: Mapping[str, Tensor], where: str
) -> dict[str, Tensor]:
    """Our names for Qwen3ForCausalLM's tensors: the q and k norms, then Llama's."""
    remaining = dict(state)
    ours: dict[str, Tensor] = {}
    for i in range(config.n_layer):
        for norm in _NORMS:
            name = f"model.layers.{i}.self_attn.{norm}.weight"
            ours[f"transformer.h.{i}.attn.{norm}.weight"] = take_tensor(remaining, name, where)
    return {**gpt_names_from_llama(config, remaining, where), **ours}
