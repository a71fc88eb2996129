"""Running untrusted Python (a model's code) so that it cannot hurt the machine.

Each program runs in its own process tree, started through a small launcher:

    host ──► launcher (own session, scrubbed environment, no inherited files)
               │ unshare: new network, PID and mount namespaces where the kernel allows
               └─► program: PID 1 of its namespace, fresh tmpfs as /tmp (its working folder),
                   rlimits (CPU time, address space, file size, open files, processes), its own
                   user id (when we are root), then `python -I -S program.py`

What each layer stops:
- network namespace: no interface but a loopback that is down, so no connection anywhere
  (without one, a Python audit hook refuses sockets and ctypes instead, and the report says so);
- PID namespace: the program sees only its own processes and cannot signal ours; when it
  exits or is killed, the kernel kills every process it started (fork bombs included);
- mount namespace: /tmp, /var/tmp and /dev/shm are fresh size-limited tmpfs, so writes stay
  small and vanish with it; a fresh /proc shows only its own processes;
- its own user id (an unused number, one per run): our files are not writable to it, our
  processes not signalable, and RLIMIT_NPROC counts only its own processes;
- rlimits: CPU seconds, address space (a 10 GB allocation fails), file size, open files,
  processes; no core dumps;
- the host: a wall-clock deadline and an output cap, both enforced by killing the whole
  process group; the environment holds only PATH, LANG, HOME and TMPDIR.

If the basic layer (a POSIX system with rlimits) is missing, `check_sandbox` raises a
ScratchLMError naming what is missing: generated code is never run without a sandbox.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import cache

from scratchlm.core.errors import ScratchLMError


@dataclass(frozen=True)
class SandboxLimits:
    """What one program may use."""

    timeout_s: float = 10.0  # wall clock, enforced by the host
    cpu_s: int = 10  # RLIMIT_CPU
    memory_bytes: int = 1 << 30  # RLIMIT_AS: address space
    file_bytes: int = 16 << 20  # RLIMIT_FSIZE: largest file it may write
    tmpfs_bytes: int = 64 << 20  # size of its /tmp (where namespaces allow)
    open_files: int = 64  # RLIMIT_NOFILE
    processes: int = 16  # RLIMIT_NPROC (its own user id's processes)
    output_bytes: int = 1 << 20  # stdout + stderr kept; more kills it


@dataclass(frozen=True)
class ExecutionResult:
    """How a program ended."""

    status: str  # "passed" (exit 0), "failed" (other exit), "timeout", "output-limit"
    returncode: int | None  # exit status; -N: killed by signal N
    output: str  # its stdout and stderr, interleaved, at most limits.output_bytes
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class SandboxReport:
    """Which isolation layers this machine grants (from one trial run)."""

    layers: dict[str, str] = field(default_factory=dict)  # layer -> "on" or why not

    @property
    def network_isolated(self) -> bool:
        return self.layers.get("network namespace") == "on"

    def summary(self) -> str:
        return "; ".join(f"{name}: {state}" for name, state in self.layers.items())


# The launcher runs with `python -I -S -c`, as the host's user, in a new session. It reads
# the program on stdin, isolates itself, forks the program and relays its exit status on the
# status pipe (fd given in argv) as one JSON line, with the layers it got.
_LAUNCHER = r"""
import ctypes, json, os, resource, signal, sys
cfg = json.loads(sys.argv[1])
source = sys.stdin.buffer.read()
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
status_fd = cfg["status_fd"]
libc = ctypes.CDLL(None, use_errno=True)
layers = {}
def unshare(name, flag):
    ok = libc.unshare(flag) == 0
    layers[name] = "on" if ok else "off (" + os.strerror(ctypes.get_errno()) + ")"
    return ok
net = unshare("network namespace", 0x40000000)
pidns = unshare("PID namespace", 0x20000000)
mntns = unshare("mount namespace", 0x00020000)
root = os.geteuid() == 0
prefix = cfg["python_prefix"]
def reachable(path):
    # Whether another user may reach `path` (every folder above it searchable by others).
    while path != "/":
        path = os.path.dirname(path)
        if not os.stat(path).st_mode & 0o001:
            return False
    return True
drop = root and (mntns or reachable(prefix))
uid = cfg["uid_base"] + os.getpid() if drop else os.getuid()
layers["own user id"] = "on" if drop else ("off (not root)" if not root else "off (Python is not readable to other users)")
if not net:
    layers["sockets"] = "refused by a Python audit hook only"
if mntns:
    layers["private /tmp, hidden /root and /home"] = "on"
pid = -1
def stop(signum, frame):
    # The host asks us to end the program (deadline, output cap): we kill it and reap it
    # ourselves, so that as PID 1 of its namespace it takes every process it made along.
    if pid > 0:
        os.kill(pid, signal.SIGKILL)
signal.signal(signal.SIGTERM, stop)
pid = os.fork()
if pid == 0:
    try:
        os.close(status_fd)  # the program must not be able to forge its own exit status
        workdir = cfg["workdir"]
        if mntns:
            MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 32, 4096, 16384
            MS_PRIVATE = 1 << 18
            def mount(source, target, kind, flags, options=None):
                if libc.mount(source, target.encode(), kind, flags, options) != 0:
                    raise OSError(ctypes.get_errno(), "mount " + target)
            mount(None, "/", None, MS_REC | MS_PRIVATE)
            small = ("size=%d,mode=1777" % cfg["tmpfs_bytes"]).encode()
            for place in ("/tmp", "/var/tmp", "/dev/shm"):
                if os.path.isdir(place):
                    mount(b"tmpfs", place, b"tmpfs", MS_NOSUID | MS_NODEV, small)
            # Home folders hold secrets (keys, tokens): hide them, but keep the Python
            # installation at its own path if it lives in one (its library path is absolute).
            stage = "/tmp/.python"
            os.mkdir(stage)
            mount(prefix.encode(), stage, None, MS_BIND | MS_REC)
            for home in ("/root", "/home"):
                if os.path.isdir(home):
                    mount(b"tmpfs", home, b"tmpfs", MS_NOSUID | MS_NODEV, b"size=1m,mode=755")
            os.makedirs(prefix, exist_ok=True)
            mount(stage.encode(), prefix, None, MS_BIND | MS_REC)
            mount(None, prefix, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID)
            libc.umount2(stage.encode(), 2)
            os.rmdir(stage)
            if pidns:
                mount(b"proc", "/proc", b"proc", MS_NOSUID | MS_NODEV)
            workdir = "/tmp/sandbox"
            os.mkdir(workdir, 0o700)
        path = os.path.join(workdir, "program.py")
        with open(path, "wb") as f:
            f.write(source)
        if drop:
            os.chown(workdir, uid, uid)
            os.chown(path, uid, uid)
        os.chdir(workdir)
        for limit, value in cfg["rlimits"].items():
            resource.setrlimit(getattr(resource, limit), (value, value))
        if drop:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the launcher
        argv = [cfg["python"], "-I", "-S"]
        if not net:
            argv += ["-c", cfg["socket_guard"]]
        env = cfg["env"] | {"HOME": workdir, "TMPDIR": workdir}
        os.execve(cfg["python"], argv + ["program.py"], env)
    except BaseException as e:
        os.write(2, ("sandbox: could not start the program: %r\n" % (e,)).encode())
    os._exit(126)
os.close(null)
_, wait_status = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(wait_status)
os.write(status_fd, (json.dumps({"returncode": code, "layers": layers}) + "\n").encode())
"""

# Where there is no network namespace: the program runs after this guard, which refuses every
# socket and every foreign library through an audit hook (which Python code cannot remove).
_SOCKET_GUARD = r"""
import sys
def _refuse(event, args):
    if event.startswith(("socket.", "ctypes.dlopen", "ctypes.dlsym")):
        raise PermissionError("the sandbox refuses " + event)
sys.addaudithook(_refuse)
del _refuse
import runpy
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

# A program runs as user id _SANDBOX_UID_BASE + its launcher's pid: a number no account uses,
# different for every program running at once.
_SANDBOX_UID_BASE = 2_000_000

_KEPT_ENVIRONMENT = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


def run_python(source: str, limits: SandboxLimits | None = None) -> ExecutionResult:
    """Run `source` as a Python program in the sandbox; how it ended. Raises ScratchLMError
    only when the sandbox itself cannot be made (check_sandbox)."""
    check_sandbox()
    result, _ = _execute(source, limits or SandboxLimits())
    return result


def _execute(source: str, limits: SandboxLimits) -> tuple[ExecutionResult, dict[str, str]]:
    """run_python without the check; also the layers the launcher got."""
    workdir = tempfile.mkdtemp(prefix="scratchlm-sandbox-")
    status_read, status_write = os.pipe()
    config = {
        "workdir": workdir,
        "status_fd": status_write,
        "python": os.path.realpath(sys.executable),
        "python_prefix": sys.base_prefix,
        "uid_base": _SANDBOX_UID_BASE,
        "tmpfs_bytes": limits.tmpfs_bytes,
        "env": _KEPT_ENVIRONMENT,
        "socket_guard": _SOCKET_GUARD,
        "rlimits": {
            "RLIMIT_CPU": limits.cpu_s,
            "RLIMIT_AS": limits.memory_bytes,
            "RLIMIT_FSIZE": limits.file_bytes,
            "RLIMIT_NOFILE": limits.open_files,
            "RLIMIT_NPROC": limits.processes,
            "RLIMIT_CORE": 0,
        },
    }
    start = time.monotonic()
    try:
        launcher = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _LAUNCHER, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(_KEPT_ENVIRONMENT),
            cwd=workdir,
            start_new_session=True,  # its own process group, killed as one
            pass_fds=(status_write,),
        )
    except OSError as e:
        os.close(status_read)
        shutil.rmtree(workdir, ignore_errors=True)
        raise ScratchLMError(f"cannot start the code sandbox's launcher ({e})") from None
    finally:
        os.close(status_write)
    assert launcher.stdin is not None and launcher.stdout is not None
    try:
        try:
            launcher.stdin.write(source.encode("utf-8"))
            launcher.stdin.close()
        except BrokenPipeError:  # the launcher died at once; its status says why
            pass
        output, ended = _read_output(launcher.stdout, start + limits.timeout_s, limits.output_bytes)
    finally:
        _stop(launcher)
        launcher.stdout.close()
        with os.fdopen(status_read, "rb") as status_file:
            status_line = status_file.read()
        shutil.rmtree(workdir, ignore_errors=True)
    seconds = time.monotonic() - start
    text = output.decode("utf-8", errors="replace")
    try:
        status = json.loads(status_line.splitlines()[-1])
    except (
        ValueError,
        IndexError,
    ):  # the launcher was killed: a timeout, or the program killed its group
        status = {"returncode": launcher.returncode, "layers": {}}
    if ended != "exited":
        return ExecutionResult(ended, None, text, seconds), status["layers"]
    code = int(status["returncode"])
    return ExecutionResult("passed" if code == 0 else "failed", code, text, seconds), status[
        "layers"
    ]


def _read_output(stream: object, deadline: float, cap: int) -> tuple[bytes, str]:
    """Everything written to `stream` until it closes ("exited"), the deadline passes
    ("timeout") or more than `cap` bytes come ("output-limit")."""
    kept = bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)  # type: ignore[arg-type]
        fd = stream.fileno()  # type: ignore[attr-defined]
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(kept), "timeout"
            if not selector.select(left):
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return bytes(kept), "exited"
            kept += chunk
            if len(kept) > cap:
                return bytes(kept[:cap]), "output-limit"


def _stop(launcher: subprocess.Popen[bytes]) -> None:
    """End the program and everything it started. The launcher kills and reaps it on SIGTERM
    (its PID namespace dies with it); then SIGKILL to the launcher's whole process group and
    to every process of the program's user id catch what a machine without PID namespaces
    leaves (a process that left the group)."""
    if launcher.poll() is None:
        launcher.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            launcher.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait()
    if os.geteuid() == 0:
        _kill_user(_SANDBOX_UID_BASE + launcher.pid)


def _kill_user(uid: int) -> None:
    """SIGKILL every process whose real user id is `uid` (a sandbox's own)."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", encoding="ascii") as status:
                uids = next(line for line in status if line.startswith("Uid:"))
            if int(uids.split()[1]) == uid:
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, StopIteration, ValueError):
            pass  # gone meanwhile


@cache
def check_sandbox() -> SandboxReport:
    """The isolation this machine grants, found by one trial run (cached). Raises
    ScratchLMError, saying what is missing, when the sandbox cannot be made at all."""
    if os.name != "posix" or not sys.platform.startswith("linux"):
        raise ScratchLMError(
            f"the code sandbox needs Linux (rlimits, namespaces); this is {sys.platform}. "
            "Run code evaluations on Linux"
        )
    try:
        import resource  # noqa: F401
    except ImportError:
        raise ScratchLMError(
            "the code sandbox needs Python's resource module (rlimits), missing here"
        ) from None
    result, layers = _execute("print('ok')", SandboxLimits(timeout_s=60))
    if not result.passed or result.output.strip() != "ok":
        raise ScratchLMError(
            f"cannot create the code sandbox: a trial program ended {result.status} "
            f"({result.output.strip()[-300:]})"
        )
    return SandboxReport(layers)
