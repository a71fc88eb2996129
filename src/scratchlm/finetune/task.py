"""What one kind of fine-tuning brings to the training engine, behind one small interface.

The engine (train/loop.py's run_steps and its hooks) is the same for pretraining and every
task: optimizer steps, accumulation, clipping, skipped bad steps, progress, metrics.jsonl,
checkpoints with exact resume, plots. A task (sft_task.py, classify_task.py, dpo_task.py)
supplies the rest:

    model            what trains: the base GPT itself, or a classifier around it
    train_batches    micro-batches (tuples of tensors), resumable (EpochBatches)
    loss(*batch)     the micro-batch's mean loss
    validate()       held-out metrics, "val_loss" first (the best checkpoint is chosen on it)
    files()          what the run needs besides weights (its chat template, its labels)
    finish(run_dir)  the final report: test metrics, generations, plots

finetune/training.py builds the run around a task: the base model, LoRA, the run folder,
resume.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from scratchlm.finetune.config import FinetuneRun
from scratchlm.inference.language_model import LanguageModel
from scratchlm.train.step import Batch

RESULTS_FILE = "finetune.json"  # a finished run's final measurements (finish)


class FinetuneTask(ABC):
    """One fine-tuning task, built from the run's settings and its loaded base model."""

    name: ClassVar[str]
    model: nn.Module
    train_batches: EpochBatches
    row_tokens: int = 0  # positions of a batch row (0: the model's block_size)
    loss_label: str = ""  # the loss's name on loss.png ("": cross-entropy per token)

    def __init__(self, run: FinetuneRun, base: LanguageModel, device: torch.device) -> None:
        self.run, self.base, self.device = run, base, device

    @property
    def max_length(self) -> int:
        """Tokens of one example: run.max_length, at most the model's context."""
        block = self.base.block_size
        return min(self.run.max_length, block) if self.run.max_length else block

    @abstractmethod
    def loss(self, *batch: Tensor) -> Tensor:
        """The mean loss of one micro-batch (a tuple from train_batches)."""

    @abstractmethod
    def validate(self) -> dict[str, float]:
        """Held-out metrics by name, "val_loss" among them."""

    @abstractmethod
    def data_identity(self) -> dict[str, Any]:
        """What a checkpoint must share with the run to resume it: the data and the settings
        that shape the batches."""

    def files(self) -> dict[str, str]:
        """Text files the run folder gets beside config.toml and tokenizer.json, by name."""
        return {}

    def finish(self, run_dir: Path) -> list[str]:
        """After the last step (not after an interrupted one): final measurements, written
        into the run folder; returns the lines to print."""
        return []

    def step_metrics(self) -> dict[str, float]:
        """Extra numbers from the latest training batches, logged at log steps (DPO's reward
        margins); none by default."""
        return {}


class EpochBatches:
    """Batches epoch after epoch, batch(epoch, index) fixed by the seed, so a resumed run
    continues from the same (epoch, index): the state is those two numbers."""

    def __init__(
        self,
        num_batches: Callable[[int], int],
        batch: Callable[[int, int], Batch],
        device: torch.device | str = "cpu",
    ) -> None:
        self._num_batches, self._batch, self.device = num_batches, batch, device
        self.epoch, self.index = 0, 0

    def next_batch(self) -> Batch:
        if self.index >= self._num_batches(self.epoch):
            self.epoch, self.index = self.epoch + 1, 0
        batch = self._batch(self.epoch, self.index)
        self.index += 1
        return tuple(t.to(self.device) for t in batch)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "epoch": torch.tensor(self.epoch, dtype=torch.long),
            "index": torch.tensor(self.index, dtype=torch.long),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def content_digest(items: Any) -> str:
    """A short sha256 of JSON-able data (the examples a run trains on), for data_identity."""
    text = json.dumps(items, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def eval_mode(model: nn.Module) -> Callable[[], nn.Module]:
    """Put `model` in eval mode; returns the call that restores its mode."""
    was_training = model.training
    model.eval()
    return lambda: model.train(was_training)
