"""The `scratchlm` command end to end: every subcommand in a subprocess, as a user runs it.

Each call is `python -m scratchlm ...` with the working directory in a temporary folder and
SCRATCHLM_CACHE pointing at a temporary cache, on the seconds-long configs/tiny.toml recipe.
A user's mistake must end with exit status 2 and exactly one line on stderr, "error: ...",
never a traceback, and must leave the files already on disk as they were.

The tiny run is trained once per module (`trained`); tests that damage or extend a run work on
a copy of it (`run_copy`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from disk_snapshot import snapshot

ROOT = Path(__file__).resolve().parents[1]
TINY = shlex.quote(str(ROOT / "configs" / "tiny.toml"))
TINY_STEPS = 20  # the recipe's max_steps; checkpoint_interval 10 leaves step 10 and step 20

# Text that exercises the byte-level round trip: multi-byte UTF-8, an emoji, CRLF and a lone
# CR, tabs, trailing spaces, and the special token typed as plain characters.
ROUND_TRIP_TEXT = "Héllo, wörld! 👋\r\n\tdef f(x):  \r    return x ** 2\n<|endoftext|> end  "

Result = subprocess.CompletedProcess[str]


class Cli:
    """Runs `python -m scratchlm COMMAND EXTRA...` in a subprocess with the test environment.

    COMMAND is split like a shell line; EXTRA arguments are passed as they are.
    """

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def argv(self, command: str, *extra: object) -> list[str]:
        return [sys.executable, "-m", "scratchlm", *shlex.split(command), *map(str, extra)]

    def __call__(
        self, command: str, *extra: object, cwd: Path, input: bytes | None = None
    ) -> Result:
        done = subprocess.run(
            self.argv(command, *extra),
            cwd=cwd,
            env=self.env,
            input=input,
            capture_output=True,
            timeout=120,
            check=False,
        )
        # Decoded here (not with text=True) so that stdin gets exact bytes.
        return Result(
            done.args, done.returncode, done.stdout.decode("utf-8"), done.stderr.decode("utf-8")
        )

    def start(self, command: str, cwd: Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.argv(command),
            cwd=cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )


# --- helpers -----------------------------------------------------------------------------------


def ok(result: Result) -> Result:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


def assert_user_error(result: Result, *fragments: str) -> str:
    """Exit status 2, stderr exactly one line starting with 'error:' that holds `fragments`."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def int_list(text: str) -> list[int]:
    return [int(word) for word in text.split()]


def metrics(run: Path) -> list[dict[str, float]]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def wait_for_training(proc: subprocess.Popen[bytes], metrics_file: Path, after_step: int) -> None:
    """Block until metrics.jsonl logs a training step past `after_step` (or fail)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"train exited early ({proc.returncode}):\n{out.decode()}\n{err.decode()}")
        if metrics_file.is_file():
            for line in metrics_file.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line being written
                if "train_loss" in record and record["step"] > after_step:
                    return
        time.sleep(0.05)
    proc.kill()
    proc.communicate()
    pytest.fail("training did not log a step within 90 s")


def stop(proc: subprocess.Popen[bytes], sig: signal.Signals) -> tuple[str, str]:
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"train did not stop after {sig.name}:\n{out.decode()}\n{err.decode()}")
    return out.decode("utf-8"), err.decode("utf-8")


def assert_clean_checkpoints(run: Path) -> Path:
    """No temporary folders; the newest checkpoint is complete. Returns it."""
    names = checkpoints(run)
    assert names, "no checkpoint saved"
    assert all(re.fullmatch(r"step_\d{6}", n) for n in names), names  # no .step_*.tmp left
    latest = run / "checkpoints" / names[-1]
    meta = json.loads((latest / "meta.json").read_text(encoding="utf-8"))
    assert meta["step"] == int(names[-1].removeprefix("step_"))
    for name in ("model.safetensors", "optimizer.safetensors", "state.safetensors"):
        assert hashlib.sha256((latest / name).read_bytes()).hexdigest() == meta["sha256"][name]
    return latest


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    env = dict(os.environ)
    env["SCRATCHLM_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    # Tiny models are fastest on one thread, and the machine is shared.
    env["OMP_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    env.pop("PYTHONWARNINGS", None)
    return Cli(env)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder shared by the module's tests, which only read what the fixtures made there."""
    return tmp_path_factory.mktemp("work")


@pytest.fixture(scope="module")
def tok(work: Path, cli: Cli) -> Path:
    result = ok(cli("tokenizer train pydocs --vocab-size 300 --out tok.json", cwd=work))
    assert "saved a 300-token tokenizer to tok.json" in result.stdout
    return work / "tok.json"


@pytest.fixture(scope="module")
def eot_id(tok: Path) -> int:
    return int(json.loads(tok.read_text(encoding="utf-8"))["special_tokens"]["<|endoftext|>"])


@pytest.fixture
def here(tok: Path, tmp_path: Path) -> Path:
    """tmp_path with a copy of the tokenizer in it, as tok.json."""
    shutil.copy(tok, tmp_path / "tok.json")
    return tmp_path


@pytest.fixture(scope="module")
def trained(work: Path, cli: Cli) -> tuple[Path, Result]:
    """work/runs/tiny, trained once on configs/tiny.toml; (run folder, the command's result)."""
    result = ok(cli(f"train --config {TINY} --out_dir runs", cwd=work))
    return work / "runs" / "tiny", result


@pytest.fixture
def run_copy(trained: tuple[Path, Result], tmp_path: Path) -> Path:
    """A private copy of the trained run at tmp_path/runs/tiny, free to damage."""
    copy = tmp_path / "runs" / "tiny"
    shutil.copytree(trained[0], copy)
    return copy


# --- help --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        "",
        "data",
        "data list",
        "data fetch",
        "data prepare",
        "data report",
        "tokenizer",
        "tokenizer train",
        "tokenizer encode",
        "tokenizer decode",
        "train",
        "generate",
        "eval",
    ],
)
def test_help(command: str, tmp_path: Path, cli: Cli) -> None:
    result = ok(cli(f"{command} --help", cwd=tmp_path))
    assert result.stdout.startswith(f"usage: scratchlm {command}".rstrip())
    if command == "train":
        assert "--train.max_steps" in result.stdout  # every config key is listed
        assert "--model.n_head" in result.stdout
    if command == "tokenizer train":
        # Each key's help is the comment beside it in its settings class.
        assert "including the 256 byte tokens and the special tokens" in result.stdout
    if command == "generate":
        assert "--temperature" in result.stdout and "--sample.top_p" in result.stdout


def test_field_comments_are_read_from_the_settings_source() -> None:
    from scratchlm.core.config_files import field_comments
    from scratchlm.data.config import CleaningConfig

    comments = field_comments(CleaningConfig)
    assert comments["filters"] == "false: normalise only, apply no quality rule"
    assert "min_words" in comments  # inherited from data/clean.py's CleanConfig


def test_no_command_prints_help(tmp_path: Path, cli: Cli) -> None:
    result = cli("", cwd=tmp_path)
    assert result.returncode == 2
    assert "usage: scratchlm" in result.stdout and "Traceback" not in result.stderr


def imported_modules(result: Result) -> set[str]:
    """The modules a `python -X importtime` run imported (its stderr lists them)."""
    return {line.rpartition("|")[2].strip() for line in result.stderr.splitlines() if "|" in line}


@pytest.mark.parametrize("command", ["", "train", "data prepare", "tokenizer train", "generate"])
def test_help_does_not_import_torch(command: str, tmp_path: Path, cli: Cli) -> None:
    argv = [sys.executable, "-X", "importtime", "-m", "scratchlm", *command.split(), "--help"]
    done = subprocess.run(argv, cwd=tmp_path, env=cli.env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    modules = imported_modules(Result(argv, 0, done.stdout, done.stderr))
    assert "scratchlm.cli.main" in modules  # the listing is there
    assert "torch" not in modules


def test_unknown_option_suggests_the_closest(here: Path, cli: Cli) -> None:
    before = snapshot(here)
    command = "data prepare pydocs --tokenizer tok.json --out data --data.valfraction 0.2"
    assert_user_error(
        cli(command, cwd=here), "unknown key data.valfraction", "did you mean data.val_fraction?"
    )
    result = cli("train --config nope.toml --train.maxsteps 3", cwd=here)
    assert_user_error(result, "unknown key train.maxsteps", "did you mean train.max_steps?")
    result = cli("tokenizer train pydocs --out t.json --tokenizer.vocabsize 300", cwd=here)
    assert_user_error(result, "did you mean tokenizer.vocab_size?")
    result = cli("tokenizer train pydocs --out t.json --model.n_layer 3", cwd=here)
    assert_user_error(result, "takes only --tokenizer.* keys, not --model.n_layer")
    assert snapshot(here) == before


# --- data --------------------------------------------------------------------------------------


def test_data_list_and_fetch(tmp_path: Path, cli: Cli) -> None:
    own = Cli({**cli.env, "SCRATCHLM_CACHE": str(tmp_path / "fresh-cache")})
    rows = ok(own("data list", cwd=tmp_path)).stdout.splitlines()
    names = {row.split()[0]: row for row in rows}
    assert set(names) == {"shakespeare", "pydocs", "kjv", "chitchat"}
    assert "not fetched" in names["pydocs"]

    result = ok(own("data fetch pydocs", cwd=tmp_path))
    match = re.fullmatch(r"pydocs: (\d+) documents, ([\d.]+) MB in (.+)\n", result.stdout)
    assert match, result.stdout
    folder = Path(match[3])
    assert folder.is_relative_to(tmp_path / "fresh-cache")
    assert len(list(folder.glob("*.txt"))) == int(match[1]) > 10
    assert float(match[2]) > 0.1

    rows = ok(own("data list", cwd=tmp_path)).stdout.splitlines()
    assert "not fetched" not in next(r for r in rows if r.startswith("pydocs"))
    assert_user_error(own("data fetch nosuch", cwd=tmp_path), "'nosuch'", "pydocs")


def test_data_prepare(here: Path, cli: Cli, eot_id: int) -> None:
    result = ok(cli("data prepare pydocs --tokenizer tok.json --out data/pydocs", cwd=here))
    out = here / "data" / "pydocs"
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 300 and meta["eot_id"] == eot_id
    for split in ("train", "val"):
        assert meta[f"{split}_shards"] == [f"{split}_000000.bin"]
        data = (out / f"{split}_000000.bin").read_bytes()
        assert data.startswith(b"SLMTOKEN")  # a token shard (tests/test_shards.py has the rest)
        assert int.from_bytes(data[16:24], "little") == meta[f"{split}_tokens"] > 0
    counts = f"wrote {meta['train_tokens']:,} train and {meta['val_tokens']:,} validation tokens"
    assert result.stdout.startswith(f"{counts} to data/pydocs (2 shards)")


def test_data_prepare_takes_the_data_keys(here: Path, cli: Cli) -> None:
    # --section.key, as train takes it, and the short flags people know set the same key.
    dotted = "--data.val_fraction 0.2 --data.seed 7 --data.text_field text --dedup.near false"
    short = "--val-fraction 0.2 --seed 7 --text-field text --dedup.near=false"
    for name, flags in (("dotted", dotted), ("short", short)):
        ok(cli(f"data prepare pydocs --tokenizer tok.json --out {name} {flags}", cwd=here))
    report = json.loads((here / "dotted" / "meta.json").read_text(encoding="utf-8"))
    assert report == json.loads((here / "short" / "meta.json").read_text(encoding="utf-8"))
    for split in ("train", "val"):
        name = f"{split}_000000.bin"
        assert (here / "dotted" / name).read_bytes() == (here / "short" / name).read_bytes()
    default = ok(cli("data prepare pydocs --tokenizer tok.json --out default", cwd=here))
    val_tokens = json.loads((here / "default" / "meta.json").read_text(encoding="utf-8"))
    assert report["val_tokens"] > val_tokens["val_tokens"] > 0, default.stdout
    # A value the [data] section refuses names the option it came from.
    bad = "data prepare pydocs --tokenizer tok.json --out bad --val-fraction 1.5"
    assert_user_error(cli(bad, cwd=here), "--val-fraction 1.5", "data.val_fraction")
    bad = "data prepare pydocs --tokenizer tok.json --out bad --data.seed x"
    assert_user_error(cli(bad, cwd=here), "--data.seed", "'x'")
    assert not (here / "bad").exists()


# --- tokenizer ---------------------------------------------------------------------------------


def test_tokenizer_train_writes_files(tok: Path) -> None:
    data = json.loads(tok.read_text(encoding="utf-8"))
    assert len(data["merges"]) == 300 - 256 - 1
    assert list(data["special_tokens"]) == ["<|endoftext|>"]
    assert tok.with_suffix(".vocab").is_file()


def test_tokenizer_train_takes_the_tokenizer_keys(tok: Path, here: Path, cli: Cli) -> None:
    ok(cli("tokenizer train pydocs --tokenizer.vocab_size 300 --out dotted.json", cwd=here))
    assert (here / "dotted.json").read_bytes() == tok.read_bytes()
    specials = "--special '<|a|>' --special '<|b|>'"
    ok(cli(f"tokenizer train pydocs --vocab-size 300 {specials} --out short.json", cwd=here))
    dotted = "--tokenizer.special_tokens '<|a|>,<|b|>'"
    ok(cli(f"tokenizer train pydocs --vocab-size 300 {dotted} --out long.json", cwd=here))
    short = json.loads((here / "short.json").read_text(encoding="utf-8"))
    assert list(short["special_tokens"]) == ["<|a|>", "<|b|>"]
    assert (here / "short.json").read_bytes() == (here / "long.json").read_bytes()


def test_encode_decode_round_trip(here: Path, cli: Cli) -> None:
    text = ROUND_TRIP_TEXT
    ids = int_list(ok(cli("tokenizer encode --tokenizer tok.json", text, cwd=here)).stdout)
    assert len(ids) < len(text.encode("utf-8"))  # merges were used
    assert all(0 <= i < 300 for i in ids)

    (here / "text.txt").write_bytes(text.encode("utf-8"))
    from_file = ok(cli("tokenizer encode --tokenizer tok.json --file text.txt", cwd=here))
    assert int_list(from_file.stdout) == ids
    from_stdin = ok(cli("tokenizer encode --tokenizer tok.json", cwd=here, input=text.encode()))
    assert int_list(from_stdin.stdout) == ids

    # Ids as arguments and on standard input. Standard output is exactly the text (a newline
    # is added only on a terminal), so decode(encode(x)) == x byte for byte.
    assert ok(cli("tokenizer decode --tokenizer tok.json", *ids, cwd=here)).stdout == text
    piped = cli("tokenizer decode --tokenizer tok.json", cwd=here, input=from_stdin.stdout.encode())
    assert ok(piped).stdout == text


def test_allow_special(here: Path, cli: Cli, eot_id: int) -> None:
    plain = ok(cli("tokenizer encode --tokenizer tok.json", "<|endoftext|>", cwd=here))
    plain_ids = int_list(plain.stdout)
    assert eot_id not in plain_ids and len(plain_ids) > 1  # just characters

    special = cli(
        "tokenizer encode --tokenizer tok.json --allow-special", "a<|endoftext|>", cwd=here
    )
    assert int_list(ok(special).stdout) == [ord("a"), eot_id]

    for ids in ([eot_id], plain_ids):
        decoded = ok(cli("tokenizer decode --tokenizer tok.json", *ids, cwd=here))
        assert decoded.stdout == "<|endoftext|>"


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        ("decode 72 abc", ["whole numbers", "'abc'"]),
        ("decode 72 300", ["300", "not in the vocabulary"]),
        ("encode --file missing.txt", ["missing.txt"]),
        ("encode --file latin1.txt", ["latin1.txt", "UTF-8"]),
        ("encode --file latin1.txt 'also text'", ["not both"]),
    ],
    ids=["decode-not-a-number", "decode-out-of-range", "encode-missing-file", "encode-not-utf8",
         "encode-file-and-text"],
)  # fmt: skip
def test_tokenizer_use_errors(args: str, fragments: list[str], here: Path, cli: Cli) -> None:
    (here / "latin1.txt").write_bytes("café".encode("latin-1"))
    command, rest = args.split(" ", 1)
    result = cli(f"tokenizer {command} --tokenizer tok.json {rest}", cwd=here)
    assert_user_error(result, *fragments)


@pytest.mark.parametrize(
    "content",
    [b'{"format": "scratchlm-bpe', b"\x00\xff garbage", b"[1, 2]", b'{"merges": 3}'],
    ids=["truncated", "binary", "a-list", "wrong-fields"],
)
def test_garbage_tokenizer_file(content: bytes, tmp_path: Path, cli: Cli) -> None:
    (tmp_path / "bad.json").write_bytes(content)
    for command in ("encode --tokenizer bad.json hello", "decode --tokenizer bad.json 72"):
        assert_user_error(cli(f"tokenizer {command}", cwd=tmp_path), "bad.json")
    assert (tmp_path / "bad.json").read_bytes() == content
    result = cli("tokenizer encode --tokenizer nope.json x", cwd=tmp_path)
    assert_user_error(result, "nope.json")


def test_tokenizer_train_vocab_too_small(here: Path, cli: Cli) -> None:
    before = snapshot(here)
    result = cli("tokenizer train pydocs --vocab-size 256 --out tok.json --overwrite", cwd=here)
    assert_user_error(result, "--vocab-size 256", "257")
    assert snapshot(here) == before


# --- bad corpora -------------------------------------------------------------------------------


def _mkdir_with_csv(folder: Path) -> None:
    (folder / "notes").mkdir()
    (folder / "notes" / "table.csv").write_text("a,b\n")


BAD_SOURCES: dict[str, tuple[Callable[[Path], object], str, str, str | None]] = {
    # kind: (make it in the folder, the source to name, what the error line must also say, and
    # what data prepare's must say: None where it goes on, as for bytes that are not UTF-8,
    # which it replaces and counts; tests/test_pipeline.py has those)
    "empty-file": (lambda d: (d / "empty.txt").write_bytes(b""), "empty.txt", "empty", "empty"),
    "whitespace-file": (
        lambda d: (d / "blank.txt").write_bytes(b" \n\t\r\n  \n"), "blank.txt", "whitespace", "whitespace"
    ),
    "not-utf8": (
        lambda d: (d / "latin1.txt").write_bytes("Grüße\n".encode("latin-1")), "latin1.txt", "UTF-8", None
    ),
    "missing-path": (lambda d: None, "missing.txt", "no such file", "no such file"),
    "folder-without-text": (_mkdir_with_csv, "notes", ".txt", "no text, JSONL or Parquet files"),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(BAD_SOURCES))
def test_bad_corpus(kind: str, here: Path, cli: Cli) -> None:
    make, source, fragment, prepare_fragment = BAD_SOURCES[kind]
    make(here)
    # What is already on disk must survive the failed commands untouched.
    (here / "data").mkdir()
    for name in ("train.bin", "val.bin", "meta.json"):
        (here / "data" / name).write_bytes(f"old {name}".encode())
    before = snapshot(here)

    # --overwrite: the existing tok.json and data/ must survive the failures all the same.
    result = cli(f"tokenizer train {source} --vocab-size 300 --out tok.json --overwrite", cwd=here)
    assert_user_error(result, source, fragment)
    if prepare_fragment is not None:
        result = cli(f"data prepare {source} --tokenizer tok.json --out data --overwrite", cwd=here)
        assert_user_error(result, source, prepare_fragment)
    assert snapshot(here) == before


def test_bad_corpus_in_train(tmp_path: Path, cli: Cli) -> None:
    (tmp_path / "blank.txt").write_text("   \n\n")
    result = cli(f"train --config {TINY} --data.sources blank.txt --out_dir runs", cwd=tmp_path)
    assert_user_error(result, "blank.txt", "empty")
    assert not (tmp_path / "runs" / "tiny" / "checkpoints").exists()


def test_overwrite_with_bad_corpus_keeps_old_run(run_copy: Path, cli: Cli) -> None:
    cwd = run_copy.parents[1]
    before = snapshot(run_copy)
    (cwd / "blank.txt").write_text("   \n\n")
    command = f"train --config {TINY} --data.sources blank.txt --out_dir runs --overwrite"
    assert_user_error(cli(command, cwd=cwd), "blank.txt")
    assert snapshot(run_copy) == before


# --- bad configs -------------------------------------------------------------------------------

BAD_CONFIGS: dict[str, tuple[bytes | None, str, list[str]]] = {
    # kind: (bad.toml's bytes, or None for configs/tiny.toml; overrides; error line fragments)
    "unknown-key-in-toml": (b"[model]\nn_layer = 2\nnhead = 2\n", "", ["bad.toml", "model.nhead", "model.n_head"]),
    "unknown-top-level-key": (b'nme = "x"\n', "", ["bad.toml", "nme", "name"]),
    "unknown-key-on-command-line": (None, "--model.nlayer 3", ["command line", "model.nlayer", "model.n_layer"]),
    "n_embd-not-divisible-by-n_head": (None, "--model.n_head 3", ["model.n_embd (32)", "model.n_head (3)"]),
    "n_embd-not-divisible-in-toml": (b"[model]\nn_embd = 30\nn_head = 4\n", "", ["divisible"]),
    "vocab-below-bytes-plus-specials": (None, "--tokenizer.vocab_size 256", ["tokenizer.vocab_size (256)", "257"]),
    "invalid-toml": (b"[model\nn_layer = 2\n", "", ["bad.toml", "not valid TOML"]),
    "wrong-type-in-toml": (b'[train]\nmax_steps = "ten"\n', "", ["bad.toml", "train.max_steps", "'ten'"]),
    "wrong-type-on-command-line": (None, "--train.max_steps ten", ["--train.max_steps", "'ten'"]),
    "bad-choice": (b'[model]\npos_encoding = "alibi"\n', "", ["model.pos_encoding", "'rope'"]),
    "section-not-a-table": (b"model = 3\n", "", ["bad.toml", "[model]"]),
    "override-without-value": (None, "--train.max_steps", ["--train.max_steps needs a value"]),
    "config-not-utf8": (b'name = "caf\xe9"\n', "", ["bad.toml", "UTF-8"]),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(BAD_CONFIGS))
def test_bad_config(kind: str, trained: tuple[Path, Result], cli: Cli) -> None:
    toml, overrides, fragments = BAD_CONFIGS[kind]
    cwd = trained[0].parents[1]  # the folder with runs/tiny in it: nothing there may change
    config = TINY
    if toml is not None:
        config = "bad.toml"
        (cwd / "bad.toml").write_bytes(toml)
    before = snapshot(cwd)
    try:
        # With --overwrite too: a bad config is refused before anything is replaced.
        result = cli(f"train --config {config} --out_dir runs --overwrite {overrides}", cwd=cwd)
        assert_user_error(result, *fragments)
        assert snapshot(cwd) == before
    finally:
        (cwd / "bad.toml").unlink(missing_ok=True)


def test_missing_config_file(tmp_path: Path, cli: Cli) -> None:
    assert_user_error(
        cli("train --config nope.toml", cwd=tmp_path), "config file not found", "nope.toml"
    )
    assert list(tmp_path.iterdir()) == []


# --- train, resume ----------------------------------------------------------------------------


def test_train_makes_a_run(trained: tuple[Path, Result]) -> None:
    run, result = trained
    done = rf"done: {TINY_STEPS} steps in \d+s \| val loss [\d.]+ \| val perplexity [\d.]+\n"
    assert re.search(done, result.stdout), result.stdout
    assert "run saved in runs/tiny" in result.stdout
    assert "--- sample 1 ---\ndef " in result.stdout  # the recipe's prompt
    for name in ("config.toml", "tokenizer.json", "tokenizer.vocab", "loss.png", "samples.txt"):
        assert (run / name).is_file(), name
    for name in ("train_000000.bin", "val_000000.bin", "meta.json", "report.json", "lengths.png"):
        assert (run / "data" / name).is_file(), name
    # The data went through the pipeline: the recipe normalises (no quality rules) and dedups.
    report = json.loads((run / "data" / "report.json").read_text(encoding="utf-8"))
    assert [stage["stage"] for stage in report["stages"]] == [
        "clean", "exact_dedup", "repeated_lines", "near_dedup"
    ]  # fmt: skip
    assert report["totals"]["documents_out"] == report["totals"]["documents_in"] - 1  # "if"
    assert "data report for runs/tiny/data" in (run / "data" / "report.txt").read_text("utf-8")
    assert "will not load it" not in result.stderr  # GPT-2's shape: it exports, no warning
    assert checkpoints(run) == ["step_000010", f"step_{TINY_STEPS:06d}"]
    assert_clean_checkpoints(run)
    assert [r["step"] for r in metrics(run) if "train_loss" in r] == [5, 10, 15, 20]
    assert [r["step"] for r in metrics(run) if "val_loss" in r] == [10, 20]
    config = tomllib.loads((run / "config.toml").read_text(encoding="utf-8"))
    assert config["model"]["vocab_size"] == 300  # set from the tokenizer


def test_resume_continues_from_checkpoint(run_copy: Path, cli: Cli) -> None:
    cwd = run_copy.parents[1]
    result = ok(cli("train --resume runs/tiny --train.max_steps 30 --no-samples", cwd=cwd))
    assert "resuming from runs/tiny/checkpoints/step_000020 (step 20 of 30)" in result.stdout
    assert "done: 30 steps" in result.stdout
    assert "--- sample" not in result.stdout
    assert checkpoints(run_copy)[-1] == "step_000030"
    latest = assert_clean_checkpoints(run_copy)
    # Continued where it stopped: nothing logged twice, and 30 steps' tokens in all.
    assert [r["step"] for r in metrics(run_copy) if "train_loss" in r] == [5, 10, 15, 20, 25, 30]
    meta = json.loads((latest / "meta.json").read_text(encoding="utf-8"))
    assert meta["tokens_seen"] == 30 * 8 * 32  # steps * batch_size * block_size

    # A max_steps the run has already passed: nothing to do, and nothing changes.
    before = snapshot(run_copy / "checkpoints")
    result = ok(cli("train --resume runs/tiny --train.max_steps 25 --no-samples", cwd=cwd))
    assert "already trained to step 30" in result.stdout and "nothing to do" in result.stdout
    assert snapshot(run_copy / "checkpoints") == before


def test_a_swapped_tokenizer_is_refused(run_copy: Path, cli: Cli) -> None:
    # Same size, other merges: only the fingerprint the checkpoint recorded can tell.
    from pydoc_data.topics import topics

    from scratchlm.tokenizer import BPETokenizer

    other = BPETokenizer.train(topics["if"] * 20, vocab_size=300, pattern="gpt2")
    other.save(run_copy / "tokenizer.json")
    cwd = run_copy.parents[1]
    for command in ("generate runs/tiny --prompt hi", "eval runs/tiny"):
        assert_user_error(cli(command, cwd=cwd), "was trained with another tokenizer")
    result = cli("train --resume runs/tiny --train.max_steps 30 --no-samples", cwd=cwd)
    assert_user_error(result, "was trained with another tokenizer")


def test_train_warns_at_the_start_when_the_model_will_not_export(tmp_path: Path, cli: Cli) -> None:
    # Logit soft-capping: no architecture that transformers and llama.cpp both run has it.
    options = "--model.logit_softcap 30 --train.max_steps 2 --train.eval_interval 2 --no-samples"
    result = ok(cli(f"train --config {TINY} --out_dir runs {options}", cwd=tmp_path))
    # One line, the first thing said, before hours of training: what is wrong and the way out.
    warning = result.stderr.splitlines()[0]
    assert warning.startswith("warning: this model has no Hugging Face equivalent: ")
    assert "no architecture has logit_softcap = 30.0; closest: for GPT-2 it would" in warning
    assert warning.endswith("(it trains all the same; transformers and llama.cpp will not load it)")


def test_train_into_existing_run_needs_overwrite(run_copy: Path, cli: Cli) -> None:
    before = snapshot(run_copy)
    result = cli(f"train --config {TINY} --out_dir runs", cwd=run_copy.parents[1])
    assert_user_error(result, "runs/tiny already holds a trained run", "--resume", "--overwrite")
    assert snapshot(run_copy) == before


def test_resume_with_config_is_refused(run_copy: Path, cli: Cli) -> None:
    before = snapshot(run_copy)
    result = cli(f"train --resume runs/tiny --config {TINY}", cwd=run_copy.parents[1])
    assert_user_error(result, "--resume", "drop --config")
    assert snapshot(run_copy) == before


# --- Ctrl-C and SIGTERM ------------------------------------------------------------------------


def test_ctrl_c_saves_a_checkpoint_and_resumes(tmp_path: Path, cli: Cli) -> None:
    run = tmp_path / "runs" / "tiny"
    proc = cli.start(
        f"train --config {TINY} --out_dir runs --train.max_steps 100000 "
        "--train.checkpoint_interval 100000 --train.eval_interval 100000",
        cwd=tmp_path,
    )
    wait_for_training(proc, run / "metrics.jsonl", after_step=0)
    out, err = stop(proc, signal.SIGINT)
    assert proc.returncode == 0, f"{out}\n{err}"
    assert "Traceback" not in err, err
    assert "SIGINT received" in err
    latest = assert_clean_checkpoints(run)
    step = int(latest.name.removeprefix("step_"))
    assert 5 <= step < 100000
    assert (
        f"stopped at step {step:,}; checkpoint saved to runs/tiny/checkpoints/{latest.name}" in out
    )
    assert "resume with: scratchlm train --resume runs/tiny" in out
    assert "done:" not in out and "--- sample" not in out

    # Resume a few steps past the interruption.
    result = ok(
        cli(f"train --resume runs/tiny --train.max_steps {step + 3} --no-samples", cwd=tmp_path)
    )
    assert f"(step {step:,} of {step + 3:,})" in result.stdout
    assert f"done: {step + 3:,} steps" in result.stdout
    assert checkpoints(run)[-1] == f"step_{step + 3:06d}"
    assert_clean_checkpoints(run)


def test_sigterm_saves_a_checkpoint(run_copy: Path, cli: Cli) -> None:
    command = "train --resume runs/tiny --train.max_steps 100000 --train.checkpoint_interval 100000"
    proc = cli.start(command, cwd=run_copy.parents[1])
    wait_for_training(proc, run_copy / "metrics.jsonl", after_step=TINY_STEPS)
    out, err = stop(proc, signal.SIGTERM)
    assert proc.returncode == 0, f"{out}\n{err}"
    assert "Traceback" not in err, err
    assert "SIGTERM received" in err
    assert "resume with: scratchlm train --resume runs/tiny" in out
    latest = assert_clean_checkpoints(run_copy)
    assert int(latest.name.removeprefix("step_")) > TINY_STEPS
    # keep_checkpoints = 2: a checkpoint before the interrupted one survives. It is step 20,
    # or, when validation improved on the way, the best one saved since (keep_best).
    kept = checkpoints(run_copy)
    assert len(kept) >= 2 and kept[-2] >= f"step_{TINY_STEPS:06d}", kept


# --- generate, eval ----------------------------------------------------------------------------


def test_generate_is_deterministic(trained: tuple[Path, Result], cli: Cli) -> None:
    cwd = trained[0].parents[1]
    greedy = "generate runs/tiny --prompt 'def ' --temperature 0 --max-new-tokens 25"
    first = ok(cli(greedy, cwd=cwd)).stdout
    assert first.startswith("\n--- sample 1 ---\ndef ")
    assert len(first) > len("\n--- sample 1 ---\ndef \n")
    assert ok(cli(greedy, cwd=cwd)).stdout == first
    assert ok(cli(f"{greedy} --no-cache", cwd=cwd)).stdout == first

    # With no options, generate samples with the run's [sample] settings (temperature 0.8,
    # seed 1337): the same draw that training printed and saved, here without the KV cache.
    default = ok(cli("generate runs/tiny --no-cache", cwd=cwd)).stdout
    assert default == "\n" + (trained[0] / "samples.txt").read_text(encoding="utf-8")
    assert default in trained[1].stdout
    assert default != first


def test_generate_batches_prompts_and_stops(trained: tuple[Path, Result], cli: Cli) -> None:
    cwd = trained[0].parents[1]
    greedy = "generate runs/tiny --temperature 0 --max-new-tokens 12 --dtype float32"
    alone = [ok(cli(f"{greedy} --prompt", p, cwd=cwd)).stdout for p in ("def ", "x = [1")]
    both = ok(cli(f"{greedy} --prompt 'def ' --prompt", "x = [1", cwd=cwd)).stdout
    # Batched, the samples are the ones each prompt gets alone (then numbered 1 and 2).
    assert both == alone[0] + alone[1].replace("sample 1", "sample 2")
    completion = alone[0].removeprefix("\n--- sample 1 ---\ndef ").rstrip("\n")
    stop = completion[3:5]  # two characters in the middle, likely across a token boundary
    cut = completion[: completion.index(stop)]
    stopped = ok(cli(f"{greedy} --prompt 'def ' --stop", stop, cwd=cwd)).stdout
    assert stopped == f"\n--- sample 1 ---\ndef {cut}\n"


@pytest.mark.parametrize(
    ("option", "fragment"),
    [
        ("--dtype float16", "unknown dtype 'float16'; use auto, float32 or bfloat16"),
        ("--repetition-penalty 0", "repetition_penalty must be a number > 0"),
        ("--stop ''", "stop string is empty"),
    ],
)
def test_bad_generate_options(
    trained: tuple[Path, Result], cli: Cli, option: str, fragment: str
) -> None:
    assert_user_error(
        cli(f"generate runs/tiny --prompt x {option}", cwd=trained[0].parents[1]), fragment
    )


def test_overlong_prompt_is_cropped(trained: tuple[Path, Result], cli: Cli) -> None:
    command = "generate runs/tiny --max-new-tokens 5 --temperature 0 --prompt"
    result = ok(cli(command, "word " * 100, cwd=trained[0].parents[1]))
    assert "--- sample 1 ---" in result.stdout
    lines = result.stderr.splitlines()
    # First which dtype it decodes in (a float32 model on a CPU: float32), then the note.
    assert lines[0] == "decoding in float32" and len(lines) == 2, result.stderr
    assert lines[1].startswith("note: ") and "cropped" in lines[1] and "last 31 tokens" in lines[1]


def test_generate_says_bfloat16_by_auto_may_differ_from_float32() -> None:
    from scratchlm.cli.generate import decoding_line

    assert decoding_line("torch.float32", "auto", None) == "decoding in float32"
    auto_bf16 = decoding_line("torch.bfloat16", "auto", None)
    assert auto_bf16.startswith("decoding in bfloat16: --dtype auto") and "float32" in auto_bf16
    assert (
        decoding_line("torch.bfloat16", "bfloat16", "int4") == "decoding in bfloat16 (int4 weights)"
    )


def test_eval(trained: tuple[Path, Result], cli: Cli) -> None:
    result = ok(cli("eval runs/tiny", cwd=trained[0].parents[1]))
    expected = r"val loss ([\d.]+) \| val perplexity ([\d.]+) \((\d+) batches\)\n"
    match = re.fullmatch(expected, result.stdout)
    assert match, result.stdout
    loss, ppl = float(match[1]), float(match[2])
    assert 0 < loss < math.log(300) + 0.5  # trained a little: about uniform over 300 at worst
    assert ppl == pytest.approx(math.exp(loss), rel=1e-3)
    assert match[3] == "2"  # the recipe's eval_batches


def test_run_with_old_token_files_is_explained(run_copy: Path, cli: Cli) -> None:
    # Before token shards, a run's data was a headerless train.bin / val.bin.
    data = run_copy / "data"
    for path in data.iterdir():
        path.unlink()
    for name in ("train.bin", "val.bin"):
        (data / name).write_bytes(bytes(1000))
    (data / "meta.json").write_text('{"dtype": "uint16"}', encoding="utf-8")
    before = snapshot(run_copy)
    cwd = run_copy.parents[1]
    for command in ("eval runs/tiny", "train --resume runs/tiny"):
        assert_user_error(cli(command, cwd=cwd), "train.bin / val.bin", "--overwrite")
    assert snapshot(run_copy) == before


@pytest.mark.parametrize(
    ("command", "fragment"),
    [
        ("eval runs/tiny --batches -1", "--batches must be at least 1"),
        ("eval runs/tiny --batches 0", "--batches must be at least 1"),
        ("generate runs/tiny --prompt x --num-samples 0", "--num-samples must be at least 1"),
    ],
)
def test_bad_numbers_are_refused(command: str, fragment: str, tmp_path: Path, cli: Cli) -> None:
    # Checked before the run is even looked for.
    assert_user_error(cli(command, cwd=tmp_path), fragment)


def test_generate_not_a_run(tmp_path: Path, cli: Cli) -> None:
    (tmp_path / "notarun").mkdir()
    (tmp_path / "notarun" / "readme.txt").write_text("hello")
    before = snapshot(tmp_path)
    result = cli("generate notarun --prompt x", cwd=tmp_path)
    assert_user_error(result, "notarun", "not a scratchlm run")
    assert snapshot(tmp_path) == before


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) - 64, len(data) - 32):  # inside the last tensor, not the header
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate_and_fix_checksum(path: Path) -> None:
    # Damaged, with its checksum updated to match: the safetensors reader must still refuse it.
    _truncate(path)
    meta_path = path.parent / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["sha256"][path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    meta_path.write_text(json.dumps(meta), encoding="utf-8")


GENERATE = "generate runs/tiny --prompt 'def ' --max-new-tokens 5"


@pytest.mark.parametrize(
    ("damage", "fragment", "commands"),
    [
        (_truncate, "does not match its checksum", [GENERATE, "eval runs/tiny"]),
        (_flip_bytes, "does not match its checksum", [GENERATE]),
        (_truncate_and_fix_checksum, "truncated or corrupted", ["eval runs/tiny"]),
    ],
    ids=["truncated", "bytes-flipped", "truncated-checksum-updated"],
)
def test_damaged_checkpoint(
    damage: Callable[[Path], None], fragment: str, commands: list[str], run_copy: Path, cli: Cli
) -> None:
    damage(run_copy / "checkpoints" / "step_000020" / "model.safetensors")
    before = snapshot(run_copy)
    cwd = run_copy.parents[1]
    for command in commands:
        line = assert_user_error(cli(command, cwd=cwd), fragment)
        assert "step_000020" in line and "model.safetensors" in line
    assert snapshot(run_copy) == before  # the damaged checkpoint is reported, not removed
    if damage is _truncate:
        # The earlier checkpoint still works, as the message suggests.
        earlier = "--checkpoint runs/tiny/checkpoints/step_000010"
        result = ok(cli(f"{GENERATE} {earlier}", cwd=cwd))
        assert result.stdout.startswith("\n--- sample 1 ---\ndef ")


def test_resume_refuses_to_change_the_model(run_copy: Path, cli: Cli) -> None:
    before = snapshot(run_copy)
    result = cli("train --resume runs/tiny --model.n_layer 3", cwd=run_copy.parents[1])
    assert_user_error(result, "--model.n_layer cannot change when resuming")
    assert snapshot(run_copy) == before


def test_resume_remembers_a_new_max_steps(run_copy: Path, cli: Cli) -> None:
    cwd = run_copy.parents[1]
    ok(cli("train --resume runs/tiny --train.max_steps 25 --no-samples", cwd=cwd))
    assert "max_steps = 25" in (run_copy / "config.toml").read_text(encoding="utf-8")
    result = ok(cli("train --resume runs/tiny", cwd=cwd))
    assert "already trained to step 25" in result.stdout
