"""Typed configuration: one dataclass per pipeline stage, TOML recipes and dotted overrides.

A recipe (configs/*.toml) has one table per section:

    [model]
    n_layer = 4
    [train]
    max_steps = 2000

and any key can be overridden on the command line as `--train.max_steps 100`. Every key and
value is checked against the dataclasses below; a mistake is one ScratchLMError naming the file,
the key and the valid choices.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli_w

from scratchlm.data.clean import CleanConfig, rule_names
from scratchlm.data.dedup import NearDedupConfig, RepeatedLineConfig
from scratchlm.errors import ScratchLMError


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
        """The [model] keys of the "depth-N" preset."""
        return dict(
            n_layer=self.n_layer,
            n_embd=self.n_embd,
            n_head=self.n_head,
            pos_encoding="rope",
            norm="rmsnorm",
            qk_norm=True,
            mlp="relu2",
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


@dataclass
class DataConfig:
    """Where the training text comes from and how it is split."""

    # Named corpora (see `scratchlm data list`), files (text, JSONL, Parquet, maybe .gz/.zst)
    # or folders of them.
    sources: list[str] = field(default_factory=lambda: ["shakespeare"])
    include: list[str] = field(default_factory=list)  # glob patterns for files in folders
    exclude: list[str] = field(default_factory=list)
    text_field: str = "text"  # the JSONL field or Parquet column that holds the text
    val_fraction: float = 0.05  # share of documents held out for validation
    seed: int = 1337
    # How training windows are picked: "random" (anywhere, with replacement) or "epoch" (every
    # token once per epoch, in a new seeded order each epoch); see data/loader.py.
    sampling: Literal["random", "epoch"] = "random"

    def validate(self) -> None:
        if not self.sources:
            raise ScratchLMError("data.sources is empty; name a corpus or give text files")
        if not 0.0 < self.val_fraction < 1.0:
            raise ScratchLMError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.sampling not in ("random", "epoch"):
            raise ScratchLMError(
                f"data.sampling = {self.sampling!r} is not allowed; choose 'random' or 'epoch'"
            )


_GOPHER = CleanConfig()  # the quality rules' published thresholds (data/clean.py)


@dataclass
class CleaningConfig:
    """Cleaning (data/clean.py): normalise each document, then drop those that fail a rule.

    The thresholds are Gopher's (Rae et al. 2021), made for web pages. This project's curated
    corpora trip some of them: chitchat's short chats (min_words), the King James Bible's
    refrains (max_duplicate_ngram_char_fraction), one Shakespeare play (its speaker lines); so
    the recipes in configs/ set `filters = false` and keep only the normalisation.
    """

    enabled: bool = True  # false: documents go on exactly as read
    filters: bool = True  # false: normalise only, apply no quality rule
    unicode_form: Literal["NFC", "NFD", "NFKC", "NFKD", "none"] = "NFC"
    max_blank_lines: int = _GOPHER.max_blank_lines
    min_words: int = _GOPHER.min_words
    max_words: int = _GOPHER.max_words
    min_mean_word_length: float = _GOPHER.min_mean_word_length
    max_mean_word_length: float = _GOPHER.max_mean_word_length
    max_symbol_word_ratio: float = _GOPHER.max_symbol_word_ratio
    max_bullet_line_fraction: float = _GOPHER.max_bullet_line_fraction
    max_ellipsis_line_fraction: float = _GOPHER.max_ellipsis_line_fraction
    min_alpha_word_fraction: float = _GOPHER.min_alpha_word_fraction
    min_stop_words: int = _GOPHER.min_stop_words
    max_duplicate_line_fraction: float = _GOPHER.max_duplicate_line_fraction
    max_duplicate_paragraph_fraction: float = _GOPHER.max_duplicate_paragraph_fraction
    max_duplicate_line_char_fraction: float = _GOPHER.max_duplicate_line_char_fraction
    max_duplicate_paragraph_char_fraction: float = _GOPHER.max_duplicate_paragraph_char_fraction
    # For n = 2, 3, 4: the most frequent n-gram's share of the characters.
    max_top_ngram_char_fraction: list[float] = field(
        default_factory=lambda: list(_GOPHER.max_top_ngram_char_fraction.values())
    )
    # For n = 5, 6, ..., 10: the share of characters in n-grams seen before in the document.
    max_duplicate_ngram_char_fraction: list[float] = field(
        default_factory=lambda: list(_GOPHER.max_duplicate_ngram_char_fraction.values())
    )
    skip: list[str] = field(default_factory=list)  # rules to switch off, e.g. ["word_count"]

    def clean_config(self) -> CleanConfig | None:
        """The settings for data/clean.py, or None when cleaning is off."""
        if not self.enabled:
            return None
        top = sorted(_GOPHER.max_top_ngram_char_fraction)
        repeated = sorted(_GOPHER.max_duplicate_ngram_char_fraction)
        for name, limits, ns in (
            ("max_top_ngram_char_fraction", self.max_top_ngram_char_fraction, top),
            ("max_duplicate_ngram_char_fraction", self.max_duplicate_ngram_char_fraction, repeated),
        ):
            if len(limits) != len(ns):
                raise ScratchLMError(
                    f"clean.{name} takes {len(ns)} numbers, one for each n in "
                    f"{', '.join(map(str, ns))}; got {len(limits)}"
                )
        config = CleanConfig(
            unicode_form=None if self.unicode_form == "none" else self.unicode_form,
            max_blank_lines=self.max_blank_lines,
            min_words=self.min_words,
            max_words=self.max_words,
            min_mean_word_length=self.min_mean_word_length,
            max_mean_word_length=self.max_mean_word_length,
            max_symbol_word_ratio=self.max_symbol_word_ratio,
            max_bullet_line_fraction=self.max_bullet_line_fraction,
            max_ellipsis_line_fraction=self.max_ellipsis_line_fraction,
            min_alpha_word_fraction=self.min_alpha_word_fraction,
            min_stop_words=self.min_stop_words,
            max_duplicate_line_fraction=self.max_duplicate_line_fraction,
            max_duplicate_paragraph_fraction=self.max_duplicate_paragraph_fraction,
            max_duplicate_line_char_fraction=self.max_duplicate_line_char_fraction,
            max_duplicate_paragraph_char_fraction=self.max_duplicate_paragraph_char_fraction,
            max_top_ngram_char_fraction=dict(
                zip(top, self.max_top_ngram_char_fraction, strict=True)
            ),
            max_duplicate_ngram_char_fraction=dict(
                zip(repeated, self.max_duplicate_ngram_char_fraction, strict=True)
            ),
            skip=tuple(self.skip),
        )
        if not self.filters:
            config = dataclasses.replace(config, skip=tuple(rule_names(config)))
        return config

    def validate(self) -> None:
        self.clean_config()  # CleanConfig checks the rule names and the normalisation


@dataclass
class DedupConfig:
    """Deduplication (data/dedup.py): exact copies, boilerplate lines, near-duplicates."""

    exact: bool = True  # drop documents equal to an earlier one (case and spacing aside)
    lines: bool = True  # drop lines (of min_chars or more) found in over max_documents documents
    near: bool = True  # drop documents sharing most word shingles with an earlier one (MinHash)
    max_documents: int = 50
    min_chars: int = 30
    threshold: float = 0.8  # Jaccard similarity of the shingle sets that makes a near-duplicate
    shingle_size: int = 5  # words per shingle
    num_perm: int = 128  # MinHash permutations
    verify: Literal["signature", "exact", "none"] = "signature"
    bands: int = 0  # LSH bands x rows; 0 and 0: chosen from the threshold
    rows: int = 0
    seed: int = 0

    def line_config(self) -> RepeatedLineConfig | None:
        if not self.lines:
            return None
        return RepeatedLineConfig(max_documents=self.max_documents, min_chars=self.min_chars)

    def near_config(self) -> NearDedupConfig | None:
        if not self.near:
            return None
        return NearDedupConfig(
            threshold=self.threshold,
            shingle_size=self.shingle_size,
            num_perm=self.num_perm,
            seed=self.seed,
            verify=self.verify,
            bands=self.bands or None,
            rows=self.rows or None,
        )

    def validate(self) -> None:
        # The stage configs check their own numbers, even for a stage that is switched off.
        RepeatedLineConfig(max_documents=self.max_documents, min_chars=self.min_chars)
        dataclasses.replace(self, near=True).near_config()


@dataclass
class TokenizerConfig:
    """Byte-level BPE trained on the run's own training text."""

    # "bpe": byte-level BPE of vocab_size tokens; "char": one token per character (the
    # character-level experiments; tokenizer/char.py), vocab_size and pattern unused.
    kind: Literal["bpe", "char"] = "bpe"
    vocab_size: int = 2048  # including the 256 byte tokens and the special tokens
    pattern: str = "gpt4"  # "gpt2", "gpt4" or a regex of your own
    special_tokens: list[str] = field(default_factory=lambda: ["<|endoftext|>"])
    max_train_chars: int = 0  # train on at most this many characters (0: all)

    def validate(self) -> None:
        if self.kind not in ("bpe", "char"):
            raise ScratchLMError(
                f"tokenizer.kind = {self.kind!r} is not allowed; choose 'bpe' or 'char'"
            )
        minimum = 256 + len(self.special_tokens)
        if self.vocab_size < minimum:
            raise ScratchLMError(
                f"tokenizer.vocab_size ({self.vocab_size}) must be at least 256 byte tokens "
                f"+ {len(self.special_tokens)} special tokens = {minimum}"
            )


@dataclass
class TrainConfig:
    """The pretraining loop: optimizer, schedule, precision, accumulation, checkpoints."""

    batch_size: int = 16  # sequences per micro-batch
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    # Tokens per optimizer step; when set (> 0) it decides grad_accum_steps, and must be a
    # multiple of batch_size * model.block_size. 0: use grad_accum_steps as given.
    batch_tokens: int = 0
    max_steps: int = 1000
    optimizer: Literal["adamw", "muon"] = "adamw"
    learning_rate: float = 1e-3  # peak learning rate of AdamW's hidden matrices
    # Each parameter group's own peak learning rate; 0 means "same as learning_rate".
    embedding_lr: float = 0.0  # token/position embeddings (and the tied output head)
    scalar_lr: float = 0.0  # norm gains and biases
    muon_lr: float = 0.02  # hidden matrices under optimizer = "muon"
    muon_momentum: float = 0.95
    schedule: Literal["cosine", "linear", "wsd"] = "cosine"
    min_lr: float = 1e-4  # cosine and wsd decay to this (linear decays to zero)
    decay_fraction: float = 0.2  # wsd: the last fraction of max_steps that decays
    warmup_steps: int = 100
    weight_decay: float = 0.1  # applied to matrices only (not biases, norms or embeddings)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    # Steps with a non-finite loss or gradient are skipped; this many in a row stop the run.
    max_bad_steps: int = 5
    eval_interval: int = 200  # steps between validation passes
    eval_batches: int = 20  # micro-batches per validation pass
    log_interval: int = 10
    checkpoint_interval: int = 500
    keep_checkpoints: int = 2  # keep this many recent checkpoints ...
    keep_best: bool = True  # ... and the one with the best validation loss
    seed: int = 1337
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", "mps"
    # Autocast precision for matmuls; "auto" picks by device and model width (devices.py).
    dtype: Literal["auto", "float32", "bfloat16"] = "float32"
    compile: bool = False  # torch.compile the training step's model (compile time logged apart)
    # The LM head and cross-entropy fused and taken a chunk of positions at a time, so the
    # (batch x context x vocab) logits never exist (model/fused_loss.py): the same loss and
    # gradients, faster on a CPU and much less memory for a large vocabulary.
    fused_loss: bool = True
    tensorboard: bool = False  # also write TensorBoard scalars (needs `pip install tensorboard`)

    def validate(self) -> None:
        for name in (
            "batch_size",
            "grad_accum_steps",
            "max_steps",
            "max_bad_steps",
            "eval_interval",
            "eval_batches",
            "log_interval",
            "checkpoint_interval",
            "keep_checkpoints",
        ):
            if getattr(self, name) < 1:
                raise ScratchLMError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ScratchLMError(f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.batch_tokens < 0:
            raise ScratchLMError(f"train.batch_tokens must be >= 0, got {self.batch_tokens}")
        for name in ("learning_rate", "muon_lr"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ScratchLMError(f"train.{name} must be positive, got {value}")
        for name in ("embedding_lr", "scalar_lr"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ScratchLMError(f"train.{name} must be >= 0 (0: learning_rate), got {value}")
        if not 0 <= self.min_lr <= self.learning_rate:
            raise ScratchLMError(
                f"train.min_lr ({self.min_lr}) must be between 0 and train.learning_rate "
                f"({self.learning_rate})"
            )
        if not 0 < self.decay_fraction <= 1:
            raise ScratchLMError(
                f"train.decay_fraction must be in (0, 1], got {self.decay_fraction}"
            )
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ScratchLMError("train.beta1 and train.beta2 must be in [0, 1)")
        if not 0 <= self.muon_momentum < 1:
            raise ScratchLMError(f"train.muon_momentum must be in [0, 1), got {self.muon_momentum}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ScratchLMError("train.weight_decay and train.grad_clip must be >= 0")

    def accumulation_steps(self, block_size: int) -> int:
        """Micro-batches per optimizer step: from batch_tokens when set, else grad_accum_steps."""
        if not self.batch_tokens:
            return self.grad_accum_steps
        micro = self.batch_size * block_size
        if self.batch_tokens % micro:
            raise ScratchLMError(
                f"train.batch_tokens ({self.batch_tokens:,}) must be a multiple of "
                f"train.batch_size * model.block_size = {self.batch_size} * {block_size} = "
                f"{micro:,}; try {max(1, round(self.batch_tokens / micro)) * micro:,}"
            )
        if self.grad_accum_steps not in (1, self.batch_tokens // micro):
            raise ScratchLMError(
                f"train.batch_tokens ({self.batch_tokens:,}) and train.grad_accum_steps "
                f"({self.grad_accum_steps}) disagree; set only one of them"
            )
        return self.batch_tokens // micro


@dataclass
class SampleConfig:
    """What `generate` does by default, and the samples printed after training."""

    prompts: list[str] = field(default_factory=lambda: ["\n"])
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int = 0  # 0: no top-k filtering
    top_p: float = 1.0  # 1.0: no nucleus filtering
    repetition_penalty: float = 1.0  # 1.0: off; > 1 makes tokens already seen less likely
    seed: int = 1337

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ScratchLMError(f"sample.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ScratchLMError(f"sample.temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ScratchLMError(f"sample.top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ScratchLMError(f"sample.top_p must be in (0, 1], got {self.top_p}")
        if not 0 < self.repetition_penalty < float("inf"):
            raise ScratchLMError(
                f"sample.repetition_penalty must be a number > 0 (1: off), "
                f"got {self.repetition_penalty}"
            )


@dataclass
class RunConfig:
    """Everything one training run needs; saved as runs/<name>/config.toml."""

    name: str = "run"
    out_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    clean: CleaningConfig = field(default_factory=CleaningConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def validate(self) -> None:
        if not self.name or "/" in self.name:
            raise ScratchLMError(f"name must be a plain folder name, got {self.name!r}")
        for section in (
            self.model,
            self.data,
            self.clean,
            self.dedup,
            self.tokenizer,
            self.train,
            self.sample,
        ):
            section.validate()
        self.train.accumulation_steps(self.model.block_size)  # batch_tokens must divide evenly

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


SECTIONS = ("model", "data", "clean", "dedup", "tokenizer", "train", "sample")


# ---------------------------------------------------------------------------------------------
# Loading: TOML file -> dict -> checked dataclasses
# ---------------------------------------------------------------------------------------------


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a TOML recipe (or start from defaults), apply `--section.key value` overrides, check."""
    config = RunConfig()
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ScratchLMError(f"config file not found: {path}")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ScratchLMError(f"{path}: not valid TOML: {e}") from None
        except UnicodeDecodeError:
            raise ScratchLMError(f"{path}: not UTF-8 text") from None
        config = config_from_dict(raw, where=str(path))
    if overrides:
        apply_overrides(config, overrides)
    _apply_depth_learning_rate(config, given=_train_keys_given(raw, overrides or []))
    config.validate()
    return config


def _train_keys_given(raw: dict[str, Any], overrides: list[str]) -> set[str]:
    """The [train] keys a recipe file or a --train.KEY override sets."""
    given = set(raw.get("train", {})) if isinstance(raw.get("train"), dict) else set()
    for arg in overrides:
        if arg.startswith("--train."):
            given.add(arg[len("--train.") :].partition("=")[0])
    return given


def _apply_depth_learning_rate(config: RunConfig, given: set[str]) -> None:
    """A depth-N model trains at the learning rate depth_shape derives for it, unless the
    recipe or the command line names one (min_lr follows at a tenth, as the defaults)."""
    depth = preset_depth(config.model.preset)
    if depth is None or "learning_rate" in given:
        return
    config.train.learning_rate = depth_shape(depth).learning_rate
    if "min_lr" not in given:
        config.train.min_lr = config.train.learning_rate / 10


def config_from_dict(raw: dict[str, Any], where: str = "config") -> RunConfig:
    config = RunConfig()
    for key, value in raw.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ScratchLMError(f"{where}: [{key}] must be a table of keys")
            if key == "model" and "preset" in value:
                # The preset first: the table's other keys adjust it.
                config.model = _preset_for(value["preset"], where)
            section = getattr(config, key)
            for sub_key, sub_value in value.items():
                if key == "model" and sub_key == "preset":
                    continue
                _set_field(section, sub_key, sub_value, where=where, prefix=f"{key}.")
        else:
            _set_field(config, key, value, where=where, prefix="")
    return config


def apply_overrides(config: RunConfig, overrides: list[str]) -> None:
    """Apply ["--train.max_steps", "100", "--model.bias=false", ...] to `config` in place."""
    args = list(overrides)
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ScratchLMError(
                f"unexpected argument {arg!r}; overrides look like --train.max_steps 100"
            )
        key, sep, value = arg[2:].partition("=")
        if not sep:
            if i + 1 >= len(args):
                raise ScratchLMError(f"--{key} needs a value")
            value = args[i + 1]
            i += 1
        i += 1
        target: Any = config
        parts = key.split(".")
        if len(parts) == 2 and parts[0] in SECTIONS:
            target = getattr(config, parts[0])
            name, prefix = parts[1], f"{parts[0]}."
        elif len(parts) == 1:
            name, prefix = parts[0], ""
        else:
            raise ScratchLMError(
                f"unknown option --{key}; sections are {', '.join(SECTIONS)} (e.g. --train.max_steps)"
            )
        if target is config.model and name == "preset":
            # A whole new shape: it replaces the model keys given before it.
            config.model = _preset_for(value, "command line")
            continue
        _set_field(
            target, name, _parse_cli_value(target, name, value, prefix), "command line", prefix
        )


def _preset_for(name: Any, where: str) -> ModelConfig:
    if not isinstance(name, str):
        raise ScratchLMError(f"{where}: model.preset must be a string, got {name!r}")
    if not name:
        return ModelConfig()
    try:
        return model_preset(name)
    except ScratchLMError as e:
        raise ScratchLMError(f"{where}: {e}") from None


def _field_types(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def _parse_cli_value(target: Any, name: str, text: str, prefix: str) -> Any:
    types_ = _field_types(target)
    if name not in types_:
        return text  # _set_field reports the unknown key with suggestions
    kind = types_[name]
    origin = typing.get_origin(kind)
    if kind is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ScratchLMError(f"--{prefix}{name} takes true or false, got {text!r}")
    if kind is int or kind is float:
        try:
            return kind(text)
        except ValueError:
            raise ScratchLMError(f"--{prefix}{name} takes a number, got {text!r}") from None
    if origin is list:
        items = [part for part in text.split(",") if part != ""]
        (item_kind,) = typing.get_args(kind)
        if item_kind is int or item_kind is float:
            try:
                return [item_kind(item) for item in items]
            except ValueError:
                raise ScratchLMError(
                    f"--{prefix}{name} takes comma-separated numbers, got {text!r}"
                ) from None
        return items
    return text


def _set_field(target: Any, name: str, value: Any, where: str, prefix: str) -> None:
    types_ = _field_types(target)
    settable = {f.name for f in dataclasses.fields(target)} - set(SECTIONS)
    if name not in settable:
        close = difflib.get_close_matches(name, sorted(settable), n=1)
        hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
        raise ScratchLMError(
            f"{where}: unknown key {prefix}{name}{hint}; valid keys: {', '.join(sorted(settable))}"
        )
    kind = types_[name]
    setattr(target, name, _check_type(value, kind, f"{where}: {prefix}{name}"))


def _check_type(value: Any, kind: Any, what: str) -> Any:
    origin = typing.get_origin(kind)
    if origin is Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            raise ScratchLMError(
                f"{what} = {value!r} is not allowed; choose one of {', '.join(map(repr, choices))}"
            )
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ScratchLMError(f"{what} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScratchLMError(f"{what} must be a whole number, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ScratchLMError(f"{what} must be a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ScratchLMError(f"{what} must be a string, got {value!r}")
        return value
    if origin is list:
        (item_kind,) = typing.get_args(kind)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ScratchLMError(f"{what} must be a list, got {value!r}")
        return [_check_type(v, item_kind, what) for v in value]
    if isinstance(kind, types.UnionType):  # pragma: no cover - no such fields yet
        return value
    raise TypeError(f"unsupported config field type {kind!r}")  # a bug in this file, not the user's
