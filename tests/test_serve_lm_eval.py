"""lm-eval's `local-completions` against a live `scratchlm serve` scores a multiple-choice task
as our adapter does in-process: the same accuracy, and each choice's log-likelihood to 1e-4.

local-completions scores a choice by sending context + choice as token ids to
/v1/completions with echo, logprobs and max_tokens 1, and summing the prompt tokens' logprobs
after the context; so this checks the server's echo logprobs end to end, through lm-eval's own
request building and metrics. The model is a tiny trained run (its choices are not ties, as a
random model's nearly are), its tokenizer exported in Hugging Face's format for lm-eval to
load offline."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")
pytest.importorskip("tenacity", reason="lm-eval's API models need it (lm_eval[api])")

from live_server import live_server  # noqa: E402
from scratchlm.runs.hf import export_hf_run  # noqa: E402
from tiny_runs import train_tiny_run  # noqa: E402

TASK = "serve_mc"
# Short enough that context + choice fits the tiny run's 32-token context with a token to
# spare (max_tokens 1), so neither side truncates. About Python: the run read its docs.
QUESTIONS = [
    ("The keyword to define a function is", ["def", "fun", "lambda"], 0),
    ("Lists use", ["square brackets", "braces"], 0),
    ("To leave a loop early, use", ["break", "continue", "pass"], 0),
    ("Exceptions are caught with", ["except", "catch"], 0),
    ("A dict maps keys to", ["values", "loops", "files"], 0),
    ("Strings are", ["immutable", "mutable"], 0),
    ("None is a", ["singleton", "number", "module", "keyword"], 0),
    ("import loads a", ["module", "variable"], 0),
]


@pytest.fixture(scope="module")
def offline() -> Any:
    """No hub: lm-eval and transformers load the task and the tokenizer from local files."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        import huggingface_hub.constants

        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny run and its tokenizer as a Hugging Face folder."""
    base = tmp_path_factory.mktemp("serve-lm-eval")
    run = train_tiny_run(base)
    export_hf_run(run, base / "hf")
    return run, base / "hf"


@pytest.fixture(scope="module")
def task_manager(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from lm_eval.tasks import TaskManager

    folder = tmp_path_factory.mktemp("tasks")
    data = folder / "questions.jsonl"
    rows = [{"question": q, "choices": c, "answer": a} for q, c, a in QUESTIONS]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n",
        encoding="utf-8",
    )
    return TaskManager(include_path=str(folder), include_defaults=False)


def evaluate(model: str, model_args: str, task_manager: Any) -> tuple[dict[str, float], list[Any]]:
    """lm-eval's metrics for TASK and, per question, each choice's (loglikelihood, greedy)."""
    results = lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=[TASK],
        task_manager=task_manager,
        log_samples=True,
        bootstrap_iters=0,
    )
    samples = sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
    choices = [[(float(r[0]), str(r[1]) == "True") for r in s["filtered_resps"]] for s in samples]
    return results["results"][TASK], choices


def served_model(url: str) -> str:
    """The model's name as the server lists it (local-completions sends it with each request)."""
    with urllib.request.urlopen(f"{url}/v1/models", timeout=30) as response:
        return str(json.load(response)["data"][0]["id"])


def test_local_completions_scores_as_in_process(
    offline: None, tiny: tuple[Path, Path], task_manager: Any
) -> None:
    run, hf_folder = tiny
    import lm_eval.models  # noqa: F401  (registers lm-eval's own backends: local-completions)

    import scratchlm.eval.lm_eval_adapter  # noqa: F401  (registers lm-eval's "scratchlm" model)

    ours, ours_choices = evaluate("scratchlm", f"run={run},dtype=float32", task_manager)
    with live_server(run, "--dtype", "float32") as url:
        model_args = ",".join([
            f"model={served_model(url)}",
            f"base_url={url}/v1/completions",
            f"tokenizer={hf_folder}",
            "tokenizer_backend=huggingface",
            "tokenized_requests=True",
            "max_length=32",  # the run's context: lm-eval then keeps 31 tokens and asks for 1
            "max_retries=1",
            "timeout=60",
        ])  # fmt: skip
        served, served_choices = evaluate("local-completions", model_args, task_manager)

    assert [len(c) for c in served_choices] == [len(c) for _, c, _ in QUESTIONS]
    for question, mine, theirs in zip(QUESTIONS, ours_choices, served_choices, strict=True):
        assert [ll for ll, _ in theirs] == pytest.approx([ll for ll, _ in mine], abs=1e-4), question
        assert [g for _, g in theirs] == [g for _, g in mine], question
    assert served["acc,none"] == ours["acc,none"]
    assert served["acc_norm,none"] == ours["acc_norm,none"]
    # The check means something: the trained model prefers some choices clearly.
    spreads = [max(ll for ll, _ in c) - min(ll for ll, _ in c) for c in ours_choices]
    assert min(spreads) > 1e-2, spreads
