"""A run's whole configuration: every stage's settings composed, TOML recipes, dotted overrides.

A recipe (configs/*.toml) has one table per section:

    [model]
    n_layer = 4
    [train]
    max_steps = 2000

and any key can be overridden on the command line as `--train.max_steps 100`. Each section is
the settings dataclass of its stage (model/config.py, data/config.py, tokenizer/config.py,
train/config.py, inference/config.py); every key and value is checked against it
(core/config_files.py), and a mistake is one ScratchLMError naming the file, the key and the
valid choices.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from scratchlm.core.config_files import parse_cli_value, read_toml, set_field, set_fields
from scratchlm.core.errors import ScratchLMError
from scratchlm.data.config import CleaningConfig, DataConfig, DedupConfig
from scratchlm.inference.config import SampleConfig
from scratchlm.model.config import (
    ModelConfig,
    depth_shape,
    model_config_from_table,
    preset_config,
    preset_depth,
)
from scratchlm.tokenizer.config import TokenizerConfig
from scratchlm.train.config import TrainConfig


@dataclass
class RunConfig:
    """Everything one training run needs; saved as runs/<name>/config.toml."""

    name: str = "run"
    out_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    clean: CleaningConfig = field(default_factory=CleaningConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def validate(self) -> None:
        if not self.name or "/" in self.name:
            raise ScratchLMError(f"name must be a plain folder name, got {self.name!r}")
        for section in (
            self.model,
            self.data,
            self.clean,
            self.dedup,
            self.tokenizer,
            self.train,
            self.sample,
        ):
            section.validate()
        self.train.accumulation_steps(self.model.block_size)  # batch_tokens must divide evenly

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


SECTIONS = ("model", "data", "clean", "dedup", "tokenizer", "train", "sample")
# Tables of a recipe that another command reads: `scratchlm finetune` takes [finetune], so one
# recipe can pretrain a model and fine-tune it (finetune/config.py).
OTHER_COMMANDS_TABLES = ("finetune",)


# ---------------------------------------------------------------------------------------------
# Loading: TOML file -> dict -> checked dataclasses
# ---------------------------------------------------------------------------------------------


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a TOML recipe (or start from defaults), apply `--section.key value` overrides, check."""
    config = RunConfig()
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_toml(path)
        config = config_from_dict(raw, where=str(path))
    if overrides:
        apply_overrides(config, overrides)
    _apply_depth_learning_rate(config, given=_train_keys_given(raw, overrides or []))
    config.validate()
    return config


def _train_keys_given(raw: dict[str, Any], overrides: list[str]) -> set[str]:
    """The [train] keys a recipe file or a --train.KEY override sets."""
    given = set(raw.get("train", {})) if isinstance(raw.get("train"), dict) else set()
    for arg in overrides:
        if arg.startswith("--train."):
            given.add(arg[len("--train.") :].partition("=")[0])
    return given


def _apply_depth_learning_rate(config: RunConfig, given: set[str]) -> None:
    """A depth-N model trains at the learning rate depth_shape derives for it, unless the
    recipe or the command line names one (min_lr follows at a tenth, as the defaults)."""
    depth = preset_depth(config.model.preset)
    if depth is None or "learning_rate" in given:
        return
    config.train.learning_rate = depth_shape(depth).learning_rate
    if "min_lr" not in given:
        config.train.min_lr = config.train.learning_rate / 10


def config_from_dict(raw: dict[str, Any], where: str = "config") -> RunConfig:
    config = RunConfig()
    for key, value in raw.items():
        if key in OTHER_COMMANDS_TABLES:
            continue
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ScratchLMError(f"{where}: [{key}] must be a table of keys")
            if key == "model":
                config.model = model_config_from_table(value, where)
            else:
                set_fields(getattr(config, key), value, where=where, prefix=f"{key}.")
        else:
            set_field(config, key, value, where=where, prefix="")
    return config


def apply_overrides(config: RunConfig, overrides: list[str]) -> None:
    """Apply ["--train.max_steps", "100", "--model.bias=false", ...] to `config` in place."""
    args = list(overrides)
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ScratchLMError(
                f"unexpected argument {arg!r}; overrides look like --train.max_steps 100"
            )
        key, sep, value = arg[2:].partition("=")
        if not sep:
            if i + 1 >= len(args):
                raise ScratchLMError(f"--{key} needs a value")
            value = args[i + 1]
            i += 1
        i += 1
        target: Any = config
        parts = key.split(".")
        if len(parts) == 2 and parts[0] in SECTIONS:
            target = getattr(config, parts[0])
            name, prefix = parts[1], f"{parts[0]}."
        elif len(parts) == 1:
            name, prefix = parts[0], ""
        else:
            raise ScratchLMError(
                f"unknown option --{key}; sections are {', '.join(SECTIONS)} (e.g. --train.max_steps)"
            )
        if target is config.model and name == "preset":
            # A whole new shape: it replaces the model keys given before it.
            config.model = preset_config(value, "command line")
            continue
        set_field(
            target, name, parse_cli_value(target, name, value, prefix), "command line", prefix
        )


def load_run_config(run_dir: Path, overrides: list[str] | None = None) -> RunConfig:
    """The config.toml of a run directory (with overrides), placed where the run is now."""
    from scratchlm.runs.layout import RunPaths

    paths = RunPaths(Path(run_dir))
    paths.check_is_run()
    config = load_config(paths.config, overrides)
    # The run lives where it was found, even if it was moved since it was made.
    config.out_dir, config.name = str(paths.root.parent), paths.root.name
    return config
