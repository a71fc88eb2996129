"""Weights into a GPT without two copies in memory: built on the meta device, filled by mmap.

`GPT(config)` allocates and randomly initialises every parameter, and loading a checkpoint then
copies the saved values over them: for a moment the model exists twice, and the random init is
wasted work. Here the model is built on the meta device (shapes only, no memory), and each
parameter is replaced by the checkpoint's tensor itself, which safetensors hands out as a view
of the memory-mapped file: the operating system pages the weights in as they are used, and
they are shared with its file cache rather than copied into the process.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors
import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from scratchlm.core.errors import ScratchLMError
from scratchlm.model.config import ModelConfig
from scratchlm.model.gpt import GPT

TIED = ("transformer.wte.weight", "lm_head.weight")


def open_safetensors(path: Path | str) -> dict[str, Tensor]:
    """Every tensor of a .safetensors file, as views of the memory-mapped file (no copy)."""
    path = Path(path)
    if not path.is_file():
        raise ScratchLMError(f"missing file: {path}")
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as e:  # safetensors raises several types for a damaged header
        raise ScratchLMError(
            f"{path} is truncated or corrupted ({type(e).__name__}: {e})"
        ) from None


def gpt_from_state_dict(
    config: ModelConfig,
    state: Mapping[str, Tensor],
    where: str = "checkpoint",
    device: torch.device | str = "cpu",
) -> GPT:
    """A GPT of `config` whose parameters are the tensors of `state` (scratchlm names), not
    copies of them: no random init, no second copy. Shapes are checked first, so a config that
    does not fit the weights is one error naming the tensor and both shapes.

    A tied head may be stored under either of its two names (safetensors keeps one).
    """
    with torch.device("meta"), _SkipInit():
        model = GPT(config)
    expected = model.state_dict()  # names -> meta tensors, both names of a tied matrix
    state = dict(state)
    if config.tie_embeddings:
        for name, other in (TIED, TIED[::-1]):
            if name not in state and other in state:
                state[name] = state[other]
    for name, tensor in state.items():
        if name not in expected:
            raise ScratchLMError(
                f"{where}: tensor {name} has no place in this model; the config does not match "
                f"the weights (is model.{_hint(name)} right?)"
            )
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ScratchLMError(
                f"{where}: tensor {name} has shape {tuple(tensor.shape)} but the model expects "
                f"{tuple(expected[name].shape)}; the config does not match the weights"
            )
    missing = [name for name in expected if name not in state]
    if missing:
        raise ScratchLMError(
            f"{where}: tensor {missing[0]} is missing ({len(missing)} in all); the config does "
            f"not match the weights (is model.{_hint(missing[0])} right?)"
        )
    model.load_state_dict(state, assign=True)
    model.tie_weights()  # assignment gave the two names separate Parameters
    model.init_buffers(device)  # the position tables are still on the meta device
    model.to(device)
    return model


class _SkipInit(TorchFunctionMode):
    """Turns the torch.nn.init calls of module constructors into no-ops. On the meta device
    they are wasted work, and they run through torch's Python reference kernels, whose first
    use imports torch._dynamo: seconds of start-up for every `scratchlm generate`."""

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def _hint(name: str) -> str:
    """The config key most likely responsible for a tensor that is missing or extra."""
    if name.endswith(".bias"):
        return "bias"
    if "wpe" in name:
        return "pos_encoding"
    if "q_norm" in name or "k_norm" in name:
        return "qk_norm"
    if name == "lm_head.weight":
        return "tie_embeddings"
    if ".h." in name:
        return "n_layer"
    return "norm"
