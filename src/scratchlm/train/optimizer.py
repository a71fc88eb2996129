"""The run's optimizer, from train.optimizer: our AdamW (adamw.py), or Muon (muon.py) for the
hidden matrices with AdamW for the rest.

We decay only matrices (the weights that multiply activations); biases, norm gains and
embeddings are left alone, as in GPT-2 / nanoGPT. Every parameter group carries its own peak
learning rate as "base_lr"; the schedule scales all of them by the same factor.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from scratchlm.train.adamw import AdamW
from scratchlm.train.config import TrainConfig
from scratchlm.train.muon import Muon


def parameter_groups(model: nn.Module, config: TrainConfig) -> dict[str, list[nn.Parameter]]:
    """The model's parameters by role, each parameter once (the tied head is the embedding):

    matrices   2-D weights of the hidden layers (attention and MLP projections)
    embeddings token and position embeddings, and so the tied output head
    scalars    norm gains and biases

    Frozen parameters (requires_grad False: a fine-tuning run's base model) are left out.
    """
    decay, no_decay = model.decay_and_no_decay_params()  # type: ignore[operator]
    decay = [p for p in decay if p.requires_grad]
    no_decay = [p for p in no_decay if p.requires_grad]
    embedding_ids = {id(p) for p in model._embedding_params()}  # type: ignore[operator]
    return {
        "matrices": list(decay),
        "embeddings": [p for p in no_decay if id(p) in embedding_ids],
        "scalars": [p for p in no_decay if id(p) not in embedding_ids],
    }


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer train.optimizer names, with one param group per role (see
    parameter_groups) at its own peak rate: weight decay on matrices only (module docstring)."""
    groups = parameter_groups(model, config)
    embedding_lr = config.embedding_lr or config.learning_rate
    scalar_lr = config.scalar_lr or config.learning_rate
    adam_groups: list[dict[str, Any]] = [
        {"name": "embeddings", "params": groups["embeddings"], "base_lr": embedding_lr,
         "weight_decay": 0.0},
        {"name": "scalars", "params": groups["scalars"], "base_lr": scalar_lr,
         "weight_decay": 0.0},
    ]  # fmt: skip
    betas = (config.beta1, config.beta2)
    if config.optimizer == "muon":
        muon_group = {
            "name": "matrices",
            "params": groups["matrices"],
            "base_lr": config.muon_lr,
            "weight_decay": config.weight_decay,
            "use_muon": True,
            "momentum": config.muon_momentum,
        }
        adam = [{**g, "use_muon": False, "betas": betas, "eps": 1e-8} for g in adam_groups]
        return Muon([muon_group, *[g for g in adam if g["params"]]])
    matrix_group = {
        "name": "matrices",
        "params": groups["matrices"],
        "base_lr": config.learning_rate,
        "weight_decay": config.weight_decay,
    }
    all_groups = [g for g in (matrix_group, *adam_groups) if g["params"]]
    for g in all_groups:
        g["lr"] = g["base_lr"]
    return AdamW(all_groups, lr=config.learning_rate, betas=betas)
