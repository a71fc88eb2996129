"""A LoRA adapter in the format of Hugging Face's `peft` library, for the model's HF export.

PEFT keeps an adapter as adapter_config.json (peft_type LORA, r, lora_alpha, target_modules,
...) and adapter_model.safetensors, whose tensors are named after the modules of the
transformers model: base_model.model.<module>.lora_A.weight (r, in) and .lora_B.weight (out, r).
`peft.PeftModel.from_pretrained(hf_model, folder)` then computes exactly what our adapted model
does, with hf_model the export of the same base (runs.hf.export_hf_run).

    Llama   every layer of ours is a module there: q -> model.layers.N.self_attn.q_proj, k, v,
            o -> o_proj, gate -> mlp.gate_proj, up, down -> mlp.down_proj: name for name.
    Qwen3, StableLM  the same names (Qwen3's q and k norms are not adapted).
    Arcee   the same names; its ReLU² MLP has no gate, and our up is all of c_fc there too.
    GPT-NeoX  q, k and v share attention.query_key_value (an nn.Linear), whose rows go head by
            head (H, 3, D) where ours go q, k, v (3, H, D): as GPT-2's, with each adapter's B
            rows scattered to where its rows are there. o -> attention.dense, up ->
            mlp.dense_h_to_4h, down -> mlp.dense_4h_to_h.
    GPT-2   q, k and v share one module, attn.c_attn (a Conv1D: fan_in_fan_out), as in ours.
            Their adapters become one of rank (number of them) x r: A stacked, B block-diagonal
            with zero rows for the parts not adapted, and lora_alpha raised alike, so the scale
            alpha / r is unchanged (rank_pattern, alpha_pattern). o -> attn.c_proj,
            up -> mlp.c_fc, down -> mlp.c_proj.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import safetensors.torch
import torch
from torch import Tensor, nn

from scratchlm.core.atomic_files import atomic_write_text, fsync_dir, staging_folder
from scratchlm.core.errors import ScratchLMError
from scratchlm.core.user_paths import refuse_existing
from scratchlm.finetune.lora import LoRAAdapter, adaptable_layers, lora_adapters, lora_config
from scratchlm.model import GPT
from scratchlm.model.hf_format import Architecture, hf_architecture

PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"

# Our layer kind -> (the module of a transformers block that holds it, by its name after the
# block's prefix): the Llama names, then the GPT-2 ones.
_LLAMA_MODULES = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}
_GPT2_MODULES = {
    "q": "attn.c_attn",
    "k": "attn.c_attn",
    "v": "attn.c_attn",
    "o": "attn.c_proj",
    "up": "mlp.c_fc",
    "down": "mlp.c_proj",
}
_NEOX_MODULES = {
    "q": "attention.query_key_value",
    "k": "attention.query_key_value",
    "v": "attention.query_key_value",
    "o": "attention.dense",
    "up": "mlp.dense_h_to_4h",
    "down": "mlp.dense_4h_to_h",
}
_BLOCK_PREFIX = {
    "llama": "model.layers.",
    "qwen3": "model.layers.",
    "stablelm": "model.layers.",
    "arcee": "model.layers.",
    "gpt2": "transformer.h.",
    "gpt_neox": "gpt_neox.layers.",
}


@dataclass
class _PeftModule:
    """One adapted module of the transformers model: its adapters and their rows there."""

    rows: int  # the module's output rows
    parts: list[tuple[Tensor, LoRAAdapter]]  # (the module's row of each adapter row, adapter)


def export_peft_adapter(
    model: GPT,
    folder: str | os.PathLike[str],
    base_model_name_or_path: str = "",
    overwrite: bool = False,
) -> Path:
    """Write the model's LoRA adapter as a PEFT adapter folder (adapter_config.json and
    adapter_model.safetensors) for the Hugging Face export of its base model.

    base_model_name_or_path goes into the config for `peft` to find the base (default: the
    base's name in the adapter). Merged or not, the adapter is the same.
    """
    config = lora_config(model)
    if config is None:
        raise ScratchLMError("this model has no LoRA adapters to export; apply_lora(model) first")
    arch = hf_architecture(model.config)  # a ScratchLMError for a model with no HF equivalent
    modules = _peft_modules(model, arch)
    tensors: dict[str, Tensor] = {}
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, float] = {}
    for name, module in modules.items():
        A, B = _stacked(module)
        tensors[f"base_model.model.{name}.lora_A.weight"] = A
        tensors[f"base_model.model.{name}.lora_B.weight"] = B
        if len(module.parts) > 1:
            # Rank k·r, alpha k·alpha: the same scale alpha / r as every other module.
            key = re.escape(name)
            rank_pattern[key] = A.size(0)
            alpha_pattern[key] = config.alpha * len(module.parts)
    peft_config: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path or config.base.name or None,
        "revision": None,
        "inference_mode": True,
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": _target_modules(list(modules), arch, model.config.n_layer),
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "fan_in_fan_out": arch == "gpt2",  # GPT-2's Conv1D stores weights as (in, out)
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
    }
    folder = Path(folder)
    refuse_existing(folder, overwrite)
    with staging_folder(folder) as stage:
        safetensors.torch.save_file(
            tensors, str(stage / PEFT_WEIGHTS_FILE), metadata={"format": "pt"}
        )
        atomic_write_text(stage / PEFT_CONFIG_FILE, json.dumps(peft_config, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(stage, folder)
        fsync_dir(folder.parent)
    return folder


def _peft_modules(model: GPT, arch: Architecture) -> dict[str, _PeftModule]:
    """The transformers modules our adapters land in, in model order."""
    names = {"gpt2": _GPT2_MODULES, "gpt_neox": _NEOX_MODULES}.get(arch, _LLAMA_MODULES)
    ours = {layer.name: layer.module for layer in adaptable_layers(model)}
    modules: dict[str, _PeftModule] = {}
    for layer, adapter in lora_adapters(model).items():
        block, kind = layer.split(".")[2], layer.rsplit(".", 1)[1]  # transformer.h.N.attn.q
        name = f"{_BLOCK_PREFIX[arch]}{block}.{names[kind]}"
        rows = torch.arange(adapter.start, adapter.stop)
        if kind not in ("q", "k", "v") or arch not in ("gpt2", "gpt_neox"):
            # A module of its own: its rows are this layer's, from 0.
            modules[name] = _PeftModule(len(rows), [(rows - adapter.start, adapter)])
            continue
        # Part of one q, k, v matrix as ours: GPT-2's in our row order, NeoX's head by head.
        size = cast(nn.Linear, model.get_submodule(ours[layer])).out_features
        if arch == "gpt_neox":
            rows = _neox_qkv_rows(size, model.config.n_head)[rows]
        modules.setdefault(name, _PeftModule(size, [])).parts.append((rows, adapter))
    return modules


def _neox_qkv_rows(size: int, n_head: int) -> Tensor:
    """For each row of our c_attn (3, H, D), its row in NeoX's query_key_value (H, 3, D)."""
    ours = torch.arange(size).reshape(3, n_head, -1)
    where = torch.empty(size, dtype=torch.long)
    where[ours.transpose(0, 1).reshape(-1)] = torch.arange(size)
    return where


def _stacked(module: _PeftModule) -> tuple[Tensor, Tensor]:
    """One module's lora_A (k·r, in) and lora_B (rows, k·r) for its k adapters: A stacked, B
    block-diagonal up to row order, each adapter's block at its own rows; zero elsewhere."""
    A = torch.cat([adapter.A.detach().float().cpu() for _, adapter in module.parts])
    r = module.parts[0][1].A.size(0)
    B = torch.zeros(module.rows, A.size(0))
    for i, (rows, adapter) in enumerate(module.parts):
        B[rows, i * r : (i + 1) * r] = adapter.B.detach().float().cpu()
    return A.contiguous(), B


def _target_modules(names: list[str], arch: Architecture, n_layer: int) -> list[str]:
    """target_modules for peft, which adapts a module whose name ends with one of them: the
    block-relative name (q_proj, attn.c_proj) where every block is adapted there, else the
    full names of the modules."""
    prefix = _BLOCK_PREFIX[arch]
    by_kind: dict[str, list[str]] = {}
    for name in names:
        by_kind.setdefault(name.removeprefix(prefix).split(".", 1)[1], []).append(name)
    targets: list[str] = []
    for kind, full in by_kind.items():
        short = kind if arch == "gpt2" else kind.split(".")[-1]  # GPT-2 has two c_proj
        targets += [short] if len(full) == n_layer else full
    return targets
