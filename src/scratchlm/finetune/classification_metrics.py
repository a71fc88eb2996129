"""How good a classifier is: accuracy, per-class precision, recall and F1, and the confusion
matrix, as numbers, as a table and as a PNG.

For class c, with TP the texts of class c predicted c, FP those of other classes predicted c and
FN those of class c predicted something else:

    precision = TP / (TP + FP)   of the texts called c, the share that are c
    recall    = TP / (TP + FN)   of the texts that are c, the share found
    F1        = 2 · precision · recall / (precision + recall)

A ratio with nothing to divide (no text predicted c, or none of class c) is 0, as in
scikit-learn's default. The macro averages weigh every class alike, so a rare class (spam
here) counts as much as a common one; accuracy weighs every text alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from scratchlm.core.atomic_files import atomic_path


@dataclass(frozen=True)
class ClassMetrics:
    label: str
    precision: float
    recall: float
    f1: float
    support: int  # how many texts truly are of this class


@dataclass(frozen=True)
class ClassificationReport:
    labels: list[str]
    accuracy: float
    per_class: list[ClassMetrics]
    confusion: list[list[int]]  # confusion[true][predicted], classes in the order of labels

    @property
    def macro_precision(self) -> float:
        return sum(m.precision for m in self.per_class) / len(self.per_class)

    @property
    def macro_recall(self) -> float:
        return sum(m.recall for m in self.per_class) / len(self.per_class)

    @property
    def macro_f1(self) -> float:
        return sum(m.f1 for m in self.per_class) / len(self.per_class)

    @property
    def total(self) -> int:
        return sum(sum(row) for row in self.confusion)

    def to_dict(self) -> dict[str, object]:
        """Plain numbers for metrics.jsonl or a results file."""
        return {
            "accuracy": self.accuracy,
            "macro_precision": self.macro_precision,
            "macro_recall": self.macro_recall,
            "macro_f1": self.macro_f1,
            "per_class": {
                m.label: {
                    "precision": m.precision,
                    "recall": m.recall,
                    "f1": m.f1,
                    "support": m.support,
                }
                for m in self.per_class
            },
            "labels": self.labels,
            "confusion": self.confusion,
        }

    def format(self) -> str:
        """A table a person reads: one row per class, the macro average, accuracy."""
        width = max(12, *(len(label) for label in self.labels))
        lines = [f"{'':{width}}  precision  recall     f1  support"]
        for m in self.per_class:
            lines.append(
                f"{m.label:{width}}  {m.precision:9.4f}  {m.recall:6.4f}  {m.f1:6.4f}  "
                f"{m.support:7d}"
            )
        lines.append(
            f"{'macro average':{width}}  {self.macro_precision:9.4f}  {self.macro_recall:6.4f}  "
            f"{self.macro_f1:6.4f}  {self.total:7d}"
        )
        correct = sum(self.confusion[i][i] for i in range(len(self.labels)))
        lines.append(f"accuracy {self.accuracy:.4f} ({correct} of {self.total})")
        return "\n".join(lines)


def classification_report(
    true: Sequence[int], predicted: Sequence[int], labels: Sequence[str]
) -> ClassificationReport:
    """Metrics of class indices `predicted` against `true` (each in range(len(labels)))."""
    if len(true) != len(predicted):
        raise ValueError(f"{len(true)} true labels but {len(predicted)} predictions")
    if not true:
        raise ValueError("no examples to measure")
    k = len(labels)
    confusion = [[0] * k for _ in range(k)]
    for t, p in zip(true, predicted, strict=True):
        if not (0 <= t < k and 0 <= p < k):
            raise ValueError(f"class index {t if not 0 <= t < k else p} outside 0..{k - 1}")
        confusion[t][p] += 1
    per_class = []
    for c, label in enumerate(labels):
        tp = confusion[c][c]
        predicted_c = sum(confusion[t][c] for t in range(k))
        support = sum(confusion[c])
        precision = _ratio(tp, predicted_c)
        recall = _ratio(tp, support)
        f1 = _ratio(2 * precision * recall, precision + recall)
        per_class.append(ClassMetrics(label, precision, recall, f1, support))
    accuracy = sum(confusion[c][c] for c in range(k)) / len(true)
    return ClassificationReport(list(labels), accuracy, per_class, confusion)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def plot_confusion_matrix(report: ClassificationReport, path: Path, title: str = "") -> None:
    """The confusion matrix as a PNG: true classes down, predicted across, each cell's count
    and its share of the true class's texts (the row), darker for more."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no window: works without a display
    import matplotlib.pyplot as plt

    k = len(report.labels)
    counts = report.confusion
    shares = [[n / max(sum(row), 1) for n in row] for row in counts]
    size = 1.6 + 1.0 * k
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    for t in range(k):
        for p in range(k):
            colour = "white" if shares[t][p] > 0.5 else "black"
            ax.text(p, t, f"{counts[t][p]}\n{shares[t][p]:.1%}", ha="center", va="center",
                    color=colour, fontsize=10)  # fmt: skip
    ax.set_xticks(
        range(k), report.labels, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center"
    )
    ax.set_yticks(range(k), report.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"accuracy {report.accuracy:.2%} on {report.total} texts")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
