"""Text classification: a head on a pretrained GPT (finetune/classification.py), trained on
labelled texts (finetune/labelled_text.py: spam-assassin, or a JSONL/CSV file).

    data     split train / val / test by label (stratified, seeded by train.seed); labels
             sorted, each label's index its class (saved as labels.json)
    batches  each text's first max_length tokens, shuffled anew each epoch (seed + epoch),
             right-padded to the batch's longest text
    trains   classify.trainable: the head, the last blocks, everything, or LoRA adapters
    measures val_loss and val_accuracy during training; at the end, on the test split,
             accuracy, per-class precision / recall / F1, macro F1 and the confusion matrix
             (finetune.json, confusion.png)

A run's checkpoint holds the classifier's tensors (backbone.* and score.*; merged for LoRA),
which load_classifier reads back for `scratchlm classify`.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchlm.core.atomic_files import atomic_write_text
from scratchlm.core.config_files import read_toml
from scratchlm.core.errors import ScratchLMError
from scratchlm.core.messages import status
from scratchlm.core.user_files import read_json
from scratchlm.finetune.classification import (
    ClassificationBatch,
    SequenceClassifier,
    classification_loss,
    encode_texts,
    pad_batch,
    predict_probabilities,
    set_trainable,
)
from scratchlm.finetune.classification_metrics import (
    ClassificationReport,
    classification_report,
    plot_confusion_matrix,
)
from scratchlm.finetune.config import TABLE, FinetuneRun, finetune_from_table
from scratchlm.finetune.labelled_text import LabelledExample, load_labelled_data, stratified_split
from scratchlm.finetune.lora import apply_lora, lora_config
from scratchlm.finetune.task import (
    RESULTS_FILE,
    EpochBatches,
    FinetuneTask,
    content_digest,
    eval_mode,
)
from scratchlm.inference.language_model import LanguageModel
from scratchlm.model.loading import gpt_from_state_dict, open_safetensors
from scratchlm.runs.checkpoint import file_sha256, latest_checkpoint, read_checkpoint_meta
from scratchlm.runs.layout import RunPaths, load_tokenizer
from scratchlm.runs.loading import read_model_config
from scratchlm.tokenizer import BPETokenizer

LABELS_FILE = "labels.json"
CONFUSION_PLOT = "confusion.png"
BACKBONE_PREFIX = "backbone."


@dataclass(frozen=True)
class EncodedSplit:
    """One split's texts as token ids (cut to max_length) and their class indices."""

    ids: list[list[int]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.ids)


class ClassifyTask(FinetuneTask):
    name = "classify"
    loss_label = "cross-entropy loss (nats / text)"

    def __init__(self, run: FinetuneRun, base: LanguageModel, device: torch.device) -> None:
        super().__init__(run, base, device)
        settings = run.classify
        dataset = load_labelled_data(
            run.data, settings.text_key, settings.label_key, settings.labels or None
        )
        self.labels = sorted(dataset.labels)
        counts = dataset.label_counts()
        status(
            f"{run.data}: {len(dataset.examples):,} labelled texts ("
            + ", ".join(f"{counts[label]:,} {label}" for label in self.labels)
            + ")"
        )
        try:
            split = stratified_split(
                dataset.examples, run.val_fraction, settings.test_fraction, run.train.seed
            )
        except ScratchLMError as e:  # name the data the split was of
            raise ScratchLMError(f"{run.data}: {e}") from None
        status(
            f"split (stratified, seed {run.train.seed}): {len(split.train):,} train, "
            f"{len(split.val):,} val, {len(split.test):,} test"
        )
        self.train_examples = split.train
        self.train_set = self._encode(split.train)
        self.val_set = self._encode(split.val)
        self.test_set = self._encode(split.test)
        self.pad_id = base.token_roles.get("pad", 0)

        self.model: SequenceClassifier = SequenceClassifier(
            base.model, len(self.labels), settings.dropout
        ).to(device)
        summary = set_trainable(
            self.model, settings.trainable, settings.last_blocks, self._add_adapters
        )
        if settings.trainable == "lora":
            # The runner finds a LoRA model by its lora_config (finetune/lora.py), which
            # apply_lora set on the backbone: the classifier carries it too, so checkpoints
            # hold merged weights and the adapters (and the head) for resuming.
            self.model.lora_config = lora_config(base.model)  # type: ignore[assignment]
        status(f"classifier ({settings.trainable}): {summary}")

        batch_size = run.train.batch_size
        self._order: tuple[int, list[int]] = (-1, [])  # (epoch, its shuffled example order)
        self.train_batches = EpochBatches(
            lambda epoch: math.ceil(len(self.train_set) / batch_size), self._batch, device
        )
        self.row_tokens = self.max_length

    def _splits(self) -> dict[str, EncodedSplit]:
        return {"train": self.train_set, "val": self.val_set, "test": self.test_set}

    def _encode(self, examples: Sequence[LabelledExample]) -> EncodedSplit:
        index = {label: i for i, label in enumerate(self.labels)}
        # base.encode: a special token's string typed in a text stays ordinary characters.
        ids = encode_texts(self.base.encode, [e.text for e in examples], self.max_length)
        return EncodedSplit(ids, [index[e.label] for e in examples])

    def _add_adapters(self, backbone: nn.Module) -> object:
        lora = self.run.lora
        return apply_lora(
            backbone,  # type: ignore[arg-type]
            lora.targets,
            lora.r,
            lora.alpha,
            lora.dropout,
            base_name=self.run.base,
        )

    def _batch(self, epoch: int, index: int) -> tuple[Tensor, Tensor, Tensor]:
        """Batch `index` of epoch `epoch`: the examples in an order drawn from seed + epoch,
        so a resumed run draws the same batches."""
        if self._order[0] != epoch:
            order = list(range(len(self.train_set)))
            random.Random(self.run.train.seed + epoch).shuffle(order)
            self._order = (epoch, order)
        size = self.run.train.batch_size
        rows = self._order[1][index * size : (index + 1) * size]
        idx, mask = pad_batch([self.train_set.ids[i] for i in rows], self.pad_id, "right")
        labels = torch.tensor([self.train_set.labels[i] for i in rows], dtype=torch.long)
        return idx, mask, labels

    def loss(self, *batch: Tensor) -> Tensor:
        idx, mask, labels = batch
        loss, _ = classification_loss(self.model, ClassificationBatch(idx, mask, labels))
        return loss

    @torch.no_grad()
    def _logits(self, split: EncodedSplit) -> Tensor:
        """Class logits (N, K) of a split, in eval mode, batched by length (little padding)."""
        restore = eval_mode(self.model)
        order = sorted(range(len(split)), key=lambda i: len(split.ids[i]))
        logits = torch.empty(len(split), len(self.labels))
        size = self.run.train.batch_size
        for start in range(0, len(order), size):
            rows = order[start : start + size]
            idx, mask = pad_batch([split.ids[i] for i in rows], self.pad_id, "right", self.device)
            logits[rows] = self.model(idx, mask).float().cpu()
        restore()
        return logits

    def _measure(self, split: EncodedSplit) -> tuple[float, ClassificationReport]:
        logits = self._logits(split)
        labels = torch.tensor(split.labels, dtype=torch.long)
        loss = float(F.cross_entropy(logits, labels))
        predicted = logits.argmax(dim=-1).tolist()
        return loss, classification_report(split.labels, predicted, self.labels)

    def validate(self) -> dict[str, float]:
        loss, report = self._measure(self.val_set)
        return {"val_loss": loss, "val_accuracy": report.accuracy}

    def data_identity(self) -> dict[str, Any]:
        settings = self.run.classify
        return {
            "labels": self.labels,
            "sizes": [len(split) for split in self._splits().values()],
            "train_sha256": content_digest([[e.text, e.label] for e in self.train_examples]),
            "max_length": self.max_length,
            "batch_size": self.run.train.batch_size,
            "trainable": [settings.trainable, settings.last_blocks],
        }

    def files(self) -> dict[str, str]:
        return {LABELS_FILE: json.dumps(self.labels, ensure_ascii=False) + "\n"}

    def finish(self, run_dir: Path) -> list[str]:
        val_loss, val = self._measure(self.val_set)
        test_loss, test = self._measure(self.test_set)
        plot = run_dir / CONFUSION_PLOT
        plot_confusion_matrix(
            test, plot, title=f"{run_dir.name}: test accuracy {test.accuracy:.2%} of {test.total}"
        )
        results = {
            "task": "classify",
            "data": self.run.data,
            "labels": self.labels,
            "sizes": {name: len(split) for name, split in self._splits().items()},
            "trainable": self.run.classify.trainable,
            "val": {"loss": val_loss, **val.to_dict()},
            "test": {"loss": test_loss, **test.to_dict()},
        }
        atomic_write_text(run_dir / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
        return [
            f"validation: accuracy {val.accuracy:.4f}, macro F1 {val.macro_f1:.4f} "
            f"({val.total} texts)",
            f"test ({test.total} texts):",
            *test.format().splitlines(),
            f"confusion matrix in {plot}; results in {run_dir / RESULTS_FILE}",
        ]


# ---------------------------------------------------------------------------------------------
# A trained classifier, read back from its run
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    text: str
    label: str
    probability: float  # of that label
    probabilities: dict[str, float]  # of every label


@dataclass
class TrainedClassifier:
    model: SequenceClassifier
    tokenizer: BPETokenizer
    labels: list[str]
    max_length: int  # tokens of a text the classifier reads; the rest is cut, as in training
    device: torch.device

    def classify(self, texts: Sequence[str], batch_size: int = 32) -> list[Prediction]:
        def encode(text: str) -> list[int]:
            return self.tokenizer.encode(text, allowed_special="none")

        ids = encode_texts(encode, texts, self.max_length)
        probs = predict_probabilities(self.model, ids, batch_size, self.device)
        predictions = []
        for text, row in zip(texts, probs.tolist(), strict=True):
            best = max(range(len(row)), key=row.__getitem__)
            predictions.append(
                Prediction(
                    text, self.labels[best], row[best], dict(zip(self.labels, row, strict=True))
                )
            )
        return predictions


def load_classifier(
    run_dir: Path, checkpoint: Path | None = None, device: str | torch.device = "cpu"
) -> TrainedClassifier:
    """A classification run's classifier: config.toml's [model], labels.json, and the weights
    of `checkpoint` (default: the latest; a LoRA run's are merged already)."""
    paths = RunPaths(Path(run_dir))
    run = classification_run(paths.root)
    labels = _read_labels(paths.root / LABELS_FILE)
    config = read_model_config(paths.root)
    tokenizer = load_tokenizer(paths.root)
    checkpoint = checkpoint or latest_checkpoint(paths.root)
    weights = checkpoint / "model.safetensors"
    digest = read_checkpoint_meta(checkpoint).get("sha256", {}).get(weights.name)
    if digest is not None and weights.is_file() and file_sha256(weights) != digest:
        raise ScratchLMError(f"{weights} does not match its checksum; the checkpoint is damaged")
    tensors = open_safetensors(weights)
    head = {k.removeprefix("score."): v for k, v in tensors.items() if k.startswith("score.")}
    if not head:
        raise ScratchLMError(
            f"{weights} has no classification head (score.*); it is not a classifier's checkpoint"
        )
    backbone = {
        k.removeprefix(BACKBONE_PREFIX): v
        for k, v in tensors.items()
        if k.startswith(BACKBONE_PREFIX)
    }
    torch_device = torch.device(device)
    gpt = gpt_from_state_dict(config, backbone, where=str(weights), device=torch_device)
    model = SequenceClassifier(gpt, len(labels))
    if head["weight"].shape != model.score.weight.shape:
        raise ScratchLMError(
            f"{weights}: the head has {head['weight'].shape[0]} classes but {LABELS_FILE} "
            f"names {len(labels)}; the labels do not belong to this checkpoint"
        )
    model.score.load_state_dict(head)
    model.to(torch_device).eval()
    block = config.block_size
    max_length = min(run.max_length, block) if run.max_length else block
    return TrainedClassifier(model, tokenizer, labels, max_length, torch_device)


def classification_run(run_dir: Path) -> FinetuneRun:
    """The settings of a run trained by `scratchlm finetune classify`; any other folder is
    refused in one line."""
    paths = RunPaths(Path(run_dir))
    paths.check_is_run()
    table = read_toml(paths.config).get(TABLE)
    if not isinstance(table, dict) or table.get("task") != "classify":
        raise ScratchLMError(
            f"{paths.root} is not a classification run (its config.toml has no [{TABLE}] "
            'task = "classify"); train one with `scratchlm finetune classify`'
        )
    return finetune_from_table(table, str(paths.config))


def _read_labels(path: Path) -> list[str]:
    labels = read_json(path, "labels file")
    if (
        not isinstance(labels, list)
        or len(labels) < 2
        or not all(isinstance(label, str) for label in labels)
    ):
        raise ScratchLMError(f"{path}: expected a JSON list of at least two label strings")
    return labels
