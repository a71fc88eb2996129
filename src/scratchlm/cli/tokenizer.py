"""`scratchlm tokenizer train | encode | decode | study | export | import`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from scratchlm.cli.options import add_section_options, section_from_args
from scratchlm.core.errors import ScratchLMError
from scratchlm.core.user_files import decode_utf8, read_text
from scratchlm.core.user_paths import check_output
from scratchlm.tokenizer.config import TokenizerConfig

TOKENIZER_FORMATS = ("hf", "tiktoken", "gpt2")
STUDY_FILES = ("study.json", "study.png")  # what tokenizer.study.save_study writes
# `tokenizer train` makes a byte-level BPE tokenizer from all the text it is given.
TRAIN_SKIPS = ("kind", "max_train_chars")
TRAIN_ALIASES = {
    "vocab_size": "--vocab-size",
    "pattern": "--pattern",
    "special_tokens": "--special",
}


def register(commands: Any) -> None:
    tok = commands.add_parser("tokenizer", help="train and use a byte-level BPE tokenizer")
    tok_commands = tok.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    p = tok_commands.add_parser("train", help="train a tokenizer on text")
    p.add_argument("sources", nargs="+", help="named corpora, text files or folders")
    p.add_argument("--out", required=True, type=Path, help="where to write tokenizer.json")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out (and its .vocab)"
    )
    add_section_options(p, "tokenizer", TokenizerConfig, TRAIN_ALIASES, skip=TRAIN_SKIPS)
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
    p.add_argument("--overwrite", action="store_true", help="replace a study already in --out")
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


def cmd_tokenizer_train(args: argparse.Namespace) -> None:
    from scratchlm.data.documents import read_documents
    from scratchlm.tokenizer import BPETokenizer, resolve_pattern

    settings = section_from_args(args, "tokenizer", TokenizerConfig())
    pattern = resolve_pattern(settings.pattern)
    # Before reading and training (minutes, maybe): the outputs must be writable and new.
    _check_outputs([args.out, args.out.with_suffix(".vocab")], args.overwrite)
    documents = read_documents(args.sources)
    tokenizer = BPETokenizer.train(
        documents,
        settings.vocab_size,
        pattern=pattern,
        special_tokens=settings.special_tokens,
        progress=sys.stderr.isatty(),
    )
    tokenizer.save(args.out)
    tokenizer.save_vocab(args.out.with_suffix(".vocab"))
    print(f"saved a {tokenizer.vocab_size:,}-token tokenizer to {args.out}")


def cmd_tokenizer_encode(args: argparse.Namespace) -> None:
    from scratchlm.tokenizer import BPETokenizer

    if args.file is not None and args.text is not None:
        raise ScratchLMError("give the text or --file, not both")
    tokenizer = BPETokenizer.load(args.tokenizer)
    if args.file is not None:
        # Bytes, then decode: text mode would turn \r\n into \n, and `encode --file` must
        # see the file exactly as it is.
        text = read_text(args.file, "text file")
    elif args.text is not None:
        text = args.text
    else:
        text = decode_utf8(sys.stdin.buffer.read(), "standard input")
    ids = tokenizer.encode(text, allowed_special="all" if args.allow_special else "none")
    print(" ".join(map(str, ids)))


def cmd_tokenizer_decode(args: argparse.Namespace) -> None:
    from scratchlm.tokenizer import BPETokenizer

    tokenizer = BPETokenizer.load(args.tokenizer)
    words = args.ids or decode_utf8(sys.stdin.buffer.read(), "standard input").split()
    try:
        ids = [int(w) for w in words]
    except ValueError:
        bad = next(w for w in words if not w.lstrip("-").isdigit())
        raise ScratchLMError(f"token ids must be whole numbers, got {bad!r}") from None
    # Exactly the decoded text, so `encode --file f | decode > g` gives g == f; a newline is
    # added only on a terminal, to keep the shell prompt off the end of the text.
    sys.stdout.write(tokenizer.decode(ids) + ("\n" if sys.stdout.isatty() else ""))


def cmd_tokenizer_study(args: argparse.Namespace) -> None:
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
    check_output(args.out, folder=True)
    _check_outputs([args.out / name for name in STUDY_FILES], args.overwrite)
    result = study_vocab_sizes(
        read_documents(args.input),
        sizes,
        width=args.width,
        heldout_fraction=args.heldout_fraction,
        seed=args.seed,
        pattern=pattern,
        progress=sys.stderr.isatty(),
    )
    json_path, png_path = save_study(result, args.out)
    print(format_table(result))
    print(f"wrote {json_path} and {png_path}")


def cmd_tokenizer_export(args: argparse.Namespace) -> None:
    import shlex

    from scratchlm.tokenizer import BPETokenizer
    from scratchlm.tokenizer.patterns import NAMED_PATTERNS

    if args.format == "gpt2":
        check_output(args.out, folder=True)
        outputs = [args.out / "vocab.json", args.out / "merges.txt"]
    else:
        outputs = [args.out]
    _check_outputs(outputs, args.overwrite)
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


def cmd_tokenizer_import(args: argparse.Namespace) -> None:
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
    _check_outputs([args.out], args.overwrite)
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


def _check_outputs(paths: list[Path], overwrite: bool) -> None:
    """Output files that can be written (core.user_paths.check_output) and, without
    --overwrite, do not exist yet: the rule of every command that writes."""
    for path in paths:
        check_output(path, folder=False, overwrite=overwrite)
