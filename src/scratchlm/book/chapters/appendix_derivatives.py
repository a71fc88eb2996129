"""Appendix A: backpropagation by hand for the model's layers, each hand gradient checked
against torch.autograd while the book is built (book/derivatives.py), the error printed.

A failed check raises: the book never prints a derivation its own code disproves.
"""

from __future__ import annotations

from scratchlm.book import typst_markup as tm
from scratchlm.book.context import BookContext
from scratchlm.book.derivatives import (
    GELU_CUBIC,
    GRADIENT_TOLERANCE,
    GradientCheck,
    verified_gradient_checks,
)

TITLE = "Appendix A: Manual derivatives"

# The derivation of each layer, in Typst math, by the check's name (derivatives.gradient_cases).
# Notation: a bar is the gradient of the loss L with respect to that quantity, x̄ = ∂L/∂x.
DERIVATIONS = {
    "Softmax + cross-entropy": """
The loss of $N$ rows of logits $z_n$ with targets $y_n$ is the mean negative log-probability
of the targets:

$ p_(n j) = e^(z_(n j)) / (sum_k e^(z_(n k))), quad
  L = -1/N sum_n log p_(n y_n) = -1/N sum_n (z_(n y_n) - log sum_k e^(z_(n k))) $

Differentiating the bracket, $z_(n y_n)$ gives $[j = y_n]$ and the log-sum-exp gives
$e^(z_(n j)) \\/ sum_k e^(z_(n k)) = p_(n j)$, so

$ (partial L) / (partial z_(n j)) = 1/N (p_(n j) - [j = y_n]) $

the predicted distribution minus the one-hot target: no exponentials to differentiate, and the
reason frameworks fuse the two layers.
""",
    "Linear layer": """
$ y = x W^top + b, quad x in RR^(N times C), W in RR^(F times C), b in RR^F $

Each $y_(n f) = sum_c x_(n c) W_(f c) + b_f$ is linear in every input, so the chain rule sums
the upstream gradient over the outputs each input touches:

$ overline(x) = overline(y) W, quad overline(W) = overline(y)^top x, quad
  overline(b) = sum_n overline(y)_n $
""",
    "LayerNorm": """
Over the $C$ channels of each row:

$ mu = 1/C sum_c x_c, quad sigma^2 = 1/C sum_c (x_c - mu)^2, quad
  hat(x) = (x - mu) / sqrt(sigma^2 + epsilon), quad y = gamma dot.o hat(x) + beta $

The gain and shift are elementwise: $overline(gamma) = sum_n overline(y)_n dot.o hat(x)_n$,
$overline(beta) = sum_n overline(y)_n$, and $overline(hat(x)) = gamma dot.o overline(y)$.
Every $x_c$ moves $hat(x)$ directly and through $mu$ and $sigma$; collecting the three paths,

$ overline(x) = 1 / sqrt(sigma^2 + epsilon) (overline(hat(x)) - "mean"(overline(hat(x)))
  - hat(x) dot.o "mean"(overline(hat(x)) dot.o hat(x))) $

the upstream gradient with its mean and its component along $hat(x)$ removed: shifting or
scaling a row does not change its normalised output, so those directions get no gradient.
""",
    "RMSNorm": """
$ r = sqrt(1/C sum_c x_c^2 + epsilon), quad hat(x) = x / r, quad y = gamma dot.o hat(x) $

There is no mean, so only the scale path remains:

$ overline(x) = 1/r (overline(hat(x)) - hat(x) dot.o "mean"(overline(hat(x)) dot.o hat(x))),
  quad overline(hat(x)) = gamma dot.o overline(y), quad
  overline(gamma) = sum_n overline(y)_n dot.o hat(x)_n $
""",
    "GELU (tanh form)": """
GPT-2's MLP uses the tanh approximation of $x Phi(x)$:

$ g(x) = x/2 (1 + tanh u), quad u = sqrt(2/pi) (x + a x^3) $

with the product rule and $tanh' = 1 - tanh^2$,

$ g'(x) = 1/2 (1 + tanh u) + x/2 (1 - tanh^2 u) sqrt(2/pi) (1 + 3 a x^2), quad
  overline(x) = g'(x) overline(y) $
""",
    "Causal scaled dot-product attention": """
Per head, with $Q, K, V in RR^(T times D)$ and the causal mask $M$:

$ S = (Q K^top) / sqrt(D) + M, quad P = "softmax"_"row" (S), quad O = P V $

Backwards through the three steps: the products give $overline(V) = P^top overline(O)$ and
$overline(P) = overline(O) V^top$; the softmax's Jacobian, row by row, gives

$ overline(S)_(i j) = P_(i j) (overline(P)_(i j) - sum_k overline(P)_(i k) P_(i k)) $

(masked entries have $P_(i j) = 0$ and get nothing), and the scores
$S = Q K^top \\/ sqrt(D)$ give

$ overline(Q) = overline(S) K / sqrt(D), quad overline(K) = overline(S)^top Q / sqrt(D) $
""",
}


def write(ctx: BookContext) -> str:
    checks = verified_gradient_checks()  # raises if any hand gradient is wrong
    missing = [c.name for c in checks if c.name not in DERIVATIONS]
    if missing:
        raise RuntimeError(f"appendix A has no derivation written for {missing}")
    summary = tm.table(
        ["layer", "hand-written backward", "max |hand − autograd|"],
        [[c.name, c.backward_symbol.partition(":")[2], tm.number(c.max_error, 3)] for c in checks],
        align="left, left, right",
    )
    parts = [
        f"= {TITLE}",
        f"""
Training needs the gradient of the loss with respect to every weight, and PyTorch's autograd
computes it by running each operation's derivative backwards. This appendix writes those
derivatives out by hand for the layers of the model. A bar marks the gradient of the loss $L$
with respect to a quantity, $overline(x) = partial L \\/ partial x$, $dot.o$ is the elementwise
product, and sums over $n$ run over the rows of a batch.

Each hand-written backward below was checked while this book was built: on random float64
inputs, against autograd differentiating the operation the model really calls
({tm.inline_code("F.cross_entropy")}, {tm.inline_code("F.linear")},
{tm.inline_code("F.layer_norm")}, {tm.inline_code("F.rms_norm")},
{tm.inline_code('F.gelu(approximate="tanh")')},
{tm.inline_code("F.scaled_dot_product_attention")}). The book is not built if any error reaches
{tm.text(tm.number(GRADIENT_TOLERANCE))}.
""",
        summary,
    ]
    for check in checks:
        parts.append(layer_section(ctx, check))
    parts.append(
        "\n== How the checks are made\nAutograd differentiates the forward operation with a "
        "random upstream gradient, the hand function gets the same inputs and upstream "
        "gradient, and the largest entrywise difference over all of the gradients is printed:\n"
        + ctx.listing("scratchlm.book.derivatives:max_gradient_error")
    )
    return "\n".join(parts)


def layer_section(ctx: BookContext, check: GradientCheck) -> str:
    derivation = DERIVATIONS[check.name]
    if check.name == "GELU (tanh form)":
        derivation += f"\nwhere $a = {tm.text(GELU_CUBIC)}$.\n"
    return (
        f"\n== {tm.text(check.name)}\n"
        + derivation
        + ctx.listing(check.backward_symbol)
        + f"Checked against autograd: max |hand − autograd| = {tm.text(tm.number(check.max_error, 3))}.\n"
    )
