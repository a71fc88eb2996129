"""A fine-tuning run's settings: the base model, the data, the task's own keys, LoRA, and the
same [train] and [sample] sections a pretraining run has.

A recipe keeps them in a [finetune] table, so one file can pretrain a model and then fine-tune
it (configs/chat.toml: `scratchlm train` reads the pretraining tables, `scratchlm finetune`
the [finetune] one):

    [finetune]
    base = "runs/chat-base"
    data = "chitchat"
    [finetune.train]
    max_steps = 300
    [finetune.lora]
    r = 8

A fine-tuning run's own config.toml holds [model], [train] and [sample] at the top, as every
run's does (so generate, chat, eval and export read it as any run), and the rest under
[finetune].
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import tomli_w

from scratchlm.core.config_files import read_toml, set_field, set_fields
from scratchlm.core.errors import ScratchLMError
from scratchlm.inference.config import SampleConfig
from scratchlm.model.config import ModelConfig
from scratchlm.train.config import TrainConfig

# Which parameters a classifier trains (finetune/classification.py set_trainable).
TrainableMode = Literal["head", "last_blocks", "all", "lora"]
TRAINABLE_MODES: tuple[str, ...] = get_args(TrainableMode)
# How SFT lays examples into rows (finetune/sft_batches.py).
BatchMode = Literal["pack", "pad"]
BATCH_MODES: tuple[BatchMode, ...] = get_args(BatchMode)
TaskName = Literal["sft", "classify", "dpo"]
TASK_NAMES: tuple[str, ...] = get_args(TaskName)
TABLE = "finetune"


@dataclass
class SFTSettings:
    """Instruction / chat SFT: conversations through the chat template."""

    batching: BatchMode = "pack"  # "pack" examples into full rows, or "pad" by length buckets
    train_on_all: bool = False  # the loss on every token, not only the assistant's replies
    # The reply check before and after (finetune/sft_task.py): this many held-out prompts,
    # each reply generated for at most reply_tokens tokens.
    held_out_replies: int = 100
    reply_tokens: int = 96

    def validate(self) -> None:
        if self.batching not in BATCH_MODES:
            raise ScratchLMError(f"sft.batching must be pack or pad, got {self.batching!r}")
        if self.held_out_replies < 0 or self.reply_tokens < 1:
            raise ScratchLMError(
                "sft.held_out_replies must be >= 0 and sft.reply_tokens >= 1, got "
                f"{self.held_out_replies} and {self.reply_tokens}"
            )


@dataclass
class ClassifySettings:
    """A classification head on the last real token's hidden state."""

    # head, last_blocks (the last `last_blocks` blocks, final norm and head), all, or lora
    trainable: TrainableMode = "last_blocks"
    last_blocks: int = 1
    text_key: str = "text"  # the column (CSV) or key (JSONL) of the text
    label_key: str = "label"  # ... and of its label
    # The labels the data may hold (a row with another one is refused, naming its line);
    # empty: whatever labels the data has.
    labels: list[str] = field(default_factory=list)
    test_fraction: float = 0.15  # held out for the final test, as val_fraction for validation
    dropout: float = 0.0  # before the head

    def validate(self) -> None:
        if self.trainable not in TRAINABLE_MODES:
            raise ScratchLMError(
                f"classify.trainable must be one of {', '.join(TRAINABLE_MODES)}, got "
                f"{self.trainable!r}"
            )
        if self.last_blocks < 1:
            raise ScratchLMError(f"classify.last_blocks must be at least 1, got {self.last_blocks}")
        if not 0 < self.test_fraction < 1:
            raise ScratchLMError(
                f"classify.test_fraction must be in (0, 1), got {self.test_fraction}"
            )
        if not 0 <= self.dropout < 1:
            raise ScratchLMError(f"classify.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class DPOSettings:
    """Direct preference optimisation against the frozen base model."""

    beta: float = 0.1  # how far from the reference the policy may move (larger: less)
    label_smoothing: float = 0.0  # the share of pairs assumed mislabelled (conservative DPO)
    # Add this many times the chosen replies' NLL per token (RPO): keeps the chosen replies
    # likely, where DPO alone may push both down until the model says nothing. 0: plain DPO.
    nll_weight: float = 0.0
    # Generated preferences (concise, question): pairs to make, held-out ones included.
    pairs: int = 1200

    def validate(self) -> None:
        from scratchlm.finetune.dpo import check_dpo_settings

        check_dpo_settings(self.beta, self.label_smoothing)
        if not self.nll_weight >= 0:
            raise ScratchLMError(
                f"dpo.nll_weight must be >= 0 (0: plain DPO), got {self.nll_weight}"
            )
        if self.pairs < 2:
            raise ScratchLMError(
                f"dpo.pairs must be at least 2 (train and held out), got {self.pairs}"
            )


@dataclass
class LoRASettings:
    """Low-rank adapters on the frozen base model (finetune/lora.py)."""

    r: int = 0  # the adapters' rank; 0: no LoRA, the model's own weights train
    alpha: float = 16.0  # the update is scaled by alpha / r
    dropout: float = 0.0  # on the adapters' input
    # Which layers, by kind (q, k, v, o, gate, up, down; attn, mlp, all) or name pattern.
    targets: list[str] = field(default_factory=lambda: ["q", "v"])

    def validate(self) -> None:
        if self.r < 0:
            raise ScratchLMError(f"lora.r must be >= 0 (0: no LoRA), got {self.r}")
        if not self.alpha > 0:
            raise ScratchLMError(f"lora.alpha must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ScratchLMError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ScratchLMError("lora.targets is empty; name layers such as q, v or mlp")


def finetune_train_defaults() -> TrainConfig:
    """Fine-tuning starts from trained weights: a short run at a small learning rate."""
    return TrainConfig(
        batch_size=8,
        max_steps=200,
        learning_rate=5e-5,
        min_lr=5e-6,
        warmup_steps=10,
        weight_decay=0.0,
        eval_interval=50,
        eval_batches=20,
        log_interval=5,
        checkpoint_interval=100,
    )


@dataclass
class FinetuneRun:
    """Everything one fine-tuning run needs; saved in runs/<name>/config.toml."""

    name: str = "finetune"
    out_dir: str = "runs"
    task: TaskName = "sft"
    # The model to start from: a run directory, or a pretrained model's name
    # (smollm2-135m-instruct).
    base: str = ""
    # sft: chitchat, chatterbot, addition, dates or a JSONL of {"messages": [...]};
    # classify: spam-assassin or
    # a JSONL/CSV of text and label; dpo: concise, question or a JSONL of prompt, chosen and
    # rejected.
    data: str = ""
    val_fraction: float = 0.1  # held out for validation (seeded)
    max_length: int = 0  # tokens of an example, longer ones cut; 0: the model's block_size
    sft: SFTSettings = field(default_factory=SFTSettings)
    classify: ClassifySettings = field(default_factory=ClassifySettings)
    dpo: DPOSettings = field(default_factory=DPOSettings)
    lora: LoRASettings = field(default_factory=LoRASettings)
    train: TrainConfig = field(default_factory=finetune_train_defaults)
    sample: SampleConfig = field(default_factory=SampleConfig)
    # The base model's shape: read from it, never set by hand.
    model: ModelConfig = field(default_factory=ModelConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    @property
    def uses_lora(self) -> bool:
        if self.task == "classify":
            return self.classify.trainable == "lora"
        return self.lora.r > 0

    def validate(self) -> None:
        if not self.name or "/" in self.name:
            raise ScratchLMError(f"name must be a plain folder name, got {self.name!r}")
        if self.task not in TASK_NAMES:
            raise ScratchLMError(f"task must be one of {', '.join(TASK_NAMES)}, got {self.task!r}")
        if not self.base:
            raise ScratchLMError(
                "no base model: give --base RUN_DIR (a trained run) or --base smollm2-135m-instruct"
            )
        if not self.data:
            raise ScratchLMError(f"no data: give --data ({_DATA_HELP[self.task]})")
        if not 0 < self.val_fraction < 1:
            raise ScratchLMError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.max_length < 0:
            raise ScratchLMError(f"max_length must be >= 0 (0: block_size), got {self.max_length}")
        if self.task == "classify" and self.classify.trainable == "lora" and self.lora.r == 0:
            self.lora.r = 8  # "lora" asks for adapters: the usual rank unless one is given
        for section in (self.sft, self.classify, self.dpo, self.lora, self.train, self.sample):
            section.validate()
        if self.train.parallel != "none":
            raise ScratchLMError(
                "fine-tuning runs in one process; set train.parallel to none (torchrun jobs are "
                "for pretraining)"
            )

    def to_toml(self) -> str:
        """The run's config.toml: [model], [train] and [sample] at the top, the rest under
        [finetune]."""
        everything = dataclasses.asdict(self)
        top = {key: everything.pop(key) for key in ("name", "out_dir", "model", "train", "sample")}
        return tomli_w.dumps({**top, TABLE: everything})


_DATA_HELP = {
    "sft": "chitchat, chatterbot, addition, dates, or a JSONL file of messages",
    "classify": "spam-assassin, or a JSONL/CSV file of text and label",
    "dpo": "concise, question, or a JSONL file of prompt, chosen and rejected",
}
SECTIONS = ("sft", "classify", "dpo", "lora", "train", "sample")


def finetune_from_table(table: dict[str, Any], where: str) -> FinetuneRun:
    """A FinetuneRun from a [finetune] table (its sections as sub-tables), checked key by key."""
    run = FinetuneRun()
    for key, value in table.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ScratchLMError(f"{where}: [{TABLE}.{key}] must be a table of keys")
            set_fields(getattr(run, key), value, where=where, prefix=f"{TABLE}.{key}.")
        elif key == "model":
            raise ScratchLMError(
                f"{where}: [{TABLE}.model] cannot be set; a fine-tuning run has its base "
                "model's shape"
            )
        else:
            set_field(run, key, value, where=where, prefix=f"{TABLE}.")
    return run


def read_recipe(path: str | Path) -> FinetuneRun:
    """The [finetune] table of a recipe file (not yet validated: options may follow)."""
    raw = read_toml(path)
    table = raw.get(TABLE)
    if not isinstance(table, dict):
        raise ScratchLMError(
            f"{path} has no [{TABLE}] table; a fine-tuning recipe keeps its settings there "
            "(see configs/chat.toml)"
        )
    run = finetune_from_table(table, str(path))
    if "base" not in table and isinstance(raw.get("name"), str):
        # A recipe that pretrains and fine-tunes: the base is the run it pretrains.
        run.base = str(Path(str(raw.get("out_dir", "runs"))) / raw["name"])
    return run


def read_run(run_dir: Path) -> FinetuneRun:
    """A fine-tuning run's config.toml, placed where the run is now."""
    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        raise ScratchLMError(f"{run_dir} is not a scratchlm run (config.toml is missing)")
    raw = read_toml(path)
    table = raw.get(TABLE)
    if not isinstance(table, dict):
        raise ScratchLMError(
            f"{run_dir} is not a fine-tuning run (its config.toml has no [{TABLE}] table); "
            "continue a pretraining run with `scratchlm train --resume`"
        )
    run = finetune_from_table(
        {**table, **{key: raw[key] for key in ("train", "sample") if key in raw}}, str(path)
    )
    run.out_dir, run.name = str(Path(run_dir).parent), Path(run_dir).name
    return run
