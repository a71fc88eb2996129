"""The multiple-choice harness (eval/multiple_choice.py): accuracies, standard errors, k-shot
prompts, chat templates and the default suite, on a rigged model whose log-probabilities are
known exactly: a GPT that is a lookup table of each byte's successor."""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path

import pytest
import torch

from scratchlm.core.errors import ScratchLMError
from scratchlm.eval.default_suite import (
    CHANCE,
    CHOICES,
    LENGTH_RATIO,
    Source,
    build_questions,
)
from scratchlm.eval.multiple_choice import (
    MultipleChoiceResult,
    evaluate_multiple_choice,
    judge,
    mean_stderr,
    score_tasks,
)
from scratchlm.eval.records import read_evaluations, record_evaluation
from scratchlm.eval.tasks import Task, fewshot_examples, load_tasks, prompt_text
from scratchlm.eval.tasks.task import make_item
from scratchlm.finetune.conversations import CHATML_TEMPLATE as CHATML
from scratchlm.inference.language_model import LanguageModel
from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig
from scratchlm.tokenizer import BPETokenizer

SPECIALS = {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258}
VOCAB = 259
CERTAIN = 100.0  # the successor's logit per unit of normalised hidden state: log p rounds to 0


def successor_model(successors: dict[str, str]) -> LanguageModel:
    """A GPT whose next byte is `successors[this byte]` with probability 1 (to float precision),
    and the byte itself for any other byte: every block's output projection is zero, so the
    final hidden state is the token's one-hot embedding, and the head maps it to its successor.
    log p of a continuation is 0 when each byte follows the last by the table, else about -1,600
    per byte that does not."""
    config = ModelConfig(
        vocab_size=VOCAB, block_size=96, n_layer=1, n_head=2, n_embd=264, norm="rmsnorm",
        bias=False, tie_embeddings=False, pos_encoding="rope", mlp="gelu",
    )  # fmt: skip
    model = GPT(config)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.c_proj.weight.zero_()
            block.mlp.c_proj.weight.zero_()
        model.transformer["wte"].weight.zero_()
        model.transformer["wte"].weight[:, :VOCAB] = torch.eye(VOCAB)
        head = torch.zeros(VOCAB, config.n_embd)
        for token in range(VOCAB):
            head[token, token] = CERTAIN
        for before, after in successors.items():
            (b,), (a,) = before.encode(), after.encode()
            head[b, b] = 0.0
            head[a, b] = CERTAIN
        model.lm_head.weight.copy_(head)
    model.eval()
    tokenizer = BPETokenizer(special_tokens=SPECIALS)  # no merges: one token per byte
    return LanguageModel(model=model, tokenizer=tokenizer, token_roles={"eos": 256})


# "Q" is followed by " yes" with certainty: Q -> space -> y -> e -> s.
YES = {"Q": " ", " ": "y", "y": "e", "e": "s"}


def write_jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_a_certain_answer_scores_log_p_zero_and_acc_one(tmp_path: Path) -> None:
    lm = successor_model(YES)
    task = write_jsonl(
        tmp_path / "certain.jsonl",
        [
            {"question": "Q", "choices": ["no", "yes"], "answer": 1},
            {"question": "Q", "choices": ["yes", "no"], "answer": 0},
        ],
    )
    result = evaluate_multiple_choice(lm, task, batch_size=3)
    [only] = result.results
    assert [s.logprobs[s.prediction] for s in only.items] == [0.0, 0.0]
    assert all(s.logprobs[1 - s.prediction] < -1000 for s in only.items)
    assert (only.scores.acc, only.scores.acc_norm, only.scores.n) == (1.0, 1.0, 2)
    assert (only.scores.acc_stderr, only.scores.chance) == (0.0, 0.5)


def test_acc_and_acc_norm_differ_on_a_hand_case() -> None:
    item = make_item("q", ["a", "bbbb"], [1], "hand")
    # Summed: -2 beats -4; per character: -4 / 4 = -1 beats -2 / 1.
    score = judge(item, [-2.0, -4.0])
    assert (score.prediction, score.prediction_norm) == (0, 1)
    assert (score.correct, score.correct_norm) == (False, True)
    # A tie goes to the first choice, as numpy's argmax.
    assert judge(item, [-4.0, -4.0]).prediction == 0


def test_acc_norm_counts_characters_and_acc_bytes_bytes() -> None:
    # "ü" is one character of two bytes. Per character: -3 / 1 = -3 loses to -4 / 2 = -2;
    # per byte: -3 / 2 = -1.5 beats -4 / 2 = -2 (lm-eval's acc_norm and acc_bytes).
    item = make_item("q", ["ü", "ab"], [0], "hand")
    score = judge(item, [-3.0, -4.0])
    assert (score.prediction, score.prediction_norm, score.prediction_bytes) == (0, 1, 0)
    assert (score.correct, score.correct_norm, score.correct_bytes) == (True, False, True)


def test_acc_and_acc_norm_differ_through_a_model(tmp_path: Path) -> None:
    # Every byte but "Q" and " " is its own successor. After "Q ", "ab" misses the table once
    # (a -> b): about 1,600 nats over 2 characters; "aaaaaabbbbbbcccccc" twice (a -> b, b -> c):
    # more in all, but less per character.
    lm = successor_model({"Q": " ", " ": "a"})
    task = write_jsonl(
        tmp_path / "norm.jsonl",
        [{"question": "Q", "choices": ["ab", "aaaaaabbbbbbcccccc"], "answer": 1}],
    )
    [result] = evaluate_multiple_choice(lm, task).results
    [score] = result.items
    short, long = score.logprobs
    assert short > long and short / 2 < long / 18
    assert (result.scores.acc, result.scores.acc_norm) == (0.0, 1.0)


def test_standard_error_by_hand() -> None:
    # mean 0.75; sample variance (3 x 0.0625 + 0.5625) / 3 = 0.25; stderr sqrt(0.25 / 4).
    assert mean_stderr([1.0, 0.0, 1.0, 1.0]) == 0.25
    assert mean_stderr([1.0, 1.0]) == 0.0
    assert math.isnan(mean_stderr([1.0]))


def test_table_and_record(tmp_path: Path) -> None:
    lm = successor_model(YES)
    records = [
        {"question": "Q", "choices": ["yes", "no"], "answer": 0},
        {"question": "Q", "choices": ["no", "yes"], "answer": 0},
        {"question": "Q", "choices": ["a", "b", "yes", "c"], "answer": 2},
        {"question": "Q", "choices": ["yes", "b"], "answer": 0},
    ]
    result = evaluate_multiple_choice(lm, write_jsonl(tmp_path / "t.jsonl", records))
    assert result.lines() == [
        f"multiple choice: {tmp_path / 't.jsonl'} (seed 1234)",
        "task  n    acc      ±  acc_norm      ±  acc_bytes      ±  chance  shots",
        "t     4  0.750  0.250     0.750  0.250      0.750  0.250   0.438      0",
    ]
    record = result.record()
    assert record.kind == "multiple-choice"
    assert record.task == f"{tmp_path / 't.jsonl'} (0-shot)"
    assert record.metrics["acc"] == 0.75 and record.metrics["n"] == 4
    run = tmp_path / "run"
    run.mkdir()
    record_evaluation(run, record)
    assert read_evaluations(run)[0].metrics == record.metrics


# ---------------------------------------------------------------------------------------------
# k-shot prompts
# ---------------------------------------------------------------------------------------------


def plain_task(n: int, pool: int = 0) -> Task:
    items = tuple(make_item(f"q{i}", [f"a{i}", f"b{i}"], [i % 2], f"t:{i}") for i in range(n))
    examples = tuple(make_item(f"e{i}", [f"x{i}", f"y{i}"], [1], f"t:e{i}") for i in range(pool))
    return Task("t", items, fewshot=examples)


def test_k_shot_prompt_text() -> None:
    task = plain_task(3, pool=3)
    examples = fewshot_examples(task, 0, 2, seed=1)
    assert len(examples) == 2 and set(examples) <= set(task.fewshot)
    e1, e2 = examples
    assert prompt_text(task, task.items[0], examples) == (
        f"{e1.query} {e1.choices[1]}\n\n{e2.query} {e2.choices[1]}\n\nq0"
    )
    # Seeded per question: the same seed gives the same examples, another seed others.
    assert fewshot_examples(task, 0, 2, seed=1) == examples
    draws = {tuple(e.query for e in fewshot_examples(task, 0, 2, seed=s)) for s in range(20)}
    assert len(draws) > 1
    # The layout keys: description first, the delimiters between.
    laid_out = Task("t", task.items, description="D\n", target_delimiter=": ",
                    fewshot_delimiter="|")  # fmt: skip
    one = make_item("e", ["no", "yes"], [1], "e")
    assert prompt_text(laid_out, task.items[2], [one]) == "D\ne: yes|q2"


def test_k_shot_examples_never_include_the_question() -> None:
    task = plain_task(5)  # no pool of its own: the other questions
    for index in range(5):
        for seed in range(10):
            examples = fewshot_examples(task, index, 4, seed)
            assert task.items[index] not in examples and len(set(examples)) == 4


def test_k_shot_through_the_harness(tmp_path: Path) -> None:
    # 1-shot with the example "Q yes": the prompt "Q yes\n\nQ" still ends with "Q".
    lm = successor_model(YES)
    path = write_jsonl(
        tmp_path / "k.jsonl",
        [
            {"question": "Q", "choices": ["yes", "no"], "answer": 0, "fewshot": True},
            {"question": "Q", "choices": ["no", "yes"], "answer": 1},
        ],
    )
    [result] = score_tasks(lm, load_tasks(path), shots=1)
    assert result.scores.acc == 1.0 and result.scores.shots == 1


# ---------------------------------------------------------------------------------------------
# Chat models: the prompt as a user's message, the choice as the reply
# ---------------------------------------------------------------------------------------------


def test_chat_scores_the_choice_as_the_assistants_reply(tmp_path: Path) -> None:
    # The template ends "assistant\n": that "\n" starts each scored reply (lm-eval's encode_pair
    # on the rendered template), and no " " comes before the choice (lm-eval drops the target
    # delimiter for chat). The table makes "t" -> "\nyes" certain.
    lm = successor_model({"t": "\n", "\n": "y", "y": "e", "e": "s"})
    lm.chat_template = CHATML
    path = write_jsonl(
        tmp_path / "c.jsonl", [{"question": "Q", "choices": ["no", "yes"], "answer": 1}]
    )
    result = evaluate_multiple_choice(lm, path, chat=True)
    [score] = result.results[0].items
    context = [257, *lm.encode("user\nQ"), 258, *lm.encode("\n"), 257, *lm.encode("assistant")]
    assert score.logprobs == (sum(lm.score(context, "\nno")), 0.0)
    assert result.results[0].scores.acc == 1.0
    # Without the template the same model finds neither choice after "Q".
    assert evaluate_multiple_choice(lm, path).results[0].items[0].logprobs[1] < -1000
    assert result.lines()[0].endswith("(seed 1234, through the chat template)")
    assert result.record().task.endswith("(0-shot, chat)")


def test_chat_needs_a_template(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "c.jsonl", [{"question": "Q", "choices": ["a", "b"], "answer": 1}]
    )
    with pytest.raises(ScratchLMError, match="no chat template"):
        evaluate_multiple_choice(successor_model(YES), path, chat=True)


# ---------------------------------------------------------------------------------------------
# The default suite
# ---------------------------------------------------------------------------------------------


def synthetic_documents(count: int, lines: int) -> list[str]:
    rng = random.Random(0)
    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "epsilon",
        "zeta",
        "eta",
        "theta",
        "iota",
        "kappa",
        "lambda",
        "mu",
    ]
    return [
        "\n".join(
            f"doc{d} line{i} " + " ".join(rng.choice(words) for _ in range(rng.randrange(3, 12)))
            for i in range(lines)
        )
        for d in range(count)
    ]


def test_default_suite_questions_are_true_continuations_among_distractors() -> None:
    source = Source("synthetic", "\n", 20, 120)
    documents = synthetic_documents(6, 80)
    questions = build_questions(source, documents, 50)
    assert questions == build_questions(source, documents, 50)  # deterministic
    answers = [answer for _, _, answer in questions]
    assert len(questions) == 50 and set(answers) == set(range(CHOICES))
    for passage, choices, answer in questions:
        true_line = choices[answer]
        [document] = [d for d in documents if true_line in d.split("\n")]
        assert document.split("\n")[0] != true_line  # a passage comes before it
        assert document.replace("\n", "|").count(passage.replace("\n", "|") + "|" + true_line) == 1
        assert len(set(choices)) == CHOICES
        doc_tag = true_line.split()[0]
        for i, choice in enumerate(choices):
            if i != answer:
                assert not choice.startswith(doc_tag + " ")  # from another document
                assert len(true_line) / LENGTH_RATIO <= len(choice) <= len(true_line) * LENGTH_RATIO


def test_default_suite_files_load_as_plain_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scratchlm.eval import default_suite as suite

    monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path))
    source = Source("synthetic", "\n", 20, 120)
    monkeypatch.setattr(suite, "SOURCES", (source,))
    monkeypatch.setattr(suite, "QUESTIONS_PER_SOURCE", 10)
    folder = tmp_path / "corpus"
    folder.mkdir()
    for number, text in enumerate(synthetic_documents(4, 40)):
        (folder / f"d{number}.txt").write_text(text, encoding="utf-8")
    monkeypatch.setattr("scratchlm.data.sources.fetch_corpus", lambda name: folder)
    [task] = suite.default_suite()
    assert (task.name, len(task.items), task.chance, task.target_delimiter) == (
        "synthetic", 10, CHANCE, "\n",
    )  # fmt: skip
    assert (suite.suite_folder() / "synthetic.json").is_file()
    monkeypatch.setattr("scratchlm.data.sources.fetch_corpus", lambda name: 1 / 0)
    assert suite.default_suite() == [task]  # cached: built once


def test_result_with_several_tasks_has_an_all_row(tmp_path: Path) -> None:
    lm = successor_model(YES)
    a = Task("a", (make_item("Q", ["yes", "no"], [0], "a"),) * 3)
    b = Task("b", (make_item("Q", ["yes", "no"], [1], "b"),))
    result = MultipleChoiceResult("both", score_tasks(lm, [a, b]), seed=0, chat=False)
    assert result.overall is not None
    assert (result.overall.n, result.overall.acc) == (4, 0.75)
    assert [line.split()[0] for line in result.lines()[2:]] == ["a", "b", "all"]
    assert set(result.record().metrics["tasks"]) == {"a", "b"}


# What the suite's version 1 is, built from the pinned corpora: a change to what is built must
# come with a new SUITE_VERSION, so results of one version stay comparable.
SUITE_SHA256 = {
    "shakespeare": "272756fdc0aff63d8cd1991ccc711dbac7712fc33d4d0b540dbe93492591482b",
    "kjv": "d6859e0e4084a7769e6ddd22513f1cd73d63a7cfac2e348c8b5177882d480ee2",
    "chitchat": "acbdda3856c53e02e80f7d27d66db586930cc36586a384a0c4b839009b7a5c8d",
}


def test_the_default_suite_is_the_same_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scratchlm.core.cache import cache_dir
    from scratchlm.eval import default_suite as suite

    # The corpora from the cache the data tests share (downloaded once per machine).
    monkeypatch.delenv("SCRATCHLM_CACHE", raising=False)
    monkeypatch.setenv("SCRATCHLM_CACHE", str(cache_dir() / "pytest-shared"))
    monkeypatch.setattr(suite, "suite_folder", lambda: tmp_path)
    tasks = suite.default_suite()
    assert [(t.name, len(t.items), t.chance) for t in tasks] == [
        ("shakespeare", 200, 0.25), ("kjv", 200, 0.25), ("chitchat", 200, 0.25),
    ]  # fmt: skip
    for name, digest in SUITE_SHA256.items():
        assert hashlib.sha256((tmp_path / f"{name}.json").read_bytes()).hexdigest() == digest


@pytest.mark.slow
def test_smollm2_beats_chance_on_the_default_suite() -> None:
    # SmolLM2-135M-Instruct knows English: on the first 25 questions of each source it must
    # pick true continuations well above chance (0.25) by acc_norm, with or without its chat
    # template. Minutes on 2 CPU cores: 300 choices of ~100 tokens, twice.
    from scratchlm.inference.language_model import load_for_inference

    lm = load_for_inference("smollm2-135m-instruct", dtype="float32")
    for chat in (False, True):
        result = evaluate_multiple_choice(lm, None, limit=25, chat=chat)
        assert result.overall is not None and result.overall.n == 75
        assert result.overall.acc_norm > CHANCE + 2 * result.overall.acc_norm_stderr
