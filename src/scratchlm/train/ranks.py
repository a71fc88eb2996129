"""Which process of a training job this is: its rank and the job's world size.

A job of several processes (torch.distributed) gives each one a rank; rank 0 is the main one,
the only one that logs, evaluates, saves checkpoints and draws plots. A plain single process is
rank 0 of 1. Nothing here starts a process group: whoever launches the job does that.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_ranks() -> Ranks:
    """This process's rank and world size in torch.distributed's group, if one is set up;
    else rank 0 of 1."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return Ranks(torch.distributed.get_rank(), torch.distributed.get_world_size())
    return Ranks()
