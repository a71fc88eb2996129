"""The model's shape: ModelConfig (the [model] section), named presets and the depth-N family."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from scratchlm.core.errors import ScratchLMError


@dataclass
class ModelConfig:
    """Shape of the decoder-only transformer (defaults: GPT-2 124M).

    One GPT class covers GPT-2 and Llama-style models: each architectural choice is a key here
    (see model/gpt.py for how each is used). A 0 means "off" or "the usual default", so that a
    TOML recipe never needs a null.
    """

    # A named shape to start from (see MODEL_PRESETS, or "depth-N"); the other keys of the
    # [model] table are applied on top of it. Empty: start from these defaults.
    preset: str = ""
    vocab_size: int = 50257
    block_size: int = 1024  # context length in tokens
    n_layer: int = 12
    n_head: int = 12  # query heads
    # Key/value heads: 0 = n_head (multi-head), 1 = multi-query, between = grouped-query.
    n_kv_head: int = 0
    n_embd: int = 768
    mlp: Literal["gelu", "swiglu", "relu2"] = "gelu"
    mlp_hidden: int = 0  # 0: 4 * n_embd (gelu, relu2), or 8/3 * n_embd up to a multiple of 64
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"  # always pre-norm
    norm_eps: float = 1e-5
    qk_norm: bool = False  # RMSNorm on each head's q and k before attention (stabler logits)
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm layers, as GPT-2 has them
    tie_embeddings: bool = True  # the LM head shares its weight with the token embedding
    pos_encoding: Literal["learned", "sinusoidal", "rope"] = "learned"
    rope_base: float = 10000.0
    # Llama 3's RoPE scaling for long contexts (positional.llama3_inv_freq); "none": plain RoPE.
    rope_scaling: Literal["none", "llama3"] = "none"
    rope_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_context: int = 8192
    sliding_window: int = 0  # attend to at most this many most recent tokens; 0: all of them
    logit_softcap: float = 0.0  # logits -> cap * tanh(logits / cap) (Gemma 2); 0: off
    # Recompute each block's activations in the backward pass instead of keeping them: less
    # memory for longer contexts or bigger batches, about a third more compute.
    activation_checkpointing: bool = False

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """Key/value heads actually used (n_kv_head, or n_head when it is 0)."""
        return self.n_kv_head or self.n_head

    @property
    def ffn_hidden(self) -> int:
        """Width of the MLP's hidden layer."""
        if self.mlp_hidden:
            return self.mlp_hidden
        if self.mlp == "swiglu":
            # SwiGLU has three matrices instead of two: 2/3 of 4C keeps the parameter count of
            # a 4C GELU MLP (Shazeer, 2020); rounded up to a multiple of 64 for fast matmuls.
            return -(-8 * self.n_embd // 3 // 64) * 64
        return 4 * self.n_embd

    def validate(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ScratchLMError(f"model.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("n_kv_head", "mlp_hidden", "sliding_window"):
            if getattr(self, name) < 0:
                raise ScratchLMError(
                    f"model.{name} must be >= 0 (0: default), got {getattr(self, name)}"
                )
        if self.n_embd % self.n_head:
            raise ScratchLMError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head}); "
                f"try n_head in {[h for h in range(1, 33) if self.n_embd % h == 0]}"
            )
        if self.n_head % self.kv_heads:
            raise ScratchLMError(
                f"model.n_head ({self.n_head}) must be a multiple of model.n_kv_head "
                f"({self.n_kv_head}): each key/value head serves a whole group of query heads; "
                f"try n_kv_head in {[h for h in range(1, self.n_head + 1) if self.n_head % h == 0]}"
            )
        if self.pos_encoding == "rope" and self.head_dim % 2:
            raise ScratchLMError(
                f"RoPE needs an even head size, but n_embd / n_head = {self.head_dim}; "
                "change model.n_embd or model.n_head"
            )
        if self.pos_encoding == "sinusoidal" and self.n_embd % 2:
            raise ScratchLMError(
                f"the sinusoidal encoding needs an even model.n_embd, got {self.n_embd}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ScratchLMError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.rope_base <= 0 or self.norm_eps <= 0:
            raise ScratchLMError("model.rope_base and model.norm_eps must be positive")
        if self.logit_softcap < 0:
            raise ScratchLMError(
                f"model.logit_softcap must be >= 0 (0: off), got {self.logit_softcap}"
            )
        if self.rope_scaling != "none":
            if self.pos_encoding != "rope":
                raise ScratchLMError(
                    f"model.rope_scaling = {self.rope_scaling!r} needs model.pos_encoding = "
                    f"'rope', not {self.pos_encoding!r}"
                )
            if not (
                self.rope_factor >= 1
                and 0 < self.rope_low_freq_factor < self.rope_high_freq_factor
                and self.rope_original_context >= 1
            ):
                raise ScratchLMError(
                    "model.rope_scaling = 'llama3' needs rope_factor >= 1, "
                    "0 < rope_low_freq_factor < rope_high_freq_factor and "
                    "rope_original_context >= 1"
                )


_LLAMA: dict[str, Any] = dict(
    pos_encoding="rope", norm="rmsnorm", mlp="swiglu", bias=False, rope_base=500000.0
)

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # Exact GPT-2 shapes (the 124M one matches HF's GPT2LMHeadModel: 124,439,808 parameters).
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-355m": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-774m": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-1558m": dict(n_layer=48, n_head=25, n_embd=1600),
    # Llama-style (RoPE, RMSNorm, SwiGLU, grouped-query attention, no biases), to train here.
    "llama-60m": dict(_LLAMA, n_layer=8, n_head=8, n_kv_head=4, n_embd=512, block_size=1024),
    "llama-150m": dict(_LLAMA, n_layer=12, n_head=12, n_kv_head=4, n_embd=768, block_size=2048),
    "llama-400m": dict(_LLAMA, n_layer=24, n_head=16, n_kv_head=8, n_embd=1024, block_size=2048),
    # Real Llama-architecture models, shape for shape, so their weights load (model/hf_format.py).
    "llama3.2-1b": dict(
        _LLAMA,
        vocab_size=128256,
        block_size=131072,
        n_layer=16,
        n_head=32,
        n_kv_head=8,
        n_embd=2048,
        mlp_hidden=8192,
        rope_scaling="llama3",
        rope_factor=32.0,
        rope_low_freq_factor=1.0,
        rope_high_freq_factor=4.0,
        rope_original_context=8192,
    ),
    "smollm2-135m": dict(
        _LLAMA,
        vocab_size=49152,
        block_size=8192,
        n_layer=30,
        n_head=9,
        n_kv_head=3,
        n_embd=576,
        mlp_hidden=1536,
        rope_base=100000.0,
    ),
    # Small models that train on a laptop CPU.
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=512),
    "small": dict(n_layer=4, n_head=4, n_embd=256, block_size=256, vocab_size=2048),
    "llama-tiny": dict(
        _LLAMA,
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        n_embd=64,
        block_size=64,
        vocab_size=512,
        rope_base=10000.0,
    ),
    "llama-small": dict(
        _LLAMA,
        n_layer=4,
        n_head=4,
        n_kv_head=2,
        n_embd=256,
        block_size=256,
        vocab_size=2048,
        rope_base=10000.0,
    ),
}

DEPTH_PRESET = "depth-N"  # e.g. "depth-12": a whole family from one number (depth_shape)


@dataclass(frozen=True)
class DepthShape:
    """What `depth_shape` derives from the number of layers."""

    n_layer: int
    n_embd: int
    n_head: int
    learning_rate: float  # a peak AdamW learning rate to start from (train.learning_rate)

    def model_keys(self) -> dict[str, Any]:
        """The [model] keys of the "depth-N" preset: Qwen3's shape (RoPE, RMSNorm, QK-norm,
        SwiGLU, no biases), so every depth exports to Hugging Face and GGUF (ReLU² with QK-norm,
        nanochat's choice, has no architecture in transformers and llama.cpp)."""
        return dict(
            n_layer=self.n_layer,
            n_embd=self.n_embd,
            n_head=self.n_head,
            pos_encoding="rope",
            norm="rmsnorm",
            qk_norm=True,
            mlp="swiglu",
            bias=False,
            tie_embeddings=False,
        )


def depth_shape(depth: int) -> DepthShape:
    """A model shape and learning rate from its depth alone (nanochat's single dial).

    Width grows with depth at a fixed aspect ratio of 64 channels per layer, heads are 128 wide
    (at least one), so one number scales the whole model. The learning rate follows GPT-3's
    table (Brown et al., 2020, table 2.1), which falls roughly as 1/width: 6e-4 at width 768
    (GPT-2 small) scaled by 768 / n_embd, so depth 4 (width 256) gets 1.8e-3.
    """
    if depth < 1:
        raise ScratchLMError(f"the depth of a depth-N preset must be at least 1, got {depth}")
    n_embd = 64 * depth
    n_head = max(1, -(-n_embd // 128))
    return DepthShape(depth, n_embd, n_head, learning_rate=6e-4 * 768 / n_embd)


def preset_depth(name: str) -> int | None:
    """N for a "depth-N" preset name, None for any other name."""
    digits = name.removeprefix("depth-")
    return int(digits) if name.startswith("depth-") and digits.isdigit() else None


def model_preset(name: str, **overrides: Any) -> ModelConfig:
    """The ModelConfig of a named preset (MODEL_PRESETS or "depth-N"), with overrides applied."""
    depth = preset_depth(name)
    if depth is not None:
        keys = depth_shape(depth).model_keys()
    elif name in MODEL_PRESETS:
        keys = MODEL_PRESETS[name]
    else:
        raise ScratchLMError(
            f"unknown model preset {name!r}; choose one of {', '.join(MODEL_PRESETS)} "
            f"or {DEPTH_PRESET} (e.g. depth-12)"
        )
    return ModelConfig(**{**keys, "preset": name, **overrides})


def preset_config(name: Any, where: str) -> ModelConfig:
    """The ModelConfig a `model.preset` value names ("" is the defaults); errors say `where`."""
    if not isinstance(name, str):
        raise ScratchLMError(f"{where}: model.preset must be a string, got {name!r}")
    if not name:
        return ModelConfig()
    try:
        return model_preset(name)
    except ScratchLMError as e:
        raise ScratchLMError(f"{where}: {e}") from None


def model_config_from_table(table: dict[str, Any], where: str) -> ModelConfig:
    """A [model] table: its preset first, then the table's other keys on top, each checked."""
    from scratchlm.core.config_files import set_field

    config = preset_config(table.get("preset", ""), where)
    for key, value in table.items():
        if key != "preset":
            set_field(config, key, value, where=where, prefix="model.")
    return config
