"""`scratchlm plan`: memory, communication and step time of a distributed run, per GPU.

The formulas are in train/plan.py; this module parses and prints.
"""

from __future__ import annotations

import argparse
from typing import Any

from scratchlm.core.errors import ScratchLMError


def register(commands: Any) -> None:
    from scratchlm.train.plan import DTYPES, HARDWARE_PRESETS, PARALLEL_KINDS, REDUCE_DTYPES

    p = commands.add_parser(
        "plan",
        help="per-GPU memory, collectives and step time of a distributed run (ZeRO/Megatron "
        "formulas)",
    )
    p.add_argument(
        "--model", required=True, help="a model preset (gpt2-1558m, llama-400m, depth-N)"
    )
    p.add_argument("--gpus", type=int, default=1, help="GPUs per node")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument(
        "--parallel",
        choices=PARALLEL_KINDS,
        default="ddp",
        help="ddp; fsdp (with --tp K: FSDP across nodes, TP K inside each); tp alone",
    )
    p.add_argument(
        "--tp",
        type=int,
        default=None,
        help="tensor-parallel degree, inside a node (default: all GPUs for --parallel tp, else 1)",
    )
    p.add_argument("--micro-batch", type=int, default=1, help="sequences per GPU per step")
    p.add_argument(
        "--context", type=int, default=0, help="tokens per sequence (default: the preset's)"
    )
    p.add_argument("--dtype", choices=DTYPES, default="bf16", help="the compute dtype")
    p.add_argument(
        "--reduce-dtype",
        choices=REDUCE_DTYPES,
        default="fp32",
        help="what the gradients' all-reduce/reduce-scatter moves (DDP's fp32 .grad; bf16 halves)",
    )
    p.add_argument(
        "--prefetch",
        type=int,
        default=1,
        help="blocks FSDP gathers ahead of the one computing (FSDP2's default: 1)",
    )
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument(
        "--flash-attention",
        action="store_true",
        help="keep no s x s attention scores (Megatron's formula counts them)",
    )
    p.add_argument("--gpu", choices=tuple(HARDWARE_PRESETS), default="h100")
    p.add_argument("--flops", type=float, default=0.0, help="peak TFLOP/s (default: the GPU's)")
    p.add_argument("--intra-bw", type=float, default=0.0, help="NVLink GB/s per GPU, one way")
    p.add_argument("--inter-bw", type=float, default=0.0, help="InfiniBand GB/s per GPU, one way")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(handler=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> None:
    from scratchlm.train.plan import format_plan, make_plan, plan_inputs

    if min(args.flops, args.intra_bw, args.inter_bw) < 0:
        raise ScratchLMError("--flops, --intra-bw and --inter-bw must be positive")
    inputs = plan_inputs(
        args.model,
        context=args.context,
        gpu=args.gpu,
        flops=args.flops * 1e12,
        intra_bw=args.intra_bw * 1e9,
        inter_bw=args.inter_bw * 1e9,
        gpus_per_node=args.gpus,
        nodes=args.nodes,
        parallel=args.parallel,
        tp=args.tp,
        micro_batch=args.micro_batch,
        dtype=args.dtype,
        reduce_dtype=args.reduce_dtype,
        prefetch=args.prefetch,
        activation_checkpointing=args.activation_checkpointing,
        flash_attention=args.flash_attention,
    )
    plan = make_plan(inputs)
    print(plan.to_json() if args.json else format_plan(plan))
