"""A trained run's validation loss and perplexity, on its own held-out token shards."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scratchlm.core.errors import ScratchLMError


@dataclass(frozen=True)
class EvalResult:
    val_loss: float  # mean cross-entropy per token, in nats
    perplexity: float  # exp(val_loss)
    batches: int  # validation batches averaged


def evaluate_run(
    run_dir: Path,
    checkpoint: Path | None = None,
    batches: int | None = None,
    device: str = "cpu",
) -> EvalResult:
    """Average the loss of the run's model (its latest checkpoint, or `checkpoint`) over
    `batches` validation batches (default: the run's train.eval_batches), batch size and
    context as the run trained them, always the same batches (seed 0)."""
    if batches is not None and batches < 1:
        raise ScratchLMError(f"--batches must be at least 1, got {batches}")
    from scratchlm.config import load_run_config
    from scratchlm.core.devices import resolve_device
    from scratchlm.data.loader import TokenBatches
    from scratchlm.runs.layout import RunPaths
    from scratchlm.runs.loading import load_trained_model
    from scratchlm.train.validation import evaluate_loss, perplexity

    torch_device = resolve_device(device)
    config = load_run_config(run_dir)
    _, _, model = load_trained_model(run_dir, checkpoint, torch_device)
    token_batches = TokenBatches(
        RunPaths(config.run_dir).shards("val"),
        config.model.block_size,
        config.train.batch_size,
        seed=0,
        device=str(torch_device),
    )
    n = batches if batches is not None else config.train.eval_batches
    loss = evaluate_loss(model, token_batches.eval_batches(n))
    return EvalResult(val_loss=loss, perplexity=perplexity(loss), batches=n)
