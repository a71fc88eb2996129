"""Chapter 4, Distributed Training: data parallelism (DDP, FSDP/ZeRO) against tensor
parallelism, the 2-D mesh and 3-D parallelism, gradient accumulation, the planner's tables and
what the tests prove equal.

The diagrams are drawn here; the two identities the chapter rests on (accumulated micro-batches
are one big batch; a column- then row-split MLP sums to the whole one) are computed while the
book is built, with the project's own step code, and the measured differences printed. The
planner's numbers come from calling train/plan.py, never from the CLI or typed text.
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from scratchlm.book import typst_markup as tm
from scratchlm.book.context import BookContext
from scratchlm.core.errors import ScratchLMError

TITLE = "Distributed Training"

# The planner's models and cluster shapes: small to large, one node to several.
PLAN_MODELS = ("gpt2-124m", "gpt2-774m", "llama3.2-1b")
PLAN_CONTEXT = 2048
PLAN_MICRO_BATCH = 4


@dataclass(frozen=True)
class Layout:
    label: str
    nodes: int
    gpus_per_node: int
    parallel: str
    tp: int | None = None


PLAN_LAYOUTS = (
    Layout("DDP", 1, 8, "ddp"),
    Layout("FSDP", 1, 8, "fsdp"),
    Layout("TP", 1, 4, "tp"),
    Layout("FSDP x TP 4", 2, 8, "fsdp", 4),
)

# The tests that prove a distributed run computes what one process computes: (file, test,
# what it asserts). Each name is checked against the tests folder when it is there.
EQUIVALENCE_TESTS = (
    (
        "test_distributed.py",
        "test_ddp_on_two_ranks_equals_one_process_with_the_whole_batch",
        "Two DDP ranks, each with half of every micro-batch, with gradient accumulation and "
        "clipping, end with the weights and losses of one process that took the whole batch "
        "(float64, so only rounding differs).",
    ),
    (
        "test_distributed.py",
        "test_torchrun_ddp_trains_end_to_end_and_one_process_resumes_it",
        "torchrun trains with DDP, only rank 0 prints and writes, and one process resumes "
        "the run from its checkpoint.",
    ),
    (
        "test_sharding.py",
        "test_tensor_parallel_on_two_ranks_equals_one_process",
        "Tensor parallelism on two ranks gives one process's logits, gradients, gradient "
        "norms, losses and trained weights, for GPT-2 and Llama shapes, with AdamW and Muon.",
    ),
    (
        "test_sharding.py",
        "test_fsdp_on_two_ranks_equals_ddp",
        "FSDP on two ranks takes DDP's steps: the same losses and weights, and the optimizer "
        "state gathered from its shards equals DDP's whole state.",
    ),
    (
        "test_sharding.py",
        "test_fsdp_and_tensor_parallel_on_a_2d_mesh_of_four_ranks_equal_one_process",
        "FSDP across two tensor-parallel pairs (a 2 x 2 mesh) gives one process's gradients, "
        "losses and weights.",
    ),
    (
        "test_sharding.py",
        "test_torchrun_sharded_run_trains_resumes_exactly_and_one_process_reads_it",
        "A sharded run saves whole tensors, resumes to exactly the same weights, and an "
        "ordinary single process reads its checkpoint.",
    ),
    (
        "test_distributed_faults.py",
        "test_a_killed_rank_comes_back_from_the_last_checkpoint_to_the_same_weights",
        "A rank killed mid-run: the job restarts from its last checkpoint and ends with the "
        "weights of a run that was never interrupted.",
    ),
    (
        "test_distributed_faults.py",
        "test_a_run_of_one_process_continues_on_two_ranks",
        "A run begun in one process continues on two ranks.",
    ),
    (
        "test_plan.py",
        "test_memory_matches_a_peak_measured_on_cpu",
        "The planner's memory formula agrees with the peak memory of real training steps "
        "measured on the CPU.",
    ),
)


def write(ctx: BookContext) -> str:
    return "\n".join(
        [
            f"= {TITLE}",
            _introduction(),
            _parallelism_section(ctx),
            _tensor_parallel_section(ctx),
            _mesh_section(ctx),
            _accumulation_section(ctx),
            _planner_section(),
            _equivalence_section(ctx),
        ]
    )


def _introduction() -> str:
    return """
One GPU holds a model's weights, its gradients, the optimizer's state and the activations of
one micro-batch. Training faster means more GPUs working on one step; training bigger means
splitting what no single GPU can hold. There are two ways to split the work: give each GPU
_different data_ (data parallelism), or give each GPU _a different part of every matrix_
(tensor parallelism). scratchlm does both, and the tests prove that each computes what one
process computes.
"""


# --- data parallelism and its diagram ----------------------------------------------------------


def state_bytes_per_parameter() -> float:
    """What the planner counts per trained parameter (weight, gradient, AdamW's moments)."""
    from scratchlm.train.plan import make_plan, plan_inputs

    plan = make_plan(plan_inputs(PLAN_MODELS[0]))
    return plan.state / plan.parameters_per_gpu


def _parallelism_section(ctx: BookContext) -> str:
    ranks = 4
    per_parameter = tm.number(state_bytes_per_parameter())
    _draw_layouts(ctx.figure_path("parallel_layouts.png"), ranks)
    return f"""
== Data parallelism: DDP and FSDP (ZeRO)

*DDP* (distributed data parallel) keeps a whole copy of the model on every rank. Each rank runs
forward and backward on its own share of the batch; then an *all-reduce* sums the gradients
over the ranks (a ring all-reduce sends $2(n-1)/n$ times the gradient bytes from every GPU), so
every rank applies the same update and the copies stay identical. The memory per GPU does not
shrink: with AdamW each parameter costs {per_parameter} bytes (fp32 weight, gradient and two
moments, as the planner counts them).

*FSDP* (fully sharded data parallel, ZeRO stage 3) keeps only $1/n$ of every weight, gradient
and optimizer moment on each rank. Before a block computes, an *all-gather* assembles its
weights; after its backward pass a *reduce-scatter* sums the gradients and leaves each rank
only its own shard. The state per GPU falls by $n$; the price is one more pass of weights over
the network.

{tm.figure("figures/parallel_layouts.png", f"Which of {ranks} ranks holds what. A colour is one quarter of the model's state; a hatched cell is a piece the rank does not keep. DDP replicates all of it; FSDP keeps a quarter of each and gathers the rest when it computes; tensor parallelism splits every block's matrices and gives all ranks the same batch (drawn by the book).")}

The whole model goes into DDP with one call, and a step's loss function is wrapped so that
DDP's hooks see the forward pass:

{ctx.listing("scratchlm.train.distributed:wrap_data_parallel")}
{ctx.listing("scratchlm.train.sharding:apply_fsdp")}
"""


def _draw_layouts(path: Path, ranks: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rows = ("weights", "gradients", "optimizer", "batch")
    layouts = {
        "DDP": ("all", "own"),  # (what of the state a rank keeps, what of the batch it sees)
        "FSDP / ZeRO-3": ("shard", "own"),
        "Tensor parallel": ("shard", "all"),
    }
    collectives = {
        "DDP": "all-reduce gradients",
        "FSDP / ZeRO-3": "all-gather weights, reduce-scatter grads",
        "Tensor parallel": "all-reduce activations",
    }
    colours = [plt.get_cmap("tab10")(i) for i in range(ranks)]
    width, quarter = 0.8, 0.8 / ranks  # one rank's cell, and a quarter of the state in it
    fig, axes = plt.subplots(1, 3, figsize=(6.5, 2.7))
    for ax, (title, (state, batch)) in zip(axes, layouts.items(), strict=True):
        for r in range(ranks):
            for row, what in enumerate(rows):
                y = len(rows) - 1 - row
                if what == "batch":
                    colour = colours[r] if batch == "own" else "0.55"
                    ax.add_patch(Rectangle((r + 0.1, y + 0.15), width, 0.7, facecolor=colour))
                    continue
                for q in range(ranks):
                    keeps = state == "all" or q == r
                    ax.add_patch(
                        Rectangle(
                            (r + 0.1 + q * quarter, y + 0.15),
                            quarter,
                            0.7,
                            facecolor=colours[q] if keeps else "white",
                            edgecolor=colours[q],
                            hatch=None if keeps else "////",
                            linewidth=0.5,
                        )
                    )
        ax.set_xlim(0, ranks)
        ax.set_ylim(0, len(rows))
        ax.set_xticks([r + 0.5 for r in range(ranks)], [f"rank {r}" for r in range(ranks)])
        ax.tick_params(axis="x", labelsize=7, length=0)
        ax.set_yticks([len(rows) - 0.5 - i for i in range(len(rows))], rows, fontsize=8)
        ax.tick_params(axis="y", length=0)
        if title != "DDP":
            ax.set_yticklabels([])
        ax.set_title(f"{title}\n", fontsize=9, fontweight="bold")
        ax.text(ranks / 2, len(rows) + 0.1, collectives[title], ha="center", va="bottom",
                fontsize=7)  # fmt: skip
        for side in ax.spines.values():
            side.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


# --- tensor parallelism ------------------------------------------------------------------------


def split_mlp_error(ranks: int = 2, seed: int = 0) -> float:
    """The largest difference between a GELU MLP computed whole and the same MLP split as
    Megatron splits it: the first matrix by columns, the second by rows, the ranks' outputs
    summed (the all-reduce). float64, so what is left is rounding."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 32, dtype=torch.float64, generator=generator)
    w_in = torch.randn(32, 128, dtype=torch.float64, generator=generator)
    w_out = torch.randn(128, 32, dtype=torch.float64, generator=generator)
    whole = torch.nn.functional.gelu(x @ w_in) @ w_out
    parts = [
        torch.nn.functional.gelu(x @ w_in_r) @ w_out_r
        for w_in_r, w_out_r in zip(w_in.chunk(ranks, dim=1), w_out.chunk(ranks, dim=0), strict=True)
    ]
    return float((torch.stack(parts).sum(0) - whole).abs().max())


def _tensor_parallel_section(ctx: BookContext) -> str:
    ranks = 2
    error = split_mlp_error(ranks)
    return f"""
== Tensor parallelism

Tensor parallelism (Megatron-LM) splits each block's matrices instead of the batch. The MLP
computes $"GELU"(X W_1) W_2$. Split $W_1$ by columns, $W_1 = [W_1^((1)), dots, W_1^((t))]$:
rank $r$ computes $Y_r = "GELU"(X W_1^((r)))$ with no communication, because GELU acts on each
column alone. Split $W_2$ by rows to match, and

$ "GELU"(X W_1) W_2 = sum_(r=1)^t Y_r W_2^((r)), $

a sum that one *all-reduce* of the $(b, s, h)$ activations computes. Attention splits the same
way, by heads: $Q$, $K$, $V$ by columns (each rank computes its own heads), the output
projection by rows. So a block costs two all-reduces forward and two backward, each over the
activations: frequent and latency-bound, which is why tensor parallelism stays inside a node,
on NVLink. Every rank sees the same batch.

While this book was built, a random MLP in float64 was computed whole and split over
{tm.text(ranks)} ranks as above; the largest difference between the two was
{tm.text(f"{error:.1e}")}: rounding, as the identity says.

scratchlm applies the split with PyTorch's `parallelize_module`, column-parallel for
`c_attn` and `mlp.c_fc`, row-parallel for the two output projections:

{ctx.listing("scratchlm.train.sharding:apply_tensor_parallel")}
"""


# --- the 2-D mesh and 3-D parallelism ----------------------------------------------------------


def _mesh_section(ctx: BookContext) -> str:
    from scratchlm.train.sharding import mesh_shape

    nodes, gpus, tp = 2, 4, 2
    shape = mesh_shape("fsdp", tp, nodes * gpus)
    _draw_mesh(ctx.figure_path("mesh.png"), nodes, gpus, shape.dp, shape.tp)
    return f"""
== The 2-D mesh and 3-D parallelism

The two combine. Arrange the ranks in a grid: each row of the grid is a tensor-parallel group
of neighbouring ranks inside one node, and each column is a data-parallel group across them.
`--train.parallel fsdp --train.tp T` builds exactly that mesh (`mesh_shape` gives it
{tm.text(shape.dp)} data-parallel groups of {tm.text(shape.tp)} for {tm.text(nodes * gpus)}
ranks with $T = $ {tm.text(tp)}): tensor parallelism talks over NVLink, FSDP's gathers and
scatters cross the slower links between nodes, once per step.

{tm.figure("figures/mesh.png", f"The mesh of {nodes * gpus} ranks on {nodes} nodes with tp = {tp}, as mesh_shape lays it out: tensor-parallel groups (boxes) inside a node, data-parallel groups (same colour) across (drawn by the book).", width="85%")}

*3-D parallelism* adds a third axis, *pipeline parallelism*: consecutive layers live on
different groups of GPUs and micro-batches flow through them like an assembly line, which
suits models whose layers alone do not fit a node. scratchlm implements the two axes above and
not pipelines: its models fit in the memory of one node once sharded, and a pipeline's bubbles
(stages idle while the pipe fills and drains) only pay off at a scale these machines do not
have.
"""


def _draw_mesh(path: Path, nodes: int, gpus: int, dp: int, tp: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch, Rectangle

    colours = [plt.get_cmap("tab10")(i) for i in range(dp)]
    fig, ax = plt.subplots(figsize=(5.5, 2.2))
    for node in range(nodes):
        x0 = node * (gpus + 0.8)
        ax.add_patch(
            Rectangle((x0 - 0.15, -0.35), gpus + 0.3, 1.75, facecolor="0.95", edgecolor="0.6")
        )
        ax.text(x0 + gpus / 2, 1.25, f"node {node}", ha="center", fontsize=8)
        for local in range(gpus):
            rank = node * gpus + local
            d, t = divmod(rank, tp)  # neighbouring ranks share a tensor-parallel group
            ax.add_patch(
                Rectangle((x0 + local + 0.1, 0), 0.8, 0.9, facecolor=colours[d], alpha=0.75)
            )
            ax.text(x0 + local + 0.5, 0.62, f"rank {rank}", ha="center", fontsize=7)
            ax.text(x0 + local + 0.5, 0.28, f"dp {d}, tp {t}", ha="center", fontsize=6.5)
        for group in range(gpus // tp):
            ax.add_patch(
                FancyBboxPatch(
                    (x0 + group * tp + 0.03, -0.12),
                    tp - 0.06,
                    1.12,
                    boxstyle="round,pad=0.02",
                    fill=False,
                    edgecolor="black",
                    linewidth=1.2,
                )
            )
    ax.set_xlim(-0.3, nodes * (gpus + 0.8) - 0.5)
    ax.set_ylim(-0.5, 1.5)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


# --- gradient accumulation ---------------------------------------------------------------------


def accumulation_error(accum: int = 4, micro: int = 2, seed: int = 0) -> float:
    """The largest difference between the gradients of one batch of accum * micro sequences and
    those accumulate_gradients sums over `accum` micro-batches of `micro` (a tiny GPT in
    float64)."""
    import torch

    from scratchlm.model import GPT
    from scratchlm.model.config import ModelConfig
    from scratchlm.train.config import TrainConfig
    from scratchlm.train.step import accumulate_gradients, model_loss

    torch.manual_seed(seed)
    model = GPT(ModelConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32)).double()
    loss_fn = model_loss(model, TrainConfig(fused_loss=False))
    generator = torch.Generator().manual_seed(seed)
    batch = torch.randint(0, 64, (accum * micro, 17), generator=generator)
    loss_fn(batch[:, :-1], batch[:, 1:]).backward()
    whole = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    pieces = iter(batch.split(micro))

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        b = next(pieces)
        return b[:, :-1], b[:, 1:]

    accumulate_gradients(loss_fn, next_batch, accum, nullcontext())
    return max(
        float((p.grad - whole[n]).abs().max())
        for n, p in model.named_parameters()
        if p.grad is not None
    )


def _accumulation_section(ctx: BookContext) -> str:
    accum, micro = 4, 2
    error = accumulation_error(accum, micro)
    return f"""
== Gradient accumulation on small GPUs

A batch that does not fit is cut into $K$ micro-batches. The loss of the step is the mean over
all $K B$ sequences, and a mean of equal-sized parts is the mean of their means:

$ L = 1/(K B) sum_(i=1)^(K B) ell_i = 1/K sum_(k=1)^K L_k, quad
  nabla L = 1/K sum_(k=1)^K nabla L_k. $

So backpropagating $L_k \\/ K$ for each micro-batch in turn, without zeroing the gradients in
between, leaves in `.grad` exactly the gradient of the big batch; the optimizer steps once.
Memory holds one micro-batch of activations at a time; time is the same FLOPs as the big batch.
Under DDP only the last micro-batch's backward all-reduces (`no_sync` holds the others back), so
accumulation also divides the communication by $K$.

{ctx.listing("scratchlm.train.step:accumulate_gradients")}

Checked while this book was built: a tiny GPT's gradients from one batch of
{tm.text(accum * micro)} sequences, and from `accumulate_gradients` over {tm.text(accum)}
micro-batches of {tm.text(micro)}, differ by at most {tm.text(f"{error:.1e}")} (float64).

{_run_batch(ctx)}
"""


def _run_batch(ctx: BookContext) -> str:
    """The reader's own batch: micro-batch, accumulation and tokens per optimizer step."""
    from scratchlm.config import load_run_config

    try:
        config = load_run_config(ctx.run_dir)
        accum = config.train.accumulation_steps(config.model.block_size)
    except (ScratchLMError, OSError, KeyError, ValueError):
        return tm.note("This run's configuration could not be read, so its batch is not shown.")
    batch, block = config.train.batch_size, config.model.block_size
    rows = [
        ("micro-batch (train.batch_size)", tm.number(batch)),
        ("context (model.block_size)", tm.number(block)),
        ("micro-batches per step", tm.number(accum)),
        ("tokens per optimizer step", tm.number(batch * block * accum)),
    ]
    return (
        f"Your run, {tm.text(ctx.run_name)}, steps on this batch (from its config.toml):\n\n"
        + tm.table(["", "value"], rows)
    )


# --- the planner -------------------------------------------------------------------------------


def planner_rows() -> list[list[str]]:
    """The planner's numbers for PLAN_MODELS x PLAN_LAYOUTS: model, layout, GPUs, parameters
    per GPU, memory per GPU, bytes each GPU sends per step, and step time (no overlap to full
    overlap). A layout that cannot split a model says why in short."""
    from scratchlm.train.plan import GB, make_plan, plan_inputs

    rows = []
    for model in PLAN_MODELS:
        for layout in PLAN_LAYOUTS:
            gpus = f"{layout.nodes} x {layout.gpus_per_node}"
            try:
                plan = make_plan(
                    plan_inputs(
                        model,
                        context=PLAN_CONTEXT,
                        tp=layout.tp,
                        gpus_per_node=layout.gpus_per_node,
                        nodes=layout.nodes,
                        parallel=layout.parallel,
                        micro_batch=PLAN_MICRO_BATCH,
                    )
                )
            except ScratchLMError:
                rows.append([model, layout.label, gpus, "does not split", "", "", ""])
                continue
            sent = sum(c.bytes for c in plan.collectives)
            rows.append(
                [
                    model,
                    layout.label,
                    gpus,
                    f"{plan.parameters_per_gpu / 1e6:,.0f} M",
                    f"{plan.total / GB:,.1f} GB",
                    f"{sent / GB:,.2f} GB",
                    f"{plan.step_seconds_overlap * 1e3:,.0f}-"
                    f"{plan.step_seconds_no_overlap * 1e3:,.0f} ms",
                ]
            )
    return rows


def _planner_section() -> str:
    from scratchlm.train.plan import format_plan, make_plan, plan_inputs

    example = format_plan(
        make_plan(
            plan_inputs(
                PLAN_MODELS[-1],
                context=PLAN_CONTEXT,
                tp=4,
                gpus_per_node=8,
                nodes=2,
                parallel="fsdp",
                micro_batch=PLAN_MICRO_BATCH,
            )
        )
    )
    headers = ["model", "layout", "nodes x GPUs", "params / GPU", "memory / GPU", "sent / GPU",
               "step"]  # fmt: skip
    return f"""
== Planning a cluster

These machines cannot show scale, so `scratchlm plan` computes it from the model's shape and
the papers' formulas (ZeRO's state per parameter, Korthikanti et al.'s
activation memory, ring collectives' bytes, FLOPs at the GPU's peak). The table calls the
planner (`scratchlm.train.plan.make_plan`) for a few models and cluster shapes on H100s,
context {tm.number(PLAN_CONTEXT)} and micro-batch {tm.number(PLAN_MICRO_BATCH)} per GPU; memory
is an upper bound (every piece at its peak at once), the step lies between full overlap of
compute and communication and none.

#[#set text(size: 8.5pt)
{tm.table(headers, planner_rows(), align="left, left, right, right, right, right, right")}]

Read across a row: FSDP divides the state by the GPUs where DDP replicates it, and pays with
more bytes on the wire; tensor parallelism divides parameters and activations but sends
activations every layer. The whole plan of the last model on two nodes, as the command prints
it:

#[#show raw.where(block: true): set text(size: 6.5pt)
{tm.code(example, lang="text")}]
"""


# --- what the tests prove ----------------------------------------------------------------------


def tests_folder(ctx: BookContext) -> Path | None:
    """The project's tests beside the source (a checkout); None for an installed package."""
    folder = ctx.source_root.parent.parent / "tests"
    return folder if folder.is_dir() else None


def found_tests(ctx: BookContext) -> dict[str, bool] | None:
    """For each test the chapter cites, whether it is defined in its file (None: no tests)."""
    folder = tests_folder(ctx)
    if folder is None:
        return None
    found = {}
    for file, name, _ in EQUIVALENCE_TESTS:
        path = folder / file
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        found[name] = re.search(rf"^def {re.escape(name)}\(", text, re.MULTILINE) is not None
    return found


def _equivalence_section(ctx: BookContext) -> str:
    found = found_tests(ctx)
    items = []
    for file, name, claim in EQUIVALENCE_TESTS:
        where = tm.inline_code(f"tests/{file}::{name}")
        absent = " (not in this source tree)" if found is not None and not found[name] else ""
        items.append(f"- #text(size: 7pt)[{where}{tm.text(absent)}] \\\n  {tm.text(claim)}")
    origin = (
        "Each name below is a test of this source tree."
        if found is not None and all(found.values())
        else "The tests live in the project's repository (tests/)."
    )
    return f"""
== What the tests prove

Distributed code is easy to get subtly wrong: a gradient averaged twice, a shard updated with
the wrong moments, a rank one step behind. scratchlm's tests run the distributed layouts on
several CPU processes (the gloo backend) and compare them with one process, number for number.
{origin}

{chr(10).join(items)}
"""
