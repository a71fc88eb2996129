"""`scratchlm classify RUN TEXT...`: label texts with a classifier trained by
`scratchlm finetune classify`.

    scratchlm classify runs/spam "WIN a FREE cruise now" "minutes of Tuesday's meeting"
    scratchlm classify runs/spam --file mails.txt          (one text a line)
    scratchlm classify runs/spam --file mails.jsonl --json (the run's text key; JSON lines out)

Each text gets its most probable label and that label's probability; --json prints one JSON
object a line with every label's probability.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from scratchlm.core.errors import ScratchLMError

SHOWN_CHARS = 70  # of each text, in the plain output


def register(commands: Any) -> None:
    p = commands.add_parser(
        "classify",
        help="label texts with a run trained by `scratchlm finetune classify`",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", type=Path, help="a classification run")
    p.add_argument("texts", nargs="*", help="texts to label")
    p.add_argument(
        "--file",
        type=Path,
        help="more texts: one a line, or a .jsonl/.ndjson file of objects with the text key",
    )
    p.add_argument("--text-key", help="the JSONL key of the text (default: the run's)")
    p.add_argument("--json", action="store_true", help="one JSON object a line, per text")
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the latest")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(handler=cmd_classify)


def cmd_classify(args: argparse.Namespace) -> None:
    from scratchlm.core.devices import resolve_device
    from scratchlm.finetune.classify_task import load_classifier

    if args.batch_size < 1:
        raise ScratchLMError(f"--batch-size must be at least 1, got {args.batch_size}")
    classifier = load_classifier(args.run_dir, args.checkpoint, resolve_device(args.device))
    texts = list(args.texts)
    if args.file is not None:
        texts += read_texts(args.file, args.text_key or _run_text_key(args.run_dir))
    if not texts:
        raise ScratchLMError('no texts to classify; give them as arguments ("...") or --file')
    for p in classifier.classify(texts, args.batch_size):
        if args.json:
            record = {"text": p.text, "label": p.label, "probability": p.probability,
                      "probabilities": p.probabilities}  # fmt: skip
            print(json.dumps(record, ensure_ascii=False))
        else:
            shown = p.text if len(p.text) <= SHOWN_CHARS else p.text[: SHOWN_CHARS - 3] + "..."
            print(f"{p.label}\t{p.probability:.4f}\t{json.dumps(shown, ensure_ascii=False)}")


def _run_text_key(run_dir: Path) -> str:
    from scratchlm.finetune.classify_task import classification_run

    return classification_run(run_dir).classify.text_key


def read_texts(path: Path, text_key: str) -> list[str]:
    """The texts of a file: a JSONL file's `text_key` values, or else its non-blank lines."""
    from scratchlm.core.user_files import json_objects, read_text

    text = read_text(path, "texts file")
    if path.suffix.lower() not in (".jsonl", ".ndjson"):
        return [line for line in text.splitlines() if line.strip()]
    texts = []
    for at, record in json_objects(text, str(path), f'one JSON object with a "{text_key}" key'):
        value = record.get(text_key)
        if not isinstance(value, str):
            raise ScratchLMError(
                f"{at}: no text under {text_key!r} (keys: {', '.join(record) or 'none'}); "
                "name the right key with --text-key"
            )
        texts.append(value)
    return texts
