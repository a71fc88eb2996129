"""Reading a Hugging Face config.json: the checks every architecture's reader shares, each
a ScratchLMError naming the file and the key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scratchlm.core.errors import ScratchLMError
from scratchlm.model.config import ModelConfig

CONFIG_FILE = "config.json"


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
