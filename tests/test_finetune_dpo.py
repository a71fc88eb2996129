"""`scratchlm finetune dpo`: the DPO task through the training engine, on tiny byte-level chat
models. A preference file whose chosen replies stop where the rejected ones run on is learnt
(held-out accuracy from 0.5 to >= 0.9, the first loss ln 2), a run resumes exactly, LoRA trains
only its adapters, a generated preference is made on-policy from the base model's own replies,
and bad data is refused in one line."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scratchlm.cli.main import main
from scratchlm.finetune.conversations import CHATML_TEMPLATE
from scratchlm.inference.language_model import load_for_inference
from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig
from scratchlm.runs.checkpoint import list_checkpoints
from scratchlm.runs.imported import save_imported_run
from scratchlm.tokenizer import BPETokenizer
from test_chat import BABBLES, save_chat_run
from test_dpo import toy_chats

LN2 = math.log(2)
SPECIALS = {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258}
WORDS = ["cat", "dog", "sun", "red", "big", "run", "fun", "hot", "tea", "sky"]
# A scripted reply of short sentences, "Hi yo.\tHi yo.\t...": its first sentence is a concise
# reply (test_chat.py's scripted models: the next token depends on the current one alone).
HI_YO = {"\n": "H", "H": "i", "i": " ", " ": "y", "y": "o", "o": ".", ".": "\t", "\t": "H"}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny byte-level ChatML model (base/) and a preference file (pairs.jsonl):
    each chosen reply is one word and a full stop, its rejected reply the same, then more."""
    work = tmp_path_factory.mktemp("dpo")
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=259, block_size=64, n_layer=2, n_head=2, n_embd=32, bias=False,
        pos_encoding="rope", norm="rmsnorm", mlp="swiglu",
    )  # fmt: skip
    tokenizer = BPETokenizer(special_tokens=SPECIALS)
    save_imported_run(
        work / "base", GPT(config), tokenizer, source="test", token_roles={"eos": 258}
    )
    (work / "base" / "chat_template.jinja").write_text(CHATML_TEMPLATE, encoding="utf-8")
    rng = random.Random(0)
    lines = []
    for i in range(96):
        prompt = f"q{i} " + " ".join(rng.choices(WORDS, k=2))
        short = rng.choice(WORDS) + "."
        long = f"{short} {' '.join(rng.choices(WORDS, k=rng.randint(3, 5)))}."
        lines.append(json.dumps({"prompt": prompt, "chosen": short, "rejected": long}))
    (work / "pairs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return work


def finetune_dpo(work: Path, *args: object) -> int:
    """`scratchlm finetune dpo` in this process: on work/base and work/pairs.jsonl into
    work/runs unless args say otherwise (a resumed run keeps its own), small steps logged and
    validated often."""
    train = ["--train.learning_rate", "3e-3", "--train.warmup_steps", "0",
             "--train.log_interval", "1", "--train.eval_interval", "4",
             "--train.dtype", "float32"]  # fmt: skip
    run = ["--out_dir", str(work / "runs")]
    if "--base" not in args:
        run += ["--base", str(work / "base")]
    if "--data" not in args:
        run += ["--data", str(work / "pairs.jsonl")]
    if "--resume" in args:
        run = []
    return main(["finetune", "dpo", *run, *train, *map(str, args)])


def metrics(run: Path) -> list[dict[str, float]]:
    text = (run / "metrics.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def results(run: Path) -> dict[str, object]:
    return json.loads((run / "finetune.json").read_text(encoding="utf-8"))


def last_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(list_checkpoints(run)[-1] / "model.safetensors")


# ------------------------------------------------------------------------------ a file's pairs


def test_a_preference_file_is_learnt(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert finetune_dpo(work, "--name", "learnt", "--train.max_steps", "16") == 0
    said = capsys.readouterr()
    out, err = said.out, said.err
    run = work / "runs" / "learnt"
    records = metrics(run)
    # Step 0: the policy is the reference, every pair ties, the loss is ln 2.
    losses = [r["train_loss"] for r in records if "train_loss" in r]
    assert losses[0] == pytest.approx(LN2, abs=1e-4) and losses[-1] < 0.3
    first_task = next(r for r in records if "train_preference_accuracy" in r)
    assert first_task["step"] == 1 and first_task["train_preference_accuracy"] == 0.5
    assert first_task["train_reward_margin"] == 0.0
    vals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in vals] == [4, 8, 12, 16]
    assert vals[-1]["val_preference_accuracy"] >= 0.9 and vals[-1]["val_reward_margin"] > 0
    assert vals[-1]["val_chosen_reward"] > vals[-1]["val_rejected_reward"]
    found = results(run)
    accuracy = found["held_out_preference_accuracy"]
    assert accuracy == {"base": 0.5, "tuned": vals[-1]["val_preference_accuracy"]}
    loss = found["held_out_dpo_loss"]
    assert isinstance(loss, dict) and loss["base"] == pytest.approx(LN2, abs=1e-6)
    # 96 pairs of distinct prompts, val_fraction 0.1: 10 held out.
    assert found["pairs"] == {"train": 86, "held_out": 10}
    generations = found["generations"]
    assert isinstance(generations, dict) and generations["measure"] == "mean words per reply"
    assert generations["prompts"] == 10 and len(generations["examples"]) == 4
    assert "dpo data: 86 train and 10 held-out preference pairs" in err
    assert "held-out preference accuracy: base 0.500 -> tuned" in out
    # A file's pairs are not copied into the run.
    assert not (run / "preferences.jsonl").exists()


def test_bf16_training_starts_at_ln2_too(work: Path) -> None:
    # The reference is scored under the autocast training runs in: scored in float32 instead,
    # the policy's bf16 log-probs differ from it and the first loss is off by ~5e-4 (beta 1).
    args = ("--name", "bf16", "--train.max_steps", "1", "--dpo.beta", "1", "--train.dtype")
    assert finetune_dpo(work, *args, "bfloat16") == 0
    assert first_loss(work / "runs" / "bf16") == pytest.approx(LN2, abs=1e-5)


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(work: Path) -> None:
    # A constant rate (min_lr = learning_rate): the schedule does not depend on max_steps.
    common = ("--train.checkpoint_interval", "3", "--train.min_lr", "3e-3", "--dpo.beta", "0.2")
    assert finetune_dpo(work, "--name", "whole", "--train.max_steps", "6", *common) == 0
    assert finetune_dpo(work, "--name", "halves", "--train.max_steps", "3", *common) == 0
    halves = work / "runs" / "halves"
    assert finetune_dpo(work, "--resume", halves, "--train.max_steps", "6") == 0
    whole, resumed = last_weights(work / "runs" / "whole"), last_weights(halves)
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    losses = [[r["train_loss"] for r in metrics(run) if "train_loss" in r]
              for run in (work / "runs" / "whole", halves)]  # fmt: skip
    assert len(losses[0]) == 6 and losses[0] == losses[1]


def test_lora_trains_only_the_adapters(work: Path) -> None:
    args = ("--name", "lora", "--train.max_steps", "8", "--lora.r", "4", "--lora.alpha", "8")
    assert finetune_dpo(work, *args) == 0
    run = work / "runs" / "lora"
    base = load_for_inference(work / "base", dtype="float32").model.state_dict()
    merged = last_weights(run)  # the adapters merged into q and v
    changed = {k for k in merged if not torch.equal(base[k], merged[k])}
    # The base's attention is one fused q|k|v projection: the q and v rows moved, k's did not.
    assert changed == {f"transformer.h.{i}.attn.c_attn.weight" for i in (0, 1)}
    for name in changed:
        q, k, v = merged[name].split(32)
        base_q, base_k, base_v = base[name].split(32)
        assert torch.equal(k, base_k) and not torch.equal(q, base_q)
        assert not torch.equal(v, base_v)
    assert (run / "adapter" / "lora.safetensors").is_file()
    accuracy = results(run)["held_out_preference_accuracy"]
    assert isinstance(accuracy, dict) and accuracy["tuned"] > accuracy["base"] == 0.5


# ------------------------------------------------------------------------------ generated pairs


@pytest.mark.parametrize(
    ("preference", "script", "template", "base_measure"),
    [("question", BABBLES, True, 0.0), ("concise", HI_YO, True, None),
     ("question", BABBLES, False, 0.0)],  # no chat template: the reply on the next line
)  # fmt: skip
def test_a_generated_preference_is_made_from_the_models_own_replies(
    work: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    preference: str,
    script: dict[str, str | None],
    template: bool,
    base_measure: float | None,
) -> None:
    # The chitchat corpus, as the cache keeps it: toy chats of one message a line.
    monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "cache" / "corpora" / "chitchat"
    corpus.mkdir(parents=True)
    for n, chat in enumerate(toy_chats(60)):
        (corpus / f"chat_{n:04d}.txt").write_text(chat, encoding="utf-8")
    base = save_chat_run(tmp_path / "scripted", script, block_size=256, template=template)
    name = f"gen-{preference}-{template}"
    args = ("--base", base, "--data", preference, "--name", name,
            "--dpo.pairs", "24", "--val_fraction", "0.25", "--train.max_steps", "2",
            "--train.batch_size", "4")  # fmt: skip
    assert finetune_dpo(work, *args) == 0
    err = capsys.readouterr().err
    run = work / "runs" / name
    # Every scripted reply can carry the preference: all 24 pairs are kept, 6 held out.
    assert f"on-policy '{preference}' pairs: 24 of 24" in err
    assert results(run)["pairs"] == {"train": 18, "held_out": 6}
    train = [json.loads(line) for line in (run / "preferences.jsonl").read_text().splitlines()]
    held = (run / "preferences_held_out.jsonl").read_text().splitlines()
    assert len(train) == 18 and len(held) == 6
    reply = "blah blah" if preference == "question" else "Hi yo.\tHi yo."
    for pair in train:  # rebuilt around the model's reply, not the corpus'
        if preference == "question":
            assert pair["rejected"].startswith(reply) and pair["chosen"].endswith("?")
        else:
            assert pair["chosen"] == "Hi yo." and pair["rejected"].startswith(reply)
    generations = results(run)["generations"]
    assert isinstance(generations, dict) and generations["prompts"] == 6
    if base_measure is not None:
        assert generations["base"] == base_measure  # babble never ends in "?"
    else:  # 64 bytes of "Hi yo.\t": 9 sentences of two words, and a "Hi"
        assert generations["base"] == pytest.approx(19.0)
    assert first_loss(run) == pytest.approx(LN2, abs=1e-4)


def first_loss(run: Path) -> float:
    return next(r["train_loss"] for r in metrics(run) if "train_loss" in r)


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "hi", "chosen": "Same.", "rejected": "Same."}',
         'line 3: "chosen" and "rejected" are the same reply'),
        ('{"prompt": "hi", "chosen": "Yes."}', 'line 3: key "rejected" is missing'),
        ('{"prompt": "", "chosen": "a", "rejected": "b"}', 'line 3: key "prompt" is empty'),
    ],
)  # fmt: skip
def test_bad_pairs_are_refused_in_one_line(
    work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, message: str
) -> None:
    good = '{"prompt": "q", "chosen": "a.", "rejected": "a. b."}'
    data = tmp_path / "bad.jsonl"
    data.write_text(f"{good}\n{good}\n{line}\n", encoding="utf-8")
    assert finetune_dpo(work, "--name", "bad", "--data", data) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{data}, {message}" in err
    assert not (work / "runs" / "bad").exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [("nonsense", "is neither a generated preference (concise, question) nor a file"),
     ("one-prompt", "1 distinct prompts are too few to hold out val_fraction")],
)  # fmt: skip
def test_unusable_data_is_refused_in_one_line(
    work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], data: str, message: str
) -> None:
    if data == "one-prompt":
        path = tmp_path / "one.jsonl"
        pair = '{"prompt": "q", "chosen": "a.", "rejected": "a. b."}\n'
        path.write_text(pair * 3, encoding="utf-8")
        data = str(path)
    assert finetune_dpo(work, "--name", "unusable", "--data", data) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
