"""Shared test set-up."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    # Tiny models run fastest on one thread, and CI shares its 2 cores with other work:
    # two OpenMP threads contending for one free core can make a test 30x slower.
    torch.set_num_threads(1)
