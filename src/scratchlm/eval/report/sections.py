"""The report card's sections, each read from the run's own files, each with its lines for the
summary at the top:

    model          config.toml [model]; parameters counted on the meta device (no weights read)
    tokenizer      tokenizer.json; bytes per token from data/meta.json (validation text)
    data           data/report.json: what reading found, what each stage removed, the splits
    training       metrics.jsonl, the latest checkpoint's meta.json, loss.png and lr.png
    evaluations    evaluations.json (eval.records), one row per kind and task, the latest run
    samples        samples.txt, written at the end of training
    machine        where the report was written, and the versions of the software

A file that is missing makes its section say so (an imported model has no data or training);
one that is damaged makes it say what is wrong, and the rest of the card is still written.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchlm.config import RunConfig
from scratchlm.core.errors import ScratchLMError
from scratchlm.core.user_files import read_json
from scratchlm.eval.records import RECORDS_FILE, EvaluationRecord, read_evaluations
from scratchlm.eval.report.document import (
    Code,
    Fields,
    Figure,
    Inline,
    Paragraph,
    Preformatted,
    Section,
    Table,
    count,
    date,
    duration,
    number,
    percent,
)
from scratchlm.eval.report.machine import machine_fields
from scratchlm.runs.checkpoint import list_checkpoints, read_checkpoint_meta
from scratchlm.runs.layout import RunPaths

Glance = list[tuple[str, str]]
MAX_SAMPLE_CHARS = 20_000  # samples.txt beyond this is cut (a page is enough to judge)
MAX_LOSS_ROWS = 12  # validation points shown in the table (evenly spaced, first and last)
MAX_GLANCE_EVALUATIONS = 6


@dataclass
class RunView:
    """What several sections need: the run's config and its latest checkpoint's meta.json."""

    paths: RunPaths
    config: RunConfig
    checkpoints: list[Path]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def imported_from(self) -> str | None:
        source = self.meta.get("extra", {}).get("imported_from")
        return str(source) if source else None

    @property
    def command_name(self) -> str:
        return str(self.paths.root)


def read_run(run_dir: Path) -> RunView:
    from scratchlm.config import load_run_config

    paths = RunPaths(run_dir)
    paths.check_is_run()
    checkpoints = list_checkpoints(run_dir)
    view = RunView(paths, load_run_config(run_dir), checkpoints)
    if checkpoints:
        view.meta = read_checkpoint_meta(checkpoints[-1])
    return view


# --- model -----------------------------------------------------------------------------------


def model_section(run: RunView) -> tuple[Section, Glance]:
    import torch

    from scratchlm.model import GPT

    mc = run.config.model
    with torch.device("meta"):  # shapes only: a 7B config costs nothing
        model = GPT(mc)
    params, body = model.num_parameters(), model.num_parameters(exclude_embeddings=True)
    heads = f"{mc.n_head} heads" + (
        f" ({mc.n_kv_head} key/value heads)" if mc.n_kv_head and mc.n_kv_head != mc.n_head else ""
    )
    positions = mc.pos_encoding + (f" (base {mc.rope_base:g})" if mc.pos_encoding == "rope" else "")
    mlp = mc.mlp + (f", {count(mc.mlp_hidden)} hidden" if mc.mlp_hidden else "")
    rows: list[tuple[str, Inline]] = [
        ("Parameters", f"{count(params)} ({count(body)} outside the embeddings)"),
        ("Shape", f"{mc.n_layer} layers, {mc.n_embd} wide, {heads}"),
        ("Context", f"{count(mc.block_size)} tokens"),
        ("Vocabulary", f"{count(mc.vocab_size)} tokens"),
        ("MLP", mlp),
        ("Normalisation", mc.norm + (", QK norm" if mc.qk_norm else "")),
        ("Positions", positions),
        (
            "Embeddings",
            "tied to the output head" if mc.tie_embeddings else "separate from the head",
        ),
    ]
    if run.checkpoints:
        latest = run.checkpoints[-1]
        rows.append(
            (
                "Checkpoint",
                [Code(f"checkpoints/{latest.name}"), f" (latest of {len(run.checkpoints)})"],
            )
        )
    else:
        rows.append(("Checkpoint", "none yet"))
    if run.imported_from:
        rows.append(("Imported from", Code(run.imported_from)))
    glance = [
        (
            "Model",
            f"{count(params)} parameters: {mc.n_layer} layers x {mc.n_embd} wide, "
            f"{mc.n_head} heads, context {count(mc.block_size)}, vocabulary {count(mc.vocab_size)}",
        )
    ]
    return Section("Model", [Fields(rows)]), glance


# --- tokenizer -------------------------------------------------------------------------------


def tokenizer_section(run: RunView) -> tuple[Section, Glance]:
    from scratchlm.tokenizer import BPETokenizer

    tokenizer = BPETokenizer.load(run.paths.tokenizer)
    specials = sorted(tokenizer.special_tokens, key=tokenizer.special_tokens.__getitem__)
    shown: list[str | Code] = []
    for token in specials[:8]:
        shown += [", "] if shown else []
        shown.append(Code(token))
    if len(specials) > 8:
        shown.append(f" and {len(specials) - 8} more")
    rows: list[tuple[str, Inline]] = [
        (
            "Vocabulary",
            f"{count(tokenizer.vocab_size)} tokens, {len(specials)} of them special",
        ),
        ("Special tokens", shown or "none"),
    ]
    if run.imported_from:
        rows.insert(0, ("Kind", "imported with the model"))
    else:
        tc = run.config.tokenizer
        rows.insert(0, ("Kind", f"{tc.kind}, {tc.pattern} pre-split pattern"))
    glance: Glance = []
    meta_path = run.paths.data / "meta.json"
    if meta_path.is_file():
        meta = read_json(meta_path, "data meta file")
        # Shards end each document with one separator token: text tokens leave them out,
        # as the data report's bytes per token does.
        text_tokens = meta.get("val_tokens", 0) - meta.get("val_documents", 0)
        if text_tokens > 0 and meta.get("val_bytes"):
            per_token = meta["val_bytes"] / text_tokens
            rows.append(
                (
                    "Bytes per token",
                    f"{per_token:.3f} on the validation text ({count(meta['val_bytes'])} bytes "
                    f"in {count(text_tokens)} tokens, separators left out)",
                )
            )
            glance.append(
                (
                    "Tokenizer",
                    f"{count(tokenizer.vocab_size)} tokens, {per_token:.2f} bytes per token",
                )
            )
    else:
        rows.append(("Bytes per token", "not measured: the run has no prepared data"))
    if not glance:
        glance.append(("Tokenizer", f"{count(tokenizer.vocab_size)} tokens"))
    return Section("Tokenizer", [Fields(rows)]), glance


# --- data ------------------------------------------------------------------------------------


def data_section(run: RunView) -> tuple[Section, Glance]:
    section = Section("Data")
    report_path = run.paths.data / "report.json"
    if not report_path.is_file():
        if run.imported_from:
            why = "the model was imported, not trained here"
        else:
            why = f"{report_path} is missing (data prepared before data reports existed?)"
        section.blocks.append(Paragraph(f"No data report: {why}."))
        return section, []
    report = read_json(report_path, "data report")
    if not isinstance(report, dict) or report.get("format") != "scratchlm-data-report":
        raise ScratchLMError(f"{report_path} is not a scratchlm data report")
    read, totals = report.get("read", {}), report.get("totals", {})
    sources = ", ".join(report.get("settings", {}).get("sources", [])) or "?"
    problems = read.get("problems") or []
    section.blocks.append(
        Fields(
            [
                ("Sources", sources),
                (
                    "Read",
                    f"{count(read.get('documents', 0))} documents, "
                    f"{count(read.get('bytes', 0))} bytes from {count(read.get('files', 0))} files",
                ),
                ("Problems reading", "; ".join(map(str, problems)) if problems else "none"),
                (
                    "Kept",
                    f"{count(totals.get('documents_out', 0))} of "
                    f"{count(totals.get('documents_in', 0))} documents "
                    f"({percent(totals.get('documents_out', 0), totals.get('documents_in', 0))}), "
                    f"{count(totals.get('bytes_out', 0))} of {count(totals.get('bytes_in', 0))} "
                    f"bytes ({percent(totals.get('bytes_out', 0), totals.get('bytes_in', 0))}), "
                    f"{count(totals.get('tokens_out', 0))} tokens",
                ),
            ]
        )
    )
    rows: list[list[Inline]] = []
    for stage in report.get("stages", []):
        removed = stage["documents_in"] - stage["documents_out"]
        rows.append(
            [
                stage["stage"].replace("_", " "),
                count(stage["documents_in"]),
                count(stage["documents_out"]),
                count(removed),
                count(stage["bytes_in"] - stage["bytes_out"]),
                _reasons(stage.get("reasons", {})),
            ]
        )
    if rows:
        section.blocks.append(Paragraph("What each stage removed, and why:"))
        header = ["stage", "documents in", "out", "removed", "bytes removed", "why"]
        section.blocks.append(Table(header, rows, numeric=frozenset({1, 2, 3, 4})))
    splits = report.get("splits", {})
    if splits:
        split_rows: list[list[Inline]] = [
            [
                name,
                count(s["documents"]),
                count(s["bytes"]),
                count(s["tokens"]),
                str(len(s["shards"])),
            ]
            for name, s in splits.items()
        ]
        section.blocks.append(
            Table(
                ["split", "documents", "bytes", "tokens", "shards"],
                split_rows,
                frozenset({1, 2, 3, 4}),
            )
        )
    lengths = run.paths.data / "lengths.png"
    if lengths.is_file():
        section.blocks.append(
            Figure(Path("data") / "lengths.png", "Document lengths before and after")
        )
    removed = totals.get("documents_in", 0) - totals.get("documents_out", 0)
    glance = [
        (
            "Data",
            f"{sources}: {count(totals.get('tokens_out', 0))} tokens in "
            f"{count(totals.get('documents_out', 0))} documents ({count(removed)} removed, "
            f"{percent(removed, totals.get('documents_in', 0))})",
        )
    ]
    return section, glance


def _reasons(reasons: dict[str, Any]) -> str:
    """The reasons that removed or edited something, biggest first: 'exact duplicate 1'."""
    said = []
    for name, r in sorted(reasons.items(), key=lambda item: -item[1].get("documents", 0)):
        label = name.replace("_", " ")
        if r.get("documents"):
            said.append(f"{label} {count(r['documents'])}")
        elif r.get("edited"):
            lines = f", {count(r['lines'])} lines" if r.get("lines") else ""
            said.append(f"{label}: {count(r['edited'])} edited{lines}")
    return "; ".join(said) or "-"


# --- training --------------------------------------------------------------------------------


@dataclass
class TrainingLog:
    """metrics.jsonl split by kind of record."""

    steps: list[dict[str, Any]]  # logged training steps (train_loss, tokens_per_s, elapsed_s)
    validations: list[dict[str, Any]]  # val_loss, val_perplexity
    unreadable: int  # lines that were not JSON objects (a crash mid-line)


def read_training_log(path: Path) -> TrainingLog:
    log = TrainingLog([], [], 0)
    if not path.is_file():
        return log
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            log.unreadable += 1
            continue
        if not isinstance(record, dict):
            log.unreadable += 1
        elif "train_loss" in record:
            log.steps.append(record)
        elif "val_loss" in record:
            log.validations.append(record)
    return log


def training_seconds(steps: list[dict[str, Any]]) -> tuple[float, int]:
    """Time spent training and in how many sessions. Each session (a resume starts one) counts
    its elapsed_s from zero, so a drop marks the start of the next."""
    total, sessions, last = 0.0, 0, None
    for record in steps:
        elapsed = record.get("elapsed_s")
        if not isinstance(elapsed, int | float):
            continue
        if last is None or elapsed < last:
            sessions += 1
            total += last if last is not None else 0.0
        last = elapsed
    return total + (last or 0.0), sessions


def training_section(run: RunView) -> tuple[Section, Glance]:
    section = Section("Training")
    log = read_training_log(run.paths.metrics)
    step = int(run.meta.get("step", 0))
    if not log.steps and not log.validations and step == 0:
        why = (
            f"the model was imported from {run.imported_from}"
            if run.imported_from
            else f"{run.paths.metrics.name} is missing or empty"
        )
        section.blocks.append(Paragraph(f"Not trained here: {why}."))
        imported = f": imported from {Path(run.imported_from).name}" if run.imported_from else ""
        return section, [("Training", f"not trained here{imported}")]
    tc = run.config.train
    tokens = int(run.meta.get("tokens_seen", 0))
    seconds, sessions = training_seconds(log.steps)
    rows: list[tuple[str, Inline]] = [
        ("Steps", f"{count(step)} of {count(tc.max_steps)} planned"),
        (
            "Tokens",
            f"{count(tokens)}" + (f" ({count(tokens // step)} per step)" if step else ""),
        ),
        (
            "Time",
            duration(seconds)
            + (f" in {sessions} sessions (resumed)" if sessions > 1 else "")
            + " (logged wall-clock time, evaluations included)",
        ),
    ]
    speeds = [r["tokens_per_s"] for r in log.steps if _finite(r.get("tokens_per_s"))]
    if speeds:
        mfus = [r["mfu"] for r in log.steps if _finite(r.get("mfu"))]
        mfu = f", MFU {statistics.median(mfus):.1%}" if mfus else ""
        rows.append(
            ("Throughput", f"{count(round(statistics.median(speeds)))} tokens/s (median){mfu}")
        )
    rows.append(
        (
            "Optimizer",
            f"{tc.optimizer}, learning rate {tc.learning_rate:g} with {count(tc.warmup_steps)} "
            f"warmup steps, {tc.schedule} schedule down to {tc.min_lr:g}, weight decay "
            f"{tc.weight_decay:g}",
        )
    )
    glance_loss = []
    if log.steps:
        last = log.steps[-1]
        rows.append(
            ("Final train loss", f"{number(last['train_loss'])} (step {count(last['step'])})")
        )
        glance_loss.append(f"train {number(last['train_loss'])}")
    best_loss, best_step = _best_validation(run.meta, log.validations)
    if log.validations:
        last = log.validations[-1]
        perplexity = math.exp(last["val_loss"]) if last["val_loss"] < 700 else math.inf
        rows.append(
            (
                "Final validation loss",
                f"{number(last['val_loss'])} (perplexity {number(perplexity)}, "
                f"step {count(last['step'])})",
            )
        )
        glance_loss.insert(0, f"validation {number(last['val_loss'])}")
    if best_loss is not None:
        rows.append(("Best validation loss", f"{number(best_loss)} (step {count(best_step or 0)})"))
        glance_loss.append(f"best validation {number(best_loss)} at step {count(best_step or 0)}")
    skipped = run.meta.get("extra", {}).get("skipped_steps", 0)
    if skipped:
        rows.append(("Skipped steps", f"{count(skipped)} (loss or gradient not finite)"))
    section.blocks.append(Fields(rows))
    if log.unreadable:
        section.blocks.append(
            Paragraph(
                f"{count(log.unreadable)} line(s) of metrics.jsonl could not be read (left out)."
            )
        )
    if log.validations:
        section.blocks.append(_loss_table(log))
    for plot, caption in ((run.paths.loss_plot, "Loss"), (run.paths.lr_plot, "Learning rate")):
        if plot.is_file():
            section.blocks.append(Figure(Path(plot.name), caption))
    if not run.paths.loss_plot.is_file():
        section.blocks.append(
            Paragraph(
                [
                    "No loss plot (loss.png): make it with ",
                    Code(f"scratchlm plot {run.command_name}"),
                    ".",
                ]
            )
        )
    glance = [
        ("Training", f"{count(step)} steps, {count(tokens)} tokens, {duration(seconds)}"),
    ]
    if glance_loss:
        glance.append(("Loss", ", ".join(glance_loss)))
    return section, glance


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _best_validation(
    meta: dict[str, Any], validations: list[dict[str, Any]]
) -> tuple[float | None, int | None]:
    if meta.get("best_val_loss") is not None:
        return float(meta["best_val_loss"]), meta.get("best_step")
    finite = [r for r in validations if _finite(r.get("val_loss"))]
    if not finite:
        return None, None
    best = min(finite, key=lambda r: r["val_loss"])
    return float(best["val_loss"]), int(best["step"])


def _loss_table(log: TrainingLog) -> Table:
    points = log.validations
    if len(points) > MAX_LOSS_ROWS:  # evenly spaced, keeping the first and the last
        last = len(points) - 1
        picks = sorted({round(i * last / (MAX_LOSS_ROWS - 1)) for i in range(MAX_LOSS_ROWS)})
        points = [points[i] for i in picks]
    train_at = {r["step"]: r["train_loss"] for r in log.steps}
    rows: list[list[Inline]] = []
    for r in points:
        train = train_at.get(r["step"])
        perplexity = math.exp(r["val_loss"]) if r["val_loss"] < 700 else math.inf
        rows.append(
            [
                count(r["step"]),
                number(train) if train is not None else "-",
                number(r["val_loss"]),
                number(perplexity),
            ]
        )
    header = ["step", "train loss", "validation loss", "perplexity"]
    return Table(header, rows, numeric=frozenset({0, 1, 2, 3}))


# --- evaluations -----------------------------------------------------------------------------


def metric_texts(metrics: dict[str, Any]) -> list[str]:
    """'acc 0.6100 ± 0.0200' for each metric, its standard error (NAME_stderr) beside it;
    a nested table (per source) flattened one level as 'source.metric'."""
    flat: dict[str, Any] = {}
    for name, value in metrics.items():
        if isinstance(value, dict):
            flat.update({f"{name}.{k}": v for k, v in value.items()})
        else:
            flat[name] = value
    texts = []
    for name, value in flat.items():
        if name.endswith("_stderr") and name.removesuffix("_stderr") in flat:
            continue
        shown = number(value) if isinstance(value, int | float) else str(value)
        error = flat.get(f"{name}_stderr")
        if isinstance(error, int | float) and not isinstance(error, bool):
            shown += f" ± {number(error)}"
        texts.append(f"{name} {shown}")
    return texts


def evaluations_section(run: RunView) -> tuple[Section, Glance]:
    section = Section("Evaluations")
    records: list[EvaluationRecord] = read_evaluations(run.paths.root)
    if not records:
        section.blocks.append(
            Paragraph(
                [
                    "No evaluations recorded yet: run one, e.g. ",
                    Code(f"scratchlm eval {run.command_name}"),
                    f", and it appears here ({RECORDS_FILE}).",
                ]
            )
        )
        return section, [("Evaluations", "none yet")]
    rows: list[list[Inline]] = []
    glance: Glance = []
    for r in sorted(records, key=lambda r: (r.kind, r.task)):
        metrics = metric_texts(r.metrics)
        rows.append(
            [
                r.kind,
                r.task,
                ", ".join(metrics) or "-",
                r.checkpoint or "latest",
                date(r.date),
                Code(r.command),
            ]
        )
        if len(glance) < MAX_GLANCE_EVALUATIONS:
            glance.append((f"{r.task} ({r.kind})", ", ".join(metrics[:2]) or "-"))
    if len(records) > MAX_GLANCE_EVALUATIONS:
        glance.append(("", f"and {len(records) - MAX_GLANCE_EVALUATIONS} more evaluations below"))
    header = ["evaluation", "task", "results", "checkpoint", "date", "command"]
    section.blocks.append(Table(header, rows, nowrap=frozenset({0, 3, 4})))
    return section, glance


# --- samples and machine ---------------------------------------------------------------------


def samples_section(run: RunView) -> tuple[Section, Glance]:
    section = Section("Samples")
    path = run.paths.samples
    if not path.is_file():
        section.blocks.append(
            Paragraph(
                [
                    "No samples (samples.txt is written at the end of training); see what the "
                    "model writes with ",
                    Code(f'scratchlm generate {run.command_name} --prompt "..."'),
                    ".",
                ]
            )
        )
        return section, []
    text = path.read_bytes().decode("utf-8", errors="replace")
    note = ""
    if len(text) > MAX_SAMPLE_CHARS:
        note = f" (the first {count(MAX_SAMPLE_CHARS)} of {count(len(text))} characters)"
        text = text[:MAX_SAMPLE_CHARS]
    section.blocks.append(Paragraph(f"What the model wrote at the end of training{note}:"))
    section.blocks.append(Preformatted(text.rstrip("\n")))
    return section, []


def machine_section(run: RunView) -> tuple[Section, Glance]:
    section = Section("Machine and software")
    section.blocks.append(
        Paragraph(
            "Where this report was written (a run does not record the machine it trained on)."
        )
    )
    section.blocks.append(Fields(list(machine_fields())))
    return section, []


SectionBuilder = Callable[[RunView], tuple[Section, Glance]]
SECTIONS: list[tuple[str, SectionBuilder]] = [
    ("Model", model_section),
    ("Tokenizer", tokenizer_section),
    ("Data", data_section),
    ("Training", training_section),
    ("Evaluations", evaluations_section),
    ("Samples", samples_section),
    ("Machine and software", machine_section),
]
