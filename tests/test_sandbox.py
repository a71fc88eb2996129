"""The code sandbox: ordinary programs run; each hostile one is stopped, scored as a failure,
and leaves the host as it was (its files, its environment, its processes)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from scratchlm.core.errors import ScratchLMError
from scratchlm.eval import sandbox
from scratchlm.eval.sandbox import SandboxLimits, check_sandbox, run_python

QUICK = SandboxLimits(timeout_s=3.0, cpu_s=3)


def sandbox_processes() -> list[psutil.Process]:
    """Processes of the sandbox's user ids, or children of this test process."""
    found = []
    for proc in psutil.process_iter(["uids"]):
        uids = proc.info["uids"]
        if uids is not None and uids.real >= 2_000_000:
            found.append(proc)
    return found + psutil.Process().children(recursive=True)


@pytest.fixture(autouse=True)
def nothing_left_behind() -> Iterator[None]:
    # Processes earlier tests of the session left running (a worker pool, say) are not ours.
    before = {proc.pid for proc in sandbox_processes()}
    yield
    left = [proc for proc in sandbox_processes() if proc.pid not in before]
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
    for layer in ("PID namespace", "mount namespace", "own user id"):
        assert report.layers[layer] == "on", report.summary()


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
