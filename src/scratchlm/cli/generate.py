"""`scratchlm generate`: sample text from a trained run (or a pretrained model's run).

Thin: parse, load with inference.load_for_inference, generate, print. Sampling flags are the
[sample] section's (`--sample.temperature`, ...), with the short aliases people expect.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from scratchlm.cli.options import add_section_options, section_from_args
from scratchlm.cli.weights_options import add_weights_options
from scratchlm.core.errors import ScratchLMError
from scratchlm.core.messages import status
from scratchlm.inference.config import SampleConfig

SAMPLE_ALIASES = {
    "prompts": "--prompt",
    "max_new_tokens": "--max-new-tokens",
    "temperature": "--temperature",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "repetition_penalty": "--repetition-penalty",
    "seed": "--seed",
}


def register(commands: Any) -> None:
    """Add the `generate` subparser to `commands` (argparse's subparsers action)."""
    p = commands.add_parser("generate", help="sample text from a trained run")
    p.add_argument(
        "run_dir",
        type=Path,
        help="a run directory, or a pretrained model (smollm2-135m-instruct: downloaded and "
        "imported into the cache on first use)",
    )
    p.add_argument(
        "--stop",
        action="append",
        default=[],
        help="stop a sample as soon as its text contains this string (left out); repeatable",
    )
    p.add_argument(
        "--chat",
        action="store_true",
        help="send each prompt as a user message through the run's chat template, and print "
        "the reply (chat models such as smollm2-135m-instruct)",
    )
    add_weights_options(p)
    p.add_argument("--num-samples", type=int, default=1, help="sample i uses seed + i")
    p.add_argument("--no-cache", action="store_true", help="recompute attention every step")
    add_section_options(p, "sample", SampleConfig, aliases=SAMPLE_ALIASES)
    p.set_defaults(handler=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> None:
    from scratchlm.inference.stop_strings import check_stop_strings

    if args.num_samples < 1:
        raise ScratchLMError(f"--num-samples must be at least 1, got {args.num_samples}")
    check_stop_strings(args.stop)
    section_from_args(args, "sample", SampleConfig())  # bad values: refused before loading
    _print_samples(
        args.run_dir,
        args=args,
        num_samples=args.num_samples,
        checkpoint=args.checkpoint,
        use_cache=not args.no_cache,
        device=args.device,
        stop=args.stop,
        dtype=args.dtype,
        quantize=args.quantize,
        chat=args.chat,
    )


def print_samples(run_dir: Path, out_file: Path | None = None) -> None:
    """Print the run's own prompts continued with its [sample] settings (and write them to
    `out_file`): what `train` shows when it is done."""
    _print_samples(run_dir, out_file=out_file)


def _print_samples(
    source: Path,
    args: argparse.Namespace | None = None,
    num_samples: int = 1,
    checkpoint: Path | None = None,
    use_cache: bool = True,
    device: str = "cpu",
    out_file: Path | None = None,
    stop: list[str] | None = None,
    dtype: str = "auto",
    quantize: str | None = None,
    chat: bool = False,
) -> None:
    from scratchlm.core.atomic_files import atomic_write_text
    from scratchlm.inference.language_model import load_for_inference

    lm = load_for_inference(source, checkpoint, device, dtype, quantize)
    if args is not None:  # `scratchlm generate` (train's own samples need no such line)
        status(decoding_line(lm.model.lm_head.weight.dtype, dtype, quantize))
    settings = lm.defaults if args is None else section_from_args(args, "sample", lm.defaults)
    if "" in settings.prompts:
        raise ScratchLMError("--prompt is empty; give some text to continue")
    texts = settings.prompts * num_samples
    # A chat reply is a new turn, so it starts on the line after the question.
    shown = [f"{t}\n" if chat else t for t in texts]
    # All samples in one batch; sample i draws with seed + i, as each did when run one by one.
    # A single sample streams as it is generated; a batch prints each sample when it is done.
    streaming = len(texts) == 1
    if streaming:
        print("\n--- sample 1 ---")
        sys.stdout.write(shown[0])

    def stream(_: int, piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    run = lm.chat if chat else lm.generate
    inputs: Any = [[{"role": "user", "content": t}] for t in texts] if chat else texts
    completions = run(
        inputs,
        settings.sampling(),
        stop or [],
        on_text=stream if streaming else None,
        use_cache=use_cache,
    )
    written = []
    for i, (text, completion) in enumerate(zip(shown, completions, strict=True)):
        if streaming:
            print()
        else:
            print(f"\n--- sample {i + 1} ---\n{text}{completion.text}")
        written.append(f"--- sample {i + 1} ---\n{text}{completion.text}\n")
    if out_file is not None:
        atomic_write_text(out_file, "\n".join(written))


def decoding_line(weights: Any, asked: str, quantize: str | None) -> str:
    """The first line `generate` prints: which dtype it decodes in, and for bfloat16 chosen by
    --dtype auto, that its greedy text may differ from float32 references."""
    name = str(weights).removeprefix("torch.")
    line = f"decoding in {name}" + (f" ({quantize} weights)" if quantize else "")
    if name == "bfloat16" and asked == "auto":
        line += (
            ": --dtype auto picks it on this hardware (native bf16); its text can differ "
            "from float32's after some tokens: --dtype float32 to compare with a reference"
        )
    return line
