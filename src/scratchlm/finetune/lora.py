"""LoRA: fine-tune a frozen model through small low-rank updates of its weight matrices.

Low-rank adaptation (Hu et al., 2021) leaves a layer's weight W (out, in) frozen and learns
y = W x + (alpha / r) · B A x, with A (r, in) and B (out, r) for a small rank r: r · (in + out)
trainable numbers instead of out · in. A starts Kaiming-uniform and B at zero, so at step 0
the update is exactly zero and the model is the base model; dropout applies to the input of
the update only. After training, W + (alpha / r) · B A can be merged into the weight, and the
model runs at the base model's speed (merge_lora), or the adapter is kept apart, a few MB,
and loaded onto the base when needed (save_lora / load_lora).

Our GPT stacks several projections in one matrix: attn.c_attn holds q | k | v (k and v narrower
with grouped-query attention) and a SwiGLU MLP's c_fc holds gate | up. LoRA here adapts the
layers a transformer has, not our storage: each of q, k, v, o, gate, up and down is a layer
named transformer.h.N.attn.q, ..., transformer.h.N.mlp.down, and its adapter's B covers only
that layer's rows of the stacked matrix. So "q" adapts the queries alone, as it would in a
Llama model, and an adapter exports to PEFT name for name (finetune/lora_peft.py).

    apply_lora(model, targets=["q", "v"], r=8, alpha=16)   wrap, freeze the rest; a summary
    merge_lora(model) / unmerge_lora(model)                fold the updates in, or take them out
    merge_and_unload_lora(model)                           plain layers again, for export
    save_lora(model, folder) / load_lora(model, folder)    the adapter alone, tied to its base
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scratchlm.core.atomic_files import atomic_write_text, fsync_dir, staging_folder
from scratchlm.core.errors import ScratchLMError
from scratchlm.core.messages import status
from scratchlm.core.user_files import read_json
from scratchlm.core.user_paths import refuse_existing
from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig
from scratchlm.model.gpt import SplitLinear
from scratchlm.model.loading import open_safetensors

CONFIG_FILE = "lora.json"
WEIGHTS_FILE = "lora.safetensors"
FORMAT = "scratchlm-lora"
FORMAT_VERSION = 1

# The layers of one block, in order; which module of the block holds each one is in
# adaptable_layers.
LAYER_KINDS = ("q", "k", "v", "o", "gate", "up", "down")
# Other names a target may use: Hugging Face Llama's module names, and groups.
TARGET_ALIASES = {
    "q_proj": "q",
    "k_proj": "k",
    "v_proj": "v",
    "o_proj": "o",
    "gate_proj": "gate",
    "up_proj": "up",
    "down_proj": "down",
    "attn": "attn.*",
    "mlp": "mlp.*",
    "all": "*",
}
# What the model remembers of its LoRA (apply_lora sets it), for save_lora and load_lora.
_CONFIG_ATTR = "lora_config"


# --- the layer -----------------------------------------------------------------------------------


class LoRAAdapter(nn.Module):
    """The low-rank update of output rows [start, stop) of a Linear: scale · B A x.

    A (r, in) starts Kaiming-uniform, as nn.Linear initialises its weight, and B (rows, r) at
    zero: the product is zero at first, yet B's gradient (which is A x times the output's) is
    not, so training starts from the base model and moves away from it at once.
    """

    start: int  # its first output row in the layer
    stop: int
    scale: float  # alpha / r

    def __init__(
        self,
        in_features: int,
        start: int,
        stop: int,
        r: int,
        scale: float,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.start, self.stop, self.scale = start, stop, scale
        self.A = nn.Parameter(torch.empty(r, in_features, device=device, dtype=dtype))
        self.B = nn.Parameter(torch.zeros(stop - start, r, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        """x (..., in) -> the update of this adapter's rows (..., stop - start)."""
        return F.linear(F.linear(x, self.A), self.B) * self.scale  # two thin matmuls, not B A

    def delta_weight(self) -> Tensor:
        """scale · B A (rows, in), in float32: what merging adds to the weight's rows."""
        return (self.B.float() @ self.A.float()) * self.scale


class LoRALinear(nn.Linear):
    """A Linear layer (the one it replaces: same weight and bias Parameters, same names in the
    state dict) plus adapters, each adding its update to its own rows of the output.

    The base weight and bias are frozen by apply_lora; only the adapters' A and B train. While
    `merged`, the updates are in the weight itself and forward is a plain Linear.
    """

    # As SplitLinear's flag (model/gpt.py): halves() makes one matmul per half.
    split_matmul = True

    def __init__(self, base: nn.Linear, adapters: Mapping[str, LoRAAdapter], dropout: float):
        # Built on the meta device, then given the base's own Parameters: nothing is copied.
        super().__init__(
            base.in_features, base.out_features, bias=base.bias is not None, device="meta"
        )
        self.weight = base.weight
        self.bias = base.bias
        in_row_order = sorted(adapters.items(), key=lambda item: item[1].start)
        self.adapters = nn.ModuleDict(dict(in_row_order))
        self.lora_dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.merged = False

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight, self.bias)
        return y if self._check_merged() else self._add_updates(y, x, first_row=0)

    def halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """SplitLinear's two halves (SwiGLU's gate and up), each with its adapters' updates."""
        if not self.split_matmul:
            first, second = self(x).chunk(2, dim=-1)
            return first, second
        w_first, w_second = self.weight.chunk(2)
        b_first, b_second = (None, None) if self.bias is None else self.bias.chunk(2)
        first, second = F.linear(x, w_first, b_first), F.linear(x, w_second, b_second)
        if self._check_merged():
            return first, second
        half = self.out_features // 2
        return self._add_updates(first, x, 0), self._add_updates(second, x, half)

    def _check_merged(self) -> bool:
        if self.merged and self.training and torch.is_grad_enabled():
            # The adapters would get no gradient through a merged weight: training would
            # silently do nothing.
            raise ScratchLMError(
                "the LoRA adapters are merged into the weights, so training would not update "
                "them; call unmerge_lora(model) before training"
            )
        return self.merged

    def _add_updates(self, y: Tensor, x: Tensor, first_row: int) -> Tensor:
        """y (..., width), output rows [first_row, first_row + width), with the update of each
        adapter whose rows lie there added: untouched rows are passed through as they are."""
        end = first_row + y.size(-1)
        pieces, at = [], first_row
        for adapter in cast(Iterable[LoRAAdapter], self.adapters.values()):
            if adapter.start < first_row or adapter.stop > end:
                continue  # in the other half
            if adapter.start > at:
                pieces.append(y[..., at - first_row : adapter.start - first_row])
            rows = y[..., adapter.start - first_row : adapter.stop - first_row]
            pieces.append(rows + adapter(self.lora_dropout(x)))
            at = adapter.stop
        if not pieces:
            return y
        if at < end:
            pieces.append(y[..., at - first_row :])
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)

    @torch.no_grad()
    def merge(self) -> None:
        """Add every adapter's update into the weight (a no-op when already merged)."""
        if not self.merged:
            for adapter in cast(Iterable[LoRAAdapter], self.adapters.values()):
                rows = self.weight[adapter.start : adapter.stop]
                rows.add_(adapter.delta_weight().to(rows.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the updates out of the weight again (a no-op when not merged)."""
        if self.merged:
            for adapter in cast(Iterable[LoRAAdapter], self.adapters.values()):
                rows = self.weight[adapter.start : adapter.stop]
                rows.sub_(adapter.delta_weight().to(rows.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        names = ", ".join(self.adapters)
        return f"{super().extra_repr()}, adapters=[{names}], merged={self.merged}"


# --- which layers a model has --------------------------------------------------------------------


@dataclass(frozen=True)
class AdaptableLayer:
    """One projection of a block, and where its rows are: `module`'s output rows [start, stop)."""

    name: str  # transformer.h.3.attn.q
    module: str  # transformer.h.3.attn.c_attn
    start: int
    stop: int


def adaptable_layers(model: GPT) -> list[AdaptableLayer]:
    """Every layer LoRA can adapt, block by block: q, k, v, o, then gate (SwiGLU), up, down."""
    config = model.config
    C, KD, F_ = config.n_embd, config.kv_heads * config.head_dim, config.ffn_hidden
    layers = []
    for i in range(config.n_layer):
        attn, mlp = f"transformer.h.{i}.attn", f"transformer.h.{i}.mlp"
        rows = [
            ("attn.q", f"{attn}.c_attn", 0, C),
            ("attn.k", f"{attn}.c_attn", C, C + KD),
            ("attn.v", f"{attn}.c_attn", C + KD, C + 2 * KD),
            ("attn.o", f"{attn}.c_proj", 0, C),
        ]
        if config.mlp == "swiglu":  # c_fc = [gate; up]
            rows += [("mlp.gate", f"{mlp}.c_fc", 0, F_), ("mlp.up", f"{mlp}.c_fc", F_, 2 * F_)]
        else:
            rows.append(("mlp.up", f"{mlp}.c_fc", 0, F_))
        rows.append(("mlp.down", f"{mlp}.c_proj", 0, C))
        layers += [AdaptableLayer(f"transformer.h.{i}.{n}", m, a, b) for n, m, a, b in rows]
    return layers


def select_layers(model: GPT, targets: str | Sequence[str]) -> list[AdaptableLayer]:
    """The layers that `targets` name, in model order. A target is a layer's short name (q, k,
    v, o, gate, up, down), a Hugging Face Llama name (q_proj, ...), a group (attn, mlp, all) or
    a glob pattern over full names (transformer.h.1.*, *.h.1[0-9].attn.*); a comma-separated
    string is a list. A target that matches nothing is an error listing the names there are."""
    wanted = _target_list(targets)
    layers = adaptable_layers(model)
    chosen: set[str] = set()
    for target in wanted:
        pattern = TARGET_ALIASES.get(target, target)
        hits = {
            layer.name
            for layer in layers
            if fnmatch.fnmatchcase(layer.name, pattern)
            or fnmatch.fnmatchcase(layer.name, "*." + pattern)
        }
        if not hits:
            raise ScratchLMError(
                f"LoRA target {target!r} matches no layer; this model's layers are "
                f"{_describe_layer_names(model)} (short names {', '.join(LAYER_KINDS[:4])}, "
                f"{', '.join(k for k in LAYER_KINDS[4:] if any(_is_kind(x, k) for x in layers))}; "
                "groups attn, mlp, all; or glob patterns like 'transformer.h.0.*')"
            )
        chosen |= hits
    return [layer for layer in layers if layer.name in chosen]


def _target_list(targets: str | Sequence[str]) -> list[str]:
    items = targets.split(",") if isinstance(targets, str) else list(targets)
    if not all(isinstance(t, str) for t in items):
        raise ScratchLMError(f"LoRA targets must be layer names (strings), got {targets!r}")
    items = [t.strip() for t in items if t.strip()]
    if not items:
        raise ScratchLMError(
            "no LoRA targets given; name the layers to adapt, e.g. q,v or attn,mlp or all"
        )
    return items


def _is_kind(layer: AdaptableLayer, kind: str) -> bool:
    return layer.name.rsplit(".", 1)[1] == kind


def _describe_layer_names(model: GPT) -> str:
    """transformer.h.N.{attn.q, ..., mlp.down} for N = 0..11: every name, in one short line."""
    kinds = [layer.name.split(".", 3)[3] for layer in adaptable_layers(model)]
    per_block = list(dict.fromkeys(kinds))
    last = model.config.n_layer - 1
    blocks = "N = 0" if last == 0 else f"N = 0..{last}"
    return f"transformer.h.N.{{{', '.join(per_block)}}} for {blocks}"


# --- the base model's identity -------------------------------------------------------------------

# The ModelConfig keys that decide the base's tensors and what they compute; block_size, dropout
# and the like may differ between uses of one base.
_SHAPE_KEYS = (
    "vocab_size",
    "n_layer",
    "n_head",
    "n_embd",
    "mlp",
    "norm",
    "bias",
    "tie_embeddings",
    "pos_encoding",
    "qk_norm",
)
_SAMPLES_PER_TENSOR = 4096


@dataclass(frozen=True)
class BaseModel:
    """Which model an adapter belongs to: a name for people (a run, "smollm2-135m-instruct"),
    the shape, and a fingerprint of shape and weights that decides."""

    name: str
    fingerprint: str
    shape: dict[str, Any]

    def describe(self) -> str:
        s = self.shape
        return (
            f"{s['n_layer']} layers, width {s['n_embd']}, {s['n_head']} heads "
            f"({s['n_kv_head']} key/value), {s['mlp']} {s['ffn_hidden']}, vocabulary "
            f"{s['vocab_size']}"
        )


def model_shape(config: ModelConfig) -> dict[str, Any]:
    shape = {key: getattr(config, key) for key in _SHAPE_KEYS}
    shape.update(n_kv_head=config.kv_heads, ffn_hidden=config.ffn_hidden)
    return shape


def base_fingerprint(model: GPT) -> str:
    """A fingerprint of the model's shape and weights (16 hex digits), the same on any device
    and for a float32 model and its bfloat16 copy.

    Hashing every weight would read a large model whole; a sample of 4,096 values of each
    tensor (16 evenly spaced runs of 256), rounded to bfloat16, tells apart any two models that
    training has made different. Adapters and merged updates must not be in the weights:
    apply_lora takes it before wrapping anything, and keeps it.
    """
    digest = hashlib.sha256(json.dumps(model_shape(model.config), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        if ".adapters." in name:
            continue
        flat = tensor.detach().reshape(-1)
        n = flat.numel()
        if n > _SAMPLES_PER_TENSOR:
            # 16 runs of 256 values spread evenly: few pages of a memory-mapped file to read.
            flat = torch.cat([flat[i * (n - 256) // 15 :][:256] for i in range(16)])
        sample = flat.to(torch.bfloat16).float().cpu()
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def base_model_of(model: GPT, name: str = "") -> BaseModel:
    return BaseModel(name, base_fingerprint(model), model_shape(model.config))


# --- applying, merging -------------------------------------------------------------------------


@dataclass(frozen=True)
class LoRAConfig:
    """What an adapter is: where it goes, its rank and scale, and its base model (lora.json)."""

    targets: tuple[str, ...]  # as the user gave them
    layers: tuple[str, ...]  # the full names they matched
    r: int
    alpha: float
    dropout: float
    base: BaseModel

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["targets"], data["layers"] = list(self.targets), list(self.layers)
        return {"format": FORMAT, "version": FORMAT_VERSION, **data}


@dataclass(frozen=True)
class LoRASummary:
    """What apply_lora did: the config, and how many parameters train."""

    config: LoRAConfig
    trainable: int
    total: int  # all parameters, adapters included (a tied embedding counted once)
    per_layer: dict[str, int] = field(default_factory=dict)  # kind (q, ...) -> parameters

    def __str__(self) -> str:
        c = self.config
        kinds = ", ".join(f"{kind} {n:,}" for kind, n in self.per_layer.items())
        return (
            f"LoRA r={c.r}, alpha={c.alpha:g}, dropout={c.dropout:g} on {len(c.layers)} layers "
            f"({kinds}): {self.trainable:,} trainable parameters of {self.total:,} "
            f"({100 * self.trainable / self.total:.2f}%)"
        )


def apply_lora(
    model: GPT,
    targets: str | Sequence[str] = ("q", "v"),
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    base_name: str = "",
    quiet: bool = False,
) -> LoRASummary:
    """Give the layers `targets` name (see select_layers) LoRA adapters of rank r and scale
    alpha / r, and freeze every other parameter. Prints the summary unless quiet; returns it.

    The model changes in place: each adapted Linear becomes a LoRALinear around the same
    weight. base_name names the base model in saved adapters (a run, "smollm2-135m-instruct").
    """
    if lora_config(model) is not None:
        raise ScratchLMError(
            "this model already has LoRA adapters; merge_and_unload_lora(model) first to adapt "
            "the merged model, or start from the base model again"
        )
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ScratchLMError(f"LoRA rank r must be a whole number >= 1, got {r!r}")
    if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha > 0):
        raise ScratchLMError(f"LoRA alpha must be a positive number, got {alpha!r}")
    if not (isinstance(dropout, int | float) and 0.0 <= dropout < 1.0):
        raise ScratchLMError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
    layers = select_layers(model, targets)
    config = LoRAConfig(
        targets=tuple(_target_list(targets)),
        layers=tuple(layer.name for layer in layers),
        r=r,
        alpha=float(alpha),
        dropout=float(dropout),
        base=base_model_of(model, base_name),  # before any adapter exists
    )
    _wrap(model, layers, config)
    summary = _summary(model, config)
    if not quiet:
        status(str(summary))
    return summary


def _wrap(model: GPT, layers: Sequence[AdaptableLayer], config: LoRAConfig) -> None:
    model.requires_grad_(False)  # the base is frozen; the adapters made below train
    by_module: dict[str, list[AdaptableLayer]] = {}
    for layer in layers:
        by_module.setdefault(layer.module, []).append(layer)
    for module_name, parts in by_module.items():
        base = model.get_submodule(module_name)
        if not isinstance(base, nn.Linear) or base.out_features < max(p.stop for p in parts):
            raise ScratchLMError(
                f"{module_name} is not the Linear layer LoRA expects (tensor-parallel or "
                "quantised?); apply LoRA to the plain model"
            )
        weight = base.weight
        adapters = {
            p.name.rsplit(".", 1)[1]: LoRAAdapter(
                base.in_features,
                p.start,
                p.stop,
                config.r,
                config.scale,
                device=weight.device,
                dtype=weight.dtype,
            )
            for p in parts
        }
        wrapped = LoRALinear(base, adapters, config.dropout).train(base.training)
        parent_name, _, child = module_name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, wrapped)
    setattr(model, _CONFIG_ATTR, config)


def _summary(model: GPT, config: LoRAConfig) -> LoRASummary:
    per_layer: dict[str, int] = {}
    for name, adapter in lora_adapters(model).items():
        kind = name.rsplit(".", 1)[1]
        per_layer[kind] = per_layer.get(kind, 0) + adapter.A.numel() + adapter.B.numel()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return LoRASummary(config, trainable, model.num_parameters(), per_layer)


def lora_config(model: nn.Module) -> LoRAConfig | None:
    """The LoRAConfig apply_lora gave the model, or None when it has no adapters."""
    return cast(LoRAConfig | None, getattr(model, _CONFIG_ATTR, None))


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The model's LoRALinear layers by module name (transformer.h.0.attn.c_attn, ...)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_adapters(model: nn.Module) -> dict[str, LoRAAdapter]:
    """Every adapter by the name of the layer it adapts (transformer.h.0.attn.q, ...)."""
    adapters = {}
    for module_name, layer in lora_layers(model).items():
        block, section, _ = module_name.rsplit(".", 2)  # transformer.h.0, attn, c_attn
        for kind, adapter in layer.adapters.items():
            adapters[f"{block}.{section}.{kind}"] = cast(LoRAAdapter, adapter)
    return adapters


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapters' A and B matrices: what the optimizer should train."""
    return [p for a in lora_adapters(model).values() for p in (a.A, a.B)]


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapters' tensors under their file names: transformer.h.0.attn.q.lora_A, ..._B."""
    state = {}
    for name, adapter in lora_adapters(model).items():
        state[f"{name}.lora_A"] = adapter.A.detach()
        state[f"{name}.lora_B"] = adapter.B.detach()
    return state


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's tensors with every adapter's update added to its weight, under the plain
    model's names and without the adapters, each shared (tied) tensor once: what merging and
    unloading would give, computed aside, so the model itself (still training) is untouched
    and its weights stay bit for bit what they were."""
    merged: dict[str, Tensor] = {}
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for name, tensor in model.state_dict().items():
        if ".adapters." in name:
            continue
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if key in seen:  # the second name of a tied matrix; loading restores the tie
            continue
        seen.add(key)
        merged[name] = tensor
    for layer_name, layer in lora_layers(model).items():
        if layer.merged:
            continue  # the updates are in the weight already
        weight = merged[f"{layer_name}.weight"].clone()
        for adapter in cast(Iterable[LoRAAdapter], layer.adapters.values()):
            weight[adapter.start : adapter.stop] += adapter.delta_weight().to(weight.dtype)
        merged[f"{layer_name}.weight"] = weight
    return merged


def merge_lora(model: nn.Module) -> int:
    """Fold every adapter's update into its weight, so the model runs at the base model's
    speed with the adapted outputs; returns the number of layers merged. unmerge_lora undoes it."""
    layers = lora_layers(model)
    for layer in layers.values():
        layer.merge()
    return len(layers)


def unmerge_lora(model: nn.Module) -> int:
    """Take the updates out of the weights again (to go on training, or switch adapters)."""
    layers = lora_layers(model)
    for layer in layers.values():
        layer.unmerge()
    return len(layers)


def merge_and_unload_lora(model: GPT) -> GPT:
    """Merge the adapters and put plain layers back: an ordinary GPT (for checkpoints, HF and
    GGUF export, quantisation), its parameters trainable again. Returns the same model."""
    for module_name, layer in lora_layers(model).items():
        layer.merge()
        plain_class = SplitLinear if module_name.endswith("mlp.c_fc") else nn.Linear
        plain = plain_class(
            layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta"
        )
        plain.weight, plain.bias = layer.weight, layer.bias
        plain.train(layer.training)
        parent_name, _, child = module_name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, plain)
    model.requires_grad_(True)
    if hasattr(model, _CONFIG_ATTR):
        delattr(model, _CONFIG_ATTR)
    return model


# --- the adapter on disk ---------------------------------------------------------------------


def save_lora(model: GPT, folder: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write the adapter alone: `folder`/lora.safetensors (A and B of every adapted layer) and
    lora.json (targets, r, alpha, dropout and the base model's name, shape and fingerprint).
    Merged or not, the adapter is the same. The folder appears whole or not at all."""
    config = lora_config(model)
    if config is None:
        raise ScratchLMError("this model has no LoRA adapters to save; apply_lora(model) first")
    folder = Path(folder)
    refuse_existing(folder, overwrite)
    tensors = {name: t.contiguous().cpu() for name, t in lora_state_dict(model).items()}
    with staging_folder(folder) as stage:
        safetensors.torch.save_file(tensors, str(stage / WEIGHTS_FILE), metadata={"format": "pt"})
        atomic_write_text(stage / CONFIG_FILE, json.dumps(config.to_json(), indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(stage, folder)
        fsync_dir(folder.parent)
    return folder


def read_lora_config(folder: str | os.PathLike[str]) -> LoRAConfig:
    """The lora.json of an adapter folder, checked."""
    path = Path(folder) / CONFIG_FILE
    if not Path(folder).is_dir():
        raise ScratchLMError(f"no such LoRA adapter folder: {folder}")
    if not path.is_file():
        raise ScratchLMError(
            f"{folder} is not a scratchlm LoRA adapter ({CONFIG_FILE} is missing); save one with "
            "save_lora"
        )
    data = read_json(path, "LoRA config")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ScratchLMError(f"{path} is not a scratchlm LoRA config (no format {FORMAT!r})")
    if data.get("version") != FORMAT_VERSION:
        raise ScratchLMError(
            f"{path} has format version {data.get('version')!r}; this scratchlm reads version "
            f"{FORMAT_VERSION}"
        )
    try:
        base = data["base"]
        return LoRAConfig(
            targets=tuple(data["targets"]),
            layers=tuple(data["layers"]),
            r=int(data["r"]),
            alpha=float(data["alpha"]),
            dropout=float(data["dropout"]),
            base=BaseModel(str(base["name"]), str(base["fingerprint"]), dict(base["shape"])),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ScratchLMError(
            f"{path} is damaged ({type(e).__name__}: {e}); save the adapter again"
        ) from None


def load_lora(
    model: GPT,
    folder: str | os.PathLike[str],
    base_name: str = "",
    merge: bool = False,
    quiet: bool = True,
) -> LoRASummary:
    """Load a saved adapter onto `model`, its base model; with merge, merged for inference.

    A model without LoRA gets the adapter's layers first; one with the same LoRA (resuming
    training) gets its adapter weights replaced. An adapter saved for another base model (by
    shape or weights) is refused, naming both models.
    """
    folder = Path(folder)
    config = read_lora_config(folder)
    current = lora_config(model)
    have = base_model_of(model, base_name) if current is None else current.base
    _check_base(folder, config.base, have, base_name or have.name)
    if current is None:
        layers = select_layers(model, config.layers)
        # The base keeps the adapter's name for it unless the caller names it.
        base = dataclasses.replace(have, name=base_name or config.base.name)
        _wrap(model, layers, dataclasses.replace(config, base=base))
    elif (current.layers, current.r, current.alpha) != (config.layers, config.r, config.alpha):
        raise ScratchLMError(
            f"{folder} has LoRA r={config.r}, alpha={config.alpha:g} on {len(config.layers)} "
            f"layers, but this model's adapters are r={current.r}, alpha={current.alpha:g} on "
            f"{len(current.layers)}; load it onto the base model instead"
        )
    weights = folder / WEIGHTS_FILE
    load_lora_state_dict(model, open_safetensors(weights), where=str(weights))
    if merge:
        merge_lora(model)
    summary = _summary(model, cast(LoRAConfig, lora_config(model)))
    if not quiet:
        status(f"loaded {folder}: {summary}")
    return summary


def _check_base(folder: Path, wanted: BaseModel, have: BaseModel, have_name: str) -> None:
    if wanted.fingerprint == have.fingerprint:
        return
    theirs = repr(wanted.name) if wanted.name else "another model"
    ours = repr(have_name) if have_name else "this model"
    if wanted.shape != have.shape:
        raise ScratchLMError(
            f"{folder} is a LoRA adapter for the base model {theirs} ({wanted.describe()}), "
            f"not for {ours} ({have.describe()}); load it onto {theirs}"
        )
    raise ScratchLMError(
        f"{folder} is a LoRA adapter for the base model {theirs} (weights {wanted.fingerprint}), "
        f"but {ours} has other weights ({have.fingerprint}): the same shape, trained "
        f"differently; load it onto {theirs} as it was when the adapter was trained"
    )


@torch.no_grad()
def load_lora_state_dict(
    model: nn.Module, tensors: Mapping[str, Tensor], where: str = "LoRA weights"
) -> None:
    """Copy adapter tensors (lora_state_dict's names) into the model's adapters, which must be
    exactly those: for resuming training from a checkpoint that kept them. Works merged too."""
    expected = lora_state_dict(model)
    missing = [name for name in expected if name not in tensors]
    extra = [name for name in tensors if name not in expected]
    if missing or extra:
        what = f"is missing {missing[0]}" if missing else f"has an unknown tensor {extra[0]}"
        raise ScratchLMError(
            f"{where} {what} ({len(missing)} missing, {len(extra)} unknown); these adapters "
            "belong to other LoRA targets"
        )
    for name, target in expected.items():
        if tensors[name].shape != target.shape:
            raise ScratchLMError(
                f"{where}: {name} has shape {tuple(tensors[name].shape)}, expected "
                f"{tuple(target.shape)}; the adapters have another rank or base model"
            )
    merged = [layer for layer in lora_layers(model).values() if layer.merged]
    for layer in merged:  # new adapters into merged weights: the old updates come out first
        layer.unmerge()
    for name, target in expected.items():
        target.copy_(tensors[name])
    for layer in merged:
        layer.merge()
