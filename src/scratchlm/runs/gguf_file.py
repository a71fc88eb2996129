"""GGUF, llama.cpp's single-file model format: import a model, export one.

A GGUF file is a header of typed key/value metadata followed by named tensors, each stored in
one of ggml's types (f32, f16, or a block quantisation such as Q8_0 or Q4_1: 32 weights share a
scale, and for Q4_1 a minimum, 8 or 4 bits each). We read and write it with the `gguf` package
(llama.cpp's own Python library). Its content is a Hugging Face model in llama.cpp's names
(scratchlm.runs.gguf_architectures: Llama, Qwen3, Arcee, GPT-NeoX, StableLM, GPT-2), so a file
reads into a config.json dict and HF-named tensors, and is written from the same.

GGUF lists a tensor's dimensions innermost first ([in, out]); numpy's order is [out, in], which
is already nn.Linear's, so no transpose is needed.

The tokenizer is stored as metadata too (scratchlm.tokenizer.gguf_vocab reads and writes it);
scratchlm.runs.gguf_runs turns a file into a run directory and back.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from scratchlm.core.atomic_files import atomic_path
from scratchlm.core.errors import ScratchLMError
from scratchlm.core.user_files import read_bytes
from scratchlm.runs.gguf_architectures import (
    add_hparams,
    gguf_architecture,
    gguf_tensors,
    hf_config_from_metadata,
    hf_state_from_gguf,
)
from scratchlm.tokenizer.bpe import BPETokenizer
from scratchlm.tokenizer.gguf_vocab import (
    add_tokenizer_metadata,
    check_ids_fit,
    tokenizer_from_metadata,
)

GGUF_MAGIC = b"GGUF"

# The types a GGUF export can store its weight matrices in (`scratchlm export --dtype`).
GGUF_DTYPES = ("f32", "f16", "q8_0", "q4_0", "q4_1")


class GGUFModel(NamedTuple):
    """What a GGUF file holds, in the terms the rest of scratchlm (and Hugging Face) uses."""

    config: dict[str, Any]  # a config.json of the file's architecture
    state_dict: dict[str, torch.Tensor]  # HF names, float32, HF layouts
    tokenizer: BPETokenizer
    chat_template: str | None


# ------------------------------------------------------------------------------------ read


def read_gguf(path: str | os.PathLike[str]) -> GGUFModel:
    """Read a GGUF of one of our architectures: config, float32 HF-named weights, tokenizer,
    chat template.

    Anything we cannot import faithfully (another architecture, a tensor type the gguf package
    cannot dequantise, an unknown or missing tensor, a tokenizer that is not byte-level BPE, a
    pre-tokenizer we have no regex for) raises a one-line ScratchLMError naming the file.
    """
    path = Path(path)
    reader = open_gguf(path)
    try:
        metadata = _metadata(reader)
        tensors = _check_types({t.name: t for t in reader.tensors})
        cache: dict[str, torch.Tensor] = {}

        def tensor(name: str) -> torch.Tensor | None:
            if name not in tensors:
                return None
            if name not in cache:
                cache[name] = _dequantized(tensors[name])
            return cache[name]

        config = hf_config_from_metadata(metadata, set(tensors), tensor)
        tokenizer = tokenizer_from_metadata(metadata)  # before the slow part, to fail fast
        expected = _hf_names(config)
        for name in tensors:
            tensor(name)
        state_dict = hf_state_from_gguf(config, expected, cache)
    except ScratchLMError as e:
        raise ScratchLMError(f"{path}: {e}") from None
    template = metadata.get("tokenizer.chat_template")
    return GGUFModel(config, state_dict, tokenizer, template if isinstance(template, str) else None)


def _hf_names(config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The HF state dict a model of `config` has, on the meta device: its names are what the
    file's tensors must be renamed to."""
    from scratchlm.model.gpt import GPT
    from scratchlm.model.hf_format import hf_config_to_model_config, hf_model

    model_config = hf_config_to_model_config(config)
    with torch.device("meta"):
        model = GPT(model_config)
    arch, _, state = hf_model(model)
    if arch != config["model_type"]:  # each architecture's options exclude the others'
        raise ScratchLMError(f"a {config['model_type']} file holds a {arch}-shaped model")
    return state


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


def _supported_types() -> dict[int, str]:
    import gguf
    from gguf.quants import _type_traits  # the block formats gguf.quants can dequantise

    kinds = gguf.GGMLQuantizationType
    plain = [kinds.F32, kinds.F16]
    return {int(t): t.name for t in [*plain, *_type_traits]}


def _check_types(tensors: dict[str, Any]) -> dict[str, Any]:
    """Every tensor's type checked before anything is dequantised: a bad file fails fast."""
    import gguf

    supported = _supported_types()
    for tensor in tensors.values():
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
    return tensors


def _dequantized(tensor: Any) -> torch.Tensor:
    # GGUF lists dimensions innermost first; numpy's (and nn.Linear's) order is reversed.
    shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
    return dequantize(tensor.data, int(tensor.tensor_type)).reshape(shape)


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
    """Write a model (a config.json dict and HF-named tensors of one of the architectures in
    gguf_architectures) and its tokenizer as a GGUF file, atomically.

    `dtype` is the type of the weight matrices (GGUF_DTYPES); norms, biases and GPT-2's
    position table stay f32, as llama.cpp's converter keeps them.
    """
    import gguf

    if dtype not in GGUF_DTYPES:
        raise ScratchLMError(
            f"GGUF export dtype must be one of {', '.join(GGUF_DTYPES)}, got {dtype!r}"
        )
    arch = gguf_architecture(config)
    vocab_size = int(config["vocab_size"])
    check_ids_fit(tokenizer, vocab_size)
    tied = bool(config.get("tie_word_embeddings", "lm_head.weight" not in state_dict))
    # A tied model's head is token_embd itself; llama.cpp reuses it when output is absent.
    state = {
        k: v
        for k, v in state_dict.items()
        if not (tied and k in ("lm_head.weight", "embed_out.weight"))
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        writer = _writer(tmp, arch)
        writer.add_name(name or path.stem)
        writer.add_file_type(_file_types()[dtype])
        add_hparams(writer, config)
        add_tokenizer_metadata(writer, tokenizer, vocab_size, config, chat_template)
        tensors = dict(gguf_tensors(config, state))
        # The output projection: token_embd itself when the file has no output.weight.
        head = "output.weight" if "output.weight" in tensors else "token_embd.weight"
        for gguf_name, tensor in tensors.items():
            array = tensor.numpy()
            kind = _stored_type(gguf_name, array, dtype, head)
            if kind == gguf.GGMLQuantizationType.F32:
                writer.add_tensor(gguf_name, array)
            elif kind == gguf.GGMLQuantizationType.F16:
                writer.add_tensor(gguf_name, array.astype(np.float16))
            else:
                writer.add_tensor(gguf_name, gguf.quants.quantize(array, kind), raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


def _writer(path: Path, arch: str) -> Any:
    """A gguf.GGUFWriter that also writes empty arrays, which the format allows (a count of 0)
    and llama.cpp reads, but the package refuses."""
    import gguf

    class Writer(gguf.GGUFWriter):
        def _pack_val(self, val: Any, vtype: Any, add_vtype: bool, sub_type: Any = None) -> bytes:
            if vtype != gguf.GGUFValueType.ARRAY or len(val) > 0:
                return super()._pack_val(val, vtype, add_vtype, sub_type)
            packed = self._pack("I", vtype) if add_vtype else b""
            return packed + self._pack("I", sub_type) + self._pack("Q", 0)

    return Writer(path, arch)


def _file_types() -> dict[str, Any]:
    import gguf

    kinds = gguf.LlamaFileType
    return {
        "f32": kinds.ALL_F32,
        "f16": kinds.MOSTLY_F16,
        "q8_0": kinds.MOSTLY_Q8_0,
        "q4_0": kinds.MOSTLY_Q4_0,
        "q4_1": kinds.MOSTLY_Q4_1,
    }


def _stored_type(name: str, array: np.ndarray, dtype: str, head: str) -> Any:
    """The ggml type one tensor is written in.

    As llama.cpp's converter and llama-quantize do: vectors, norms and position tables stay
    f32; with Q4_0/Q4_1 the output projection (`head`: output.weight, or token_embd for a tied
    model) is Q8_0, since 4-bit logits cost the most quality; a matrix whose rows are not whole
    32-weight blocks falls back to f16.
    """
    import gguf

    kinds = gguf.GGMLQuantizationType
    if array.ndim <= 1 or name.endswith("_norm.weight") or name == "position_embd.weight":
        return kinds.F32
    if dtype in ("f32", "f16"):
        return kinds.F32 if dtype == "f32" else kinds.F16
    kind = {"q8_0": kinds.Q8_0, "q4_0": kinds.Q4_0, "q4_1": kinds.Q4_1}[dtype]
    if kind != kinds.Q8_0 and name == head:
        kind = kinds.Q8_0
    block, _ = gguf.GGML_QUANT_SIZES[kind]
    return kind if array.shape[-1] % block == 0 else kinds.F16
