"""GPT-NeoX (GPTNeoXForCausalLM) folders: LayerNorm + RoPE + GELU models, both ways.

The demo recipe's shape (RoPE with LayerNorm and a GELU MLP, no biases) is neither GPT-2 nor
Llama; GPT-NeoX computes it exactly when its config is set to our choices:

    use_parallel_residual false   our blocks are sequential: x + attn(ln_1(x)), then + mlp(ln_2(.))
    rotary_pct 1.0                RoPE on the whole head (NeoX's default rotates only a quarter),
                                  rotate-half layout, as our apply_rope
    hidden_act gelu_pytorch_tanh  F.gelu(approximate="tanh"), the very call our MLP makes
    attention_bias                our bias switch; NeoX's MLP and LayerNorms always have biases,
                                  so a model without biases is written with zero ones there
    one key/value head per query head (NeoX has no grouped-query attention), head_dim = C / H

Its fused query_key_value is laid out per head, (H, 3, D) rows: head h's q, k and v next to
each other, where our c_attn stacks all queries, then all keys, then all values, (3, H, D).
The LM head is written as `embed_out.weight`, the name of every NeoX checkpoint (Pythia):
transformers 4.x loads only that name, 5.x renames it to lm_head, llama.cpp knows both.
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
    take_tensor,
    take_zeros,
    validated_config,
)

MODEL_TYPE = "gpt_neox"
# The tanh approximation of GELU under both of transformers' names (gelu_new computes the same
# formula by hand; agrees to float32 rounding).
TANH_GELU = ("gelu_pytorch_tanh", "gelu_new")


def neox_requirements(config: ModelConfig) -> dict[str, tuple[Any, Any]]:
    """What GPT-NeoX computes, as {option: (this config's value, the value NeoX needs)}.
    bias is free (attention_bias), and so are the norm's eps, the widths and tied embeddings."""
    return requirements(
        config,
        multi_head=True,
        pos_encoding="rope",
        rope_scaling="none",
        norm="layernorm",
        mlp="gelu",
        qk_norm=False,
    )


# --- config.json <-> ModelConfig ---------------------------------------------------------------


def model_config_to_neox_config(config: ModelConfig) -> dict[str, Any]:
    """The config.json of GPTNeoXForCausalLM for a NeoX-shaped ModelConfig."""
    return {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": MODEL_TYPE,
        **decoder_config(config),
        "layer_norm_eps": config.norm_eps,
        "hidden_act": TANH_GELU[0],
        "use_parallel_residual": False,
        "attention_bias": config.bias,
        "attention_dropout": config.dropout,
        "hidden_dropout": config.dropout,
        # transformers 5 reads rope_parameters; 4.x and llama.cpp's converter read rotary_pct
        # and rotary_emb_base. rotary_pct must be written: its default is 0.25.
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": config.rope_base,
            "partial_rotary_factor": 1.0,
        },
        "rotary_pct": 1.0,
        "rotary_emb_base": config.rope_base,
    }


def neox_config_to_model_config(hf: Mapping[str, Any], where: str) -> ModelConfig:
    """A ModelConfig from a GPT-NeoX config.json (transformers 4.x or 5.x keys). Pythia's own
    configs (parallel residual, a quarter of each head rotated, exact GELU) are refused by
    name: our blocks cannot compute them."""
    expect_field(hf, "hidden_act", TANH_GELU, where, "gelu")
    if hf.get("use_parallel_residual", True):
        raise ScratchLMError(
            f"{where}: use_parallel_residual = true is not supported (scratchlm's blocks add "
            "attention and MLP one after the other)"
        )
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    rotary = float(rope.get("partial_rotary_factor", hf.get("rotary_pct", 0.25)))
    if rotary != 1.0:
        raise ScratchLMError(
            f"{where}: rotary_pct = {rotary} is not supported (scratchlm rotates whole heads, 1.0)"
        )
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ScratchLMError(f"{where}: RoPE scaling {rope_type!r} is not supported for GPT-NeoX")
    rope_base = rope.get("rope_theta", hf.get("rotary_emb_base", hf.get("rope_theta", 10000.0)))
    config = ModelConfig(
        **decoder_shape(hf, where),
        mlp="gelu",
        norm="layernorm",
        norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
        bias=bool(hf.get("attention_bias", True)),  # GPTNeoXConfig's default
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),  # likewise
        pos_encoding="rope",
        rope_base=float(rope_base),
    )
    return validated_config(config, where)


# --- tensors: ours <-> transformers' -----------------------------------------------------------


def _heads_interleaved(t: Tensor, n_head: int) -> Tensor:
    """Our c_attn rows (3, H, D) -> NeoX's query_key_value rows (H, 3, D); weight or bias."""
    return t.reshape(3, n_head, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def _heads_grouped(t: Tensor, n_head: int) -> Tensor:
    """NeoX's query_key_value rows (H, 3, D) -> ours (3, H, D)."""
    return t.reshape(n_head, 3, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def neox_state_dict_from_gpt(model: GPT) -> dict[str, Tensor]:
    """GPTNeoXForCausalLM's tensors for a NeoX-shaped model. Without our biases, the MLP and
    LayerNorm biases NeoX always has are zeros (the attention's are switched off instead)."""
    config = model.config
    ours = model.state_dict()

    dtype = ours["transformer.wte.weight"].dtype

    def bias(name: str, size: int) -> Tensor:
        return ours[name] if config.bias else torch.zeros(size, dtype=dtype)

    C, F = config.n_embd, config.ffn_hidden
    state: dict[str, Tensor] = {"gpt_neox.embed_in.weight": ours["transformer.wte.weight"]}
    for i in range(config.n_layer):
        src, dst = f"transformer.h.{i}.", f"gpt_neox.layers.{i}."
        for theirs, mine in (("input_layernorm", "ln_1"), ("post_attention_layernorm", "ln_2")):
            state[f"{dst}{theirs}.weight"] = ours[f"{src}{mine}.weight"]
            state[f"{dst}{theirs}.bias"] = bias(f"{src}{mine}.bias", C)
        for kind in ("weight", "bias") if config.bias else ("weight",):
            state[f"{dst}attention.query_key_value.{kind}"] = _heads_interleaved(
                ours[f"{src}attn.c_attn.{kind}"], config.n_head
            )
            state[f"{dst}attention.dense.{kind}"] = ours[f"{src}attn.c_proj.{kind}"]
        state[dst + "mlp.dense_h_to_4h.weight"] = ours[src + "mlp.c_fc.weight"]
        state[dst + "mlp.dense_h_to_4h.bias"] = bias(src + "mlp.c_fc.bias", F)
        state[dst + "mlp.dense_4h_to_h.weight"] = ours[src + "mlp.c_proj.weight"]
        state[dst + "mlp.dense_4h_to_h.bias"] = bias(src + "mlp.c_proj.bias", C)
    state["gpt_neox.final_layer_norm.weight"] = ours["transformer.ln_f.weight"]
    state["gpt_neox.final_layer_norm.bias"] = bias("transformer.ln_f.bias", C)
    if not config.tie_embeddings:
        state["embed_out.weight"] = ours["lm_head.weight"]
    return state


def gpt_names_from_neox(
    config: ModelConfig, state: Mapping[str, Tensor], where: str
) -> dict[str, Tensor]:
    """Our names for GPTNeoXForCausalLM's tensors. Without biases (attention_bias false), the
    MLP and LayerNorm biases must be zeros, which our bias-free layers compute; any other
    value is refused, since scratchlm has one bias switch for all layers."""
    remaining = dict(state)

    def take(name: str) -> Tensor:
        return take_tensor(remaining, name, where)

    def take_bias(name: str) -> Tensor | None:
        if config.bias:
            return take(name)
        why = "attention_bias is false, and scratchlm has one bias switch for all layers"
        take_zeros(remaining, name, where, why)
        return None

    ours: dict[str, Tensor] = {"transformer.wte.weight": take("gpt_neox.embed_in.weight")}

    def put_bias(name: str, tensor: Tensor | None) -> None:
        if tensor is not None:
            ours[name] = tensor

    for i in range(config.n_layer):
        src, dst = f"gpt_neox.layers.{i}.", f"transformer.h.{i}."
        for theirs, mine in (("input_layernorm", "ln_1"), ("post_attention_layernorm", "ln_2")):
            ours[f"{dst}{mine}.weight"] = take(f"{src}{theirs}.weight")
            put_bias(f"{dst}{mine}.bias", take_bias(f"{src}{theirs}.bias"))
        for kind in ("weight", "bias") if config.bias else ("weight",):
            ours[f"{dst}attn.c_attn.{kind}"] = _heads_grouped(
                take(f"{src}attention.query_key_value.{kind}"), config.n_head
            )
            ours[f"{dst}attn.c_proj.{kind}"] = take(f"{src}attention.dense.{kind}")
        ours[dst + "mlp.c_fc.weight"] = take(src + "mlp.dense_h_to_4h.weight")
        put_bias(dst + "mlp.c_fc.bias", take_bias(src + "mlp.dense_h_to_4h.bias"))
        ours[dst + "mlp.c_proj.weight"] = take(src + "mlp.dense_4h_to_h.weight")
        put_bias(dst + "mlp.c_proj.bias", take_bias(src + "mlp.dense_4h_to_h.bias"))
    ours["transformer.ln_f.weight"] = take("gpt_neox.final_layer_norm.weight")
    put_bias("transformer.ln_f.bias", take_bias("gpt_neox.final_layer_norm.bias"))
    # embed_out in NeoX checkpoints and transformers 4.x, lm_head where transformers 5 saved it.
    for name in ("embed_out.weight", "lm_head.weight"):
        if name in remaining:
            ours["lm_head.weight"] = remaining.pop(name)
    # Buffers older checkpoints carry (RoPE frequencies, causal masks) are not weights.
    left = [
        name
        for name in remaining
        if not name.endswith(("rotary_emb.inv_freq", ".attention.bias", ".attention.masked_bias"))
    ]
    if left:
        raise ScratchLMError(
            f"{where}: tensor {left[0]} has no place in a {config.n_layer}-layer GPT-NeoX model "
            f"({len(left)} such tensors)"
        )
    return ours
