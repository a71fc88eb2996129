"""GGUF files as scratchlm runs.

`import_gguf_run` turns a GGUF file (Llama, Qwen3, Arcee, GPT-NeoX, StableLM, GPT-2) into an
ordinary run directory (config.toml, tokenizer.json, a weights-only checkpoint, the chat
template), so generate, eval and export work on it; `export_gguf_run` writes a run's model back
out, in f32, f16 or quantised.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from scratchlm.core.atomic_files import atomic_write_text
from scratchlm.core.user_paths import refuse_existing
from scratchlm.model import GPT
from scratchlm.runs.gguf_file import GGUFModel, read_gguf, write_gguf
from scratchlm.runs.imported import save_imported_run
from scratchlm.runs.layout import RunPaths, token_role_ids
from scratchlm.runs.loading import load_trained_model


def import_gguf_run(
    path: str | os.PathLike[str], run_dir: str | os.PathLike[str], overwrite: bool = False
) -> GPT:
    """Make `run_dir` a scratchlm run of the GGUF model at `path` (config.toml,
    tokenizer.json, one weights-only checkpoint) and return its model."""
    from scratchlm.model.hf_format import gpt_from_hf_state_dict

    run_dir = Path(run_dir)
    refuse_existing(run_dir, overwrite)  # before the slow read
    model = read_gguf(path)
    config, state = _padded_to_tokenizer(model)
    gpt = gpt_from_hf_state_dict(config, state, where=str(path))
    roles = {
        role: int(config[f"{role}_token_id"])
        for role in ("bos", "eos", "pad")
        if config.get(f"{role}_token_id") is not None
    }
    save_imported_run(
        run_dir, gpt, model.tokenizer, source=str(path), overwrite=overwrite, token_roles=roles
    )
    if model.chat_template:
        # How the model's authors format a conversation, for chat front ends (render_chat).
        atomic_write_text(RunPaths(run_dir).chat_template, model.chat_template)
    return gpt


def export_gguf_run(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str] | None = None,
    dtype: str = "f32",
) -> GPT:
    """Write the model of a run (default: its latest checkpoint) as a GGUF file, with its
    tokenizer and chat template, in the architecture its HF export has (hf_model); returns
    the model. `dtype`: the weight matrices' type (GGUF_DTYPES)."""
    from scratchlm.model.hf_format import hf_model

    _, tokenizer, model = load_trained_model(
        Path(run_dir), Path(checkpoint) if checkpoint else None
    )
    _, hf_config, state = hf_model(model)  # a model no architecture carries: one line
    template_path = RunPaths(Path(run_dir)).chat_template
    template = template_path.read_text(encoding="utf-8") if template_path.is_file() else None
    roles = token_role_ids(Path(run_dir), tokenizer)
    write_gguf(
        out,
        {**hf_config, **{f"{role}_token_id": i for role, i in roles.items()}},
        state,
        tokenizer,
        chat_template=template,
        dtype=dtype,
        name=Path(run_dir).name,
    )
    return model


# The embedding and head of each architecture (hf_format's names), padded on import.
_EMBEDDINGS = (
    "model.embed_tokens.weight",
    "lm_head.weight",
    "gpt_neox.embed_in.weight",
    "embed_out.weight",
    "transformer.wte.weight",
)


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
    for name in _EMBEDDINGS:
        if name in state:
            weight = state[name]
            state[name] = torch.cat([weight, weight.new_zeros(extra, weight.shape[1])])
    return {**model.config, "vocab_size": model.tokenizer.vocab_size}, state
