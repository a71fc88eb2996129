"""Arcee (ArceeForCausalLM) folders: Llama with a ReLU² MLP, both ways.

Arcee (AFM-4.5B) is Llama (RoPE, RMSNorm, grouped-query attention, separate q/k/v matrices)
whose MLP is not gated: down_proj(relu2(up_proj(x))) with relu2(x) = relu(x)², exactly our
mlp = "relu2", whose c_fc is then up_proj alone. So config.json is Llama's with hidden_act
"relu2", the tensors are Llama's without mlp.gate_proj (hf_llama.py maps both, following the
config's mlp), and these options are fixed:

    qk_norm false    Arcee has no norm on q and k (Qwen3 has, with SwiGLU)
    bias false       transformers' Arcee has attention_bias and mlp_bias, but llama.cpp's graph
                     has no o_proj or MLP biases, so a GGUF with them would not load. A folder
                     with biases is imported all the same (our one switch sets both).
    RoPE scaling     free: Llama 3's, as for Llama (llama.cpp's Arcee reads rope_freqs too)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scratchlm.model.config import ModelConfig
from scratchlm.model.hf_fields import requirements
from scratchlm.model.hf_llama import llama_config_to_model_config, model_config_to_llama_config

MODEL_TYPE = "arcee"


def arcee_requirements(config: ModelConfig) -> dict[str, tuple[Any, Any]]:
    """What Arcee computes, as {option: (this config's value, the value Arcee needs)}.
    Grouped-query attention, widths, eps, RoPE base and scaling and tied embeddings are free."""
    return requirements(
        config, pos_encoding="rope", norm="rmsnorm", mlp="relu2", qk_norm=False, bias=False
    )


def model_config_to_arcee_config(config: ModelConfig) -> dict[str, Any]:
    """The config.json of ArceeForCausalLM for an Arcee-shaped ModelConfig: Llama's keys with
    the ReLU² activation."""
    return {
        **model_config_to_llama_config(config),
        "architectures": ["ArceeForCausalLM"],
        "model_type": MODEL_TYPE,
        "hidden_act": "relu2",
    }


def arcee_config_to_model_config(hf: Mapping[str, Any], where: str) -> ModelConfig:
    """A ModelConfig from an Arcee config.json: read as Llama's, with a ReLU² MLP."""
    return llama_config_to_model_config(hf, where, mlp="relu2")
