"""Every command that writes meets an unusable output path with one clear line (issue 13).

For each command that writes, three ways an output path cannot be written: a parent folder
without write permission (met for real: the subprocess runs with the capabilities that let
root write anywhere dropped), the wrong kind of thing already at the path (a folder where a
file is expected, or a file where a folder is), and a file among the path's parent folders.
Each must end with exit status 2, one `error:` line naming the path, no traceback, and the
files on disk as they were. Then: every command that would replace its output needs
--overwrite, and the messages for a damaged checkpoint suggest what works.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from scratchlm.cli.main import main
from scratchlm.core.atomic_files import atomic_write_text, staging_folder
from scratchlm.core.errors import ScratchLMError
from scratchlm.core.user_paths import WriteError, check_output, os_error_message

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.toml")
# Root writes through permission bits; without these capabilities it meets them as anyone does.
DROP_CAPS = [
    "setpriv",
    "--inh-caps=-all",
    "--bounding-set=-dac_override,-dac_read_search,-fowner",
]
QUICK_TRAIN = (
    "--train.max_steps 4 --train.eval_interval 2 --train.checkpoint_interval 2 --no-samples"
)

Result = subprocess.CompletedProcess[str]


# --- running the command -----------------------------------------------------------------------


def drop_caps_prefix() -> list[str]:
    """The prefix that makes permission bits bind the subprocess; skip if they cannot."""
    if os.geteuid() != 0:
        return []  # an ordinary user meets permission bits already
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed: cannot drop root's capabilities")
    probe = subprocess.run([*DROP_CAPS, "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"the kernel refuses setpriv: {probe.stderr.decode().strip()}")
    return DROP_CAPS


def run(cwd: Path, env: dict[str, str], command: str, prefix: list[str] | None = None) -> Result:
    argv = [*(prefix or []), sys.executable, "-m", "scratchlm", *shlex.split(command)]
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def ok(result: Result) -> Result:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def user_error(result: Result, *fragments: str) -> str:
    """Exit 2, stderr exactly one `error:` line holding every fragment, no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 (or "folder") of everything under root."""
    return {
        p.relative_to(root).as_posix(): (
            "folder" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        )
        for p in sorted(root.rglob("*"))
    }


# --- what every test shares: a tokenizer, a tiny trained run and its exports --------------------


@dataclass(frozen=True)
class Inputs:
    folder: Path
    env: dict[str, str]

    @property
    def tokenizer(self) -> Path:
        return self.folder / "tok.json"

    @property
    def hf_tokenizer(self) -> Path:
        return self.folder / "tok-hf.json"

    @property
    def run(self) -> Path:
        return self.folder / "runs" / "tiny"

    @property
    def hf_model(self) -> Path:
        return self.folder / "tiny-hf"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    folder = tmp_path_factory.mktemp("inputs")
    env = dict(os.environ, SCRATCHLM_CACHE=str(tmp_path_factory.mktemp("cache")))
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    made = Inputs(folder, env)
    ok(run(folder, env, "tokenizer train pydocs --vocab-size 300 --out tok.json"))
    ok(run(folder, env, "tokenizer export --tokenizer tok.json --format hf --out tok-hf.json"))
    ok(run(folder, env, f"train --config {TINY} --out_dir runs {QUICK_TRAIN}"))
    ok(run(folder, env, "export runs/tiny --format hf --out tiny-hf"))
    return made


# What each command writes: (command line with {out} for the output path, whether the output
# is a folder). {tok}, {hf_tok}, {run} and {hf_model} are the shared inputs.
WRITERS: dict[str, tuple[str, bool]] = {
    "tokenizer train": ("tokenizer train pydocs --vocab-size 300 --out {out}", False),
    "tokenizer export hf": ("tokenizer export --tokenizer {tok} --format hf --out {out}", False),
    "tokenizer export gpt2": (
        "tokenizer export --tokenizer {tok} --format gpt2 --out {out}",
        True,
    ),
    "tokenizer export tiktoken": (
        "tokenizer export --tokenizer {tok} --format tiktoken --out {out}",
        False,
    ),
    "tokenizer import": ("tokenizer import {hf_tok} --format hf --out {out}", False),
    "tokenizer study": (
        "tokenizer study --input pydocs --sizes 300 --width 8 --out {out}",
        True,
    ),
    "data prepare": ("data prepare pydocs --tokenizer {tok} --out {out}", True),
    "train": (f"train --config {TINY} {QUICK_TRAIN} --out_dir {{parent}} --name {{name}}", True),
    "export hf": ("export {run} --format hf --out {out}", True),
    "export gguf": ("export {run} --format gguf --out {out}", False),
    "import hf": ("import hf {hf_model} --out {out}", True),
    "import gguf": ("import gguf {hf_tok} --out {out}", True),
}


def command_line(name: str, inputs: Inputs, out: Path) -> str:
    template, _ = WRITERS[name]
    return template.format(
        out=shlex.quote(str(out)),
        parent=shlex.quote(str(out.parent)),
        name=shlex.quote(out.name),
        tok=inputs.tokenizer,
        hf_tok=inputs.hf_tokenizer,
        run=inputs.run,
        hf_model=inputs.hf_model,
    )


@pytest.mark.parametrize("name", list(WRITERS))
def test_read_only_parent_folder(name: str, inputs: Inputs, tmp_path: Path) -> None:
    prefix = drop_caps_prefix()
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "keep.txt").write_text("mine")
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    before = snapshot(tmp_path)
    out = locked / "output"
    try:
        result = run(tmp_path, inputs.env, command_line(name, inputs, out), prefix)
        user_error(result, f"cannot write {out}", "permission denied", "choose a folder")
        assert snapshot(tmp_path) == before
    finally:
        locked.chmod(stat.S_IRWXU)


@pytest.mark.parametrize("name", list(WRITERS))
def test_the_wrong_kind_of_thing_at_the_output(name: str, inputs: Inputs, tmp_path: Path) -> None:
    out = tmp_path / "output"
    _, folder = WRITERS[name]
    if folder:  # a file where a folder is expected
        out.write_text("mine")
        expected = "it is a file; give a folder"
    else:  # a folder where a file is expected
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        expected = "it is a folder; give a file name"
    before = snapshot(tmp_path)
    result = run(tmp_path, inputs.env, command_line(name, inputs, out) + " --overwrite")
    user_error(result, f"cannot write {out}", expected)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", list(WRITERS))
def test_a_file_among_the_parent_folders(name: str, inputs: Inputs, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("mine")
    out = tmp_path / "afile" / "deeper" / "output"
    before = snapshot(tmp_path)
    result = run(tmp_path, inputs.env, command_line(name, inputs, out))
    user_error(result, f"cannot write {out}", f"{tmp_path / 'afile'} is a file, not a folder")
    assert snapshot(tmp_path) == before


# plot writes into the run it is given, not to a path of its own.


def test_plot_into_a_read_only_run(inputs: Inputs, tmp_path: Path) -> None:
    prefix = drop_caps_prefix()
    run_dir = tmp_path / "tiny"
    shutil.copytree(inputs.run, run_dir)
    run_dir.chmod(stat.S_IRUSR | stat.S_IXUSR)
    before = snapshot(tmp_path)
    try:
        result = run(tmp_path, inputs.env, f"plot {run_dir}", prefix)
        user_error(result, f"cannot write {run_dir / 'loss.png'}", "permission denied")
        assert snapshot(tmp_path) == before
    finally:
        run_dir.chmod(stat.S_IRWXU)


def test_plot_where_a_folder_holds_the_plot_name(inputs: Inputs, tmp_path: Path) -> None:
    run_dir = tmp_path / "tiny"
    shutil.copytree(inputs.run, run_dir)
    (run_dir / "lr.png").unlink(missing_ok=True)
    (run_dir / "lr.png").mkdir()
    before = snapshot(tmp_path)
    result = run(tmp_path, inputs.env, f"plot {run_dir}")
    user_error(result, f"cannot write {run_dir / 'lr.png'}", "it is a folder")
    assert snapshot(tmp_path) == before


# --- one rule for replacing output: --overwrite --------------------------------------------------

REPLACERS = {
    name: WRITERS[name]
    for name in (
        "tokenizer train",
        "tokenizer export hf",
        "tokenizer export tiktoken",
        "tokenizer import",
        "tokenizer study",
        "data prepare",
        "export hf",
        "import hf",
    )
}


@pytest.mark.parametrize("name", list(REPLACERS))
def test_replacing_output_needs_overwrite(name: str, inputs: Inputs, tmp_path: Path) -> None:
    out = tmp_path / "output"
    command = command_line(name, inputs, out)
    ok(run(tmp_path, inputs.env, command))
    before = snapshot(tmp_path)
    user_error(run(tmp_path, inputs.env, command), "already", "--overwrite")
    assert snapshot(tmp_path) == before
    ok(run(tmp_path, inputs.env, command + " --overwrite"))


# --- the pieces, in process ---------------------------------------------------------------------


def test_atomic_writes_name_the_users_path_not_their_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("mine")
    target = tmp_path / "afile" / "out.json"
    with pytest.raises(WriteError) as caught:
        atomic_write_text(target, "{}")
    assert caught.value.filename == str(target)
    assert os_error_message(caught.value) == (
        f"cannot write {target}: {tmp_path / 'afile'} is a file, not a folder; choose another path"
    )
    with pytest.raises(WriteError) as caught, staging_folder(target):
        pass
    assert caught.value.filename == str(target)


@pytest.mark.parametrize(
    ("code", "fragment"),
    [
        (errno.EACCES, "permission denied; choose a folder you can write to"),
        (errno.EROFS, "the file system is read-only"),
        (errno.ENOSPC, "the disk is full"),
        (errno.EISDIR, "it is a folder; give a file name"),
        (errno.ELOOP, "a symbolic link in it loops back on itself"),
        (errno.ENAMETOOLONG, "the name is too long"),
    ],
)
def test_main_turns_an_os_error_on_a_path_into_one_line(
    code: int,
    fragment: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import scratchlm.cli.plot as plot_command

    def fails(_: object) -> None:
        raise WriteError(code, os.strerror(code), "somewhere/out.bin")

    monkeypatch.setattr(plot_command, "cmd_plot", fails)
    assert main(["plot", "run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {Path('somewhere/out.bin')}: {fragment}"), err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_main_leaves_an_os_error_without_a_path_as_a_bug(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import scratchlm.cli.plot as plot_command

    def fails(_: object) -> None:
        raise OSError(errno.EIO, "input/output error")

    monkeypatch.setattr(plot_command, "cmd_plot", fails)
    with pytest.raises(OSError, match="input/output error"):
        main(["plot", "run"])


@pytest.mark.parametrize("make", [Path.mkdir, Path.touch], ids=["folder", "file"])
def test_check_output_refuses_the_wrong_kind(make: Callable[[Path], None], tmp_path: Path) -> None:
    out = tmp_path / "out"
    make(out)
    folder = make is Path.touch  # a folder is wanted where a file is, and the reverse
    with pytest.raises(ScratchLMError, match=f"cannot write {out}: it is a"):
        check_output(out, folder=folder)
    check_output(out, folder=not folder)  # the right kind passes
    assert sorted(tmp_path.iterdir()) == [out]  # the write check leaves nothing behind


def test_damaged_checkpoint_advice_suggests_what_works(tmp_path: Path) -> None:
    from scratchlm.runs.checkpoint import damaged_checkpoint_advice

    run_dir = tmp_path / "runs" / "tiny"
    for step in (10, 20):
        (run_dir / "checkpoints" / f"step_{step:06d}").mkdir(parents=True)
    latest = run_dir / "checkpoints" / "step_000020"
    advice = damaged_checkpoint_advice(latest)
    # train --resume has no --checkpoint: it is told to delete the damaged one instead.
    assert f"delete {latest}" in advice and f"train --resume {run_dir}" in advice
    assert f"--checkpoint {run_dir / 'checkpoints' / 'step_000010'}" in advice
    assert "retrain" in damaged_checkpoint_advice(run_dir / "checkpoints" / "step_000010")
