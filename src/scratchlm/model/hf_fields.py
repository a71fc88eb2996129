"""What every Hugging Face architecture module shares: the options it needs of a model
(requirements), and reading a config.json and a checkpoint's tensors, each problem a
ScratchLMError naming the file and the key or tensor."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

import torch
from torch import Tensor

from scratchlm.core.errors import ScratchLMError
from scratchlm.model.config import ModelConfig

CONFIG_FILE = "config.json"


def requirements(
    config: ModelConfig, multi_head: bool = False, **wanted: Any
) -> dict[str, tuple[Any, Any]]:
    """{option: (this config's value, the value the architecture needs)} for the `wanted`
    options, then one key/value head per query head if `multi_head`, then what no architecture
    has: a sliding window, logit soft-capping."""
    needs = {key: (getattr(config, key), value) for key, value in wanted.items()}
    if multi_head:
        needs["n_kv_head"] = (config.kv_heads, config.n_head)
    needs["sliding_window"] = (config.sliding_window, 0)
    needs["logit_softcap"] = (config.logit_softcap, 0.0)
    return needs


def decoder_config(config: ModelConfig) -> dict[str, Any]:
    """The config.json keys Llama, GPT-NeoX and StableLM (and those built on them) share."""
    return {
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.ffn_hidden,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "max_position_embeddings": config.block_size,
        "tie_word_embeddings": config.tie_embeddings,
        "torch_dtype": "float32",
    }


class DecoderShape(TypedDict):
    """ModelConfig's sizes, as keyword arguments."""

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    mlp_hidden: int


def decoder_shape(hf: Mapping[str, Any], where: str) -> DecoderShape:
    """ModelConfig's sizes from the keys decoder_config writes, each checked to be a number."""
    return DecoderShape(
        vocab_size=int_field(hf, "vocab_size", where),
        block_size=int_field(hf, "max_position_embeddings", where),
        n_layer=int_field(hf, "num_hidden_layers", where),
        n_head=int_field(hf, "num_attention_heads", where),
        n_embd=int_field(hf, "hidden_size", where),
        mlp_hidden=int_field(hf, "intermediate_size", where),
    )


def take_tensor(remaining: dict[str, Tensor], name: str, where: str) -> Tensor:
    """Remove and return tensor `name` of a checkpoint being read; missing is one error."""
    if name not in remaining:
        raise ScratchLMError(f"{where}: tensor {name} is missing")
    return remaining.pop(name)


def take_zeros(remaining: dict[str, Tensor], name: str, where: str, why: str) -> None:
    """Remove tensor `name`, which must be all zeros: a bias our bias-free layers lack."""
    if torch.count_nonzero(take_tensor(remaining, name, where)):
        raise ScratchLMError(f"{where}: {name} is not zero, but {why}")


def int_field(hf: Mapping[str, Any], key: str, where: str) -> int:
    value = hf.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScratchLMError(f"{where}: {key} must be a whole number, got {value!r}")
    return value


def expect_field(
    hf: Mapping[str, Any], key: str, allowed: tuple[str, ...], where: str, default: str
) -> None:
    value = hf.get(key, default)
    if value not in allowed:
        raise ScratchLMError(
            f"{where}: {key} = {value!r} is not supported (scratchlm computes {allowed[0]!r})"
        )


def validated_config(config: ModelConfig, where: str) -> ModelConfig:
    try:
        config.validate()
    except ScratchLMError as e:
        raise ScratchLMError(f"{where}: {e}") from None
    return config
