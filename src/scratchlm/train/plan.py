"""The planner: what a distributed run would need per GPU, from the model's shape alone.

These machines cannot show scale, so the numbers come from the papers' formulas:

Memory (ZeRO, Rajbhandari et al. 2020, section 3.1). Ψ parameters trained with AdamW keep 16Ψ
bytes of state. ZeRO's mixed precision counts it as 2Ψ fp16 weights, 2Ψ fp16 gradients and 12Ψ
of optimizer (fp32 master weights + two moments); scratchlm's bf16 autocast, like FSDP2's
MixedPrecisionPolicy, keeps the fp32 weights as the parameters themselves and their gradients in
fp32 (.grad), so the same 16Ψ reads weights 4Ψ, gradients 4Ψ, optimizer 8Ψ in every dtype. DDP
replicates all of it on every data-parallel rank; FSDP (ZeRO-3) divides all three by the
data-parallel degree. Tensor parallelism (Megatron-LM) splits the blocks' attention and MLP
matrices across the TP ranks (q/k/v and the MLP's first matmul by columns, the output
projections by rows, as scratchlm's TP does); embeddings, norms and the row-parallel biases stay
whole on every TP rank. On top of the state, the weights the compute reads:
  DDP, TP   in 16-bit, autocast's copy of every weight (2 bytes each), cast in forward and kept
            for backward; none in fp32.
  FSDP      the gathered (unsharded) weights, in the compute dtype: the root's (embeddings, head,
            final norm: FSDP2 does not reshard the root after forward, so they stay gathered for
            the step) and the block being computed plus the `prefetch` blocks gathered ahead of
            it (FSDP2's default, 1: two blocks). In backward, the unsharded gradients: the
            root's, in the compute dtype until its reduce-scatter ends the step, and one block's,
            in the compute dtype and copied into its reduce-scatter input in the reduce dtype.
The total adds every piece, as if they all peaked at once: an upper bound.

Activations (Korthikanti et al. 2022, "Reducing Activation Recomputation", section 4), per
layer, s tokens of context, b sequences, h = n_embd, a heads, t the TP degree, 16-bit values:
  s·b·h·(10 + 24/t + 5·a·s/(h·t)) bytes,   = s·b·h·(34 + 5·a·s/h) at t = 1.
Of that, 2·s·b·h + a·s²·b/t are 1-byte dropout masks: kept only when the model has dropout.
In fp32 every other value takes 4 bytes instead of 2. With FlashAttention (`flash_attention`)
no s x s score matrix is stored, so the a·s terms go. With full activation checkpointing each
layer keeps only its input, s·b·h values (2·s·b·h bytes in 16-bit; not divided by t without
sequence parallelism), and the backward pass rebuilds one layer's activations at a time.
Outside the layers: the final norm's and the head's inputs, s·b·h values each; no s x V logits
(scratchlm's fused loss computes them a chunk at a time).

Collectives, bytes each GPU sends per step (ring algorithms; n ranks in the group). Weights and
activations move in the compute dtype, gradients in the reduce dtype (`reduce_dtype`, default
fp32: DDP all-reduces the fp32 .grad, 4 bytes a parameter, and FSDP2's MixedPrecisionPolicy
with reduce_dtype=float32 reduce-scatters in fp32 too; bf16 halves those bytes):
  DDP       all-reduce of the gradients: 2(n-1)/n x gradient bytes
  FSDP      all-gather of the weights in forward, (n-1)/n x weight bytes, and in backward again
            but for the root's (still gathered); a reduce-scatter of the gradients, (n-1)/n x
            gradient bytes
  TP        Megatron's all-reduces of the (b, s, h) activations: 2 per layer forward, 2
            backward (2 more when checkpointing recomputes the forward), 2(t-1)/t x b·s·h
            values each
Tensor parallelism stays inside a node, on NVLink. A data-parallel collective over N = n·g ranks,
g in each of n nodes, moves D bytes, f = 2 for an all-reduce and 1 for an all-gather or a
reduce-scatter. One flat ring sends f(N-1)/N x D from each GPU and runs at its slowest hop, the
InfiniBand one. Hierarchically, each GPU sends f(g-1)/g x D over NVLink inside its node and
f(n-1)/n x D/g over InfiniBand across nodes: for an all-reduce, a reduce-scatter inside each
node, then an all-reduce of each rank's 1/g of the data between the ranks of equal local rank
across the nodes (each through its own NIC), then an all-gather inside each node; an all-gather
or a reduce-scatter is one half of that. The plan shows both and counts the hierarchical one.

Step time: the training FLOPs (train/flops.py: 6N + 12·L·s·h per token, 8N + 16·L·s·h with
recomputation) of the GPU's share at its peak FLOP/s, plus each collective's bytes over its
links, NVLink within a node and InfiniBand (per GPU) across. Both with no overlap of compute and
communication and with perfect overlap: a real step lies between.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from scratchlm.core.errors import ScratchLMError
from scratchlm.model.config import ModelConfig, model_preset

Parallel = Literal["ddp", "fsdp", "tp"]
PARALLEL_KINDS: tuple[str, ...] = ("ddp", "fsdp", "tp")
DTYPES: tuple[str, ...] = ("bf16", "fp16", "fp32")
REDUCE_DTYPES: tuple[str, ...] = ("fp32", "bf16")
GB = 1e9


@dataclass(frozen=True)
class Hardware:
    """One GPU and its links: peak dense FLOP/s in the training dtype, bytes/s per direction."""

    name: str
    flops: float
    intra_bw: float  # NVLink, per GPU per direction
    inter_bw: float  # InfiniBand, per GPU per direction
    memory: float  # bytes of GPU memory


HARDWARE_PRESETS: dict[str, Hardware] = {
    # H100 SXM: 989 TFLOP/s dense bf16; NVLink 4 at 900 GB/s both ways; one 400 Gb/s NIC a GPU.
    "h100": Hardware("h100", 989e12, 450e9, 50e9, 80e9),
    # A100 SXM: 312 TFLOP/s dense bf16; NVLink 3 at 600 GB/s both ways; 200 Gb/s HDR a GPU.
    "a100": Hardware("a100", 312e12, 300e9, 25e9, 80e9),
}


@dataclass(frozen=True)
class PlanInputs:
    """A layout: "ddp" and "fsdp" data-parallel over world / tp ranks (fsdp with tp > 1 is the
    2-D mesh, TP inside each node), "tp" tensor parallelism alone (tp = world)."""

    model: ModelConfig  # its block_size is the training context
    gpus_per_node: int = 1
    nodes: int = 1
    parallel: Parallel = "ddp"
    tp: int = 1
    micro_batch: int = 1
    dtype: str = "bf16"  # the compute dtype; the parameters themselves stay fp32
    reduce_dtype: str = "fp32"  # what the gradients' all-reduce / reduce-scatter moves
    # Blocks FSDP gathers ahead of the one computing: FSDP2 runs one ahead (implicitly in
    # forward, as its all-gathers run ahead of compute; explicitly in backward).
    prefetch: int = 1
    activation_checkpointing: bool = False
    flash_attention: bool = False
    hardware: Hardware = HARDWARE_PRESETS["h100"]

    @property
    def world_size(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def dp(self) -> int:
        """Data-parallel degree: the ranks that hold the same TP shard."""
        return self.world_size // self.tp

    @property
    def context(self) -> int:
        return self.model.block_size


@dataclass(frozen=True)
class ParameterCounts:
    total: int  # as GPT.num_parameters(): a tied embedding/head counted once
    tp_split: int  # the blocks' attention and MLP matrices (and column-parallel biases)
    non_embedding: int  # as GPT.num_parameters(exclude_embeddings=True)
    blocks: int  # all n_layer blocks' parameters, split or whole
    n_layer: int

    @property
    def root(self) -> int:
        """Outside the blocks: embeddings, head, final norm (FSDP's root unit)."""
        return self.total - self.blocks

    def per_tp_rank(self, tp: int) -> float:
        return self.total - self.tp_split + self.tp_split / tp

    def block_per_tp_rank(self, tp: int) -> float:
        """One block's parameters on one TP rank (FSDP's unit of gathering)."""
        return (self.blocks - self.tp_split + self.tp_split / tp) / self.n_layer


@dataclass(frozen=True)
class Collective:
    name: str
    group: int  # ranks in the group
    link: str  # "nvlink", "infiniband" or "nvlink+infiniband" (hierarchical, across nodes)
    bytes: float  # sent by each GPU per step, over all links
    seconds: float
    nvlink_bytes: float = 0.0
    infiniband_bytes: float = 0.0
    # Across nodes: one flat ring of the whole group instead, at its InfiniBand hop's speed.
    ring_seconds: float | None = None


@dataclass
class Plan:
    """Per GPU: memory in bytes, collectives, step time in seconds."""

    inputs: dict[str, Any]
    parameters: int
    parameters_per_gpu: float
    weights: float
    gradients: float
    optimizer: float
    compute_weights: float  # autocast's 16-bit copies (DDP, TP) or FSDP's gathered weights
    unsharded_gradients: float  # FSDP: the root's and one block's, before their reduce-scatter
    activations: float
    activations_checkpointed: float
    compute_seconds: float
    collectives: list[Collective] = field(default_factory=list)

    @property
    def state(self) -> float:
        """Weights + gradients + optimizer state: what ZeRO partitions."""
        return self.weights + self.gradients + self.optimizer

    @property
    def total(self) -> float:
        """Peak memory of a training step with the activations the run keeps (an upper bound:
        every piece at once)."""
        checkpointing = self.inputs["activation_checkpointing"]
        kept = self.activations_checkpointed if checkpointing else self.activations
        return self.state + self.compute_weights + self.unsharded_gradients + kept

    @property
    def communication_seconds(self) -> float:
        return sum(c.seconds for c in self.collectives)

    @property
    def step_seconds_no_overlap(self) -> float:
        return self.compute_seconds + self.communication_seconds

    @property
    def step_seconds_overlap(self) -> float:
        return max(self.compute_seconds, self.communication_seconds)

    @property
    def tokens_per_step(self) -> int:
        i = self.inputs
        return int(i["dp"] * i["micro_batch"] * i["context"])

    def to_json(self) -> str:
        data = asdict(self)
        for name in (
            "state",
            "total",
            "communication_seconds",
            "step_seconds_no_overlap",
            "step_seconds_overlap",
            "tokens_per_step",
        ):
            data[name] = getattr(self, name)
        return json.dumps(data, indent=2)


def parameter_counts(config: ModelConfig) -> ParameterCounts:
    """Parameters of scratchlm's GPT of this shape, counted from the shape (no model built)."""
    C, V, L = config.n_embd, config.vocab_size, config.n_layer
    qkv = C + 2 * config.kv_heads * config.head_dim
    mlp_in = 2 * config.ffn_hidden if config.mlp == "swiglu" else config.ffn_hidden
    bias = int(config.bias)
    norm = C * (1 + bias) if config.norm == "layernorm" else C
    # Split across TP ranks: the matrices, and the biases of the column-parallel layers.
    split = C * qkv + C * C + C * mlp_in + config.ffn_hidden * C + bias * (qkv + mlp_in)
    whole = 2 * norm + bias * 2 * C + (2 * config.head_dim if config.qk_norm else 0)
    embeddings = V * C + (config.block_size * C if config.pos_encoding == "learned" else 0)
    head = 0 if config.tie_embeddings else V * C
    total = L * (split + whole) + norm + embeddings + head
    return ParameterCounts(total, L * split, total - embeddings - head, L * (split + whole), L)


def check_inputs(inputs: PlanInputs) -> None:
    """One clear line for a layout that cannot work."""
    for name in ("gpus_per_node", "nodes", "tp", "micro_batch"):
        if getattr(inputs, name) < 1:
            option = name.replace("_per_node", "s").replace("_", "-")
            raise ScratchLMError(f"--{option} must be at least 1, got {getattr(inputs, name)}")
    if inputs.prefetch < 0:
        raise ScratchLMError(f"--prefetch must be 0 or more, got {inputs.prefetch}")
    if inputs.parallel not in PARALLEL_KINDS:
        raise ScratchLMError(f"--parallel must be one of {', '.join(PARALLEL_KINDS)}")
    if inputs.dtype not in DTYPES:
        raise ScratchLMError(f"--dtype must be one of {', '.join(DTYPES)}, got {inputs.dtype!r}")
    if inputs.reduce_dtype not in REDUCE_DTYPES:
        raise ScratchLMError(
            f"--reduce-dtype must be one of {', '.join(REDUCE_DTYPES)}, got {inputs.reduce_dtype!r}"
        )
    check_layout(inputs)
    config, tp = inputs.model, inputs.tp
    for what, size in (
        ("attention heads (n_head)", config.n_head),
        ("key/value heads (n_kv_head)", config.kv_heads),
        ("MLP width (ffn_hidden)", config.ffn_hidden),
    ):
        if size % tp:
            raise ScratchLMError(
                f"--tp {tp} must divide the model's {size} {what}: each TP rank takes an equal "
                f"share; try --tp in {_common_divisors(config)}"
            )


def check_layout(inputs: PlanInputs) -> None:
    """The layouts scratchlm trains: ddp (no TP), fsdp with or without TP, tp alone; TP groups
    are neighbouring ranks inside one node, where NVLink is."""
    tp, gpus, world = inputs.tp, inputs.gpus_per_node, inputs.world_size
    if inputs.parallel == "ddp" and tp > 1:
        raise ScratchLMError(
            f"--parallel ddp keeps a whole model on each GPU: for --tp {tp} use --parallel fsdp "
            f"--tp {tp} (FSDP across the TP groups) or --parallel tp"
        )
    if inputs.parallel == "tp" and inputs.nodes > 1:
        raise ScratchLMError(
            f"--parallel tp is tensor parallelism alone, which stays inside one node: use "
            f"--nodes 1, or --parallel fsdp --tp {gpus} to add data parallelism across nodes"
        )
    if inputs.parallel == "tp" and tp != world:
        raise ScratchLMError(
            f"--parallel tp splits one model over all {world} GPUs: use --tp {world} (or leave "
            f"it out), or --parallel fsdp --tp {tp} for data parallelism over TP groups"
        )
    if tp > gpus:
        raise ScratchLMError(
            f"--tp {tp} is more than the {gpus} GPUs of a node (--gpus): tensor parallelism "
            f"stays inside a node, on NVLink; use --tp in {_divisors(gpus)}"
        )
    if gpus % tp:
        raise ScratchLMError(
            f"--tp {tp} must divide the {gpus} GPUs of a node (--gpus), so that every TP group "
            f"fits in one node; try --tp in {_divisors(gpus)}"
        )


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _common_divisors(config: ModelConfig) -> list[int]:
    return [
        d
        for d in _divisors(config.n_head)
        if config.kv_heads % d == 0 and config.ffn_hidden % d == 0
    ]


def value_bytes(dtype: str) -> int:
    return 4 if dtype == "fp32" else 2


def activation_bytes_per_layer(
    s: int, b: int, h: int, a: int, t: int, dtype: str, dropout: bool, flash: bool
) -> float:
    """Korthikanti et al.'s per-layer activation memory (see the module docstring)."""
    half = value_bytes(dtype) / 2  # their counts are in 16-bit bytes
    scores = 0.0 if flash else a * s * s * b / t  # one s x s matrix per head, in elements
    values = half * (8 * s * b * h + 24 * s * b * h / t + 4 * scores)
    masks = (2 * s * b * h + scores) if dropout else 0.0  # one byte per element
    return values + masks


def memory(inputs: PlanInputs, counts: ParameterCounts) -> dict[str, float]:
    """Weights, gradients and optimizer state per GPU (ZeRO), the weights and gradients the
    compute holds beside them, and the activations."""
    per_gpu = counts.per_tp_rank(inputs.tp)
    fsdp = inputs.parallel == "fsdp"
    shards = inputs.dp if fsdp else 1
    vb, rb = value_bytes(inputs.dtype), value_bytes(inputs.reduce_dtype)
    if fsdp:
        root, block = counts.root, counts.block_per_tp_rank(inputs.tp)
        compute_weights = vb * (root + (1 + inputs.prefetch) * block)
        unsharded_gradients = vb * root + (vb + rb) * block
    else:
        # Autocast's 16-bit copy of each weight; in fp32 the compute reads the weights as they are.
        compute_weights = vb * per_gpu if vb < 4 else 0.0
        unsharded_gradients = 0.0
    config = inputs.model
    s, b, h, L = inputs.context, inputs.micro_batch, config.n_embd, config.n_layer
    layer = activation_bytes_per_layer(
        s, b, h, config.n_head, inputs.tp, inputs.dtype, config.dropout > 0, inputs.flash_attention
    )
    checkpoint = vb * s * b * h
    return dict(
        parameters_per_gpu=per_gpu / shards,
        # fp32 weights, fp32 gradients and AdamW's two fp32 moments: ZeRO's 16Ψ.
        weights=4 * per_gpu / shards,
        gradients=4 * per_gpu / shards,
        optimizer=8 * per_gpu / shards,
        compute_weights=compute_weights,
        unsharded_gradients=unsharded_gradients,
        # Outside the layers, the final norm's input and the head's input (the paper's 4·s·b·h
        # bytes); no s x V logits, which scratchlm's fused loss never materialises.
        activations=L * layer + 2 * checkpoint,
        # Each layer's input, + one layer rebuilt in backward.
        activations_checkpointed=(L + 2) * checkpoint + layer,
    )


def collectives(inputs: PlanInputs, counts: ParameterCounts) -> list[Collective]:
    """Each collective of a step with the bytes one GPU sends and the time its links take."""
    hw = inputs.hardware
    vb, rb = value_bytes(inputs.dtype), value_bytes(inputs.reduce_dtype)
    per_gpu = counts.per_tp_rank(inputs.tp)
    dp, tp, nodes = inputs.dp, inputs.tp, inputs.nodes
    local = inputs.gpus_per_node // tp  # data-parallel ranks in each node
    found: list[Collective] = []

    def data_parallel(name: str, f: int, data: float) -> None:
        """A collective over the dp ranks, f = 2 for an all-reduce, 1 for a gather or scatter."""
        if nodes == 1:
            sent = f * (dp - 1) / dp * data
            found.append(Collective(name, dp, "nvlink", sent, sent / hw.intra_bw, sent))
            return
        nvlink = f * (local - 1) / local * data
        infiniband = f * (nodes - 1) / nodes * data / local
        ring = f * (dp - 1) / dp * data / hw.inter_bw
        link = "nvlink+infiniband" if nvlink else "infiniband"
        seconds = nvlink / hw.intra_bw + infiniband / hw.inter_bw
        found.append(
            Collective(name, dp, link, nvlink + infiniband, seconds, nvlink, infiniband, ring)
        )

    reduce = inputs.reduce_dtype
    if dp > 1 and inputs.parallel == "ddp":
        data_parallel(f"ddp all-reduce gradients ({reduce})", 2, rb * per_gpu)
    elif dp > 1:
        data_parallel(f"fsdp all-gather weights (forward, {inputs.dtype})", 1, vb * per_gpu)
        # The root stays gathered from forward to backward (FSDP2 keeps the root unsharded).
        backward = vb * (per_gpu - counts.root)
        data_parallel(f"fsdp all-gather weights (backward, {inputs.dtype})", 1, backward)
        data_parallel(f"fsdp reduce-scatter gradients ({reduce})", 1, rb * per_gpu)
    if tp > 1:
        config = inputs.model
        message = inputs.micro_batch * inputs.context * config.n_embd * vb
        passes = 6 if inputs.activation_checkpointing else 4
        sent = config.n_layer * passes * 2 * (tp - 1) / tp * message
        name = f"tp all-reduce activations ({passes}/layer, {inputs.dtype})"
        found.append(Collective(name, tp, "nvlink", sent, sent / hw.intra_bw, sent))
    return found


def make_plan(inputs: PlanInputs) -> Plan:
    # Here, not at the top: flops.py imports torch, and `scratchlm plan --help` should not wait.
    from scratchlm.train.flops import flops_per_token

    check_inputs(inputs)
    counts = parameter_counts(inputs.model)
    flops = flops_per_token(inputs.model, counts.non_embedding)
    if inputs.activation_checkpointing:
        flops *= 8 / 6  # the forward pass once more: 2 of every 6 FLOPs
    tokens = inputs.micro_batch * inputs.context
    compute = tokens * flops / inputs.tp / inputs.hardware.flops
    described = {
        "model": inputs.model.preset or "custom",
        "gpus_per_node": inputs.gpus_per_node,
        "nodes": inputs.nodes,
        "world_size": inputs.world_size,
        "parallel": inputs.parallel,
        "tp": inputs.tp,
        "dp": inputs.dp,
        "micro_batch": inputs.micro_batch,
        "context": inputs.context,
        "dtype": inputs.dtype,
        "reduce_dtype": inputs.reduce_dtype,
        "prefetch": inputs.prefetch,
        "activation_checkpointing": inputs.activation_checkpointing,
        "flash_attention": inputs.flash_attention,
        "hardware": asdict(inputs.hardware),
    }
    return Plan(
        inputs=described,
        parameters=counts.total,
        compute_seconds=compute,
        collectives=collectives(inputs, counts),
        **memory(inputs, counts),
    )


def plan_inputs(
    model: str,
    context: int = 0,
    gpu: str = "h100",
    flops: float = 0.0,
    intra_bw: float = 0.0,
    inter_bw: float = 0.0,
    tp: int | None = None,
    **layout: Any,
) -> PlanInputs:
    """PlanInputs from a preset name (any of model_preset's, or depth-N) and a GPU preset whose
    numbers the caller may override (FLOP/s, bytes/s); context 0 keeps the preset's; tp None is
    every GPU for parallel "tp", else 1."""
    if gpu not in HARDWARE_PRESETS:
        raise ScratchLMError(f"unknown --gpu {gpu!r}; choose one of {', '.join(HARDWARE_PRESETS)}")
    if context < 0 or min(flops, intra_bw, inter_bw) < 0:
        raise ScratchLMError("--context, --flops and the bandwidths must be positive")
    config = model_preset(model, **({"block_size": context} if context else {}))
    config.validate()
    preset = HARDWARE_PRESETS[gpu]
    hardware = Hardware(
        preset.name if not (flops or intra_bw or inter_bw) else f"{preset.name} (overridden)",
        flops or preset.flops,
        intra_bw or preset.intra_bw,
        inter_bw or preset.inter_bw,
        preset.memory,
    )
    if tp is None:
        world = layout.get("gpus_per_node", 1) * layout.get("nodes", 1)
        tp = world if layout.get("parallel") == "tp" else 1
    return PlanInputs(model=config, hardware=hardware, tp=tp, **layout)


def _gb(n: float) -> str:
    return f"{n / GB:,.2f} GB"


def _seconds(s: float) -> str:
    return f"{s * 1e3:,.1f} ms"


def format_plan(plan: Plan) -> str:
    """The plan as plain aligned text."""
    i = plan.inputs
    hw = i["hardware"]
    checkpointing, dtype = i["activation_checkpointing"], i["dtype"]
    parallel = i["parallel"]
    layout = (
        f"tensor-parallel x {i['tp']}"
        if parallel == "tp"
        else f"{parallel} x {i['dp']} data-parallel, tensor-parallel x {i['tp']}"
    )
    lines = [
        f"{i['model']}: {plan.parameters:,} parameters, context {i['context']}, "
        f"micro-batch {i['micro_batch']}, {dtype} compute, gradients reduced in "
        f"{i['reduce_dtype']}",
        f"{i['world_size']} GPUs ({i['nodes']} node(s) x {i['gpus_per_node']}): {layout}",
        f"{hw['name']}: {hw['flops'] / 1e12:,.0f} TFLOP/s, NVLink {hw['intra_bw'] / GB:,.0f} "
        f"GB/s, InfiniBand {hw['inter_bw'] / GB:,.0f} GB/s per GPU",
        "",
        "memory per GPU",
    ]
    shard = " shard" if parallel == "fsdp" else ""
    rows = [
        ("parameters held", f"{plan.parameters_per_gpu:,.0f}"),
        (f"weights (fp32{shard})", _gb(plan.weights)),
        (f"gradients (fp32{shard})", _gb(plan.gradients)),
        (f"optimizer state (AdamW, fp32{shard})", _gb(plan.optimizer)),
    ]
    if parallel == "fsdp":
        blocks = 1 + i["prefetch"]
        rows += [
            (
                f"gathered weights (root + {blocks} block{'s' * (blocks > 1)}, {dtype})",
                _gb(plan.compute_weights),
            ),
            ("unsharded gradients (root + 1 block)", _gb(plan.unsharded_gradients)),
        ]
    elif plan.compute_weights:
        rows.append((f"weight copies ({dtype} autocast)", _gb(plan.compute_weights)))
    rows += [
        ("activations" + ("" if checkpointing else " (kept)"), _gb(plan.activations)),
        (
            "activations, checkpointed" + (" (kept)" if checkpointing else ""),
            _gb(plan.activations_checkpointed),
        ),
        ("total", f"{_gb(plan.total)} of {hw['memory'] / GB:,.0f} GB"),
    ]
    lines += _aligned(rows)
    lines += ["", "collectives per step (bytes each GPU sends)"]
    lines += _aligned(
        [
            (f"{c.name} [{c.group} ranks, {c.link}]", f"{_gb(c.bytes)}  {_seconds(c.seconds)}")
            for c in plan.collectives
        ]
        or [("none (one GPU)", "")]
    )
    lines += _across_nodes(plan)
    lines += ["", "step time"]
    no_overlap, overlap = plan.step_seconds_no_overlap, plan.step_seconds_overlap
    lines += _aligned(
        [
            ("compute at peak FLOP/s", _seconds(plan.compute_seconds)),
            ("communication", _seconds(plan.communication_seconds)),
            ("step, no overlap", _seconds(no_overlap)),
            ("step, full overlap", _seconds(overlap)),
            (
                "tokens/s (all GPUs)",
                f"{plan.tokens_per_step / no_overlap:,.0f} to "
                f"{plan.tokens_per_step / overlap:,.0f}",
            ),
        ]
    )
    if plan.total > hw["memory"]:
        remedies = [
            *(["--parallel fsdp"] if parallel == "ddp" else []),
            *(["a larger --tp"] if parallel != "ddp" and i["tp"] < i["gpus_per_node"] else []),
            *([] if checkpointing else ["--activation-checkpointing"]),
            *([] if i["flash_attention"] else ["--flash-attention"]),
            *(["a smaller --micro-batch"] if i["micro_batch"] > 1 else []),
        ]
        lines += ["", f"does not fit in {hw['memory'] / GB:,.0f} GB: try {', '.join(remedies)}"]
    return "\n".join(lines)


def _across_nodes(plan: Plan) -> list[str]:
    """Ring against hierarchical for the data-parallel collectives that span nodes."""
    spanning = [c for c in plan.collectives if c.ring_seconds is not None]
    if not spanning:
        return []
    i = plan.inputs
    local = i["gpus_per_node"] // i["tp"]
    header = f"{'flat ring':>9}  {'hierarchical':>12} = {'NVLink':>8} + {'InfiniBand':>10}  bound"
    rows = [("", header)]
    for c in spanning:
        assert c.ring_seconds is not None
        nvlink = c.nvlink_bytes / i["hardware"]["intra_bw"]
        infiniband = c.infiniband_bytes / i["hardware"]["inter_bw"]
        bound = "InfiniBand" if infiniband >= nvlink else "NVLink"
        times = [_seconds(t) for t in (c.ring_seconds, c.seconds, nvlink, infiniband)]
        rows.append(
            (c.name, f"{times[0]:>9}  {times[1]:>12}   {times[2]:>8}   {times[3]:>10}  {bound}")
        )
    return [
        "",
        f"across {i['nodes']} nodes: hierarchical, as counted above (NVLink inside each node,",
        f"InfiniBand across nodes on 1/{local} of the data), or one flat ring at its InfiniBand hop",
        *_aligned(rows),
    ]


def _aligned(rows: list[tuple[str, str]]) -> list[str]:
    width = max(len(name) for name, _ in rows)
    return [f"  {name:<{width}}  {value}".rstrip() for name, value in rows]
