"""Running training jobs in tests as people run them: torchrun with `-m scratchlm train`, and
the single-process `scratchlm` that reads what they saved, in a folder of their own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port nothing listens on now (for a rendezvous or a process group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def job_env(cache: Path) -> dict[str, str]:
    """One thread per process (2 ranks share the 2 cores), and a cache of the test's own."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "SCRATCHLM_CACHE": str(cache)}


def torchrun_train(cwd: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`torchrun --nproc-per-node 2 -m scratchlm train ARGS` in `cwd`, to its end."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-port", str(free_port()), "-m", "scratchlm", "train", *args]  # fmt: skip
    return subprocess.run(
        command, cwd=cwd, env=job_env(cwd / "cache"), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def scratchlm(cwd: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`scratchlm ARGS` as one process in `cwd`."""
    command = [sys.executable, "-m", "scratchlm", *args]
    return subprocess.run(
        command, cwd=cwd, env=job_env(cwd / "cache"), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
