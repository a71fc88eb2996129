"""Running untrusted Python (a model's code) so that it cannot hurt the machine.

Each program runs in its own process tree, started through a small launcher:

    host ──► launcher (own session, scrubbed environment, no inherited files)
               │ not root: a user namespace of its own, where the kernel allows one
               │ unshare: new network, PID and mount namespaces where the kernel allows
               └─► program: PID 1 of its namespace, a read-only file system but for a fresh
                   tmpfs as /tmp (its working folder), rlimits (CPU time, address space, file
                   size, open files, processes), its own user id (when we are root), no
                   capabilities, no new privileges, then `python -I -S program.py`

What each layer stops:
- user namespace (only when we are not root, who needs none): it gives the launcher the
  capabilities the three namespaces below need, with our user and group ids mapped to
  themselves, not to root, so that the program holds no capability once it executes Python
  and cannot undo them (nor can a user namespace it makes itself: the mounts are locked there).
  Linux lets any user make one unless kernel.unprivileged_userns_clone=0 (Debian),
  user.max_user_namespaces=0 or AppArmor's restriction (Ubuntu 24.04) forbids it; the report
  then says "refused" and the fallback below applies;
- network namespace: no interface but a loopback that is down, so no connection anywhere
  (without one, a Python audit hook refuses sockets and ctypes instead, and the report says so);
- PID namespace: the program sees only its own processes and cannot signal ours; when it
  exits or is killed, the kernel kills every process it started (fork bombs included);
- mount namespace: every mount read-only, so that it can write nothing of ours even as our own
  user id; /tmp, /var/tmp and /dev/shm fresh size-limited tmpfs, so its writes stay small and
  vanish with it; /run, /root and /home empty (our keys and tokens, and the D-Bus, systemd and
  docker sockets through which a program of ours could start one outside); a fresh /proc
  showing only its own processes (where the kernel refuses one, /proc is hidden instead);
- its own user id (when we are root: an unused number, one per run): our files are not
  readable to it unless they are to everyone, our processes not signalable. Not root, it runs
  as our user id: it can read what we can outside the folders hidden above;
- rlimits: CPU seconds, address space (a 10 GB allocation fails), file size, open files,
  processes; no core dumps. RLIMIT_NPROC counts the processes of the program's real user id:
  with its own user id only its own; in a user namespace (Linux >= 5.14) only those in the
  namespace, the launcher and the program's (16 leaves it 14 children, however many we run);
  otherwise every process of ours, so that a user already running that many leaves it no fork
  at all (it fails safely). In a PID namespace a fork bomb dies with its PID 1 in any case;
- no new privileges (PR_SET_NO_NEW_PRIVS): a set-user-id program (su, sudo) gains nothing;
- the host: a wall-clock deadline and an output cap, both enforced by killing the whole
  process group; the environment holds only PATH, LANG, HOME and TMPDIR.

Not root, where user namespaces are refused, the fallback is weak and the report says which
layers are off: sockets are refused by the audit hook only; without a PID namespace the
program could signal our processes and one that leaves its process group may outlive it;
without a mount namespace it can write whatever we can. Allow user namespaces (or run as root)
before evaluating code you would not run yourself.

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
    processes: int = 16  # RLIMIT_NPROC (its user id's processes: see the module docstring)
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

    def gaps(self) -> list[str]:
        """What a program could do to us here, through the layers that are off (the weak
        fallback); empty where our files and processes are out of its reach."""
        own_uid = self.layers.get("own user id") == "on"
        gaps = []
        if not own_uid and self.layers.get("read-only file system") != "on":
            gaps.append("write your files")
        if not own_uid and self.layers.get("PID namespace") != "on":
            gaps.append("signal your processes")
        return gaps


def require_sandbox(allow_weak: bool = False) -> SandboxReport:
    """check_sandbox, and a refusal where the sandbox is only the weak fallback (a program
    could write our files or signal our processes) unless the user allowed that."""
    report = check_sandbox()
    if report.gaps() and not allow_weak:
        raise ScratchLMError(
            f"the code sandbox is weak here: a generated program could {' and '.join(report.gaps())} "
            f"({report.summary()}). Run as root or allow unprivileged user namespaces "
            "(sysctl kernel.unprivileged_userns_clone=1), or pass --weak-sandbox to run with "
            "rlimits and the socket guard only"
        )
    return report


# The launcher runs with `python -I -S -c`, as the host's user, in a new session. It reads
# the program on stdin, isolates itself, forks the program and relays its exit status on the
# status pipe (fd given in argv) as one JSON line, with the layers it got.
_LAUNCHER = r"""
import codecs, ctypes, errno, json, os, resource, signal, sys
cfg = json.loads(sys.argv[1])
source = sys.stdin.buffer.read()
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
status_fd = cfg["status_fd"]
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWPID, CLONE_NEWNS = 0x10000000, 0x40000000, 0x20000000, 0x20000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 8, 32, 4096, 16384
MS_NOSYMFOLLOW, MS_NOATIME, MS_NODIRATIME, MS_PRIVATE = 256, 1024, 2048, 1 << 18
MS_RELATIME, MS_STRICTATIME = 1 << 21, 1 << 24
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
layers = {}
def error():
    return os.strerror(ctypes.get_errno())
def unshare(name, flag):
    ok = libc.unshare(flag) == 0
    layers[name] = "on" if ok else "off (" + error() + ")"
    return ok
def enter_user_namespace():
    # A user namespace of our own, where we hold the capabilities that network, PID and mount
    # namespaces need. Our ids map to themselves, not to root: the program is no root in there,
    # so executing Python takes every capability from it and it cannot undo the mounts.
    uid, gid = os.geteuid(), os.getegid()  # before: unmapped ids read as 65534
    if libc.unshare(CLONE_NEWUSER) != 0:
        raise OSError(ctypes.get_errno(), "unshare")
    for name, line in (("setgroups", "deny"), ("uid_map", "%d %d 1" % (uid, uid)),
                       ("gid_map", "%d %d 1" % (gid, gid))):
        fd = os.open("/proc/self/" + name, os.O_WRONLY)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
def user_namespace_refusal():
    # Tried in a child first: a user namespace made but then refused its id maps or its
    # capabilities (AppArmor on Ubuntu 24.04) could not be left again.
    probe = os.fork()
    if probe == 0:
        try:
            enter_user_namespace()
            if libc.unshare(CLONE_NEWNS) != 0:
                raise OSError(ctypes.get_errno(), "unshare")
            os._exit(0)
        except OSError as e:
            os._exit(e.errno if 0 < (e.errno or 0) < 255 else 255)
        except BaseException:
            os._exit(255)
    code = os.waitstatus_to_exitcode(os.waitpid(probe, 0)[1])
    return None if code == 0 else os.strerror(code) if 0 < code < 255 else "unknown error"
root = os.geteuid() == 0
if root:
    layers["user namespace"] = "not needed (root)"
else:
    refusal = user_namespace_refusal()
    if refusal is None:
        enter_user_namespace()
    layers["user namespace"] = "on" if refusal is None else "off (refused: " + refusal + ")"
net = unshare("network namespace", CLONE_NEWNET)
pidns = unshare("PID namespace", CLONE_NEWPID)
mntns = unshare("mount namespace", CLONE_NEWNS)
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
if drop:
    layers["own user id"] = "on"
elif root:
    layers["own user id"] = "off (Python is not readable to other users)"
else:
    layers["own user id"] = "off (not root: it runs as our user id" + (
        ", without capabilities)" if layers["user namespace"] == "on" else ")")
if not net:
    layers["sockets"] = "refused by a Python audit hook only"
def mount(source, target, kind, flags, options=None):
    if libc.mount(source, target, kind, flags, options) != 0:
        raise OSError(ctypes.get_errno(), "mount " + target.decode(errors="replace"))
# Replaced by fresh tmpfs: writable ones for its files, empty read-only ones over what holds our
# secrets and our sockets (keys, tokens; D-Bus, systemd, docker in /run).
SCRATCH = [b"/tmp", b"/var/tmp", b"/dev/shm"]
HIDDEN = [b"/run", b"/var/run", b"/root", b"/home"]
MOUNT_OPTIONS = {b"nosuid": MS_NOSUID, b"nodev": MS_NODEV, b"noexec": MS_NOEXEC,
                 b"noatime": MS_NOATIME, b"nodiratime": MS_NODIRATIME,
                 b"relatime": MS_RELATIME, b"nosymfollow": MS_NOSYMFOLLOW}
def remount_read_only():
    # Every mount it can see becomes read-only: without its own user id the program could
    # write whatever we can. The flags are kept as they are, as a user namespace must.
    tops = {}
    with open("/proc/self/mountinfo", "rb") as info:
        for line in info:
            fields = line.split()
            tops[codecs.escape_decode(fields[4])[0]] = fields[5].split(b",")  # the last: on top
    writable = []
    for point, options in tops.items():
        if any(point == place or point.startswith(place + b"/") for place in SCRATCH + HIDDEN):
            continue
        flags = MS_BIND | MS_REMOUNT | MS_RDONLY
        for option in options:
            flags |= MOUNT_OPTIONS.get(option, 0)
        if not flags & (MS_NOATIME | MS_RELATIME):
            flags |= MS_STRICTATIME
        if libc.mount(None, point, None, flags, None) != 0:
            # A mount point we cannot reach (a private folder of another user's) the program
            # cannot reach either: it holds no capability we lack.
            if ctypes.get_errno() not in (errno.EACCES, errno.ENOENT):
                writable.append("%s (%s)" % (point.decode(errors="replace"), error()))
    return writable
def isolate_files():
    # Its own view of the file system: read-only but for a fresh /tmp, our homes and /run
    # hidden, Python at its own path, a fresh /proc. The layers it got.
    got = {}
    mount(None, b"/", None, MS_REC | MS_PRIVATE)
    python = os.open(prefix, os.O_PATH | os.O_DIRECTORY)  # reached again once hidden
    writable = remount_read_only()
    got["read-only file system"] = "on" if not writable else "partly (%d writable: %s)" % (
        len(writable), ", ".join(writable[:3]) + (", ..." if len(writable) > 3 else ""))
    small = ("size=%d,mode=1777" % cfg["tmpfs_bytes"]).encode()
    for place in SCRATCH + HIDDEN:
        if os.path.isdir(place) and not os.path.islink(place):
            options = small if place in SCRATCH else b"size=1m,mode=755"
            mount(b"tmpfs", place, b"tmpfs", MS_NOSUID | MS_NODEV, options)
    os.makedirs(prefix, exist_ok=True)
    mount(("/proc/self/fd/%d" % python).encode(), prefix.encode(), None, MS_BIND | MS_REC)
    os.close(python)
    for place in HIDDEN:
        if os.path.isdir(place) and not os.path.islink(place):
            mount(None, place, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    got["private /tmp, hidden /run, /root and /home"] = "on"
    if pidns:
        try:
            mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            got["fresh /proc"] = "on"
        except OSError as e:  # refused where /proc is partly covered (containers): hide it all
            mount(b"tmpfs", b"/proc", b"tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, b"size=4k")
            got["fresh /proc"] = "off (" + os.strerror(e.errno) + "; /proc hidden instead)"
    return got
pid = -1
stopping = False
def stop(signum, frame):
    # The host asks us to end the program (deadline, output cap): we kill it and reap it
    # ourselves, so that as PID 1 of its namespace it takes every process it made along.
    global stopping
    stopping = True
    if pid > 0:
        os.kill(pid, signal.SIGKILL)
signal.signal(signal.SIGTERM, stop)
# The program sends the layers it made for itself on this pipe; exec closes it.
setup_read, setup_write = os.pipe()
pid = os.fork()
if pid == 0:
    try:
        os.close(status_fd)  # the program must not be able to forge its own exit status
        os.close(setup_read)
        workdir = cfg["workdir"]
        got = {}
        if mntns:
            got = isolate_files()
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
        if pidns:
            # Its own session: a signal to its process group must not reach the launcher,
            # which is in ours (and, as our user id, its to signal). Outside a PID namespace
            # it stays in our group, the only handle on its processes that we have there.
            os.setsid()
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # no set-user-id program raises it again
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the launcher
        # Fails (EPIPE) if the launcher died before the line above could take effect.
        os.write(setup_write, json.dumps(got).encode())
        argv = [cfg["python"], "-I", "-S"]
        if not net:
            argv += ["-c", cfg["socket_guard"]]
        env = cfg["env"] | {"HOME": workdir, "TMPDIR": workdir}
        os.execve(cfg["python"], argv + ["program.py"], env)
    except BaseException as e:
        os.write(2, ("sandbox: could not start the program: %r\n" % (e,)).encode())
    os._exit(126)
if stopping:  # asked to stop while it was being made
    os.kill(pid, signal.SIGKILL)
os.close(null)
os.close(setup_write)
got = b""
while chunk := os.read(setup_read, 1 << 16):
    got += chunk
layers.update(json.loads(got or b"{}"))
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
