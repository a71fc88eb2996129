"""Sharded training on a device mesh: FSDP2 and tensor parallelism (DTensor).

DDP (distributed.py) keeps a whole copy of the model, its gradients and its optimizer state on
every rank. The two ways here split them instead:

    fsdp  FSDP2 (torch.distributed.fsdp.fully_shard, ZeRO-3): every weight, gradient and
          optimizer moment is cut in N pieces along its first dimension, one per rank. Before
          a block computes, its pieces are all-gathered into the whole block; after its
          backward the gradients are reduce-scattered back into pieces. Memory per rank falls
          towards 1/N of DDP's; each rank still trains on its own share of the batch.
    tp    Tensor parallelism (Megatron-LM's, written with DTensor's parallelize_module): each
          rank holds some of the heads of every attention and some of the hidden units of
          every MLP. q, k, v and the MLP's first matmul are split by output ("column-wise"),
          so a rank computes its heads from the whole input; the output projections are split
          by input ("row-wise"), and their partial sums are all-reduced into the whole output.
          All ranks of a tensor-parallel group see the same batch.

With train.parallel = "fsdp" and train.tp = K > 1 the mesh is 2-D: world / K data-parallel
groups (FSDP across them) of K tensor-parallel ranks each.

Two of our matrices hold several matrices stacked: c_attn (q, k and v) and SwiGLU's c_fc (gate
and up). A split by rows would give rank 0 all of q and rank 1 the rest. So before splitting,
their rows are reordered "rank-major" (rank 0's q, k, v rows, then rank 1's, ...), and put back
in order whenever they are gathered for a checkpoint: checkpoints never see the reordering.

Checkpoints of a sharded run are gathered into the run's usual safetensors (gather_* below), so
the single-process tools read them and a run saved with N ranks resumes with M.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    RowwiseParallel,
    parallelize_module,
)

from scratchlm.core.errors import ScratchLMError
from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig
from scratchlm.train.ranks import Ranks


@dataclass(frozen=True)
class MeshShape:
    """How a job's ranks are arranged: dp data-parallel groups of tp tensor-parallel ranks."""

    dp: int
    tp: int


def mesh_shape(parallel: str, tp: int, world_size: int) -> MeshShape:
    """The mesh train.parallel and train.tp ask for, checked against the job's world size."""
    if parallel == "tp":
        degree = tp or world_size
        if degree != world_size:
            raise ScratchLMError(
                f"train.parallel = 'tp' splits the model over all {world_size} ranks, but "
                f"train.tp is {tp}; for data x tensor parallelism use --train.parallel fsdp "
                f"--train.tp {tp}"
            )
        return MeshShape(dp=1, tp=world_size)
    if parallel == "fsdp" and tp > 1:
        if world_size % tp:
            raise ScratchLMError(
                f"train.tp ({tp}) must divide the number of ranks ({world_size}) for a data x "
                "tensor parallel mesh; change --train.tp or --nproc-per-node"
            )
        return MeshShape(dp=world_size // tp, tp=tp)
    if tp > 1:
        raise ScratchLMError(
            f"train.tp = {tp} needs train.parallel = 'tp' or 'fsdp' (got {parallel!r})"
        )
    return MeshShape(dp=world_size, tp=1)


def check_tensor_parallel(config: ModelConfig, tp: int) -> None:
    """Tensor parallelism splits heads and hidden units evenly: refuse a model that does not
    split into `tp` equal parts, naming the setting."""
    if tp <= 1:
        return
    sizes = {
        "model.n_head": config.n_head,
        "model.n_kv_head (key/value heads)": config.kv_heads,
        "model.ffn_hidden (the MLP width)": config.ffn_hidden,
    }
    for name, size in sizes.items():
        if size % tp:
            raise ScratchLMError(
                f"tensor parallelism over {tp} ranks splits {name} = {size} into {tp} equal "
                f"parts, but {size} is not divisible by {tp}; pick a train.tp (or number of "
                f"ranks) that divides it"
            )


def build_mesh(shape: MeshShape, device: torch.device) -> DeviceMesh:
    """The job's device mesh: 1-D ("dp" or "tp") or 2-D ("dp", "tp")."""
    if shape.tp == 1:
        return init_device_mesh(device.type, (shape.dp,), mesh_dim_names=("dp",))
    if shape.dp == 1:
        return init_device_mesh(device.type, (shape.tp,), mesh_dim_names=("tp",))
    return init_device_mesh(device.type, (shape.dp, shape.tp), mesh_dim_names=("dp", "tp"))


def data_parallel_ranks(mesh: DeviceMesh | None, ranks: Ranks) -> Ranks:
    """This rank's place among the data-parallel groups: what the data loader splits the
    batch by. Ranks of one tensor-parallel group read the same batch."""
    if mesh is None:
        return ranks
    if "dp" not in (mesh.mesh_dim_names or ()):
        return Ranks()  # tensor parallelism alone: every rank reads the whole batch
    dp = mesh["dp"] if mesh.ndim > 1 else mesh
    return Ranks(dp.get_local_rank(), dp.size())


def mesh_groups(tensors: list[Tensor]) -> list[list[int]]:
    """Indices of `tensors` grouped by how they are split: plain tensors together, DTensors by
    their mesh. A foreach kernel or a torch.stack takes one group at a time (tensor
    parallelism leaves norms whole, or on the data-parallel mesh only under FSDP, while the
    matrices it splits live on the whole mesh)."""
    groups: dict[object, list[int]] = {}
    for i, tensor in enumerate(tensors):
        key = tensor.device_mesh if isinstance(tensor, DTensor) else None
        groups.setdefault(key, []).append(i)
    return list(groups.values())


# --- tensor parallelism ------------------------------------------------------------------


def stacked_rows(model: GPT) -> dict[str, list[int]]:
    """The matrices (and biases) that stack several matrices by rows, by parameter name: the
    sizes of the stacked parts."""
    config = model.config
    q_rows, kv_rows = config.n_head * config.head_dim, config.kv_heads * config.head_dim
    parts: dict[str, list[int]] = {}
    for i, block in enumerate(model.blocks):
        prefix = f"transformer.h.{i}."
        for suffix in ("weight", "bias"):
            if getattr(block.attn.c_attn, suffix) is not None:
                parts[f"{prefix}attn.c_attn.{suffix}"] = [q_rows, kv_rows, kv_rows]
            if config.mlp == "swiglu" and getattr(block.mlp.c_fc, suffix) is not None:
                parts[f"{prefix}mlp.c_fc.{suffix}"] = [config.ffn_hidden] * 2
    return parts


def rank_major(tensor: Tensor, parts: list[int], n: int) -> Tensor:
    """Rows [A; B; C] -> [A_0; B_0; C_0; A_1; B_1; C_1; ...]: the n-way split of the result by
    rows gives rank r its share of every part."""
    pieces = [part.chunk(n) for part in tensor.split(parts)]
    return torch.cat([piece[r] for r in range(n) for piece in pieces])


def part_major(tensor: Tensor, parts: list[int], n: int) -> Tensor:
    """The inverse of rank_major: the stacked parts back in their own order."""
    per_rank = [block.split([size // n for size in parts]) for block in tensor.chunk(n)]
    return torch.cat([per_rank[r][i] for i in range(len(parts)) for r in range(n)])


def apply_tensor_parallel(model: GPT, mesh: DeviceMesh) -> None:
    """Split every block's attention and MLP over the mesh's "tp" ranks, in place."""
    tp_mesh = mesh["tp"] if mesh.ndim > 1 else mesh
    n = tp_mesh.size()
    check_tensor_parallel(model.config, n)
    stacked = stacked_rows(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in stacked:
                param.copy_(rank_major(param, stacked[name], n))
    for block in model.blocks:
        parallelize_module(
            block,
            tp_mesh,
            {
                "attn.c_attn": ColwiseParallel(),
                "attn.c_proj": RowwiseParallel(),
                "mlp.c_fc": ColwiseParallel(),
                "mlp.c_proj": RowwiseParallel(),
            },
        )
        # The attention module now computes its share of the heads.
        block.attn.n_head //= n
        block.attn.n_kv_head //= n
        block.mlp.c_fc.split_matmul = False  # see SplitLinear
        # QK-norm's gains act on each rank's own heads (dim 1 of q and k): as DTensors
        # replicated over the ranks, their gradients are summed over all heads.
        for norm in (block.attn.q_norm, block.attn.k_norm):
            if norm is not None:
                # (torch types output_fn as returning None, but uses what it returns.)
                distribute_module(norm, tp_mesh, input_fn=_heads_split, output_fn=_local)  # type: ignore[arg-type]


def _heads_split(module: nn.Module, inputs: tuple[Tensor, ...], mesh: DeviceMesh) -> Any:
    return tuple(DTensor.from_local(x, mesh, [Shard(1)], run_check=False) for x in inputs)


def _local(module: nn.Module, output: Any, mesh: DeviceMesh) -> Tensor:
    return output.to_local()


# --- FSDP2 ---------------------------------------------------------------------------------


def apply_fsdp(
    model: GPT,
    root: nn.Module,
    mesh: DeviceMesh,
    reshard_after_forward: bool,
    param_dtype: torch.dtype | None,
) -> None:
    """fully_shard each block, then the root (the module whose forward computes the loss, so
    the embeddings and head are gathered for the whole of it) over the mesh's "dp" ranks.
    param_dtype: the dtype blocks compute in (bf16 on GPUs); gradients reduce in float32."""
    meta = [name for name, p in model.named_parameters() if p.is_meta]
    if meta:
        raise ScratchLMError(
            f"the model's weights were never initialised ({meta[0]} is on the meta device); "
            "FSDP shards real weights: build the model on a device, or call "
            "model.to_empty(device=...) and initialise it before sharding"
        )
    dp_mesh = mesh["dp"] if mesh.ndim > 1 else mesh
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in model.blocks:
        fully_shard(
            block, mesh=dp_mesh, reshard_after_forward=reshard_after_forward, mp_policy=policy
        )
    # The root's parameters are needed again at once by backward: never resharded.
    fully_shard(root, mesh=dp_mesh, reshard_after_forward=False, mp_policy=policy)


def resharding(root: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    """root's loss for evaluation: without a backward to follow, modules that keep their
    gathered weights after forward (the root; every block without reshard_after_forward)
    would stay gathered, and hold whole weights where the optimizer and checkpoints expect
    their shards. So each call ends by resharding them."""

    def loss(x: Tensor, y: Tensor) -> Tensor:
        try:
            return root(x, y)
        finally:
            for module in root.modules():
                if isinstance(module, FSDPModule):
                    module.reshard()

    return loss


@contextmanager
def fsdp_no_sync(root: nn.Module) -> Iterator[None]:
    """FSDP2's no_sync: gradients accumulate unsharded; only the last micro-step's backward
    reduce-scatters."""
    assert isinstance(root, FSDPModule)
    root.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        root.set_requires_gradient_sync(True)


# --- checkpoints: gathered to whole tensors, and split again --------------------------------


def gather_model_tensors(model: GPT, tp: int, keep: bool = True) -> dict[str, Tensor]:
    """Every weight of a sharded model, whole, on the CPU, by name (the tied head once). A
    collective: every rank calls it; only ranks with `keep` (the one that writes) hold the
    result, the others let each tensor go as soon as it is gathered."""
    stacked = stacked_rows(model) if tp > 1 else {}
    tensors: dict[str, Tensor] = {}
    for name, param in model.named_parameters():  # a shared parameter comes once
        whole = _whole(param.detach(), stacked.get(name), tp)
        if keep:
            tensors[name] = whole
    return tensors


def gather_optimizer_state(
    optimizer: torch.optim.Optimizer, model: GPT, tp: int, keep: bool = True
) -> dict[str, Any]:
    """optimizer.state_dict() with every sharded moment made whole (a collective; as in
    gather_model_tensors, only a rank with `keep` holds the whole moments)."""
    state_dict = optimizer.state_dict()
    names = _names_by_index(optimizer, model)
    stacked = stacked_rows(model) if tp > 1 else {}
    # state_dict() hands out the optimizer's own per-parameter dicts: build new ones.
    whole: dict[int, dict[str, Any]] = {}
    for index, param_state in state_dict["state"].items():
        parts = stacked.get(names[index])
        whole[index] = {}
        for key, value in param_state.items():
            if isinstance(value, DTensor):
                value = _whole(value, parts, tp)
            if keep:
                whole[index][key] = value
    return {**state_dict, "state": whole}


def shard_optimizer_state(
    state_dict: dict[str, Any], optimizer: torch.optim.Optimizer, model: GPT, tp: int
) -> dict[str, Any]:
    """A whole optimizer state (from a checkpoint) split as the optimizer's parameters are:
    each rank keeps its own piece (no communication)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    names = _names_by_index(optimizer, model)
    stacked = stacked_rows(model) if tp > 1 else {}
    for index, param_state in state_dict["state"].items():
        param = params[index]
        if not isinstance(param, DTensor):
            continue
        parts = stacked.get(names[index])
        for key, value in param_state.items():
            if isinstance(value, Tensor) and value.shape == param.shape:
                whole = rank_major(value, parts, tp) if parts else value
                param_state[key] = distribute_tensor(
                    whole.to(param.device_mesh.device_type),
                    param.device_mesh,
                    param.placements,
                    src_data_rank=None,
                )
    return state_dict


def _whole(tensor: Tensor, parts: list[int] | None, tp: int) -> Tensor:
    full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
    full = full.cpu()
    return part_major(full, parts, tp) if parts else full


def _names_by_index(optimizer: torch.optim.Optimizer, model: GPT) -> list[str]:
    """The parameter name of each index of optimizer.state_dict()['state']."""
    name_of = {id(p): name for name, p in model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]
