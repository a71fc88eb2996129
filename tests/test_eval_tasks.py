"""Multiple-choice task formats (eval/tasks/): each read from a small file written in its
published layout, its prompts laid out as its reference harness does; and bad task files, each
one clear line naming the file, the line and the key."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from scratchlm.core.errors import ScratchLMError
from scratchlm.eval.tasks import detect_format, fewshot_examples, load_tasks, prompt_text
from scratchlm.eval.tasks.prompt import check_shots


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def queries_choices_answers(path: Path, task_format: str | None = None) -> list[tuple]:
    [task] = load_tasks(path, task_format)
    return [(i.query, i.choices, i.answers) for i in task.items]


def test_plain_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "capitals.jsonl",
        [
            {"question": "The capital of France is", "choices": ["Paris", "Rome"], "answer": 0},
            {"context": "Two plus two is", "choices": ["three", "four"], "answer": 1},
            {"question": "Ice is", "choices": ["cold", "hot"], "answer": 0, "fewshot": True},
        ],
    )
    [task] = load_tasks(path)
    assert detect_format(path) == "plain" and task.name == "capitals"
    assert [(i.query, i.choices, i.answers, i.where) for i in task.items] == [
        ("The capital of France is", ("Paris", "Rome"), (0,), f"{path}:1"),
        ("Two plus two is", ("three", "four"), (1,), f"{path}:2"),
    ]
    assert [i.query for i in task.fewshot] == ["Ice is"]
    assert (task.target_delimiter, task.fewshot_delimiter, task.default_shots) == (" ", "\n\n", 0)
    assert prompt_text(task, task.items[1], fewshot_examples(task, 1, 1, 0)) == (
        "Ice is cold\n\nTwo plus two is"
    )


def test_plain_json_list_and_object(tmp_path: Path) -> None:
    item = {"question": "q", "choices": ["a", "b"], "answer": 1}
    assert queries_choices_answers(write_json(tmp_path / "l.json", [item])) == [
        ("q", ("a", "b"), (1,))
    ]
    path = write_json(
        tmp_path / "o.json",
        {
            "description": "Answer.\n",
            "target_delimiter": "\nA: ",
            "fewshot_delimiter": "\n---\n",
            "fewshot": [{"question": "e", "choices": ["x", "y"], "answer": 0}],
            "items": [item],
        },
    )
    [task] = load_tasks(path)
    assert detect_format(path) == "plain"
    assert prompt_text(task, task.items[0], list(task.fewshot)) == "Answer.\ne\nA: x\n---\nq"


def test_bigbench(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "task.json",
        {
            "name": "weather",
            "task_prefix": "Weather questions.\n",
            "examples": [
                {"input": "Is rain wet?", "target_scores": {"yes": 1, "no": 0, "maybe": 0}},
                {"input": "Is it sunny?", "target_scores": {"yes": 0.5, "no": 0.5}},
            ],
        },
    )
    [task] = load_tasks(path)
    assert detect_format(path) == "bigbench" and task.name == "weather"
    first, second = task.items
    # BIG-bench's defaults; the listed choices are sorted, then permuted by RandomState(42).
    assert first.query == ("\nQ: Is rain wet?\n  choice: maybe\n  choice: no\n  choice: yes\nA: ")
    assert (first.choices, first.answers) == (("yes", "no", "maybe"), (0,))
    assert second.query == "\nQ: Is it sunny?\n  choice: yes\n  choice: no\nA: "
    assert second.answers == (0, 1)  # a tie: both are right
    assert (task.description, task.target_delimiter, task.fewshot_delimiter) == (
        "Weather questions.\n", "", "\n",
    )  # fmt: skip
    assert prompt_text(task, second, [first]) == (
        "Weather questions.\n" + first.query + "yes" + "\n" + second.query
    )
    # The prefixes are the task's when it sets them.
    custom = write_json(
        tmp_path / "custom.json",
        {
            "example_input_prefix": "Q: ",
            "example_output_prefix": " A:",
            "append_choices_to_input": False,
            "examples": [{"input": "x", "target_scores": {"a": 0, "b": 1}}],
        },
    )
    assert queries_choices_answers(custom) == [("Q: x A:", ("a", "b"), (1,))]


def write_csv(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)


def test_mmlu(tmp_path: Path) -> None:
    data = tmp_path / "data"
    dev = [[f"Dev question {i}?", "w", "x", "y", "z", "ABCD"[i % 4]] for i in range(5)]
    write_csv(data / "dev" / "high_school_physics_dev.csv", dev)
    write_csv(
        data / "test" / "high_school_physics_test.csv",
        [["What is g, roughly?", "9.8 m/s^2", "1 m/s", "3e8 m/s", "0", "A"],
         ["Is light, a wave, fast?", "no", "yes", "sometimes", "never", "B"]],
    )  # fmt: skip
    write_csv(data / "test" / "virology_test.csv", [["Q?", "a", "b", "c", "d", "D"]])
    tasks = load_tasks(data)
    assert detect_format(data) == "mmlu"
    assert [t.name for t in tasks] == ["high_school_physics", "virology"]
    physics, virology = tasks
    assert physics.default_shots == 5 and virology.default_shots == 0  # no dev file
    item = physics.items[0]
    assert item.query == "What is g, roughly?\nA. 9.8 m/s^2\nB. 1 m/s\nC. 3e8 m/s\nD. 0\nAnswer:"
    assert (item.choices, item.answers) == (("A", "B", "C", "D"), (0,))
    assert physics.items[1].answers == (1,)
    # 5-shot from dev in order, under the original's header; each letter scored as " A".
    examples = fewshot_examples(physics, 0, 5, seed=99)
    assert [e.query.split("\n")[0] for e in examples] == [f"Dev question {i}?" for i in range(5)]
    prompt = prompt_text(physics, item, examples[:2])
    assert prompt == (
        "The following are multiple choice questions (with answers) about high school physics."
        "\n\nDev question 0?\nA. w\nB. x\nC. y\nD. z\nAnswer: A"
        "\n\nDev question 1?\nA. w\nB. x\nC. y\nD. z\nAnswer: B"
        "\n\nWhat is g, roughly?\nA. 9.8 m/s^2\nB. 1 m/s\nC. 3e8 m/s\nD. 0\nAnswer:"
    )
    # One subject's file, given alone, still finds its dev split.
    [alone] = load_tasks(data / "test" / "high_school_physics_test.csv")
    assert alone.fewshot == physics.fewshot


def test_hellaswag(tmp_path: Path) -> None:
    line = {
        "ind": 24,
        "activity_label": "Roof shingle removal",
        "ctx_a": "A man is sitting on a roof.",
        "ctx_b": "he",
        "ctx": "A man is sitting on a roof. he",
        "endings": [
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off. [title] Then he stops.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof.",
        ],
        "label": 3,
        "split": "val",
    }
    path = write_jsonl(tmp_path / "hellaswag_val.jsonl", [line])
    assert detect_format(path) == "hellaswag"
    [(query, choices, answers)] = queries_choices_answers(path)
    # lm-eval's preprocessing: "label: ctx_a Ctx_b", " [title]" to ". ", brackets dropped.
    assert query == "Roof shingle removal: A man is sitting on a roof. He"
    assert choices[1] == "is ripping level tiles off.. Then he stops."
    assert (choices[3], answers) == ("starts pulling up roofing on a roof.", (3,))
    # The Hugging Face copy's label is text.
    path = write_jsonl(tmp_path / "hf.jsonl", [line | {"label": "3"}])
    assert queries_choices_answers(path)[0][2] == (3,)


def test_arc_both_layouts(tmp_path: Path) -> None:
    ai2 = {
        "id": "Mercury_7175875",
        "question": {
            "stem": "Which is a gas?",
            "choices": [{"text": "ice", "label": "A"}, {"text": "steam", "label": "B"}],
        },
        "answerKey": "B",
    }
    hf = {
        "id": "x",
        "question": "Which is a gas?",
        "choices": {"text": ["ice", "steam", "rock"], "label": ["1", "2", "3"]},
        "answerKey": "2",
    }
    for name, record, choices in [
        ("ai2", ai2, ("ice", "steam")), ("hf", hf, ("ice", "steam", "rock")),
    ]:  # fmt: skip
        path = write_jsonl(tmp_path / f"{name}.jsonl", [record])
        assert detect_format(path) == "arc"
        assert queries_choices_answers(path) == [
            ("Question: Which is a gas?\nAnswer:", choices, (1,))
        ]


def test_the_format_flag_overrides_the_shape(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "plain-with-answerKey.jsonl",
        [{"question": "q", "choices": ["a", "b"], "answer": 0, "answerKey": "unused"}],
    )
    assert detect_format(path) == "arc"
    assert queries_choices_answers(path, "plain") == [("q", ("a", "b"), (0,))]


# ---------------------------------------------------------------------------------------------
# Bad input: one line each, naming the file, line and key
# ---------------------------------------------------------------------------------------------


def error_of(path: Path, task_format: str | None = None, shots: int | None = None) -> str:
    with pytest.raises(ScratchLMError) as caught:
        tasks = load_tasks(path, task_format)
        for task in tasks:
            check_shots(task, task.default_shots if shots is None else shots)
    message = str(caught.value)
    assert "\n" not in message
    return message


GOOD = {"question": "q", "choices": ["a", "b"], "answer": 0}


def test_not_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + '{"question": "q", "choices": [\n', encoding="utf-8")
    assert error_of(path).startswith(f"{path}:2: not JSON (")
    path.write_text("[1, 2]\n", encoding="utf-8")
    assert error_of(path) == f"{path}:1: expected a JSON object {{...}}, got a list"
    bad_json = tmp_path / "t.json"
    bad_json.write_text('{"items": [', encoding="utf-8")
    assert "is not valid JSON" in error_of(bad_json) and "line 1" in error_of(bad_json)


def test_a_missing_field_names_the_line_and_the_key(tmp_path: Path) -> None:
    no_choices = {"question": "q", "answer": 0}
    path = write_jsonl(tmp_path / "t.jsonl", [GOOD, GOOD, no_choices])
    assert error_of(path) == f'{path}:3: missing key "choices"'
    path = write_jsonl(tmp_path / "t.jsonl", [{"choices": ["a", "b"], "answer": 0}])
    assert error_of(path) == f'{path}:1: missing key "question" (or "context")'
    path = write_jsonl(tmp_path / "t.jsonl", [{"question": "q", "choices": ["a", "b"]}])
    assert error_of(path) == f'{path}:1: missing key "answer" (the index of the right choice)'
    path = write_jsonl(tmp_path / "t.jsonl", [GOOD | {"answer": "a"}])
    assert error_of(path).startswith(f'{path}:1: "answer" must be the index of the right choice')
    path = write_jsonl(tmp_path / "t.jsonl", [GOOD | {"answer": 2}])
    assert error_of(path) == f"{path}:1: the answer 2 is not a choice index (0 to 1)"
    path = write_json(tmp_path / "o.json", {"items": [GOOD, {"question": "q"}]})
    assert error_of(path) == f'{path}: items[1]: missing key "choices"'
    path = write_jsonl(tmp_path / "h.jsonl", [{"ctx": "c", "endings": ["a", "b"], "label": 0}])
    assert error_of(path) == f'{path}:1: missing key "activity_label"'


def test_one_choice(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [GOOD | {"choices": ["only"]}])
    assert error_of(path) == f"{path}:1: a question needs at least 2 choices, this one has 1"


def test_an_empty_task(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    assert error_of(path) == f"{path}: the task has no questions; add at least one"
    only_examples = write_jsonl(tmp_path / "e.jsonl", [GOOD | {"fewshot": True}])
    assert (
        error_of(only_examples) == f"{only_examples}: the task has no questions; add at least one"
    )
    assert "has no questions" in error_of(write_json(tmp_path / "e.json", []))


def test_more_shots_than_examples(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [GOOD, GOOD | {"fewshot": True}])
    assert error_of(path, shots=2) == (
        "task t: 2-shot prompts need 2 examples but it has only 1 few-shot examples; "
        "lower the number of shots or add examples"
    )
    path = write_jsonl(tmp_path / "u.jsonl", [GOOD, GOOD, GOOD])
    assert "it has only 2 other questions" in error_of(path, shots=3)
    assert "must be 0 or more" in error_of(path, shots=-1)


def test_other_bad_files(tmp_path: Path) -> None:
    assert (
        error_of(tmp_path / "missing.jsonl")
        == f"task file {tmp_path / 'missing.jsonl'} does not exist"
    )
    path = write_jsonl(tmp_path / "t.jsonl", [GOOD])
    assert error_of(path, "gsm8k").startswith("unknown task format 'gsm8k'; use one of plain,")
    csv_path = tmp_path / "data" / "test" / "x_test.csv"
    write_csv(csv_path, [["q", "a", "b", "c", "d", "A"], ["q", "a", "b", "c", "E"]])
    assert error_of(csv_path) == (
        f"{csv_path}:2: an MMLU row has 6 columns (question, A, B, C, D, answer letter), "
        "this one has 5"
    )
    write_csv(csv_path, [["q", "a", "b", "c", "d", "E"]])
    assert error_of(csv_path) == f"{csv_path}:1: the answer must be A, B, C or D, got 'E'"
    empty_folder = tmp_path / "empty"
    empty_folder.mkdir()
    assert error_of(empty_folder).startswith(f"{empty_folder} has no MMLU files")
    arc = write_jsonl(
        tmp_path / "arc.jsonl",
        [{"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "C"}],
    )
    assert error_of(arc) == f"{arc}:1: answerKey 'C' is not one of the labels ['A', 'B']"
    hs = write_jsonl(
        tmp_path / "hs.jsonl",
        [{"activity_label": "a", "ctx": "c", "endings": ["x", "y"], "label": ""}],
    )
    assert "the test split has no labels" in error_of(hs)
    big = write_json(
        tmp_path / "b.json", {"examples": [{"input": "x", "target_scores": {"a": "1"}}]}
    )
    assert (
        error_of(big, "bigbench")
        == f'{big}: examples[0]: target_scores["a"] must be a number, got text'
    )
