"""Hugging Face model folders as scratchlm runs.

`import_hf_run` turns a transformers GPT-2 or Llama folder (config.json, model.safetensors,
tokenizer.json) into an ordinary run directory, so generate, eval and export work on it;
`export_hf_run` writes a run's model as such a folder. runs/gguf_runs.py does the same for GGUF.
"""

from __future__ import annotations

import os
from pathlib import Path

from scratchlm.core.errors import ScratchLMError
from scratchlm.core.user_paths import refuse_existing
from scratchlm.model import GPT
from scratchlm.model.hf_format import (
    TOKENIZER_FILE,
    hf_token_roles,
    load_hf_model,
    read_hf_config,
    save_hf_model,
)
from scratchlm.runs.imported import save_imported_run
from scratchlm.runs.layout import token_role_ids
from scratchlm.runs.loading import load_trained_model
from scratchlm.tokenizer.hf_format import hf_tokenizer_text, load_hf_tokenizer


def import_hf_run(
    source: str | os.PathLike[str], out: str | os.PathLike[str], overwrite: bool = False
) -> GPT:
    """Make `out` a scratchlm run of the Hugging Face model folder `source` (config.toml,
    tokenizer.json, one weights-only checkpoint, its bos/eos/pad roles); returns its model."""
    source, out = Path(source), Path(out)
    refuse_existing(out, overwrite)  # before reading anything
    hf_config = read_hf_config(source)  # a missing folder or config.json is named first
    if not (source / TOKENIZER_FILE).is_file():
        raise ScratchLMError(
            f"{source} is missing {TOKENIZER_FILE}; a run needs the model's tokenizer"
        )
    tokenizer = load_hf_tokenizer(source / TOKENIZER_FILE)
    model = load_hf_model(source)
    save_imported_run(
        out,
        model,
        tokenizer,
        source=str(source),
        overwrite=overwrite,
        token_roles=hf_token_roles(hf_config),
    )
    return model


def export_hf_run(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> GPT:
    """Write the model of a run (default: its latest checkpoint) as a folder that transformers
    loads as GPT2LMHeadModel or LlamaForCausalLM, with its tokenizer; returns the model."""
    run_dir, out = Path(run_dir), Path(out)
    refuse_existing(out, overwrite)  # before loading anything
    _, tokenizer, model = load_trained_model(run_dir, Path(checkpoint) if checkpoint else None)
    save_hf_model(
        model,
        out,
        tokenizer_json=hf_tokenizer_text(tokenizer),
        token_ids=token_role_ids(run_dir, tokenizer),
        overwrite=overwrite,
    )
    return model
