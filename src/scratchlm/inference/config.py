"""Sampling settings: the [sample] section (what `generate` does by default)."""

from __future__ import annotations

from dataclasses import dataclass, field

from scratchlm.core.errors import ScratchLMError


@dataclass
class SampleConfig:
    """What `generate` does by default, and the samples printed after training."""

    prompts: list[str] = field(default_factory=lambda: ["\n"])
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int = 0  # 0: no top-k filtering
    top_p: float = 1.0  # 1.0: no nucleus filtering
    repetition_penalty: float = 1.0  # 1.0: off; > 1 makes tokens already seen less likely
    seed: int = 1337

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ScratchLMError(f"sample.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ScratchLMError(f"sample.temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ScratchLMError(f"sample.top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ScratchLMError(f"sample.top_p must be in (0, 1], got {self.top_p}")
        if not 0 < self.repetition_penalty < float("inf"):
            raise ScratchLMError(
                f"sample.repetition_penalty must be a number > 0 (1: off), "
                f"got {self.repetition_penalty}"
            )
