"""GGUF export of every architecture (runs/gguf_architectures.py), without llama.cpp: each option
combination a tiny random run can have is exported, read back by our reader, and must give the
same weights and logits; quantised exports store the types llama.cpp's converter would, with
blocks equal to the gguf package's own quantisation. tests/test_llama_cpp.py (slow) loads the
same files in llama.cpp itself."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from random_models import random_gpt
from scratchlm.core.errors import ScratchLMError
from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig
from scratchlm.model.hf_format import gpt_from_hf_state_dict
from scratchlm.runs.gguf_file import GGUF_DTYPES, read_gguf
from scratchlm.runs.gguf_runs import export_gguf_run, import_gguf_run
from scratchlm.runs.imported import save_imported_run
from scratchlm.runs.loading import load_trained_model
from scratchlm.tokenizer.char import train_char_tokenizer

gguf = pytest.importorskip("gguf")

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind\n" * 3
ROPE: dict[str, Any] = dict(pos_encoding="rope")
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    # name: (GGUF architecture, model options)
    "llama-gqa-tied": ("llama", dict(ROPE, norm="rmsnorm", mlp="swiglu", bias=False, n_kv_head=2)),
    "llama-bias-untied": ("llama", dict(ROPE, norm="rmsnorm", mlp="swiglu", bias=True,
                                        tie_embeddings=False, rope_base=500000.0)),
    "llama-llama3-rope": ("llama", dict(ROPE, norm="rmsnorm", mlp="swiglu", bias=False,
                                        rope_scaling="llama3", rope_factor=4.0,
                                        rope_original_context=8, rope_base=50000.0)),
    "qwen3-gqa-untied": ("qwen3", dict(ROPE, norm="rmsnorm", mlp="swiglu", qk_norm=True,
                                       bias=False, n_kv_head=2, tie_embeddings=False)),
    "qwen3-tied": ("qwen3", dict(ROPE, norm="rmsnorm", mlp="swiglu", qk_norm=True, bias=False)),
    "arcee-tied": ("arcee", dict(ROPE, norm="rmsnorm", mlp="relu2", bias=False)),
    "arcee-gqa-untied": ("arcee", dict(ROPE, norm="rmsnorm", mlp="relu2", bias=False,
                                       n_kv_head=2, tie_embeddings=False)),
    "arcee-mqa-llama3-rope": ("arcee", dict(ROPE, norm="rmsnorm", mlp="relu2", bias=False,
                                            n_kv_head=1, rope_scaling="llama3",
                                            rope_original_context=8)),
    "gptneox-nobias-tied": ("gptneox", dict(ROPE, norm="layernorm", mlp="gelu", bias=False)),
    "gptneox-bias-untied": ("gptneox", dict(ROPE, norm="layernorm", mlp="gelu", bias=True,
                                            tie_embeddings=False, rope_base=500.0)),
    "stablelm-tied": ("stablelm", dict(ROPE, norm="layernorm", mlp="swiglu", bias=False)),
    "stablelm-gqa-untied": ("stablelm", dict(ROPE, norm="layernorm", mlp="swiglu", bias=False,
                                             n_kv_head=2, tie_embeddings=False)),
    "gpt2-tied": ("gpt2", dict(pos_encoding="learned", norm="layernorm", mlp="gelu", bias=True)),
    "gpt2-untied": ("gpt2", dict(pos_encoding="learned", norm="layernorm", mlp="gelu",
                                 bias=True, tie_embeddings=False)),
    "gpt2-nobias": ("gpt2", dict(pos_encoding="learned", norm="layernorm", mlp="gelu",
                                 bias=False)),
}  # fmt: skip


def tiny_run(tmp_path: Path, options: dict[str, Any], seed: int = 0) -> tuple[Path, GPT]:
    """A run directory holding a tiny random model of `options` with a character tokenizer."""
    tokenizer = train_char_tokenizer(TEXT)
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=4, n_embd=64, **options
    )
    model = random_gpt(config, seed)
    run_dir = tmp_path / "run"
    save_imported_run(run_dir, model, tokenizer, source="test")
    return run_dir, model


def logits(model: GPT, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0]


@pytest.mark.parametrize("shape", SHAPES)
def test_f32_export_reads_back_exactly(tmp_path: Path, shape: str) -> None:
    arch, options = SHAPES[shape]
    run_dir, model = tiny_run(tmp_path, options)
    path = tmp_path / "model.gguf"
    export_gguf_run(run_dir, path)

    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items()}
    assert fields["general.architecture"] == arch
    # Llama 3's RoPE scaling travels as llama.cpp's per-pair frequency divisors.
    factors = [np.array(t.data) for t in reader.tensors if t.name == "rope_freqs.weight"]
    assert len(factors) == (model.config.rope_scaling == "llama3")
    assert all(f.max() > 1.0 for f in factors)
    assert fields["tokenizer.ggml.pre"] == "gpt-2"  # a character tokenizer splits anywhere

    back = read_gguf(path)
    again = gpt_from_hf_state_dict(back.config, back.state_dict).eval()
    # The file states the MLP's width, where our config may say 0 (the default for its kind).
    # GPT-2 has biases always: a model without them comes back with zero ones.
    bias = model.config.bias or arch == "gpt2"
    assert again.config == replace(model.config, mlp_hidden=model.config.ffn_hidden, bias=bias)
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
    ids = back.tokenizer.encode("whether 'tis nobler")
    assert ids == load_trained_model(run_dir)[1].encode("whether 'tis nobler")
    assert torch.equal(logits(again, ids), logits(model, ids))


def test_import_makes_a_run_of_any_architecture(tmp_path: Path) -> None:
    _, options = SHAPES["gptneox-nobias-tied"]
    run_dir, model = tiny_run(tmp_path, options)
    export_gguf_run(run_dir, tmp_path / "neox.gguf")
    import_gguf_run(tmp_path / "neox.gguf", tmp_path / "imported")
    _, tokenizer, imported = load_trained_model(tmp_path / "imported")
    ids = tokenizer.encode("not to be")
    assert torch.equal(logits(imported, ids), logits(model, ids))


@pytest.mark.parametrize("dtype", [d for d in GGUF_DTYPES if d.startswith("q")])
@pytest.mark.parametrize(
    "shape", ["llama-gqa-tied", "gptneox-bias-untied", "stablelm-tied", "gpt2-tied"]
)
def test_quantised_export(tmp_path: Path, shape: str, dtype: str) -> None:
    """Matrices in the chosen blocks (the head in Q8_0 when the rest is 4-bit), vectors and
    GPT-2's position table in f32; each block as gguf.quants makes it; logits near f32's."""
    arch, options = SHAPES[shape]
    run_dir, model = tiny_run(tmp_path, options)
    path = tmp_path / f"model-{dtype}.gguf"
    export_gguf_run(run_dir, path, dtype=dtype)

    kinds = gguf.GGMLQuantizationType
    chosen = kinds[dtype.upper()]
    tied = model.config.tie_embeddings
    # llama.cpp's NeoX and StableLM need output.weight: a tied model's is a copy.
    head = "token_embd.weight" if tied and arch not in ("gptneox", "stablelm") else "output.weight"
    reader = gguf.GGUFReader(path)
    f32 = read_gguf_f32(tmp_path, run_dir)
    for tensor in reader.tensors:
        want = chosen
        if tensor.name == head and dtype != "q8_0":
            want = kinds.Q8_0
        if len(tensor.shape) == 1 or tensor.name == "position_embd.weight":
            want = kinds.F32
        assert tensor.tensor_type == want, tensor.name
        if want not in (kinds.F32, kinds.F16):
            expected = gguf.quants.quantize(f32[tensor.name], want)
            np.testing.assert_array_equal(np.asarray(tensor.data), expected, err_msg=tensor.name)
    assert reader.fields["general.file_type"].contents() == int(
        gguf.LlamaFileType[f"MOSTLY_{dtype.upper()}"]
    )

    back = read_gguf(path)
    quantised = gpt_from_hf_state_dict(back.config, back.state_dict).eval()
    ids = back.tokenizer.encode("whether 'tis nobler in the mind")
    error = (logits(quantised, ids) - logits(model, ids)).abs().max().item()
    scale = logits(model, ids).abs().max().item()
    assert error < (0.02 if dtype == "q8_0" else 0.5) * scale, (error, scale)  # a sanity bound


def read_gguf_f32(tmp_path: Path, run_dir: Path) -> dict[str, np.ndarray]:
    """Every tensor of the run's f32 export, as llama.cpp's layout stores it."""
    path = tmp_path / "reference-f32.gguf"
    export_gguf_run(run_dir, path)
    return {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}


def test_a_model_no_architecture_carries_is_one_line(tmp_path: Path) -> None:
    run_dir, _ = tiny_run(tmp_path, dict(ROPE, norm="rmsnorm", mlp="swiglu", logit_softcap=30.0))
    with pytest.raises(ScratchLMError, match=r"no Hugging Face equivalent: .*logit_softcap"):
        export_gguf_run(run_dir, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_unknown_dtype_is_refused(tmp_path: Path) -> None:
    run_dir, _ = tiny_run(tmp_path, SHAPES["llama-gqa-tied"][1])
    with pytest.raises(ScratchLMError, match="GGUF export dtype must be one of f32, f16, q8_0"):
        export_gguf_run(run_dir, tmp_path / "x.gguf", dtype="q2_k")
