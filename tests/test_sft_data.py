"""SFT data: conversations rendered into token ids with the assistant-only loss mask, batching
(packing and padding), the JSONL reader and the named sets (chitchat, chatterbot).

Most tests use a tokenizer with no merges, so every ASCII character is one token and the
position of every token can be counted by hand.
"""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import pytest
import torch

from scratchlm.core.cache import cache_dir
from scratchlm.core.errors import ScratchLMError
from scratchlm.finetune import chat_data
from scratchlm.finetune.chat_data import (
    chatterbot_conversations,
    chitchat_conversations,
    deduplicate,
    load_chat_set,
    read_chat_jsonl,
    split_conversations,
)
from scratchlm.finetune.conversations import (
    CHATML_TEMPLATE,
    ChatExample,
    ChatFormat,
    chat_format_for,
    chatml_format,
    check_messages,
    describe_mask,
)
from scratchlm.finetune.sft_batches import SFTBatch, SFTBatches, collate, pack_rows
from scratchlm.inference.chat_template import encode_chat
from scratchlm.tokenizer import BPETokenizer

START, END, EOT, BOS = 257, 258, 256, 259  # the special ids of the byte tokenizer below


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    specials = {"<|endoftext|>": EOT, "<|im_start|>": START, "<|im_end|>": END, "<s>": BOS}
    return BPETokenizer(special_tokens=specials)  # no merges: one token per byte


def chars(text: str) -> list[int]:
    return list(text.encode())


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


TWO_EXCHANGES = [user("Hi"), assistant("Yo"), user("Ok?"), assistant("No")]


def trained(example: ChatExample) -> list[int]:
    return [i for i, m in enumerate(example.mask) if m]


# ---------------------------------------------------------------------------------------------
# The loss mask
# ---------------------------------------------------------------------------------------------


def test_chatml_mask_position_by_position(tok: BPETokenizer) -> None:
    example = chatml_format(tok).render(TWO_EXCHANGES)
    # <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n ... counted by hand:
    #  0: <|im_start|>  1-4: user  5: \n  6-7: Hi  8: <|im_end|>  9: \n
    # 10: <|im_start|>  11-19: assistant  20: \n  21-22: Yo  23: <|im_end|>  24: \n
    # 25: <|im_start|>  26-29: user  30: \n  31-33: Ok?  34: <|im_end|>  35: \n
    # 36: <|im_start|>  37-45: assistant  46: \n  47-48: No  49: <|im_end|>  50: \n
    expected_ids = []
    for role, content in [
        ("user", "Hi"),
        ("assistant", "Yo"),
        ("user", "Ok?"),
        ("assistant", "No"),
    ]:
        expected_ids += [START, *chars(f"{role}\n{content}"), END, *chars("\n")]
    assert example.ids == expected_ids and len(example) == 51
    assert (example.ids[23], example.ids[49]) == (END, END)
    # The replies and their end-of-turn tokens only: no header, no user turn, no final newline.
    assert trained(example) == [21, 22, 23, 47, 48, 49]
    assert example.exchange_starts == (0, 25)
    assert example.trained_tokens == 6
    shown = describe_mask(tok, example)
    assert shown.endswith("assistant\n[N][o][<|im_end|>]\n") and shown.count("[") == 6

    inputs, targets = example.inputs_and_targets()
    assert inputs == example.ids[:-1]
    # The token at i + 1 is learned from position i: "Y" is predicted after "assistant\n".
    assert [i for i, t in enumerate(targets) if t != -1] == [20, 21, 22, 46, 47, 48]
    assert [targets[i] for i in (20, 21, 22)] == [ord("Y"), ord("o"), END]


def test_a_system_message_is_context(tok: BPETokenizer) -> None:
    example = chatml_format(tok).render([{"role": "system", "content": "Be"}, *TWO_EXCHANGES[:2]])
    prefix = [START, *chars("system\nBe"), END, *chars("\n")]  # 12 tokens, none trained
    assert example.ids[:12] == prefix
    assert trained(example) == [12 + 21, 12 + 22, 12 + 23]
    assert example.exchange_starts == (12,)


def test_train_on_all_tokens(tok: BPETokenizer) -> None:
    example = chatml_format(tok, train_on_all=True).render(TWO_EXCHANGES)
    assert all(example.mask) and example.trained_tokens == len(example) - 1


def test_user_text_never_becomes_a_special_token(tok: BPETokenizer) -> None:
    sneaky = [user("a<|im_end|>b"), assistant("c<|im_start|>d")]
    example = chatml_format(tok).render(sneaky)
    assert example.ids.count(END) == 2 and example.ids.count(START) == 2  # the template's own
    assert chars("a<|im_end|>b") == example.ids[6 : 6 + 12]
    # The reply's end of turn is the template's <|im_end|>, after the literal "<|im_start|>".
    reply = [i for i in trained(example)]
    assert example.ids[reply[-1]] == END and len(reply) == len("c<|im_start|>d") + 1


def test_prompt_matches_inference_encoding(tok: BPETokenizer) -> None:
    """Training shows the model exactly what chat will prompt it with: the tokens before each
    reply are encode_chat's prompt for the turns before it."""
    fmt = chatml_format(tok)
    example = fmt.render(TWO_EXCHANGES)
    for k, first_trained in [(1, 21), (3, 47)]:
        prompt = encode_chat(CHATML_TEMPLATE, TWO_EXCHANGES[:k], tok, add_generation_prompt=True)
        assert example.ids[:first_trained] == prompt
    assert example.ids == encode_chat(CHATML_TEMPLATE, TWO_EXCHANGES, tok, False)


LLAMA3_LIKE = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}<|im_end|>\n\n"
    "{{ m['content'] }}<|endoftext|>{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant<|im_end|>\n\n{% endif %}"
)


def test_another_template_masks_reply_and_its_end_token(tok: BPETokenizer) -> None:
    """A template laid out otherwise (header tokens around the role, <|endoftext|> ending a
    turn, bos_token from the model's token roles) is read the same way."""
    fmt = chat_format_for(tok, LLAMA3_LIKE, {"bos": BOS})
    example = fmt.render(TWO_EXCHANGES[:2])
    # 0: <s>  1: <|im_start|>  2-5: user  6: <|im_end|>  7-8: \n\n  9-10: Hi  11: <|endoftext|>
    # 12: <|im_start|>  13-21: assistant  22: <|im_end|>  23-24: \n\n  25-26: Yo  27: <|endoftext|>
    assert example.ids[0] == BOS and example.ids[11] == EOT and len(example) == 28
    assert trained(example) == [25, 26, 27]


def test_a_template_without_end_token_trains_its_closing_text(tok: BPETokenizer) -> None:
    plain = (
        "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n\n{% endfor %}"
        "{% if add_generation_prompt %}### assistant: {% endif %}"
    )
    example = ChatFormat(tok, plain).render(TWO_EXCHANGES[:2])
    text = "### user: Hi\n\n### assistant: Yo\n\n"
    assert example.ids == chars(text)
    start = text.index("Yo")
    assert trained(example) == list(range(start, len(text)))  # "Yo\n\n": how it learns to stop


def test_a_template_that_changes_contents(tok: BPETokenizer) -> None:
    trimming = CHATML_TEMPLATE.replace("message['content']", "message['content'] | trim")
    fmt = ChatFormat(tok, trimming)
    example = fmt.render([user(" Hi "), assistant(" Yo ")])
    assert example.ids == chatml_format(tok).render([user("Hi"), assistant("Yo")]).ids
    assert trained(example) == [21, 22, 23]
    with pytest.raises(ScratchLMError, match=r"special token '<\|im_end\|>'.*cannot be kept"):
        fmt.render([user(" a<|im_end|> "), assistant("b")])


def test_a_template_that_rewrites_earlier_turns_is_refused(tok: BPETokenizer) -> None:
    last_differs = CHATML_TEMPLATE.replace(
        "message['content'] +", "message['content'] + ('!' if loop.last else '') +"
    )
    with pytest.raises(
        ScratchLMError, match="renders the first 1 messages and the generation prompt differently"
    ):
        ChatFormat(tok, last_differs).render(TWO_EXCHANGES)


def test_chatml_needs_its_tokens_in_the_tokenizer() -> None:
    plain = BPETokenizer(special_tokens={"<|endoftext|>": 256})
    with pytest.raises(ScratchLMError) as error:
        chatml_format(plain)
    message = str(error.value)
    assert "<|im_start|> or <|im_end|>" in message and "tokenizer.special_tokens" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ([user("Hi")], "no assistant turn"),
        ([{"role": "system", "content": "S"}, user("Hi")], "no assistant turn"),
        ([user("a"), user("b"), assistant("c")], "roles out of order: message 1 is user"),
        ([assistant("a"), user("b")], "roles out of order: message 0 is assistant"),
        ([user("a"), {"role": "system", "content": "s"}, assistant("b")], "only the first"),
        ([user("a"), {"role": "bot", "content": "b"}], "unknown role 'bot'"),
        ([user("a"), assistant("  ")], r"message 1 \(assistant\) has empty content"),
        ([user("a"), {"role": "assistant"}], "has no text content"),
        ([user("a"), assistant("b"), user("c")], "must end with the assistant's reply"),
        ([], "non-empty list"),
        ("Hi", "non-empty list"),
        ([user("a"), "b"], "message 1 is not an object"),
    ],
)
def test_bad_conversations(messages: object, error: str) -> None:
    with pytest.raises(ScratchLMError, match=error):
        check_messages(messages)


def test_check_messages_keeps_role_and_content_only() -> None:
    assert check_messages([{**user("a"), "name": "x"}, assistant("b")]) == [
        user("a"),
        assistant("b"),
    ]


# ---------------------------------------------------------------------------------------------
# Fitting long conversations into the context
# ---------------------------------------------------------------------------------------------


def test_long_conversations_are_split_at_user_turns(tok: BPETokenizer) -> None:
    fmt = chatml_format(tok)
    system = {"role": "system", "content": "S"}
    exchanges = [[user(f"q{k}"), assistant(f"a{k}" * (k + 1))] for k in range(6)]
    messages = [system, *(m for pair in exchanges for m in pair)]
    whole = fmt.render(messages)
    pieces = fmt.fit(messages, 80)
    assert len(whole) > 80 and len(pieces) > 1
    assert all(len(p) <= 80 and not p.truncated for p in pieces)
    # Each piece is exactly the render of its own window (system message first), less the
    # untrained newline at the end; together they hold every exchange once, in order.
    covered = []
    for piece in pieces:
        text = tok.decode(piece.ids)
        window = [k for k in range(6) if f"user\nq{k}<" in text]
        direct = fmt.render([system, *(m for k in window for m in exchanges[k])])
        assert piece.ids == direct.ids[:-1] and piece.mask == direct.mask[:-1]
        assert text.startswith("<|im_start|>system\nS<|im_end|>")
        covered += window
    assert covered == list(range(6))
    assert sum(p.trained_tokens for p in pieces) == whole.trained_tokens


def test_an_exchange_longer_than_the_limit_is_truncated(tok: BPETokenizer) -> None:
    fmt = chatml_format(tok)
    [piece] = fmt.fit([user("Hi"), assistant("x" * 100)], 40)
    assert len(piece) == 40 and piece.truncated
    assert trained(piece) == list(range(21, 40))  # the reply's start; it lost its end
    # A user turn that alone fills the limit leaves nothing to learn: dropped.
    assert fmt.fit([user("y" * 100), assistant("ok")], 40) == []
    # A conversation that fits comes back whole, without the untrained final newline.
    [whole] = fmt.fit(TWO_EXCHANGES, 50)
    assert whole.ids == fmt.render(TWO_EXCHANGES).ids[:50]


def test_render_all_reports_what_it_did(tok: BPETokenizer) -> None:
    fmt = chatml_format(tok)
    long = [m for k in range(4) for m in (user(f"q{k}"), assistant("a" * 20))]
    examples, report = fmt.render_all([TWO_EXCHANGES, long, [user("y" * 99), assistant("n")]], 60)
    assert (report.conversations, report.split, report.dropped) == (3, 1, 1)
    assert report.examples == len(examples) == 1 + 4
    assert report.tokens == sum(len(e) for e in examples)
    assert report.trained_tokens == sum(e.trained_tokens for e in examples)
    with pytest.raises(ScratchLMError, match="conversation 1: no assistant turn"):
        fmt.render_all([TWO_EXCHANGES, [user("a")]], 60)


# ---------------------------------------------------------------------------------------------
# Batching: packing and length-bucketed padding
# ---------------------------------------------------------------------------------------------


def example_set(tok: BPETokenizer, count: int = 23) -> list[ChatExample]:
    fmt = chatml_format(tok)
    return [
        fmt.render([user("q" * (k % 7 + 1)), assistant("a" * (k % 5 + 1))]) for k in range(count)
    ]


def targets_by_token(batches: list[SFTBatch]) -> dict[tuple[int, int], tuple[int, int]]:
    """(example, position) -> (input id, target) over every position that holds an example."""
    seen: dict[tuple[int, int], tuple[int, int]] = {}
    for batch in batches:
        where = batch.documents >= 0
        for doc, pos, x, y in zip(
            batch.documents[where].tolist(),
            batch.positions[where].tolist(),
            batch.inputs[where].tolist(),
            batch.targets[where].tolist(),
            strict=True,
        ):
            assert (doc, pos) not in seen  # every token once per epoch
            seen[doc, pos] = (x, y)
    return seen


def test_packing_and_padding_give_the_same_targets(tok: BPETokenizer) -> None:
    examples = example_set(tok)
    packed = SFTBatches(examples, batch_size=3, block_size=64, mode="pack", seed=5)
    padded = SFTBatches(examples, batch_size=4, block_size=64, mode="pad", seed=5)
    pack_batches, pad_batches = list(packed.epoch(0)), list(padded.epoch(0))
    by_pack, by_pad = targets_by_token(pack_batches), targets_by_token(pad_batches)
    assert by_pack == by_pad
    expected = {}
    for k, example in enumerate(examples):
        x, y = example.inputs_and_targets()
        expected.update({(k, i): (x[i], y[i]) for i in range(len(x))})
    assert by_pack == expected
    assert sum(b.target_tokens for b in pack_batches) == sum(e.trained_tokens for e in examples)
    # Packing fills fixed rows; padding pads each batch to its longest example.
    assert all(b.inputs.shape[1] == 64 for b in pack_batches)
    assert len(pack_batches) < len(pad_batches)
    for batch in pad_batches:
        lengths = (batch.documents >= 0).sum(dim=1)
        assert batch.inputs.shape[1] == int(lengths.max())
        assert ((batch.targets == -1) | (batch.documents >= 0)).all()  # no target on padding
    # Best fit leaves no two rows that would fit in one.
    used = [sum(packed.lengths[i] for i in row) for batch in packed.plan(0) for row in batch]
    assert all(a + b > 64 for k, a in enumerate(used) for b in used[k + 1 :])
    assert packed.fill(0) == sum(packed.lengths) / (len(used) * 64)


def test_batch_order_is_fixed_by_seed_and_epoch(tok: BPETokenizer) -> None:
    examples = example_set(tok)
    for mode in ("pack", "pad"):
        a = SFTBatches(examples, 4, 64, mode, seed=1)  # type: ignore[arg-type]
        b = SFTBatches(examples, 4, 64, mode, seed=1)  # type: ignore[arg-type]
        assert a.plan(0) == b.plan(0) and a.plan(1) == b.plan(1)
        assert a.plan(0) != a.plan(1)
        assert a.plan(0) != SFTBatches(examples, 4, 64, mode, seed=2).plan(0)  # type: ignore[arg-type]
        # Resuming at batch 2 of epoch 1 gives what an uninterrupted run gets there.
        later = list(b.epoch(1, start=2))
        assert torch.equal(later[0].inputs, a.batch(1, 2).inputs)


def test_pack_rows_is_best_fit() -> None:
    # 6 goes to a new row; 3 to a new row (6 + 3 > 8); 2 into the fuller row (6 + 2 = 8);
    # 5 into the row holding 3 (3 + 5 = 8); 4 into a new row.
    assert pack_rows([6, 3, 2, 5, 4], 8, order=[0, 1, 2, 3, 4]) == [[0, 2], [1, 3], [4]]
    with pytest.raises(ScratchLMError, match="example 1 has 9 positions"):
        pack_rows([1, 9], 8, order=[0, 1])


def test_attention_mask_keeps_packed_examples_apart() -> None:
    pairs = [([1, 2], [2, -1]), ([3, 4, 5], [4, 5, 6])]
    batch = collate(pairs, [[0, 1]], width=7)
    assert batch.documents.tolist() == [[0, 0, 1, 1, 1, -1, -1]]
    assert batch.positions.tolist() == [[0, 1, 0, 1, 2, 0, 0]]
    assert batch.targets.tolist() == [[2, -1, 4, 5, 6, -1, -1]]
    mask = batch.attention_mask()[0, 0].int().tolist()
    assert mask == [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0, 0],
        [0, 0, 1, 1, 0, 0, 0],
        [0, 0, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 1, 0],  # padding sees only itself
        [0, 0, 0, 0, 0, 0, 1],
    ]


def test_examples_must_fit_the_rows(tok: BPETokenizer) -> None:
    examples = example_set(tok, 3)
    with pytest.raises(ScratchLMError, match="longer than block_size"):
        SFTBatches(examples, 2, 8)
    with pytest.raises(ScratchLMError, match="unknown batching"):
        SFTBatches(examples, 2, 64, mode="stack")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Reading conversations
# ---------------------------------------------------------------------------------------------


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = json.dumps({"messages": TWO_EXCHANGES})


def test_read_jsonl(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "chats.jsonl", [GOOD, "", GOOD.replace("Yo", "Hey")])
    conversations = read_chat_jsonl(path)
    assert conversations == [
        TWO_EXCHANGES,
        [*TWO_EXCHANGES[:1], assistant("Hey"), *TWO_EXCHANGES[2:]],
    ]
    gz = tmp_path / "chats.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert read_chat_jsonl(gz) == conversations


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ('{"messages": [', r"chats\.jsonl:3: not JSON"),
        (
            '{"text": "hi"}',
            r'chats\.jsonl:3: expected an object with a "messages" list.*got no "messages" key',
        ),
        ('{"messages": [{"role": "user", "content": "hi"}]}', r"chats\.jsonl:3: no assistant turn"),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}',
            r"chats\.jsonl:3: roles out of order",
        ),
        (
            '{"messages": [{"role": "human", "content": "a"}]}',
            r"chats\.jsonl:3: message 0 has the unknown role 'human'",
        ),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]}',
            r"chats\.jsonl:3: message 1 \(assistant\) has empty content",
        ),
    ],
)
def test_bad_jsonl_lines(tmp_path: Path, line: str, error: str) -> None:
    path = write_lines(tmp_path / "chats.jsonl", [GOOD, "", line, GOOD])
    with pytest.raises(ScratchLMError, match=error) as raised:
        read_chat_jsonl(path)
    assert "\n" not in str(raised.value)


def test_empty_or_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ScratchLMError, match="holds no conversations"):
        read_chat_jsonl(write_lines(tmp_path / "empty.jsonl", [""]))
    with pytest.raises(ScratchLMError, match="does not exist"):
        load_chat_set(tmp_path / "missing.jsonl")
    with pytest.raises(ScratchLMError, match="named sets are chitchat, chatterbot"):
        load_chat_set("chitchatter")


def test_deduplicate_and_split(tmp_path: Path) -> None:
    a, b = TWO_EXCHANGES[:2], TWO_EXCHANGES
    c = [user("Hi"), assistant("Yo!")]
    unique, removed = deduplicate([a, b, a, c, a, b])
    assert unique == [a, b, c] and removed == 3

    path = write_lines(tmp_path / "c.jsonl", [json.dumps({"messages": m}) for m in [a, b, a, c]])
    chat_set = load_chat_set(path)
    assert (len(chat_set.conversations), chat_set.read, chat_set.duplicates) == (3, 4, 1)
    assert "3 conversations (4 read, 1 exact duplicates removed)" in chat_set.describe()

    many = [[user(f"q{k}"), assistant(f"a{k}")] for k in range(100)]
    train, heldout = split_conversations(many, 0.1, seed=3)
    assert len(heldout) == 10 and len(train) == 90
    assert not {id(x) for x in train} & {id(x) for x in heldout}
    assert (train, heldout) == split_conversations(many, 0.1, seed=3)
    assert heldout != split_conversations(many, 0.1, seed=4)[1]
    assert train == [m for m in many if m not in heldout]  # the input's order
    with pytest.raises(ScratchLMError, match="cannot be split"):
        split_conversations(many[:1], 0.1, seed=0)
    with pytest.raises(ScratchLMError, match="in \\(0, 1\\)"):
        split_conversations(many, 1.0, seed=0)


# ---------------------------------------------------------------------------------------------
# The named sets
# ---------------------------------------------------------------------------------------------


def test_chitchat_speakers_become_user_and_assistant() -> None:
    def said(sender: str, *texts: str) -> list[dict[str, str]]:
        return [{"text": t, "sender": sender} for t in texts]

    raw = json.dumps(
        {
            "c1": {
                "messages": [
                    said("A", "Hello", "How  are\nyou?"),
                    said("B", "fine"),
                    said("A", "ok"),
                ]
            },
            "c2": {"messages": [said("A", "anyone?", "hello?")]},  # nobody answered
            "c3": {
                "messages": [said("B", "hi"), said("A", " "), said("B", "there"), said("A", "yo")]
            },
        }
    ).encode()
    conversations, dropped = chitchat_conversations(raw, "dataset.json")
    assert conversations == [
        [user("Hello\nHow are you?"), assistant("fine")],  # the last, unanswered turn dropped
        # A blank message vanishes, so B's two messages become one turn.
        [user("hi\nthere"), assistant("yo")],
    ]
    assert dropped == {"one person only (no reply)": 1}
    with pytest.raises(ScratchLMError, match="not valid JSON"):
        chitchat_conversations(b"{", "w.whl")


CHATTERBOT_YAML = b"""categories:
- greetings
conversations:
- - Do you like it?
  - Yes
- - 1 + 1
  - 2
  - "Right: 2"
- Not a list - '22'
- - Hello
  - Hi
- - Hello
  - Hi
"""


def test_chatterbot_lines_alternate_and_stay_text() -> None:
    conversations, dropped = chatterbot_conversations({"english/greetings.yml": CHATTERBOT_YAML})
    assert conversations == [
        [user("Do you like it?"), assistant("Yes")],  # not the YAML 1.1 boolean True
        [user("1 + 1"), assistant("2")],  # the trailing user line dropped
        [user("Hello"), assistant("Hi")],
        [user("Hello"), assistant("Hi")],  # exact copies stay until deduplicate()
    ]
    assert dropped == {"not a list of lines": 1}


def fake_chatterbot_wheel(folder: Path) -> Path:
    wheel = folder / "chatterbot_corpus-1.3.3-py2.py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("chatterbot_corpus/data/english/greetings.yml", CHATTERBOT_YAML)
        archive.writestr(
            "chatterbot_corpus/data/spanish/saludos.yml", b"conversations: [[Hola, Hola]]"
        )
    return wheel


def test_named_set_is_fetched_once_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path / "cache"))
    downloads = []

    def download(requirement: str, dest: Path) -> Path:
        downloads.append(requirement)
        return fake_chatterbot_wheel(dest)

    monkeypatch.setattr(chat_data, "pip_download_wheel", download)
    monkeypatch.setattr(chat_data, "check_sha256", lambda path, expected: None)
    chat_set = load_chat_set("chatterbot")
    assert downloads == ["chatterbot-corpus==1.3.3"]
    assert (len(chat_set.conversations), chat_set.read, chat_set.duplicates) == (3, 4, 1)
    assert chat_set.dropped == {"not a list of lines": 1}
    assert (tmp_path / "cache/chat-sets/chatterbot-v1/conversations.jsonl").is_file()
    assert load_chat_set("chatterbot").conversations == chat_set.conversations
    assert downloads == ["chatterbot-corpus==1.3.3"]  # the second load read the cache


@pytest.fixture
def shared_cache(monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache kept between test runs, so the real download happens once per machine."""
    monkeypatch.delenv("SCRATCHLM_CACHE", raising=False)
    shared = cache_dir() / "pytest-shared"
    monkeypatch.setenv("SCRATCHLM_CACHE", str(shared))
    return shared


@pytest.mark.slow
def test_real_chat_sets_from_pypi(shared_cache: Path, tok: BPETokenizer) -> None:
    chatterbot = load_chat_set("chatterbot")  # a 0.1 MB wheel the first time
    assert (chatterbot.read, chatterbot.duplicates, len(chatterbot.conversations)) == (
        2025,
        1127,
        898,
    )
    assert chatterbot.dropped == {"not a list of lines": 1}
    chitchat = load_chat_set("chitchat")  # an 8 MB wheel the first time
    assert (chitchat.read, chitchat.duplicates, len(chitchat.conversations)) == (4017, 6, 4011)
    assert chitchat.dropped == {"one person only (no reply)": 3151}  # 4017 + 3151 = 7168 chats
    assert chitchat.conversations[0][:2] == [
        user("Hello\nHow are you doing today?"),
        assistant("whats up MD\nim doing good\nhow are you doing?"),
    ]
    # One token per byte here: a few long coding answers need two windows or are cut.
    examples, report = chatml_format(tok).render_all(chatterbot.conversations, 513)
    assert (report.examples, report.split, report.dropped) == (901, 2, 0)
    assert all(len(e) <= 513 for e in examples) and report.truncated == 7


@pytest.mark.slow
def test_smollm2_template_masks_its_replies() -> None:
    from scratchlm.finetune.conversations import chat_format_of
    from scratchlm.inference.language_model import load_for_inference

    lm = load_for_inference("smollm2-135m-instruct")
    fmt = chat_format_of(lm)
    example = fmt.render(TWO_EXCHANGES)
    assert example.ids == lm.encode_chat(TWO_EXCHANGES, add_generation_prompt=False)
    end = lm.tokenizer.special_tokens["<|im_end|>"]
    words = [lm.tokenizer.decode([example.ids[i]]) for i in trained(example)]
    assert "".join(words) == "Yo<|im_end|>No<|im_end|>"
    assert example.ids[trained(example)[-1]] == end
    # The default system prompt SmolLM2 adds is context, as the user turns are.
    assert lm.tokenizer.decode(example.ids).startswith("<|im_start|>system\nYou are a helpful")
    prompt = lm.encode_chat(TWO_EXCHANGES[:3])
    assert example.ids[: len(prompt)] == prompt and example.mask[len(prompt)]
