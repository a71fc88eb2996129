"""`scratchlm export` and `scratchlm import`: a run's model to and from Hugging Face and GGUF.

The work is in runs/hf.py and runs/gguf_runs.py; this module parses and prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from scratchlm.core.user_paths import check_output

MODEL_EXPORT_FORMATS = ("hf", "gguf", "peft")
MODEL_IMPORT_FORMATS = ("hf", "gguf")


def register(commands: Any) -> None:
    p = commands.add_parser(
        "export", help="write a trained run's model in another format (Hugging Face, GGUF, PEFT)"
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument(
        "--format",
        required=True,
        choices=MODEL_EXPORT_FORMATS,
        help="hf: a folder (config.json, model.safetensors, tokenizer.json) that transformers "
        "loads as GPT-2, Llama, Qwen3, Arcee, GPT-NeoX or StableLM, whichever computes the "
        "model; gguf: one file of the same architecture for llama.cpp; peft: a LoRA run's "
        "adapter as a PEFT adapter folder for the hf export of its base model",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (hf) or file (gguf)")
    p.add_argument(
        "--dtype",
        choices=("f32", "f16", "q8_0", "q4_0", "q4_1"),  # runs.gguf_file.GGUF_DTYPES
        default="f32",
        help="gguf: the weight matrices' type: float, or llama.cpp's 8- or 4-bit blocks (q4_x "
        "keeps the output projection in q8_0)",
    )
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the latest")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(handler=cmd_export)

    p = commands.add_parser("import", help="make a run directory from another format's model")
    p.add_argument(
        "format",
        choices=MODEL_IMPORT_FORMATS,
        help="hf: a Hugging Face GPT-2, Llama, Qwen3, Arcee, GPT-NeoX or StableLM folder "
        "(config.json, model.safetensors, tokenizer.json); gguf: a llama.cpp file of one of "
        "those architectures (f32, f16 or quantised)",
    )
    p.add_argument("source", type=Path, help="the folder or file to import")
    p.add_argument("--out", required=True, type=Path, help="the run directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(handler=cmd_import)


def cmd_export(args: argparse.Namespace) -> None:
    # hf writes a folder, gguf one file; checked here, before torch is imported for runs/.
    check_output(args.out, folder=args.format != "gguf", overwrite=args.overwrite)
    if args.format == "peft":
        from scratchlm.finetune.training import export_peft

        export_peft(args.run_dir, args.out, args.overwrite)
        print(
            f"wrote {args.out}: a PEFT LoRA adapter (adapter_config.json, adapter_model.safetensors)"
        )
        return
    if args.format == "gguf":
        from scratchlm.model.hf_format import hf_architecture
        from scratchlm.runs.gguf_architectures import GGUF_ARCHITECTURES
        from scratchlm.runs.gguf_runs import export_gguf_run

        model = export_gguf_run(args.run_dir, args.out, args.checkpoint, args.dtype)
        arch = GGUF_ARCHITECTURES[hf_architecture(model.config)]
        print(
            f"wrote {args.out}: a llama.cpp GGUF of architecture {arch}, {args.dtype} weights "
            f"({model.num_parameters():,} parameters)"
        )
        return
    from scratchlm.model.hf_format import HF_CLASSES, hf_architecture
    from scratchlm.runs.hf import export_hf_run

    model = export_hf_run(args.run_dir, args.out, args.checkpoint, args.overwrite)
    kind = HF_CLASSES[hf_architecture(model.config)]
    print(f"wrote {args.out}: a Hugging Face {kind} ({model.num_parameters():,} parameters)")


def cmd_import(args: argparse.Namespace) -> None:
    check_output(args.out, folder=True, overwrite=args.overwrite)  # a run directory
    if args.format == "gguf":
        from scratchlm.runs.gguf_runs import import_gguf_run

        model = import_gguf_run(args.source, args.out, overwrite=args.overwrite)
        print(
            f"imported {args.source} ({model.config.n_layer} layers, {model.config.n_embd} wide) "
            f"into the run {args.out}; try `scratchlm generate {args.out} --prompt ...`"
        )
        return
    from scratchlm.runs.hf import import_hf_run

    model = import_hf_run(args.source, args.out, overwrite=args.overwrite)
    print(
        f"imported {args.source} ({model.num_parameters():,} parameters) into the run {args.out}; "
        f"try `scratchlm generate {args.out} --prompt ...`"
    )
