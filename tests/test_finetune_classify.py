"""`scratchlm finetune classify` and `scratchlm classify` on a tiny byte-level base model and
an easy labelled set (a text is spam when it holds the word SPAM): the run learns it, each
trainable mode trains only its parameters, resuming is exact, and bad input is one line."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scratchlm.cli.main import main
from scratchlm.finetune.classify_task import ClassifyTask
from scratchlm.finetune.config import FinetuneRun
from scratchlm.finetune.lora import lora_config
from scratchlm.inference.language_model import load_for_inference
from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig
from scratchlm.runs.imported import save_imported_run
from scratchlm.tokenizer import BPETokenizer

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "and",
    "we",
    "went",
    "to",
    "see",
    "my",
    "dog",
    "at",
    "home",
    "today",
]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny byte-level base run (work/base) and 300 labelled texts (work/mail.jsonl)."""
    work = tmp_path_factory.mktemp("classify")
    torch.manual_seed(0)
    tokenizer = BPETokenizer(special_tokens={"<|endoftext|>": 256})  # 257 tokens, no merges
    config = ModelConfig(
        vocab_size=257, block_size=64, n_layer=2, n_head=2, n_embd=32, pos_encoding="rope"
    )
    save_imported_run(work / "base", GPT(config), tokenizer, source="test")
    rng = random.Random(0)
    rows = []
    for i in range(300):
        spam = i % 3 == 0
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 10))]
        if spam:
            words.insert(rng.randrange(len(words) + 1), "SPAM")
        rows.append({"text": " ".join(words), "label": "spam" if spam else "ham"})
    (work / "mail.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return work


def finetune_args(work: Path, name: str, *more: str) -> list[str]:
    return ["finetune", "classify", "--base", str(work / "base"), "--data",
            str(work / "mail.jsonl"), "--name", name, "--out_dir", str(work / "runs"),
            "--train.learning_rate", "3e-3", *more]  # fmt: skip


@pytest.fixture(scope="module")
def trained(work: Path) -> Path:
    """A classifier trained (every parameter) for 60 steps through the CLI."""
    args = finetune_args(work, "all", "--classify.trainable", "all", "--train.max_steps", "60",
                         "--train.eval_interval", "20")  # fmt: skip
    assert main(args) == 0
    return work / "runs" / "all"


def test_a_classification_run_learns_the_easy_task(trained: Path) -> None:
    results = json.loads((trained / "finetune.json").read_text())
    assert results["labels"] == ["ham", "spam"]
    assert results["sizes"] == {"train": 225, "val": 30, "test": 45}  # stratified 75/10/15 %
    assert results["test"]["accuracy"] >= 0.9
    assert results["test"]["macro_f1"] >= 0.9
    assert sum(map(sum, results["test"]["confusion"])) == 45
    assert json.loads((trained / "labels.json").read_text()) == ["ham", "spam"]
    assert (trained / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if "val_accuracy" in r]
    assert [r["step"] for r in val] == [20, 40, 60]
    assert val[-1]["val_loss"] < val[0]["val_loss"]


def test_the_classify_command_prints_each_texts_label(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["classify", str(trained), "the cat SPAM sat on a mat", "we went home today"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["spam", "ham"]
    assert all(0.5 < float(line.split("\t")[1]) <= 1.0 for line in lines)

    listing = tmp_path / "texts.txt"
    listing.write_text("my dog SPAM\n\nthe mat\n")
    assert main(["classify", str(trained), "--file", str(listing), "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["label"] for r in records] == ["spam", "ham"]
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in records)

    jsonl = tmp_path / "texts.jsonl"
    jsonl.write_text('{"text": "at home SPAM today"}\n{"text": "a cat"}\n')
    assert main(["classify", str(trained), "--file", str(jsonl)]) == 0
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == [
        "spam",
        "ham",
    ]


def trainable_names(work: Path, mode: str) -> list[str]:
    run = FinetuneRun(task="classify", base=str(work / "base"), data=str(work / "mail.jsonl"))
    run.classify.trainable = mode  # type: ignore[assignment]
    run.validate()
    base = load_for_inference(run.base, dtype="float32")
    task = ClassifyTask(run, base, torch.device("cpu"))
    if mode == "lora":
        assert lora_config(task.model) is not None  # the runner saves merged weights
    return [name for name, p in task.model.named_parameters() if p.requires_grad]


def test_each_trainable_mode_unfreezes_only_its_parameters(work: Path) -> None:
    assert trainable_names(work, "head") == ["score.weight", "score.bias"]
    last = trainable_names(work, "last_blocks")
    assert "score.weight" in last and "backbone.transformer.ln_f.weight" in last
    assert any(n.startswith("backbone.transformer.h.1.") for n in last)
    assert not any(n.startswith("backbone.transformer.h.0.") or "wte" in n for n in last)
    lora = trainable_names(work, "lora")
    assert sorted(n for n in lora if not n.startswith("score.")) == sorted(
        f"backbone.transformer.h.{i}.attn.c_attn.adapters.{kind}.{m}"
        for i in (0, 1) for kind in ("q", "v") for m in ("A", "B")
    )  # fmt: skip
    assert "backbone.transformer.wte.weight" in trainable_names(work, "all")


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {name for name, t in before.items() if not torch.equal(t, after[name])}


@pytest.mark.parametrize("mode", ["lora", "last_blocks", "head"])
def test_resume_is_exact_and_frozen_weights_stay_the_base_models(work: Path, mode: str) -> None:
    """8 steps straight, and the same run stopped after 4 and resumed, give the same weights
    bit for bit (dropout on: the RNG state resumes too); what is frozen ends as it began."""
    name = f"resume-{mode}"
    args = finetune_args(work, name, "--classify.trainable", mode, "--classify.dropout", "0.2",
                         "--lora.dropout", "0.1", "--train.max_steps", "8",
                         "--train.checkpoint_interval", "4", "--train.eval_interval", "4")  # fmt: skip
    assert main(args) == 0
    straight = work / "runs" / name
    resumed = work / "runs" / f"{name}-resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_000008")
    assert main(["finetune", "classify", "--resume", str(resumed)]) == 0
    final = load_file(straight / "checkpoints" / "step_000008" / "model.safetensors")
    again = load_file(resumed / "checkpoints" / "step_000008" / "model.safetensors")
    assert final.keys() == again.keys()
    assert not changed(final, again)

    base = {"backbone." + k: v for k, v in load_file(next((work / "base").glob(
        "checkpoints/*/model.safetensors"))).items()}  # fmt: skip
    for weights in (base, final):  # the tied head is saved under either of its two names
        if "backbone.transformer.wte.weight" not in weights:
            weights["backbone.transformer.wte.weight"] = weights.pop("backbone.lm_head.weight")
    assert set(final) == set(base) | {"score.weight", "score.bias"}  # merged: no adapters
    moved = changed(base, final)
    if mode == "head":
        assert not moved
    elif mode == "last_blocks":
        assert moved and all(".h.1." in n or ".ln_f." in n for n in moved)
    else:  # LoRA on q and v: merged into the attention's input projection, nothing else
        assert moved == {f"backbone.transformer.h.{i}.attn.c_attn.weight" for i in (0, 1)}
        assert (straight / "adapter" / "lora.safetensors").is_file()


def write(path: Path, rows: Sequence[Mapping[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ("missing.jsonl", "missing.jsonl does not exist"),
        ("no-label.jsonl", "no-label.jsonl:2: no label column 'label' (columns: text); name "
         "the right one with --classify.label_key"),
        ("rare-label.jsonl", "rare-label.jsonl: label 'urgent' has 2 example(s); a stratified "
         "split into 3 sets needs at least 3 of each label"),
        ("typo.jsonl --classify.labels ham,spam", "typo.jsonl:3: label 'Spam' is not in the "
         "label set ham, spam (did you mean 'spam'?)"),
    ],
)  # fmt: skip
def test_bad_data_is_one_clear_line(
    work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], data: str, says: str
) -> None:
    texts = [{"text": f"text {i}", "label": "ham" if i % 2 else "spam"} for i in range(20)]
    write(tmp_path / "no-label.jsonl", [texts[0], {"text": "no label"}, *texts[1:]])
    write(tmp_path / "rare-label.jsonl", [*texts, *[{"text": "now!", "label": "urgent"}] * 2])
    write(tmp_path / "typo.jsonl", [*texts[:2], {"text": "buy", "label": "Spam"}, *texts[2:]])
    data, *options = data.split()
    args = ["finetune", "classify", "--base", str(work / "base"), "--data", str(tmp_path / data),
            "--name", "bad", "--out_dir", str(tmp_path / "runs"), *options]  # fmt: skip
    assert main(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and says in errors[0], errors
    assert not (tmp_path / "runs" / "bad").exists()


def test_classify_refuses_what_it_cannot_read(
    work: Path, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        (["classify", str(work / "base"), "x"], "is not a classification run"),
        (["classify", str(trained)], "no texts to classify"),
        (["classify", str(trained), "--file", str(tmp_path / "none.txt")], "does not exist"),
        (["classify", str(trained), "--file", str(write(tmp_path / "t.jsonl", [{"body": "x"}]))],
         "t.jsonl:1: no text under 'text' (keys: body); name the right key with --text-key"),
    ]  # fmt: skip
    for args, says in cases:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, err
