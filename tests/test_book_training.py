"""The book's chapters 4-6 (distributed training, training and evaluation, from model to
chatbot): they typeset from a tiny run, their numbers are the run's files and the planner's,
the identities they compute hold, the tests they cite exist, a sibling fine-tune shows up, and
what the run lacks becomes a note with its command."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from scratchlm.book import typst_markup as tm
from scratchlm.book.build import build_book
from scratchlm.book.chapters import chatbot, distributed, training_evaluation
from scratchlm.book.context import BookContext
from tiny_runs import train_tiny_run

CHAPTERS = ["distributed", "training_evaluation", "chatbot"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("book-training"))


def context(run: Path, out: Path) -> BookContext:
    ctx = BookContext(run, out / "book")
    ctx.out_dir.mkdir(parents=True)
    return ctx


def test_the_three_chapters_typeset(run: Path, tmp_path: Path) -> None:
    ctx = build_book(run, tmp_path / "book.pdf", chapters=CHAPTERS, keep_source=tmp_path / "src")
    assert (tmp_path / "book.pdf").read_bytes().startswith(b"%PDF")
    listed = {listing.symbol for listing in ctx.listings}
    assert {
        "scratchlm.train.step:accumulate_gradients",
        "scratchlm.train.loop:run_steps",
        "scratchlm.eval.humaneval:pass_at_k",
        "scratchlm.finetune.dpo:dpo_loss",
        "scratchlm.finetune.lora:LoRAAdapter.forward",
    } <= listed
    for figure in ("parallel_layouts.png", "mesh.png", "loss_lr.png"):
        assert (tmp_path / "src" / "figures" / figure).stat().st_size > 1000


def test_loss_numbers_are_the_runs_metrics(run: Path, tmp_path: Path) -> None:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    markup = training_evaluation.write(context(run, tmp_path))
    rows = training_evaluation.loss_rows(records)
    assert rows[0][1:] == (tm.number(train[0][0]), f"{train[0][1]:.4f}")
    assert rows[1][1:] == (tm.number(train[-1][0]), f"{train[-1][1]:.4f}")
    assert rows[2][2] == f"{val[-1][1]:.4f}"
    assert rows[3][2] == f"{min(v for _, v in val):.4f}"
    assert rows[4][2] == f"{math.exp(val[-1][1]):.2f}"
    for _, step, value in rows:
        assert tm.text(value) in markup and tm.text(step) in markup


def test_planner_table_is_the_planners_output() -> None:
    from scratchlm.train.plan import GB, make_plan, plan_inputs

    rows = distributed.planner_rows()
    assert len(rows) == len(distributed.PLAN_MODELS) * len(distributed.PLAN_LAYOUTS)
    plan = make_plan(
        plan_inputs(
            "gpt2-124m",
            context=distributed.PLAN_CONTEXT,
            gpus_per_node=8,
            parallel="fsdp",
            micro_batch=distributed.PLAN_MICRO_BATCH,
        )
    )
    fsdp = next(r for r in rows if r[:2] == ["gpt2-124m", "FSDP"])
    assert fsdp[4] == f"{plan.total / GB:,.1f} GB"
    assert fsdp[5] == f"{sum(c.bytes for c in plan.collectives) / GB:,.2f} GB"
    # FSDP shards the state: less memory per GPU than DDP for the same model.
    ddp = next(r for r in rows if r[:2] == ["gpt2-124m", "DDP"])
    assert float(fsdp[4].split()[0]) < float(ddp[4].split()[0])


def test_the_identities_the_chapter_computes_hold() -> None:
    assert distributed.accumulation_error() < 1e-12
    assert distributed.split_mlp_error() < 1e-10
    assert distributed.state_bytes_per_parameter() == 16


def test_every_cited_test_exists(run: Path, tmp_path: Path) -> None:
    found = distributed.found_tests(context(run, tmp_path))
    assert found is not None and all(found.values()), found


def test_missing_stages_give_their_commands(run: Path, tmp_path: Path) -> None:
    ctx = context(run, tmp_path)
    evaluation = training_evaluation.write(ctx)
    for command in (f"scratchlm eval {run} --val", f"scratchlm eval {run} --humaneval",
                    f"scratchlm eval {run} --task default", f"scratchlm report {run}"):  # fmt: skip
        assert tm.inline_code(command) in evaluation
    chat = chatbot.write(ctx)
    assert tm.inline_code(f"scratchlm finetune sft --base {run} --data chitchat") in chat
    assert "Your run has no fine-tuned model yet" in chat


def test_a_sibling_fine_tune_shows_its_numbers(run: Path, tmp_path: Path) -> None:
    base = tmp_path / "runs" / "base-run"
    shutil.copytree(run, base)
    sibling = tmp_path / "runs" / "polite"
    sibling.mkdir()
    (sibling / "config.toml").write_text(
        '[finetune]\ntask = "dpo"\nbase = "runs/base-run"\n\n[finetune.lora]\nr = 4\n'
    )
    (sibling / "finetune.json").write_text(
        json.dumps(
            {
                "task": "dpo",
                "data": "concise",
                "held_out_preference_accuracy": {"base": 0.5, "tuned": 0.875},
                "held_out_dpo_loss": {"base": 0.6931, "tuned": 0.25},
            }
        )
    )
    unrelated = tmp_path / "runs" / "other"
    unrelated.mkdir()
    (unrelated / "config.toml").write_text('[finetune]\ntask = "sft"\nbase = "runs/elsewhere"\n')
    (unrelated / "finetune.json").write_text('{"task": "sft"}')

    assert [r.folder.name for r in chatbot.finetunes_of(base)] == ["polite"]
    markup = chatbot.write(context(base, tmp_path / "out"))
    assert tm.text("polite") in markup and tm.text("other") not in markup
    assert tm.text("dpo with LoRA (r = 4)") in markup
    assert tm.text("0.875") in markup and tm.text("0.2500") in markup
    assert "Your run has no fine-tuned model yet" not in markup
