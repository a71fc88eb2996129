"""The one entry point for using a model: load a run (or a pretrained model) for inference,
then generate from text, token ids or chat messages, or score a continuation.

    lm = load_for_inference("runs/tiny", device="cpu", dtype="auto", quantize=None)
    [done] = lm.generate(["def "], lm.sampling(temperature=0), logprobs=True)
    done.text, done.tokens, done.logprobs
    [reply] = lm.chat([[{"role": "user", "content": "What is the capital of France?"}]])
    lm.score("The capital of France is", " Paris")     # log p of each continuation token

`generate`, `chat` and the CLI, the server and evaluation all go through this class, so the
device, dtype, quantisation, the run's [sample] defaults, its chat template and its token
roles are decided in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from scratchlm.core.config_files import read_toml, set_fields
from scratchlm.core.devices import resolve_device
from scratchlm.core.errors import ScratchLMError
from scratchlm.inference.chat_template import encode_chat
from scratchlm.inference.config import SampleConfig, Sampling
from scratchlm.inference.dtype import cast_for_inference, resolve_inference_dtype
from scratchlm.inference.engine import NewToken
from scratchlm.inference.text import Completion, continue_ids
from scratchlm.model import GPT
from scratchlm.runs.layout import RunPaths, token_role_ids
from scratchlm.tokenizer import BPETokenizer

Prompt = str | Sequence[int]
Messages = Sequence[Mapping[str, str]]


@dataclass
class LanguageModel:
    """A model ready to generate: weights on their device and dtype, with what the run says
    about using them. Build one with load_for_inference."""

    model: GPT
    tokenizer: BPETokenizer
    defaults: SampleConfig = field(default_factory=SampleConfig)  # the run's [sample] table
    chat_template: str | None = None  # the run's chat_template.jinja (imported chat models)
    token_roles: dict[str, int] = field(default_factory=dict)  # bos / eos / pad ids
    run_dir: Path | None = None

    @property
    def device(self) -> torch.device:
        return self.model.lm_head.weight.device

    @property
    def block_size(self) -> int:
        return self.model.config.block_size

    def sampling(self, **overrides: Any) -> Sampling:
        """The run's [sample] settings with `overrides` (None values ignored), checked."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        sampling = replace(self.defaults.sampling(), **changes)
        sampling.check()
        return sampling

    def encode(self, text: str) -> list[int]:
        """Plain text to ids: a special token's string typed here stays ordinary characters."""
        return self.tokenizer.encode(text, allowed_special="none")

    def encode_chat(self, messages: Messages, add_generation_prompt: bool = True) -> list[int]:
        """A conversation rendered with the run's chat template; only the template's own
        special tokens become control tokens (chat_template.encode_chat)."""
        if self.chat_template is None:
            where = self.run_dir or "this model"
            raise ScratchLMError(
                f"{where} has no chat template (chat_template.jinja); chat needs a chat model "
                "such as smollm2-135m-instruct"
            )
        names = {v: k for k, v in self.tokenizer.special_tokens.items()}
        specials = {f"{role}_token": names[i] for role, i in self.token_roles.items()}
        return encode_chat(
            self.chat_template, messages, self.tokenizer, add_generation_prompt, specials
        )

    def generate(
        self,
        prompts: Sequence[Prompt],
        sampling: Sampling | None = None,
        stop: Sequence[str] = (),
        on_text: Callable[[int, str], None] | None = None,
        on_token: Callable[[NewToken], None] | None = None,
        logprobs: bool = False,
        use_cache: bool = True,
    ) -> list[Completion]:
        """Continue every prompt (text, encoded with encode(), or token ids) in one batch.

        sampling: default the run's [sample] settings. Each row ends at a special token (an
        end of text or of a turn), at max_new_tokens, or at a `stop` string (left out of its
        text). Stream with on_text(row, piece) and/or on_token(NewToken); logprobs=True fills
        Completion.logprobs with log p of each chosen token before temperature.
        """
        ids = [self.encode(p) if isinstance(p, str) else list(p) for p in prompts]
        return continue_ids(
            self.model,
            self.tokenizer,
            ids,
            sampling or self.sampling(),
            stop,
            on_text=on_text,
            on_token=on_token,
            use_cache=use_cache,
            logprobs=logprobs,
        )

    def chat(
        self,
        conversations: Sequence[Messages],
        sampling: Sampling | None = None,
        stop: Sequence[str] = (),
        on_text: Callable[[int, str], None] | None = None,
        on_token: Callable[[NewToken], None] | None = None,
        logprobs: bool = False,
        use_cache: bool = True,
    ) -> list[Completion]:
        """The assistant's next turn in each conversation ([{"role", "content"}, ...]),
        rendered with the chat template; the reply ends at the template's end-of-turn token."""
        ids = [self.encode_chat(messages) for messages in conversations]
        return self.generate(ids, sampling, stop, on_text, on_token, logprobs, use_cache)

    @torch.inference_mode()
    def score(self, context: Prompt, continuation: Prompt) -> list[float]:
        """log p of each token of `continuation` after `context` (text is encoded with
        encode(), so a plain-text continuation is tokenised on its own): what evaluation sums.

        Full-precision log-softmax of the model's logits, no temperature or penalty. Context
        and continuation must fit in the model's context together (block_size tokens).
        """
        ctx = self.encode(context) if isinstance(context, str) else list(context)
        cont = self.encode(continuation) if isinstance(continuation, str) else list(continuation)
        if not ctx or not cont:
            raise ScratchLMError("score needs a non-empty context and continuation")
        ids = ctx + cont
        if len(ids) > self.block_size:
            raise ScratchLMError(
                f"context and continuation are {len(ids)} tokens but the model's context holds "
                f"{self.block_size}; shorten the context"
            )
        vocab = self.model.config.vocab_size
        if any(not 0 <= t < vocab for t in ids):
            raise ScratchLMError(f"a token id is outside the model's vocabulary (size {vocab})")
        was_training = self.model.training
        self.model.eval()
        try:
            idx = torch.tensor([ids], device=self.device)  # (1, T)
            logits, _ = self.model(idx)  # (1, T, V)
        finally:
            self.model.train(was_training)
        # The token at position t is predicted by the logits at t - 1.
        predicting = logits[0, len(ctx) - 1 : -1].float()  # (len(cont), V)
        chosen = torch.tensor(cont, device=self.device)[:, None]
        return torch.log_softmax(predicting, dim=-1).gather(1, chosen).squeeze(1).tolist()


def run_directory(source: str | Path) -> Path:
    """`source` itself, or for the name of a pretrained model that is not a folder here, its
    run in the cache (downloaded and imported the first time)."""
    from scratchlm.runs.pretrained import PRETRAINED_RUNS, pretrained_run

    if not Path(source).exists() and str(source) in PRETRAINED_RUNS:
        return pretrained_run(str(source))
    return Path(source)


def read_sample_defaults(run_dir: Path) -> SampleConfig:
    """The run's [sample] table (config.toml), checked; SampleConfig's defaults where absent."""
    paths = RunPaths(run_dir)
    table = read_toml(paths.config).get("sample", {})
    if not isinstance(table, dict):
        raise ScratchLMError(f"{paths.config}: [sample] must be a table of keys")
    config = SampleConfig()
    set_fields(config, table, where=str(paths.config), prefix="sample.")
    config.validate()
    return config


def load_for_inference(
    source: str | Path,
    checkpoint: Path | None = None,
    device: str = "cpu",
    dtype: str = "auto",
    quantize: str | None = None,
) -> LanguageModel:
    """A run directory (or a pretrained model's name: smollm2-135m-instruct) ready to use.

    checkpoint: default the latest. dtype: float32, bfloat16 or auto (inference/dtype.py).
    quantize: None, "int8" or "int4" (CPU only; inference/quantize.py). Every argument is
    checked before anything is loaded.
    """
    from scratchlm.runs.loading import load_trained_model

    torch_device = resolve_device(device)
    torch_dtype = resolve_inference_dtype(dtype, torch_device, quantize)
    if quantize is not None:
        from scratchlm.inference.quantize import QUANTIZE_MODES

        if quantize not in QUANTIZE_MODES:
            raise ScratchLMError(f"unknown quantisation {quantize!r}; use int8 or int4")
    run_dir = run_directory(source)
    RunPaths(run_dir).check_is_run()
    defaults = read_sample_defaults(run_dir)
    _, tokenizer, model = load_trained_model(run_dir, checkpoint, torch_device)
    cast_for_inference(model, torch_dtype)
    if quantize is not None:
        from scratchlm.inference.quantize import quantize_model

        quantize_model(model, quantize, torch_dtype)
    template_path = RunPaths(run_dir).chat_template
    template = template_path.read_text(encoding="utf-8") if template_path.is_file() else None
    return LanguageModel(
        model=model,
        tokenizer=tokenizer,
        defaults=defaults,
        chat_template=template,
        token_roles=token_role_ids(run_dir, tokenizer),
        run_dir=run_dir,
    )
