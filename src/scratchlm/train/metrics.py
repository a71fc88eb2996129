"""metrics.jsonl (one JSON object per logged step or evaluation), optionally mirrored to
TensorBoard, and the loss and learning-rate plots beside it."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from scratchlm.core.atomic_files import atomic_path
from scratchlm.core.errors import ScratchLMError


class MetricsLog:
    """Append-only JSON lines; each line is flushed so a crash loses at most the line in flight.

    With tensorboard_dir, every number of every record is also written as a TensorBoard scalar
    (tag = the record's key, x = its step).
    """

    def __init__(self, path: Path, tensorboard_dir: Path | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._writer: Any = None
        if tensorboard_dir is not None:
            self._writer = tensorboard_writer(tensorboard_dir)

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self._writer is not None:
            step = int(record.get("step", 0))
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                    self._writer.add_scalar(key, value, step)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def truncate_after(self, step: int) -> None:
        """On resume, drop records past the checkpoint's step (they will be logged again)."""
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")


def tensorboard_writer(log_dir: Path) -> Any:
    """A TensorBoard SummaryWriter; tensorboard is optional, so its absence is a clear error."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ScratchLMError(
            "train.tensorboard = true needs the tensorboard package: pip install tensorboard "
            "(or set train.tensorboard = false; metrics.jsonl has the same numbers)"
        ) from None
    return SummaryWriter(log_dir=str(log_dir))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a crash; the rest of the log is still good
    return records


TOKEN_LOSS = "cross-entropy loss (nats / token)"


def plot_loss(
    metrics_path: Path, out_path: Path, title: str = "", loss_label: str = TOKEN_LOSS
) -> Path:
    """Train and validation loss against step, as a PNG. loss_label names the loss (a
    fine-tuning task's own); the title gives a perplexity only for the per-token one."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss", linewidth=1.5)
        best = min(v for _, v in val)
        shown = f" (perplexity {math.exp(best):.1f})" if loss_label == TOKEN_LOSS else ""
        ax.set_title(f"{title}  best val loss {best:.3f}{shown}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(loss_label)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out_path


def plot_learning_rate(metrics_path: Path, out_path: Path, title: str = "") -> Path:
    """The learning rate (peak group, see schedule.py) against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lr = [(r["step"], r["lr"]) for r in read_metrics(metrics_path) if "lr" in r]
    fig, ax = plt.subplots(figsize=(7, 3), dpi=120)
    if lr:
        ax.plot(*zip(*lr, strict=True), linewidth=1.5)
    ax.set_title(f"{title}  learning rate".strip())
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out_path
