"""scratchlm inside EleutherAI's lm-evaluation-harness (the optional extra `lm-eval`).

`ScratchLM` is an `lm_eval.api.model.LM` registered as "scratchlm", so every lm-eval task runs
on a scratchlm run or a pretrained model's name:

    scratchlm-lm-eval --model scratchlm \\
        --model_args run=runs/tiny,dtype=float32 --tasks hellaswag --include_path my_tasks/

(lm-eval finds models only in its own table, so the plain `lm_eval` command does not know
"scratchlm"; `scratchlm-lm-eval` (or `python -m scratchlm.eval.lm_eval_adapter`) is lm-eval's
command, with the model registered first. From Python,
importing this module is enough: `lm_eval.simple_evaluate(model="scratchlm", ...)`.)

The three request types go through the same code as our own harness:
- loglikelihood: scratchlm.eval.scoring (lm-eval's tokenisation of (context, continuation),
  batched, sorted by length), so a task scores the same through lm-eval and through ours.
- loglikelihood_rolling: scratchlm.eval.rolling, whose windows at stride = block_size are
  lm-eval's own (get_rolling_token_windows with one token of context; tested equal).
- generate_until: LanguageModel.generate, greedy unless the task samples, stopped at the
  request's `until` strings or an end-of-text token, at most max_gen_toks tokens.

`evaluate_with_lm_eval` runs lm-eval tasks on a model from Python and returns the table to
print and the record the run keeps.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from scratchlm.core.errors import ScratchLMError
from scratchlm.eval.records import EvaluationRecord
from scratchlm.eval.rolling import rolling_loglikelihoods
from scratchlm.eval.scoring import encode_pair, score_token_pairs
from scratchlm.inference.language_model import LanguageModel, load_for_inference

DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's HF backend's default


@register_model("scratchlm")
class ScratchLM(LM):
    """A scratchlm model as lm-eval sees it. model_args: run (a run directory or a pretrained
    model's name; `pretrained` is accepted too, as lm-eval's hf backend names it), checkpoint,
    device, dtype, batch_size, max_gen_toks."""

    def __init__(
        self,
        run: str | None = None,
        pretrained: str | None = None,
        checkpoint: str | None = None,
        device: str | None = "cpu",
        dtype: str = "auto",
        batch_size: int | str | None = 16,
        max_gen_toks: int | str = DEFAULT_MAX_GEN_TOKS,
        lm: LanguageModel | None = None,
        **unused: Any,
    ) -> None:
        super().__init__()
        # lm-eval passes its own options (max_batch_size, ...) to every model; ours ignores them.
        if lm is None:
            source = run or pretrained
            if not source:
                raise ScratchLMError(
                    "lm-eval's scratchlm model needs a run: --model_args run=RUN (a run "
                    "directory or smollm2-135m-instruct)"
                )
            lm = load_for_inference(
                source,
                checkpoint=Path(checkpoint) if checkpoint else None,
                device=_device(device),
                dtype=dtype,
            )
        self.lm = lm
        self.batch_size = _positive_int(batch_size, "batch_size", default=16)
        self.max_gen_toks = _positive_int(max_gen_toks, "max_gen_toks", DEFAULT_MAX_GEN_TOKS)

    # ------------------------------------------------------------------ log-likelihoods

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        pairs = [encode_pair(self.lm, *request.args) for request in requests]
        scores = score_token_pairs(self.lm, pairs, self.batch_size, desc="loglikelihood")
        return [(score.logprob, score.greedy) for score in scores]

    def loglikelihood_rolling(self, requests: list[Instance]) -> list[float]:
        # lm-eval's own windows (stride = the context), every window of every text in one pass.
        texts = [request.args[0] for request in requests]
        totals = rolling_loglikelihoods(self.lm, texts, batch_size=self.batch_size, desc="rolling")
        return [logprob for logprob, _ in totals]

    # ------------------------------------------------------------------------ generation

    def generate_until(self, requests: list[Instance]) -> list[str]:
        # Requests with the same generation settings go to the engine as one batch.
        groups: dict[str, list[int]] = {}
        settings: list[tuple[list[str], int, float]] = []
        for i, request in enumerate(requests):
            _, gen_kwargs = request.args
            setting = self._generation_settings(gen_kwargs)
            settings.append(setting)
            groups.setdefault(repr(setting), []).append(i)
        outputs = [""] * len(requests)
        for indices in groups.values():
            until, max_tokens, temperature = settings[indices[0]]
            sampling = self.lm.sampling(max_new_tokens=max_tokens, temperature=temperature)
            room = max(1, self.lm.block_size - max_tokens)  # the context's oldest tokens go
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                prompts = [self.lm.encode(requests[i].args[0])[-room:] for i in batch]
                done = self.lm.generate(prompts, sampling, stop=until)
                for i, completion in zip(batch, done, strict=True):
                    outputs[i] = completion.text
        return outputs

    def _generation_settings(self, gen_kwargs: dict[str, Any]) -> tuple[list[str], int, float]:
        """(until strings, max new tokens, temperature) of one request, as lm-eval's HF backend
        reads them: `until` a string or a list, greedy unless do_sample."""
        kwargs = dict(gen_kwargs or {})
        until = kwargs.pop("until", None) or []
        if isinstance(until, str):
            until = [until]
        max_tokens = _positive_int(
            kwargs.pop("max_gen_toks", None), "max_gen_toks", self.max_gen_toks
        )
        temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
        if not kwargs.pop("do_sample", False):
            temperature = 0.0
        return [u for u in until if u], max_tokens, temperature

    # ------------------------------------------------------------------------ chat models

    @property
    def tokenizer_name(self) -> str:
        return str(self.lm.run_dir or "scratchlm")

    def chat_template(self, chat_template: bool | str = False) -> str:
        return self.lm.chat_template or ""

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """The conversation rendered with the run's chat template, as text (lm-eval encodes it
        again; the template's special tokens are typed as text and stay text)."""
        ids = self.lm.encode_chat(chat_history, add_generation_prompt)
        return self.lm.tokenizer.decode(ids)


def _device(name: str | None) -> str:
    """lm-eval's command line asks for cuda:0 unless told otherwise; like its hf backend, a
    machine without CUDA runs on the CPU instead."""
    if not name or (name.startswith("cuda") and not torch.cuda.is_available()):
        return "cpu"
    return name


def _positive_int(value: int | str | None, name: str, default: int) -> int:
    """lm-eval hands model_args as strings (and batch_size may be "auto": our default)."""
    if value is None or value == "auto":
        return default
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ScratchLMError(
            f"lm-eval model_args {name} must be a whole number >= 1, got {value!r}"
        )
    return number


# ---------------------------------------------------------------------- the entry point


@dataclass
class LmEvalResult:
    """lm-eval's metrics for each task: {task: {metric: value}} (standard errors included)."""

    model: str
    tasks: list[str]
    metrics: dict[str, dict[str, float]]
    samples: dict[str, int] = field(default_factory=dict)  # documents evaluated per task

    def lines(self) -> list[str]:
        rows = [("task", "metric", "value", "stderr", "n")]
        for task, values in self.metrics.items():
            for metric, value in values.items():
                if metric.endswith("_stderr"):
                    continue
                stderr = values.get(f"{metric}_stderr")
                rows.append(
                    (
                        task,
                        metric,
                        f"{value:.4f}",
                        f"{stderr:.4f}" if isinstance(stderr, float) else "",
                        str(self.samples.get(task, "")),
                    )
                )
        widths = [max(len(row[c]) for row in rows) for c in range(5)]
        return [
            "  ".join(
                cell.ljust(w) if c < 2 else cell.rjust(w)
                for c, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
            for row in rows
        ]

    def record(self) -> EvaluationRecord:
        metrics: dict[str, Any] = {
            f"{task}/{metric}": value
            for task, values in self.metrics.items()
            for metric, value in values.items()
        }
        metrics.update({f"{task}/n": n for task, n in self.samples.items()})
        return EvaluationRecord(kind="lm-eval", task=",".join(self.tasks), metrics=metrics)


def evaluate_with_lm_eval(
    source: str | Path,
    tasks: Sequence[str],
    include_path: str | Path | None = None,
    num_fewshot: int | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    checkpoint: Path | None = None,
    device: str = "cpu",
    dtype: str = "auto",
    apply_chat_template: bool = False,
    seed: int = 0,
) -> LmEvalResult:
    """Run lm-eval `tasks` (its own names, or tasks in YAML files under `include_path`) on a
    run or pretrained model; the metrics lm-eval reports."""
    import lm_eval

    if not tasks:
        raise ScratchLMError("name at least one lm-eval task (e.g. --tasks hellaswag)")
    manager = _task_manager(list(tasks), include_path)
    lm = load_for_inference(source, checkpoint, device, dtype)
    model = ScratchLM(lm=lm, batch_size=batch_size)
    results = lm_eval.simple_evaluate(
        model=model,
        tasks=list(tasks),
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager,
        apply_chat_template=apply_chat_template,
        log_samples=False,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    if results is None:  # only on ranks other than 0, which we never are
        raise ScratchLMError("lm-eval returned no results")
    metrics: dict[str, dict[str, float]] = {}
    for task, values in results["results"].items():
        # lm-eval's keys are "metric,filter" ("acc,none"); the filter is dropped when "none".
        metrics[task] = {}
        for key, value in values.items():
            if "," not in key or not isinstance(value, int | float):
                continue
            metric, filter_name = key.split(",", 1)
            name = metric if filter_name == "none" else f"{metric}/{filter_name}"
            metrics[task][name] = float(value)
    samples = {
        task: int(counts.get("effective", counts.get("original", 0)))
        for task, counts in results.get("n-samples", {}).items()
    }
    return LmEvalResult(str(source), list(tasks), metrics, samples)


def _task_manager(tasks: list[str], include_path: str | Path | None) -> Any:
    """lm-eval's task index: the user's folder alone when it holds every task named (indexing
    lm-eval's thousands of built-in tasks takes half a minute), else with the built-in ones."""
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        if not Path(include_path).exists():
            raise ScratchLMError(f"lm-eval task folder {include_path} does not exist")
        own = TaskManager(include_path=str(include_path), include_defaults=False)
        if len(own.match_tasks(tasks)) == len(tasks):
            return own
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for t in tasks if not manager.match_tasks([t])]
    if unknown:
        raise ScratchLMError(
            f"lm-eval has no task {', '.join(unknown)}; name a task it lists (`lm_eval ls "
            "tasks`) or a YAML task's `task:` in the folder given with --include-path"
        )
    return manager


def main(argv: Sequence[str] | None = None) -> None:
    """lm-eval's own command line (`lm_eval ...`) with the scratchlm model registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
