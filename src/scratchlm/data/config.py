"""The data stage's settings: [data] (sources and split), [clean] and [dedup]."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from scratchlm.core.errors import ScratchLMError
from scratchlm.data.clean import CleanConfig, rule_names
from scratchlm.data.dedup import NearDedupConfig, RepeatedLineConfig


@dataclass
class DataConfig:
    """Where the training text comes from and how it is split."""

    # Named corpora (see `scratchlm data list`), files (text, JSONL, Parquet, maybe .gz/.zst)
    # or folders of them.
    sources: list[str] = field(default_factory=lambda: ["shakespeare"])
    include: list[str] = field(default_factory=list)  # glob patterns for files in folders
    exclude: list[str] = field(default_factory=list)
    text_field: str = "text"  # the JSONL field or Parquet column that holds the text
    val_fraction: float = 0.05  # share of documents held out for validation
    seed: int = 1337
    # How training windows are picked: "random" (anywhere, with replacement) or "epoch" (every
    # token once per epoch, in a new seeded order each epoch); see data/loader.py.
    sampling: Literal["random", "epoch"] = "random"

    def validate(self) -> None:
        if not self.sources:
            raise ScratchLMError("data.sources is empty; name a corpus or give text files")
        if not 0.0 < self.val_fraction < 1.0:
            raise ScratchLMError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.sampling not in ("random", "epoch"):
            raise ScratchLMError(
                f"data.sampling = {self.sampling!r} is not allowed; choose 'random' or 'epoch'"
            )


@dataclass
class CleaningConfig(CleanConfig):
    """Cleaning (data/clean.py): normalise each document, then drop those that fail a rule.

    The thresholds are data/clean.py's CleanConfig, inherited, so they are defined once; this
    section adds only its two switches. They are Gopher's (Rae et al. 2021), made for web pages.
    This project's curated corpora trip some of them: chitchat's short chats (min_words), the
    King James Bible's refrains (max_duplicate_ngram_char_fraction), one Shakespeare play (its
    speaker lines); so the recipes in configs/ set `filters = false` and keep only the
    normalisation.
    """

    enabled: bool = True  # false: documents go on exactly as read
    filters: bool = True  # false: normalise only, apply no quality rule

    def clean_config(self) -> CleanConfig | None:
        """The settings for data/clean.py, or None when cleaning is off."""
        if not self.enabled:
            return None
        # A CleanConfig of its own (lists copied), checked as it is made.
        config = CleanConfig(
            **{f.name: copy.copy(getattr(self, f.name)) for f in dataclasses.fields(CleanConfig)}
        )
        if not self.filters:
            config.skip = rule_names(config)
        return config

    def validate(self) -> None:
        if self.enabled:  # a switched-off stage's thresholds are never used
            super().validate()


@dataclass
class DedupConfig:
    """Deduplication (data/dedup.py): exact copies, boilerplate lines, near-duplicates."""

    exact: bool = True  # drop documents equal to an earlier one (case and spacing aside)
    lines: bool = True  # drop lines (of min_chars or more) found in over max_documents documents
    near: bool = True  # drop documents sharing most word shingles with an earlier one (MinHash)
    max_documents: int = 50
    min_chars: int = 30
    threshold: float = 0.8  # Jaccard similarity of the shingle sets that makes a near-duplicate
    shingle_size: int = 5  # words per shingle
    num_perm: int = 128  # MinHash permutations
    verify: Literal["signature", "exact", "none"] = "signature"
    bands: int = 0  # LSH bands x rows; 0 and 0: chosen from the threshold
    rows: int = 0
    seed: int = 0

    def line_config(self) -> RepeatedLineConfig | None:
        if not self.lines:
            return None
        return RepeatedLineConfig(max_documents=self.max_documents, min_chars=self.min_chars)

    def near_config(self) -> NearDedupConfig | None:
        if not self.near:
            return None
        return NearDedupConfig(
            threshold=self.threshold,
            shingle_size=self.shingle_size,
            num_perm=self.num_perm,
            seed=self.seed,
            verify=self.verify,
            bands=self.bands or None,
            rows=self.rows or None,
        )

    def validate(self) -> None:
        # The stage configs check their own numbers, even for a stage that is switched off.
        RepeatedLineConfig(max_documents=self.max_documents, min_chars=self.min_chars)
        dataclasses.replace(self, near=True).near_config()
