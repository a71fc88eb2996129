"""Hugging Face model folders: export a scratchlm GPT, import a GPT-2, Llama, Qwen3, Arcee,
GPT-NeoX or StableLM checkpoint.

A Hugging Face model folder holds config.json (the architecture and its shape) and
model.safetensors (the weights, under transformers' names), or shards of it listed in
model.safetensors.index.json. Six architectures map onto our GPT; GPT-2 here, the others in
modules of their own (hf_llama.py, hf_qwen3.py, hf_arcee.py, hf_neox.py, hf_stablelm.py;
hf_fields.py checks
config.json):

    GPT2LMHeadModel   learned positions, LayerNorm, GELU MLP, multi-head attention; biases
                      everywhere (zeros for a model without).
                      Same tensor names as ours; its Conv1D layers store weights as (in, out),
                      the transpose of nn.Linear's.
    LlamaForCausalLM  RoPE, RMSNorm, SwiGLU, grouped-query attention (hf_llama.py).
    Qwen3ForCausalLM  Llama with QK-norm (hf_qwen3.py).
    ArceeForCausalLM  Llama with a ReLU² MLP, no gate (hf_arcee.py).
    GPTNeoXForCausalLM  RoPE with LayerNorm and GELU (hf_neox.py), the demo recipe's shape.
    StableLmForCausalLM  RoPE with LayerNorm and SwiGLU, no biases (hf_stablelm.py).

An export takes the first of them that computes exactly what the model does (hf_architecture);
each is one that llama.cpp runs too (runs/gguf_architectures.py). A model no architecture fits
gets one line naming the options and the closest architecture. What has none, in both tools:
QK-norm with ReLU²; logit soft-capping (Gemma 2 and 3 only, whose blocks also normalise each
sublayer's output); a sliding window on every layer (transformers' Mistral and Phi-3 have one,
but llama.cpp runs Mistral as Llama without it and switches Phi-3's off, src/models/phi3.cpp).

The GGUF side (runs/gguf_architectures.py) builds on `hf_model` (a GPT -> its architecture,
config.json and tensors) and `gpt_from_hf_state_dict` (HF-named tensors -> GPT).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import safetensors.torch
from torch import Tensor

from scratchlm.core.atomic_files import fsync_dir
from scratchlm.core.errors import ScratchLMError
from scratchlm.core.user_paths import refuse_existing
from scratchlm.model import hf_arcee, hf_neox, hf_qwen3, hf_stablelm
from scratchlm.model.config import ModelConfig
from scratchlm.model.gpt import GPT
from scratchlm.model.hf_fields import (
    CONFIG_FILE,
    expect_field,
    int_field,
    requirements,
    validated_config,
)
from scratchlm.model.hf_llama import (
    gpt_names_from_llama,
    llama_config_to_model_config,
    llama_state_dict_from_gpt,
    model_config_to_llama_config,
)
from scratchlm.model.loading import gpt_from_state_dict, open_safetensors

Architecture = Literal["gpt2", "llama", "qwen3", "arcee", "gpt_neox", "stablelm"]

# transformers' class of each architecture, and the name the messages use.
HF_CLASSES: dict[Architecture, str] = {
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "arcee": "ArceeForCausalLM",
    "gpt_neox": "GPTNeoXForCausalLM",
    "stablelm": "StableLmForCausalLM",
}
_NAMES: dict[Architecture, str] = {
    "gpt2": "GPT-2",
    "llama": "Llama",
    "qwen3": "Qwen3",
    "arcee": "Arcee",
    "gpt_neox": "GPT-NeoX",
    "stablelm": "StableLM",
}

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


# --- which architecture a config is ------------------------------------------------------------


def hf_architecture(config: ModelConfig) -> Architecture:
    """The transformers architecture that computes exactly what `config` does: the first that
    fits of gpt2, llama, qwen3, arcee, gpt_neox, stablelm; a one-line ScratchLMError (hf_export_problem) when
    none does."""
    needs = _needed_changes(config)
    for arch, changes in needs.items():
        if not changes:
            return arch
    raise ScratchLMError(_problem(needs))


def hf_export_problem(config: ModelConfig) -> str | None:
    """Why `config` cannot be exported to Hugging Face (and GGUF), in one line, or None when it
    can: what training warns about before it starts."""
    needs = _needed_changes(config)
    return None if any(not changes for changes in needs.values()) else _problem(needs)


def _requirements(config: ModelConfig) -> dict[Architecture, dict[str, tuple[Any, Any]]]:
    """Per architecture, {option: (the config's value, the value that architecture needs)}."""

    gpt2 = requirements(
        config, multi_head=True, pos_encoding="learned", norm="layernorm", mlp="gelu", qk_norm=False
    )
    llama = requirements(config, pos_encoding="rope", norm="rmsnorm", mlp="swiglu", qk_norm=False)
    return {
        "gpt2": gpt2,
        "llama": llama,
        "qwen3": hf_qwen3.qwen3_requirements(config),
        "arcee": hf_arcee.arcee_requirements(config),
        "gpt_neox": hf_neox.neox_requirements(config),
        "stablelm": hf_stablelm.stablelm_requirements(config),
    }


def _needed_changes(config: ModelConfig) -> dict[Architecture, dict[str, tuple[Any, Any]]]:
    """Per architecture (in order of preference), the options it would need changed."""
    return {
        arch: {key: (have, want) for key, (have, want) in wanted.items() if have != want}
        for arch, wanted in _requirements(config).items()
    }


def _problem(needs: dict[Architecture, dict[str, tuple[Any, Any]]]) -> str:
    """One line: the options no architecture has, then the changes the two closest
    architectures would need (fewest changes; the earlier on a tie)."""
    nowhere = set.intersection(*(set(changes) for changes in needs.values()))
    order = sorted(needs, key=lambda arch: len(needs[arch]))[:2]  # stable: ties keep preference
    closest = order[0]

    def changes(arch: Architecture) -> str:
        listed = (f"{key} = {have!r} to {want!r}" for key, (have, want) in needs[arch].items())
        return f"for {_NAMES[arch]} it would need to change {', '.join(listed)}"

    head = "this model has no Hugging Face equivalent: "
    if nowhere:
        values = ", ".join(f"{key} = {needs[closest][key][0]!r}" for key in sorted(nowhere))
        head += f"no architecture has {values}; closest: "
    return head + "; ".join(changes(arch) for arch in order)


# --- config.json <-> ModelConfig ---------------------------------------------------------------


def model_config_to_gpt2_config(config: ModelConfig) -> dict[str, Any]:
    """The config.json of GPT2LMHeadModel for a GPT-2-shaped ModelConfig."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": config.mlp_hidden or None,  # None: 4 * n_embd, as our 0
        "activation_function": "gelu_new",  # the tanh approximation, as our MLP uses
        "layer_norm_epsilon": config.norm_eps,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "tie_word_embeddings": config.tie_embeddings,
        "torch_dtype": "float32",
    }


def gpt2_config_to_model_config(hf: Mapping[str, Any], where: str = CONFIG_FILE) -> ModelConfig:
    """A ModelConfig from a GPT-2 config.json."""
    expect_field(hf, "activation_function", ("gelu_new", "gelu_pytorch_tanh"), where, "gelu_new")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf.get(flag, False):
            raise ScratchLMError(f"{where}: {flag} = true is not supported")
    if not hf.get("scale_attn_weights", True):
        raise ScratchLMError(f"{where}: scale_attn_weights = false is not supported")
    n_embd = int_field(hf, "n_embd", where)
    config = ModelConfig(
        vocab_size=int_field(hf, "vocab_size", where),
        block_size=int_field(hf, "n_positions", where),
        n_layer=int_field(hf, "n_layer", where),
        n_head=int_field(hf, "n_head", where),
        n_embd=n_embd,
        mlp_hidden=int(hf.get("n_inner") or 0),  # None: 4 * n_embd, as our 0
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )
    return validated_config(config, where)


def hf_config_to_model_config(hf: Mapping[str, Any], where: str = CONFIG_FILE) -> ModelConfig:
    """A ModelConfig from a config.json of any of the five architectures (by its model_type)."""
    arch = _model_type(hf, where)
    if arch == "gpt2":
        return gpt2_config_to_model_config(hf, where)
    if arch == "llama":
        return llama_config_to_model_config(hf, where)
    if arch == "qwen3":
        return hf_qwen3.qwen3_config_to_model_config(hf, where)
    if arch == "arcee":
        return hf_arcee.arcee_config_to_model_config(hf, where)
    if arch == "stablelm":
        return hf_stablelm.stablelm_config_to_model_config(hf, where)
    return hf_neox.neox_config_to_model_config(hf, where)


def _model_type(hf: Mapping[str, Any], where: str) -> Architecture:
    model_type = hf.get("model_type")
    if model_type not in HF_CLASSES:
        raise ScratchLMError(
            f"{where}: model_type {model_type!r} is not supported; scratchlm imports "
            f"{', '.join(map(repr, HF_CLASSES))} models"
        )
    return model_type  # type: ignore[no-any-return]


# --- tensors: ours <-> transformers' -----------------------------------------------------------


def gpt2_state_dict_from_gpt(model: GPT) -> dict[str, Tensor]:
    """GPT2LMHeadModel's tensors for a GPT-2-shaped model (same names, Conv1D transposed).
    GPT-2 always has biases; a model without them (nanoGPT's bias = False) gets zero ones,
    which compute the same. Read back, it is a model with (zero) biases."""
    ours = model.state_dict()
    if not model.config.bias:
        zeros = {
            name.removesuffix("weight") + "bias": ours[name].new_zeros(ours[name].shape[0])
            for name in ours
            if name.startswith("transformer.h.") or name == "transformer.ln_f.weight"
        }
        ours = {**ours, **zeros}
    state: dict[str, Tensor] = {}
    for name, tensor in ours.items():
        if name == "lm_head.weight" and model.config.tie_embeddings:
            continue  # HF re-ties it to transformer.wte.weight
        state[name] = tensor.t() if name.endswith(_CONV1D) else tensor
    return state


def gpt_from_hf_state_dict(
    config: ModelConfig | Mapping[str, Any],
    state: Mapping[str, Tensor],
    where: str = "Hugging Face checkpoint",
) -> GPT:
    """A GPT from transformers-named tensors (GPT-2, Llama, Qwen3, Arcee, GPT-NeoX or StableLM names, told
    apart by the config's model_type, or for a ModelConfig by the tensor names and its qk_norm
    and mlp), loaded without a second copy.

    `config` is a config.json dict or a ModelConfig. Unknown tensors and wrong shapes are one
    ScratchLMError naming the tensor.
    """
    arch: Architecture
    if isinstance(config, ModelConfig):
        model_config = config
        if "gpt_neox.embed_in.weight" in state:
            arch = "gpt_neox"
        elif "model.embed_tokens.weight" in state and config.norm == "layernorm":
            arch = "stablelm"
        elif "model.embed_tokens.weight" in state:
            arch = "qwen3" if config.qk_norm else "arcee" if config.mlp == "relu2" else "llama"
        else:
            arch = "gpt2"
    else:
        arch = _model_type(config, where)
        model_config = hf_config_to_model_config(config, where)
    if arch == "gpt2":
        ours = _gpt_names_from_gpt2(state, where)
    elif arch in ("llama", "arcee"):  # Arcee's: Llama's without gate_proj (by config.mlp)
        ours = gpt_names_from_llama(model_config, state, where)
    elif arch == "qwen3":
        ours = hf_qwen3.gpt_names_from_qwen3(model_config, state, where)
    elif arch == "stablelm":
        ours = hf_stablelm.gpt_names_from_stablelm(model_config, state, where)
    else:
        ours = hf_neox.gpt_names_from_neox(model_config, state, where)
    return gpt_from_state_dict(model_config, ours, where=where)


def _gpt_names_from_gpt2(state: Mapping[str, Tensor], where: str) -> dict[str, Tensor]:
    ours: dict[str, Tensor] = {}
    for name, tensor in state.items():
        # The causal-mask buffers of older transformers versions are not weights.
        if name.endswith((".attn.bias", ".attn.masked_bias")) and ".c_attn" not in name:
            continue
        # The original GPT-2 checkpoints name the tensors without the "transformer." prefix.
        if not name.startswith(("transformer.", "lm_head.")):
            name = "transformer." + name
        ours[name] = tensor.t() if name.endswith(_CONV1D) else tensor
    return ours


def hf_model(model: GPT) -> tuple[Architecture, dict[str, Any], dict[str, Tensor]]:
    """The model in transformers' terms: its architecture (hf_architecture), config.json as a
    dict and the tensors under that architecture's names (views of the model's own)."""
    arch = hf_architecture(model.config)
    if arch == "gpt2":
        return arch, model_config_to_gpt2_config(model.config), gpt2_state_dict_from_gpt(model)
    if arch == "llama":
        return arch, model_config_to_llama_config(model.config), llama_state_dict_from_gpt(model)
    if arch == "arcee":  # Llama's tensors without gate_proj (by config.mlp)
        return (
            arch,
            hf_arcee.model_config_to_arcee_config(model.config),
            llama_state_dict_from_gpt(model),
        )
    if arch == "qwen3":
        return (
            arch,
            hf_qwen3.model_config_to_qwen3_config(model.config),
            hf_qwen3.qwen3_state_dict_from_gpt(model),
        )
    if arch == "stablelm":
        return (
            arch,
            hf_stablelm.model_config_to_stablelm_config(model.config),
            hf_stablelm.stablelm_state_dict_from_gpt(model),
        )
    return (
        arch,
        hf_neox.model_config_to_neox_config(model.config),
        hf_neox.neox_state_dict_from_gpt(model),
    )


# --- folders -----------------------------------------------------------------------------------


def save_hf_model(
    model: GPT,
    folder: Path | str,
    tokenizer_json: str | None = None,
    token_ids: Mapping[str, int] | None = None,
    overwrite: bool = False,
) -> Architecture:
    """Write `folder` with config.json, model.safetensors (and tokenizer.json when given) that
    transformers loads as the model's architecture (hf_architecture; HF_CLASSES names its
    class). Returns which one it is.
    token_ids names the bos, eos and pad ids (run_dir.token_role_ids); the eos id is where
    transformers' generate() stops.

    The folder is built beside the destination and renamed into place when complete; an
    existing folder is replaced only with overwrite=True.
    """
    folder = Path(folder)
    arch, hf_config, state = hf_model(model)  # before touching anything
    refuse_existing(folder, overwrite)
    # The classes default to ids of their original vocabularies, which ours need not have.
    for role in ("bos", "eos", "pad"):
        hf_config[f"{role}_token_id"] = (token_ids or {}).get(role)
    folder.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        (stage / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
        # Copies: split views of one fused matrix would share storage, which safetensors refuses.
        tensors = {name: t.detach().contiguous().clone() for name, t in state.items()}
        safetensors.torch.save_file(tensors, str(stage / WEIGHTS_FILE), metadata={"format": "pt"})
        if tokenizer_json is not None:
            (stage / TOKENIZER_FILE).write_text(tokenizer_json, encoding="utf-8")
        for path in stage.iterdir():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(stage, folder)
        fsync_dir(folder.parent)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return arch


def hf_token_roles(hf: Mapping[str, Any]) -> dict[str, int]:
    """bos / eos / pad ids of a config.json (an eos list, as Llama 3 has, gives its first)."""
    roles = {}
    for role in ("bos", "eos", "pad"):
        value = hf.get(f"{role}_token_id")
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int):
            roles[role] = value
    return roles


def read_hf_config(folder: Path | str) -> dict[str, Any]:
    """config.json of a Hugging Face model folder, checked to be there and to be JSON."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ScratchLMError(f"no such folder: {folder}")
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ScratchLMError(f"{folder} is missing {CONFIG_FILE}, the model's architecture")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ScratchLMError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ScratchLMError(f"{path} is not a JSON object")
    return data


def read_hf_weights(folder: Path | str) -> dict[str, Tensor]:
    """The tensors of model.safetensors, or of the shards its index lists, memory-mapped."""
    folder = Path(folder)
    if (folder / WEIGHTS_FILE).is_file():
        return open_safetensors(folder / WEIGHTS_FILE)
    if (folder / INDEX_FILE).is_file():
        try:
            index = json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))
            shards = sorted(set(index["weight_map"].values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            raise ScratchLMError(f"{folder / INDEX_FILE} is not a safetensors index") from None
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            raise ScratchLMError(
                f"{folder} is missing {', '.join(missing)} (listed in {INDEX_FILE})"
            )
        tensors: dict[str, Tensor] = {}
        for name in shards:
            tensors.update(open_safetensors(folder / name))
        return tensors
    pickles = [p.name for p in folder.glob("pytorch_model*.bin")]
    hint = (
        f" ({', '.join(pickles)} is a pickle, which scratchlm does not load; convert it to "
        "safetensors)"
        if pickles
        else ""
    )
    raise ScratchLMError(f"{folder} is missing {WEIGHTS_FILE} (or {INDEX_FILE}){hint}")


def load_hf_model(folder: Path | str) -> GPT:
    """A GPT from a Hugging Face GPT-2, Llama, Qwen3, Arcee, GPT-NeoX or StableLM folder (config.json +
    safetensors weights)."""
    folder = Path(folder)
    hf_config = read_hf_config(folder)
    _model_type(hf_config, str(folder / CONFIG_FILE))  # unsupported models fail before reading
    return gpt_from_hf_state_dict(hf_config, read_hf_weights(folder), where=str(folder))
