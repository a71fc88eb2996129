"""The architectures a scratchlm GGUF file holds, in llama.cpp's terms and back.

A GGUF file is Hugging Face's model renamed: llama.cpp's converter (convert_hf_to_gguf.py)
reads config.json into `<arch>.*` metadata keys and renames every tensor through the gguf
package's table (gguf.get_tensor_name_map), changing a few layouts on the way. We do the same,
from the config.json and tensors of scratchlm.model.hf_format.hf_model, so a GGUF export holds
exactly what the HF export holds:

    HF model_type  GGUF arch  layout changes (HF -> GGUF)
    llama, arcee   llama,     q and k rows of each head reordered for llama.cpp's RoPE, which
                   arcee      rotates adjacent pairs (permute_rope)
    qwen3          qwen3      none: llama.cpp rotates Qwen3's halves as HF does
    gpt_neox       gptneox    query_key_value's rows per head (H, 3, D) -> all q, k, v (3, H, D);
                              llama.cpp requires every bias and output.weight, so a model without
                              attention biases or with tied embeddings gets zeros and a copy
    stablelm       stablelm   none (halves rotate, as in HF); output.weight required, as NeoX
    gpt2           gpt2       Conv1D's (in, out) weights transposed to (out, in)

Reading goes the other way: metadata -> a config.json dict, tensors -> HF names (found by
renaming the names a model of that config has) -> scratchlm.model.hf_format, which builds the
GPT. Norms and biases stay float32, as llama.cpp needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from scratchlm.core.errors import ScratchLMError

# Hugging Face model_type -> GGUF general.architecture.
GGUF_ARCHITECTURES = {
    "llama": "llama",
    "qwen3": "qwen3",
    "arcee": "arcee",
    "gpt_neox": "gptneox",
    "stablelm": "stablelm",
    "gpt2": "gpt2",
}
HF_MODEL_TYPES = {arch: model_type for model_type, arch in GGUF_ARCHITECTURES.items()}
_LLAMA_LIKE = ("llama", "qwen3", "arcee")  # RMSNorm, separate q/k/v, rope.freq_base
_HEAD_REQUIRED = ("gptneox", "stablelm")  # llama.cpp wants output.weight even when tied
_PERMUTED = ("llama", "arcee")  # llama.cpp's RoPE type NORM: adjacent pairs rotate
_ROTATED = ("q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias")
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

TensorSource = Callable[[str], "Tensor | None"]  # a GGUF tensor by name, float32, or None


def gguf_architecture(hf_config: Mapping[str, Any]) -> str:
    """The GGUF architecture of a config.json dict; ScratchLMError if GGUF has none for it."""
    model_type = hf_config.get("model_type")
    if model_type not in GGUF_ARCHITECTURES:
        raise ScratchLMError(
            f"model_type {model_type!r} cannot be written as GGUF; scratchlm writes "
            f"{', '.join(map(repr, GGUF_ARCHITECTURES))}"
        )
    return GGUF_ARCHITECTURES[model_type]


# --- metadata ----------------------------------------------------------------------------------


def _rope_base(hf: Mapping[str, Any]) -> float:
    rope = hf.get("rope_parameters") or {}
    return float(rope.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 1e4))))


# Our own keys (llama.cpp ignores keys it does not know) for Llama 3's RoPE scaling, whose
# effect llama.cpp reads from the rope_freqs tensor alone.
LLAMA3_ROPE_KEY = "scratchlm.rope.llama3"
_LLAMA3_PARAMETERS = (
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
)


def _llama3_rope(hf: Mapping[str, Any]) -> dict[str, float]:
    """Llama 3's RoPE scaling parameters of a config.json ({} without scaling); another kind
    of scaling is refused: llama.cpp would not compute it as transformers does."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return {}
    if kind == "llama3" and hf.get("model_type") in ("llama", "arcee"):
        return {key: float(rope[key]) for key in _LLAMA3_PARAMETERS}
    raise ScratchLMError(
        f"RoPE scaling {kind!r} of a {hf.get('model_type')} model cannot be written to GGUF; "
        "export this model with --format hf"
    )


def _rope_factors(hf: Mapping[str, Any], rope: Mapping[str, float]) -> Tensor:
    """llama.cpp's rope_freqs: per rotated pair, what divides its plain RoPE frequency."""
    from scratchlm.model.positional import llama3_inv_freq, rope_inv_freq

    heads = int(hf["num_attention_heads"])
    plain = rope_inv_freq(
        int(hf.get("head_dim") or int(hf["hidden_size"]) // heads), _rope_base(hf)
    )
    scaled = llama3_inv_freq(
        plain,
        rope["factor"],
        rope["low_freq_factor"],
        rope["high_freq_factor"],
        int(rope["original_max_position_embeddings"]),
    )
    return plain / scaled


def add_hparams(writer: Any, hf: Mapping[str, Any]) -> None:
    """The `<arch>.*` keys llama.cpp reads for this model, from its config.json dict."""
    arch = gguf_architecture(hf)
    writer.add_vocab_size(int(hf["vocab_size"]))
    if arch == "gpt2":
        writer.add_context_length(int(hf["n_positions"]))
        writer.add_embedding_length(int(hf["n_embd"]))
        writer.add_block_count(int(hf["n_layer"]))
        writer.add_feed_forward_length(int(hf.get("n_inner") or 4 * int(hf["n_embd"])))
        writer.add_head_count(int(hf["n_head"]))
        writer.add_layer_norm_eps(float(hf["layer_norm_epsilon"]))
        return
    hidden, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    head_dim = int(hf.get("head_dim") or hidden // heads)
    writer.add_context_length(int(hf["max_position_embeddings"]))
    writer.add_embedding_length(hidden)
    writer.add_block_count(int(hf["num_hidden_layers"]))
    writer.add_feed_forward_length(int(hf["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(hf.get("num_key_value_heads") or heads))
    writer.add_rope_dimension_count(head_dim)  # every dimension rotates (rotary_pct 1.0)
    writer.add_rope_freq_base(_rope_base(hf))
    if head_dim != hidden // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if arch in ("gptneox", "stablelm"):  # LayerNorm
        writer.add_parallel_residual(bool(hf.get("use_parallel_residual", True)))
        writer.add_layer_norm_eps(float(hf["layer_norm_eps"]))
    else:
        writer.add_layer_norm_rms_eps(float(hf.get("rms_norm_eps", 1e-6)))
        rope = _llama3_rope(hf)
        if rope:
            # llama.cpp needs only the rope_freqs tensor (gguf_tensors); these keys, which it
            # ignores, let our reader restore the config.
            for key, value in rope.items():
                writer.add_float32(f"{LLAMA3_ROPE_KEY}.{key}", float(value))


def hf_config_from_metadata(
    metadata: Mapping[str, Any], tensor_names: set[str], tensor: TensorSource
) -> dict[str, Any]:
    """A config.json dict (of the file's architecture) from GGUF metadata."""
    arch = metadata.get("general.architecture")
    if arch not in HF_MODEL_TYPES:
        raise ScratchLMError(
            f"architecture {arch!r} is not supported; scratchlm imports "
            f"{', '.join(map(repr, HF_MODEL_TYPES))} GGUF files"
        )

    def get(key: str, default: Any = None) -> Any:
        value = metadata.get(f"{arch}.{key}", default)
        if value is None:
            raise ScratchLMError(f"metadata key {arch}.{key} is missing")
        return value

    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab_size = metadata.get(f"{arch}.vocab_size", len(tokens) if tokens else None)
    if vocab_size is None:
        raise ScratchLMError(f"metadata has neither {arch}.vocab_size nor tokenizer.ggml.tokens")
    hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
    head_dim = int(get("attention.key_length", hidden // heads))
    if arch != "gpt2" and int(get("rope.dimension_count", head_dim)) != head_dim:
        raise ScratchLMError(
            f"{arch}.rope.dimension_count is {get('rope.dimension_count')}: scratchlm rotates "
            f"whole heads ({head_dim} dimensions)"
        )
    llama3 = {k: metadata.get(f"{LLAMA3_ROPE_KEY}.{k}") for k in _LLAMA3_PARAMETERS}
    has_llama3 = all(v is not None for v in llama3.values())
    if arch in _LLAMA_LIKE:
        scaling = metadata.get(f"{arch}.rope.scaling.type", "none")
        if scaling not in ("none", None) or ("rope_freqs.weight" in tensor_names) != has_llama3:
            raise ScratchLMError(
                f"RoPE scaling ({scaling if scaling != 'none' else 'rope_freqs.weight'}) is not "
                "supported; only plain RoPE models and scratchlm's Llama 3 scaling can be imported"
            )
    tied = "output.weight" not in tensor_names
    if arch in _HEAD_REQUIRED and not tied:
        # llama.cpp needs output.weight here; a copy of token_embd was a tied model.
        tied = torch.equal(
            _required(tensor, "output.weight"), _required(tensor, "token_embd.weight")
        )
    common: dict[str, Any] = {"vocab_size": int(vocab_size), "tie_word_embeddings": tied}
    if arch == "gpt2":
        config = {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            **common,
            "n_positions": int(get("context_length")),
            "n_embd": hidden,
            "n_layer": int(get("block_count")),
            "n_head": heads,
            "n_inner": int(get("feed_forward_length")),
            "activation_function": "gelu_new",
            "layer_norm_epsilon": _shortest(get("attention.layer_norm_epsilon")),
        }
    else:
        config = {
            "architectures": [f"{_CLASS_PREFIX[arch]}ForCausalLM"],
            "model_type": HF_MODEL_TYPES[arch],
            **common,
            "hidden_size": hidden,
            "intermediate_size": int(get("feed_forward_length")),
            "num_hidden_layers": int(get("block_count")),
            "num_attention_heads": heads,
            "num_key_value_heads": int(get("attention.head_count_kv", heads)),
            "head_dim": head_dim,
            "max_position_embeddings": int(get("context_length")),
            "rope_theta": _shortest(get("rope.freq_base", 10000.0)),
        }
        if has_llama3:
            rope: dict[str, Any] = {k: _shortest(float(v or 0)) for k, v in llama3.items()}
            rope["original_max_position_embeddings"] = int(rope["original_max_position_embeddings"])
            config["rope_parameters"] = {
                "rope_type": "llama3",
                "rope_theta": config["rope_theta"],
                **rope,
            }
    if arch in _LLAMA_LIKE:
        bias = "blk.0.attn_q.bias" in tensor_names
        config |= {
            "rms_norm_eps": _shortest(get("attention.layer_norm_rms_epsilon")),
            "hidden_act": "relu2" if arch == "arcee" else "silu",
            "attention_bias": bias,
            **({} if arch == "qwen3" else {"mlp_bias": "blk.0.ffn_up.bias" in tensor_names}),
        }
    elif arch == "gptneox":
        layers = config["num_hidden_layers"]
        # Our bias-free NeoX models are written with zero attention biases (llama.cpp needs them).
        biases = [
            tensor(f"blk.{i}.{name}.bias")
            for i in range(layers)
            for name in ("attn_qkv", "attn_output")
        ]
        config |= {
            "hidden_act": "gelu_pytorch_tanh",
            "use_parallel_residual": bool(get("use_parallel_residual", True)),
            "layer_norm_eps": _shortest(get("attention.layer_norm_epsilon")),
            "rotary_pct": 1.0,
            "rotary_emb_base": config["rope_theta"],
            "attention_bias": any(b is not None and bool(torch.count_nonzero(b)) for b in biases),
        }
    elif arch == "stablelm":
        config |= {
            "hidden_act": "silu",
            "use_parallel_residual": bool(get("use_parallel_residual", False)),
            "layer_norm_eps": _shortest(get("attention.layer_norm_epsilon")),
            "partial_rotary_factor": 1.0,
            "use_qkv_bias": "blk.0.attn_q.bias" in tensor_names,
            "qk_layernorm": "blk.0.attn_q_norm.weight" in tensor_names,
        }
    config["torch_dtype"] = "float32"
    for key in ("bos", "eos", "padding"):
        token_id = metadata.get(f"tokenizer.ggml.{key}_token_id")
        if token_id is not None:
            config[f"{'pad' if key == 'padding' else key}_token_id"] = int(token_id)
    return config


_CLASS_PREFIX = {
    "llama": "Llama",
    "qwen3": "Qwen3",
    "arcee": "Arcee",
    "gptneox": "GPTNeoX",
    "stablelm": "StableLm",
}


def _required(tensor: TensorSource, name: str) -> Tensor:
    value = tensor(name)
    if value is None:
        raise ScratchLMError(f"tensor {name} is missing")
    return value


def _shortest(value: float) -> float:
    """A float32 from the file as the shortest decimal that is the same float32: GGUF stores
    1e-5 as 9.999999747378752e-06, and config.json should say 1e-05 as the model's did."""
    return float(str(np.float32(value)))


# --- tensors -----------------------------------------------------------------------------------


def _name_map(arch: str, layers: int) -> Any:
    import gguf

    kinds = {gguf.MODEL_ARCH_NAMES[kind]: kind for kind in gguf.MODEL_ARCH_NAMES}
    return gguf.get_tensor_name_map(kinds[arch], layers)


def _layers(hf: Mapping[str, Any]) -> int:
    return int(hf.get("num_hidden_layers") or hf["n_layer"])


def gguf_name(hf_name: str, name_map: Any) -> str:
    name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise ScratchLMError(f"tensor {hf_name} has no GGUF name; cannot write it")
    return str(name)


def gguf_tensors(
    hf: Mapping[str, Any], state: Mapping[str, Tensor]
) -> Iterator[tuple[str, Tensor]]:
    """(GGUF name, float32 tensor in llama.cpp's layout) for each tensor of an HF state dict."""
    arch = gguf_architecture(hf)
    names = _name_map(arch, _layers(hf))
    for hf_name, tensor in state.items():
        weight = _relaid(hf, hf_name, tensor.detach().to(torch.float32).cpu(), to_gguf=True)
        yield gguf_name(hf_name, names), weight.contiguous()
    if rope := _llama3_rope(hf):
        yield "rope_freqs.weight", _rope_factors(hf, rope)
    if arch == "gptneox":
        yield from _neox_zero_biases(hf, state, names)
    renamed = {gguf_name(hf_name, names): hf_name for hf_name in state}
    if arch in _HEAD_REQUIRED and "output.weight" not in renamed:
        # A tied model's head: a copy of the embedding.
        embedding = state[renamed["token_embd.weight"]]
        yield "output.weight", embedding.detach().to(torch.float32).cpu().contiguous()


def _neox_zero_biases(
    hf: Mapping[str, Any], state: Mapping[str, Tensor], names: Any
) -> Iterator[tuple[str, Tensor]]:
    """The attention biases llama.cpp's GPT-NeoX needs and a bias-free HF NeoX lacks."""
    hidden = int(hf["hidden_size"])
    for i in range(_layers(hf)):
        prefix = f"gpt_neox.layers.{i}.attention."
        for part, size in (("query_key_value", 3 * hidden), ("dense", hidden)):
            if f"{prefix}{part}.bias" not in state:
                yield gguf_name(f"{prefix}{part}.bias", names), torch.zeros(size)


def hf_state_from_gguf(
    hf: Mapping[str, Any], expected: Mapping[str, Tensor], tensors: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """GGUF-named float32 tensors -> the HF names and layouts of `expected` (the state dict a
    model of config `hf` has, any device: only names are used). Tensors the file lacks or that
    have no place in the model are one ScratchLMError each."""
    arch = gguf_architecture(hf)
    names = _name_map(arch, _layers(hf))
    remaining = dict(tensors)
    state: dict[str, Tensor] = {}
    for hf_name in expected:
        name = gguf_name(hf_name, names)
        if name not in remaining:
            raise ScratchLMError(f"tensor {name} is missing")
        state[hf_name] = _relaid(hf, hf_name, remaining.pop(name), to_gguf=False).contiguous()
    rope = _llama3_rope(hf)
    factors = remaining.pop("rope_freqs.weight", None) if rope else None
    if factors is not None and not torch.allclose(factors, _rope_factors(hf, rope)):
        # Written from the scaling parameters, which must still say the same.
        raise ScratchLMError(
            "tensor rope_freqs.weight disagrees with the file's Llama 3 RoPE parameters"
        )
    if arch in _HEAD_REQUIRED and hf.get("tie_word_embeddings"):
        remaining.pop("output.weight", None)  # the copy gguf_tensors wrote
    if arch == "gptneox" and not hf["attention_bias"]:
        for name in list(remaining):  # the zero biases _neox_zero_biases wrote
            if name.endswith(("attn_qkv.bias", "attn_output.bias")):
                del remaining[name]
    if remaining:
        first = sorted(remaining)[0]
        raise ScratchLMError(
            f"tensor {first} has no place in a {_layers(hf)}-layer {arch} model "
            f"({len(remaining)} such tensors)"
        )
    return state


def _relaid(hf: Mapping[str, Any], hf_name: str, weight: Tensor, to_gguf: bool) -> Tensor:
    """One tensor in llama.cpp's layout (to_gguf) or back in Hugging Face's."""
    arch = gguf_architecture(hf)
    heads = int(hf.get("num_attention_heads") or hf.get("n_head") or 0)
    if arch in _PERMUTED and hf_name.endswith(_ROTATED):
        if ".k_proj." in hf_name:
            heads = int(hf.get("num_key_value_heads") or heads)
        return permute_rope(weight, heads) if to_gguf else unpermute_rope(weight, heads)
    if arch == "gptneox" and ".query_key_value." in hf_name:
        return _qkv_grouped(weight, heads) if to_gguf else _qkv_interleaved(weight, heads)
    if arch == "gpt2" and hf_name.endswith(_CONV1D):
        return weight.t()
    return weight


def _qkv_grouped(t: Tensor, heads: int) -> Tensor:
    """NeoX's query_key_value rows (H, 3, D) -> llama.cpp's (3, H, D); weight or bias."""
    return t.reshape(heads, 3, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def _qkv_interleaved(t: Tensor, heads: int) -> Tensor:
    """llama.cpp's attn_qkv rows (3, H, D) -> NeoX's (H, 3, D)."""
    return t.reshape(3, heads, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def permute_rope(weight: Tensor, heads: int) -> Tensor:
    """HF's rotate-half row order -> llama.cpp's interleaved pairs, inside each head.

    Per head of d rows, HF pairs row i with row i + d/2; llama.cpp wants them adjacent, so the
    new order is 0, d/2, 1, d/2 + 1, ... (works for a weight matrix and for a bias).
    """
    rows = weight.shape[0]
    half = rows // heads // 2
    grouped = weight.reshape(heads, 2, half, *weight.shape[1:])
    return grouped.transpose(1, 2).reshape(weight.shape)


def unpermute_rope(weight: Tensor, heads: int) -> Tensor:
    """The inverse of permute_rope: llama.cpp's interleaved rows back to HF's halves."""
    rows = weight.shape[0]
    half = rows // heads // 2
    grouped = weight.reshape(heads, half, 2, *weight.shape[1:])
    return grouped.transpose(1, 2).reshape(weight.shape)
