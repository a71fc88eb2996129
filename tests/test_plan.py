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


def tiny_inputs(**layout: object) -> PlanInputs:
    config = ModelConfig(n_layer=2, n_head=2, n_embd=8, vocab_size=16, block_size=4)
    return PlanInputs(model=config, **layout)  # type: ignore[arg-type]


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


def test_memory_is_zeros_partitioning() -> None:
    psi = parameter_counts(tiny_inputs().model).total
    one = make_plan(tiny_inputs(dtype="bf16"))
    assert (one.weights, one.gradients, one.optimizer) == (2 * psi, 2 * psi, 12 * psi)
    fp32 = make_plan(tiny_inputs(dtype="fp32"))
    assert (fp32.weights, fp32.gradients, fp32.optimizer) == (4 * psi, 4 * psi, 8 * psi)
    ddp = make_plan(tiny_inputs(gpus_per_node=4, nodes=2, parallel="ddp"))
    fsdp = make_plan(tiny_inputs(gpus_per_node=4, nodes=2, parallel="fsdp"))
    assert ddp.state == one.state  # DDP replicates everything
    assert fsdp.state == pytest.approx(one.state / 8)  # ZeRO-3: 16Ψ / N_d
    # Activations per micro-batch do not depend on the data-parallel layout.
    assert fsdp.activations == ddp.activations == one.activations
    s, b, h = 4, 1, 8
    per_layer = activation_bytes_per_layer(s, b, h, 2, 1, "bf16", False, False)
    assert one.activations == 2 * per_layer + 2 * 2 * s * b * h
    # Checkpointing keeps each layer's input (and the head's), and rebuilds one layer.
    assert one.activations_checkpointed == (2 + 2) * 2 * s * b * h + per_layer


def test_tensor_parallelism_splits_the_block_matrices() -> None:
    config = model_preset("gpt2-124m")
    counts = parameter_counts(config)
    C, L = config.n_embd, config.n_layer
    assert counts.tp_split == L * (3 * C * C + 3 * C + C * C + 2 * 4 * C * C + 4 * C)
    plan = make_plan(PlanInputs(model=config, gpus_per_node=2, tp=2, dtype="fp32"))
    assert plan.weights == 4 * (counts.total - counts.tp_split / 2)


def test_collectives_move_the_bytes_the_papers_give() -> None:
    psi = parameter_counts(tiny_inputs().model).total
    ddp = make_plan(tiny_inputs(gpus_per_node=4, parallel="ddp"))
    (all_reduce,) = ddp.collectives
    assert all_reduce.bytes == 2 * 3 / 4 * 2 * psi and all_reduce.link == "nvlink"
    fsdp = make_plan(tiny_inputs(gpus_per_node=4, parallel="fsdp"))
    assert [c.bytes for c in fsdp.collectives] == [3 / 4 * 2 * psi] * 3
    # ZeRO-3 moves 1.5x the data of DDP.
    assert sum(c.bytes for c in fsdp.collectives) == pytest.approx(1.5 * all_reduce.bytes)
    tp = make_plan(tiny_inputs(gpus_per_node=2, nodes=2, tp=2, micro_batch=3))
    dp_reduce, tp_reduce = tp.collectives
    assert dp_reduce.link == "infiniband" and dp_reduce.group == 2
    assert tp_reduce.link == "nvlink" and tp_reduce.group == 2
    # 4 all-reduces a layer of (b, s, h) 16-bit activations, 2(t-1)/t of each sent.
    assert tp_reduce.bytes == 2 * 4 * 2 * (1 / 2) * (3 * 4 * 8 * 2)
    hw = HARDWARE_PRESETS["h100"]
    assert tp_reduce.seconds == pytest.approx(tp_reduce.bytes / hw.intra_bw)
    assert dp_reduce.seconds == pytest.approx(dp_reduce.bytes / hw.inter_bw)
    recompute = make_plan(tiny_inputs(gpus_per_node=2, tp=2, activation_checkpointing=True))
    assert recompute.collectives[-1].bytes == pytest.approx(6 / 4 * tp_reduce.bytes / 3)


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
        (dict(tp=3, gpus_per_node=3), "--tp 3 must divide the model's 2 attention heads"),
        (dict(tp=2, gpus_per_node=3), "--tp 2 must divide the 3 GPUs"),
        (dict(micro_batch=0), "--micro-batch must be at least 1"),
    ],
)
def test_layouts_that_cannot_work_are_one_clear_error(layout: dict[str, Any], message: str) -> None:
    with pytest.raises(ScratchLMError, match=message):
        make_plan(tiny_inputs(**layout))


def test_mlp_width_must_divide_by_tp() -> None:
    config = ModelConfig(n_layer=1, n_head=4, n_embd=16, mlp_hidden=18, vocab_size=16)
    with pytest.raises(ScratchLMError, match="18 MLP width"):
        make_plan(PlanInputs(model=config, gpus_per_node=4, tp=4))


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
    for line in ("optimizer state (AdamW)", "fsdp reduce-scatter gradients [16 ranks, infiniband]",
                 "tp all-reduce activations (4/layer) [2 ranks, nvlink]", "step, no overlap"):  # fmt: skip
        assert line in table.stdout
    as_json = run_cli(*args, "--json", "--flops", "500", "--inter-bw", "25")
    plan = json.loads(as_json.stdout)
    assert plan["inputs"]["hardware"]["flops"] == 500e12
    assert plan["inputs"]["hardware"]["inter_bw"] == 25e9
    assert plan["inputs"]["dp"] == 16 and plan["inputs"]["context"] == 2048
    assert plan["total"] == pytest.approx(plan["state"] + plan["activations"])


def test_cli_bad_tp_is_one_line() -> None:
    done = run_cli("--model", "gpt2-1558m", "--gpus", "8", "--nodes", "4", "--tp", "2")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: --tp 2 must divide the model's 25 attention heads (n_head): each TP rank takes "
        "an equal share; try --tp in [1, 5, 25]"
    ]
    assert "Traceback" not in done.stderr
