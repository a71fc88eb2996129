"""The `scratchlm` command: one subcommand per pipeline stage, each a thin call into its module.

    scratchlm data list | fetch NAME | prepare SOURCE... --tokenizer T --out DIR | report DIR
    scratchlm tokenizer train SOURCE... --vocab-size N --out T | encode | decode
    scratchlm tokenizer study --input SOURCE... --sizes 512,1024,2048 [--width W] [--out DIR]
    scratchlm tokenizer export --tokenizer T --format hf|tiktoken|gpt2 --out PATH
    scratchlm tokenizer import FILE... --format hf|tiktoken|gpt2 | --pretrained NAME --out T
    scratchlm train --config configs/demo.toml [--train.max_steps 100 ...] | --resume RUN_DIR
    scratchlm generate RUN_DIR|smollm2-135m-instruct --prompt "..."
    scratchlm eval RUN_DIR
    scratchlm plot RUN_DIR
    scratchlm export RUN_DIR --format hf --out DIR | --format gguf --out FILE [--dtype f16]
    scratchlm import hf DIR --out RUN_DIR | gguf FILE --out RUN_DIR

A user's mistake (ScratchLMError) is printed as one line with exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

from scratchlm.core.errors import ScratchLMError

# Heavy imports (torch, the model) happen inside the commands, so `--help` is instant.

TOKENIZER_FORMATS = ("hf", "tiktoken", "gpt2")
MODEL_EXPORT_FORMATS = ("hf", "gguf")
MODEL_IMPORT_FORMATS = ("hf", "gguf")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    overrides: list[str] = []
    if words[:2] == ["data", "prepare"]:
        # Taken out first: argparse would read an override's value as one more SOURCE.
        words, overrides = _split_overrides(words)
    args, extra = parser.parse_known_args(words)
    if extra and getattr(args, "command", None) != "train":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    extra += overrides
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        args.handler(args, extra)
    except ScratchLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `scratchlm generate ... | head`
        return 0
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scratchlm", description="Build a large language model from scratch."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    # data ------------------------------------------------------------------------------------
    data = commands.add_parser("data", help="fetch corpora and turn text into token files")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = data_commands.add_parser("list", help="named corpora you can fetch")
    p.set_defaults(handler=cmd_data_list)
    p = data_commands.add_parser("fetch", help="download a named corpus into the cache")
    p.add_argument("name", help="corpus name (see `scratchlm data list`)")
    p.set_defaults(handler=cmd_data_fetch)
    p = data_commands.add_parser(
        "prepare",
        help="text -> cleaned, deduplicated train and val token shards, and a data report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_config_help(("clean", "dedup")),
    )
    p.add_argument(
        "sources",
        nargs="+",
        help="named corpora, files (text, JSONL, Parquet; maybe .gz or .zst), folders of "
        "them, or - for standard input",
    )
    p.add_argument("--tokenizer", required=True, type=Path, help="tokenizer.json to encode with")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="read only these files of a folder, e.g. '*.jsonl' or 'en/*' (repeatable)",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="skip these files of a folder (repeatable)",
    )
    p.add_argument(
        "--text-field", default="text", help="the JSONL field or Parquet column with the text"
    )
    p.add_argument(
        "--stdin-format",
        choices=("text", "jsonl"),
        default="text",
        help="standard input (-) as one document, or one JSON object a line",
    )
    p.add_argument(
        "--config", type=Path, help="take the [clean] and [dedup] settings from this recipe"
    )
    p.add_argument("--no-clean", action="store_true", help="neither normalise nor filter")
    p.add_argument("--no-filters", action="store_true", help="normalise, but apply no quality rule")
    p.add_argument("--no-dedup", action="store_true", help="no deduplication of any kind")
    p.add_argument(
        "--workers", type=int, default=0, help="processes for cleaning and MinHash (0: all cores)"
    )
    p.set_defaults(handler=cmd_data_prepare)
    p = data_commands.add_parser("report", help="print the data report of a prepared folder")
    p.add_argument("folder", type=Path, help="a `data prepare` output folder, or a run directory")
    p.set_defaults(handler=cmd_data_report)

    # tokenizer -------------------------------------------------------------------------------
    tok = commands.add_parser("tokenizer", help="train and use a byte-level BPE tokenizer")
    tok_commands = tok.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    p = tok_commands.add_parser("train", help="train a tokenizer on text")
    p.add_argument("sources", nargs="+", help="named corpora, text files or folders")
    p.add_argument("--vocab-size", type=int, default=2048, help="including 256 bytes + specials")
    p.add_argument("--pattern", default="gpt4", help="gpt2, gpt4 or a regex (default gpt4)")
    p.add_argument(
        "--special", action="append", default=None, help="special token (default <|endoftext|>)"
    )
    p.add_argument("--out", required=True, type=Path, help="where to write tokenizer.json")
    p.set_defaults(handler=cmd_tokenizer_train)
    p = tok_commands.add_parser("encode", help="text -> token ids")
    p.add_argument("--tokenizer", required=True, type=Path)
    p.add_argument("text", nargs="?", help="text to encode (default: read standard input)")
    p.add_argument("--file", type=Path, help="encode this file instead")
    p.add_argument(
        "--allow-special", action="store_true", help="turn <|endoftext|> etc. into special tokens"
    )
    p.set_defaults(handler=cmd_tokenizer_encode)
    p = tok_commands.add_parser("decode", help="token ids -> text")
    p.add_argument("--tokenizer", required=True, type=Path)
    p.add_argument("ids", nargs="*", help="token ids (default: read standard input)")
    p.set_defaults(handler=cmd_tokenizer_decode)
    p = tok_commands.add_parser(
        "study", help="vocabulary size vs held-out bytes/token and embedding parameters"
    )
    p.add_argument(
        "--input", nargs="+", required=True, metavar="SOURCE", help="corpora, files or folders"
    )
    p.add_argument("--sizes", default="512,1024,2048,4096", help="comma-separated vocab sizes")
    p.add_argument("--width", type=int, default=768, help="model width, for parameter counts")
    p.add_argument("--out", type=Path, default=Path("tokenizer-study"), help="output folder")
    p.add_argument("--pattern", default="gpt4", help="gpt2, gpt4 or a regex (default gpt4)")
    p.add_argument("--heldout-fraction", type=float, default=0.1, help="documents held out")
    p.add_argument("--seed", type=int, default=1337, help="seed of the held-out split")
    p.set_defaults(handler=cmd_tokenizer_study)
    p = tok_commands.add_parser(
        "export", help="write a tokenizer as Hugging Face, tiktoken or GPT-2 files"
    )
    p.add_argument("--tokenizer", required=True, type=Path, help="scratchlm tokenizer.json")
    p.add_argument(
        "--format",
        required=True,
        choices=TOKENIZER_FORMATS,
        help="hf: tokenizer.json for the tokenizers library; tiktoken: a rank file; "
        "gpt2: vocab.json + merges.txt (GPT-2's encoder.json + vocab.bpe)",
    )
    p.add_argument(
        "--out", required=True, type=Path, help="output file (a folder for --format gpt2)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(handler=cmd_tokenizer_export)
    p = tok_commands.add_parser(
        "import", help="a scratchlm tokenizer from Hugging Face, tiktoken or GPT-2 files"
    )
    p.add_argument(
        "files",
        nargs="*",
        metavar="FILE",
        help="hf: tokenizer.json; tiktoken: the rank file; gpt2: vocab.json (encoder.json) "
        "then merges.txt (vocab.bpe)",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--format", choices=TOKENIZER_FORMATS, help="the format of FILE...")
    source.add_argument(
        "--pretrained", metavar="NAME", help="gpt2, cl100k_base or o200k_base (no FILE needed)"
    )
    p.add_argument(
        "--pattern", help="split pattern: required for tiktoken; gpt2 defaults to GPT-2's"
    )
    p.add_argument(
        "--special",
        action="append",
        default=None,
        metavar="TOKEN=ID",
        help="a special token of a tiktoken rank file, e.g. '<|endoftext|>=100257' (repeatable)",
    )
    p.add_argument("--out", required=True, type=Path, help="where to write tokenizer.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(handler=cmd_tokenizer_import)

    # train -----------------------------------------------------------------------------------
    p = commands.add_parser(
        "train",
        help="pretrain a GPT (data -> tokenizer -> model)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_config_help(),
    )
    p.add_argument("--config", type=Path, help="TOML recipe, e.g. configs/demo.toml")
    p.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="continue a run from its checkpoint"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing run of the same name"
    )
    p.add_argument("--no-samples", action="store_true", help="skip the samples at the end")
    p.set_defaults(handler=cmd_train)

    # generate --------------------------------------------------------------------------------
    p = commands.add_parser("generate", help="sample text from a trained run")
    p.add_argument(
        "run_dir",
        type=Path,
        help="a run directory, or a pretrained model (smollm2-135m-instruct: downloaded and "
        "imported into the cache on first use)",
    )
    p.add_argument(
        "--prompt",
        action="append",
        default=None,
        help="text to continue (default: the run's prompts); repeat it to continue several "
        "prompts in one batch",
    )
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None, help="0 for greedy decoding")
    p.add_argument("--top-k", type=int, default=None, help="keep the k likeliest tokens (0: off)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling (1.0: off)")
    p.add_argument(
        "--repetition-penalty",
        type=float,
        default=None,
        help="> 1 makes tokens already seen less likely (CTRL-style; 1.0: off)",
    )
    p.add_argument(
        "--stop",
        action="append",
        default=[],
        help="stop a sample as soon as its text contains this string (left out); repeatable",
    )
    p.add_argument("--seed", type=int, default=None, help="sample i uses seed + i")
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
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the latest")
    p.add_argument("--no-cache", action="store_true", help="recompute attention every step")
    p.add_argument("--device", default="cpu")
    p.set_defaults(handler=cmd_generate)

    # eval ------------------------------------------------------------------------------------
    p = commands.add_parser("eval", help="validation loss and perplexity of a trained run")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the latest")
    p.add_argument("--batches", type=int, default=None, help="validation batches to average")
    p.add_argument("--device", default="cpu")
    p.set_defaults(handler=cmd_eval)

    # plot ------------------------------------------------------------------------------------
    p = commands.add_parser(
        "plot", help="loss and learning-rate curves of a run as PNG (from its metrics.jsonl)"
    )
    p.add_argument("run_dir", type=Path)
    p.set_defaults(handler=cmd_plot)

    # export / import -------------------------------------------------------------------------
    p = commands.add_parser(
        "export", help="write a trained run's model in another format (Hugging Face)"
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument(
        "--format",
        required=True,
        choices=MODEL_EXPORT_FORMATS,
        help="hf: a folder (config.json, model.safetensors, tokenizer.json) that transformers "
        "loads as GPT2LMHeadModel or LlamaForCausalLM; gguf: one file for llama.cpp "
        "(Llama-shaped models)",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (hf) or file (gguf)")
    p.add_argument(
        "--dtype", choices=("f32", "f16"), default="f32", help="gguf: weight matrices' type"
    )
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the latest")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(handler=cmd_export)
    p = commands.add_parser("import", help="make a run directory from another format's model")
    p.add_argument(
        "format",
        choices=MODEL_IMPORT_FORMATS,
        help="hf: a Hugging Face GPT-2 or Llama folder (config.json, model.safetensors, "
        "tokenizer.json); gguf: a llama.cpp file of a Llama model (f32, f16 or quantised)",
    )
    p.add_argument("source", type=Path, help="the folder or file to import")
    p.add_argument("--out", required=True, type=Path, help="the run directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(handler=cmd_import)
    return parser


def _config_help(sections: Sequence[str] | None = None) -> str:
    from scratchlm.config import SECTIONS, RunConfig

    lines = ["config keys (set in the TOML file or as --section.key VALUE):"]
    defaults = RunConfig()
    for section in sections or SECTIONS:
        obj = getattr(defaults, section)
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            kind = getattr(hints[f.name], "__name__", str(hints[f.name]))
            lines.append(f"  --{section}.{f.name:<20} {kind:<8} default {getattr(obj, f.name)!r}")
    return "\n".join(lines)


# --- handlers ----------------------------------------------------------------------------------

Handler = Callable[[argparse.Namespace, list[str]], None]


def cmd_data_list(args: argparse.Namespace, extra: list[str]) -> None:
    from scratchlm.data.sources import list_corpora

    for info in list_corpora():
        status = "cached" if info.cached else "not fetched"
        print(f"{info.name:<14} {status:<12} {info.licence:<36} {info.description}")


def cmd_data_fetch(args: argparse.Namespace, extra: list[str]) -> None:
    from scratchlm.data.sources import fetch_corpus

    folder = fetch_corpus(args.name)
    files = sorted(folder.glob("*.txt"))
    size = sum(f.stat().st_size for f in files)
    print(f"{args.name}: {len(files)} documents, {size / 1e6:.2f} MB in {folder}")


def _split_overrides(words: list[str]) -> tuple[list[str], list[str]]:
    """(the other words, the `--section.key value` overrides among them)."""
    rest: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("--") and "." in word.partition("=")[0]:
            overrides.append(word)
            if "=" not in word and i + 1 < len(words):
                overrides.append(words[i + 1])
                i += 1
        else:
            rest.append(word)
        i += 1
    return rest, overrides


def cmd_data_prepare(args: argparse.Namespace, extra: list[str]) -> None:
    from scratchlm.config import load_config

    for word in extra:
        if word.startswith("--") and not word.startswith(("--clean.", "--dedup.")):
            raise ScratchLMError(
                f"data prepare takes only --clean.* and --dedup.* keys, not {word.split('=')[0]}"
                " (see `scratchlm data prepare --help`)"
            )
    config = load_config(args.config, extra)  # checks every key and value, with suggestions
    if args.no_clean:
        config.clean.enabled = False
    if args.no_filters:
        config.clean.filters = False
    if args.no_dedup:
        config.dedup.exact = config.dedup.lines = config.dedup.near = False
    if not 0.0 < args.val_fraction < 1.0:
        raise ScratchLMError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if args.workers < 0:
        raise ScratchLMError(f"--workers must be >= 0, got {args.workers}")

    from scratchlm.data.dataset import prepare_dataset
    from scratchlm.data.pipeline import PipelineSettings
    from scratchlm.tokenizer import BPETokenizer

    tokenizer = BPETokenizer.load(args.tokenizer)  # before any work: a bad file fails at once
    settings = PipelineSettings(
        sources=args.sources,
        include=args.include,
        exclude=args.exclude,
        text_field=args.text_field,
        stdin_format=args.stdin_format,
        clean=config.clean.clean_config(),
        exact=config.dedup.exact,
        lines=config.dedup.line_config(),
        near=config.dedup.near_config(),
        workers=args.workers,
        progress=sys.stderr.isatty(),
    )
    report = prepare_dataset(
        settings,
        tokenizer,
        args.out,
        args.val_fraction,
        args.seed,
        report_settings={"tokenizer": str(args.tokenizer)},
    )
    splits, totals = report["splits"], report["totals"]
    shards = len(splits["train"]["shards"]) + len(splits["val"]["shards"])
    print(
        f"wrote {splits['train']['tokens']:,} train and {splits['val']['tokens']:,} validation "
        f"tokens to {args.out} ({shards} shards)"
    )
    kept_bytes = totals["bytes_out"] / totals["bytes_in"] if totals["bytes_in"] else 0.0
    print(
        f"kept {totals['documents_out']:,} of {totals['documents_in']:,} documents "
        f"({kept_bytes:.1%} of the text); the data report is {args.out / 'report.txt'}"
    )


def cmd_data_report(args: argparse.Namespace, extra: list[str]) -> None:
    from scratchlm.data.report import format_report, load_report

    print(format_report(load_report(args.folder), str(args.folder)))


def cmd_tokenizer_train(args: argparse.Namespace, extra: list[str]) -> None:
    from scratchlm.data.documents import read_documents
    from scratchlm.tokenizer import BPETokenizer, resolve_pattern

    pattern = resolve_pattern(args.pattern)
    specials = args.special if args.special is not None else ["<|endoftext|>"]
    if args.vocab_size < 256 + len(specials):
        raise ScratchLMError(
            f"--vocab-size {args.vocab_size} is too small: it must hold 256 byte tokens + "
            f"{len(specials)} special tokens = {256 + len(specials)}"
        )
    documents = read_documents(args.sources)
    tokenizer = BPETokenizer.train(
        documents, args.vocab_size, pattern=pattern, special_tokens=specials, progress=True
    )
    tokenizer.save(args.out)
    tokenizer.save_vocab(args.out.with_suffix(".vocab"))
    print(f"saved a {tokenizer.vocab_size:,}-token tokenizer to {args.out}")


def cmd_tokenizer_encode(args: argparse.Namespace, extra: list[str]) -> None:
    from scratchlm.tokenizer import BPETokenizer

    if args.file is not None and args.text is not None:
        raise ScratchLMError("give the text or --file, not both")
    tokenizer = BPETokenizer.load(args.tokenizer)
    if args.file is not None:
        text = _read_text_file(args.file)
    elif args.text is not None:
        text = args.text
    else:
        text = _decode_utf8(sys.stdin.buffer.read(), "standard input")
    ids = tokenizer.encode(text, allowed_special="all" if args.allow_special else "none")
    print(" ".join(map(str, ids)))


def cmd_tokenizer_decode(args: argparse.Namespace, extra: list[str]) -> None:
    from scratchlm.tokenizer import BPETokenizer

    tokenizer = BPETokenizer.load(args.tokenizer)
    words = args.ids or _decode_utf8(sys.stdin.buffer.read(), "standard input").split()
    try:
        ids = [int(w) for w in words]
    except ValueError:
        bad = next(w for w in words if not w.lstrip("-").isdigit())
        raise ScratchLMError(f"token ids must be whole numbers, got {bad!r}") from None
    # Exactly the decoded text, so `encode --file f | decode > g` gives g == f; a newline is
    # added only on a terminal, to keep the shell prompt off the end of the text.
    sys.stdout.write(tokenizer.decode(ids) + ("\n" if sys.stdout.isatty() else ""))


def cmd_tokenizer_study(args: argparse.Namespace, extra: list[str]) -> None:
    from scratchlm.data.documents import read_documents
    from scratchlm.tokenizer import resolve_pattern
    from scratchlm.tokenizer.study import (
        format_table,
        parse_sizes,
        save_study,
        study_vocab_sizes,
    )

    sizes = parse_sizes(args.sizes)  # before reading any text, so a typo is reported at once
    pattern = resolve_pattern(args.pattern)
    result = study_vocab_sizes(
        read_documents(args.input),
        sizes,
        width=args.width,
        heldout_fraction=args.heldout_fraction,
        seed=args.seed,
        pattern=pattern,
        progress=True,
    )
    json_path, png_path = save_study(result, args.out)
    print(format_table(result))
    print(f"wrote {json_path} and {png_path}")


def cmd_tokenizer_export(args: argparse.Namespace, extra: list[str]) -> None:
    import shlex

    from scratchlm.tokenizer import BPETokenizer
    from scratchlm.tokenizer.patterns import NAMED_PATTERNS

    if args.format == "gpt2":
        outputs = [args.out / "vocab.json", args.out / "merges.txt"]
    else:
        outputs = [args.out]
    _refuse_to_overwrite(outputs, args.overwrite)
    tokenizer = BPETokenizer.load(args.tokenizer)
    if args.format == "hf":
        from scratchlm.tokenizer.hf_format import save_hf_tokenizer

        checked = save_hf_tokenizer(tokenizer, args.out)
        note = (
            "checked: the tokenizers library encodes it as scratchlm does"
            if checked
            else "not checked: the tokenizers library is not installed"
        )
        print(f"wrote {args.out}, a Hugging Face tokenizer.json ({note})")
    elif args.format == "gpt2":
        from scratchlm.tokenizer.gpt2_format import save_gpt2_files

        save_gpt2_files(tokenizer, outputs[0], outputs[1])
        print(f"wrote {outputs[0]} and {outputs[1]} (GPT-2's encoder.json and vocab.bpe)")
    else:
        from scratchlm.tokenizer.tiktoken_format import save_tiktoken_file

        save_tiktoken_file(tokenizer, args.out)
        # The rank file keeps only the tokens: say what else is needed to read it back.
        names = {regex: name for name, regex in NAMED_PATTERNS.items()}
        command = [
            "scratchlm tokenizer import --format tiktoken",
            shlex.quote(str(args.out)),
            "--pattern",
            shlex.quote(names.get(tokenizer.pattern, tokenizer.pattern)),
            *(
                f"--special {shlex.quote(f'{name}={token_id}')}"
                for name, token_id in tokenizer.special_tokens.items()
            ),
            "--out TOKENIZER.json",
        ]
        print(
            f"wrote {args.out}, a tiktoken rank file of {len(tokenizer.vocab) - len(tokenizer.special_tokens):,} tokens"
        )
        print(f"it holds no split pattern or special tokens; to read it back: {' '.join(command)}")


def cmd_tokenizer_import(args: argparse.Namespace, extra: list[str]) -> None:
    from scratchlm.tokenizer import resolve_pattern

    wanted = {"hf": 1, "tiktoken": 1, "gpt2": 2, None: 0}[args.format]
    if len(args.files) != wanted:
        what = {
            "hf": "one file, the tokenizer.json",
            "tiktoken": "one file, the rank file",
            "gpt2": "two files, vocab.json (encoder.json) then merges.txt (vocab.bpe)",
            None: "no files with --pretrained",
        }[args.format]
        got = f"{len(args.files)} input file{'' if len(args.files) == 1 else 's'}"
        raise ScratchLMError(f"got {got}; give {what}")
    if args.special is not None and args.format != "tiktoken":
        raise ScratchLMError(
            "--special is only for --format tiktoken; the other sources name theirs"
        )
    if args.pattern is not None and args.format not in ("tiktoken", "gpt2"):
        raise ScratchLMError(
            "--pattern is only for --format tiktoken or gpt2; the other sources have their own"
        )
    if args.format == "tiktoken" and args.pattern is None:
        raise ScratchLMError(
            "--format tiktoken needs --pattern: a rank file holds no split pattern (cl100k, "
            "o200k, r50k, gpt2, gpt4 or a regex)"
        )
    pattern = resolve_pattern(args.pattern) if args.pattern is not None else None
    specials = _parse_specials(args.special or [])
    _refuse_to_overwrite([args.out], args.overwrite)
    if args.pretrained is not None:
        from scratchlm.tokenizer.pretrained import load_pretrained

        tokenizer = load_pretrained(args.pretrained)
    elif args.format == "hf":
        from scratchlm.tokenizer.hf_format import load_hf_tokenizer

        tokenizer = load_hf_tokenizer(args.files[0])
    elif args.format == "gpt2":
        from scratchlm.tokenizer.gpt2_format import load_gpt2_files

        tokenizer = load_gpt2_files(args.files[0], args.files[1], pattern=pattern or "r50k")
    else:
        from scratchlm.tokenizer.tiktoken_format import load_tiktoken_file

        assert pattern is not None
        tokenizer = load_tiktoken_file(args.files[0], pattern, specials)
    tokenizer.save(args.out)
    print(f"saved a {tokenizer.vocab_size:,}-token tokenizer to {args.out}")


def _parse_specials(items: list[str]) -> dict[str, int]:
    specials: dict[str, int] = {}
    for item in items:
        name, equals, number = item.rpartition("=")
        if not equals or not name or not number.isdigit():
            raise ScratchLMError(f"--special {item!r} is not TOKEN=ID, e.g. '<|endoftext|>=100257'")
        if name in specials:
            raise ScratchLMError(f"--special gives {name!r} twice")
        specials[name] = int(number)
    return specials


def _refuse_to_overwrite(paths: list[Path], overwrite: bool) -> None:
    for path in paths:
        if path.exists() and not overwrite:
            raise ScratchLMError(f"{path} already exists; pass --overwrite to replace it")
        if path.is_dir():
            raise ScratchLMError(f"{path} is a folder; give a file name")


def cmd_train(args: argparse.Namespace, extra: list[str]) -> None:
    if args.resume is not None:
        if args.config is not None:
            raise ScratchLMError("--resume continues a run with its own config; drop --config")
        from scratchlm.config import load_run_config
        from scratchlm.runs.layout import RunPaths
        from scratchlm.train.loop import train_model

        for word in extra:
            if word.startswith("--") and not word.startswith(("--train.", "--sample.")):
                raise ScratchLMError(
                    f"{word.split('=')[0]} cannot change when resuming (the data, tokenizer and "
                    "model are fixed by the checkpoint); only --train.* and --sample.* can"
                )
        config = load_run_config(args.resume, extra)
        paths = RunPaths(config.run_dir)
        if not paths.is_prepared():
            raise ScratchLMError(
                f"{args.resume} has no prepared data; start it again without --resume"
            )
        if extra:  # remember e.g. a longer --train.max_steps for the next resume
            from scratchlm.core.atomic_files import atomic_write_text

            atomic_write_text(paths.config, config.to_toml())
        result = train_model(config, resume=True)
        if result.new_steps == 0:
            return
    else:
        from scratchlm.config import load_config

        # Check the config before importing torch, so a typo is reported at once.
        config = load_config(args.config, extra)
        from scratchlm.runs.layout import RunPaths
        from scratchlm.runs.preparation import prepare_run
        from scratchlm.train.loop import train_model

        prepare_run(config, overwrite=args.overwrite)
        result = train_model(config)
    if result.interrupted:
        return
    if result.val_loss is not None:
        from scratchlm.train.validation import perplexity

        print(
            f"done: {result.steps:,} steps in {result.seconds:.0f}s | val loss "
            f"{result.val_loss:.4f} | val perplexity {perplexity(result.val_loss):.2f}"
        )
    print(f"run saved in {config.run_dir} (loss plot: {RunPaths(config.run_dir).loss_plot})")
    if not args.no_samples:
        _print_samples(config.run_dir, out_file=RunPaths(config.run_dir).samples)


def cmd_generate(args: argparse.Namespace, extra: list[str]) -> None:
    if args.num_samples < 1:
        raise ScratchLMError(f"--num-samples must be at least 1, got {args.num_samples}")
    _print_samples(
        _run_or_pretrained(args.run_dir),
        prompts=args.prompt,
        overrides={
            "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature,
            "top_k": args.top_k,
            "top_p": args.top_p,
            "repetition_penalty": args.repetition_penalty,
            "seed": args.seed,
        },
        num_samples=args.num_samples,
        checkpoint=args.checkpoint,
        use_cache=not args.no_cache,
        device=args.device,
        stop=args.stop,
        dtype=args.dtype,
        quantize=args.quantize,
    )


def cmd_eval(args: argparse.Namespace, extra: list[str]) -> None:
    if args.batches is not None and args.batches < 1:
        raise ScratchLMError(f"--batches must be at least 1, got {args.batches}")
    from scratchlm.config import load_run_config
    from scratchlm.core.devices import resolve_device
    from scratchlm.data.loader import TokenBatches
    from scratchlm.runs.layout import RunPaths
    from scratchlm.runs.loading import load_trained_model
    from scratchlm.train.validation import evaluate_loss, perplexity

    device = resolve_device(args.device)
    config = load_run_config(args.run_dir)
    _, _, model = load_trained_model(args.run_dir, args.checkpoint, device)
    paths = RunPaths(config.run_dir)
    batches = TokenBatches(
        paths.shards("val"),
        config.model.block_size,
        config.train.batch_size,
        seed=0,
        device=str(device),
    )
    n = args.batches if args.batches is not None else config.train.eval_batches
    loss = evaluate_loss(model, batches.eval_batches(n))
    print(f"val loss {loss:.4f} | val perplexity {perplexity(loss):.2f} ({n} batches)")


def cmd_export(args: argparse.Namespace, extra: list[str]) -> None:
    if args.out.exists() and not args.overwrite:  # before loading anything
        raise ScratchLMError(f"{args.out} already exists; pass --overwrite to replace it")
    if args.format == "gguf":
        from scratchlm.runs.gguf import export_gguf_run

        model = export_gguf_run(args.run_dir, args.out, args.checkpoint, args.dtype)
        print(
            f"wrote {args.out}: a llama GGUF, {args.dtype} weights "
            f"({model.num_parameters():,} parameters)"
        )
        return
    from scratchlm.model.hf_format import save_hf_model
    from scratchlm.runs.layout import token_role_ids
    from scratchlm.runs.loading import load_trained_model
    from scratchlm.tokenizer.hf_format import hf_tokenizer_text

    _, tokenizer, model = load_trained_model(args.run_dir, args.checkpoint)
    arch = save_hf_model(
        model,
        args.out,
        tokenizer_json=hf_tokenizer_text(tokenizer),
        token_ids=token_role_ids(args.run_dir, tokenizer),
        overwrite=args.overwrite,
    )
    kind = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}[arch]
    print(f"wrote {args.out}: a Hugging Face {kind} ({model.num_parameters():,} parameters)")


def cmd_import(args: argparse.Namespace, extra: list[str]) -> None:
    if args.out.exists() and not args.overwrite:  # before reading anything
        raise ScratchLMError(f"{args.out} already exists; pass --overwrite to replace it")
    if args.format == "gguf":
        from scratchlm.runs.gguf import import_gguf_run

        model = import_gguf_run(args.source, args.out, overwrite=args.overwrite)
        print(
            f"imported {args.source} ({model.config.n_layer} layers, {model.config.n_embd} wide) "
            f"into the run {args.out}; try `scratchlm generate {args.out} --prompt ...`"
        )
        return
    from scratchlm.model.hf_format import (
        TOKENIZER_FILE,
        hf_token_roles,
        load_hf_model,
        read_hf_config,
    )
    from scratchlm.runs.imported import save_imported_run
    from scratchlm.tokenizer.hf_format import load_hf_tokenizer

    read_hf_config(args.source)  # a missing folder or config.json is named first
    if not (args.source / TOKENIZER_FILE).is_file():
        raise ScratchLMError(
            f"{args.source} is missing {TOKENIZER_FILE}; a run needs the model's tokenizer"
        )
    tokenizer = load_hf_tokenizer(args.source / TOKENIZER_FILE)
    model = load_hf_model(args.source)
    save_imported_run(
        args.out,
        model,
        tokenizer,
        source=str(args.source),
        overwrite=args.overwrite,
        token_roles=hf_token_roles(read_hf_config(args.source)),
    )
    print(
        f"imported {args.source} ({model.num_parameters():,} parameters) into the run {args.out}; "
        f"try `scratchlm generate {args.out} --prompt ...`"
    )


def cmd_plot(args: argparse.Namespace, extra: list[str]) -> None:
    from scratchlm.runs.layout import RunPaths
    from scratchlm.train.metrics import plot_learning_rate, plot_loss, read_metrics

    paths = RunPaths(args.run_dir)
    if not read_metrics(paths.metrics):
        raise ScratchLMError(f"{paths.metrics} is missing or empty; train the run first")
    name = paths.root.name
    plot_loss(paths.metrics, paths.loss_plot, title=name)
    plot_learning_rate(paths.metrics, paths.lr_plot, title=name)
    print(f"wrote {paths.loss_plot} and {paths.lr_plot}")


def _run_or_pretrained(run_dir: Path) -> Path:
    """`run_dir` itself, or for the name of a pretrained model that is not a folder here, its
    run in the cache (downloaded and imported the first time)."""
    from scratchlm.runs.pretrained import PRETRAINED_RUNS, pretrained_run

    if not run_dir.exists() and str(run_dir) in PRETRAINED_RUNS:
        return pretrained_run(str(run_dir))
    return run_dir


def _print_samples(
    run_dir: Path,
    prompts: list[str] | None = None,
    overrides: dict[str, object] | None = None,
    num_samples: int = 1,
    checkpoint: Path | None = None,
    use_cache: bool = True,
    device: str = "cpu",
    out_file: Path | None = None,
    stop: list[str] | None = None,
    dtype: str = "auto",
    quantize: str | None = None,
) -> None:
    from scratchlm.config import load_run_config
    from scratchlm.core.atomic_files import atomic_write_text
    from scratchlm.core.devices import resolve_device
    from scratchlm.inference.dtype import cast_for_inference, resolve_inference_dtype
    from scratchlm.inference.stop_strings import check_stop_strings
    from scratchlm.inference.text import generate_texts
    from scratchlm.runs.loading import load_trained_model

    # Check the arguments before loading anything.
    torch_device = resolve_device(device)
    torch_dtype = resolve_inference_dtype(dtype, torch_device, quantize)
    stop = check_stop_strings(stop or [])
    if prompts is not None and "" in prompts:
        raise ScratchLMError("--prompt is empty; give some text to continue")
    config = load_run_config(run_dir)
    _, tokenizer, model = load_trained_model(run_dir, checkpoint, torch_device)
    cast_for_inference(model, torch_dtype)
    if quantize is not None:
        from scratchlm.inference.quantize import quantize_model

        quantize_model(model, quantize, torch_dtype)
    sample_config = config.sample
    for key, value in (overrides or {}).items():
        if value is not None:
            setattr(sample_config, key, value)
    sample_config.validate()
    texts = (prompts or sample_config.prompts) * num_samples
    # All samples in one batch; sample i draws with seed + i, as each did when run one by one.
    # A single sample streams as it is generated; a batch prints each sample when it is done.
    streaming = len(texts) == 1
    if streaming:
        print("\n--- sample 1 ---")
        sys.stdout.write(texts[0])

    def stream(_: int, piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    completions = generate_texts(
        model,
        tokenizer,
        texts,
        sample_config,
        stop=stop,
        on_text=stream if streaming else None,
        use_cache=use_cache,
    )
    written = []
    for i, (text, completion) in enumerate(zip(texts, completions, strict=True)):
        if streaming:
            print()
        else:
            print(f"\n--- sample {i + 1} ---\n{text}{completion}")
        written.append(f"--- sample {i + 1} ---\n{text}{completion}\n")
    if out_file is not None:
        atomic_write_text(out_file, "\n".join(written))


def _read_text_file(path: Path) -> str:
    # Bytes, then decode: text mode would turn \r\n into \n, and `encode --file` must see the
    # file exactly as it is.
    from scratchlm.core.user_files import read_bytes

    return _decode_utf8(read_bytes(path, "text file"), str(path))


def _decode_utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ScratchLMError(
            f"{where} is not UTF-8 text (bad byte at offset {e.start}); convert it to UTF-8"
        ) from None


if __name__ == "__main__":
    raise SystemExit(main())
