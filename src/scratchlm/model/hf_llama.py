"""LlamaForCausalLM: RoPE (rotate-half, the layout of our apply_rope), RMSNorm, SwiGLU,
grouped-query attention. Its q/k/v and gate/up matrices are separate; ours are fused:
c_attn = [q; k; v] (C + 2·K·D rows), c_fc = [gate; up]. The GGUF reader, Qwen3 and Arcee build
on it; Arcee's MLP is ReLU² (mlp = "relu2"), with up_proj alone as c_fc, which the tensor
mappings here follow from the config's mlp."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from scratchlm.core.errors import ScratchLMError
from scratchlm.model.config import ModelConfig
from scratchlm.model.gpt import GPT
from scratchlm.model.hf_fields import (
    CONFIG_FILE,
    decoder_config,
    decoder_shape,
    expect_field,
    take_tensor,
    validated_config,
)


def model_config_to_llama_config(config: ModelConfig) -> dict[str, Any]:
    """The config.json (keyword arguments of transformers.LlamaConfig) for a Llama-shaped
    ModelConfig."""
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": config.rope_base}
    if config.rope_scaling == "llama3":
        rope = {
            "rope_type": "llama3",
            "rope_theta": config.rope_base,
            "factor": config.rope_factor,
            "low_freq_factor": config.rope_low_freq_factor,
            "high_freq_factor": config.rope_high_freq_factor,
            "original_max_position_embeddings": config.rope_original_context,
        }
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **decoder_config(config),
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "rms_norm_eps": config.norm_eps,
        "hidden_act": "silu",
        "attention_bias": config.bias,
        "mlp_bias": config.bias,
        "attention_dropout": config.dropout,
        # transformers 5 reads rope_parameters; 4.x read rope_theta and rope_scaling.
        "rope_parameters": rope,
        "rope_theta": config.rope_base,
        **({"rope_scaling": rope} if config.rope_scaling == "llama3" else {}),
    }


# Our MLP kind -> the hidden_act of its config.json (Llama's SwiGLU, Arcee's ReLU²).
HIDDEN_ACT = {"swiglu": "silu", "relu2": "relu2"}


def llama_config_to_model_config(
    hf: Mapping[str, Any],
    where: str = CONFIG_FILE,
    mlp: Literal["swiglu", "relu2"] = "swiglu",
) -> ModelConfig:
    """A ModelConfig from a Llama config.json (transformers 4.x or 5.x keys), or with
    mlp="relu2" from an Arcee one (the same keys, hidden_act "relu2")."""
    expect_field(hf, "hidden_act", (HIDDEN_ACT[mlp],), where, HIDDEN_ACT[mlp])
    shape = decoder_shape(hf, where)
    n_embd, n_head = shape["n_embd"], shape["n_head"]
    n_kv_head = int(hf.get("num_key_value_heads") or n_head)
    head_dim = hf.get("head_dim") or n_embd // n_head
    if head_dim * n_head != n_embd:
        raise ScratchLMError(
            f"{where}: head_dim {head_dim} x {n_head} heads != hidden_size {n_embd}; "
            "scratchlm needs head_dim = hidden_size / num_attention_heads"
        )
    attention_bias, mlp_bias = (
        bool(hf.get("attention_bias", False)),
        bool(hf.get("mlp_bias", False)),
    )
    if attention_bias != mlp_bias:
        raise ScratchLMError(
            f"{where}: attention_bias = {attention_bias} but mlp_bias = {mlp_bias}; scratchlm "
            "has one bias switch for both"
        )
    # transformers 5 writes rope_parameters; older config.json files rope_theta + rope_scaling.
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    rope_base = float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    scaling: dict[str, Any] = {}
    if rope_type == "llama3":
        scaling = dict(
            rope_scaling="llama3",
            rope_factor=float(rope["factor"]),
            rope_low_freq_factor=float(rope["low_freq_factor"]),
            rope_high_freq_factor=float(rope["high_freq_factor"]),
            rope_original_context=int(rope["original_max_position_embeddings"]),
        )
    elif rope_type != "default":
        raise ScratchLMError(
            f"{where}: RoPE scaling {rope_type!r} is not supported (only 'default' and 'llama3')"
        )
    config = ModelConfig(
        **shape,
        n_kv_head=0 if n_kv_head == n_head else n_kv_head,  # 0: one per query head
        mlp=mlp,
        norm="rmsnorm",
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        bias=attention_bias,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),  # LlamaConfig's default
        pos_encoding="rope",
        rope_base=rope_base,
        **scaling,
    )
    return validated_config(config, where)


def _mlp_inputs(config: ModelConfig) -> tuple[str, ...]:
    """The MLP's input projections in the order of c_fc's rows: [gate; up] for SwiGLU, up
    alone for ReLU² (Arcee)."""
    return ("gate_proj", "up_proj") if config.mlp == "swiglu" else ("up_proj",)


def llama_state_dict_from_gpt(model: GPT) -> dict[str, Tensor]:
    """LlamaForCausalLM's (or ArceeForCausalLM's) tensors for a Llama-shaped (or Arcee-shaped)
    model: fused matrices split again."""
    config = model.config
    C, KD = config.n_embd, config.kv_heads * config.head_dim
    ours = model.state_dict()
    state: dict[str, Tensor] = {"model.embed_tokens.weight": ours["transformer.wte.weight"]}
    for i in range(config.n_layer):
        src, dst = f"transformer.h.{i}.", f"model.layers.{i}."
        state[dst + "input_layernorm.weight"] = ours[src + "ln_1.weight"]
        state[dst + "post_attention_layernorm.weight"] = ours[src + "ln_2.weight"]
        for kind in ("weight", "bias") if config.bias else ("weight",):
            q, k, v = ours[f"{src}attn.c_attn.{kind}"].split([C, KD, KD])
            state[f"{dst}self_attn.q_proj.{kind}"] = q
            state[f"{dst}self_attn.k_proj.{kind}"] = k
            state[f"{dst}self_attn.v_proj.{kind}"] = v
            state[f"{dst}self_attn.o_proj.{kind}"] = ours[f"{src}attn.c_proj.{kind}"]
            inputs = _mlp_inputs(config)
            parts = ours[f"{src}mlp.c_fc.{kind}"].chunk(len(inputs))
            state |= {f"{dst}mlp.{p}.{kind}": t for p, t in zip(inputs, parts, strict=True)}
            state[f"{dst}mlp.down_proj.{kind}"] = ours[f"{src}mlp.c_proj.{kind}"]
    state["model.norm.weight"] = ours["transformer.ln_f.weight"]
    if not config.tie_embeddings:
        state["lm_head.weight"] = ours["lm_head.weight"]
    return state


def gpt_names_from_llama(
    config: ModelConfig, state: Mapping[str, Tensor], where: str
) -> dict[str, Tensor]:
    """Our names for LlamaForCausalLM's tensors (ArceeForCausalLM's for mlp = "relu2"): the
    separate matrices fused again. A missing or left-over tensor is one ScratchLMError."""
    remaining = dict(state)

    def take(name: str) -> Tensor:
        return take_tensor(remaining, name, where)

    ours: dict[str, Tensor] = {"transformer.wte.weight": take("model.embed_tokens.weight")}
    for i in range(config.n_layer):
        src, dst = f"model.layers.{i}.", f"transformer.h.{i}."
        ours[dst + "ln_1.weight"] = take(src + "input_layernorm.weight")
        ours[dst + "ln_2.weight"] = take(src + "post_attention_layernorm.weight")
        for kind in ("weight", "bias") if config.bias else ("weight",):
            ours[f"{dst}attn.c_attn.{kind}"] = torch.cat(
                [take(f"{src}self_attn.{p}_proj.{kind}") for p in ("q", "k", "v")]
            )
            ours[f"{dst}attn.c_proj.{kind}"] = take(f"{src}self_attn.o_proj.{kind}")
            ours[f"{dst}mlp.c_fc.{kind}"] = torch.cat(
                [take(f"{src}mlp.{proj}.{kind}") for proj in _mlp_inputs(config)]
            )
            ours[f"{dst}mlp.c_proj.{kind}"] = take(f"{src}mlp.down_proj.{kind}")
    ours["transformer.ln_f.weight"] = take("model.norm.weight")
    if "lm_head.weight" in remaining:
        ours["lm_head.weight"] = remaining.pop("lm_head.weight")
    # RoPE frequencies that some checkpoints carry are recomputed from the config.
    left = [name for name in remaining if not name.endswith("rotary_emb.inv_freq")]
    if left:
        raise ScratchLMError(
            f"{where}: tensor {left[0]} has no place in a {config.n_layer}-layer "
            f"{'Arcee' if config.mlp == 'relu2' else 'Llama'} model "
            f"({len(left)} such tensors)"
        )
    return ours
