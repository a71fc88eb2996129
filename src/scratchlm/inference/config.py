"""Sampling settings: the [sample] section (what `generate` does by default), the settings of
one generation call (Sampling), and the one check of them all (no torch here: the config
loads without it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from scratchlm.core.errors import ScratchLMError


@dataclass
class SampleConfig:
    """What `generate` does by default, and the samples printed after training."""

    # Text to continue; on the command line, repeat --prompt to continue several in one batch.
    prompts: list[str] = field(default_factory=lambda: ["\n"])
    max_new_tokens: int = 200
    temperature: float = 0.8  # 0: greedy decoding
    top_k: int = 0  # 0: no top-k filtering
    top_p: float = 1.0  # 1.0: no nucleus filtering
    repetition_penalty: float = 1.0  # 1.0: off; > 1 makes tokens already seen less likely
    seed: int = 1337

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ScratchLMError(f"sample.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        check_sampling_args(
            self.temperature, self.top_k, self.top_p, self.repetition_penalty, prefix="sample."
        )

    def sampling(self) -> Sampling:
        """These settings as the engine takes them (checked)."""
        self.validate()
        return Sampling(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            seed=self.seed,
        )


@dataclass(frozen=True)
class Sampling:
    """How the engine picks tokens and how many: the settings of one generation call.

    max_new_tokens is one number for every prompt or one per prompt (0: none). Row b draws
    from its own generator seeded with seed + b (None: a fresh random seed per row).
    SampleConfig.sampling() gives the run's defaults in this form.
    """

    max_new_tokens: int | Sequence[int]
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def check(self) -> None:
        check_sampling_args(self.temperature, self.top_k, self.top_p, self.repetition_penalty)


def check_sampling_args(
    temperature: float,
    top_k: int,
    top_p: float,
    repetition_penalty: float = 1.0,
    prefix: str = "",
) -> None:
    """One clear line for a bad sampling setting (ScratchLMError): the only place they are
    checked. `prefix` names where the setting came from ("sample." for a config section)."""
    if not temperature >= 0:  # `not >=` also catches NaN
        raise ScratchLMError(f"{prefix}temperature must be >= 0 (0: greedy), got {temperature}")
    if top_k < 0:
        raise ScratchLMError(f"{prefix}top_k must be >= 0 (0: off), got {top_k}")
    if not 0 < top_p <= 1:
        raise ScratchLMError(f"{prefix}top_p must be in (0, 1] (1: off), got {top_p}")
    if not 0 < repetition_penalty < float("inf"):
        raise ScratchLMError(
            f"{prefix}repetition_penalty must be a number > 0 (1: off, > 1 discourages "
            f"repeats), got {repetition_penalty}"
        )
