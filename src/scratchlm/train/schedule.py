"""Learning-rate schedule: linear warmup, then cosine decay to a floor."""

from __future__ import annotations

import math

from scratchlm.config import TrainConfig


def learning_rate_at(step: int, config: TrainConfig) -> float:
    """The learning rate for optimizer step `step` (0-based).

    Warmup avoids large, badly-aimed updates while Adam's moment estimates are still noise;
    the cosine tail lets the loss settle into a minimum instead of bouncing around it.
    """
    if config.warmup_steps and step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    decay_steps = max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
    return config.min_lr + cosine * (config.learning_rate - config.min_lr)
