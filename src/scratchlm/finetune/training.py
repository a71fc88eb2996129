"""A fine-tuning run: a base model, a task, and the training engine around them.

    base model  (a run, or smollm2-135m-instruct)  -> loaded in float32 on the run's device
    task        (sft, classify, dpo)               -> model, batches, loss, validation
    LoRA        (lora.r > 0, or classify's "lora") -> adapters on the frozen base
    engine      train/loop.py's run_steps and hooks: progress, metrics.jsonl, checkpoints,
                exact resume, plots, SIGINT saves and stops

The run folder is a run like any other (runs/layout.py): config.toml, tokenizer.json, the chat
template and token roles, checkpoints. A LoRA run's checkpoints hold the merged weights in
model.safetensors (generate, chat, eval and export read them as a plain model) and the adapters
beside the RNG states, which is what resuming loads onto the base; the finished run also saves
the adapter alone in adapter/ (lora.json + lora.safetensors).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from scratchlm.core.atomic_files import atomic_write_text, staging_folder
from scratchlm.core.devices import resolve_device
from scratchlm.core.errors import ScratchLMError
from scratchlm.core.messages import is_quiet, quietly
from scratchlm.core.user_paths import refuse_existing
from scratchlm.finetune.config import FinetuneRun
from scratchlm.finetune.lora import (
    apply_lora,
    load_lora_state_dict,
    lora_config,
    lora_parameters,
    lora_state_dict,
    merged_state_dict,
    save_lora,
)
from scratchlm.finetune.task import FinetuneTask
from scratchlm.inference.language_model import LanguageModel, load_for_inference, run_directory
from scratchlm.model import GPT
from scratchlm.runs.checkpoint import TrainingState, list_checkpoints
from scratchlm.runs.layout import RunPaths
from scratchlm.train.hooks import StepReport, TrainingHook, is_due, training_hooks
from scratchlm.train.loop import TrainResult, run_steps, train_result
from scratchlm.train.optimizer import build_optimizer
from scratchlm.train.precision import autocast_context, resolve_dtype
from scratchlm.train.ranks import current_ranks
from scratchlm.train.setup import TrainingContext, restore_checkpoint, restore_optimizer

ADAPTER_FOLDER = "adapter"
LORA_PREFIX = "lora."  # the adapters' tensors in a checkpoint's state.safetensors
TRAINED_PREFIX = "trained."  # ... and a LoRA run's other trained tensors (a classifier's head)


@dataclass
class FinetuneResult(TrainResult):
    report: list[str] = field(default_factory=list)  # the task's final lines (none if stopped)


# Each task in its own module, imported when used.
TASK_MODULES = {
    "sft": ("scratchlm.finetune.sft_task", "SFTTask"),
    "classify": ("scratchlm.finetune.classify_task", "ClassifyTask"),
    "dpo": ("scratchlm.finetune.dpo_task", "DPOTask"),
}


def task_class(name: str) -> type[FinetuneTask]:
    module, cls = TASK_MODULES[name]
    task: type[FinetuneTask] = getattr(importlib.import_module(module), cls)
    return task


def finetune(
    run: FinetuneRun, resume: bool = False, overwrite: bool = False, quiet: bool = False
) -> FinetuneResult:
    """Fine-tune run.base on run.data as run.task says, into run.run_dir (or on from its last
    checkpoint with resume)."""
    start = time.perf_counter()
    with quietly(quiet):
        run.validate()
        paths = RunPaths(run.run_dir)
        if not resume:
            refuse_existing(paths.root, overwrite)  # before any work
        tc = run.train
        device = resolve_device(tc.device)
        torch.manual_seed(tc.seed)
        base_dir = run_directory(run.base)
        RunPaths(base_dir).check_is_run()
        base = load_for_inference(base_dir, device=str(device), dtype="float32")
        run.model = dataclasses.replace(base.model.config)
        task = task_class(run.task)(run, base, device)
        if run.uses_lora and run.task != "classify":
            assert isinstance(task.model, GPT)
            apply_lora(
                task.model,
                run.lora.targets,
                run.lora.r,
                run.lora.alpha,
                run.lora.dropout,
                base_name=run.base,
            )
        task.model.train()
        if not resume:
            _make_run_folder(run, base, task, overwrite)
        ctx = _context(run, paths, task, device, resume)
        first_step = ctx.state.step
        if ctx.resumed_from is not None and first_step >= tc.max_steps:
            _say(
                f"{paths.root} is already trained to step {first_step:,} (train.max_steps is "
                f"{tc.max_steps:,}); nothing to do. Raise --train.max_steps to continue."
            )
            return FinetuneResult(first_step, 0, None, False, ctx.resumed_from, 0.0)
        if ctx.resumed_from is not None:
            _say(f"resuming from {ctx.resumed_from} (step {first_step:,} of {tc.max_steps:,})")
        hooks = training_hooks(ctx, resume)
        hooks.hooks.insert(1, TaskMetrics(task, hooks))
        try:
            interrupted = run_steps(ctx, hooks)
        finally:
            hooks.close()
        report: list[str] = []
        if interrupted:
            _say(
                f"stopped at step {ctx.state.step:,}; checkpoint saved to {ctx.last_checkpoint}"
                f"\nresume with: scratchlm finetune {run.task} --resume {paths.root}"
            )
        else:
            report = _finish(run, task, paths.root)
    return FinetuneResult(**vars(train_result(ctx, first_step, interrupted, start)), report=report)


def _say(line: str) -> None:
    if not is_quiet():
        print(line)


def _make_run_folder(
    run: FinetuneRun, base: LanguageModel, task: FinetuneTask, overwrite: bool
) -> None:
    """config.toml, tokenizer.json, token roles and chat template (the base's, unless the
    task writes its own), and the task's files, all at once."""
    root = run.run_dir
    with staging_folder(root) as stage:
        atomic_write_text(stage / "config.toml", run.to_toml())
        base.tokenizer.save(stage / "tokenizer.json")
        assert base.run_dir is not None  # loaded from a folder
        base_paths = RunPaths(base.run_dir)
        for name in ("token_roles.json", "chat_template.jinja"):
            if (base_paths.root / name).is_file():
                shutil.copyfile(base_paths.root / name, stage / name)
        for name, text in task.files().items():
            atomic_write_text(stage / name, text)
        if overwrite and root.exists():
            shutil.rmtree(root)
        os.replace(stage, root)


def _identity(run: FinetuneRun, task: FinetuneTask, base: LanguageModel) -> dict[str, Any]:
    lora = dataclasses.asdict(run.lora) if run.uses_lora else None
    return {
        "tokenizer": base.tokenizer.fingerprint(),
        "model": dataclasses.asdict(run.model),
        "data": {"task": run.task, **task.data_identity()},
        # Which parameters train decides what the optimizer state means.
        "train": {"optimizer": run.train.optimizer, "lora": json.dumps(lora, sort_keys=True)},
    }


def _context(
    run: FinetuneRun, paths: RunPaths, task: FinetuneTask, device: torch.device, resume: bool
) -> TrainingContext:
    tc, model = run.train, task.model
    identity = _identity(run, task, task.base)
    checkpoints = list_checkpoints(paths.root) if resume else []
    if resume and not checkpoints:
        raise ScratchLMError(
            f"{paths.root} has no checkpoint to resume from; start it again without --resume"
        )
    resumed_from = checkpoints[-1] if checkpoints else None
    lora = lora_config(model) is not None
    optimizer = build_optimizer(model, tc)
    state = TrainingState(
        extra={**identity, "skipped_steps": 0, "init_from": {"base": str(task.base.run_dir)}}
    )
    if resumed_from is not None:
        state, saved = restore_checkpoint(
            resumed_from, identity, model, task.train_batches, device, load_weights=not lora
        )
        if lora:
            adapters = {k.removeprefix(LORA_PREFIX): v for k, v in saved.items()
                        if k.startswith(LORA_PREFIX)}  # fmt: skip
            load_lora_state_dict(model, adapters, where=f"{resumed_from}/state.safetensors")
            _load_trained_beside_adapters(model, saved, where=f"{resumed_from}/state.safetensors")
        restore_optimizer(resumed_from, optimizer, model)
    dtype = resolve_dtype(device, tc.dtype, run.model.n_embd)
    return TrainingContext(
        run=run,
        paths=paths,
        ranks=current_ranks(),
        data_ranks=current_ranks(),
        tp=1,
        device=device,
        model=model,
        optimizer=optimizer,
        base_lrs=[group["base_lr"] for group in optimizer.param_groups],
        train_batches=task.train_batches,
        val_batches=None,
        state=state,
        accum=tc.accumulation_steps(task.row_tokens or run.model.block_size),
        dtype=dtype,
        autocast=autocast_context(device, dtype),
        loss_fn=task.loss,
        eval_loss_fn=None,
        no_sync=contextlib.nullcontext,  # one process: nothing to hold back
        resumed_from=resumed_from,
        validate=task.validate,
        checkpoint_weights=(lambda: merged_state_dict(model)) if lora else None,
        extra_states=(lambda: _adapter_states(model)) if lora else None,
        row_tokens=task.row_tokens,
        loss_label=task.loss_label,
    )


def _adapter_states(model: nn.Module) -> dict[str, Tensor]:
    states = {LORA_PREFIX + k: v.contiguous() for k, v in lora_state_dict(model).items()}
    return states | {TRAINED_PREFIX + k: p.detach().contiguous()
                     for k, p in _trained_beside_adapters(model).items()}  # fmt: skip


def _trained_beside_adapters(model: nn.Module) -> dict[str, nn.Parameter]:
    """What a LoRA run trains besides the adapters (a classifier's head), by name."""
    adapters = {id(p) for p in lora_parameters(model)}
    return {k: p for k, p in model.named_parameters() if p.requires_grad and id(p) not in adapters}


@torch.no_grad()
def _load_trained_beside_adapters(model: nn.Module, saved: dict[str, Tensor], where: str) -> None:
    for name, p in _trained_beside_adapters(model).items():
        if TRAINED_PREFIX + name not in saved:
            raise ScratchLMError(f"{where} is missing {TRAINED_PREFIX + name}; it cannot resume")
        p.copy_(saved[TRAINED_PREFIX + name])


class TaskMetrics(TrainingHook):
    """The task's own training numbers (DPO's reward margins) in metrics.jsonl at log steps."""

    def __init__(self, task: FinetuneTask, hooks: Any) -> None:
        self.task, self.log = task, hooks.hooks[0]

    def on_step(self, ctx: TrainingContext, report: StepReport) -> None:
        if not is_due(report.step, ctx.config.log_interval, ctx.config.max_steps):
            return
        metrics = self.task.step_metrics()
        if metrics:
            self.log.append({"step": report.step, **metrics})


def _finish(run: FinetuneRun, task: FinetuneTask, root: Path) -> list[str]:
    """The adapter alone (LoRA), then the task's final measurements."""
    lines = []
    model = task.model
    if lora_config(model) is not None:
        gpt = model if isinstance(model, GPT) else getattr(model, "backbone", None)
        if isinstance(gpt, GPT):
            folder = save_lora(gpt, root / ADAPTER_FOLDER, overwrite=True)
            lines.append(f"LoRA adapter saved alone in {folder}")
    model.eval()
    with torch.no_grad():
        lines += task.finish(root)
    return lines


def export_peft(run_dir: Path, out: Path, overwrite: bool = False) -> Path:
    """A LoRA run's adapter in PEFT's format, for the Hugging Face export of its base model
    (`scratchlm export RUN --format peft`)."""
    from scratchlm.finetune.config import read_run
    from scratchlm.finetune.lora import load_lora
    from scratchlm.finetune.lora_peft import export_peft_adapter

    run = read_run(run_dir)
    adapter = Path(run_dir) / ADAPTER_FOLDER
    if run.task == "classify" or not adapter.is_dir():
        raise ScratchLMError(
            f"{run_dir} has no language-model LoRA adapter ({ADAPTER_FOLDER}/ is written by a "
            "finished sft or dpo run with --lora.r > 0); export its merged weights with "
            "--format hf instead"
        )
    base = load_for_inference(run_directory(run.base), dtype="float32")
    load_lora(base.model, adapter, base_name=run.base)
    return export_peft_adapter(base.model, out, run.base, overwrite=overwrite)
