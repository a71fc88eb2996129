"""Every command that reads a path the user names says what is wrong with it in one line
(issue 13, class 2): a symlink loop, a path that does not exist, a folder where a file is
expected. Parametrised over the commands, not one example each."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# {bad} is the path under test; tok.json is a real tokenizer beside it.
READING_COMMANDS = [
    "data prepare {bad} --tokenizer tok.json --out prepared",
    "data prepare pydocs --tokenizer {bad} --out prepared",
    "data report {bad}",
    "tokenizer train {bad} --vocab-size 300 --out new.json",
    "tokenizer study --input {bad} --sizes 300 --out study",
    "tokenizer encode --tokenizer {bad} hello",
    "tokenizer encode --tokenizer tok.json --file {bad}",
    "tokenizer decode --tokenizer {bad} 72",
    "tokenizer export --tokenizer {bad} --format hf --out exported.json",
    "tokenizer import --format hf {bad} --out imported.json",
    "train --config {bad}",
    "train --resume {bad}",
    "generate {bad} --prompt hi",
    "eval {bad}",
    "plot {bad}",
    "export {bad} --format hf --out exported",
    "import hf {bad} --out imported-run",
    "import gguf {bad} --out imported-run",
]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from scratchlm.tokenizer import BPETokenizer

    work = tmp_path_factory.mktemp("paths")
    BPETokenizer.train("hello world, hello paths " * 50, vocab_size=270).save(work / "tok.json")
    (work / "loop-a").symlink_to("loop-b")
    (work / "loop-b").symlink_to("loop-a")
    (work / "a-folder").mkdir()
    return work


def run(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SCRATCHLM_CACHE": str(cwd / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "scratchlm", *command.split()],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("bad", ["loop-a", "missing-path", "a-folder"])
@pytest.mark.parametrize("command", READING_COMMANDS)
def test_a_bad_input_path_is_one_line(work: Path, command: str, bad: str) -> None:
    # Commands that take a folder (a source, a run, an HF model) meet an empty one with their
    # own wording; every case is still one line naming the path.
    before = sorted(p.name for p in work.iterdir())
    result = run(command.format(bad=bad), work)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert bad in lines[0], lines[0]  # the line names the path
    assert sorted(p.name for p in work.iterdir()) == before  # nothing written
