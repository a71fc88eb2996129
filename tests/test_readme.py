"""The README's commands run as shown, so the docs never drift from the code.

Every command in a ```bash block is checked: `make` targets must exist (`make demo` also runs its
recipe, on tiny settings), and every `scratchlm` command runs, in order, in a scratch folder.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from live_server import live_server

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")

# Shrinks the demo recipe to seconds: same stages, Python's docs instead of Shakespeare.
TINY_DEMO = [
    "--data.sources", "pydocs", "--tokenizer.vocab_size", "300",
    "--model.n_layer", "1", "--model.n_embd", "32", "--model.n_head", "2",
    "--model.block_size", "32", "--train.max_steps", "4", "--train.batch_size", "4",
    "--train.eval_interval", "2", "--train.eval_batches", "1", "--sample.max_new_tokens", "8",
]  # fmt: skip


def bash_commands() -> list[str]:
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def scratchlm(words: list[str]) -> list[str]:
    assert words[0] == "scratchlm"
    return [sys.executable, "-m", "scratchlm", *words[1:]]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path / "cache"))
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    return tmp_path


def test_first_screen_has_the_two_setup_commands() -> None:
    first_screen = "\n".join(README.splitlines()[:40])
    assert "make demo" in first_screen and "make test" in first_screen


def test_make_targets_exist() -> None:
    targets = [c.split()[1] for c in bash_commands() if c.startswith("make ")]
    assert {"demo", "test"} <= set(targets)
    for target in targets:
        result = run(["make", "-n", target], REPO)
        assert result.returncode == 0, f"make {target}: {result.stderr}"


def test_make_demo_recipe_runs_on_tiny_settings(workdir: Path) -> None:
    recipe = run(["make", "-n", "demo"], REPO).stdout
    line = next(ln for ln in recipe.splitlines() if "scratchlm train" in ln)
    words = shlex.split(line)
    words = words[words.index(next(w for w in words if w.endswith("scratchlm"))) :]
    result = run(scratchlm(["scratchlm", *words[1:], *TINY_DEMO]), workdir)
    assert result.returncode == 0, result.stderr
    assert "val perplexity" in result.stdout
    assert "--- sample 1 ---" in result.stdout
    for name in ("config.toml", "tokenizer.json", "metrics.jsonl", "loss.png", "samples.txt"):
        assert (workdir / "runs" / "demo" / name).is_file(), name
    # The demo ends by writing the book of its run.
    line = next(ln for ln in recipe.splitlines() if "scratchlm book" in ln)
    words = shlex.split(line)
    words = words[words.index(next(w for w in words if w.endswith("scratchlm"))) :]
    result = run(scratchlm(["scratchlm", *words[1:]]), workdir)
    assert result.returncode == 0, result.stderr
    book = workdir / "runs" / "demo" / "book.pdf"
    assert (
        book.read_bytes()[:5] == b"%PDF-" and f"wrote {book.relative_to(workdir)}" in result.stdout
    )
    # And the demo's model goes on to transformers (its shape: GPT-NeoX).
    export = ["scratchlm", "export", "runs/demo", "--format", "hf", "--out", "hf"]
    result = run(scratchlm(export), workdir)
    assert result.returncode == 0, result.stderr
    assert "GPTNeoXForCausalLM" in result.stdout and (workdir / "hf" / "config.json").is_file()
    # And to llama.cpp, as one GGUF file of the same architecture.
    export = ["scratchlm", "export", "runs/demo", "--format", "gguf", "--out", "demo.gguf"]
    result = run(scratchlm(export), workdir)
    assert result.returncode == 0, result.stderr
    assert (workdir / "demo.gguf").read_bytes()[:4] == b"GGUF"


def test_cli_tour_runs_as_written(workdir: Path) -> None:
    commands = [c for c in bash_commands() if c.startswith("scratchlm ")]
    assert len(commands) >= 8
    for command in commands:
        result = run(scratchlm(shlex.split(command)), workdir)
        assert result.returncode == 0, f"{command}\n{result.stderr}"
        assert "Traceback" not in result.stderr


def test_shown_error_messages_are_real(workdir: Path) -> None:
    examples = re.findall(r"^    \$ (scratchlm .*)\n    (error: .*)$", README, flags=re.M)
    assert examples
    for command, shown in examples:
        result = run(scratchlm(shlex.split(command)), workdir)
        assert result.returncode == 2
        assert result.stderr.startswith(shown.split("...")[0].rstrip())


def test_python_examples_run(tmp_path: Path) -> None:
    # Each ```python block runs as written, in a fresh interpreter (the pretrained model it
    # names is fetched into the cache the first time, as the SmolLM2 tests do).
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    blocks = [b for b in blocks if "base_url=" not in b]  # a server's client: test_serve_...
    assert blocks, "the README shows the Python entry point"
    for block in blocks:
        result = run([sys.executable, "-c", block], cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout  # the chat example answers its question


def test_serve_examples_run_against_the_server_they_start(tmp_path: Path) -> None:
    # The README's `scratchlm serve` command, then its curl and `openai` client examples
    # against it, on a free port instead of the one shown.
    [serve] = re.findall(r"```console\n(scratchlm serve .*?)\n```", README)
    [curl] = re.findall(r"```console\n(curl .*?)\n```", README)
    [client] = [
        b for b in re.findall(r"```python\n(.*?)```", README, flags=re.S) if "base_url=" in b
    ]
    words = shlex.split(serve)
    port = words[words.index("--port") + 1]
    del words[words.index("--port") : words.index("--port") + 2]
    with live_server(words[2], *words[3:], timeout=180) as url:
        here = url.rsplit(":", 1)[1]
        reply = run(shlex.split(curl.replace(f":{port}/", f":{here}/")), tmp_path)
        assert reply.returncode == 0, reply.stderr
        answer = json.loads(reply.stdout)["choices"][0]["message"]["content"]
        assert "Paris" in answer
        streamed = run([sys.executable, "-c", client.replace(f":{port}/", f":{here}/")], tmp_path)
        assert streamed.returncode == 0, streamed.stderr
        assert streamed.stdout.strip() == answer  # greedy both times: the same reply
