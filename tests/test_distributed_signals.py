"""Stopping a training job as people do, and `scratchlm train --nproc N`.

SIGTERM to torchrun (as a scheduler sends it) and Ctrl-C (SIGINT to the terminal's whole
process group) reach every rank through torchrun: all ranks stop at the same step, the model
is saved once there (a sharded model gathered by all ranks, written by rank 0), rank 0 alone
says so, and one process resumes from that step. `scratchlm train --nproc N` starts torchrun
itself and hands Ctrl-C to the workers, so the job ends as one process's would: status 0.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import scratchlm
from scratchlm.cli.launch import children_of
from scratchlm.cli.main import build_parser, main
from scratchlm.cli.options import given_options
from scratchlm.cli.train import same_command_line
from torchrun_jobs import REPO, free_port

PACKAGE = str(Path(scratchlm.__file__).parent)  # a traceback through it is a rank's
# A job long enough to be stopped while it trains, with no checkpoint of its own on the way:
# the only one is the save the stop makes.
LONG = ["--config", "configs/tiny.toml", "--out_dir", "runs", "--train.max_steps", "400",
        "--train.log_interval", "1", "--train.eval_interval", "1000",
        "--train.checkpoint_interval", "1000", "--no-samples"]  # fmt: skip
RUN = Path("runs") / "tiny"


def _env(folder: Path) -> dict[str, str]:
    # torchrun SIGKILLs workers still running this long after it passed a signal on (30 s by
    # default): more than a loaded machine needs, so that a late save fails the test visibly.
    return {**os.environ, "OMP_NUM_THREADS": "1", "SCRATCHLM_CACHE": str(folder / "cache"),
            "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "90"}  # fmt: skip


def _start(folder: Path, command: list[str]) -> subprocess.Popen[str]:
    """The job in a session of its own, as a shell starts a foreground job in a group."""
    return subprocess.Popen(
        command,
        cwd=folder,
        env=_env(folder),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_for_training(job: subprocess.Popen[str], folder: Path) -> None:
    """Until metrics.jsonl has a record: the ranks are inside the training loop."""
    metrics = folder / RUN / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().strip()):
        assert job.poll() is None, job.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the job never started training"
        time.sleep(0.02)


def _finish(job: subprocess.Popen[str], timeout: float = 90) -> tuple[str, str, float]:
    """The job's stdout, stderr and seconds to end; on a timeout (a hang) the job and its
    workers, which torchrun puts in sessions of their own, are killed."""
    start = time.monotonic()
    try:
        out, err = job.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in _descendants(job.pid):
            os.kill(pid, signal.SIGKILL)
        os.killpg(job.pid, signal.SIGKILL)
        out, err = job.communicate()
        pytest.fail(f"the job did not end {timeout:.0f}s after the signal:\n{err[-3000:]}")
    return out, err, time.monotonic() - start


def _descendants(pid: int) -> list[int]:
    children = children_of(pid)
    return children + [d for child in children for d in _descendants(child)]


def _stopped_step(out: str) -> int:
    """The step of the one "stopped at step N; checkpoint saved" line."""
    lines = [line for line in out.splitlines() if line.startswith("stopped at step ")]
    assert len(lines) == 1, out
    assert "; checkpoint saved to " in lines[0], lines[0]
    return int(lines[0].removeprefix("stopped at step ").split(";")[0].replace(",", ""))


def _assert_stopped_cleanly(folder: Path, out: str, err: str, sig: signal.Signals) -> int:
    """One stop, said once, saved once at the step every rank reached; the step."""
    step = _stopped_step(out)
    assert err.count(f"{sig.name} received") == 1, err[-3000:]  # rank 0's, not one a rank
    assert "[rank" not in err and "Traceback" not in err, err[-3000:]
    assert "lost contact" not in err and "error:" not in err, err[-3000:]
    # No rank was still busy when torchrun's grace ran out (it would SIGKILL it).
    assert "forcefully exiting" not in err, err[-3000:]
    run = folder / RUN
    # Exactly one save, at that step (no checkpoint was due on the way).
    assert [p.name for p in (run / "checkpoints").iterdir()] == [f"step_{step:06d}"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if "train_loss" in r][-1]
    # The last step logged is the one saved, and both ranks finished it (each rank's
    # throughput is gathered from all of them at every logged step).
    assert last["step"] == step and len(last["rank_tokens_per_s"]) == 2, last
    return step


# torchrun's own report that it got the signal: a traceback of torchrun's code, not of a rank.
_TORCHRUN_OWN = "Traceback (most recent call last):"


def _torchrun_traceback_only(err: str) -> str:
    """stderr without torchrun's own SignalException report (torchrun fails with it when it
    passed a signal on, however cleanly the workers stopped)."""
    head, sep, tail = err.partition(_TORCHRUN_OWN)
    if sep and "SignalException" in tail and PACKAGE not in tail:
        return head
    return err


def _resume_in_one_process(folder: Path, step: int) -> None:
    resumed = subprocess.run(
        [sys.executable, "-m", "scratchlm", "train", "--resume", str(RUN),
         "--train.max_steps", str(step + 2), "--no-samples"],
        cwd=folder, env=_env(folder), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {RUN}/checkpoints/step_{step:06d} (step {step} of" in resumed.stdout
    assert f"done: {step + 2} steps" in resumed.stdout


@pytest.mark.parametrize(
    "parallel, sig, whole_group",
    [
        # a scheduler stopping the job: torchrun's pid (slow: the default suite's time budget)
        pytest.param("fsdp", signal.SIGTERM, False, marks=pytest.mark.slow),
        ("ddp", signal.SIGINT, True),  # Ctrl-C in a terminal: the foreground process group
    ],
)
def test_a_signal_to_torchrun_stops_every_rank_at_one_step_and_saves_once(
    tmp_path: Path, parallel: str, sig: signal.Signals, whole_group: bool
) -> None:
    folder = tmp_path / "job"
    shutil.copytree(REPO / "configs", folder / "configs")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-port", str(free_port()), "-m", "scratchlm", "train", *LONG,
               "--train.parallel", parallel]  # fmt: skip
    job = _start(folder, command)
    _wait_for_training(job, folder)
    if whole_group:
        os.killpg(job.pid, sig)  # torchrun's workers are in sessions of their own: not them
    else:
        os.kill(job.pid, sig)
    out, err, seconds = _finish(job)
    # torchrun passes the signal to every worker, waits for them, then fails with its own
    # SignalException (status 1) whatever they did: what the ranks did is the test.
    assert job.returncode != 0
    step = _assert_stopped_cleanly(folder, out, _torchrun_traceback_only(err), sig)
    assert 1 <= step < 400 and seconds < 60
    _resume_in_one_process(folder, step)


@pytest.mark.slow  # the default suite launches through --nproc once (test below)
def test_nproc_launches_torchrun_and_ctrl_c_stops_the_job_as_one_process(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "job"
    shutil.copytree(REPO / "configs", folder / "configs")
    job = _start(folder, [sys.executable, "-m", "scratchlm", "train", "--nproc", "2", *LONG])
    _wait_for_training(job, folder)
    os.killpg(job.pid, signal.SIGINT)  # Ctrl-C: to scratchlm, which hands it to the workers
    out, err, _ = _finish(job)
    assert job.returncode == 0, err[-3000:]  # as one process stopped by Ctrl-C
    assert "train.parallel is 'none', but --nproc starts several processes: using ddp" in err
    assert "launching torchrun --nproc-per-node 2 --standalone -m scratchlm train" in err
    assert "x 2 ranks" in err
    _assert_stopped_cleanly(folder, out, err, signal.SIGINT)


def test_nproc_trains_on_that_many_ranks_and_exits_0(tmp_path: Path) -> None:
    folder = tmp_path / "job"
    shutil.copytree(REPO / "configs", folder / "configs")
    done = subprocess.run(
        [sys.executable, "-m", "scratchlm", "train", "--nproc", "2", "--config",
         "configs/tiny.toml", "--out_dir", "runs", "--train.max_steps", "2",
         "--train.eval_interval", "2", "--no-samples"],
        cwd=folder, env=_env(folder), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("done: 2 steps") == 1  # rank 0 alone
    assert "x 2 ranks" in done.stderr and "Traceback" not in done.stderr
    assert (folder / RUN / "checkpoints" / "step_000002").is_dir()


@pytest.mark.slow
def test_nproc_passes_on_the_status_of_a_failed_job(tmp_path: Path) -> None:
    folder = tmp_path / "job"
    shutil.copytree(REPO / "configs", folder / "configs")
    # A mistake found only once the ranks run: the tensor-parallel degree must divide n_head.
    failed = subprocess.run(
        [sys.executable, "-m", "scratchlm", "train", "--nproc", "2", *LONG,
         "--train.parallel", "tp", "--model.n_head", "1"],
        cwd=folder, env=_env(folder), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert failed.returncode == 1  # torchrun's status for a failed job
    lines = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "model.n_head = 1" in lines[0], failed.stderr[-3000:]
    assert "using ddp" not in failed.stderr  # tp was asked for


def test_nproc_under_torchrun_or_below_one_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun's, even for one process
    monkeypatch.setenv("RANK", "0")
    assert main(["train", "--nproc", "2", "--config", str(REPO / "configs/tiny.toml")]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "error: --nproc starts torchrun, but this command already runs under torchrun "
        "(WORLD_SIZE is set); drop --nproc and give torchrun --nproc-per-node"
    ]
    monkeypatch.delenv("WORLD_SIZE")
    assert main(["train", "--nproc", "0", "--config", str(REPO / "configs/tiny.toml")]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --nproc must be at least 1 (the number of processes), got 0"
    )
    assert not (tmp_path / "runs").exists()


def test_the_launched_command_line_is_the_one_given_but_nproc() -> None:
    parser = build_parser()
    argv = ["train", "--config", "c.toml", "--overwrite", "--nproc", "4", "--no-samples",
            "--name", "x y", "--train.max_steps", "-3", "--data.sources", "a,b",
            "--train.parallel", "fsdp", "--train.max_steps", "9"]  # fmt: skip
    args = parser.parse_args(argv)
    again = parser.parse_args(["train", *same_command_line(args, given_options(args))])
    assert {**vars(args), "nproc": None} == vars(again)
    # Every option of `scratchlm train` is one same_command_line passes on: a new one fails
    # here until it does.
    resumed = parser.parse_args(["train", "--resume", "runs/x"])
    assert same_command_line(resumed, []) == ["--resume", "runs/x"]
    assert set(vars(args)) == {
        "command", "handler", "config", "resume", "overwrite", "no_samples", "nproc",
        "section_options_given",
    }  # fmt: skip
