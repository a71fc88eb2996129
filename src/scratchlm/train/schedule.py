"""Learning-rate schedules: a linear warmup, then one of three decays (train.schedule).

    cosine  warmup, then half a cosine from learning_rate down to min_lr at max_steps
    linear  warmup, then a straight line down to zero at max_steps
    wsd     warmup, a long stable stretch at learning_rate, then a linear decay to min_lr over
            the last decay_fraction of the steps (warmup-stable-decay, Hu et al. 2024)

Warmup avoids large, badly-aimed updates while the optimizer's moment estimates are still
noise; the decay lets the loss settle into a minimum instead of bouncing around it. WSD keeps
the peak rate longest, and its stable stretch can be extended by resuming with more steps.
"""

from __future__ import annotations

import math

from scratchlm.train.config import TrainConfig


def learning_rate_at(step: int, config: TrainConfig) -> float:
    """The learning rate for optimizer step `step` (0-based) at the peak `learning_rate`."""
    return config.learning_rate * lr_factor_at(step, config)


def lr_factor_at(step: int, config: TrainConfig) -> float:
    """The schedule as a multiplier of the peak rate, so every parameter group (each with its
    own peak, see optimizer.py) follows the same shape."""
    peak = config.learning_rate
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    floor = config.min_lr / peak
    if config.schedule == "wsd":
        decay_steps = max(1, round(config.decay_fraction * config.max_steps))
        decay_start = max(config.warmup_steps, config.max_steps - decay_steps)
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1, config.max_steps - decay_start))
        return 1.0 - progress * (1.0 - floor)
    decay_steps = max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    if config.schedule == "linear":
        return 1.0 - progress
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
    return floor + cosine * (1.0 - floor)
