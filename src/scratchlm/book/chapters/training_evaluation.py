"""Chapter 5, Training and Evaluation: the loop, the reader's loss curve and learning-rate
schedule, perplexity and bits per byte, multiple choice, HumanEval's pass@k, MMLU, and the
report card.

The curves and the loss table are the run's metrics.jsonl; the evaluations its
evaluations.json (eval/records.py); the report card's summary is computed with the report's own
section builders, without writing the card; the pass@k examples are computed by the project's
estimator while building.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from scratchlm.book import typst_markup as tm
from scratchlm.book.context import BookContext
from scratchlm.core.errors import ScratchLMError

TITLE = "Training and Evaluation"

# pass@k of n samples with c correct, for the estimator's table: a few (n, c) and k.
PASS_AT_K_SAMPLES = 20
PASS_AT_K_CORRECT = (1, 5, 10)
PASS_AT_K_K = (1, 5, 10)


def write(ctx: BookContext) -> str:
    return "\n".join(
        [
            f"= {TITLE}",
            _loop_section(ctx),
            _curves_section(ctx),
            _perplexity_section(ctx),
            _downstream_section(ctx),
            _report_section(ctx),
        ]
    )


# --- the loop ----------------------------------------------------------------------------------


def _loop_section(ctx: BookContext) -> str:
    return f"""
== The training loop, step by step

Pretraining repeats one step until `train.max_steps`:

+ set every parameter group's learning rate from the schedule, a multiple of its peak;
+ run forward and backward over the step's micro-batches, summing gradients
  (`accumulate_gradients`, chapter on distributed training); the step's loss is their mean,
  averaged over the ranks of a distributed job;
+ clip the gradient to a global norm of `train.grad_clip`, so one bad batch cannot throw the
  weights far;
+ if the loss and the gradient are finite, let the optimizer step and zero the gradients;
  otherwise drop the gradients and try the next batch (too many bad steps in a row stop the
  run, its last good checkpoint kept);
+ hand the step to the hooks: metrics, evaluation on the validation shards, checkpoints.

{ctx.listing("scratchlm.train.loop:run_steps")}

The schedule is a linear warmup followed by a decay (cosine, linear, or warmup-stable-decay),
as a factor of the peak rate:

{ctx.listing("scratchlm.train.schedule:lr_factor_at")}
{ctx.listing("scratchlm.train.step:clip_grad_norm")}
"""


# --- the reader's curves -----------------------------------------------------------------------


def series(metrics: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """(step, value) of every record that has `key` with a finite number."""
    return [
        (int(r["step"]), float(r[key]))
        for r in metrics
        if isinstance(r.get(key), int | float) and "step" in r and math.isfinite(r[key])
    ]


def loss_rows(metrics: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """The loss table: (what, step, value) for the first and last training loss, the last and
    best validation loss, and the perplexity of the last."""
    train, val = series(metrics, "train_loss"), series(metrics, "val_loss")
    rows = []
    if train:
        rows.append(("first training loss", tm.number(train[0][0]), f"{train[0][1]:.4f}"))
        rows.append(("last training loss", tm.number(train[-1][0]), f"{train[-1][1]:.4f}"))
    if val:
        best = min(val, key=lambda sv: sv[1])
        rows.append(("last validation loss", tm.number(val[-1][0]), f"{val[-1][1]:.4f}"))
        rows.append(("best validation loss", tm.number(best[0]), f"{best[1]:.4f}"))
        rows.append(
            ("perplexity, exp(last validation loss)", tm.number(val[-1][0]),
             f"{math.exp(val[-1][1]):.2f}")
        )  # fmt: skip
    return rows


def _draw_curves(path: Path, metrics: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val, lr = (series(metrics, k) for k in ("train_loss", "val_loss", "lr"))
    fig, (loss_ax, lr_ax) = plt.subplots(1, 2, figsize=(6.5, 2.6), width_ratios=(3, 2))
    if train:
        loss_ax.plot(*zip(*train, strict=True), label="train", linewidth=1.2)
    if val:
        loss_ax.plot(*zip(*val, strict=True), "o-", label="validation", markersize=3)
    loss_ax.set_xlabel("step", fontsize=8)
    loss_ax.set_ylabel("loss (nats per token)", fontsize=8)
    loss_ax.legend(fontsize=7)
    loss_ax.grid(alpha=0.3)
    if lr:
        lr_ax.plot(*zip(*lr, strict=True), color="C2", linewidth=1.2)
    lr_ax.set_xlabel("step", fontsize=8)
    lr_ax.set_ylabel("learning rate", fontsize=8)
    lr_ax.grid(alpha=0.3)
    for ax in (loss_ax, lr_ax):
        ax.tick_params(labelsize=7)
        ax.yaxis.get_offset_text().set_fontsize(7)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def _curves_section(ctx: BookContext) -> str:
    head = "== Your loss curve and learning-rate schedule\n"
    if not series(ctx.metrics, "train_loss"):
        return head + ctx.missing(
            "training metrics (metrics.jsonl)", f"scratchlm train --resume {ctx.run_dir}"
        )
    _draw_curves(ctx.figure_path("loss_lr.png"), ctx.metrics)
    table = tm.table(["", "step", "value"], loss_rows(ctx.metrics))
    return f"""{head}
The training loss is the mean over each logged step's batch; the validation loss is the model's
loss on held-out shards it never trains on, every `train.eval_interval` steps. A validation loss
that turns up while the training loss still falls is overfitting.

{tm.figure("figures/loss_lr.png", f"The loss (left) and the learning rate (right) of {tm.text(ctx.run_name)}, from its metrics.jsonl.")}

{table}
"""


# --- perplexity and bits per byte --------------------------------------------------------------


def _records(ctx: BookContext, kind: str) -> list[dict[str, Any]]:
    entries = ctx.json_file("evaluations.json") or []
    return [e for e in entries if isinstance(e, dict) and e.get("kind") == kind]


def _perplexity_section(ctx: BookContext) -> str:
    from scratchlm.eval.language_modeling import KIND

    records = _records(ctx, KIND)
    if records:
        rows = []
        for record in records:
            for source, m in (
                record["metrics"].get("sources") or {"total": record["metrics"]}
            ).items():
                rows.append(
                    [source, tm.number(m["tokens"]), tm.number(m["bytes"]), f"{m['loss']:.4f}",
                     f"{m['perplexity']:.2f}", f"{m['bits_per_byte']:.4f}"]
                )  # fmt: skip
        yours = "Your run's language-modelling evaluations (evaluations.json):\n\n" + tm.table(
            ["source", "tokens", "bytes", "loss", "perplexity", "bits/byte"], rows
        )
    else:
        yours = ctx.missing("bits-per-byte evaluation", f"scratchlm eval {ctx.run_dir} --val")
    return f"""
== Perplexity and bits per byte

The loss is the mean negative log-likelihood per token, in nats:
$ cal(L) = -1/N sum_(i=1)^N ln p(x_i | x_(<i)). $
*Perplexity* is $e^(cal(L))$: the number of tokens the model is, on average, as unsure between
as if it chose uniformly. It depends on the tokenizer: a tokenizer with longer tokens has fewer,
harder predictions. *Bits per byte* divides the same total log-likelihood by the UTF-8 bytes of
the text instead, in bits:
$ "bpb" = (-sum_i ln p(x_i | x_(<i))) / (B ln 2), $
so two models with different vocabularies compare on the same text. Each document is scored on
its own with rolling windows, every token predicted once.

{ctx.listing("scratchlm.eval.language_modeling:SourceScore")}

{yours}
"""


# --- downstream metrics ------------------------------------------------------------------------


def pass_at_k_rows() -> list[list[str]]:
    """pass@k of PASS_AT_K_SAMPLES samples with c correct, by the project's estimator."""
    from scratchlm.eval.humaneval import pass_at_k

    return [
        [f"{c} of {PASS_AT_K_SAMPLES}"]
        + [f"{pass_at_k(PASS_AT_K_SAMPLES, c, k):.3f}" for k in PASS_AT_K_K]
        for c in PASS_AT_K_CORRECT
    ]


def _multiple_choice_table(records: list[dict[str, Any]]) -> str:
    rows = []
    for record in records:
        m = record["metrics"]
        tasks = m.get("tasks") or {record["task"]: m}
        for name, t in tasks.items():
            rows.append(
                [f"{record['task']}: {name}" if len(tasks) > 1 else name, tm.number(t["n"]),
                 f"{t['acc']:.3f}", f"{t['acc_norm']:.3f}", f"{t['chance']:.3f}"]
            )  # fmt: skip
        if len(tasks) > 1:
            rows.append(
                [f"{record['task']}: all", tm.number(m["n"]), f"{m['acc']:.3f}",
                 f"{m['acc_norm']:.3f}", f"{m['chance']:.3f}"]
            )  # fmt: skip
    return tm.table(["task", "questions", "acc", "acc_norm", "chance"], rows)


def _humaneval_table(records: list[dict[str, Any]]) -> str:
    rows = []
    for record in records:
        for key, value in record["metrics"].items():
            if key.startswith("pass@") and isinstance(value, int | float):
                rows.append([record["task"], key, f"{value:.3f}"])
    return tm.table(["task", "metric", "value"], rows) if rows else ""


def _downstream_section(ctx: BookContext) -> str:
    from scratchlm.eval.tasks.mmlu import LETTERS, SHOTS

    choice = _records(ctx, "multiple-choice")
    choice_part = (
        "Your run's multiple-choice evaluations (evaluations.json):\n\n"
        + _multiple_choice_table(choice)
        if choice
        else ctx.missing(
            "multiple-choice evaluation", f"scratchlm eval {ctx.run_dir} --task default"
        )
    )
    human = _records(ctx, "humaneval")
    human_part = (
        "Your run's HumanEval results:\n\n" + _humaneval_table(human)
        if human
        else ctx.missing("HumanEval result", f"scratchlm eval {ctx.run_dir} --humaneval")
    )
    k_headers = [f"pass@{k}" for k in PASS_AT_K_K]
    return f"""
== Downstream metrics

=== Multiple choice: acc and acc_norm

A multiple-choice question is scored without generating anything: the model reads the question
and the log-probability of each answer is summed over its tokens. *acc* counts the questions
where the answer with the highest total log-probability is right. Long answers have more tokens
and so lower totals; *acc_norm* divides each total by the answer's length in characters first
(lm-eval's convention), so a long right answer is not penalised for its length.

{ctx.listing("scratchlm.eval.multiple_choice:judge")}

{choice_part}

=== HumanEval and pass\\@k

HumanEval gives the model the signature and docstring of a Python function and runs the
problem's tests on what it writes (in a sandbox, never in the evaluating process). *pass\\@k* is
the chance that at least one of $k$ samples passes. Drawing exactly $k$ samples per problem
gives a noisy estimate; Chen et al. draw $n >= k$, count the $c$ that pass, and use the
unbiased estimator

$ "pass@"k = 1 - binom(n - c, k) / binom(n, k), $

the chance that $k$ drawn from the $n$ without replacement are not all failures, averaged over
the problems.

{ctx.listing("scratchlm.eval.humaneval:pass_at_k")}

Computed by that function while this book was built, for $n = $ {tm.number(PASS_AT_K_SAMPLES)}:

{tm.table(["passing samples", *k_headers], pass_at_k_rows())}

{human_part}

=== MMLU

MMLU (Hendrycks et al.) asks multiple-choice questions with {tm.number(len(LETTERS))} options in
dozens of subjects, from elementary mathematics to law and medicine, with {tm.number(SHOTS)}
solved examples before each question; the model answers with a letter. It measures knowledge and reasoning picked up in pretraining, far beyond
what a small model trained here knows (such a model scores near chance). scratchlm reads the
original CSV files (`scratchlm.eval.tasks.mmlu`), but they are not shipped with it and this
machine has no network to fetch them: give their folder to `scratchlm eval RUN --task PATH --format mmlu`
where you have them.
"""


# --- the report card ---------------------------------------------------------------------------


def report_summary(run_dir: Path) -> list[tuple[str, str]]:
    """The summary `scratchlm report RUN` prints, computed by the report's own section
    builders (no file written); a section that cannot be read is left out."""
    from scratchlm.eval.report.sections import SECTIONS, read_run

    view = read_run(run_dir)
    summary: list[tuple[str, str]] = []
    for _, build in SECTIONS:
        try:
            _, lines = build(view)
        except (ScratchLMError, KeyError, TypeError, ValueError):
            continue
        summary.extend(lines)
    return summary


def _report_section(ctx: BookContext) -> str:
    try:
        summary = report_summary(ctx.run_dir)
    except (ScratchLMError, OSError):
        summary = []
    card = ctx.run_dir / "report.md"
    written = (
        f"Your run has its card: {tm.inline_code(str(card))} (and report.html beside it)."
        if card.is_file()
        else ctx.missing("report card", f"scratchlm report {ctx.run_dir}")
    )
    table = (
        "What `scratchlm report` says at the top of your run's card, computed now:\n\n"
        + tm.table(["", "summary"], summary, align="left, left")
        if summary
        else ""
    )
    return f"""
== The report card

`scratchlm report RUN` gathers everything above into one page, report.md and a self-contained
report.html in the run's folder: the model's shape and parameters, the tokenizer, the data kept
and removed, the training (steps, tokens, time, losses and the curves), every evaluation
recorded with its date and command, samples, and the machine and software. It is rebuilt from
the run's files each time, so re-running an evaluation updates its row.

{table}

{written}
"""
