"""The options that say which weights a command loads and how it holds them, shared by the
commands that run a model (generate, chat): --checkpoint, --device, --dtype, --quantize."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_weights_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the latest")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--dtype",
        default="auto",
        help="float32, bfloat16, or auto (bfloat16 on GPUs, on CPUs with native bf16 and "
        "with --quantize; float32 elsewhere)",
    )
    p.add_argument(
        "--quantize",
        choices=("int8", "int4"),
        default=None,
        help="CPU: keep the blocks' weights in int8 (per channel) or int4 (groups of 32, "
        "as GGUF Q4_1): fewer bytes read per token, faster decoding, slightly different text",
    )
