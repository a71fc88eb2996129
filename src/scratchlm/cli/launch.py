"""`scratchlm train --nproc N`: the same command as a job of N processes on this machine, with
torchrun started for the user. torchrun itself is the canonical form (it also spans machines);
this runs `python -m torch.distributed.run --nproc-per-node N --standalone -m scratchlm train
...` and exits with its status.

Ctrl-C and SIGTERM go to the workers, not to torchrun. torchrun would forward them too, but it
then fails with a traceback of its own (SignalException, status 1) even when every worker
finished its step, saved and exited cleanly; sent to the workers, the job ends as one process
does (status 0, "stopped at step N"), and a second Ctrl-C still aborts it. torchrun runs in a
session of its own, so a terminal's Ctrl-C (sent to the whole foreground group) reaches the
workers once, through here. Until torchrun has started them, a signal goes to torchrun.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from scratchlm.core.messages import note

# Signals that ask the job to stop: the workers finish the step and save (train/interrupt.py).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def torchrun_command(nproc: int, train_args: list[str]) -> list[str]:
    """torchrun on this machine (--standalone: a rendezvous of its own on a free port) running
    `scratchlm train` with `train_args` on `nproc` processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
            "--standalone", "-m", "scratchlm", "train", *train_args]  # fmt: skip


def launch_job(command: list[str]) -> int:
    """Run torchrun's `command` to its end, passing it this process's stop signals, and return
    its exit status."""
    note(f"launching {shlex.join(['torchrun', *command[3:]])}")
    started: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        if not started:  # nothing launched yet to stop: stop here (main says "interrupted")
            raise KeyboardInterrupt
        for pid in children_of(started[0].pid) or [started[0].pid]:
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.kill(pid, signum)

    # Taken over before torchrun starts, so that no signal finds this process unprepared.
    previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    try:
        started.append(subprocess.Popen(command, start_new_session=True))
        return started[0].wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if started and started[0].poll() is None:  # leaving early (an error here): so does it
            started[0].terminate()


def children_of(parent_pid: int) -> list[int]:
    """The processes `parent_pid` started (torchrun: its workers), from Linux's /proc; none
    elsewhere."""
    children = []
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The parent pid is the 2nd field after the command's name, which may hold spaces.
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or not ours to read
        if parent == parent_pid:
            children.append(int(entry.name))
    return children
