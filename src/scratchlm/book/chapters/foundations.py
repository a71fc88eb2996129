"""Chapter 1, Foundations: embeddings as a matrix product, attention and its causal mask,
positional encodings (learned, sinusoidal, rotary), and the reader's model's attention.

Every number is computed here from the reader's run (its tokenizer, config and checkpoint) or
by the project's own positional and attention code; the figures are drawn from the same.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from scratchlm.book import typst_markup as tm
from scratchlm.book.attention_weights import model_attention
from scratchlm.book.context import BookContext
from scratchlm.model.config import ModelConfig
from scratchlm.model.gpt import attention_mask
from scratchlm.model.positional import (
    apply_rope,
    rope_cos_sin,
    rope_inv_freq,
    sinusoidal_encoding,
    sinusoidal_table,
)
from scratchlm.runs.checkpoint import list_checkpoints
from scratchlm.runs.loading import read_model_config

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from scratchlm.inference.language_model import LanguageModel

TITLE = "Foundations"

SENTENCE = "To be, or not to be, that is the question."  # encoded with the reader's tokenizer
EMBEDDING_ROWS = 6  # tokens shown in the one-hot table
EMBEDDING_COLUMNS = 3  # channels shown of each row
PATTERN_TOKENS = 16  # at most this many tokens in the attention-pattern figure
PE_POSITIONS = [0, 1, 2, 3, 10, 50]  # rows of the PE table
HEATMAP_POSITIONS = 128  # rows of the sinusoidal heat map (fewer if block_size is smaller)
ROPE_POSITIONS = 48  # the q·k matrix of the rotary demonstration is this many positions square
TEXT_WIDTH_IN = 6.5  # A4 less 2.2 cm margins: figures are drawn at the size they are printed
ATTENTION_HEIGHT_IN = 5.0  # the attention-pattern grid's height at most
DPI = 150


def pe_pair_indices(dim: int) -> list[int]:
    """The channel pairs i of the PE table: the two fastest, one in the middle, the slowest."""
    return sorted({0, 1, dim // 8, dim // 2 - 1})


def write(ctx: BookContext) -> str:
    config = read_model_config(ctx.run_dir)
    lm = load_model(ctx)
    return "\n".join(
        [
            f"= {TITLE}",
            "A language model reads token ids, turns each into a vector, lets every position "
            "look at the positions before it, and predicts the next token. This chapter takes "
            "the three ideas that make that work (embeddings, attention and position) and shows "
            "each with the code of this project and the numbers of your run, "
            f"{tm.text(ctx.run_name)}.",
            embeddings_section(ctx, config, lm),
            attention_section(ctx, config),
            positional_section(ctx, config),
            attention_pattern_section(ctx, config, lm),
        ]
    )


def load_model(ctx: BookContext) -> LanguageModel | None:
    """The run's latest checkpoint on the CPU, or None when it has not been trained."""
    if not list_checkpoints(ctx.run_dir):
        return None
    from scratchlm.inference.language_model import load_for_inference

    return load_for_inference(ctx.run_dir, device="cpu", dtype="float32")


def train_command(ctx: BookContext) -> str:
    return f"scratchlm train --config {ctx.paths.config}"


def piece(lm: LanguageModel, token_id: int) -> str:
    """A token as the reader should see it: spaces and newlines made visible."""
    return lm.tokenizer.decode([token_id]).replace(" ", "\u2423").replace("\n", "\\n")


# ---------------------------------------------------------------------------------- embeddings


def embeddings_section(ctx: BookContext, config: ModelConfig, lm: LanguageModel | None) -> str:
    intro = f"""
== Tokens and embeddings as matrix multiplication
The tokenizer turns text into ids, integers in $[0, V)$, where your run's vocabulary has
$V = {tm.text(config.vocab_size)}$ tokens. The model's first layer is an embedding matrix
$E$ of shape $V times C$ with $C = {tm.text(config.n_embd)}$ channels, and the vector of token
$t$ is row $t$ of $E$. Written as linear algebra, that row is a one-hot vector times the matrix:

$ bold(e)_t = bold(1)_t^top E, quad (bold(1)_t)_j = cases(1 "if" j = t, 0 "otherwise") $

A whole text of $N$ tokens is then the product $X = O E$ of its $N times V$ one-hot matrix
$O$ with $E$. The model never builds $O$ (most of its entries are zero, and a lookup gives the
same rows without the $N V C$ multiplications), but the product view explains the gradient:
only the rows of $E$ whose tokens occur in the batch receive any. With tied embeddings the same
matrix comes back at the end: the logits are $h E^top$, every hidden state scored against every
token's embedding.
"""
    if lm is None:
        return intro + ctx.missing("trained model", train_command(ctx))
    ids = lm.tokenizer.encode(SENTENCE)
    E = cast(nn.Embedding, lm.model.transformer["wte"]).weight.detach().float()  # (V, C)
    one_hot = torch.nn.functional.one_hot(torch.tensor(ids), E.size(0)).float()  # (N, V)
    product = one_hot @ E  # (N, C)
    lookup = E[torch.tensor(ids)]  # (N, C)
    error = float((product - lookup).abs().max())

    def first(row: torch.Tensor) -> str:
        return ", ".join(f"{float(v):.4f}" for v in row[:EMBEDDING_COLUMNS])

    rows = [
        [piece(lm, t), t, first(product[n]), first(lookup[n])]
        for n, t in enumerate(ids[:EMBEDDING_ROWS])
    ]
    shown = f"[0:{EMBEDDING_COLUMNS}]"
    exactness = (
        ": each output entry sums one product $1 dot E_(t j)$ and $V - 1$ products with $0$, "
        "so the product is exact."
        if error == 0
        else ", the rounding of the matrix product's float32 sums."
    )
    return (
        intro
        + f"""
Your tokenizer splits the sentence {tm.text(repr(SENTENCE))} into {tm.text(len(ids))} tokens.
The first {tm.text(min(EMBEDDING_ROWS, len(ids)))} of them, each with the first
{tm.text(EMBEDDING_COLUMNS)} channels of its one-hot product and of its looked-up row of your
checkpoint's $E$ (␣ marks a space):

"""
        + tm.table(
            ["token", "id", f"(one-hot · E){shown}", f"E[id]{shown}"],
            rows,
            align="left, right, right, right",
        )
        + f"""
Over all {tm.text(len(ids))} tokens and {tm.text(E.size(1))} channels, the largest difference
between the product $O E$ and the lookup $E["ids"]$ is {tm.text(tm.number(error))}{exactness}
The model's embedding is an `nn.Embedding`; tying the head to it is one line:
"""
        + ctx.listing("scratchlm.model.gpt:GPT.tie_weights")
    )


# ----------------------------------------------------------------------------------- attention


def attention_section(ctx: BookContext, config: ModelConfig) -> str:
    path = ctx.figure_path("causal_mask.png")
    draw_masks(path)
    window = (
        f"Your run attends to at most {tm.text(config.sliding_window)} recent tokens "
        "(a sliding window, the third panel's shape)."
        if config.sliding_window
        else "Your run uses no sliding window: every token sees all the tokens before it."
    )
    return (
        f"""
== Attention
Each position $i$ asks a question (its query $q_i$), every position $j$ offers a key $k_j$ and
a value $v_j$, all three linear maps of the position's vector. Position $i$'s output is the
average of the values weighted by how well each key answers its query:

$ "Attention"(Q, K, V) = "softmax"((Q K^top) / sqrt(d_k) + M) V $

$Q$, $K$, $V$ hold one row per position, $d_k$ is a head's width
(${tm.text(config.head_dim)}$ in your model: $C = {tm.text(config.n_embd)}$ split into
${tm.text(config.n_head)}$ heads) and the softmax is taken along each row. Dividing by
$sqrt(d_k)$ keeps the scores' variance near 1 whatever the width, so the softmax does not
saturate at initialisation. The mask $M$ makes the model causal: a token may not look at the
tokens it is trained to predict,

$ M_(i j) = cases(0 & "if" j <= i, -infinity & "if" j > i) $

and $e^(-infinity) = 0$ gives those keys exactly zero weight. {window}
"""
        + tm.figure(
            "figures/causal_mask.png",
            "Masks made by the project's `attention_mask` (white: attend, $M = 0$; grey: "
            "hidden, $M = -infinity$). Left: the causal mask of a prompt. Middle: new tokens "
            "after a KV cache, which see every cached key. Right: a sliding window of 3.",
        )
        + "The masks come from this function (a whole prompt from position 0 with no window "
        "needs none: the fused kernel applies causality itself):\n"
        + ctx.listing("scratchlm.model.gpt:attention_mask")
        + "Generating one token at a time, the model computes the formula above literally: two "
        "matrix products and a softmax.\n" + ctx.listing("scratchlm.model.gpt:decode_attention")
    )


def draw_masks(path: object) -> None:
    """Three masks from attention_mask: causal, after a KV cache, and a sliding window."""
    T = 8
    panels = [
        # A window as long as the text hides nothing beyond causality: the plain causal mask.
        ("causal, T = 8", attention_mask(0, T, T)),
        ("5 cached + 3 new", attention_mask(5, 3, 0)),
        ("sliding window 3", attention_mask(0, T, 3)),
    ]
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(TEXT_WIDTH_IN, 2.5))
    for ax, (title, mask) in zip(axes, panels, strict=True):
        assert mask is not None
        ax.imshow((~mask).numpy(), cmap="Greys", vmin=0, vmax=2.2)
        for (i, j), attend in zip(
            [(i, j) for i in range(mask.size(0)) for j in range(mask.size(1))],
            mask.flatten().tolist(),
            strict=True,
        ):
            ax.text(j, i, "0" if attend else "−∞", ha="center", va="center", fontsize=6)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("key j", fontsize=8)
        ax.set_xticks(range(mask.size(1)))
        ax.set_yticks(range(mask.size(0)))
        ax.tick_params(labelsize=6)
    axes[0].set_ylabel("query i", fontsize=8)
    save(fig, path)


# -------------------------------------------------------------------------- positional encodings


def positional_section(ctx: BookContext, config: ModelConfig) -> str:
    return "\n".join(
        [
            f"""
== Positional encodings
Attention as written above treats its keys as a set: shuffle the tokens and every output is
shuffled the same way, nothing more. Word order has to be put in. Your run uses
{tm.inline_code(f'pos_encoding = "{config.pos_encoding}"')}; the three choices are these.

=== Learned absolute positions
GPT-2 keeps a second embedding matrix of shape $"block_size" times C$ and adds row $p$ to the
token vector at position $p$. It is learned like any weight, so it can encode whatever helps,
but a position beyond the training context has no row at all.
""",
            sinusoidal_section(ctx, config),
            rope_section(ctx, config),
        ]
    )


def sinusoidal_section(ctx: BookContext, config: ModelConfig) -> str:
    dim = config.n_embd
    pairs = pe_pair_indices(dim)
    values = sinusoidal_table(PE_POSITIONS, pairs, dim)
    headers: list[str] = ["pos"]
    for i in pairs:
        headers += [f"PE(p,{2 * i})", f"PE(p,{2 * i + 1})"]
    rows = [
        [pos, *(f"{v:.4f}" for pair in row for v in pair)]
        for pos, row in zip(PE_POSITIONS, values, strict=True)
    ]
    # The model's buffer is computed in float64 and stored in float32: how far from the formula?
    table = sinusoidal_encoding(max(PE_POSITIONS) + 1, dim).double()
    formula = torch.tensor(
        sinusoidal_table(range(max(PE_POSITIONS) + 1), range(dim // 2), dim), dtype=torch.float64
    )  # (positions, pairs, 2)
    buffer_error = float((table.view_as(formula) - formula).abs().max())
    heat_rows = min(HEATMAP_POSITIONS, config.block_size)
    draw_sinusoidal(ctx.figure_path("sinusoidal.png"), heat_rows, dim)
    return (
        f"""
=== Sinusoidal positions
"Attention Is All You Need" adds a fixed table instead, computed from a formula:

$ "PE"("pos", 2i) = sin("pos" / 10000^(2i \\/ d)), quad
  "PE"("pos", 2i + 1) = cos("pos" / 10000^(2i \\/ d)) $

Channel pair $i$ is a clock that turns $10000^(-2i \\/ d)$ radians per position: the first
pairs turn fast and tell neighbours apart, the last ones barely move across a whole context.
Because $sin$ and $cos$ of a sum expand into products, the table at $"pos" + k$ is a rotation
of the table at $"pos"$, the same for every $"pos"$: a fixed linear map can shift attention by
$k$ positions. With $d = {tm.text(dim)}$, your model's width, the project's
{tm.inline_code("sinusoidal_table")} gives:

"""
        + tm.table(headers, rows)
        + f"""
Column $"PE"(p, 2i)$ is the sine of pair $i$, the next one its cosine: at position 0 every sine
is 0 and every cosine 1. The model's own table ({tm.inline_code("sinusoidal_encoding")}, the
buffer it adds to its embeddings) differs from this formula by at most
{tm.text(tm.number(buffer_error))} over these positions and all {tm.text(dim)} channels, the
rounding of float32.
"""
        + tm.figure(
            "figures/sinusoidal.png",
            f"The sinusoidal table for {tm.text(heat_rows)} positions and $d = {tm.text(dim)}$, "
            "from `sinusoidal_encoding`: fast stripes on the left, slow ones on the right.",
        )
        + ctx.listing("scratchlm.model.positional:sinusoidal_encoding")
        + ctx.listing("scratchlm.model.positional:sinusoidal_table")
    )


def draw_sinusoidal(path: object, positions: int, dim: int) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(TEXT_WIDTH_IN, 3.0))
    image = ax.imshow(
        sinusoidal_encoding(positions, dim).numpy(),
        aspect="auto",
        cmap="RdBu",
        vmin=-1,
        vmax=1,
        interpolation="nearest",
    )
    ax.set_xlabel("channel (even: sin, odd: cos)", fontsize=9)
    ax.set_ylabel("position", fontsize=9)
    ax.tick_params(labelsize=8)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02).ax.tick_params(labelsize=8)
    save(fig, path)


def rope_section(ctx: BookContext, config: ModelConfig) -> str:
    D, base = config.head_dim, config.rope_base
    L = min(ROPE_POSITIONS, config.block_size)
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 1, 1, 1, D, generator=gen)  # one head's query and key, (1, 1, 1, D)
    cos, sin = rope_cos_sin(rope_inv_freq(D, base), L)
    # The same q and k placed at every position 0..L-1: (1, 1, L, D) each, rotated by the model.
    q_rot = apply_rope(q.expand(1, 1, L, D), cos, sin)[0, 0]
    k_rot = apply_rope(k.expand(1, 1, L, D), cos, sin)[0, 0]
    scores = (q_rot @ k_rot.T).double()  # (L, L): query at m, key at n
    # RoPE's promise: the score depends on m - n only, so each diagonal is constant.
    spread = max(
        float(scores.diagonal(offset).max() - scores.diagonal(offset).min())
        for offset in range(-(L - 1), L)
    )
    draw_rope_scores(ctx.figure_path("rope_scores.png"), scores)
    return (
        f"""
=== Rotary positions (RoPE)
Llama-style models add nothing to the embeddings. Inside every attention head they rotate the
query and the key by an angle proportional to their position, in $D \\/ 2$ planes of two
channels each, plane $i$ turning at $theta_i = b^(-2i \\/ D)$ radians per position:

$ R_m vec(x_i, x_(i + D\\/2)) = mat(cos m theta_i, -sin m theta_i; sin m theta_i, cos m theta_i)
  vec(x_i, x_(i + D\\/2)) $

A rotation preserves dot products, and two rotations compose by adding their angles, so

$ (R_m q)^top (R_n k) = q^top R_m^top R_n k = q^top R_(n - m) k $

depends on the distance $n - m$ only, never on where the pair sits: attention sees relative
positions. In your model $D = {tm.text(D)}$ and $b = {tm.text(tm.number(base))}$. Placing one
random $q$ and $k$ at every position $0, dots, {tm.text(L - 1)}$ and rotating them with the
project's code gives the score matrix below: along each diagonal ($n - m$ fixed) the scores
differ by at most {tm.text(tm.number(spread))} (float32 rounding), while across diagonals they
range from {tm.text(tm.number(float(scores.min())))} to
{tm.text(tm.number(float(scores.max())))}.
"""
        + tm.figure(
            "figures/rope_scores.png",
            "$(R_m q)^top (R_n k)$ for one random $q$, $k$ rotated by `apply_rope` with your "
            "model's head width and base: constant along every diagonal.",
            width="62%",
        )
        + "The rotation speeds, their angles at each position, and the rotation itself "
        "(channel $i$ paired with $i + D \\/ 2$):\n"
        + ctx.listing("scratchlm.model.positional:rope_inv_freq")
        + ctx.listing("scratchlm.model.positional:rope_cos_sin")
        + ctx.listing("scratchlm.model.positional:apply_rope")
    )


def draw_rope_scores(path: object, scores: torch.Tensor) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.0, 3.4))
    image = ax.imshow(scores.numpy(), cmap="viridis", interpolation="nearest")
    ax.set_xlabel("key position n", fontsize=9)
    ax.set_ylabel("query position m", fontsize=9)
    ax.tick_params(labelsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=8)
    save(fig, path)


# ---------------------------------------------------------------------- the reader's attention


def attention_pattern_section(
    ctx: BookContext, config: ModelConfig, lm: LanguageModel | None
) -> str:
    heading = "\n== Attention in your model\n"
    if lm is None:
        return heading + ctx.missing("trained model", train_command(ctx))
    ids = lm.tokenizer.encode(SENTENCE)[: min(PATTERN_TOKENS, config.block_size)]
    if len(ids) < 2:
        return heading + tm.note("The test sentence is a single token for your tokenizer.")
    weights, error = model_attention(lm.model, ids)
    layer = len(weights) - 1
    labels = [piece(lm, t) for t in ids]
    width = draw_attention(ctx.figure_path("attention_heads.png"), weights[layer], labels)
    return (
        heading
        + f"""
Your model read the first {tm.text(len(ids))} tokens of {tm.text(repr(SENTENCE))}; the figure
shows the attention weights $"softmax"(Q K^top \\/ sqrt(d_k) + M)$ of each of the
{tm.text(config.n_head)} heads of its last layer (layer {tm.text(layer)} of
{tm.text(len(weights))}, counting from 0). Each row is a query token and sums to 1; the upper
triangle is the causal mask's zeros. The model itself calls a fused kernel that never shows
these weights, so the book records the $q$, $k$ and $v$ it passes to that kernel and computes
the softmax itself; multiplied by $V$, these weights give back the kernel's outputs to within
{tm.text(tm.number(error))} in every layer.
"""
        + tm.figure(
            "figures/attention_heads.png",
            "Attention weights of each head of your model's last layer (darker: more weight, on a "
            "square-root scale; ␣ marks a space).",
            width=width,
        )
        + ctx.listing("scratchlm.book.attention_weights:attention_weights")
    )


def draw_attention(path: object, weights: torch.Tensor, labels: list[str]) -> str:
    """One heat map per head of weights (H, T, T), labelled with the tokens; returns the width
    to print it at (its true size, as a share of the text width)."""
    H, T = weights.size(0), weights.size(1)

    # Square panels in the grid that makes them largest, within the text width and no taller
    # than ATTENTION_HEIGHT_IN (so the text around it stays on its page).
    def panel_size(cols: int) -> float:
        return min(TEXT_WIDTH_IN / cols, ATTENTION_HEIGHT_IN / math.ceil(H / cols))

    cols = max(range(1, H + 1), key=lambda c: (panel_size(c), -c))
    rows = math.ceil(H / cols)
    panel = panel_size(cols)
    plt = pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(panel * cols, panel * rows + 0.4), squeeze=False)
    # Token labels as plain text: a "$" in a token must not start matplotlib's math mode.
    labels = [label.replace("$", r"\$") for label in labels]
    # Labels as large as a cell allows (72 points an inch), between 4 and 8 points.
    size = max(4.0, min(8.0, 0.6 * panel * 72 / T))
    # Most weight goes to a few keys (often the first token); a square-root colour scale keeps
    # the smaller weights visible.
    norm = colors().PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0)
    for h, ax in enumerate(axes.flat):
        if h >= H:
            ax.axis("off")
            continue
        ax.imshow(weights[h].numpy(), cmap="Blues", norm=norm, interpolation="nearest")
        ax.set_title(f"head {h}", fontsize=9)
        ax.set_xticks(range(T))
        ax.set_yticks(range(T))
        last_row = h // cols == rows - 1 or h + cols >= H
        ax.set_xticklabels(labels if last_row else [], rotation=90, fontsize=size)
        ax.set_yticklabels(labels if h % cols == 0 else [], fontsize=size)
        ax.tick_params(length=1.5)
    save(fig, path)
    return f"{min(100, round(100 * panel * cols / TEXT_WIDTH_IN))}%"


# --------------------------------------------------------------------------------- matplotlib


def pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def colors() -> ModuleType:
    import matplotlib.colors

    return matplotlib.colors


def save(fig: Figure, path: object) -> None:
    fig.tight_layout()
    fig.savefig(str(path), dpi=DPI)
    pyplot().close(fig)
