"""A model from elsewhere saved as a run: config.toml, tokenizer.json, one weights-only
checkpoint, and the special tokens it names, so generate, eval and export treat it like a
trained run."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import safetensors.torch
import tomli_w

from scratchlm.core.atomic_files import atomic_write_text, staging_folder
from scratchlm.core.errors import ScratchLMError
from scratchlm.core.user_paths import refuse_existing
from scratchlm.model import GPT
from scratchlm.runs.checkpoint import CHECKPOINT_FORMAT, checkpoint_dir, file_sha256
from scratchlm.runs.layout import TOKEN_ROLES, TOKEN_ROLES_FILE
from scratchlm.tokenizer import BPETokenizer


def save_imported_run(
    run_dir: Path,
    model: GPT,
    tokenizer: BPETokenizer,
    source: str,
    overwrite: bool = False,
    token_roles: dict[str, int] | None = None,
) -> Path:
    """Make `run_dir` a run of an imported model and return it. token_roles maps bos / eos /
    pad to the ids the source named; special tokens among them are kept (token_roles.json).

    Built in a staging folder beside it and renamed into place when complete; an existing
    folder is replaced only with overwrite=True.
    """
    run_dir = Path(run_dir)
    refuse_existing(run_dir, overwrite)
    # A run pairs a model with a tokenizer of exactly its vocabulary size (load_trained_model).
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ScratchLMError(
            f"{source}: the tokenizer has {tokenizer.vocab_size:,} tokens but the model "
            f"{model.config.vocab_size:,} embeddings; scratchlm needs them equal"
        )
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with staging_folder(run_dir) as stage:
        tokenizer.save(stage / "tokenizer.json")
        # The other sections take their defaults when the run's config is loaded.
        config = {"name": run_dir.name, "model": dataclasses.asdict(model.config)}
        atomic_write_text(stage / "config.toml", tomli_w.dumps(config))
        names = {i: token for token, i in tokenizer.special_tokens.items()}
        roles = {
            role: names[i]
            for role, i in (token_roles or {}).items()
            if role in TOKEN_ROLES and i in names
        }
        if roles:
            atomic_write_text(stage / TOKEN_ROLES_FILE, json.dumps(roles, indent=2) + "\n")
        weights = checkpoint_dir(stage, 0)
        weights.mkdir(parents=True)
        safetensors.torch.save_model(model, str(weights / "model.safetensors"))
        meta = {
            "format": CHECKPOINT_FORMAT,
            "step": 0,
            "tokens_seen": 0,
            "best_val_loss": None,
            "extra": {"tokenizer": tokenizer.fingerprint(), "imported_from": source},
            "sha256": {"model.safetensors": file_sha256(weights / "model.safetensors")},
        }
        atomic_write_text(weights / "meta.json", json.dumps(meta, indent=2) + "\n")
        if overwrite and run_dir.exists():
            shutil.rmtree(run_dir)
        os.replace(stage, run_dir)
    return run_dir
