"""A tiny trained run for tests that need one whole (the report card's): configs/tiny.toml on
pydocs (ships with Python), 12 steps, validated and checkpointed every 4."""

from __future__ import annotations

from pathlib import Path

import pytest

from scratchlm.config import load_config
from scratchlm.runs.preparation import prepare_run
from scratchlm.train.loop import train_model

REPO = Path(__file__).resolve().parents[1]


def train_tiny_run(base: Path, name: str = "tiny") -> Path:
    """Prepare and train the run under base/runs/NAME (its cache in base/cache); its folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCRATCHLM_CACHE", str(base / "cache"))
        config = load_config(REPO / "configs" / "tiny.toml")
        config.out_dir, config.name = str(base / "runs"), name
        config.train.max_steps, config.train.eval_interval = 12, 4
        config.train.log_interval = config.train.checkpoint_interval = 4
        prepare_run(config)
        train_model(config, quiet=True)
        return config.run_dir
