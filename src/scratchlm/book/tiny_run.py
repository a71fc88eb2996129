"""The run a book is built from when the reader gives none: trained on the spot in seconds.

Python's own documentation text (it ships with Python, so no download), a 300-token BPE and a
2-layer model: small enough to train here in well under a minute, large enough that every
chapter has real numbers and figures of a real run to show.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from scratchlm.config import config_from_dict
from scratchlm.runs.preparation import prepare_run
from scratchlm.train.loop import train_model

TINY_RUN = {
    "name": "tiny-book",
    "data": {"sources": ["pydocs"]},
    "clean": {"filters": False},
    "tokenizer": {"vocab_size": 300},
    "model": {"block_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 64, "pos_encoding": "rope"},
    "train": {
        "batch_size": 8,
        "max_steps": 120,
        "warmup_steps": 10,
        "eval_interval": 40,
        "eval_batches": 2,
        "log_interval": 10,
        "checkpoint_interval": 120,
    },
    "sample": {"prompts": ["def "], "max_new_tokens": 30},
}


def train_tiny_run(out_dir: Path) -> Path:
    """Prepare and train the tiny run under out_dir; its folder."""
    config = config_from_dict({**TINY_RUN, "out_dir": str(out_dir)}, where="the book's tiny run")
    with contextlib.redirect_stdout(io.StringIO()):  # the book's own progress bar is enough
        prepare_run(config)
        train_model(config, quiet=True)
    return config.run_dir
