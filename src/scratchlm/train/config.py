"""The training loop's settings: the [train] section."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from scratchlm.core.errors import ScratchLMError


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
    # Start from another run's weights (its directory, or one checkpoint folder of it) rather
    # than random ones: step 0, a fresh optimizer, the same model shape. "": random weights.
    init_from: str = ""
    seed: int = 1337
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", "mps"
    # Autocast precision for matmuls. "auto": bf16 on a GPU that has it; on a CPU, bf16 only
    # for a wide model where bf16 matmuls are measured faster (precision.py); else float32.
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    compile: bool = False  # torch.compile the training step's model (compile time logged apart)
    # The LM head and cross-entropy fused and taken a chunk of positions at a time, so the
    # (batch x context x vocab) logits never exist (model/fused_loss.py): the same loss and
    # gradients, faster on a CPU and much less memory for a large vocabulary.
    fused_loss: bool = True
    tensorboard: bool = False  # also write TensorBoard scalars (needs `pip install tensorboard`)
    # Several processes started by torchrun (train/distributed.py, train/sharding.py):
    #   "ddp"  each rank a whole copy of the model and its own share of every batch;
    #   "fsdp" each rank holds 1/N of every weight, gradient and optimizer moment (FSDP2);
    #   "tp"   each rank holds some heads of every attention and part of every MLP (tensor
    #          parallelism), all ranks on the same batch;
    #   "none" one process.
    parallel: Literal["none", "ddp", "fsdp", "tp"] = "none"
    # Tensor-parallel degree. With "tp", 0 means every rank; with "fsdp", K > 1 arranges the
    # ranks as (ranks / K) data-parallel groups of K tensor-parallel ranks (a 2-D mesh).
    tp: int = 0
    # fsdp: free each block's gathered weights after its forward and gather them again for
    # its backward: less memory, one more all-gather per block.
    reshard_after_forward: bool = True

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
        if self.tp < 0:
            raise ScratchLMError(f"train.tp must be >= 0 (0: every rank with 'tp'), got {self.tp}")
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

    def accumulation_steps(self, block_size: int, world_size: int = 1) -> int:
        """Micro-batches per optimizer step: from batch_tokens when set (shared by the
        world_size ranks of a distributed job), else grad_accum_steps."""
        if not self.batch_tokens:
            return self.grad_accum_steps
        micro = self.batch_size * block_size * world_size
        if self.batch_tokens % micro:
            ranks = f" * {world_size} ranks" if world_size > 1 else ""
            raise ScratchLMError(
                f"train.batch_tokens ({self.batch_tokens:,}) must be a multiple of "
                f"train.batch_size * model.block_size{ranks} = {self.batch_size} * "
                f"{block_size}{ranks} = {micro:,}; try "
                f"{max(1, round(self.batch_tokens / micro)) * micro:,}"
            )
        if self.grad_accum_steps not in (1, self.batch_tokens // micro):
            raise ScratchLMError(
                f"train.batch_tokens ({self.batch_tokens:,}) and train.grad_accum_steps "
                f"({self.grad_accum_steps}) disagree; set only one of them"
            )
        return self.batch_tokens // micro
