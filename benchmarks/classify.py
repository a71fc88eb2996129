"""The baseline our text classifier is compared with: TF-IDF features and logistic regression
(scikit-learn), on exactly the split `scratchlm finetune classify` uses.

The data is read and split by scratchlm's own code (finetune/labelled_text.py: the same texts,
stripped of e-mail headers the same way, and the same seeded stratified split), so the test set
is the one our classifier is measured on. The vectoriser learns its vocabulary and IDF weights
from the training set only; the regularisation strength C is chosen by validation accuracy;
the test set is scored once, with scratchlm's metrics (finetune/classification_metrics.py).

    pip install -e '.[bench]'        # scikit-learn
    python benchmarks/classify.py --run runs/spam      # a `scratchlm finetune classify` run
    python benchmarks/classify.py [--data spam-assassin | FILE.jsonl | FILE.csv]
        [--val-fraction 0.1] [--test-fraction 0.1] [--seed 0] [--confusion-png PATH]

With --run, the data, keys, fractions and seed are the run's, and its test results
(finetune.json) are printed beside the baseline's, with the difference in points.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_description, load_average

from scratchlm.finetune.classification_metrics import classification_report, plot_confusion_matrix
from scratchlm.finetune.labelled_text import load_labelled_data, stratified_split

C_GRID = (1.0, 10.0, 100.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="spam-assassin", help="a named dataset or a file")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--confusion-png", type=Path, help="also draw the test confusion matrix")
    parser.add_argument("--run", type=Path, help="a classifier run: its split, and its result")
    args = parser.parse_args()
    ours = None
    if args.run is not None:
        ours = run_settings(args)
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        sys.exit("this benchmark needs scikit-learn: pip install -e '.[bench]'")

    data = load_labelled_data(args.data, args.text_column, args.label_column)
    split = stratified_split(data.examples, args.val_fraction, args.test_fraction, args.seed)
    index = {label: i for i, label in enumerate(data.labels)}
    texts = {name: [e.text for e in part] for name, part in vars(split).items()}
    labels = {name: [index[e.label] for e in part] for name, part in vars(split).items()}
    print(
        f"data: {args.data}, {len(data.examples)} texts, labels {data.label_counts()}; split "
        f"(seed {args.seed}): {len(split.train)} train, {len(split.val)} val, "
        f"{len(split.test)} test"
    )

    start = time.perf_counter()
    # Words and word pairs seen in at least 2 training texts; log-scaled counts, so a word
    # repeated 50 times in one spam does not outweigh everything else.
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    features = {"train": vectorizer.fit_transform(texts["train"])}
    features |= {name: vectorizer.transform(texts[name]) for name in ("val", "test")}
    best: tuple[float, float, LogisticRegression] | None = None
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=5000).fit(features["train"], labels["train"])
        val_accuracy = float((model.predict(features["val"]) == labels["val"]).mean())
        print(f"  C = {c:5g}: validation accuracy {val_accuracy:.4f}")
        if best is None or val_accuracy > best[0]:
            best = (val_accuracy, c, model)
    assert best is not None
    _, c, model = best
    predicted = [int(p) for p in model.predict(features["test"])]
    seconds = time.perf_counter() - start

    report = classification_report(labels["test"], predicted, data.labels)
    print(
        f"TF-IDF (1-2 grams, {len(vectorizer.vocabulary_):,} features) + logistic regression "
        f"(C = {c:g}, chosen on validation): fit and scored in {seconds:.1f} s"
    )
    print(report.format())
    print(f"test accuracy: {report.accuracy:.2%}")
    if ours is not None:
        print(f"\n{'test split':<34} {'accuracy':>9} {'macro F1':>9}")
        print(f"{'scratchlm (' + str(args.run) + ')':<34} {ours['accuracy']:>9.2%} "
              f"{ours['macro_f1']:>9.4f}")  # fmt: skip
        print(f"{'TF-IDF + logistic regression':<34} {report.accuracy:>9.2%} "
              f"{report.macro_f1:>9.4f}")  # fmt: skip
        gap = 100 * (ours["accuracy"] - report.accuracy)
        print(f"scratchlm - baseline: {gap:+.2f} points of accuracy")
    print(f"CPU: {cpu_description()}; load average {load_average()}")
    if args.confusion_png:
        plot_confusion_matrix(report, args.confusion_png, f"TF-IDF + LR: {report.accuracy:.2%}")
        print(f"wrote {args.confusion_png}")


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Take the run's data, keys, split fractions and seed into args; return its test
    results."""
    from scratchlm.core.user_files import read_json
    from scratchlm.finetune.config import read_run

    run = read_run(args.run)
    if run.task != "classify":
        sys.exit(f"{args.run} is a {run.task} run, not a classifier")
    args.data, args.seed = run.data, run.train.seed
    args.text_column, args.label_column = run.classify.text_key, run.classify.label_key
    args.val_fraction, args.test_fraction = run.val_fraction, run.classify.test_fraction
    results = args.run / "finetune.json"
    if not results.is_file():
        sys.exit(f"{args.run} has no finetune.json: the run has not finished")
    test: dict[str, Any] = read_json(results, "results")["test"]
    return test


if __name__ == "__main__":
    main()
