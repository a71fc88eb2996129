"""Chapter 3, Model Code: the transformer's source, its parameter counts, and the ways its
forward pass saves memory.

Every listing is pulled by symbol from the live source. Parameter counts are those of GPT
built on the meta device (shapes only, no memory) for the reader's [model] and the GPT-2
presets; KV-cache sizes come from a meta KVCache; measured memory and speed come from the
benchmarks' JSON result files when they are in the source tree (benchmarks/results/).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scratchlm.book import typst_markup as tm
from scratchlm.book.context import BookContext
from scratchlm.model.config import ModelConfig, model_config_from_table, model_preset

TITLE = "Model Code"

GPT2_PRESETS = ("gpt2-124m", "gpt2-355m", "gpt2-774m", "gpt2-1558m")
# Models with grouped-query attention, to show what sharing key/value heads saves.
GQA_PRESETS = ("llama-150m", "smollm2-135m", "llama3.2-1b")
GIB = 1024**3
MIB = 1024**2

# Where the benchmarks write their JSON (benchmarks/README.md), relative to the repository.
BENCHMARK_RESULTS = ("benchmarks/results", "benchmarks")
TRAIN_MEMORY_COMMAND = (
    "python benchmarks/train_memory.py --json benchmarks/results/train_memory.json"
)
INFERENCE_COMMAND = "python benchmarks/inference.py --json benchmarks/results/inference.json"


def write(ctx: BookContext) -> str:
    config = run_model_config(ctx)
    return "\n".join(
        [
            f"= {TITLE}\n",
            intro(),
            block_section(ctx),
            model_section(ctx),
            parameters_section(config, ctx.run_name),
            memory_intro(),
            kv_cache_section(ctx, config),
            gqa_section(ctx, config),
            fused_loss_section(ctx, config),
            checkpointing_section(ctx),
            measured_section(ctx),
        ]
    )


def run_model_config(ctx: BookContext) -> ModelConfig:
    """The run's [model] section as the run's model was built from it."""
    config = model_config_from_table(ctx.config.get("model", {}), str(ctx.paths.config))
    config.validate()
    return config


def meta_model(config: ModelConfig) -> Any:
    """GPT with shapes only (the meta device): counting parameters costs no memory."""
    import torch

    from scratchlm.model.gpt import GPT

    with torch.device("meta"):
        return GPT(config)


def intro() -> str:
    return """
The whole model is one file, `scratchlm/model/gpt.py`, and one class, `GPT`, whose
configuration (`ModelConfig`) chooses between GPT-2's and Llama's ways of doing each part.
This chapter prints that code as it is now, the listings pulled from the source by name, then
counts the parameters and looks at what a forward pass keeps in memory.
"""


# ---------------------------------------------------------------------------------- the code


def block_section(ctx: BookContext) -> str:
    return f"""
== The transformer block

A block is pre-norm: the residual stream $x$ is never normalised itself; each sublayer reads a
normalised copy and adds its output back,
$ x <- x + "attn"("norm"_1(x)), quad x <- x + "mlp"("norm"_2(x)). $
This keeps a clean path for gradients through a deep stack.

{ctx.listing("scratchlm.model.gpt:Block")}
=== Norms

LayerNorm (GPT-2) subtracts the mean and divides by the standard deviation of each token's
$C$ channels, then scales and shifts; RMSNorm (Llama) only divides by the root mean square,
$ "RMSNorm"(x) = x / sqrt(1/C sum_i x_i^2 + epsilon) dot.op g. $

{ctx.listing("scratchlm.model.norms:RMSNorm")}{ctx.listing("scratchlm.model.norms:make_norm")}
=== Causal self-attention

One matrix multiplication makes the queries, keys and values of all heads; each head computes
$"softmax"(Q K^T \\/ sqrt(d_k) + M) V$ with the causal mask $M$ ($-infinity$ above the
diagonal), and the heads are concatenated and projected back to $C$ channels. With fewer key/value
heads than query heads (grouped-query attention), groups of query heads share one key/value
head. With a KV cache, the new keys and values are written into the cache and the queries
attend over everything cached.

{ctx.listing("scratchlm.model.gpt:CausalSelfAttention")}
=== The MLP

A position-wise network, $C -> F -> C$: GELU for GPT-2, SwiGLU (a gated unit with three
matrices) for Llama. SwiGLU's two input matrices are stored stacked in one layer:

{ctx.listing("scratchlm.model.gpt:SplitLinear")}{ctx.listing("scratchlm.model.gpt:MLP")}"""


def model_section(ctx: BookContext) -> str:
    return f"""
== The model and its forward pass

The model is a token embedding, the position information (a learned or sinusoidal table added
to the embeddings, or RoPE's rotation of $q$ and $k$ inside attention), $L$ blocks, a final
norm and the language-model head, whose weight is the embedding matrix itself when the two
are tied.

{ctx.listing("scratchlm.model.gpt:GPT.__init__")}
`hidden_states` runs the stack: embeddings, positions, one mask for all layers, the blocks
(recomputed in the backward pass when activation checkpointing is on), and the KV cache's
position advanced by the new tokens.

{ctx.listing("scratchlm.model.gpt:GPT.hidden_states")}{ctx.listing("scratchlm.model.gpt:GPT.forward")}{ctx.listing("scratchlm.model.gpt:GPT.head")}"""


# -------------------------------------------------------------------------- parameter counts


def parameter_rows(config: ModelConfig, name: str) -> list[str]:
    model = meta_model(config)
    return [
        name,
        tm.number(config.n_layer),
        tm.number(config.n_head),
        tm.number(config.n_embd),
        tm.number(config.vocab_size),
        tm.number(config.block_size),
        tm.number(model.num_parameters()),
        tm.number(model.num_parameters(exclude_embeddings=True)),
    ]


def component_counts(config: ModelConfig) -> Iterator[tuple[str, int]]:
    """Parameters of the reader's model by part (a tied matrix counted once, as the model does)."""
    model = meta_model(config)
    parts: dict[str, int] = {}
    for name, parameter in model.named_parameters():  # a shared parameter comes once
        if name.startswith("transformer.h."):
            part = "blocks: " + name.split(".")[3]  # attn, mlp, ln_1, ln_2
            part = "blocks: norms" if part.startswith("blocks: ln_") else part
        elif name.startswith("transformer."):
            part = {"wte": "token embedding", "wpe": "position embedding", "ln_f": "final norm"}[
                name.split(".")[1]
            ]
        else:
            part = "head (untied)"
        parts[part] = parts.get(part, 0) + parameter.numel()
    yield from parts.items()


def parameters_section(config: ModelConfig, run_name: str) -> str:
    headers = ["model", "layers", "heads", "width", "vocab", "context", "parameters", "non-emb."]
    rows = [parameter_rows(config, f"yours ({run_name})")]
    rows += [parameter_rows(model_preset(name), name) for name in GPT2_PRESETS]
    total = meta_model(config).num_parameters()
    parts = [
        (part, tm.number(n), f"{100 * n / total:.1f}%") for part, n in component_counts(config)
    ]
    tied = (
        "The head shares the token embedding's matrix (tied), so it adds no parameters."
        if config.tie_embeddings
        else "The head has a matrix of its own (untied)."
    )
    return f"""
== Parameter counts

Each block holds the attention's $C times (C + 2 K D)$ input and $C times C$ output
matrices and the MLP's two (or three) matrices of $C times F$, plus the norms' gains and any
biases: about $12 C^2$ per block for GPT-2's shape, so the count grows with the width squared.
The counts below are the model's own (`GPT.num_parameters`, on the meta device, which builds
the shapes without allocating memory); "non-emb." leaves out the embeddings and the head, the
count scaling laws use.

#figure({tm.table(headers, rows).strip().removeprefix("#")}, caption: [Parameters of your model and of the GPT-2 presets (`scratchlm.model.config`).])

#figure({tm.table(["part of your model", "parameters", "share"], parts).strip().removeprefix("#")}, caption: [Where your model's {tm.text(tm.number(total))} parameters are.])

{tied}
"""


# ------------------------------------------------------------------ memory-efficient passes


def memory_intro() -> str:
    return """
== Memory-efficient forward passes

A forward pass keeps more than the weights: generation keeps every earlier token's keys and
values, and training keeps the activations the backward pass needs and, at the end, a
logit for every token of the vocabulary at every position. Four techniques shrink these.
"""


def kv_bytes_per_token(config: ModelConfig, bytes_per_value: int) -> int:
    """The KV cache's bytes per cached token, measured on a meta KVCache of one slot (the
    model's own allocation, not a formula)."""
    cache = meta_model(config).new_kv_cache(1, max_len=1)
    values = sum(t.numel() for t in cache.k) + sum(t.numel() for t in cache.v)
    return values * bytes_per_value


def kv_cache_section(ctx: BookContext, config: ModelConfig) -> str:
    per_token = kv_bytes_per_token(config, 4)
    formula = 2 * config.n_layer * config.kv_heads * config.head_dim * 4
    assert per_token == formula, "the cache the model allocates is 2 L K D values per token"
    full = per_token * config.block_size
    return f"""
=== KV cache

Generating token $t+1$ needs the keys and values of tokens $1 dots t$ in every layer. They do
not change once computed, so the model keeps them: each step then computes $q, k, v$ for one
new token only and attends over the cache, $O(S)$ work per step instead of recomputing the
whole prefix, $O(S^2)$. The price is memory: $2 times L times K times D$ values per token
(keys and values, $L$ layers, $K$ key/value heads of $D$ channels).

For your model that is $2 times {config.n_layer} times {config.kv_heads} times {config.head_dim}$
values, {tm.text(tm.number(per_token))} bytes per token in float32, and
{tm.text(f"{full / MIB:.2f}")} MiB for a full context of {tm.text(tm.number(config.block_size))}
tokens (per sequence).

{ctx.listing("scratchlm.model.gpt:KVCache.__init__")}
A decode step has a single query per row; the cached heads are read once per group of query
heads that share them:

{ctx.listing("scratchlm.model.gpt:decode_attention")}"""


def gqa_section(ctx: BookContext, config: ModelConfig) -> str:
    heads = config.n_head
    rows = []
    for kv in [k for k in range(heads, 0, -1) if heads % k == 0]:
        variant = dataclass_copy(config, n_kv_head=kv)
        name = "multi-head" if kv == heads else "multi-query" if kv == 1 else "grouped-query"
        rows.append(
            (
                f"{kv} ({name})",
                tm.number(kv_bytes_per_token(variant, 4)),
                tm.number(meta_model(variant).num_parameters()),
            )
        )
    preset_rows = []
    for name in GQA_PRESETS:
        preset = model_preset(name)
        full = dataclass_copy(preset, n_kv_head=0)
        ours, theirs = kv_bytes_per_token(preset, 2), kv_bytes_per_token(full, 2)
        preset_rows.append(
            (
                name,
                f"{preset.n_head} / {preset.kv_heads}",
                tm.number(ours),
                tm.number(theirs),
                f"{preset.block_size:,} tokens: {ours * preset.block_size / GIB:.2f} GiB",
            )
        )
    return f"""
=== Grouped-query attention (GQA)

The cache grows with the number of key/value heads $K$, not query heads $H$. Grouped-query
attention (Ainslie et al., 2023) keeps all $H$ query heads but lets each group of $H \\/ K$
of them share one key and value head: the cache and the $k, v$ projections shrink by $H \\/ K$,
for a small loss in quality ($K = 1$ is multi-query attention). For your model's
{tm.text(tm.number(heads))} query heads, each possible $K$ (cache sizes from a meta KV cache,
float32):

#figure({tm.table(["key/value heads K", "cache bytes per token", "model parameters"], rows).strip().removeprefix("#")}, caption: [Your model with fewer key/value heads: cache size and parameters, computed while building.])

#figure({tm.table(["preset", "H / K", "bytes/token", "with K = H", "full context"], preset_rows, align="left, left, right, right, left").strip().removeprefix("#")}, caption: [KV cache per token in bfloat16 (2 bytes a value) for presets that use GQA, against the same model with one key/value head per query head; and at the preset's full context.])
"""


def dataclass_copy(config: ModelConfig, **changes: Any) -> ModelConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)


def fused_loss_section(ctx: BookContext, config: ModelConfig) -> str:
    from scratchlm.model.fused_loss import chunk_rows

    batch = int(ctx.config.get("train", {}).get("batch_size", 16))
    rows = batch * config.block_size
    full = rows * config.vocab_size * 4
    chunk = min(chunk_rows(config.vocab_size), rows)
    chunk_bytes = chunk * config.vocab_size * 4
    gpt2 = model_preset("gpt2-124m")
    gpt2_full = 8 * gpt2.block_size * gpt2.vocab_size * 4
    return f"""
=== Fused, chunked loss

The head turns each of the $N$ positions' hidden states into $V$ logits. Computed plainly,
the $N times V$ logits exist at once, and are read and written again by the softmax and its
gradient. For your training batch ({tm.text(tm.number(batch))} sequences of
{tm.text(tm.number(config.block_size))} tokens, vocabulary {tm.text(tm.number(config.vocab_size))})
that is {tm.text(tm.number(rows))} $times$ {tm.text(tm.number(config.vocab_size))} float32 values,
{tm.text(f"{full / MIB:.1f}")} MiB; for GPT-2 124M with 8 sequences of
{tm.text(tm.number(gpt2.block_size))} tokens it is {tm.text(f"{gpt2_full / GIB:.2f}")} GiB.
The fused loss takes {tm.text(tm.number(chunk))} rows at a time
({tm.text(f"{chunk_bytes / MIB:.1f}")} MiB of logits for your vocabulary), computes their loss
and right away the gradient $"softmax"(z) - "onehot"(y)$, turns it into the gradients of the
hidden states and of the head, and drops the chunk's logits. The loss and gradients are the
same; the $N times V$ tensor never exists.

{ctx.listing("scratchlm.model.gpt:GPT.training_loss")}{ctx.listing("scratchlm.model.fused_loss:chunk_rows")}"""


def checkpointing_section(ctx: BookContext) -> str:
    return """
=== Activation checkpointing

The backward pass needs each layer's intermediate activations (attention inputs and weights,
the MLP's hidden layer $F = 4C$ wide), which for long contexts take far more memory than
the weights. With `model.activation_checkpointing = true`, `hidden_states` (above) runs each
block through `torch.utils.checkpoint`: only the block's input is kept, and the block's
forward pass is run again during the backward pass to recreate what it needs. Memory for
activations drops from all of every block's intermediates to one tensor of $B times T times C$
per block, for about one more forward pass of compute (a third more work per step).
"""


# ------------------------------------------------------------------------ measured numbers


def benchmark_results(ctx: BookContext) -> list[tuple[Path, dict[str, Any]]]:
    """The benchmarks' JSON result files in the source tree (a checkout), newest first."""
    repository = ctx.source_root.resolve().parents[1]
    found = []
    for relative in BENCHMARK_RESULTS:
        folder = repository / relative
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                found.append((path, data))
    return sorted(found, key=lambda item: item[0].stat().st_mtime, reverse=True)


def is_train_memory(data: dict[str, Any]) -> bool:
    results = data.get("results")
    return isinstance(results, dict) and all(
        isinstance(results.get(k), dict) and "forward_backward_peak_bytes" in results[k]
        for k in ("off", "on")
    )


def is_inference(data: dict[str, Any]) -> bool:
    return "bandwidth_GBps" in data and any(k.startswith("scratchlm") for k in data)


def provenance(path: Path, data: dict[str, Any]) -> str:
    # The date the benchmark wrote into its file, else the file's own.
    written = str(
        data.get("date") or time.strftime("%Y-%m-%d", time.localtime(path.stat().st_mtime))
    )
    machine = data.get("machine")
    where = f", on {machine}" if machine else ""
    return f"{tm.inline_code(path.name)} (written {tm.text(written)}{tm.text(where)})"


def measured_section(ctx: BookContext) -> str:
    results = benchmark_results(ctx)
    memory = next(((p, d) for p, d in results if is_train_memory(d)), None)
    inference = next(((p, d) for p, d in results if is_inference(d)), None)
    parts = ["\n=== Measured\n"]
    if memory is None:
        parts.append(
            "Peak memory of a GPT-2 124M training step with and without activation "
            "checkpointing is measured by `benchmarks/train_memory.py` (its `--unfused` flag "
            "shows the plain loss). "
            + ctx.missing("benchmark result for training memory", TRAIN_MEMORY_COMMAND)
        )
    else:
        path, data = memory
        args = data.get("args", {})
        off, on = data["results"]["off"], data["results"]["on"]
        rows = []
        for key, label in (
            ("built_bytes", "model + optimizer built"),
            ("forward_backward_peak_bytes", "forward + backward"),
            ("step_peak_bytes", "whole step"),
        ):
            rows.append(
                (
                    label,
                    f"{off[key] / GIB:.2f}",
                    f"{on[key] / GIB:.2f}",
                    f"{on[key] / off[key]:.2f}x",
                )
            )
        loss = "plain (unfused)" if args.get("unfused") else "fused"
        parts.append(
            f"From {provenance(path, data)}: GPT-2 124M, batch {tm.text(args.get('batch', '?'))}, "
            f"context {tm.text(args.get('context', '?'))}, float32, {tm.text(loss)} loss; peak "
            "resident memory in GiB.\n\n"
            f"#figure({tm.table(['peak RSS (GiB)', 'without', 'with checkpointing', 'ratio'], rows).strip().removeprefix('#')}, "
            "caption: [Activation checkpointing, measured by benchmarks/train_memory.py.])\n"
        )
    if inference is None:
        parts.append(
            "Decoding speed with the KV cache, against Hugging Face transformers on the same "
            "weights, is measured by `benchmarks/inference.py`. "
            + ctx.missing("benchmark result for inference", INFERENCE_COMMAND)
        )
    else:
        path, data = inference
        rows = [
            (
                name,
                f"{row.get('batch 1', 0):.1f}",
                f"{row.get('batch 8', 0):.1f}",
                f"{row.get('prefill', 0):.0f}",
            )
            for name, row in data.items()
            if isinstance(row, dict) and "batch 1" in row
        ]
        parts.append(
            f"From {provenance(path, data)}: SmolLM2-135M-Instruct, greedy, with a KV cache; "
            "tokens per second.\n\n"
            f"#figure({tm.table(['engine', 'decode batch 1', 'decode batch 8', 'prefill'], rows).strip().removeprefix('#')}, "
            "caption: [Decoding with the KV cache, measured by benchmarks/inference.py.])\n"
        )
    return "\n".join(parts)
