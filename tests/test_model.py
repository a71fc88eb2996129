"""The GPT model: shapes, causality, parameter count, init, training signal, KV cache."""

from __future__ import annotations

import math

import pytest
import torch

from scratchlm.core.errors import ScratchLMError
from scratchlm.model import GPT, KVCache
from scratchlm.model.config import ModelConfig, model_preset

POS_ENCODINGS = ["learned", "rope"]


def small_config(pos_encoding: str = "learned", **overrides: object) -> ModelConfig:
    base: dict[str, object] = dict(
        vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=32, pos_encoding=pos_encoding
    )
    return ModelConfig(**{**base, **overrides})  # type: ignore[arg-type]


def make_model(pos_encoding: str = "learned", seed: int = 0, **overrides: object) -> GPT:
    torch.manual_seed(seed)
    return GPT(small_config(pos_encoding, **overrides)).eval()


@pytest.mark.parametrize("pos_encoding", POS_ENCODINGS)
def test_forward_shapes_and_loss(pos_encoding: str) -> None:
    model = make_model(pos_encoding)
    idx = torch.randint(0, 97, (3, 20))
    logits, loss = model(idx)
    assert logits.shape == (3, 20, 97)
    assert loss is None
    logits, loss = model(idx, targets=torch.randint(0, 97, (3, 20)))
    assert logits.shape == (3, 20, 97)
    assert loss is not None and loss.ndim == 0 and torch.isfinite(loss)


def test_loss_ignores_minus_one_targets() -> None:
    model = make_model()
    idx = torch.randint(0, 97, (2, 10))
    targets = torch.randint(0, 97, (2, 10))
    logits, full = model(idx, targets)
    masked = targets.clone()
    masked[:, 5:] = -1
    _, partial = model(idx, masked)
    expected = torch.nn.functional.cross_entropy(
        logits[:, :5].reshape(-1, 97), targets[:, :5].reshape(-1)
    )
    assert partial is not None and full is not None
    assert torch.allclose(partial, expected, atol=1e-6)


@pytest.mark.parametrize("pos_encoding", POS_ENCODINGS)
def test_causality(pos_encoding: str) -> None:
    model = make_model(pos_encoding)
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 97, (2, 32), generator=g)
    logits, _ = model(idx)
    for t in (0, 7, 30):
        changed = idx.clone()
        changed[:, t + 1 :] = torch.randint(0, 97, (2, 31 - t), generator=g)
        assert not torch.equal(changed, idx)
        logits_changed, _ = model(changed)
        assert torch.allclose(logits[:, : t + 1], logits_changed[:, : t + 1], rtol=0, atol=1e-6)
        # ... and the future does matter, so the check above is not vacuous.
        assert not torch.allclose(logits[:, t + 1 :], logits_changed[:, t + 1 :], atol=1e-3)


def test_gpt2_124m_parameter_count_matches_huggingface() -> None:
    with torch.device("meta"):  # shapes only: no memory, no init time
        ours = GPT(model_preset("gpt2-124m"))
    assert ours.num_parameters() == 124_439_808

    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config())  # random init, no download
    assert sum(p.numel() for p in hf.parameters()) == ours.num_parameters()
    # Same GPT-2 layout, same names for the transformer's tensors (HF's Conv1D is transposed).
    hf_shapes = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    for name, tensor in ours.state_dict().items():
        assert name in hf_shapes
        assert sorted(hf_shapes[name]) == sorted(tensor.shape), name


def test_num_parameters_counts_tied_head_once_and_excludes_embeddings() -> None:
    config = small_config()
    model = GPT(config)
    C, V, L = config.n_embd, config.vocab_size, config.block_size
    per_block = (
        2 * 2 * C  # two LayerNorms
        + C * 3 * C
        + 3 * C  # c_attn
        + C * C
        + C  # attn c_proj
        + C * 4 * C
        + 4 * C  # c_fc
        + 4 * C * C
        + C  # mlp c_proj
    )
    expected = V * C + L * C + config.n_layer * per_block + 2 * C
    assert model.num_parameters() == expected
    assert model.num_parameters(exclude_embeddings=True) == expected - V * C - L * C
    assert model.lm_head.weight is model.transformer["wte"].weight

    rope = GPT(small_config("rope"))
    assert rope.num_parameters() == expected - L * C  # no position table
    assert "transformer.wpe.weight" not in rope.state_dict()
    # The RoPE tables are derived from the config, not saved.
    assert not any("rope" in name for name in rope.state_dict())


def test_no_bias_config() -> None:
    model = make_model(bias=False)
    assert all(not name.endswith(".bias") for name, _ in model.named_parameters())
    logits, _ = model(torch.randint(0, 97, (1, 5)))
    assert logits.shape == (1, 5, 97)


def test_invalid_config_is_a_user_error() -> None:
    with pytest.raises(ScratchLMError):
        GPT(small_config(n_head=5))


def test_init_statistics() -> None:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=512, block_size=64, n_layer=4, n_head=4, n_embd=128)
    model = GPT(config)
    block = model.blocks[0]
    assert abs(model.lm_head.weight.std().item() - 0.02) < 0.002
    assert abs(block.attn.c_attn.weight.std().item() - 0.02) < 0.002
    scaled = 0.02 / math.sqrt(2 * config.n_layer)
    assert abs(block.attn.c_proj.weight.std().item() - scaled) < 0.1 * scaled
    assert abs(block.mlp.c_proj.weight.std().item() - scaled) < 0.1 * scaled
    assert torch.all(block.attn.c_attn.bias == 0)
    assert torch.all(block.ln_1.weight == 1)


def test_initial_loss_is_about_log_vocab() -> None:
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=512, block_size=64, n_layer=2, n_head=4, n_embd=64))
    idx = torch.randint(0, 512, (8, 64))
    _, loss = model(idx, targets=torch.randint(0, 512, (8, 64)))
    assert loss is not None
    assert abs(loss.item() - math.log(512)) < 0.3


def test_overfits_a_single_batch() -> None:
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=128, block_size=32, n_layer=2, n_head=4, n_embd=64))
    data = torch.randint(0, 128, (4, 33))
    idx, targets = data[:, :-1], data[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    model.train()
    for _ in range(100):  # reaches ~0.002; 0.1 leaves a wide margin
        _, loss = model(idx, targets)
        assert loss is not None
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1


def test_dropout_is_off_in_eval_mode() -> None:
    model = make_model(dropout=0.5)
    idx = torch.randint(0, 97, (2, 16))
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0])
    model.train()
    assert not torch.equal(model(idx)[0], model(idx)[0])


def test_decay_groups_are_disjoint_and_complete() -> None:
    for pos_encoding in POS_ENCODINGS:
        model = make_model(pos_encoding)
        decay, no_decay = model.decay_and_no_decay_params()
        ids_decay, ids_no_decay = [id(p) for p in decay], [id(p) for p in no_decay]
        assert len(set(ids_decay)) == len(ids_decay)
        assert len(set(ids_no_decay)) == len(ids_no_decay)
        assert not set(ids_decay) & set(ids_no_decay)
        assert set(ids_decay) | set(ids_no_decay) == {id(p) for p in model.parameters()}
        assert sum(p.numel() for p in decay + no_decay) == model.num_parameters()
        assert all(p.dim() >= 2 for p in decay)
        # Embeddings (and the head tied to wte) are not decayed; every Linear matrix is.
        assert id(model.lm_head.weight) in ids_no_decay
        assert len(decay) == 4 * model.config.n_layer


def test_too_long_input_raises() -> None:
    model = make_model()
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 33, dtype=torch.long))
    cache = model.new_kv_cache(1)
    model(torch.zeros(1, 30, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 3, dtype=torch.long), kv_cache=cache)


def test_kv_cache_shapes_and_reset() -> None:
    model = make_model()
    cache = model.new_kv_cache(2, max_len=16)
    assert isinstance(cache, KVCache)
    assert len(cache.k) == len(cache.v) == 2
    assert cache.k[0].shape == (2, 4, 16, 8)
    assert cache.k[0].dtype == torch.float32
    model(torch.zeros(2, 5, dtype=torch.long), kv_cache=cache)
    assert cache.pos == 5
    model(torch.zeros(2, 1, dtype=torch.long), kv_cache=cache)
    assert cache.pos == 6
    with pytest.raises(ValueError, match="KV cache"):
        model(torch.zeros(2, 11, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="batch"):
        model(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)
    cache.reset()
    assert cache.pos == 0
    with pytest.raises(ValueError):
        model.new_kv_cache(1, max_len=33)


@pytest.mark.parametrize("pos_encoding", POS_ENCODINGS)
def test_kv_cache_prefill_in_pieces_matches_full_forward(pos_encoding: str) -> None:
    model = make_model(pos_encoding)
    idx = torch.randint(0, 97, (2, 32))
    full, _ = model(idx)  # (2, 32, V)
    cache = model.new_kv_cache(2)
    pieces = []
    # A prefill into the empty cache, multi-token chunks into a partly filled one, single tokens.
    for start, end in [(0, 7), (7, 8), (8, 19), (19, 20), (20, 21), (21, 32)]:
        logits, _ = model(idx[:, start:end], kv_cache=cache)
        assert cache.pos == end
        pieces.append(logits)
    assert torch.allclose(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-5)


def test_matches_huggingface_gpt2_numerically() -> None:
    # Same architecture as GPT-2: with HF's weights copied in, the logits agree.
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.GPT2Config(
        vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    ours = make_model()
    hf_state = hf.state_dict()
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    with torch.no_grad():
        for name, tensor in ours.state_dict().items():
            source = hf_state[name]
            tensor.copy_(source.t() if name.endswith(conv1d) else source)
    idx = torch.randint(0, 97, (2, 32))
    with torch.no_grad():
        expected = hf(idx).logits
        logits, _ = ours(idx)
    assert torch.allclose(logits, expected, rtol=0, atol=1e-4)
