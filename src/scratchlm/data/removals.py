"""What a cleaning or deduplication stage took out of the corpus, and why.

Every stage that drops documents or lines (clean.py, dedup.py) fills one `RemovalReport`: how
much went in, how much came out, and for each reason (a quality rule, "near_duplicate",
"repeated_line", ...) how many documents it removed, how many it only shortened, how many lines
and bytes it took, and a few examples to read. The books always balance:

    documents_in = documents_out + sum of documents removed over the reasons
    bytes_in     = bytes_out     + sum of bytes removed over the reasons

so a summary that does not add up is a bug, and a test checks it. Bytes are UTF-8 bytes, the
unit the tokenizer sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Examples kept per reason: enough to see what a rule catches, few enough to read.
MAX_EXAMPLES = 5
# Characters of a document shown in an example.
EXCERPT_CHARS = 160


def utf8_len(text: str) -> int:
    """The length of `text` in UTF-8 bytes. Lone surrogates (which UTF-8 cannot hold) count 3."""
    return len(text.encode("utf-8", errors="surrogatepass"))


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """The start of `text` on one line, for a report."""
    flat = " ".join(text[: limit * 2].split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@dataclass
class Removal:
    """What one reason took out."""

    documents: int = 0  # documents removed whole
    edited: int = 0  # documents kept but made shorter (lines removed, text normalised)
    lines: int = 0  # lines removed (from kept and removed documents alike)
    bytes: int = 0  # UTF-8 bytes removed (negative if normalising made text longer)
    examples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RemovalReport:
    """The removals of one stage; see the module docstring for the arithmetic."""

    stage: str
    documents_in: int = 0
    bytes_in: int = 0
    documents_out: int = 0
    bytes_out: int = 0
    reasons: dict[str, Removal] = field(default_factory=dict)
    # Stage-specific numbers worth reporting (LSH bands and rows, candidate pairs, ...).
    details: dict[str, Any] = field(default_factory=dict)
    max_examples: int = MAX_EXAMPLES

    def reason(self, name: str) -> Removal:
        """The counters of one reason, created empty on first use (so listing order is stable)."""
        if name not in self.reasons:
            self.reasons[name] = Removal()
        return self.reasons[name]

    # -------------------------------------------------------------------- recording, by stages

    def document_in(self, text: str) -> None:
        self.documents_in += 1
        self.bytes_in += utf8_len(text)

    def document_out(self, text: str) -> None:
        self.documents_out += 1
        self.bytes_out += utf8_len(text)

    def remove_document(
        self, reason: str, origin: str, text: str, lines: int = 0, **facts: Any
    ) -> None:
        """Count `text` (what was left of the document) as removed whole, for `reason`."""
        entry = self.reason(reason)
        entry.documents += 1
        entry.lines += lines
        entry.bytes += utf8_len(text)
        self.add_example(reason, {"origin": origin, **facts, "excerpt": excerpt(text)})

    def shorten_document(self, reason: str, removed_bytes: int, lines: int = 0) -> None:
        """Count a kept document that lost `removed_bytes` (and `lines` lines) for `reason`."""
        entry = self.reason(reason)
        entry.edited += 1
        entry.lines += lines
        entry.bytes += removed_bytes

    def add_example(self, reason: str, example: dict[str, Any]) -> None:
        examples = self.reason(reason).examples
        if len(examples) < self.max_examples:
            examples.append(example)

    def merge(self, later: RemovalReport) -> None:
        """Add the counts of `later`, a report of the same stage over the documents that came
        after ours (a batch cleaned by a worker process), as if one report had seen them all.

        Examples are taken in order until the limit; one that repeats an earlier example in
        all but its origin (the same boilerplate line seen by two workers) is left out.
        """
        for attribute in ("documents_in", "bytes_in", "documents_out", "bytes_out"):
            setattr(self, attribute, getattr(self, attribute) + getattr(later, attribute))
        for name, theirs in later.reasons.items():
            ours = self.reason(name)
            ours.documents += theirs.documents
            ours.edited += theirs.edited
            ours.lines += theirs.lines
            ours.bytes += theirs.bytes
            for example in theirs.examples:
                facts = {k: v for k, v in example.items() if k != "origin"}
                if any(
                    {k: v for k, v in e.items() if k != "origin"} == facts for e in ours.examples
                ):
                    continue
                self.add_example(name, example)
        self.details.update(later.details)

    # -------------------------------------------------------------------- reading

    @property
    def documents_removed(self) -> int:
        return sum(r.documents for r in self.reasons.values())

    @property
    def bytes_removed(self) -> int:
        return sum(r.bytes for r in self.reasons.values())

    def balances(self) -> bool:
        """Whether the counts add up (they always should; see the module docstring)."""
        return (
            self.documents_in == self.documents_out + self.documents_removed
            and self.bytes_in == self.bytes_out + self.bytes_removed
        )

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types only, so `json.dumps(report.to_json())` always works."""
        return {
            "stage": self.stage,
            "documents_in": self.documents_in,
            "bytes_in": self.bytes_in,
            "documents_out": self.documents_out,
            "bytes_out": self.bytes_out,
            "reasons": {
                name: {
                    "documents": r.documents,
                    "edited": r.edited,
                    "lines": r.lines,
                    "bytes": r.bytes,
                    "examples": r.examples,
                }
                for name, r in self.reasons.items()
            },
            "details": self.details,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RemovalReport:
        """The report `to_json` described (to print the summary of a saved report)."""
        report = cls(
            stage=data["stage"],
            documents_in=data["documents_in"],
            bytes_in=data["bytes_in"],
            documents_out=data["documents_out"],
            bytes_out=data["bytes_out"],
            details=dict(data.get("details", {})),
        )
        for name, r in data.get("reasons", {}).items():
            report.reasons[name] = Removal(
                r["documents"], r["edited"], r["lines"], r["bytes"], list(r["examples"])
            )
        return report

    def summary(self) -> str:
        """A few lines for people: totals, then one line per reason that did something."""
        lines = [
            f"{self.stage}: {self.documents_in:,} documents in ({_size(self.bytes_in)}), "
            f"{self.documents_out:,} out ({_size(self.bytes_out)})"
        ]
        for name, r in self.reasons.items():
            if not (r.documents or r.edited or r.lines or r.bytes):
                continue
            parts = []
            if r.documents:
                parts.append(f"{r.documents:,} documents removed")
            if r.edited:
                parts.append(f"{r.edited:,} edited")
            if r.lines:
                parts.append(f"{r.lines:,} lines")
            parts.append(_size(r.bytes))
            lines.append(f"  {name}: " + ", ".join(parts))
            for example in r.examples:
                lines.append("    e.g. " + _describe(example))
        if self.details:
            lines.append("  " + ", ".join(f"{key}={value}" for key, value in self.details.items()))
        return "\n".join(lines)


def _describe(example: dict[str, Any]) -> str:
    """'origin (fact=value, ...): excerpt', leaving out what the example does not have."""
    facts = ", ".join(f"{k}={v}" for k, v in example.items() if k not in ("origin", "excerpt"))
    text = str(example.get("origin", ""))
    if facts:
        text += f" ({facts})" if text else facts
    if example.get("excerpt"):
        text += f": {example['excerpt']}"
    return text


def _size(n: int) -> str:
    return f"{n:,} bytes"
