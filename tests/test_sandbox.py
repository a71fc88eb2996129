"""The code sandbox: ordinary programs run; each hostile one is stopped, scored as a failure,
and leaves the host as it was (its files, its environment, its processes)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from scratchlm.core.errors import ScratchLMError
from scratchlm.eval import sandbox
from scratchlm.eval.sandbox import SandboxLimits, check_sandbox, run_python

QUICK = SandboxLimits(timeout_s=3.0, cpu_s=3)


def sandbox_processes(user_ids: set[int]) -> list[psutil.Process]:
    """Processes of these sandbox user ids, or children of this test process."""
    found = []
    for proc in psutil.process_iter(["uids"]):
        uids = proc.info["uids"]
        if uids is not None and uids.real in user_ids:
            found.append(proc)
    return found + psutil.Process().children(recursive=True)


@pytest.fixture(autouse=True)
def nothing_left_behind(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Only the user ids of this test's own sandboxes count: a test session beside this one
    # (the whole suite, say) runs sandboxes of its own meanwhile.
    user_ids: set[int] = set()
    stop = sandbox._stop

    def stop_noting_its_user_id(launcher: subprocess.Popen[bytes]) -> None:
        user_ids.add(sandbox._SANDBOX_UID_BASE + launcher.pid)
        stop(launcher)

    monkeypatch.setattr(sandbox, "_stop", stop_noting_its_user_id)
    # Processes earlier tests of the session left running (a worker pool, say) are not ours.
    before = {proc.pid for proc in sandbox_processes(user_ids)}
    yield
    left = [proc for proc in sandbox_processes(user_ids) if proc.pid not in before]
    assert not left, f"processes left behind: {left}"


@pytest.fixture
def host_files() -> Iterator[Path]:
    """A folder of ours the sandbox could name: a file in it must survive every attack.
    It is in the repository (not /tmp, which the sandbox replaces with its own)."""
    folder = Path(__file__).parent / f".sandbox-host-{os.getpid()}"
    folder.mkdir(mode=0o755)
    (folder / "keep.txt").write_text("precious")
    yield folder
    (folder / "keep.txt").unlink(missing_ok=True)
    for extra in folder.iterdir():
        extra.unlink()
    folder.rmdir()


def run(code: str, limits: SandboxLimits = QUICK) -> sandbox.ExecutionResult:
    return run_python(textwrap.dedent(code), limits)


def test_an_ordinary_program_runs_and_its_exit_status_counts() -> None:
    ok = run("import math\nprint(math.factorial(5))")
    assert (ok.status, ok.returncode, ok.output) == ("passed", 0, "120\n")
    bad = run("assert 1 + 1 == 3")
    assert bad.status == "failed" and bad.returncode == 1 and "AssertionError" in bad.output


def test_the_machine_grants_every_isolation_layer() -> None:
    # We run as root on Linux here (and in CI): every layer must be on. Elsewhere this test
    # documents what is missing.
    report = check_sandbox()
    assert report.network_isolated, report.summary()
    for layer in (
        "PID namespace",
        "mount namespace",
        "own user id",
        "read-only file system",
        "private /tmp, hidden /run, /root and /home",
        "fresh /proc",
    ):
        assert report.layers[layer] == "on", report.summary()
    assert report.layers["user namespace"] == "not needed (root)"


def test_an_infinite_loop_is_stopped() -> None:
    result = run("while True:\n    pass", SandboxLimits(timeout_s=2.0, cpu_s=30))
    assert result.status == "timeout" and 1.9 < result.seconds < 5
    # The CPU-time limit stops it too, when it is the shorter one.
    result = run("while True:\n    pass", SandboxLimits(timeout_s=30.0, cpu_s=1))
    assert result.status == "failed" and result.returncode == -9 and result.seconds < 5


def test_a_fork_bomb_is_contained() -> None:
    result = run("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """)
    assert not result.passed and result.seconds < 6


def test_a_10_gb_allocation_fails() -> None:
    result = run("x = bytearray(10 * 1024**3)\nprint(len(x))")
    assert result.status == "failed" and "MemoryError" in result.output


def test_writing_and_deleting_outside_the_work_folder_fails(host_files: Path) -> None:
    result = run(f"""
        import os, shutil
        folder = {str(host_files)!r}
        escapes = []
        for attempt in (
            lambda: open(os.path.join(folder, "keep.txt"), "w").write("gone"),
            lambda: open(os.path.join(folder, "new.txt"), "w").write("planted"),
            lambda: os.remove(os.path.join(folder, "keep.txt")),
            lambda: shutil.rmtree(folder),
            lambda: open({__file__!r}, "a").write("# planted"),
            lambda: open("/etc/scratchlm-planted", "w").write("x"),
        ):
            try:
                attempt()
                escapes.append(attempt)
            except OSError:
                pass
        open("inside.txt", "w").write("its own folder is writable")
        assert not escapes, escapes
        print("contained")
        raise SystemExit(1)
        """)
    assert result.status == "failed" and "contained" in result.output
    assert [p.name for p in host_files.iterdir()] == ["keep.txt"]
    assert (host_files / "keep.txt").read_text() == "precious"
    assert not Path("/etc/scratchlm-planted").exists()


def test_files_in_tmp_do_not_reach_the_host(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("precious")
    result = run(f"import os; os.remove({str(tmp_path / 'keep.txt')!r})")
    assert result.status == "failed" and "FileNotFoundError" in result.output
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_a_socket_reaches_nothing() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        result = run(f"""
            import socket
            s = socket.create_connection(("127.0.0.1", {port}), timeout=1)
            s.sendall(b"leak")
            """)
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert result.status == "failed" and "Error" in result.output


def test_environment_secrets_are_not_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCRATCHLM_FAKE_SECRET", "hunter2-token")
    result = run(f"""
        import os
        print(sorted(os.environ))
        print(os.environ.get("SCRATCHLM_FAKE_SECRET"))
        for pid in ("self", "1", {os.getpid()!r}, {os.getppid()!r}):
            try:
                print(open(f"/proc/{{pid}}/environ", "rb").read())
            except OSError as e:
                print(pid, type(e).__name__)
        assert os.environ.get("SCRATCHLM_FAKE_SECRET")
        """)
    assert result.status == "failed"
    assert "hunter2" not in result.output
    assert "['HOME', 'LANG', 'PATH', 'TMPDIR']" in result.output


def test_killing_the_parent_reaches_nothing_of_ours() -> None:
    parent = os.getppid()
    result = run(f"""
        import os, signal
        for pid in (os.getppid(), {os.getpid()}, {parent}, 1, 0, -1):
            try:
                os.kill(pid, signal.SIGKILL)
                print("sent", pid)
            except OSError as e:
                print("refused", pid, type(e).__name__)
        """)
    # Its parent is outside its PID namespace (getppid() is 0) and our pids do not exist in
    # there; signals to its own group and to -1 reach only itself, PID 1, which ignores them.
    assert f"refused {os.getpid()} ProcessLookupError" in result.output
    assert f"refused {parent} ProcessLookupError" in result.output
    assert psutil.pid_exists(parent) and psutil.Process(parent).status() != "zombie"


def test_printing_a_gigabyte_is_cut_off() -> None:
    limits = SandboxLimits(timeout_s=10.0, cpu_s=10, output_bytes=1 << 20)
    result = run(
        """
        import sys
        block = "x" * (1 << 20)
        for _ in range(1024):
            sys.stdout.write(block)
        """,
        limits,
    )
    assert result.status == "output-limit" and len(result.output) == 1 << 20
    assert result.seconds < 5


def test_the_socket_guard_refuses_sockets_without_a_network_namespace(tmp_path: Path) -> None:
    # The fallback where the kernel grants no network namespace, tried directly.
    (tmp_path / "program.py").write_text("import socket\nsocket.socket()\n")
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", sandbox._SOCKET_GUARD, "program.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "the sandbox refuses socket.__new__" in done.stderr


def test_no_sandbox_means_no_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(ScratchLMError, match="the code sandbox needs Linux"):
        check_sandbox.__wrapped__()


def test_a_program_cannot_forge_its_exit_status() -> None:
    result = run("""
        import json, os
        for fd in range(3, 64):
            try:
                os.write(fd, (json.dumps({"returncode": 0, "layers": {}}) + "\\n").encode())
                print("wrote to", fd)
            except OSError:
                pass
        raise SystemExit(3)
        """)
    assert result.status == "failed" and result.returncode == 3
    assert "wrote to" not in result.output


# --- As a user who is not root -------------------------------------------------------------
# Most users are not root: the sandbox then makes its namespaces inside a user namespace of
# its own. These tests run it in a child process with an unused user id (we are root here),
# over a copy of the package that user may read, with a Python it may run.

USER_ID = 1_900_000 + os.getpid() % 100_000  # no account has it: its processes are the test's

# Runs as USER_ID; prints as JSON the sandbox's layers and how each program (argv[1]) ended.
# With refuse_user_namespaces it first denies itself user namespaces as a kernel that refuses
# them would (user.max_user_namespaces = 0 in one of its own, then exec: no capability left).
_AS_A_USER = r"""
import ctypes, json, os, socket, sys
args = json.loads(sys.argv[1])
if args.pop("refuse_user_namespaces", False):  # (not again once it is done)
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.geteuid(), os.getegid()
    assert libc.unshare(0x10000000) == 0, os.strerror(ctypes.get_errno())
    for path, line in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"{uid} {uid} 1"),
                       ("/proc/self/gid_map", f"{gid} {gid} 1"),
                       ("/proc/sys/user/max_user_namespaces", "0")):
        with open(path, "w") as f:
            f.write(line)
    os.execv(sys.executable, [sys.executable, "-I", __file__, json.dumps(args)])
sys.path.insert(0, args["source"])
from scratchlm.eval.sandbox import SandboxLimits, check_sandbox, run_python
listener = None
if args["unix_socket"]:  # one of ours, in /run (where D-Bus, systemd and docker listen)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(args["unix_socket"])
    listener.listen()
    listener.setblocking(False)
results = {"layers": check_sandbox().layers, "pid": os.getpid()}
for name, (code, timeout_s) in args["programs"].items():
    ran = run_python(code.replace("@RUNNER@", str(os.getpid())),
                     SandboxLimits(timeout_s=timeout_s, cpu_s=30))
    results[name] = {"status": ran.status, "returncode": ran.returncode,
                     "output": ran.output[-2000:], "seconds": ran.seconds}
if listener is not None:
    try:
        listener.accept()
        results["unix socket reached"] = True
    except BlockingIOError:
        results["unix socket reached"] = False
print(json.dumps(results))
"""

# Where the sandbox mounts a fresh tmpfs or an empty folder over ours (sandbox.py).
_HIDDEN_TOPS = ("/tmp", "/var/tmp", "/dev/shm", "/run", "/var/run", "/root", "/home")

# Hostile programs as our user: (code, timeout_s); @PORT@, @FOLDER@ (the user's own folder),
# @UNIX_SOCKET@ and @RUNNER@ (the pid of the process that runs the sandbox) are filled in.
_HOSTILE = {
    "ordinary": ("import math\nprint(math.factorial(5))", 5.0),
    "fork bomb": (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        2.0,
    ),
    "infinite loop": ("while True:\n    pass", 1.5),
    "socket": (
        "import socket\n"
        's = socket.create_connection(("127.0.0.1", @PORT@), timeout=1)\n'
        's.sendall(b"leak")',
        5.0,
    ),
    "writes": (
        textwrap.dedent("""
        import os, shutil
        escapes = []
        for attempt in (
            lambda: open(os.path.join("@FOLDER@", "keep.txt"), "w").write("gone"),
            lambda: open(os.path.join("@FOLDER@", "new.txt"), "w").write("planted"),
            lambda: os.remove(os.path.join("@FOLDER@", "keep.txt")),
            lambda: shutil.rmtree("@FOLDER@"),
        ):
            try:
                attempt()
                escapes.append(attempt)
            except OSError as e:
                print(type(e).__name__, e.errno)
        open("inside.txt", "w").write("its own folder is writable")
        print("escapes", len(escapes))
        """),
        5.0,
    ),
    "kill": (
        textwrap.dedent("""
        import os, signal
        for pid in (@RUNNER@, os.getppid(), 1, 0, -1):
            try:
                os.kill(pid, signal.SIGKILL)
                print("sent", pid)
            except OSError as e:
                print("refused", pid, type(e).__name__)
        """),
        5.0,
    ),
    "undo": (
        textwrap.dedent("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        print("CapEff", open("/proc/self/status").read().split("CapEff:")[1].split()[0])
        print("umount /home", libc.umount2(b"/home", 2), ctypes.get_errno())
        print("remount / writable", libc.mount(None, b"/", None, 32 | 4096, None), ctypes.get_errno())
        print("own user namespace", libc.unshare(0x10000000 | 0x20000))
        print("umount /home there", libc.umount2(b"/home", 2), ctypes.get_errno())
        print("home", os.listdir("/home"), "run", os.listdir("/run"))
        print("processes", [p for p in os.listdir("/proc") if p.isdigit()])
        """),
        5.0,
    ),
    "unix socket": (
        'import socket\nsocket.socket(socket.AF_UNIX).connect("@UNIX_SOCKET@")',
        5.0,
    ),
}


@dataclass
class AsAUser:
    results: dict[str, Any]  # what _AS_A_USER printed
    left_running: list[psutil.Process]  # processes of USER_ID once it had ended
    seconds: float


def _python_for(user_id: int) -> str | None:
    """A Python 3.11+ that `user_id` may run (ours may live in root's home)."""
    for candidate in (os.path.realpath(sys.executable), "/usr/bin/python3"):
        with contextlib.suppress(OSError):
            done = subprocess.run(
                [candidate, "-I", "-c", "import sys; assert sys.version_info >= (3, 11)"],
                user=user_id,
                group=user_id,
                extra_groups=[],
                cwd="/",
                capture_output=True,
            )
            if done.returncode == 0:
                return candidate
    return None


def _user_namespaces_refused() -> str | None:
    """The setting by which this kernel refuses users a user namespace, if one does."""
    for setting, refusing in (
        ("kernel/unprivileged_userns_clone", "0"),
        ("user/max_user_namespaces", "0"),
        ("kernel/apparmor_restrict_unprivileged_userns", "1"),
    ):
        with contextlib.suppress(OSError):
            if Path("/proc/sys", setting).read_text().strip() == refusing:
                return f"{setting} = {refusing}"
    return None


def _processes_of(user_id: int) -> list[psutil.Process]:
    """Processes running as `user_id`, after a moment for those being killed to go."""
    deadline = time.monotonic() + 2
    while True:
        found = [
            proc
            for proc in psutil.process_iter(["uids", "status"])
            if proc.info["uids"] is not None
            and proc.info["uids"].real == user_id
            and proc.info["status"] != psutil.STATUS_ZOMBIE
        ]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _run_as_a_user(workspace: Path, programs: list[str], refuse: bool) -> AsAUser:
    """Run `programs` (names in _HOSTILE) in the sandbox as USER_ID; check that our TCP
    listener, the user's own folder and (where given) its unix socket saw nothing of them."""
    python = _python_for(USER_ID)
    if python is None:
        pytest.skip("no Python here that an unprivileged user may run")
    folder = Path(__file__).parent / f".sandbox-user-{os.getpid()}"  # /tmp would be hidden
    sockets = Path("/run") / f"scratchlm-sandbox-{os.getpid()}"
    folder.mkdir(mode=0o755)
    sockets.mkdir(mode=0o700)
    try:
        (folder / "keep.txt").write_text("precious")
        for path in (folder, folder / "keep.txt", sockets):
            os.chown(path, USER_ID, USER_ID)
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            listener.setblocking(False)
            fill = {
                "@PORT@": str(listener.getsockname()[1]),
                "@FOLDER@": str(folder),
                "@UNIX_SOCKET@": str(sockets / "ours.sock"),
            }
            chosen = {}
            for name in programs:
                code, timeout_s = _HOSTILE[name]
                for mark, value in fill.items():
                    code = code.replace(mark, value)
                chosen[name] = (code, timeout_s)
            args = {
                "refuse_user_namespaces": refuse,
                "source": str(workspace / "src"),
                "unix_socket": fill["@UNIX_SOCKET@"] if "unix socket" in programs else None,
                "programs": chosen,
            }
            start = time.monotonic()
            done = subprocess.run(
                [python, "-I", str(workspace / "as_a_user.py"), json.dumps(args)],
                user=USER_ID,
                group=USER_ID,
                extra_groups=[],
                cwd=workspace,
                env={"PATH": "/usr/bin:/bin"},
                capture_output=True,
                text=True,
                timeout=60,
            )
            seconds = time.monotonic() - start
            left = _processes_of(USER_ID)
            for proc in left:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            with pytest.raises(BlockingIOError):
                listener.accept()
        assert done.returncode == 0, done.stderr
        assert [p.name for p in folder.iterdir()] == ["keep.txt"]
        assert (folder / "keep.txt").read_text() == "precious"
        return AsAUser(json.loads(done.stdout), left, seconds)
    finally:
        shutil.rmtree(folder)
        shutil.rmtree(sockets)


@pytest.fixture(scope="module")
def workspace() -> Iterator[Path]:
    """A copy of the package an unprivileged user may read (our checkout may be private)."""
    if os.geteuid() != 0:
        pytest.skip("running the sandbox as another user needs root")
    folder = Path(tempfile.mkdtemp(prefix="scratchlm-sandbox-user-"))
    try:
        folder.chmod(0o755)  # our own fresh folder: the user reads it and writes nothing there
        shutil.copytree(
            Path(sandbox.__file__).parents[1],  # src/scratchlm
            folder / "src" / "scratchlm",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        (folder / "as_a_user.py").write_text(_AS_A_USER)
        yield folder
    finally:
        shutil.rmtree(folder)


@pytest.fixture(scope="module")
def as_a_user(workspace: Path) -> AsAUser:
    refused = _user_namespaces_refused()
    if refused:
        pytest.skip(f"this kernel refuses users a user namespace ({refused})")
    return _run_as_a_user(workspace, list(_HOSTILE), refuse=False)


def test_as_a_user_every_namespace_comes_from_a_user_namespace(as_a_user: AsAUser) -> None:
    layers = as_a_user.results["layers"]
    assert layers["user namespace"] == "on"
    for layer in (
        "network namespace",
        "PID namespace",
        "mount namespace",
        "read-only file system",
        "private /tmp, hidden /run, /root and /home",
        "fresh /proc",
    ):
        assert layers[layer] == "on", layers
    assert layers["own user id"] == "off (not root: it runs as our user id, without capabilities)"
    assert "sockets" not in layers  # no audit-hook fallback: the network namespace holds
    ordinary = as_a_user.results["ordinary"]
    assert (ordinary["status"], ordinary["returncode"], ordinary["output"]) == (
        "passed",
        0,
        "120\n",
    )


def test_as_a_user_hostile_programs_fail_safely(as_a_user: AsAUser) -> None:
    results = as_a_user.results
    assert results["fork bomb"]["status"] != "passed"
    assert results["fork bomb"]["seconds"] < 5
    assert results["infinite loop"]["status"] == "timeout"
    assert 1.4 < results["infinite loop"]["seconds"] < 4
    # No connection reached our listener (checked by _run_as_a_user) nor our unix socket.
    assert results["socket"]["status"] == "failed" and "OSError" in results["socket"]["output"]
    assert "FileNotFoundError" in results["unix socket"]["output"]
    assert results["unix socket reached"] is False
    # The user's own folder stayed as it was (checked by _run_as_a_user): a read-only mount,
    # or, where the checkout lies under a folder the sandbox replaces (/tmp, /home...), absent.
    writes = results["writes"]["output"]
    tests = Path(__file__).resolve().parent
    hidden = any(tests.is_relative_to(top) for top in _HIDDEN_TOPS)
    refusal = "FileNotFoundError 2" if hidden else "OSError 30"
    assert "escapes 0" in writes and writes.count(refusal) == 4, writes
    # The process that runs the sandbox is out of its reach, and survived to tell.
    assert f"refused {results['pid']} ProcessLookupError" in results["kill"]["output"]
    # No capability left in its user namespace, nor a way to uncover what is hidden.
    undo = results["undo"]["output"]
    for line in (
        "CapEff 0000000000000000",
        "umount /home -1 1",  # EPERM
        "remount / writable -1 1",
        "own user namespace 0",
        "umount /home there -1 22",  # EINVAL: locked in a namespace made by the program
        "home [] run []",
        "processes ['1']",
    ):
        assert line in undo, undo


def test_as_a_user_nothing_is_left_running(as_a_user: AsAUser) -> None:
    assert as_a_user.left_running == []
    assert as_a_user.seconds < 20


def test_where_user_namespaces_are_refused_the_fallback_says_so(workspace: Path) -> None:
    # A kernel that refuses them already needs no help to refuse them.
    refuse = _user_namespaces_refused() is None
    run = _run_as_a_user(workspace, ["ordinary", "fork bomb", "socket"], refuse=refuse)
    layers = run.results["layers"]
    assert layers["user namespace"].startswith("off (refused: "), layers
    for layer in ("network namespace", "PID namespace", "mount namespace"):
        assert layers[layer].startswith("off ("), layers
    assert layers["own user id"] == "off (not root: it runs as our user id)"
    assert layers["sockets"] == "refused by a Python audit hook only"
    assert "read-only file system" not in layers
    assert run.results["ordinary"]["status"] == "passed"
    assert run.results["fork bomb"]["status"] != "passed"
    socket_output = run.results["socket"]["output"]
    assert "the sandbox refuses socket." in socket_output, socket_output
    assert run.left_running == []
