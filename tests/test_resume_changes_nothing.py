"""A resume that is refused or has nothing to do leaves every file of the run as it was
(issue 13, class 5): no rewritten config.toml, metrics.jsonl, plots or checkpoints."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from disk_snapshot import snapshot

ROOT = Path(__file__).resolve().parents[1]


def scratchlm(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scratchlm", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    cache = tmp_path_factory.mktemp("cache")
    return {**os.environ, "SCRATCHLM_CACHE": str(cache), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Path:
    """runs/tiny trained to step 20 (configs/tiny.toml), once for the module."""
    work = tmp_path_factory.mktemp("work")
    config = str(ROOT / "configs" / "tiny.toml")
    result = scratchlm(["train", "--config", config, "--no-samples"], work, env)
    assert result.returncode == 0, result.stderr
    return work / "runs" / "tiny"


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--train.max_steps", "15"], 0, "nothing to do"),
        (["--train.max_steps", "20", "--sample.temperature", "0.5"], 0, "nothing to do"),
        (["--train.optimizer", "muon"], 2, "cannot resume"),
        (["--model.n_layer", "3"], 2, "cannot change when resuming"),
        (["--train.max_steps", "-1"], 2, "train.max_steps must be at least 1"),
        (["--config", str(ROOT / "configs" / "tiny.toml")], 2, "drop --config"),
    ],
    ids=["below-step", "at-step", "other-optimizer", "other-model", "bad-value", "with-config"],
)
def test_a_resume_that_changes_nothing_leaves_every_file(
    trained: Path, tmp_path: Path, env: dict[str, str], args: list[str], code: int, says: str
) -> None:
    run = tmp_path / "runs" / "tiny"
    shutil.copytree(trained, run)
    before = snapshot(run)
    result = scratchlm(["train", "--resume", "runs/tiny", "--no-samples", *args], tmp_path, env)
    assert result.returncode == code, result.stderr
    assert says in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(run) == before


def test_a_resume_that_trains_remembers_the_new_settings(
    trained: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    run = tmp_path / "runs" / "tiny"
    shutil.copytree(trained, run)
    result = scratchlm(["train", "--resume", "runs/tiny", "--no-samples", "--train.max_steps", "22"], tmp_path, env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "max_steps = 22" in (run / "config.toml").read_text(encoding="utf-8")
