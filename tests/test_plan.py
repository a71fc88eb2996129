"""The planner (train/plan.py): its formulas by hand on tiny cases, its parameter count against
built models, its memory against peaks measured on this CPU, and `scratchlm plan` itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scratchlm.core.errors import ScratchLMError
from scratchlm.model.config import ModelConfig, model_preset
from scratchlm.model.gpt import GPT
from scratchlm.train.flops import flops_per_token
from scratchlm.train.plan import (
    HARDWARE_PRESETS,
    PlanInputs,
    activation_bytes_per_layer,
    format_plan,
    make_plan,
    parameter_counts,
    plan_inputs,
)

ROOT = Path(__file__).resolve().parents[1]

# Peak RSS increase of building a GPT + AdamW and one fp32 training step, in a fresh process.
# A tiny step first, so that thread pools and kernels exist before the baseline is read; glibc
# is told to mmap every allocation over 64 KiB, so a freed tensor leaves RSS at once and the
# peak follows the live tensors rather than the heap's fragmentation.
MEASURE = """
import json, re, sys
import torch
from scratchlm.model.config import ModelConfig
from scratchlm.model.gpt import GPT
from scratchlm.train.adamw import AdamW

spec = json.loads(sys.argv[1])
torch.set_num_threads(1)
torch.manual_seed(0)

def step(config, batch):
    model = GPT(config)
    optimizer = AdamW(model.parameters(), foreach=False)
    idx = torch.randint(config.vocab_size, (batch, config.block_size))
    model.training_loss(idx, idx).backward()
    optimizer.step()

def peak_rss():
    # VmHWM, this process image's own peak: getrusage's ru_maxrss would carry over the peak of
    # the process that forked us (a large pytest), since Linux keeps it across exec.
    with open("/proc/self/status") as status:
        return int(re.search(r"VmHWM:\\s+(\\d+) kB", status.read()).group(1)) * 1024

warm = dict(spec["model"], n_layer=1, n_embd=32, n_head=2, vocab_size=64, block_size=8)
step(ModelConfig(**warm), 1)
before = peak_rss()
step(ModelConfig(**spec["model"]), spec["batch"])
print(peak_rss() - before)
"""


def tiny_inputs(n_layer: int = 2, **layout: object) -> PlanInputs:
    config = ModelConfig(n_layer=n_layer, n_head=2, n_embd=8, vocab_size=16, block_size=4)
    return PlanInputs(model=config, **layout)  # type: ignore[arg-type]


# The tiny model by hand (n_embd 8, 2 heads of 4, MLP 32, LayerNorm, biases, tied head): a block
# is q/k/v 8x24 + 24, the projection 8x8 + 8, the MLP 8x32 + 32 and 32x8 + 8, two LayerNorms
# of 16: 872; TP splits q/k/v, the projection, both MLP matrices and the q/k/v and MLP-in
# biases: 824. The root is the token (16x8) and position (4x8) embeddings and the final norm: 176.
BLOCK, BLOCK_SPLIT, ROOT_UNIT = 872, 824, 176


def test_activations_per_layer_are_megatrons_formula() -> None:
    s, b, h, a = 4, 2, 8, 2
    sbh = s * b * h
    # s·b·h·(34 + 5·a·s/h) bytes in 16-bit with dropout masks, no tensor parallelism.
    assert activation_bytes_per_layer(s, b, h, a, 1, "bf16", True, False) == sbh * (34 + 5)
    # TP of 2: s·b·h·(10 + 24/t + 5·a·s/(h·t)).
    assert activation_bytes_per_layer(s, b, h, a, 2, "bf16", True, False) == sbh * (22 + 2.5)
    # No dropout: no masks (2·s·b·h + a·s²·b bytes); fp32 doubles every other value.
    assert activation_bytes_per_layer(s, b, h, a, 1, "bf16", False, False) == sbh * (32 + 4)
    assert activation_bytes_per_layer(s, b, h, a, 1, "fp32", False, False) == 2 * sbh * 36
    # FlashAttention keeps no s x s scores.
    assert activation_bytes_per_layer(s, b, h, a, 1, "bf16", False, True) == sbh * 32


def test_tiny_model_counted_by_hand() -> None:
    counts = parameter_counts(tiny_inputs(n_layer=4).model)
    assert (counts.total, counts.blocks, counts.tp_split) == (
        4 * BLOCK + ROOT_UNIT,
        4 * BLOCK,
        4 * 824,
    )
    assert counts.root == ROOT_UNIT and counts.block_per_tp_rank(2) == BLOCK - BLOCK_SPLIT / 2
    assert GPT(tiny_inputs(n_layer=4).model).num_parameters() == counts.total


def test_memory_is_zeros_partitioning() -> None:
    psi = parameter_counts(tiny_inputs().model).total
    one = make_plan(tiny_inputs(dtype="bf16"))
    # ZeRO's 16Ψ as autocast keeps it: fp32 weights, fp32 .grad, two fp32 moments; and
    # autocast's bf16 copy of each weight on top.
    assert (one.weights, one.gradients, one.optimizer) == (4 * psi, 4 * psi, 8 * psi)
    assert one.compute_weights == 2 * psi and one.unsharded_gradients == 0
    fp32 = make_plan(tiny_inputs(dtype="fp32"))
    assert (fp32.weights, fp32.gradients, fp32.optimizer) == (4 * psi, 4 * psi, 8 * psi)
    assert fp32.compute_weights == 0  # no casts
    ddp = make_plan(tiny_inputs(gpus_per_node=4, nodes=2, parallel="ddp"))
    fsdp = make_plan(tiny_inputs(gpus_per_node=4, nodes=2, parallel="fsdp"))
    assert ddp.state == one.state and ddp.compute_weights == 2 * psi  # DDP replicates everything
    assert fsdp.state == pytest.approx(one.state / 8)  # ZeRO-3: 16Ψ / N_d
    # Activations per micro-batch do not depend on the data-parallel layout.
    assert fsdp.activations == ddp.activations == one.activations
    s, b, h = 4, 1, 8
    per_layer = activation_bytes_per_layer(s, b, h, 2, 1, "bf16", False, False)
    assert one.activations == 2 * per_layer + 2 * 2 * s * b * h
    # Checkpointing keeps each layer's input (and the head's), and rebuilds one layer.
    assert one.activations_checkpointed == (2 + 2) * 2 * s * b * h + per_layer
    assert one.total == 16 * psi + 2 * psi + one.activations


def test_fsdp_holds_the_gathered_blocks_and_an_unsharded_gradient() -> None:
    fsdp = make_plan(tiny_inputs(n_layer=4, gpus_per_node=4, parallel="fsdp"))
    psi = 4 * BLOCK + ROOT_UNIT
    assert fsdp.state == 16 * psi / 4  # the shards
    # Gathered in bf16: the root (never resharded between forward and backward), the block
    # computing and the one prefetched.
    assert fsdp.compute_weights == 2 * (ROOT_UNIT + 2 * BLOCK) == 3840
    # The root's bf16 gradient, and one block's bf16 gradient copied into its fp32
    # reduce-scatter input.
    assert fsdp.unsharded_gradients == 2 * ROOT_UNIT + (2 + 4) * BLOCK == 5584
    assert fsdp.total == fsdp.state + 3840 + 5584 + fsdp.activations
    bf16_reduce = make_plan(tiny_inputs(n_layer=4, gpus_per_node=4, parallel="fsdp",
                                        reduce_dtype="bf16"))  # fmt: skip
    assert bf16_reduce.unsharded_gradients == 2 * ROOT_UNIT + (2 + 2) * BLOCK
    no_prefetch = make_plan(tiny_inputs(n_layer=4, gpus_per_node=4, parallel="fsdp", prefetch=0))
    assert no_prefetch.compute_weights == 2 * (ROOT_UNIT + BLOCK)
    fp32 = make_plan(tiny_inputs(n_layer=4, gpus_per_node=4, parallel="fsdp", dtype="fp32"))
    assert fp32.compute_weights == 4 * (ROOT_UNIT + 2 * BLOCK)
    assert fp32.unsharded_gradients == 4 * ROOT_UNIT + (4 + 4) * BLOCK
    # 2-D: a block's gathered weights are its TP shard; the root stays whole on every TP rank.
    two_d = make_plan(tiny_inputs(n_layer=4, gpus_per_node=4, parallel="fsdp", tp=2))
    assert two_d.compute_weights == 2 * (ROOT_UNIT + 2 * (BLOCK - BLOCK_SPLIT / 2)) == 2192


def test_tensor_parallelism_splits_the_block_matrices() -> None:
    config = model_preset("gpt2-124m")
    counts = parameter_counts(config)
    C, L = config.n_embd, config.n_layer
    assert counts.tp_split == L * (3 * C * C + 3 * C + C * C + 2 * 4 * C * C + 4 * C)
    plan = make_plan(PlanInputs(model=config, gpus_per_node=2, parallel="tp", tp=2, dtype="fp32"))
    assert plan.weights == 4 * (counts.total - counts.tp_split / 2)


def test_collectives_move_the_bytes_the_papers_give() -> None:
    psi = parameter_counts(tiny_inputs().model).total
    assert psi == 2 * BLOCK + ROOT_UNIT
    # DDP all-reduces the fp32 .grad: 4 bytes a parameter, 2(n-1)/n of it sent.
    ddp = make_plan(tiny_inputs(gpus_per_node=4, parallel="ddp"))
    (all_reduce,) = ddp.collectives
    assert all_reduce.bytes == 2 * 3 / 4 * 4 * psi and all_reduce.link == "nvlink"
    ddp_bf16 = make_plan(tiny_inputs(gpus_per_node=4, parallel="ddp", reduce_dtype="bf16"))
    assert ddp_bf16.collectives[0].bytes == all_reduce.bytes / 2
    # FSDP gathers bf16 weights (the root only once: it stays gathered for backward) and
    # reduce-scatters fp32 gradients, or bf16 ones.
    fsdp = make_plan(tiny_inputs(gpus_per_node=4, parallel="fsdp"))
    gather_forward, gather_backward, scatter = (c.bytes for c in fsdp.collectives)
    assert (gather_forward, gather_backward) == (3 / 4 * 2 * psi, 3 / 4 * 2 * (psi - ROOT_UNIT))
    assert scatter == 3 / 4 * 4 * psi
    fsdp_bf16 = make_plan(tiny_inputs(gpus_per_node=4, parallel="fsdp", reduce_dtype="bf16"))
    assert fsdp_bf16.collectives[2].bytes == 3 / 4 * 2 * psi
    # In one dtype, ZeRO-3 moves 1.5x the data of DDP, less the root's second gather.
    ddp32 = make_plan(tiny_inputs(gpus_per_node=4, parallel="ddp", dtype="fp32"))
    fsdp32 = make_plan(tiny_inputs(gpus_per_node=4, parallel="fsdp", dtype="fp32"))
    moved = sum(c.bytes for c in fsdp32.collectives) + 3 / 4 * 4 * ROOT_UNIT
    assert moved == pytest.approx(1.5 * ddp32.collectives[0].bytes)
    # 2-D: FSDP over the 2 data-parallel ranks, one per node (so InfiniBand only), TP 2 inside.
    tp = make_plan(tiny_inputs(gpus_per_node=2, nodes=2, parallel="fsdp", tp=2, micro_batch=3))
    *dp_collectives, tp_reduce = tp.collectives
    assert [(c.link, c.group) for c in dp_collectives] == [("infiniband", 2)] * 3
    assert tp_reduce.link == "nvlink" and tp_reduce.group == 2
    # 4 all-reduces a layer of (b, s, h) 16-bit activations, 2(t-1)/t of each sent.
    assert tp_reduce.bytes == 2 * 4 * 2 * (1 / 2) * (3 * 4 * 8 * 2)
    hw = HARDWARE_PRESETS["h100"]
    assert tp_reduce.seconds == pytest.approx(tp_reduce.bytes / hw.intra_bw)
    scatter_2d = dp_collectives[2]
    assert scatter_2d.seconds == pytest.approx(scatter_2d.bytes / hw.inter_bw)
    # One rank per node: the hierarchy is the ring.
    assert scatter_2d.ring_seconds == pytest.approx(scatter_2d.seconds)
    recompute = make_plan(
        tiny_inputs(gpus_per_node=2, parallel="tp", tp=2, activation_checkpointing=True)
    )
    assert recompute.collectives[-1].bytes == pytest.approx(6 / 4 * tp_reduce.bytes / 3)


def test_multi_node_all_reduce_is_hierarchical() -> None:
    psi = parameter_counts(tiny_inputs().model).total
    hw = HARDWARE_PRESETS["h100"]
    data = 4 * psi  # fp32 gradients
    (all_reduce,) = make_plan(tiny_inputs(gpus_per_node=4, nodes=2, parallel="ddp")).collectives
    assert all_reduce.group == 8 and all_reduce.link == "nvlink+infiniband"
    # Reduce-scatter then all-gather inside the node: 2(g-1)/g of the data over NVLink ...
    assert all_reduce.nvlink_bytes == 2 * 3 / 4 * data
    # ... and between the nodes an all-reduce of 1/g of it: 2(n-1)/n x data/g over InfiniBand.
    assert all_reduce.infiniband_bytes == 2 * 1 / 2 * data / 4
    assert all_reduce.seconds == pytest.approx(1.5 * data / hw.intra_bw + 0.25 * data / hw.inter_bw)
    # One flat ring of the 8 GPUs sends 2(N-1)/N of the data, at the InfiniBand hop's speed.
    assert all_reduce.ring_seconds == pytest.approx(2 * 7 / 8 * data / hw.inter_bw)
    assert all_reduce.seconds < all_reduce.ring_seconds / 3
    # Inside one node there is no InfiniBand and nothing to compare.
    (inside,) = make_plan(tiny_inputs(gpus_per_node=8, parallel="ddp")).collectives
    assert inside.ring_seconds is None and inside.infiniband_bytes == 0


def test_the_table_says_which_link_bounds_the_hierarchy() -> None:
    # gpt2-1558m's fp32 gradients over 4 nodes of 8 H100s: NVLink 2·7/8·D at 450 GB/s against
    # InfiniBand 2·3/4·D/8 at 50 GB/s: 3.9 ms and 3.75 ms a GB of gradients: NVLink's.
    inputs = plan_inputs("gpt2-1558m", gpus_per_node=8, nodes=4, parallel="ddp", micro_batch=1)
    text = format_plan(make_plan(inputs))
    assert "across 4 nodes: hierarchical, as counted above" in text
    (row,) = [line for line in text.splitlines() if line.startswith("  ddp all-reduce")][1:]
    assert row.endswith("NVLink")
    # With 4 GPUs a node, InfiniBand carries a quarter of the data rather than an eighth.
    inputs = plan_inputs("gpt2-1558m", gpus_per_node=4, nodes=8, parallel="ddp", micro_batch=1)
    text = format_plan(make_plan(inputs))
    (row,) = [line for line in text.splitlines() if line.startswith("  ddp all-reduce")][1:]
    assert row.endswith("InfiniBand")


def test_step_time_is_flops_over_the_peak() -> None:
    inputs = plan_inputs("gpt2-124m", flops=1e12, micro_batch=2)
    plan = make_plan(inputs)
    counts = parameter_counts(inputs.model)
    expected = 2 * 1024 * flops_per_token(inputs.model, counts.non_embedding) / 1e12
    assert plan.compute_seconds == pytest.approx(expected)
    assert plan.collectives == [] and plan.step_seconds_no_overlap == plan.compute_seconds
    assert inputs.hardware.inter_bw == HARDWARE_PRESETS["h100"].inter_bw  # not overridden


@pytest.mark.parametrize("name", ["tiny", "llama-tiny", "depth-2"])
def test_parameter_memory_is_4_bytes_per_parameter_of_a_built_gpt(name: str) -> None:
    config = model_preset(name)
    model = GPT(config)
    plan = make_plan(PlanInputs(model=config, dtype="fp32"))
    assert plan.weights == 4 * model.num_parameters()
    assert parameter_counts(config).non_embedding == model.num_parameters(exclude_embeddings=True)


@pytest.mark.parametrize(
    ("model", "batch"),
    [
        # Weights, gradients and AdamW state dominate (16Ψ ≈ 270 MB, activations ≈ 17 MB).
        (dict(n_layer=4, n_head=8, n_embd=512, vocab_size=8192, block_size=64), 2),
        # Activations dominate (≈ 280 MB against 60 MB of state).
        (dict(n_layer=4, n_head=4, n_embd=256, vocab_size=2048, block_size=512), 8),
    ],
)
def test_memory_matches_a_peak_measured_on_cpu(model: dict[str, Any], batch: int) -> None:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, json.dumps(dict(model=model, batch=batch))],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    measured = float(done.stdout.split()[-1])
    # PyTorch's CPU attention (SDPA) is a flash kernel: it keeps no s x s scores.
    inputs = PlanInputs(
        model=ModelConfig(**model), micro_batch=batch, dtype="fp32", flash_attention=True
    )
    plan = make_plan(inputs)
    assert plan.state + plan.activations == pytest.approx(measured, rel=0.15)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        (dict(parallel="fsdp", tp=3, gpus_per_node=3), "--tp 3 must divide the model's 2 attent"),
        (dict(parallel="fsdp", tp=2, gpus_per_node=3), "--tp 2 must divide the 3 GPUs of a node"),
        (dict(parallel="fsdp", tp=2, nodes=2), "--tp 2 is more than the 1 GPUs of a node"),
        (dict(parallel="ddp", tp=2, gpus_per_node=2), "--parallel ddp keeps a whole model"),
        (dict(parallel="tp", tp=2, gpus_per_node=4), "--parallel tp splits one model over all 4"),
        (dict(parallel="tp", tp=2, gpus_per_node=2, nodes=2), "stays inside one node"),
        (dict(micro_batch=0), "--micro-batch must be at least 1"),
        (dict(reduce_dtype="fp16"), "--reduce-dtype must be one of fp32, bf16"),
        (dict(prefetch=-1), "--prefetch must be 0 or more"),
    ],
)
def test_layouts_that_cannot_work_are_one_clear_error(layout: dict[str, Any], message: str) -> None:
    with pytest.raises(ScratchLMError, match=message):
        make_plan(tiny_inputs(**layout))


def test_the_three_layouts_are_accepted() -> None:
    # Tensor parallelism alone: one model over the node's GPUs, no data parallelism.
    tp = make_plan(plan_inputs("gpt2-124m", gpus_per_node=4, parallel="tp"))
    assert (tp.inputs["tp"], tp.inputs["dp"]) == (4, 1)
    assert [c.name.split()[0] for c in tp.collectives] == ["tp"]
    assert tp.tokens_per_step == 1024
    # The 2-D mesh: FSDP over gpus x nodes / K data-parallel ranks, TP K inside each node.
    two_d = make_plan(plan_inputs("gpt2-124m", gpus_per_node=8, nodes=4, parallel="fsdp", tp=4))
    assert (two_d.inputs["tp"], two_d.inputs["dp"]) == (4, 8)
    assert [c.group for c in two_d.collectives] == [8, 8, 8, 4]
    counts = parameter_counts(model_preset("gpt2-124m"))
    assert two_d.parameters_per_gpu == pytest.approx(counts.per_tp_rank(4) / 8)
    ddp = make_plan(plan_inputs("gpt2-124m", gpus_per_node=8, nodes=2, parallel="ddp"))
    assert (ddp.inputs["tp"], ddp.inputs["dp"]) == (1, 16)


def test_mlp_width_must_divide_by_tp() -> None:
    config = ModelConfig(n_layer=1, n_head=4, n_embd=16, mlp_hidden=18, vocab_size=16)
    with pytest.raises(ScratchLMError, match="18 MLP width"):
        make_plan(PlanInputs(model=config, gpus_per_node=4, parallel="tp", tp=4))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scratchlm", "plan", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_cli_prints_a_table_and_json() -> None:
    args = ["--model", "llama-400m", "--gpus", "8", "--nodes", "4", "--parallel", "fsdp"]
    args += ["--tp", "2", "--micro-batch", "4", "--context", "2048", "--dtype", "bf16"]
    table = run_cli(*args)
    assert table.returncode == 0, table.stderr
    for line in ("optimizer state (AdamW, fp32 shard)", "gathered weights (root + 2 blocks, bf16)",
                 "fsdp reduce-scatter gradients (fp32) [16 ranks, nvlink+infiniband]",
                 "tp all-reduce activations (4/layer, bf16) [2 ranks, nvlink]",
                 "across 4 nodes: hierarchical", "step, no overlap"):  # fmt: skip
        assert line in table.stdout
    as_json = run_cli(
        *args, "--json", "--flops", "500", "--inter-bw", "25", "--reduce-dtype", "bf16"
    )
    plan = json.loads(as_json.stdout)
    assert plan["inputs"]["hardware"]["flops"] == 500e12
    assert plan["inputs"]["hardware"]["inter_bw"] == 25e9
    assert plan["inputs"]["dp"] == 16 and plan["inputs"]["context"] == 2048
    assert plan["inputs"]["reduce_dtype"] == "bf16"
    held = plan["compute_weights"] + plan["unsharded_gradients"]
    assert plan["total"] == pytest.approx(plan["state"] + held + plan["activations"])
    pure_tp = run_cli("--model", "gpt2-124m", "--gpus", "4", "--parallel", "tp", "--json")
    assert json.loads(pure_tp.stdout)["inputs"]["tp"] == 4, pure_tp.stderr


def test_cli_bad_tp_is_one_line() -> None:
    args = ["--model", "gpt2-1558m", "--gpus", "8", "--nodes", "4", "--parallel", "fsdp"]
    done = run_cli(*args, "--tp", "2")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: --tp 2 must divide the model's 25 attention heads (n_head): each TP rank takes "
        "an equal share; try --tp in [1, 5, 25]"
    ]
    assert "Traceback" not in done.stderr


def test_cli_tp_beyond_a_node_is_one_line() -> None:
    done = run_cli("--model", "gpt2-124m", "--gpus", "8", "--nodes", "2", "--parallel", "fsdp",
                   "--tp", "12")  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: --tp 12 is more than the 8 GPUs of a node (--gpus): tensor parallelism stays "
        "inside a node, on NVLink; use --tp in [1, 2, 4, 8]"
    ]
