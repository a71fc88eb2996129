"""Chapter 2, Data Engineering: from raw text to token shards, told with the reader's data report.

The pipeline's key functions (listed by symbol), what the run's cleaning and deduplication
removed and why (data/report.json), the MinHash/LSH math with the run's own bands and rows, the
document-length histogram, and the vocabulary-size trade-off: read from a `tokenizer study`
result in the run when there is one, else measured here on a small sample of the run's training
text (a few seconds). A run without a data stage (an imported model) gets notes instead.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from scratchlm.book import typst_markup as tm
from scratchlm.book.context import BookContext
from scratchlm.book.listings import find_listing

TITLE = "Data Engineering"

# The pipeline in order: (stage, symbol of the function or class that does it, what it does).
PIPELINE: list[tuple[str, str, str]] = [
    ("read", "scratchlm.data.readers:DocumentReader", "text, JSONL and archives to documents"),
    ("normalise", "scratchlm.data.clean:normalise_text", "NFC, line endings, invisible marks"),
    ("quality rules", "scratchlm.data.clean:first_failure", "Gopher-style filters"),
    ("exact dedup", "scratchlm.data.dedup:exact_dedup", "same text after case and spacing"),
    ("boilerplate", "scratchlm.data.dedup:remove_repeated_lines", "lines in many documents"),
    ("near dedup", "scratchlm.data.dedup:near_dedup", "MinHash + LSH, Jaccard threshold"),
    ("signatures", "scratchlm.data.minhash:MinHasher", "num_perm minima per document"),
    ("all passes", "scratchlm.data.pipeline:run_pipeline", "the stages over a spill file"),
    ("tokenizer", "scratchlm.tokenizer.training:learn_bpe", "byte-level BPE merges"),
    ("shards", "scratchlm.data.prepare:prepare_shards", "token ids to train/val shards"),
    ("shard file", "scratchlm.data.shards:TokenShardWriter", "flat uint16/uint32 token files"),
]

# Why each removal reason exists, in a sentence (the reasons a report can name).
REASON_WHY: dict[str, str] = {
    "normalised": "characters no reader sees (control and zero-width marks, trailing spaces, "
    "extra blank lines) taken out; documents kept",
    "empty": "nothing left after normalisation",
    "exact_duplicate": "the same text as an earlier document (ignoring case and spacing)",
    "repeated_line": "a long line found in too many documents: boilerplate",
    "near_duplicate": "shares most of its word shingles with an earlier document",
}
RULE_WHY = "failed a quality rule: its measurement was outside the allowed range"

# Similarities at which the chapter tabulates the LSH candidate probability.
SIMILARITIES = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)

# Vocabulary sizes the chapter trains when the run has no study; the run's own size is added.
STUDY_SIZES = (512, 1024, 2048, 4096)
STUDY_SAMPLE_CHARS = 300_000  # enough text for a clear trend, trained in about a second
STUDY_FILES = ("tokenizer-study/study.json", "study.json")  # where a run may keep a study


def write(ctx: BookContext) -> str:
    parts = [f"= {TITLE}\n", intro(), pipeline_section(ctx)]
    report = ctx.json_file("data/report.json")
    if report is None:
        parts.append(
            "== What your data report removed\n"
            + ctx.missing(
                "data stage (an imported or fine-tuned model keeps no data report)",
                "scratchlm data prepare SOURCE --tokenizer T --out DIR",
            )
        )
    else:
        parts.append(removals_section(report))
    parts.append(near_dedup_section(ctx, report))
    parts.append(lengths_section(ctx, report))
    parts.append(vocabulary_section(ctx))
    parts.append(merge_loop_section(ctx))
    return "\n".join(parts)


def intro() -> str:
    return """
A model learns what its training text holds, repetitions and junk included. This chapter
follows the text of your run from the files it was read from to the token shards training
reads: how it was cleaned, which documents were dropped as duplicates and why, how long the
documents are, and how the tokenizer's vocabulary size trades compression against parameters.
"""


# ------------------------------------------------------------------------------ the pipeline


def pipeline_section(ctx: BookContext) -> str:
    rows = []
    for stage, symbol, what in PIPELINE:
        found = find_listing(symbol, ctx.source_root)
        rows.append((stage, symbol.split(":")[1], f"{found.path}:{found.first_line}", what))
    return f"""
== The pipeline

`scratchlm data prepare` (and `scratchlm train`, which prepares a run's data first) streams
every document through the stages below, in this order. Exact duplicates go first because
they are the cheapest to find; boilerplate lines go before near-duplicate search, so that two
pages sharing a site's header are not called duplicates because of it. Two stages must see
every document before judging one (a line is boilerplate if it is in many documents; a
document is a near-duplicate of any other), so the cleaned text is written to a spill file
and read again.

#figure({tm.table(["stage", "symbol", "where", "what it does"], rows, align="left, left, left, left").strip().removeprefix("#")}, caption: [The data pipeline's key functions, by symbol, with the file and line where each starts.])

The quality rules are tried cheapest first and the first one a document fails decides, so
every removed document has exactly one reason:

{ctx.listing("scratchlm.data.clean:first_failure")}"""


def removals_section(report: dict[str, Any]) -> str:
    totals = report["totals"]
    stage_rows = []
    reason_rows = []
    for stage in report["stages"]:
        removed = stage["documents_in"] - stage["documents_out"]
        stage_rows.append(
            (
                stage["stage"],
                tm.number(stage["documents_in"]),
                tm.number(stage["documents_out"]),
                tm.number(removed),
                tm.number(stage["bytes_in"] - stage["bytes_out"]),
            )
        )
        for name, reason in stage["reasons"].items():
            if reason["documents"] or reason["edited"]:
                why = REASON_WHY.get(name, RULE_WHY)
                reason_rows.append(
                    (
                        name,
                        tm.number(reason["documents"]),
                        tm.number(reason["edited"]),
                        tm.number(reason["bytes"]),
                        why,
                    )
                )
    skipped = report["settings"].get("clean", {}) or {}
    off_rules = skipped.get("skip") or []
    rules_note = (
        f"The quality rules were switched off for this run ({tm.number(len(off_rules))} "
        "rules skipped, e.g. with `clean.filters = false` for text that is known to be good, "
        "like a book), so cleaning only normalised the text."
        if off_rules and len(off_rules) >= 11
        else ""
    )
    removed_docs = totals["documents_in"] - totals["documents_out"]
    removed_bytes = totals["bytes_in"] - totals["bytes_out"]
    reasons = (
        tm.table(
            ["reason", "removed", "shortened", "bytes", "why"],
            reason_rows,
            align="left, right, right, right, left",
        )
        if reason_rows
        else tm.note("Nothing was removed or shortened: the text was already clean and unique.")
    )
    examples = removal_examples(report)
    return f"""
== What your data report removed

Your run read {tm.text(tm.number(totals["documents_in"]))} documents
({tm.text(tm.number(totals["bytes_in"]))} bytes) from {tm.text(", ".join(report["settings"]["sources"]))}
and kept {tm.text(tm.number(totals["documents_out"]))} ({tm.text(tm.number(totals["bytes_out"]))} bytes):
{tm.text(count(removed_docs, "document"))} and {tm.text(count(removed_bytes, "byte"))} went.
Every stage's books balance: documents in = documents out + documents removed, and the same
for bytes (`data/removals.py` checks it).

#figure({tm.table(["stage", "documents in", "out", "removed", "bytes removed"], stage_rows).strip().removeprefix("#")}, caption: [Each stage of your run's data pipeline (data/report.json).])

{rules_note}

#figure({reasons.strip().removeprefix("#")}, caption: [Why text was removed: each reason, the documents it removed whole and those it only shortened.])
{examples}"""


def count(n: int, noun: str) -> str:
    """ "1 document", "2 documents": a count as a reader says it."""
    return f"{tm.number(n)} {noun}{'' if n == 1 else 's'}"


def removal_examples(report: dict[str, Any]) -> str:
    """One example per reason that removed documents: what was dropped, and what it copied."""
    lines = []
    for stage in report["stages"]:
        for name, reason in stage["reasons"].items():
            if not reason["documents"] or not reason["examples"]:
                continue
            example = reason["examples"][0]
            of = example.get("duplicate_of")
            copy = f" (a copy of {tm.inline_code(str(of))})" if of else ""
            excerpt = str(example.get("excerpt", ""))[:120]
            lines.append(
                f"- {tm.inline_code(name)}: {tm.inline_code(str(example.get('origin', '?')))}"
                f"{copy}: _{tm.text(excerpt)}_"
            )
    if not lines:
        return ""
    return "An example of each, from the report:\n\n" + "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- MinHash and LSH math


def run_banding(ctx: BookContext, report: dict[str, Any] | None) -> dict[str, Any] | None:
    """threshold, num_perm, bands, rows of the run: the report's (what ran), else the run's
    [dedup] config resolved as the pipeline resolves it; None when near dedup is off."""
    from scratchlm.data.config import DedupConfig

    if report is not None:
        for stage in report["stages"]:
            details = stage.get("details") or {}
            if stage["stage"] == "near_dedup" and details.get("bands"):
                return {**details, "source": "your data report"}
    table = ctx.config.get("dedup")
    fields = {f.name for f in dataclasses.fields(DedupConfig)}
    dedup = DedupConfig(**{k: v for k, v in (table or {}).items() if k in fields})
    near = dedup.near_config()
    if near is None:
        return None
    bands, rows = near.banding()
    return {
        "threshold": near.threshold,
        "num_perm": near.num_perm,
        "shingle_size": near.shingle_size,
        "bands": bands,
        "rows": rows,
        "source": "the [dedup] section of your config" if table else "the default [dedup]",
    }


def near_dedup_section(ctx: BookContext, report: dict[str, Any] | None) -> str:
    from scratchlm.data.minhash import candidate_probability

    banding = run_banding(ctx, report)
    math = """
== Near duplicates: MinHash and LSH

Two documents are near duplicates when their sets of word shingles (overlapping runs of $k$
words) $A$ and $B$ have a high Jaccard similarity
$ J(A, B) = (|A inter B|) / (|A union B|). $
Comparing all $n^2$ pairs exactly is too slow, so each document gets a MinHash signature:
under a random permutation $pi$ of all shingles, the first shingle of $A union B$ lies in
$A inter B$ with probability $J$, and exactly then $min pi(A) = min pi(B)$. With
$m$ permutations the share of agreeing minima estimates $J$ with standard error
$sqrt(J(1-J) \\/ m)$.

LSH banding finds the candidate pairs without comparing them all: cut the signature into $b$
bands of $r$ rows and put every band in a hash table; two documents become candidates when
all $r$ rows of at least one band agree. One band agrees with probability $s^r$, so a pair of
similarity $s$ becomes a candidate with probability
$ P(s) = 1 - (1 - s^r)^b, $
an S-shaped curve whose steepest rise is near $s approx (1\\/b)^(1\\/r)$. The code picks $b$ and
$r$ for a threshold $t$ by weighing the area of false positives below $t$ against the area of
false negatives above it:
"""
    listings = ctx.listing("scratchlm.data.minhash:candidate_probability") + ctx.listing(
        "scratchlm.data.minhash:lsh_bands"
    )
    if banding is None:
        return (
            math
            + listings
            + ctx.missing(
                "near-duplicate search (dedup.near is off)",
                "scratchlm data prepare SOURCE --dedup.near true ...",
            )
        )
    b, r = int(banding["bands"]), int(banding["rows"])
    t, m = float(banding["threshold"]), int(banding["num_perm"])
    rows = [(tm.number(s), tm.number(candidate_probability(s, b, r), 4)) for s in SIMILARITIES]
    figure = s_curve_figure(ctx, b, r, t)
    found = ""
    if report is not None and "candidate_pairs" in banding:
        found = (
            f"In your data LSH proposed {tm.text(tm.number(banding['candidate_pairs']))} candidate "
            f"pairs; {tm.text(tm.number(banding['verified_pairs']))} were confirmed at or above the "
            f"threshold ({tm.text(banding.get('verify', ''))} verification), forming "
            f"{tm.text(tm.number(banding['clusters']))} clusters, and "
            f"{tm.text(tm.number(banding['duplicates']))} documents were dropped as near duplicates."
        )
    return f"""{math}{listings}
Your run (from {tm.text(banding["source"])}) searched at threshold $t = {t}$ with $m = {m}$
permutations of {tm.text(tm.number(int(banding.get("shingle_size", 5))))}-word shingles, cut
into *$b = {b}$ bands of $r = {r}$ rows*. The curve's steepest point is at
$(1\\/{b})^(1\\/{r}) approx$ {tm.text(tm.number((1 / b) ** (1 / r), 3))}. {found}

#figure({tm.table(["similarity s", "P(candidate)"], rows).strip().removeprefix("#")}, caption: [$P(s) = 1 - (1 - s^{r})^{b}$ at a few similarities, computed while building.])

{tm.figure("figures/" + figure.name, f"The S-curve of your run's banding, $b = {b}$, $r = {r}$: pairs right of the threshold should become candidates, pairs left of it should not.", width="85%")}"""


def s_curve_figure(ctx: BookContext, bands: int, rows: int, threshold: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    s = np.linspace(0.0, 1.0, 401)
    p = 1.0 - (1.0 - s**rows) ** bands
    fig, ax = plt.subplots(figsize=(5.5, 3.0), dpi=150)
    ax.plot(s, p, color="tab:blue", label=f"b = {bands}, r = {rows}")
    ax.fill_between(s, p, where=s < threshold, color="tab:red", alpha=0.15, label="false positives")
    ax.fill_between(
        s, p, 1.0, where=s >= threshold, color="tab:orange", alpha=0.2, label="false negatives"
    )
    ax.axvline(threshold, color="grey", linestyle="--", linewidth=1, label=f"threshold {threshold}")
    ax.set_xlabel("Jaccard similarity s of a pair")
    ax.set_ylabel("P(pair becomes a candidate)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = ctx.figure_path("lsh_s_curve.png")
    fig.savefig(path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- document lengths


def lengths_section(ctx: BookContext, report: dict[str, Any] | None) -> str:
    head = "\n== Document lengths\n"
    if report is None or "lengths" not in report:
        return head + ctx.missing(
            "data report with document lengths", "scratchlm data prepare SOURCE ... --out DIR"
        )
    path = lengths_figure(ctx, report)
    lengths = report["lengths"]["tokens_out"]
    counts, edges = lengths["counts"], lengths["edges"]
    mode = max(range(len(counts)), key=counts.__getitem__)
    return f"""{head}
How long the documents are decides how they fill the context window: training cuts the token
stream into windows of `block_size` tokens regardless of document boundaries, with one
end-of-text token between documents, so a long document spans many windows and a short one
shares its window with others. The histogram bins double in width (powers of two). Most of
your kept documents ({tm.text(tm.number(counts[mode]))} of {tm.text(tm.number(sum(counts)))}) have
between {tm.text(tm.number(edges[mode]))} and {tm.text(tm.number(edges[mode + 1]))} tokens.

{tm.figure("figures/" + path.name, "Document lengths in your data report: bytes per document before and after cleaning and deduplication (left), tokens per document kept (right).")}"""


def lengths_figure(ctx: BookContext, report: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths, totals = report["lengths"], report["totals"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(6.6, 2.8), dpi=150)
    for key, label, color in (
        ("bytes_in", f"read ({totals['documents_in']:,})", "tab:blue"),
        ("bytes_out", f"kept ({totals['documents_out']:,})", "tab:orange"),
    ):
        left.stairs(lengths[key]["counts"], lengths[key]["edges"], label=label, color=color)
    right.stairs(lengths["tokens_out"]["counts"], lengths["tokens_out"]["edges"], color="tab:green")
    left.set_xlabel("bytes per document", fontsize=8)
    right.set_xlabel("tokens per kept document", fontsize=8)
    left.legend(fontsize=7)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_ylabel("documents", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = ctx.figure_path("document_lengths.png")
    fig.savefig(path)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------- vocabulary scaling


def vocabulary_section(ctx: BookContext) -> str:
    from scratchlm.tokenizer.study import StudyResult, StudyRow, plot_study

    head = """
== Tokenizer vocabulary scaling

A larger vocabulary packs more bytes into each token, so the model sees more text per
context window and per step; but every token costs a row of the embedding matrix, and another
of the output head unless the two are tied: $V times C$ parameters each, for vocabulary $V$ and
width $C$. Bytes per token is measured on held-out text the tokenizer never trained on.
"""
    study, where = read_study(ctx)
    if study is None:
        study, where = sample_study(ctx)
    if study is None:
        return head + ctx.missing(
            "training text to measure the vocabulary on (no data/ shards)",
            "scratchlm tokenizer study --input SOURCE --sizes 512,1024,2048,4096",
        )
    result = StudyResult(
        **{k: v for k, v in study.items() if k != "rows"},
        rows=[StudyRow(**row) for row in study["rows"]],
    )
    path = plot_study(result, ctx.figure_path("vocabulary_study.png"))
    rows = [
        (
            tm.number(row.vocab_size),
            f"{row.bytes_per_token:.3f}",
            tm.number(row.heldout_tokens),
            tm.number(row.params_tied),
            tm.number(row.params_untied),
        )
        for row in result.rows
    ]
    first, last = result.rows[0], result.rows[-1]
    gain = last.bytes_per_token / first.bytes_per_token
    return f"""{head}
{where} The tokenizers were trained on {tm.text(tm.number(result.train_documents))} documents
({tm.text(tm.number(result.train_bytes))} bytes) and measured on
{tm.text(tm.number(result.heldout_documents))} held-out ones
({tm.text(tm.number(result.heldout_bytes))} bytes), split by {tm.text(result.split_by)};
parameters are for your width $C =$ {tm.text(tm.number(result.width))}. Going from
{tm.text(tm.number(first.vocab_size))} to {tm.text(tm.number(last.vocab_size))} tokens multiplies
bytes per token by {tm.text(f"{gain:.2f}")} and the embedding parameters by
{tm.text(f"{last.params_tied / first.params_tied:.1f}")}: compression grows roughly with the
logarithm of the vocabulary, its cost linearly.

#figure({tm.table(["vocabulary", "bytes/token", "held-out tokens", "tied emb.", "untied emb. + head"], rows).strip().removeprefix("#")}, caption: [Vocabulary size against compression and parameters.])

{tm.figure("figures/" + path.name, "Held-out bytes per token (left axis) and embedding parameters (right axis) against vocabulary size.", width="85%")}"""


def read_study(ctx: BookContext) -> tuple[dict[str, Any] | None, str]:
    """A `scratchlm tokenizer study` result kept in the run, if any."""
    for relative in STUDY_FILES:
        study = ctx.json_file(relative)
        if isinstance(study, dict) and study.get("rows"):
            return study, f"From your run's `tokenizer study` ({tm.inline_code(relative)})."
    return None, ""


def sample_study(ctx: BookContext) -> tuple[dict[str, Any] | None, str]:
    """The study, measured now on a sample of the run's training shards decoded back to text
    (the cleaned text the run's tokenizer was trained on), at a few small sizes."""
    from scratchlm.data.shards import open_shard
    from scratchlm.runs.layout import load_tokenizer
    from scratchlm.tokenizer.study import study_vocab_sizes

    if not ctx.paths.is_prepared():
        return None, ""
    tokenizer = load_tokenizer(ctx.run_dir)
    shard = open_shard(ctx.paths.shards("train")[0])
    # An equal share of the sample from each document (up to 200 of them), so the held-out
    # split has many documents; ~3 bytes per token is a fair guess for the share's size.
    documents = min(shard.num_documents, 200)
    per_document = max(STUDY_SAMPLE_CHARS // documents // 3, 64)
    texts = [tokenizer.decode(shard.document(i)[:per_document].tolist()) for i in range(documents)]
    texts = [text for text in texts if text.strip()]
    width = int(ctx.config.get("model", {}).get("n_embd", 768))
    run_vocab = int(ctx.config.get("tokenizer", {}).get("vocab_size", 0))
    sizes = sorted({*STUDY_SIZES, *([run_vocab] if 257 <= run_vocab <= 8192 else [])})
    result = study_vocab_sizes(texts, sizes, width)
    sample_bytes = result.train_bytes + result.heldout_bytes
    where = (
        "Your run has no `tokenizer study` result, so this one was measured while the book was "
        f"built, on a sample of {tm.text(tm.number(sample_bytes))} bytes of your training text "
        "(decoded from its shards); run `scratchlm tokenizer study` for a larger one."
    )
    return result.to_json(), where


# --------------------------------------------------------------------------- BPE merge loop


def merge_loop_section(ctx: BookContext) -> str:
    return f"""
== BPE's merge loop

Byte-level BPE starts from the 256 byte values and repeatedly merges the most frequent
adjacent pair of ids into a new id, until the vocabulary is full. The split regex first cuts
the text into chunks (words with their leading space, numbers, punctuation), merges never
cross a chunk boundary, so training only needs how often each distinct chunk occurs. A heap
gives the most frequent pair; a merge rewrites only the chunks that hold it, and counts that
went stale are fixed when they come to the top of the heap ("lazy invalidation"):

{ctx.listing("scratchlm.tokenizer.training:learn_merges")}
Each merge of a pair $a b$ between neighbours $x$ and $y$ turns $x a b y$ into $x n y$: the
pairs $(x, a)$ and $(b, y)$ lose the chunk's weight, $(x, n)$ and $(n, y)$ gain it.

{ctx.listing("scratchlm.tokenizer.training:_apply_merge")}"""
