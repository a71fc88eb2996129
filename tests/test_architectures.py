"""Architecture options of the one GPT class: each option does what it says, every combination
works with the KV cache, presets have the published shapes, and bad combinations are refused."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

from scratchlm.config import load_config
from scratchlm.core.errors import ScratchLMError
from scratchlm.model import GPT
from scratchlm.model.config import MODEL_PRESETS, ModelConfig, depth_shape, model_preset
from scratchlm.model.loading import gpt_from_state_dict, open_safetensors
from scratchlm.model.norms import RMSNorm
from scratchlm.model.positional import (
    llama3_inv_freq,
    rope_inv_freq,
    sinusoidal_encoding,
    sinusoidal_table,
)

BASE: dict[str, Any] = dict(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=32)

VARIANTS: dict[str, dict[str, Any]] = {
    "gpt2": {},
    "sinusoidal": dict(pos_encoding="sinusoidal"),
    "llama-gqa": dict(
        pos_encoding="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2, bias=False
    ),
    "mqa-relu2-qknorm-untied-softcap": dict(
        pos_encoding="rope", n_kv_head=1, mlp="relu2", qk_norm=True, tie_embeddings=False,
        logit_softcap=2.0,
    ),
    "sliding-window": dict(pos_encoding="rope", sliding_window=5, n_kv_head=2),
    "rope-llama3-scaling": dict(
        pos_encoding="rope", rope_scaling="llama3", rope_factor=4.0, rope_original_context=16
    ),
}  # fmt: skip


def make(seed: int = 0, **overrides: Any) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(**{**BASE, **overrides})).eval()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_is_causal_and_its_kv_cache_matches_the_full_forward(variant: str) -> None:
    model = make(**VARIANTS[variant])
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 97, (2, 32), generator=g)
    full, loss = model(idx, targets=idx)
    assert full.shape == (2, 32, 97) and loss is not None and torch.isfinite(loss)
    # The future never leaks into the past ...
    changed = idx.clone()
    changed[:, 20:] = (idx[:, 20:] + 1) % 97
    assert torch.allclose(model(changed)[0][:, :20], full[:, :20], atol=1e-6)
    assert not torch.allclose(model(changed)[0][:, 20:], full[:, 20:], atol=1e-3)
    # ... and cached decoding (prefill, chunks into a partly filled cache, single tokens) gives
    # the logits of one full pass.
    cache = model.new_kv_cache(2)
    assert cache.k[0].shape == (2, model.config.kv_heads, 32, model.config.head_dim)
    pieces = [model(idx[:, a:b], kv_cache=cache)[0] for a, b in [(0, 7), (7, 8), (8, 19), (19, 32)]]
    assert torch.allclose(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-5)


def test_grouped_query_attention_equals_multi_head_with_shared_heads() -> None:
    # GQA is MHA whose key/value heads are copies within each group: build that MHA by hand.
    gqa = make(pos_encoding="rope", n_kv_head=2)
    mha = make(seed=1, pos_encoding="rope")
    C, D, K, H = 32, 8, 2, 4
    state = gqa.state_dict()
    for name, tensor in state.items():
        if name.endswith("attn.c_attn.weight") or name.endswith("attn.c_attn.bias"):
            q, k, v = tensor.split([C, K * D, K * D])
            # Query heads 0,1 use kv head 0, heads 2,3 kv head 1 (contiguous groups).
            k = k.unflatten(0, (K, D)).repeat_interleave(H // K, dim=0).flatten(0, 1)
            v = v.unflatten(0, (K, D)).repeat_interleave(H // K, dim=0).flatten(0, 1)
            state[name] = torch.cat([q, k, v])
    mha.load_state_dict(state)
    idx = torch.randint(0, 97, (2, 32))
    assert torch.allclose(gqa(idx)[0], mha(idx)[0], atol=1e-5)
    assert gqa.num_parameters() < mha.num_parameters()


def test_sliding_window_sees_exactly_the_last_w_tokens() -> None:
    W = 5
    model = make(pos_encoding="rope", sliding_window=W, n_layer=1)
    idx = torch.randint(0, 97, (1, 32))
    logits = model(idx)[0]
    t = 20
    outside, inside = idx.clone(), idx.clone()
    outside[0, t - W] = (idx[0, t - W] + 1) % 97  # just out of the window of position t
    inside[0, t - W + 1] = (idx[0, t - W + 1] + 1) % 97  # the oldest token it still sees
    # One layer, so position t reads only the W most recent tokens (deeper stacks widen it).
    assert torch.allclose(model(outside)[0][0, t], logits[0, t], atol=1e-6)
    assert not torch.allclose(model(inside)[0][0, t], logits[0, t], atol=1e-4)


def test_logit_softcap_is_a_smooth_clamp_of_the_raw_logits() -> None:
    capped = make(logit_softcap=2.0)
    raw = make(logit_softcap=0.0)  # same seed, same weights
    with torch.no_grad():
        for model in (capped, raw):
            model.lm_head.weight.mul_(50)  # logits far beyond the cap
    idx = torch.randint(0, 97, (1, 8))
    expected = 2.0 * torch.tanh(raw(idx)[0] / 2.0)
    assert raw(idx)[0].abs().max() > 4
    assert torch.allclose(capped(idx)[0], expected, atol=1e-6)
    assert capped(idx)[0].abs().max() <= 2.0


def test_untied_head_is_its_own_matrix_and_is_counted() -> None:
    tied, untied = make(), make(tie_embeddings=False)
    assert tied.lm_head.weight is tied.transformer["wte"].weight
    assert untied.lm_head.weight is not untied.transformer["wte"].weight
    assert untied.num_parameters() == tied.num_parameters() + 97 * 32
    # Neither head is weight-decayed, and the non-embedding count is the same.
    assert untied.num_parameters(exclude_embeddings=True) == tied.num_parameters(True)
    decay, _ = untied.decay_and_no_decay_params()
    assert all(p is not untied.lm_head.weight for p in decay)


@pytest.mark.parametrize("mlp,hidden", [("gelu", 128), ("relu2", 128), ("swiglu", 128)])
def test_mlp_kinds_and_hidden_width(mlp: str, hidden: int) -> None:
    model = make(mlp=mlp)
    c_fc = model.blocks[0].mlp.c_fc
    assert c_fc.out_features == (2 * hidden if mlp == "swiglu" else hidden)
    x = torch.randn(2, 3, 32)
    h = c_fc(x)
    expected = {
        "gelu": lambda: torch.nn.functional.gelu(h, approximate="tanh"),
        "relu2": lambda: torch.relu(h) ** 2,
        "swiglu": lambda: torch.nn.functional.silu(h[..., :hidden]) * h[..., hidden:],
    }[mlp]()
    mlp_module = model.blocks[0].mlp
    assert torch.allclose(mlp_module(x), mlp_module.c_proj(expected), atol=1e-6)
    assert make(mlp=mlp, mlp_hidden=48).blocks[0].mlp.c_proj.in_features == 48
    # The default SwiGLU width: 2/3 of 4C, rounded up to a multiple of 64 (1536 for C = 576).
    assert ModelConfig(n_embd=576, mlp="swiglu").ffn_hidden == 1536


def test_rmsnorm_matches_its_formula_and_qk_norm_has_its_gains() -> None:
    norm = RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2, 16))
    x = torch.randn(3, 16) * 5
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    assert torch.allclose(norm(x), expected, atol=1e-5)
    names = dict(make(qk_norm=True, norm="rmsnorm").named_parameters())
    assert names["transformer.h.0.attn.q_norm.weight"].shape == (8,)
    assert "transformer.h.0.ln_1.bias" not in names  # RMSNorm has no bias


def test_activation_checkpointing_gives_the_same_loss_and_gradients() -> None:
    idx = torch.randint(0, 97, (2, 32))
    grads = []
    for recompute in (False, True):
        model = make(pos_encoding="rope", activation_checkpointing=recompute).train()
        _, loss = model(idx, targets=idx)
        assert loss is not None
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in model.parameters()]))  # type: ignore[union-attr]
    assert grads[0][0] == pytest.approx(grads[1][0], abs=1e-6)
    for a, b in zip(grads[0][1], grads[1][1], strict=True):
        assert torch.allclose(a, b, atol=1e-6)


# --- positions ---------------------------------------------------------------------------------


def test_sinusoidal_table_is_the_formula_and_what_the_model_adds() -> None:
    positions, pairs, dim = [0, 1, 2, 10, 31], [0, 1, 3, 15], 32
    table = sinusoidal_table(positions, pairs, dim)
    assert len(table) == len(positions) and all(len(row) == len(pairs) for row in table)
    for pos, row in zip(positions, table, strict=True):
        for i, (even, odd) in zip(pairs, row, strict=True):
            angle = pos / 10000 ** (2 * i / dim)
            assert even == pytest.approx(math.sin(angle), abs=1e-12)
            assert odd == pytest.approx(math.cos(angle), abs=1e-12)
    assert table[0][0] == (0.0, 1.0)  # position 0: sin 0, cos 0
    # The model's buffer holds the same numbers in channels 2i and 2i+1.
    model = make(pos_encoding="sinusoidal")
    assert torch.equal(model.pos_table, sinusoidal_encoding(32, 32))
    for p, pos in enumerate(positions):
        for k, i in enumerate(pairs):
            assert model.pos_table[pos, 2 * i].item() == pytest.approx(table[p][k][0], abs=1e-6)
            assert model.pos_table[pos, 2 * i + 1].item() == pytest.approx(table[p][k][1], abs=1e-6)
    # And the model really adds it: same token at two positions, different embeddings.
    x = model.transformer["wte"](torch.tensor([5])) + model.pos_table[:2]
    assert not torch.allclose(x[0], x[1])
    with pytest.raises(ValueError, match="pair indices"):
        sinusoidal_table([0], [16], 32)


def test_llama3_rope_scaling_keeps_fast_and_slows_slow_frequencies() -> None:
    inv_freq = rope_inv_freq(64, 500000.0)
    scaled = llama3_inv_freq(inv_freq, 32.0, 1.0, 4.0, 8192)
    wavelength = 2 * math.pi / inv_freq
    fast, slow = wavelength < 8192 / 4, wavelength > 8192 / 1
    assert fast.any() and slow.any() and (~fast & ~slow).any()
    assert torch.equal(scaled[fast], inv_freq[fast])
    assert torch.allclose(scaled[slow], inv_freq[slow] / 32)
    middle = ~fast & ~slow
    assert torch.all(scaled[middle] < inv_freq[middle])
    assert torch.all(scaled[middle] > inv_freq[middle] / 32)
    rope_utils = pytest.importorskip("transformers.modeling_rope_utils")
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.LlamaConfig(
        hidden_size=2048, num_attention_heads=32, max_position_embeddings=131072,
        rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=8192),
    )  # fmt: skip
    hf_inv_freq, _ = rope_utils.ROPE_INIT_FUNCTIONS["llama3"](hf_config, "cpu")
    assert torch.allclose(scaled, hf_inv_freq.float(), rtol=1e-6, atol=0)


# --- presets and config ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,count",
    [("gpt2-355m", 354_823_168), ("gpt2-774m", 774_030_080), ("gpt2-1558m", 1_557_611_200)],
)
def test_gpt2_presets_have_the_published_parameter_counts(name: str, count: int) -> None:
    with torch.device("meta"):
        assert GPT(model_preset(name)).num_parameters() == count


def test_every_preset_builds_and_depth_derives_the_rest() -> None:
    for name in MODEL_PRESETS:
        model_preset(name).validate()
    shape = depth_shape(12)
    assert (shape.n_embd, shape.n_head, shape.learning_rate) == (768, 6, pytest.approx(6e-4))
    config = model_preset("depth-4")
    assert (config.n_layer, config.n_embd, config.n_head, config.head_dim) == (4, 256, 2, 128)
    assert depth_shape(4).learning_rate > depth_shape(20).learning_rate
    with pytest.raises(ScratchLMError, match=r"gpt2-124m.*smollm2-135m.*depth-N"):
        model_preset("gpt5")
    with pytest.raises(ScratchLMError, match="at least 1"):
        model_preset("depth-0")


def test_preset_in_a_recipe_and_on_the_command_line(tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('[model]\nn_layer = 3\npreset = "llama-small"\n')
    config = load_config(recipe)  # the preset first, whatever the order in the table
    assert (config.model.n_layer, config.model.n_kv_head, config.model.mlp) == (3, 2, "swiglu")
    config = load_config(None, ["--model.preset", "depth-6", "--model.block_size", "64"])
    assert (config.model.n_layer, config.model.n_embd, config.model.block_size) == (6, 384, 64)
    # The saved config.toml loads back to the same model.
    saved = tmp_path / "saved.toml"
    saved.write_text(config.to_toml())
    assert load_config(saved).model == config.model
    with pytest.raises(ScratchLMError, match=r"unknown model preset 'llama-huge'.*choose one of"):
        load_config(None, ["--model.preset", "llama-huge"])


def test_depth_preset_sets_the_learning_rate_unless_given(tmp_path: Path) -> None:
    config = load_config(None, ["--model.preset", "depth-8"])
    lr = depth_shape(8).learning_rate
    assert config.train.learning_rate == pytest.approx(lr)
    assert config.train.min_lr == pytest.approx(lr / 10)
    config = load_config(None, ["--model.preset", "depth-8", "--train.learning_rate", "3e-3"])
    assert (config.train.learning_rate, config.train.min_lr) == (3e-3, 1e-4)
    recipe = tmp_path / "r.toml"
    recipe.write_text('[model]\npreset = "depth-8"\n[train]\nlearning_rate = 5e-4\n')
    assert load_config(recipe).train.learning_rate == 5e-4
    recipe.write_text('[model]\npreset = "depth-8"\n[train]\nmin_lr = 1e-5\n')
    config = load_config(recipe)
    assert (config.train.learning_rate, config.train.min_lr) == (pytest.approx(lr), 1e-5)
    # A saved run config names its rate: loading it back changes nothing.
    saved = tmp_path / "saved.toml"
    config.train.learning_rate = 7e-4
    saved.write_text(config.to_toml())
    assert load_config(saved).train.learning_rate == 7e-4
    # Other presets keep the default.
    assert load_config(None, ["--model.preset", "llama-tiny"]).train.learning_rate == 1e-3


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(n_kv_head=3), r"n_head \(4\) must be a multiple of model.n_kv_head \(3\)"),
        (dict(rope_scaling="llama3"), "needs model.pos_encoding = 'rope', not 'learned'"),
        (dict(pos_encoding="rope", rope_scaling="llama3", rope_high_freq_factor=0.5), "llama3"),
        (dict(sliding_window=-1), "sliding_window must be >= 0"),
        (dict(logit_softcap=-1.0), "logit_softcap"),
        (dict(n_embd=33, n_head=1, pos_encoding="sinusoidal"), "even model.n_embd"),
    ],
)
def test_invalid_combinations_are_one_clear_error(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ScratchLMError, match=message):
        ModelConfig(**{**BASE, **overrides}).validate()


# --- loading on the meta device ----------------------------------------------------------------


@pytest.mark.parametrize("variant", ["gpt2", "llama-gqa", "mqa-relu2-qknorm-untied-softcap"])
def test_meta_device_loading_gives_the_same_model(variant: str, tmp_path: Path) -> None:
    model = make(**VARIANTS[variant])
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_model(model, str(path))  # a tied head is stored once
    loaded = gpt_from_state_dict(model.config, open_safetensors(path), where=str(path))
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    assert (loaded.lm_head.weight is loaded.transformer["wte"].weight) == (
        model.config.tie_embeddings
    )
    idx = torch.randint(0, 97, (2, 32))
    assert torch.equal(loaded.eval()(idx)[0], model(idx)[0])


def _anonymous_memory_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssAnon line")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_loading_memory_maps_the_weights_instead_of_copying_them(tmp_path: Path) -> None:
    config = ModelConfig(vocab_size=8192, block_size=64, n_layer=4, n_head=4, n_embd=512)
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_model(GPT(config), str(path))  # ~70 MB of float32
    size_mb = path.stat().st_size / 2**20
    before = _anonymous_memory_mb()
    model = gpt_from_state_dict(config, open_safetensors(path))
    model(torch.zeros(1, 8, dtype=torch.long))  # touches every weight
    # File-backed pages, shared with the page cache: the process's own memory barely grows.
    assert _anonymous_memory_mb() - before < 0.25 * size_mb


def test_a_checkpoint_of_another_shape_names_the_tensor_and_both_shapes(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_model(make(), str(path))
    with pytest.raises(
        ScratchLMError, match=r"c_attn.bias has shape \(96,\) but the model expects \(64,\)"
    ):
        gpt_from_state_dict(ModelConfig(**{**BASE, "n_kv_head": 2}), open_safetensors(path))
    with pytest.raises(ScratchLMError, match=r"transformer.h.2.* is missing.*n_layer"):
        gpt_from_state_dict(ModelConfig(**{**BASE, "n_layer": 3}), open_safetensors(path))
    with pytest.raises(ScratchLMError, match=r"wpe.weight has no place.*pos_encoding"):
        gpt_from_state_dict(ModelConfig(**{**BASE, "pos_encoding": "rope"}), open_safetensors(path))
