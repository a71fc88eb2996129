"""GGUF exports run in llama.cpp itself (llama-cpp-python, built from source by `make llama-cpp`,
which `make test-slow` runs first; slow tests).

- Every architecture's option combinations (tests/test_gguf_architectures.py's tiny random
  models): llama.cpp tokenizes as we do and computes our logits.
- A tiny run of each recipe people start from (configs/demo.toml, shakespeare-char.toml and
  chat.toml: their tokenizer and model options on small settings, trained a few dozen steps):
  the same tokens for a set of awkward prompts, the same greedy continuation as ours in float32
  (f32 GGUF), and a Q8_0 export whose greedy tokens start the same and whose log-likelihood of
  a held-out text is within 1% of the f32 file's.

llama.cpp keeps its KV cache in f16 by default; these tests ask for f32 (type_k/type_v), so
that Llama, Qwen3 and Arcee agree with us to ~1e-6. GPT-2 and GPT-NeoX compute GELU through a
table of f16 values on the CPU (ggml's GGML_GELU_FP16), which moves logits by up to ~1e-3: their
bound is wider, and their greedy text still has to match.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from scratchlm.config import load_config
from scratchlm.finetune.conversations import CHATML_TEMPLATE, CHATML_TOKEN_ROLES
from scratchlm.inference.generate import generate_tokens
from scratchlm.inference.language_model import load_for_inference
from scratchlm.model import GPT
from scratchlm.runs.gguf_architectures import gguf_architecture
from scratchlm.runs.gguf_file import GGUF_DTYPES, read_gguf
from scratchlm.runs.gguf_runs import export_gguf_run
from scratchlm.runs.layout import RunPaths
from scratchlm.runs.loading import load_trained_model
from scratchlm.runs.preparation import prepare_run
from scratchlm.tokenizer.bpe import BPETokenizer
from scratchlm.train.loop import train_model
from test_gguf_architectures import SHAPES, tiny_run

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
GGML_F32 = 0  # ggml_type GGML_TYPE_F32, for the KV cache
# Logit agreement in f32: exact-to-rounding, or through ggml's f16 GELU table.
CLOSE, GELU_TABLE = 1e-4, 5e-3
PROMPTS = [
    "ROMEO:\n",
    "To be, or not to be",
    "  leading spaces,\ttabs\n\n\nand blank lines  ",
    "numbers 1234567 and 3.14159, 42nd",
    "unicode: café, naïve, Œuvre, 日本語, emoji 🤖👍🏽",
    "it's we'll they've I'M YOU'RE",
    "<|endoftext|> is plain text here, <|im_start|> too",
    "def f(x):\n    return x ** 2  # squared\n",
]
HELD_OUT = (
    "Now is the winter of our discontent made glorious summer by this sun of York; and all "
    "the clouds that lour'd upon our house in the deep bosom of the ocean buried."
)


def load_llama(path: Path, n_ctx: int) -> Any:
    try:
        import llama_cpp
    except ImportError:  # a failure, not a skip: `make test-slow` installs it first
        pytest.fail("llama-cpp-python is not installed; `make llama-cpp` builds and installs it")
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        logits_all=True,
        verbose=False,
        n_threads=2,
        seed=0,
        type_k=GGML_F32,
        type_v=GGML_F32,
    )


def llama_tokens(llm: Any, text: str) -> list[int]:
    return list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))


def llama_logits(llm: Any, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def llama_greedy(llm: Any, ids: list[int], steps: int) -> list[int]:
    llm.reset()
    llm.eval(ids)
    out: list[int] = []
    for _ in range(steps):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([out[-1]])
    return out


def our_logits(model: GPT, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0][0].numpy()  # (T, V)


def bound(arch: str) -> float:
    return GELU_TABLE if arch in ("gpt2", "gptneox") else CLOSE


# ------------------------------------------------------------------ every option combination


@pytest.mark.parametrize("shape", SHAPES)
def test_every_architecture_computes_our_logits(tmp_path: Path, shape: str) -> None:
    arch, options = SHAPES[shape]
    run_dir, model = tiny_run(tmp_path, options)
    export_gguf_run(run_dir, tmp_path / "model.gguf")
    tokenizer = load_trained_model(run_dir)[1]
    llm = load_llama(tmp_path / "model.gguf", model.config.block_size)
    text = "whether 'tis nobler in the mind to suffer"  # 'f' is not in the vocabulary: bytes
    assert llama_tokens(llm, text) == tokenizer.encode(text)
    ids = tokenizer.encode(text)[: model.config.block_size]
    difference = np.abs(llama_logits(llm, ids) - our_logits(model, ids)).max()
    print(f"{shape}: max |logit difference| {difference:.2e}")
    assert difference < bound(arch)


# ------------------------------------------------------------------ the recipes


@dataclass
class RecipeRun:
    name: str
    model: GPT
    tokenizer: BPETokenizer
    gguf: dict[str, Path]  # dtype -> the run's export in it
    arch: str
    run_dir: Path


def train_recipe(base: Path, recipe: str) -> RecipeRun:
    """The recipe's tokenizer and model options on small settings, trained 40 steps on
    Python's docs (shipped with Python: nothing to download), exported in every GGUF dtype."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCRATCHLM_CACHE", str(base / "cache"))
        config = load_config(REPO / "configs" / f"{recipe}.toml")
        config.out_dir, config.name = str(base / "runs"), recipe
        config.data.sources = ["pydocs"]
        if config.tokenizer.kind != "char":
            config.tokenizer.vocab_size = 400
        config.model.n_layer, config.model.n_embd, config.model.block_size = 2, 64, 64
        train = config.train
        train.max_steps, train.batch_size, train.warmup_steps = 40, 8, 4
        train.eval_interval = train.log_interval = train.checkpoint_interval = 40
        train.eval_batches = 1
        prepare_run(config)
        train_model(config, quiet=True)
        run_dir = config.run_dir
    if config.tokenizer.special_tokens and "<|im_end|>" in config.tokenizer.special_tokens:
        # What `scratchlm finetune sft` adds to a run of ours: ChatML, ending a reply at <|im_end|>.
        paths = RunPaths(run_dir)
        paths.chat_template.write_text(CHATML_TEMPLATE, encoding="utf-8")
        paths.token_roles.write_text(json.dumps(CHATML_TOKEN_ROLES), encoding="utf-8")
    _, tokenizer, model = load_trained_model(run_dir)
    files = {dtype: base / f"{recipe}-{dtype}.gguf" for dtype in GGUF_DTYPES}
    for dtype, path in files.items():
        export_gguf_run(run_dir, path, dtype=dtype)
    arch = gguf_architecture(read_gguf(files["f32"]).config)
    return RecipeRun(recipe, model.eval(), tokenizer, files, arch, run_dir)


_TRAINED: dict[str, RecipeRun] = {}  # each recipe trained once per session


def recipe(name: str, tmp_path_factory: pytest.TempPathFactory) -> RecipeRun:
    if name not in _TRAINED:
        _TRAINED[name] = train_recipe(tmp_path_factory.mktemp(name), name)
    return _TRAINED[name]


@pytest.fixture(scope="module", params=["demo", "shakespeare-char", "chat"])
def recipe_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> RecipeRun:
    return recipe(request.param, tmp_path_factory)


def test_recipe_tokenization_equals_ours(recipe_run: RecipeRun) -> None:
    llm = load_llama(recipe_run.gguf["f32"], recipe_run.model.config.block_size)
    for prompt in PROMPTS:
        assert llama_tokens(llm, prompt) == recipe_run.tokenizer.encode(prompt), prompt


def test_recipe_greedy_text_equals_ours_in_float32(recipe_run: RecipeRun) -> None:
    model, tokenizer = recipe_run.model, recipe_run.tokenizer
    llm = load_llama(recipe_run.gguf["f32"], model.config.block_size)
    for prompt in ("ROMEO:\n", "To be, or not to be", "def f(x):"):
        ids = tokenizer.encode(prompt)
        ours = list(generate_tokens(model, ids, 24, temperature=0.0))
        theirs = llama_greedy(llm, ids, 24)
        assert theirs == ours, (prompt, tokenizer.decode(ours), tokenizer.decode(theirs))
        difference = np.abs(llama_logits(llm, ids + ours) - our_logits(model, ids + ours)).max()
        print(
            f"{recipe_run.name} ({recipe_run.arch}) {prompt!r}: max |logit diff| {difference:.2e}"
        )
        assert difference < bound(recipe_run.arch)


def test_recipe_q8_0_export_keeps_the_text_and_likelihood(recipe_run: RecipeRun) -> None:
    n_ctx = recipe_run.model.config.block_size
    f32, q8 = load_llama(recipe_run.gguf["f32"], n_ctx), load_llama(recipe_run.gguf["q8_0"], n_ctx)
    ids = recipe_run.tokenizer.encode("To be, or not to be")
    assert llama_greedy(q8, ids, 5) == llama_greedy(f32, ids, 5)
    held_out = recipe_run.tokenizer.encode(HELD_OUT)[:n_ctx]
    ll_f32, ll_q8 = log_likelihood(f32, held_out), log_likelihood(q8, held_out)
    print(f"{recipe_run.name}: log-likelihood f32 {ll_f32:.3f}, Q8_0 {ll_q8:.3f}")
    assert abs(ll_q8 - ll_f32) <= 0.01 * abs(ll_f32)


def test_chat_recipe_chats_in_llama_cpp_as_in_scratchlm(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The chat template and its stop token travel with the file: llama-cpp-python's chat
    completion (its own Jinja rendering of our template) gives the reply `scratchlm chat` gives."""
    recipe_run = recipe("chat", tmp_path_factory)
    messages = [{"role": "user", "content": "hey, how was your weekend?"}]
    lm = load_for_inference(recipe_run.run_dir, dtype="float32")
    [ours] = lm.chat([messages], lm.sampling(temperature=0, max_new_tokens=12))
    llm = load_llama(recipe_run.gguf["f32"], recipe_run.model.config.block_size)
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llm.metadata["tokenizer.chat_template"]
    prompt = Jinja2ChatFormatter(template, eos_token="", bos_token="")(messages=messages).prompt
    assert list(llm.tokenize(prompt.encode(), add_bos=False, special=True)) == lm.encode_chat(
        messages
    )
    theirs = llm.create_chat_completion(messages=messages, temperature=0.0, max_tokens=12)
    assert theirs["choices"][0]["message"]["content"] == ours.text


@pytest.mark.parametrize("dtype", ["f16", "q4_0", "q4_1"])
def test_recipe_other_dtypes_run_in_llama_cpp(recipe_run: RecipeRun, dtype: str) -> None:
    """f16 and the 4-bit files load and stay near the f32 file's log-likelihood."""
    n_ctx = recipe_run.model.config.block_size
    held_out = recipe_run.tokenizer.encode(HELD_OUT)[:n_ctx]
    ll_f32 = log_likelihood(load_llama(recipe_run.gguf["f32"], n_ctx), held_out)
    ll = log_likelihood(load_llama(recipe_run.gguf[dtype], n_ctx), held_out)
    print(f"{recipe_run.name}: log-likelihood f32 {ll_f32:.3f}, {dtype} {ll:.3f}")
    assert abs(ll - ll_f32) <= (0.01 if dtype == "f16" else 0.05) * abs(ll_f32)


def log_likelihood(llm: Any, ids: list[int]) -> float:
    """Sum of log p(token | the tokens before it) over ids[1:], from llama.cpp's logits."""
    logits = torch.from_numpy(llama_logits(llm, ids)).double()
    logp = torch.log_softmax(logits[:-1], dim=-1)
    total = logp.gather(1, torch.tensor(ids[1:]).unsqueeze(1)).sum().item()
    assert math.isfinite(total)
    return total
