"""`scratchlm finetune sft` end to end on a tiny byte-level model: the run folder it makes, the
engine's parts carried over (metrics, checkpoints, exact resume), LoRA runs (merged weights in
every checkpoint, the adapter alone at the end), recipes with a [finetune] table, and bad input.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch

from scratchlm.cli.main import main
from scratchlm.finetune.config import FinetuneRun, read_recipe, read_run
from scratchlm.finetune.conversations import CHATML_TEMPLATE
from scratchlm.finetune.lora import load_lora
from scratchlm.finetune.sft_task import check_replies
from scratchlm.inference.language_model import load_for_inference
from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig
from scratchlm.runs.checkpoint import list_checkpoints
from scratchlm.runs.imported import save_imported_run
from scratchlm.tokenizer import BPETokenizer
from test_chat import SAYS_HI, save_chat_run

CHAT_SPECIALS = {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258}
FAST = ["--train.eval_interval", "5", "--train.log_interval", "5", "--train.warmup_steps", "2",
        "--sample.temperature", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained base run (ChatML's tokens, no template) and conversations to learn:
    the assistant answers the sum of two digits."""
    root = tmp_path_factory.mktemp("sft")
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=259, block_size=64, n_layer=2, n_head=2, n_embd=32, pos_encoding="rope"
    )
    tokenizer = BPETokenizer(special_tokens=CHAT_SPECIALS)
    save_imported_run(root / "base", GPT(config), tokenizer, source="test")
    rng = random.Random(0)
    lines = []
    for a in range(10):
        for b in range(10):
            turns = [{"role": "user", "content": f"{a}+{b}"}]
            turns.append({"role": "assistant", "content": str(a + b)})
            lines.append(json.dumps({"messages": turns}))
    rng.shuffle(lines)
    (root / "sums.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def finetune(work: Path, name: str, *extra: str, steps: int = 10) -> int:
    return main(
        ["finetune", "sft", "--base", str(work / "base"), "--data", str(work / "sums.jsonl"),
         "--name", name, "--out_dir", str(work / "runs"), "--train.max_steps", str(steps),
         "--train.learning_rate", "3e-3", *FAST, *extra]
    )  # fmt: skip


def metrics(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(checkpoint / "model.safetensors"))


def test_sft_makes_a_chat_run(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert finetune(work, "chat", steps=20) == 0
    out = capsys.readouterr().out
    run = work / "runs" / "chat"
    # A base without a template learns ChatML, and the run says so for chat and generate.
    assert (run / "chat_template.jinja").read_text() == CHATML_TEMPLATE
    assert json.loads((run / "token_roles.json").read_text()) == {"eos": "<|im_end|>"}
    assert (run / "loss.png").is_file()
    records = metrics(run)
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(vals) == 4 and vals[-1] < vals[0]
    results = json.loads((run / "finetune.json").read_text())
    loss = results["assistant_token_loss"]
    assert loss["tuned"] < loss["base"]  # 20 steps take the loss well under an untrained one
    assert math.isclose(loss["tuned"], vals[-1], rel_tol=1e-6)
    replies = results["replies"]
    assert replies["base"]["replies"] == replies["tuned"]["replies"] == 10  # 10% held out
    assert replies["base"]["end_of_turn_rate"] == 0.0  # an untrained model does not stop
    assert "held-out assistant-token loss" in out and "done: 20 steps" in out
    saved = read_run(run)
    assert (saved.task, saved.data, saved.train.max_steps) == ("sft", str(work / "sums.jsonl"), 20)
    # The run is a run like any other: chat reads its template, weights and roles.
    lm = load_for_inference(run)
    assert lm.chat_template == CHATML_TEMPLATE and lm.token_roles["eos"] == 258


def resumed_from_the_middle(run: Path) -> Path:
    """A copy of a finished 10-step run without its last checkpoint, resumed from step 5."""
    copy = run.with_name(run.name + "-resumed")
    shutil.copytree(run, copy)
    shutil.rmtree(list_checkpoints(copy)[-1])
    assert list_checkpoints(copy)[-1].name == "step_000005"
    assert main(["finetune", "sft", "--resume", str(copy)]) == 0
    return copy


def assert_same_last_weights(a: Path, b: Path) -> None:
    wa, wb = weights(list_checkpoints(a)[-1]), weights(list_checkpoints(b)[-1])
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=0)


def test_resume_is_exact(work: Path) -> None:
    assert finetune(work, "straight", "--train.checkpoint_interval", "5", steps=10) == 0
    run = work / "runs" / "straight"
    assert_same_last_weights(run, resumed_from_the_middle(run))


def test_a_lora_run_saves_merged_weights_and_the_adapter(work: Path) -> None:
    extra = ["--lora.r", "4", "--lora.targets", "q,v,up", "--train.checkpoint_interval", "3"]
    assert finetune(work, "lora", *extra, steps=6) == 0
    run = work / "runs" / "lora"
    # Every parameter but the adapters stayed frozen ...
    base = load_for_inference(work / "base").model.state_dict()
    tuned = load_for_inference(run).model.state_dict()
    changed = {name for name in base if not torch.equal(base[name], tuned[name])}
    assert changed and all(".attn.c_attn." in n or ".mlp.c_fc." in n for n in changed)
    # ... and the checkpoint's merged weights are the base plus the saved adapter.
    model = load_for_inference(work / "base").model
    load_lora(model, run / "adapter", merge=True)
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        expected, _ = model(x)
        got, _ = load_for_inference(run).model(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_a_lora_run_resumes_exactly(work: Path) -> None:
    extra = ["--lora.r", "4", "--train.checkpoint_interval", "5"]
    assert finetune(work, "lora-straight", *extra, steps=10) == 0
    run = work / "runs" / "lora-straight"
    assert_same_last_weights(run, resumed_from_the_middle(run))


def test_train_on_all_trains_on_the_prompt_too(work: Path) -> None:
    assert finetune(work, "all-tokens", "--sft.train_on_all", "true", steps=5) == 0
    results = json.loads((work / "runs" / "all-tokens" / "finetune.json").read_text())
    # The held-out loss stays the assistant-token loss, so it is comparable across runs.
    assert results["assistant_token_loss"]["base"] == pytest.approx(
        json.loads((work / "runs" / "chat" / "finetune.json").read_text())["assistant_token_loss"][
            "base"
        ]
    )


def test_recipe_table_and_base_from_the_pretraining_run(tmp_path: Path) -> None:
    recipe = tmp_path / "chat.toml"
    recipe.write_text(
        'name = "chat-base"\nout_dir = "somewhere"\n[model]\nn_layer = 2\n'
        '[finetune]\nname = "chat"\ndata = "chitchat"\n[finetune.train]\nmax_steps = 7\n'
        "[finetune.lora]\nr = 2\n",
        encoding="utf-8",
    )
    run = read_recipe(recipe)
    assert (run.base, run.name, run.train.max_steps, run.lora.r) == (
        str(Path("somewhere") / "chat-base"), "chat", 7, 2,
    )  # fmt: skip
    # `scratchlm train` reads the same file and leaves [finetune] to this command.
    from scratchlm.config import load_config

    assert load_config(recipe).model.n_layer == 2


def test_config_round_trip(tmp_path: Path) -> None:
    run = FinetuneRun(name="x", out_dir=str(tmp_path), base="b", data="d")
    run.lora.r, run.sft.batching, run.train.max_steps = 3, "pad", 9
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.toml").write_text(run.to_toml(), encoding="utf-8")
    again = read_run(tmp_path / "x")
    assert (again.lora.r, again.sft.batching, again.train.max_steps) == (3, "pad", 9)


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ('{"messages": [{"role": "user", "content": "hi"}]}', [],
         "no assistant"),
        ('{"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}]}',
         [], "user"),
        (None, ["--lora.r", "2", "--lora.targets", "nothing"], "matches no layer"),
        (None, ["--base", "no/such/run"], "no such run directory"),
        (None, ["--train.parallel", "ddp"], "one process"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(
    work: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str | None,
    args: list[str],
    message: str,
) -> None:
    data = work / "sums.jsonl"
    if content is not None:
        data = tmp_path / "bad.jsonl"
        data.write_text(content + "\n", encoding="utf-8")
    argv = ["finetune", "sft", "--base", str(work / "base"), "--data", str(data),
            "--name", "bad", "--out_dir", str(tmp_path / "runs"), *args]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    # Progress lines may come first; the mistake is one line, and no traceback.
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("error:") and message in err.splitlines()[-1]
    assert not (tmp_path / "runs" / "bad").exists()  # nothing half-made is left


def test_resume_refuses_other_data(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = work / "runs" / "chat"
    assert main(["finetune", "sft", "--resume", str(run), "--data", "x.jsonl"]) == 2
    assert "cannot change when resuming" in capsys.readouterr().err
    assert main(["finetune", "dpo", "--resume", str(run)]) == 2
    assert "is a sft run" in capsys.readouterr().err


def test_check_replies_counts_ended_and_exact_replies(tmp_path: Path) -> None:
    """A scripted model that always says "Hi!" and ends its turn: every reply ends, and
    exactly the conversations whose held-out reply is "Hi!" match."""
    lm = load_for_inference(save_chat_run(tmp_path / "hi", SAYS_HI, block_size=64))
    chats = [
        [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "Hi!"}],
        [{"role": "user", "content": "hey"}, {"role": "assistant", "content": " Hi! \n"}],
        [{"role": "user", "content": "yo"}, {"role": "assistant", "content": "Hello"}],
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
        ],
    ]
    check = check_replies(lm, chats, reply_tokens=8)
    assert (check.replies, check.ended, check.exact) == (4, 4, 2)
    assert check.examples[0] == {"user": "hello", "reference": "Hi!", "reply": "Hi!"}


def test_skill_sets_are_seeded_and_correct() -> None:
    from scratchlm.finetune.skill_sets import addition, dates

    sums = addition(50)
    assert sums == addition(50) and len({s[0]["content"] for s in sums}) == 50
    for user, assistant in sums:
        a, b = user["content"].removeprefix("What is ").removesuffix("?").split(" + ")
        assert int(assistant["content"]) == int(a) + int(b) and 10 <= int(a) <= 99
    user, assistant = dates(1)[0]
    iso = user["content"].split()[1]
    year, month, day = (int(x) for x in iso.split("-"))
    assert assistant["content"].split() == [str(day), MONTHS[month - 1], str(year)]


MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]  # fmt: skip


def test_a_lora_run_exports_to_hf_and_peft(work: Path, tmp_path: Path) -> None:
    """A Llama-shaped base, LoRA-tuned: the run's merged HF export and peft's adapter on the
    base's HF export give the same logits."""
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from test_lora import BASE, SHAPES

    tokenizer = BPETokenizer(special_tokens=CHAT_SPECIALS)
    torch.manual_seed(0)
    model = GPT(ModelConfig(**{**BASE, **SHAPES["llama-gqa"], "vocab_size": 259, "block_size": 64}))
    save_imported_run(tmp_path / "llama", model, tokenizer, source="test")
    argv = ["finetune", "sft", "--base", str(tmp_path / "llama"), "--data", str(work / "sums.jsonl"),
            "--name", "llama-lora", "--out_dir", str(tmp_path), "--lora.r", "2",
            "--lora.targets", "q,v,down", "--train.max_steps", "4", "--train.learning_rate", "3e-2",
            "--sft.held_out_replies", "2", *FAST]  # fmt: skip
    assert main(argv) == 0
    run = tmp_path / "llama-lora"
    for args in (["export", str(tmp_path / "llama"), "--format", "hf", "--out", "base-hf"],
                 ["export", str(run), "--format", "hf", "--out", "tuned-hf"],
                 ["export", str(run), "--format", "peft", "--out", "peft"]):  # fmt: skip
        assert main([*args[:-1], str(tmp_path / args[-1])]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base-hf").eval()
    tuned = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "tuned-hf").eval()
    x = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        before = hf(x).logits
        adapted = peft.PeftModel.from_pretrained(hf, tmp_path / "peft").eval()(x).logits
        merged = tuned(x).logits
    assert not torch.allclose(before, merged, atol=1e-4)  # training moved the adapters
    torch.testing.assert_close(adapted, merged, rtol=0, atol=1e-5)
