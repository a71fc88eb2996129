"""Random training batches and a fixed set of evaluation batches from a .bin token file.

Training windows start at positions drawn from a seeded torch.Generator. Its state is the whole
state of the loader, so saving it with a checkpoint and restoring it makes a resumed run see
exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from scratchlm.data.prepare import load_tokens
from scratchlm.errors import ScratchLMError


class TokenBatches:
    def __init__(
        self,
        tokens_path: Path,
        block_size: int,
        batch_size: int,
        dtype: str,
        seed: int,
        device: str = "cpu",
    ) -> None:
        if block_size < 1 or batch_size < 1:
            raise ScratchLMError(
                f"block_size and batch_size must be at least 1, got {block_size} and {batch_size}"
            )
        self.tokens_path = Path(tokens_path)
        self.tokens = load_tokens(self.tokens_path, dtype)  # memory-mapped: the OS pages it in
        self.block_size = block_size
        self.batch_size = batch_size
        self.device = torch.device(device)
        if len(self.tokens) < block_size + 1:
            raise ScratchLMError(
                f"{self.tokens_path} has {len(self.tokens)} tokens, but one training window "
                f"needs model.block_size + 1 = {block_size + 1}; use a smaller model.block_size "
                "or more text"
            )
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @property
    def num_start_positions(self) -> int:
        """How many different windows of block_size + 1 tokens the file holds."""
        return len(self.tokens) - self.block_size

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), both (batch_size, block_size) int64; y is x shifted left by one token."""
        starts = torch.randint(
            self.num_start_positions, (self.batch_size,), generator=self.generator
        )
        return self._windows(starts.numpy())

    def eval_batches(self, num_batches: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The same num_batches batches on every call: windows evenly spread over the file.

        They do not touch the training generator, so validation loss is measured on identical
        data at every step and across resumes.
        """
        count = num_batches * self.batch_size
        starts = np.linspace(0, self.num_start_positions - 1, num=count).round().astype(np.int64)
        for i in range(num_batches):
            yield self._windows(starts[i * self.batch_size : (i + 1) * self.batch_size])

    def _windows(self, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        # One fancy-index read of (B, T + 1) tokens, copied out of the memory map into int64.
        offsets = np.arange(self.block_size + 1, dtype=np.int64)
        windows = torch.from_numpy(self.tokens[starts[:, None] + offsets].astype(np.int64))
        x, y = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
        if self.device.type == "cuda":
            # Pinned host memory lets the copy overlap with the GPU still running the last step.
            return (
                x.pin_memory().to(self.device, non_blocking=True),
                y.pin_memory().to(self.device, non_blocking=True),
            )
        return x.to(self.device), y.to(self.device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (a uint8 generator state), so it can go into a safetensors checkpoint."""
        return {"generator_state": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "generator_state" not in state:
            raise ScratchLMError(
                "the checkpoint has no data loader state (generator_state); it was not saved by "
                "this version of scratchlm"
            )
        self.generator.set_state(state["generator_state"].detach().to("cpu", torch.uint8))
