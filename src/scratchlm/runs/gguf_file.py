"""GGUF, llama.cpp's single-file model format: import a Llama-architecture model, export one.

A GGUF file is a header of typed key/value metadata followed by named tensors, each stored in
one of ggml's types (f32, f16, or a block quantisation such as Q4_1: 32 weights share a scale
and a minimum, 4 bits each). We read and write it with the `gguf` package (llama.cpp's own
Python reader), and translate between its vocabulary and Hugging Face's:

    GGUF                               Hugging Face Llama (config.json, state dict)
    llama.block_count                  num_hidden_layers
    llama.embedding_length             hidden_size
    llama.feed_forward_length          intermediate_size
    llama.attention.head_count(_kv)    num_attention_heads, num_key_value_heads
    llama.rope.freq_base               rope_theta
    llama.attention.layer_norm_rms_epsilon   rms_norm_eps
    token_embd / output_norm / output  model.embed_tokens / model.norm / lm_head
    blk.N.attn_q|k|v|output            model.layers.N.self_attn.q|k|v|o_proj
    blk.N.ffn_gate|up|down             model.layers.N.mlp.gate|up|down_proj
    blk.N.attn_norm / ffn_norm         model.layers.N.input_layernorm / post_attention_layernorm

Two details are easy to get wrong:

* RoPE layout. Hugging Face rotates the two halves of each head (dimension i with i + d/2);
  llama.cpp rotates adjacent pairs (2i with 2i + 1). llama.cpp's converter therefore reorders
  the rows of q_proj and k_proj inside every head so that row i + d/2 follows row i. We undo
  that on import and redo it on export, so HF names always hold HF-layout weights.
* Tensor shapes. GGUF lists dimensions innermost first ([in, out]); numpy's order is
  [out, in], which is already PyTorch's nn.Linear layout, so no transpose is needed.

The tokenizer is stored as metadata too (scratchlm.tokenizer.gguf_vocab reads and writes it);
scratchlm.runs.gguf_runs turns a file into a run directory and back.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from scratchlm.core.atomic_files import atomic_path
from scratchlm.core.errors import ScratchLMError
from scratchlm.core.user_files import read_bytes
from scratchlm.tokenizer.bpe import BPETokenizer
from scratchlm.tokenizer.gguf_vocab import (
    add_tokenizer_metadata,
    check_ids_fit,
    tokenizer_from_metadata,
)

GGUF_MAGIC = b"GGUF"
ARCHITECTURE = "llama"

# A layer's tensors: GGUF's name after "blk.N." -> Hugging Face's after "model.layers.N.".
_LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_REQUIRED_LAYER_TENSORS = [k for k in _LAYER_TENSORS if k.endswith(".weight")]
_LAYER_NAME = re.compile(r"blk\.(\d+)\.(.+)")


class GGUFModel(NamedTuple):
    """What a GGUF file holds, in the terms the rest of scratchlm (and Hugging Face) uses."""

    config: dict[str, Any]  # a Llama config.json
    state_dict: dict[str, torch.Tensor]  # HF Llama names, float32, HF RoPE layout
    tokenizer: BPETokenizer
    chat_template: str | None


# ------------------------------------------------------------------------------------ read


def read_gguf(path: str | os.PathLike[str]) -> GGUFModel:
    """Read a Llama-architecture GGUF: config, float32 HF-named weights, tokenizer, template.

    Anything we cannot import faithfully (another architecture, a tensor type the gguf package
    cannot dequantise, an unknown tensor, a tokenizer that is not byte-level BPE, a
    pre-tokenizer we have no regex for) raises a one-line ScratchLMError naming the file.
    """
    path = Path(path)
    reader = open_gguf(path)
    try:
        metadata = _metadata(reader)
        config = llama_config(metadata, {t.name for t in reader.tensors})
        tokenizer = tokenizer_from_metadata(metadata)  # before the slow part, to fail fast
        state_dict = _read_tensors(reader, config)
    except ScratchLMError as e:
        raise ScratchLMError(f"{path}: {e}") from None
    template = metadata.get("tokenizer.chat_template")
    return GGUFModel(config, state_dict, tokenizer, template if isinstance(template, str) else None)


def open_gguf(path: Path) -> Any:
    """A gguf.GGUFReader for `path`, or ScratchLMError if it is missing or not a GGUF file."""
    import gguf

    magic = read_bytes(path, "GGUF file", size=4)
    if magic != GGUF_MAGIC:
        raise ScratchLMError(
            f"{path} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})"
        )

    class PlainArrayReader(gguf.GGUFReader):
        # The reader slices its np.memmap a million times for a 49k-token vocabulary, and each
        # slice of a memmap subclass costs Python bookkeeping. A plain ndarray view of the same
        # mapped bytes reads identically, without that bookkeeping.
        @property  # type: ignore[override]
        def data(self) -> np.ndarray:
            return self._plain_data

        @data.setter
        def data(self, value: np.ndarray) -> None:
            self._plain_data = value.view(np.ndarray)

    try:
        return PlainArrayReader(path)
    except Exception as e:  # the reader raises ValueError, struct.error, IndexError, ...
        raise ScratchLMError(f"{path} is a damaged or truncated GGUF file: {e}") from None


def _metadata(reader: Any) -> dict[str, Any]:
    """Every metadata key -> its Python value (strings, numbers, lists)."""
    return {name: field.contents() for name, field in reader.fields.items()}


def llama_config(metadata: Mapping[str, Any], tensor_names: Iterable[str]) -> dict[str, Any]:
    """A Hugging Face Llama config.json (as a dict) from GGUF metadata."""
    arch = metadata.get("general.architecture")
    if arch != ARCHITECTURE:
        raise ScratchLMError(
            f"architecture {arch!r} is not supported; scratchlm imports only {ARCHITECTURE!r} "
            "GGUF files"
        )

    def get(key: str, default: Any = None) -> Any:
        value = metadata.get(f"{arch}.{key}", default)
        if value is None:
            raise ScratchLMError(f"metadata key {arch}.{key} is missing")
        return value

    names = set(tensor_names)
    scaling = metadata.get(f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", None) or "rope_freqs.weight" in names:
        raise ScratchLMError(
            f"RoPE scaling ({scaling if scaling != 'none' else 'rope_freqs.weight'}) is not "
            "supported; only plain RoPE models can be imported"
        )
    hidden = int(get("embedding_length"))
    heads = int(get("attention.head_count"))
    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab_size = metadata.get(f"{arch}.vocab_size", len(tokens) if tokens else None)
    if vocab_size is None:
        raise ScratchLMError(f"metadata has neither {arch}.vocab_size nor tokenizer.ggml.tokens")
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(vocab_size),
        "hidden_size": hidden,
        "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv", heads)),
        "head_dim": int(get("attention.key_length", hidden // heads)),
        "max_position_embeddings": int(get("context_length")),
        "rms_norm_eps": _shortest(get("attention.layer_norm_rms_epsilon")),
        "rope_theta": _shortest(get("rope.freq_base", 10000.0)),
        "hidden_act": "silu",
        "attention_bias": "blk.0.attn_q.bias" in names,
        "mlp_bias": False,
        "tie_word_embeddings": "output.weight" not in names,
        "torch_dtype": "float32",
    }
    for key in ("bos", "eos", "padding"):
        token_id = metadata.get(f"tokenizer.ggml.{key}_token_id")
        if token_id is not None:
            config[f"{'pad' if key == 'padding' else key}_token_id"] = int(token_id)
    return config


def _shortest(value: float) -> float:
    """A float32 from the file as the shortest decimal that is the same float32: GGUF stores
    1e-5 as 9.999999747378752e-06, and config.json should say 1e-05 as the model's did."""
    return float(str(np.float32(value)))


def _supported_types() -> dict[int, str]:
    import gguf
    from gguf.quants import _type_traits  # the block formats gguf.quants can dequantise

    kinds = gguf.GGMLQuantizationType
    plain = [kinds.F32, kinds.F16]
    return {int(t): t.name for t in [*plain, *_type_traits]}


def _read_tensors(reader: Any, config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    import gguf

    # Check every tensor's type and name before dequantising anything: a bad file fails fast.
    supported = _supported_types()
    layers = config["num_hidden_layers"]
    names: dict[str, str] = {}
    for tensor in reader.tensors:
        kind = int(tensor.tensor_type)
        if kind not in supported:
            try:
                kind_name = gguf.GGMLQuantizationType(kind).name
            except ValueError:
                kind_name = f"type {kind}"
            raise ScratchLMError(
                f"tensor {tensor.name} is stored as {kind_name}, which the gguf package cannot "
                f"dequantise; supported: {', '.join(sorted(set(supported.values())))}"
            )
        names[tensor.name] = hf_tensor_name(tensor.name, layers)
    for n in range(layers):
        for suffix in _REQUIRED_LAYER_TENSORS:
            if f"blk.{n}.{suffix}" not in names:
                raise ScratchLMError(f"tensor blk.{n}.{suffix} is missing")
    for name in ("token_embd.weight", "output_norm.weight"):
        if name not in names:
            raise ScratchLMError(f"tensor {name} is missing")

    state_dict: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        # GGUF lists dimensions innermost first; numpy's (and nn.Linear's) order is reversed.
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        weight = dequantize(tensor.data, int(tensor.tensor_type)).reshape(shape)
        hf_name = names[tensor.name]
        if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            weight = unpermute_rope(weight, config["num_attention_heads"])
        elif hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            weight = unpermute_rope(weight, config["num_key_value_heads"])
        state_dict[hf_name] = weight.contiguous()
    return state_dict


# Block quantisations we decode ourselves, with torch, as (bytes per block, weights per block).
# Each block of 32 weights starts with an f16 scale d; Q4_1 adds an f16 minimum m. Q4_0 and
# Q4_1 pack two 4-bit values per byte, weights 0-15 in the low nibbles and 16-31 in the high.
_BLOCKS = {2: (18, 32), 3: (20, 32), 8: (34, 32)}  # Q4_0, Q4_1, Q8_0 (ggml type numbers)


def dequantize(data: np.ndarray, ggml_type: int) -> torch.Tensor:
    """A tensor's raw GGUF data -> a flat float32 tensor.

    Q4_0, Q4_1 and Q8_0 (the types of SmolLM2's file and most small GGUFs) are decoded here,
    a handful of whole-array numpy operations, several times faster than the gguf package's
    block-by-block code; every other type goes through gguf.quants. The arithmetic is the
    same (d * q + m in float32), and tests/test_gguf.py checks that both agree bitwise.
    """
    import gguf

    kinds = gguf.GGMLQuantizationType
    if ggml_type == kinds.F32:
        return torch.from_numpy(np.array(data, dtype=np.float32).reshape(-1))
    if ggml_type == kinds.F16:
        return torch.from_numpy(np.array(data, dtype=np.float16).reshape(-1)).float()
    if ggml_type not in _BLOCKS:
        values = gguf.quants.dequantize(data, kinds(ggml_type))
        return torch.from_numpy(np.array(values, dtype=np.float32).reshape(-1))
    block_bytes, block_size = _BLOCKS[ggml_type]
    raw = np.asarray(data, dtype=np.uint8).reshape(-1, block_bytes)

    def f16(column: int) -> np.ndarray:  # the f16 stored at bytes column, column + 1
        return raw[:, column : column + 2].copy().view(np.float16).astype(np.float32)

    if ggml_type == kinds.Q8_0:
        values = raw[:, 2:].copy().view(np.int8).astype(np.float32)
        values *= f16(0)
    else:
        packed = raw[:, 4:] if ggml_type == kinds.Q4_1 else raw[:, 2:]
        nibbles = np.empty((raw.shape[0], block_size), dtype=np.uint8)
        np.bitwise_and(packed, 0x0F, out=nibbles[:, : block_size // 2])
        np.right_shift(packed, 4, out=nibbles[:, block_size // 2 :])
        values = nibbles.astype(np.float32)
        if ggml_type == kinds.Q4_0:
            values -= 8
        values *= f16(0)
        if ggml_type == kinds.Q4_1:
            values += f16(2)
    return torch.from_numpy(values.reshape(-1))


def hf_tensor_name(gguf_name: str, num_layers: int) -> str:
    """The Hugging Face Llama name of GGUF tensor `gguf_name`; ScratchLMError if it has none."""
    if gguf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[gguf_name]
    match = _LAYER_NAME.fullmatch(gguf_name)
    if match and match.group(2) in _LAYER_TENSORS and int(match.group(1)) < num_layers:
        return f"model.layers.{match.group(1)}.{_LAYER_TENSORS[match.group(2)]}"
    raise ScratchLMError(
        f"tensor {gguf_name} has no place in a plain Llama model of {num_layers} layers"
    )


def gguf_tensor_name(hf_name: str) -> str:
    """The GGUF name of Hugging Face Llama tensor `hf_name`; ScratchLMError if it has none."""
    for gguf_name, name in _GLOBAL_TENSORS.items():
        if hf_name == name:
            return gguf_name
    match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", hf_name)
    if match:
        for suffix, name in _LAYER_TENSORS.items():
            if match.group(2) == name:
                return f"blk.{match.group(1)}.{suffix}"
    raise ScratchLMError(f"tensor {hf_name} is not part of a Llama model; cannot write it to GGUF")


def permute_rope(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """HF's rotate-half row order -> llama.cpp's interleaved pairs, inside each head.

    Per head of d rows, HF pairs row i with row i + d/2; llama.cpp wants them adjacent, so the
    new order is 0, d/2, 1, d/2 + 1, ... (works for a weight matrix and for a bias).
    """
    rows = weight.shape[0]
    half = rows // heads // 2
    grouped = weight.reshape(heads, 2, half, *weight.shape[1:])
    return grouped.transpose(1, 2).reshape(weight.shape)


def unpermute_rope(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of permute_rope: llama.cpp's interleaved rows back to HF's halves."""
    rows = weight.shape[0]
    half = rows // heads // 2
    grouped = weight.reshape(heads, half, 2, *weight.shape[1:])
    return grouped.transpose(1, 2).reshape(weight.shape)


# ------------------------------------------------------------------------------------ write


def write_gguf(
    path: str | os.PathLike[str],
    config: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    tokenizer: BPETokenizer,
    chat_template: str | None = None,
    dtype: str = "f32",
    name: str | None = None,
) -> None:
    """Write a Llama-shaped model (HF config and names) and its tokenizer as a GGUF file.

    `dtype` is "f32" or "f16" for the weight matrices; norms and biases stay f32, as llama.cpp
    expects. The file is written atomically.
    """
    import gguf

    if dtype not in ("f32", "f16"):
        raise ScratchLMError(f"GGUF export dtype must be 'f32' or 'f16', got {dtype!r}")
    if config.get("model_type", "llama") != "llama":
        raise ScratchLMError(
            f"model_type {config.get('model_type')!r} cannot be written as a llama GGUF"
        )
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads", heads))
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    vocab_size = int(config["vocab_size"])
    check_ids_fit(tokenizer, vocab_size)

    path = Path(path)
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, ARCHITECTURE)
        writer.add_name(name or path.stem)
        writer.add_file_type(
            gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32
        )
        writer.add_vocab_size(vocab_size)
        writer.add_context_length(int(config["max_position_embeddings"]))
        writer.add_embedding_length(hidden)
        writer.add_block_count(int(config["num_hidden_layers"]))
        writer.add_feed_forward_length(int(config["intermediate_size"]))
        writer.add_head_count(heads)
        writer.add_head_count_kv(kv_heads)
        writer.add_rope_dimension_count(head_dim)
        if head_dim != hidden // heads:
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
        writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
        add_tokenizer_metadata(writer, tokenizer, vocab_size, config, chat_template)

        tied = bool(config.get("tie_word_embeddings", "lm_head.weight" not in state_dict))
        for hf_name, tensor in state_dict.items():
            if hf_name == "lm_head.weight" and tied:
                continue  # llama.cpp reuses token_embd when output.weight is absent
            weight = tensor.detach().to(torch.float32).cpu()
            if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
                weight = permute_rope(weight, heads)
            elif hf_name.endswith(("k_proj.weight", "k_proj.bias")):
                weight = permute_rope(weight, kv_heads)
            array = weight.contiguous().numpy()
            if dtype == "f16" and array.ndim == 2:
                array = array.astype(np.float16)
            writer.add_tensor(gguf_tensor_name(hf_name), array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
