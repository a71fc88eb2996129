"""Chapter 6, From model to chatbot: classification, SFT with loss masking, LoRA and DPO, the
fine-tunes of the reader's run, and a short conversation with it.

A fine-tune of this run is the run itself when it has a finetune.json, or a sibling folder (in
the run's parent) whose config.toml [finetune] base names this run; their numbers are read from
their finetune.json. The transcript is generated while building (greedy, a few tokens) with the
first of them that has a chat template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scratchlm.book import typst_markup as tm
from scratchlm.book.context import BookContext
from scratchlm.core.config_files import read_toml
from scratchlm.core.errors import ScratchLMError

TITLE = "From model to chatbot"

CHAT_PROMPTS = ("Hello! How are you today?", "What do you like to do?")
CHAT_REPLY_TOKENS = 24


@dataclass(frozen=True)
class FinetuneRun:
    folder: Path
    config: dict[str, Any]  # its config.toml
    results: dict[str, Any]  # its finetune.json

    @property
    def task(self) -> str:
        return str(self.results.get("task") or self.config.get("finetune", {}).get("task", "?"))

    @property
    def lora_rank(self) -> int:
        lora = self.config.get("finetune", {}).get("lora", {})
        return int(lora.get("r", 0)) if isinstance(lora, dict) else 0


def _read_finetune(folder: Path) -> FinetuneRun | None:
    config_path, results_path = folder / "config.toml", folder / "finetune.json"
    if not (config_path.is_file() and results_path.is_file()):
        return None
    try:
        config = read_toml(config_path)
        results = json.loads(results_path.read_text(encoding="utf-8"))
    except (ScratchLMError, OSError, ValueError):
        return None
    return FinetuneRun(folder, config, results) if isinstance(results, dict) else None


def names_this_run(base: object, run_dir: Path) -> bool:
    """Whether a [finetune] base value ("runs/chat-base", an absolute path) is this run."""
    if not isinstance(base, str) or not base:
        return False
    path = Path(base)
    if path.is_absolute():
        return path.resolve() == run_dir.resolve()
    # Relative to wherever the fine-tune was started: its last parts must be this run's.
    return run_dir.resolve().parts[-len(path.parts) :] == path.parts


def finetunes_of(run_dir: Path) -> list[FinetuneRun]:
    """The run itself if it is a fine-tune, then the sibling runs fine-tuned from it."""
    found = []
    own = _read_finetune(run_dir)
    if own is not None:
        found.append(own)
    parent = run_dir.resolve().parent
    for folder in sorted(p for p in parent.iterdir() if p.is_dir() and p != run_dir.resolve()):
        run = _read_finetune(folder)
        if run is not None and names_this_run(run.config.get("finetune", {}).get("base"), run_dir):
            found.append(run)
    return found


def _pair(values: object) -> tuple[float, float] | None:
    if isinstance(values, dict) and {"base", "tuned"} <= values.keys():
        base, tuned = values["base"], values["tuned"]
        if isinstance(base, int | float) and isinstance(tuned, int | float):
            return float(base), float(tuned)
    return None


def result_rows(run: FinetuneRun) -> list[list[str]]:
    """(metric, before, after) of a fine-tune's finetune.json: what its task measures."""
    r = run.results
    rows: list[list[str]] = []

    def add(name: str, values: object, digits: int = 4) -> None:
        pair = _pair(values)
        if pair is not None:
            rows.append([name, f"{pair[0]:.{digits}f}", f"{pair[1]:.{digits}f}"])

    add("loss on held-out assistant tokens", r.get("assistant_token_loss"))
    replies = r.get("replies")
    if isinstance(replies, dict):
        for key, name in (("end_of_turn_rate", "replies ending their turn"),
                          ("exact_match_rate", "replies matching the reference")):  # fmt: skip
            add(name, {k: v.get(key) for k, v in replies.items() if isinstance(v, dict)}, 3)
    add("held-out preference accuracy", r.get("held_out_preference_accuracy"), 3)
    add("held-out DPO loss", r.get("held_out_dpo_loss"))
    generations = r.get("generations")
    if isinstance(generations, dict):
        add(str(generations.get("measure", "generations")), generations, 2)
    for split in ("val", "test"):
        scores = r.get(split)
        if isinstance(scores, dict):
            for key in ("accuracy", "macro_f1"):
                if isinstance(scores.get(key), int | float):
                    rows.append([f"{split} {key.replace('_', ' ')}", "", f"{scores[key]:.4f}"])
    return rows


# --- the chapter -------------------------------------------------------------------------------


def write(ctx: BookContext) -> str:
    runs = finetunes_of(ctx.run_dir)
    return "\n".join(
        [
            f"= {TITLE}",
            _introduction(),
            _classification_section(ctx),
            _sft_section(ctx),
            _lora_section(ctx),
            _dpo_section(ctx),
            _your_finetunes_section(ctx, runs),
            _chat_section(ctx, runs),
        ]
    )


def _introduction() -> str:
    return """
A pretrained model continues text. To make it do a job (sort e-mails, answer in turns, prefer
one kind of answer) it is trained a little more, on far less data, for that job: fine-tuning.
`scratchlm finetune` makes each fine-tune a new run folder whose `[finetune] base` is
the model it starts from.
"""


def _classification_section(ctx: BookContext) -> str:
    return f"""
== Classification

A classifier replaces the language-model head (vocabulary-sized) with a small one of $K$
outputs, one per label, read at the last real token of the text: the causal model has seen the
whole text only there. The loss is cross-entropy over the $K$ labels; `finetune.classify`'s
`trainable` chooses whether every weight, the last blocks or only the head learn.

{ctx.listing("scratchlm.finetune.classification:SequenceClassifier.features")}
{ctx.listing("scratchlm.finetune.classification:classification_loss")}
"""


def _sft_section(ctx: BookContext) -> str:
    return f"""
== Supervised fine-tuning with loss masking

SFT trains on conversations rendered with a chat template. The model should learn to _write the
assistant's replies_, not to predict the user's messages or the template's markup, so only the
reply tokens (and their end-of-turn token) are targets: with mask $m_i in {{0, 1}}$,

$ cal(L) = - (sum_i m_i ln p(x_i | x_(<i))) / (sum_i m_i). $

The mask is applied by writing $-1$, cross-entropy's ignore index, in place of every masked
target:

{ctx.listing("scratchlm.finetune.conversations:ChatExample.inputs_and_targets")}
"""


def _lora_section(ctx: BookContext) -> str:
    return f"""
== LoRA: low-rank adaptation

LoRA (Hu et al.) freezes a layer's weight $W in RR^(d_"out" times d_"in")$ and learns a
low-rank update beside it:

$ y = W x + alpha/r thin B A x, quad A in RR^(r times d_"in"), quad B in RR^(d_"out" times r). $

Only $r(d_"in" + d_"out")$ numbers train instead of $d_"out" d_"in"$. $B$ starts at zero, so the
model starts as the base model; $alpha \\/ r$ keeps the update's size steady when $r$ changes.
After training, $W + (alpha \\/ r) B A$ can be merged into the weight, and the model runs as
fast as before.

{ctx.listing("scratchlm.finetune.lora:LoRAAdapter.forward")}
{ctx.listing("scratchlm.finetune.lora:LoRAAdapter.delta_weight")}
"""


def _dpo_section(ctx: BookContext) -> str:
    return f"""
== DPO: learning from preferences

Direct Preference Optimization (Rafailov et al.) learns from pairs of replies to one prompt $x$,
a preferred $y_w$ and a rejected $y_l$, with no reward model. It compares the policy $pi$ being
trained with a frozen copy of where it started, $pi_"ref"$:

$ h = ln (pi(y_w|x)) / (pi_"ref"(y_w|x)) - ln (pi(y_l|x)) / (pi_"ref"(y_l|x)), quad
  cal(L)_"DPO" = -ln sigma(beta h). $

The loss falls as the policy raises the preferred reply's probability relative to the
reference more than the rejected one's; $beta$ sets how far it may move. At the start $pi =
pi_"ref"$, so $h = 0$ and the loss is $ln 2$.

{ctx.listing("scratchlm.finetune.dpo:dpo_loss")}
"""


def _your_finetunes_section(ctx: BookContext, runs: list[FinetuneRun]) -> str:
    head = "== Your fine-tunes\n"
    if not runs:
        return head + ctx.missing(
            "fine-tuned model",
            f"scratchlm finetune sft --base {ctx.run_dir} --data chitchat",
        )
    parts = [
        head,
        "Fine-tunes of this run (the run itself, or folders beside it whose [finetune] base is "
        "it), with the numbers of their finetune.json: before (the base model) and after.\n",
    ]
    for run in runs:
        what = run.task + (f" with LoRA (r = {run.lora_rank})" if run.lora_rank else "")
        data = run.results.get("data", run.config.get("finetune", {}).get("data", ""))
        parts.append(
            f"=== {tm.text(run.folder.name)}\n{tm.text(what)}, on {tm.text(data)}.\n\n"
            + tm.table(["measure", "before", "after"], result_rows(run) or [["(none)", "", ""]])
        )
    return "\n".join(parts)


def chat_transcript(run_dir: Path) -> list[tuple[str, str]]:
    """(user, reply) for CHAT_PROMPTS, greedy and short, from the run's chat model."""
    from scratchlm.inference.chat_session import ChatSession
    from scratchlm.inference.language_model import load_for_inference

    lm = load_for_inference(run_dir)
    session = ChatSession(lm, lm.sampling(temperature=0.0, max_new_tokens=CHAT_REPLY_TOKENS))
    return [(prompt, session.reply(prompt).text) for prompt in CHAT_PROMPTS]


def _chat_section(ctx: BookContext, runs: list[FinetuneRun]) -> str:
    head = "== Chatting with your model\n"
    folders = [ctx.run_dir] + [r.folder for r in runs]
    chat_runs = [f for f in folders if (f / "chat_template.jinja").is_file()]
    if not chat_runs:
        return head + tm.note(
            "Your run has no chat template, so it continues text rather than answering. "
            f"Fine-tune it on conversations with "
            f"{tm.inline_code(f'scratchlm finetune sft --base {ctx.run_dir} --data chitchat')}, "
            f"then talk to it with {tm.inline_code('scratchlm chat RUN')}."
        )
    run = chat_runs[0]
    try:
        transcript = chat_transcript(run)
    except (ScratchLMError, OSError) as e:
        return head + tm.note(f"The chat model could not be loaded: {tm.text(e)}")
    turns = "\n".join(
        f"#block(inset: (left: 8pt), stroke: (left: 1.5pt + luma(160)))[*user:* {tm.text(user)} \\\n"
        f"*model:* {tm.text(reply.strip() or '(empty reply)')}]"
        for user, reply in transcript
    )
    return f"""{head}
A conversation with {tm.text(run.name)}, generated while this book was built: greedy decoding
(temperature 0), at most {tm.number(CHAT_REPLY_TOKENS)} tokens a reply, through the model's own
chat template (`ChatSession`). Continue it with {tm.inline_code(f"scratchlm chat {run}")}.

{turns}
"""
