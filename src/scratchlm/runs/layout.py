"""A run directory holds everything one training run made:

    runs/<name>/
      config.toml          the full resolved config (model.vocab_size set from the tokenizer)
      tokenizer.json       the tokenizer the run trained, and tokenizer.vocab to read it
      token_roles.json     imported runs: which special tokens are bos, eos and pad
      chat_template.jinja  imported chat models: how the model formats a conversation
      data/                token shards train_000000.bin, ..., val_000000.bin, ... and meta.json,
                           the data report (report.json, report.txt, lengths.png)
      checkpoints/step_NNNNNN/
      metrics.jsonl, loss.png, samples.txt

so it can be resumed, evaluated or sampled from without any other input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scratchlm.core.document_split import Split
from scratchlm.core.errors import ScratchLMError
from scratchlm.core.user_files import read_json
from scratchlm.data.prepare import prepared_shards
from scratchlm.tokenizer import BPETokenizer

TOKEN_ROLES_FILE = "token_roles.json"
TOKEN_ROLES = ("bos", "eos", "pad")
CHAT_TEMPLATE_FILE = "chat_template.jinja"


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer.json"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def loss_plot(self) -> Path:
        return self.root / "loss.png"

    @property
    def lr_plot(self) -> Path:
        return self.root / "lr.png"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def samples(self) -> Path:
        return self.root / "samples.txt"

    @property
    def token_roles(self) -> Path:
        return self.root / TOKEN_ROLES_FILE

    @property
    def chat_template(self) -> Path:
        return self.root / CHAT_TEMPLATE_FILE

    def shards(self, split: Split) -> list[Path]:
        """The token shards of `split` ("train" or "val"), as data/meta.json lists them."""
        return prepared_shards(self.data, split)

    def is_prepared(self) -> bool:
        files = (self.config, self.tokenizer, self.data / "meta.json")
        return all(p.is_file() for p in files)

    def check_is_run(self) -> None:
        """One clear line when the folder is missing or not a scratchlm run."""
        if not self.root.is_dir():
            raise ScratchLMError(f"no such run directory: {self.root}")
        if not self.config.is_file():
            raise ScratchLMError(
                f"{self.root} is not a scratchlm run (config.toml is missing); train one with "
                "`scratchlm train --config configs/demo.toml`"
            )


def load_tokenizer(run_dir: Path) -> BPETokenizer:
    return BPETokenizer.load(RunPaths(Path(run_dir)).tokenizer)


def token_role_ids(run_dir: Path, tokenizer: BPETokenizer) -> dict[str, int]:
    """The ids of the run's bos, eos and pad tokens, for exports: what an imported model named
    (token_roles.json; SmolLM2-Instruct ends a reply with <|im_end|>), and otherwise
    <|endoftext|> for each role, the one special token scratchlm's tokenizers train with."""
    roles: dict[str, str] = {}
    path = RunPaths(Path(run_dir)).token_roles
    if path.is_file():
        roles = read_json(path, "token roles file")
        if not isinstance(roles, dict):
            raise ScratchLMError(
                f'{path}: expected an object like {{"eos": "<|im_end|>"}}; fix or delete it'
            )
    ids = {}
    for role in TOKEN_ROLES:
        token = roles.get(role, "<|endoftext|>")
        if token in tokenizer.special_tokens:
            ids[role] = tokenizer.special_tokens[token]
    return ids
