"""The lm-evaluation-harness adapter (scratchlm.eval.lm_eval_adapter): lm-eval tasks run on a
scratchlm model and score exactly what our own scoring scores; its three request types
checked by hand on a tiny model; SmolLM2's per-choice log-likelihoods against transformers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from scratchlm.core.errors import ScratchLMError
from scratchlm.eval.scoring import score_continuations
from scratchlm.inference.language_model import LanguageModel, load_for_inference
from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig
from scratchlm.runs.imported import save_imported_run
from scratchlm.tokenizer import BPETokenizer

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402

from scratchlm.eval.lm_eval_adapter import ScratchLM, evaluate_with_lm_eval  # noqa: E402

EOT = 256
BLOCK = 48
QUESTIONS = [
    ("The sun rises in the", ["east", "west", "sea"], 0),
    ("Two plus two is", ["four", "five"], 0),
    ("Cats say", ["woof", "meow", "moo", "baa"], 1),
    ("Water is", ["wet", "dry"], 0),
    ("A week has seven", ["days", "cows", "hours"], 0),
    ("The opposite of up is", ["down", "left"], 0),
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random byte-level model: its choices differ by chance, which is all equality
    checks need."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=257, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32)
    tokenizer = BPETokenizer(special_tokens={"<|endoftext|>": EOT})
    run = tmp_path_factory.mktemp("runs") / "tiny"
    save_imported_run(run, GPT(config), tokenizer, source="test", token_roles={"eos": EOT})
    return run


@pytest.fixture(scope="module")
def lm(run_dir: Path) -> LanguageModel:
    return load_for_inference(run_dir, dtype="float32")


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An offline lm-eval task: local JSONL data through `dataset_path: json`."""
    folder = tmp_path_factory.mktemp("tasks")
    data = folder / "questions.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS
        ),
        encoding="utf-8",
    )
    (folder / "tiny_mc.yaml").write_text(
        "task: tiny_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: answer\n"
        "metric_list:\n"
        "  - metric: acc\n"
        "  - metric: acc_norm\n",
        encoding="utf-8",
    )
    return folder


def request(*args: Any) -> Instance:
    return Instance(request_type="loglikelihood", doc={}, arguments=args, idx=0)


def our_accuracies(lm: LanguageModel) -> tuple[float, float, list[list[float]]]:
    """acc and acc_norm (per character of the choice, as lm-eval) from our own scoring."""
    pairs = [(q, " " + choice) for q, choices, _ in QUESTIONS for choice in choices]
    scores = iter(score_continuations(lm, pairs, batch_size=4))
    acc = acc_norm = 0
    logprobs = []
    for _, choices, answer in QUESTIONS:
        lls = [next(scores).logprob for _ in choices]
        logprobs.append(lls)
        normed = [ll / len(choice) for ll, choice in zip(lls, choices, strict=True)]
        acc += max(range(len(lls)), key=lls.__getitem__) == answer
        acc_norm += max(range(len(lls)), key=normed.__getitem__) == answer
    return acc / len(QUESTIONS), acc_norm / len(QUESTIONS), logprobs


def test_lm_eval_task_scores_what_our_scoring_scores(
    run_dir: Path, lm: LanguageModel, task_dir: Path
) -> None:
    """Through lm-eval's registry and model_args, as its command line does."""
    from lm_eval.tasks import TaskManager

    results = lm_eval.simple_evaluate(
        model="scratchlm",
        model_args=f"run={run_dir},dtype=float32,batch_size=3",
        tasks=["tiny_mc"],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        log_samples=True,
        bootstrap_iters=0,
    )
    acc, acc_norm, logprobs = our_accuracies(lm)
    assert results["results"]["tiny_mc"]["acc,none"] == acc
    assert results["results"]["tiny_mc"]["acc_norm,none"] == acc_norm
    samples = sorted(results["samples"]["tiny_mc"], key=lambda s: s["doc_id"])
    theirs = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    assert theirs == logprobs  # bit for bit: the same computation
    assert 0 < acc < 1 or 0 < acc_norm < 1 or len(set(map(tuple, logprobs))) == len(QUESTIONS)


def test_entry_point_table_and_record(run_dir: Path, lm: LanguageModel, task_dir: Path) -> None:
    result = evaluate_with_lm_eval(run_dir, ["tiny_mc"], include_path=task_dir, dtype="float32")
    acc, acc_norm, _ = our_accuracies(lm)
    assert result.metrics["tiny_mc"]["acc"] == acc
    assert result.metrics["tiny_mc"]["acc_norm"] == acc_norm
    assert result.samples == {"tiny_mc": len(QUESTIONS)}
    lines = result.lines()
    assert lines[0].split() == ["task", "metric", "value", "stderr", "n"]
    assert lines[1].split()[:3] == ["tiny_mc", "acc", f"{acc:.4f}"]
    assert lines[1].split()[-1] == str(len(QUESTIONS))
    record = result.record()
    assert (record.kind, record.task) == ("lm-eval", "tiny_mc")
    assert record.metrics["tiny_mc/acc"] == acc and record.metrics["tiny_mc/n"] == 6
    assert "tiny_mc/acc_stderr" in record.metrics


@pytest.mark.slow  # lm-eval's command indexes its thousands of built-in tasks: 30-50 s
def test_command_line_runs_offline(run_dir: Path, task_dir: Path, tmp_path: Path) -> None:
    """`python -m scratchlm.eval.lm_eval_adapter` is lm-eval's command with our model."""
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [
            sys.executable, "-m", "scratchlm.eval.lm_eval_adapter",
            "--model", "scratchlm", "--model_args", f"run={run_dir},dtype=float32",
            "--tasks", "tiny_mc", "--include_path", str(task_dir), "--limit", "2",
        ],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tiny_mc" in done.stdout and "acc_norm" in done.stdout


def test_loglikelihood_is_the_sum_of_token_logprobs(lm: LanguageModel) -> None:
    adapter = ScratchLM(lm=lm)
    [(logprob, greedy)] = adapter.loglikelihood([request("Cats say", " meow")])
    assert logprob == pytest.approx(sum(lm.score("Cats say", " meow")), abs=1e-5)
    # An empty context is scored after the end-of-text token, as lm-eval does.
    [(empty, _)] = adapter.loglikelihood([request("", "meow")])
    assert empty == pytest.approx(sum(lm.score([EOT], "meow")), abs=1e-5)
    # greedy: True exactly when each token is the argmax; a one-token greedy continuation.
    with torch.no_grad():
        best = int(lm.model(torch.tensor([lm.encode("Cats say")]))[0][0, -1].argmax())
    [(_, is_greedy)] = adapter.loglikelihood([request("Cats say", lm.tokenizer.decode([best]))])
    assert is_greedy and isinstance(greedy, bool)


def test_rolling_loglikelihood_windows_checked_by_hand(lm: LanguageModel) -> None:
    adapter = ScratchLM(lm=lm, batch_size=2)
    rolling = Instance(request_type="loglikelihood_rolling", doc={}, arguments=None, idx=0)

    def logprobs_of(inputs: list[int], targets: list[int]) -> list[float]:
        """log p of each target after the inputs (one forward pass, last len(targets))."""
        with torch.no_grad():
            logits = lm.model(torch.tensor([inputs]))[0][0].float()
        chosen = torch.log_softmax(logits, -1)[-len(targets) :].gather(
            1, torch.tensor(targets)[:, None]
        )
        return chosen.squeeze(1).tolist()

    # Text that fits: one window, the whole text after the end-of-text token.
    short = "To be or not to be"
    rolling.arguments = (short,)
    [value] = adapter.loglikelihood_rolling([rolling])
    t = lm.encode(short)
    assert value == pytest.approx(sum(logprobs_of([EOT, *t[:-1]], t)), abs=1e-4)
    # 100 tokens in a 48-token context: tokens 0-47 after [EOT, t0..t46]; 48-95 after t47..t94;
    # the last 4 (96-99) after the 48 tokens before each, t51..t98 (lm-eval's windows).
    long = "".join(chr(ord("a") + i % 26) for i in range(100))
    rolling.arguments = (long,)
    t = lm.encode(long)
    assert len(t) == 100
    expected = (
        sum(logprobs_of([EOT, *t[:47]], t[:48]))
        + sum(logprobs_of(t[47:95], t[48:96]))
        + sum(logprobs_of(t[51:99], t[96:100]))
    )
    [value] = adapter.loglikelihood_rolling([rolling])
    assert value == pytest.approx(expected, abs=1e-4)


def test_generate_until_stops_at_until_and_max_gen_toks(lm: LanguageModel) -> None:
    adapter = ScratchLM(lm=lm, batch_size=2)
    prompts = ["Once upon", "The cat", "Hello"]
    free = lm.generate(prompts, lm.sampling(max_new_tokens=12, temperature=0.0))
    # A stop string: the second character each greedy completion wrote.
    until = [c.text[1] for c in free]
    requests = [
        Instance(
            request_type="generate_until",
            doc={},
            arguments=(p, {"until": [u], "max_gen_toks": 12, "do_sample": False}),
            idx=0,
        )
        for p, u in zip(prompts, until, strict=True)
    ]
    out = adapter.generate_until(requests)
    assert out == [c.text[: c.text.index(u)] for c, u in zip(free, until, strict=True)]
    # max_gen_toks alone (a byte model: one character per token, unless it ends early).
    requests = [
        Instance(request_type="generate_until", doc={}, idx=0,
                 arguments=(p, {"until": [], "max_gen_toks": 5}))
        for p in prompts
    ]  # fmt: skip
    out = adapter.generate_until(requests)
    assert out == [c.text[:5] for c in free]


def test_bad_model_args_are_one_clear_error(lm: LanguageModel, tmp_path: Path) -> None:
    with pytest.raises(ScratchLMError, match="needs a run"):
        ScratchLM()
    with pytest.raises(ScratchLMError, match="batch_size must be a whole number"):
        ScratchLM(lm=lm, batch_size="many")
    with pytest.raises(ScratchLMError, match="does not exist"):
        evaluate_with_lm_eval("unused", ["tiny_mc"], include_path=tmp_path / "missing")
    with pytest.raises(ScratchLMError, match="at least one"):
        evaluate_with_lm_eval("unused", [])


@pytest.mark.slow  # an unknown task is looked for among lm-eval's own: ~30 s of indexing
def test_an_unknown_task_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ScratchLMError, match="no task nope"):
        evaluate_with_lm_eval("unused", ["nope"], include_path=tmp_path)


# ------------------------------------------------------------------ SmolLM2 vs transformers


@pytest.mark.slow  # SmolLM2 loaded twice (ours and transformers'), ~30 s on 2 cores
def test_smollm2_choice_logprobs_equal_transformers(tmp_path: Path) -> None:
    """Per-choice log-likelihoods through the adapter against transformers' LlamaForCausalLM
    on the same weights (our run exported as a Hugging Face folder), float32, to 1e-4."""
    transformers = pytest.importorskip("transformers")
    from scratchlm.inference.language_model import run_directory
    from scratchlm.runs.hf import export_hf_run

    run = run_directory("smollm2-135m-instruct")
    export_hf_run(run, tmp_path / "hf")
    transformers.logging.set_verbosity_error()
    hf = transformers.LlamaForCausalLM.from_pretrained(
        tmp_path / "hf", torch_dtype=torch.float32
    ).eval()
    adapter = ScratchLM(run="smollm2-135m-instruct", dtype="float32", batch_size=4)
    pairs = [(q, " " + c) for q, choices, _ in QUESTIONS for c in choices]
    ours = adapter.loglikelihood([request(*pair) for pair in pairs])
    from scratchlm.eval.scoring import encode_pair

    for (context, continuation), (logprob, greedy) in zip(pairs, ours, strict=True):
        ctx, cont = encode_pair(adapter.lm, context, continuation)
        with torch.no_grad():
            logits = hf(torch.tensor([ctx + cont[:-1]])).logits[0, -len(cont) :].float()
        logprobs = torch.log_softmax(logits, -1).gather(1, torch.tensor(cont)[:, None])
        assert logprob == pytest.approx(float(logprobs.sum()), abs=1e-4), (context, continuation)
        assert greedy == bool((logits.argmax(-1) == torch.tensor(cont)).all())
    assert all(math.isfinite(ll) and ll < 0 for ll, _ in ours)
