"""Faults of a training job under torchrun: a killed rank brought back by --max-restarts from
the last checkpoint to the very weights of an uninterrupted run, a run resumed on more ranks
than it started with, two "nodes" on one machine, and an error reported once, with its rank."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from torchrun_jobs import REPO, free_port

TINY = ["--config", "configs/tiny.toml", "--train.parallel", "ddp", "--out_dir", "runs",
        "--no-samples"]  # fmt: skip


def _job_folder(tmp_path: Path, name: str = "job") -> Path:
    """A working folder with the repository's recipes, where a job writes runs/."""
    folder = tmp_path / name
    shutil.copytree(REPO / "configs", folder / "configs")
    return folder


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "SCRATCHLM_CACHE": str(cache)}


def _torchrun(launcher: list[str], command: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "scratchlm", *command]


def _start(cwd: Path, command: list[str], cache: Path) -> subprocess.Popen[str]:
    """A job in a session of its own: a test that fails ends it with its workers (_finish)."""
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=_env(cache),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _finish(*jobs: subprocess.Popen[str]) -> list[tuple[int, str, str]]:
    """Each job's status, stdout and stderr; every job (and its workers) ended on a timeout."""
    try:
        outputs = [job.communicate(timeout=180) for job in jobs]
        return [(job.returncode, out, err) for job, (out, err) in zip(jobs, outputs, strict=True)]
    finally:
        for job in jobs:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
                job.communicate()


def _run(cwd: Path, command: list[str], cache: Path) -> subprocess.CompletedProcess[str]:
    [(_, out, err)] = _finish(job := _start(cwd, command, cache))
    return subprocess.CompletedProcess(command, job.returncode, out, err)


def _two_ranks(*args: str) -> list[str]:
    return _torchrun(["--nproc-per-node", "2", "--master-port", str(free_port())], list(args))


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


def _our_traceback(text: str) -> bool:
    """A traceback through scratchlm's code (torchrun's own report of a failed job is not)."""
    return f"{os.sep}scratchlm{os.sep}" in text and "Traceback" in text


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    last = sorted((run / "checkpoints").iterdir())[-1]
    return load_file(last / "model.safetensors")


def _worker_of_rank(launcher_pid: int, rank: int) -> int | None:
    """The pid of torchrun's worker process with RANK=rank, if it is running (Linux /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if parent == launcher_pid and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


@pytest.mark.slow
def test_a_killed_rank_comes_back_from_the_last_checkpoint_to_the_same_weights(
    tmp_path: Path,
) -> None:
    folder, cache = _job_folder(tmp_path), tmp_path / "cache"
    steps = 12
    command = ["train", *TINY, "--train.max_steps", str(steps),
               "--train.checkpoint_interval", "2", "--train.eval_interval", "6"]  # fmt: skip
    whole = _run(folder, _two_ranks(*command, "--name", "whole"), cache)
    assert whole.returncode == 0, whole.stderr[-3000:]

    launcher = ["--nproc-per-node", "2", "--max-restarts", "1", "--master-port", str(free_port())]
    job = _start(folder, _torchrun(launcher, [*command, "--name", "killed"]), cache)
    checkpoints = folder / "runs" / "killed" / "checkpoints"
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and job.poll() is None and time.monotonic() < deadline:
        if checkpoints.is_dir() and any(checkpoints.glob("step_*")):  # a finished one
            killed = _worker_of_rank(job.pid, rank=1)
            if killed is not None:
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.01)
    [(_, out, err)] = _finish(job)
    assert killed is not None, "the job ended before a checkpoint to kill it after"
    assert job.returncode == 0, err[-3000:]
    # The second launch continued the run (from a checkpoint before the end), not started again.
    assert out.count("restart 1 of this torchrun job: resuming runs/killed") == 1, out
    resumed = [line for line in out.splitlines() if line.startswith("resuming from")]
    assert len(resumed) == 1 and f" of {steps})" in resumed[0], out
    assert int(resumed[0].split("(step ")[1].split()[0]) < steps
    assert out.count(f"done: {steps} steps") == 1
    assert not _our_traceback(out + err)

    interrupted, uninterrupted = (
        _final_weights(checkpoints.parent),
        _final_weights(folder / "runs" / "whole"),
    )
    assert interrupted.keys() == uninterrupted.keys()
    for name, weight in uninterrupted.items():
        assert torch.equal(interrupted[name], weight), name  # bitwise


def _metrics(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_run_of_one_process_continues_on_two_ranks(tmp_path: Path) -> None:
    folder, cache = _job_folder(tmp_path), tmp_path / "cache"
    # The same global batch on 1 and 2 ranks: 512 tokens are 2 micro-batches of 8 x 32 for one
    # process, one on each of 2 ranks.
    common = ["--train.batch_tokens", "512", "--train.eval_interval", "2", "--no-samples"]
    one = _run(
        folder,
        [sys.executable, "-m", "scratchlm", "train", "--config", "configs/tiny.toml",
         "--out_dir", "runs", "--train.max_steps", "4", "--train.checkpoint_interval", "2",
         "--train.log_interval", "1", *common],
        cache,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    run = folder / "runs" / "tiny"
    before = _metrics(run)

    two = _run(
        folder,
        _two_ranks("train", "--resume", "runs/tiny", "--train.parallel", "ddp",
                   "--train.max_steps", "8", *common),
        cache,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    assert "resuming from runs/tiny/checkpoints/step_000004 (step 4 of 8)" in two.stdout
    assert two.stdout.count("done: 8 steps") == 1
    assert "x 2 ranks" in two.stderr
    train = [r for r in _metrics(run)[len(before) :] if "train_loss" in r]
    # The step counter goes on from 4, and the loss goes on from where one process left it:
    # finite, below a uniform guess over the 300 tokens, and not back at the start.
    assert [r["step"] for r in train] == [5, 6, 7, 8]
    first = next(r["train_loss"] for r in before if "train_loss" in r)
    assert all(math.isfinite(r["train_loss"]) and r["train_loss"] < first for r in train)
    assert max(r["tokens_seen"] for r in train) == 8 * 512
    assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1] == "step_000008"


def _two_nodes(
    folders: tuple[Path, Path], cache: Path, *command: str
) -> list[subprocess.Popen[str]]:
    """Two torchrun launchers of one process each, as two machines would start a job: node
    0 in folders[0] and node 1 in folders[1], meeting at a c10d rendezvous on this machine."""
    endpoint = f"127.0.0.1:{free_port()}"
    jobs = []
    for node in (0, 1):
        launcher = ["--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node),
                    "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
                    "--rdzv-id", "two-nodes"]  # fmt: skip
        jobs.append(_start(folders[node], _torchrun(launcher, list(command)), cache))
    return jobs


def test_two_nodes_on_one_machine_train_together(tmp_path: Path) -> None:
    folder, cache = _job_folder(tmp_path), tmp_path / "cache"
    nodes = _finish(
        *_two_nodes((folder, folder), cache, "train", *TINY, "--train.max_steps", "4",
                   "--train.eval_interval", "2", "--train.checkpoint_interval", "2")
    )  # fmt: skip
    for rc, _, err in nodes:
        assert rc == 0, err[-3000:]
    # c10d numbers the nodes in the order they join (node 0 is started first, so it is rank 0
    # but for a wrapped-around pid): the node of rank 0 alone prints, once.
    main, other = sorted(nodes, key=lambda node: "done:" not in node[1])
    assert main[1].count("done: 4 steps") == 1 and "done:" not in other[1]
    assert "x 2 ranks" in main[2] and "train loss" not in other[2]
    assert not any(_our_traceback(out + err) for _, out, err in nodes)
    assert (folder / "runs" / "tiny" / "checkpoints" / "step_000004").is_dir()


@pytest.mark.parametrize(
    "mistake, words",
    [
        (["--train.max_steps", "-3"], "max_steps"),
        (["--config", "configs/no_such_recipe.toml"], "no_such_recipe.toml"),
        (["--train.parallel", "none"], "train.parallel is 'none'; add --train.parallel ddp"),
    ],
)
def test_a_mistake_every_rank_finds_is_one_line_from_rank_0(
    tmp_path: Path, mistake: list[str], words: str
) -> None:
    folder = _job_folder(tmp_path)
    # Before the process group starts: the config is read first, on every rank.
    result = _run(folder, _two_ranks("train", *TINY, *mistake), tmp_path / "cache")
    assert result.returncode != 0
    lines = _error_lines(result.stderr)
    assert len(lines) == 1 and words in lines[0], result.stderr[-3000:]
    assert "rank 1" not in lines[0]
    assert not _our_traceback(result.stdout + result.stderr)


@pytest.mark.slow  # rank 0 waits 10 s for the launcher before saying it lost contact
def test_an_error_of_one_rank_is_one_line_with_its_rank(tmp_path: Path) -> None:
    # Node 1 works in a folder of its own: it cannot see the run rank 0 prepares on node 0, as
    # two machines without shared storage would not.
    folders = (_job_folder(tmp_path, "node0"), _job_folder(tmp_path, "node1"))
    nodes = _finish(
        *_two_nodes(folders, tmp_path / "cache", "train", *TINY, "--train.max_steps", "2")
    )
    assert all(rc != 0 for rc, _, _ in nodes)
    # The node of rank 1 (node 1, started second) says why, once, with its rank; the node of
    # rank 0, which lost its partner, at most that it did.
    failed, lost = sorted(nodes, key=lambda node: "error: rank 1: " not in node[2])
    [line] = _error_lines(failed[2])
    assert line.startswith("error: rank 1: runs/tiny is not here on ")
    assert "storage they share" in line
    assert all("lost contact" in line for line in _error_lines(lost[2]))
    assert len(_error_lines(lost[2])) <= 1
    assert not any(_our_traceback(out + err) for _, out, err in nodes)
