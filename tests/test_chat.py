"""`scratchlm chat`'s conversation: the prompt the model reads each turn, the oldest turns
dropped (and said) when the context fills, the commands, saving, Ctrl-C during a reply, and
the non-interactive mode; on byte-level chat models whose replies are scripted, so every
token count is exact. (tests/test_chat_terminal.py drives the REPL in a real terminal.)"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

import scratchlm.cli.chat as chat_command
from scratchlm.cli.main import build_parser
from scratchlm.core.errors import ScratchLMError
from scratchlm.finetune.conversations import CHATML_TEMPLATE as CHATML
from scratchlm.inference.chat_session import ChatSession, Turn
from scratchlm.inference.language_model import LanguageModel, load_for_inference
from scratchlm.model import GPT
from scratchlm.model.config import ModelConfig
from scratchlm.runs.imported import save_imported_run
from scratchlm.tokenizer import BPETokenizer

CHAT_SPECIALS = {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258}
END_OF_TURN = 258
# What the scripted models say: the next token after each one (None: end the turn). Every
# ChatML prompt ends with "assistant\n", so a reply starts from "\n".
SAYS_HI = {"\n": "H", "H": "i", "i": "!", "!": None}
BABBLES = {"\n": "b", "b": "l", "l": "a", "a": "h", "h": " ", " ": "b"}  # "blah blah ..."


def scripted_model(script: Mapping[str, str | None], block_size: int) -> GPT:
    """A byte-level GPT that, greedily or not, always follows `script`: the next token
    depends on the current one alone (after a token not in the script: any token).

    The blocks are zeroed (the residual stream is the token's embedding alone), embeddings
    are one-hot, and the head maps token t to script[t] with a margin of ~60 logits."""
    config = ModelConfig(
        vocab_size=259,
        block_size=block_size,
        n_layer=1,
        n_head=2,
        n_embd=260,
        pos_encoding="rope",
        tie_embeddings=False,
    )
    model = GPT(config)
    with torch.no_grad():
        for p in model.transformer["h"].parameters():
            p.zero_()
        wte = model.get_parameter("transformer.wte.weight")
        wte.zero_()
        wte[:, :259] = torch.eye(259)
        head = model.lm_head.weight
        head.zero_()
        for token, after in script.items():
            head[END_OF_TURN if after is None else ord(after), ord(token)] = 4.0
    return model


def save_chat_run(
    run: Path, script: Mapping[str, str | None], block_size: int = 64, template: bool = True
) -> Path:
    """A run of scripted_model with a ChatML template (left out with template=False)."""
    tokenizer = BPETokenizer(special_tokens=CHAT_SPECIALS)
    model = scripted_model(script, block_size)
    save_imported_run(run, model, tokenizer, source="test", token_roles={"eos": END_OF_TURN})
    if template:
        (run / "chat_template.jinja").write_text(CHATML, encoding="utf-8")
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("chat-runs")
    save_chat_run(base / "hi", SAYS_HI)
    save_chat_run(base / "hi-256", SAYS_HI, block_size=256)
    save_chat_run(base / "babble", BABBLES)
    save_chat_run(base / "plain", SAYS_HI, template=False)
    return base


@pytest.fixture(scope="module")
def hi_lm(runs: Path) -> LanguageModel:
    return load_for_inference(runs / "hi", dtype="float32")


@pytest.fixture(scope="module")
def roomy_lm(runs: Path) -> LanguageModel:
    """hi_lm with room for a longer conversation: a context of 256."""
    return load_for_inference(runs / "hi-256", dtype="float32")


@pytest.fixture(scope="module")
def babble_lm(runs: Path) -> LanguageModel:
    return load_for_inference(runs / "babble", dtype="float32")


def session_of(lm: LanguageModel, max_new_tokens: int = 8, **kwargs: object) -> ChatSession:
    return ChatSession(lm, lm.sampling(max_new_tokens=max_new_tokens), **kwargs)  # type: ignore[arg-type]


def seen_prompts(lm: LanguageModel, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The text of every prompt the model is given from now on (control tokens spelled)."""
    prompts: list[str] = []
    generate = lm.generate

    def spy(prompts_ids, *args, **kwargs):  # type: ignore[no-untyped-def]
        prompts.extend(lm.tokenizer.decode(ids) for ids in prompts_ids)
        return generate(prompts_ids, *args, **kwargs)

    monkeypatch.setattr(lm, "generate", spy)
    return prompts


# ChatML, one token per byte: a message is its role + content + 4 tokens (<|im_start|>, "\n",
# <|im_end|>, "\n"), and the opening of the reply, "<|im_start|>assistant\n", 11.
def user(text: str) -> str:
    return f"<|im_start|>user\n{text}<|im_end|>\n"


def assistant(text: str) -> str:
    return f"<|im_start|>assistant\n{text}<|im_end|>\n"


OPEN_REPLY = "<|im_start|>assistant\n"


def test_each_reply_reads_the_whole_conversation(
    hi_lm: LanguageModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = seen_prompts(hi_lm, monkeypatch)
    session = session_of(hi_lm)
    pieces: list[str] = []
    first = session.reply("aaaa", on_text=pieces.append)
    assert (first.text, first.finish, first.new_tokens) == ("Hi!", "end", 3)
    assert "".join(pieces) == "Hi!"
    second = session.reply("bbbb")
    assert prompts == [
        user("aaaa") + OPEN_REPLY,
        user("aaaa") + assistant("Hi!") + user("bbbb") + OPEN_REPLY,
    ]
    assert (first.prompt_tokens, second.prompt_tokens) == (12 + 11, 12 + 16 + 12 + 11)
    assert session.turns == [Turn("aaaa", "Hi!"), Turn("bbbb", "Hi!")]
    assert session.messages()[-2:] == [
        {"role": "user", "content": "bbbb"},
        {"role": "assistant", "content": "Hi!"},
    ]


def test_the_oldest_turns_are_dropped_when_the_context_fills(
    hi_lm: LanguageModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Context 64, 8 kept for the reply: a prompt may be 56 tokens. Turns are 12 + 16 tokens.
    prompts = seen_prompts(hi_lm, monkeypatch)
    session = session_of(hi_lm, max_new_tokens=8)
    assert session.reserved_for_reply == 8
    said: list[int] = []
    replies = [session.reply(m, on_dropped=said.append) for m in ("aaaa", "bbbb", "cccc")]
    assert [r.dropped_turns for r in replies] == [0, 0, 1]
    assert said == [1]  # said once, before the reply that needed the room
    # 2 turns + the question would be 28 + 28 + 23 = 79 > 56: the first turn goes.
    assert prompts[2] == user("bbbb") + assistant("Hi!") + user("cccc") + OPEN_REPLY
    assert replies[2].prompt_tokens == 51
    # Dropped for good: a short message that would let it back in does not.
    assert session.first_in_context == 1
    assert session.reply("").dropped_turns == 1  # 28 + 28 + 8 + 11 = 75 > 56 again
    assert prompts[3] == user("cccc") + assistant("Hi!") + user("") + OPEN_REPLY
    # Saving keeps the whole conversation and says how much the model no longer saw.
    assert len(session.messages()) == 8 and len(session.messages(in_context_only=True)) == 4
    assert session.record()["dropped_turns"] == 2


def test_the_system_prompt_is_kept_when_turns_are_dropped(
    hi_lm: LanguageModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = seen_prompts(hi_lm, monkeypatch)
    session = session_of(hi_lm, system="S")  # <|im_start|>system\nS<|im_end|>\n: 11 tokens
    system = "<|im_start|>system\nS<|im_end|>\n"
    assert session.reply("aaaa").prompt_tokens == 11 + 23
    second = session.reply("bbbb")  # 11 + 51 = 62 > 56
    assert second.dropped_turns == 1
    assert prompts[1] == system + user("bbbb") + OPEN_REPLY


def test_a_message_that_cannot_fit_is_refused_and_changes_nothing(hi_lm: LanguageModel) -> None:
    session = session_of(hi_lm)
    session.reply("aaaa")
    with pytest.raises(ScratchLMError, match=r"your message is 57 tokens .* holds 56 once 8"):
        session.reply("x" * 38)  # user 4 + 38 + 4, the opening of the reply 11: 57
    assert session.turns == [Turn("aaaa", "Hi!")] and session.first_in_context == 0
    # A long max_new_tokens keeps at most half the context for the reply.
    assert session_of(hi_lm, max_new_tokens=1000).reserved_for_reply == 32


def test_a_reply_stops_at_max_new_tokens_or_where_the_context_is_full(
    hi_lm: LanguageModel, babble_lm: LanguageModel
) -> None:
    cut = session_of(hi_lm, max_new_tokens=2).reply("a")
    assert (cut.text, cut.finish, cut.new_tokens) == ("Hi", "length", 2)
    # The babbler never ends its turn: its reply fills the context exactly, never sliding it.
    session = session_of(babble_lm, max_new_tokens=1000)
    full = session.reply("a")  # 9 + 11 = 20 prompt tokens
    assert (full.finish, full.new_tokens, full.text) == ("context", 44, ("blah " * 9)[:44])
    # The next message makes room by dropping that turn.
    assert session.reply("b").dropped_turns == 1


def test_ctrl_c_keeps_what_was_written(
    babble_lm: LanguageModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = session_of(babble_lm, max_new_tokens=8)
    shown: list[str] = []

    def interrupt_after_six(piece: str) -> None:
        shown.append(piece)
        if len(shown) == 6:
            raise KeyboardInterrupt

    reply = session.reply("a", on_text=interrupt_after_six)
    assert (reply.text, reply.finish) == ("blah b", "interrupted")
    assert session.turns == [Turn("a", "blah b")]
    # The next reply goes on from there.
    assert session.reply("c").prompt_tokens == 9 + (9 + 6 + 4) + 9 + 11

    # Ctrl-C before the first character (the model still reading the prompt): the message
    # is forgotten with its empty reply, and the session goes on.
    def ctrl_c(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(babble_lm, "generate", ctrl_c)
    nothing = session.reply("d")
    assert (nothing.text, nothing.finish) == ("", "interrupted")
    assert [t.user for t in session.turns] == ["a", "c"]


def test_commands_system_and_reset(
    roomy_lm: LanguageModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = seen_prompts(roomy_lm, monkeypatch)
    out, info = io.StringIO(), io.StringIO()
    console = chat_command.ChatConsole(session_of(roomy_lm), "hi", True, out, info)
    for line in ("aaaa", "/system Be brief.", "bbbb", "/reset", "cccc", "/system -", "dddd"):
        assert console.handle(line)
    system = "<|im_start|>system\nBe brief.<|im_end|>\n"
    assert prompts == [
        user("aaaa") + OPEN_REPLY,
        # The system prompt heads the whole conversation, the turns before it included.
        system + user("aaaa") + assistant("Hi!") + user("bbbb") + OPEN_REPLY,
        system + user("cccc") + OPEN_REPLY,  # /reset forgot the turns, not the system prompt
        user("cccc") + assistant("Hi!") + user("dddd") + OPEN_REPLY,
    ]
    assert out.getvalue() == "Hi!\n" * 4
    assert "system prompt set" in info.getvalue()
    # A message may begin with / when written //; an unknown command is refused.
    console.handle("//etc")
    assert prompts[-1].endswith(user("/etc") + OPEN_REPLY)
    with pytest.raises(ScratchLMError, match=r"unknown command /sytem; /help lists them"):
        console.handle("/sytem Be brief.")
    with pytest.raises(ScratchLMError, match=r"/save needs a file name"):
        console.handle("/save")
    assert console.handle("/help") and "/reset" in info.getvalue()
    assert not console.handle("/quit") and not console.handle("/exit")


def test_a_system_prompt_too_long_for_the_context_is_refused(hi_lm: LanguageModel) -> None:
    session = session_of(hi_lm, system="S")
    # The system message is 6 + 4 tokens and its text; a message "?" 9, the reply's opening 11.
    with pytest.raises(ScratchLMError, match=r"one-character message is 57 tokens.*holds 56"):
        session.set_system("x" * 27)
    assert session.system == "S"
    session.set_system("x" * 26)
    assert session.system == "x" * 26


def test_save_writes_the_conversation(hi_lm: LanguageModel, tmp_path: Path) -> None:
    session = session_of(hi_lm, system="Be brief.")
    session.reply("aaaa")
    path = session.save(tmp_path / "sub" / "chat.json", model="hi")
    record = json.loads(path.read_text(encoding="utf-8"))
    assert record["model"] == "hi" and record["dropped_turns"] == 0
    assert record["block_size"] == 64 and record["sampling"]["max_new_tokens"] == 8
    assert record["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "aaaa"},
        {"role": "assistant", "content": "Hi!"},
    ]
    session.reply("bbbb")
    session.save(path)  # this session's own file: replaced
    assert len(json.loads(path.read_text(encoding="utf-8"))["messages"]) == 5
    with pytest.raises(ScratchLMError, match=r"already exists; choose another name"):
        session_of(hi_lm).save(path)  # another session's file stays
    # .jsonl: a conversation a line, appended.
    lines = tmp_path / "chats.jsonl"
    session.save(lines)
    session_of(hi_lm).save(lines)
    records = [json.loads(line) for line in lines.read_text(encoding="utf-8").splitlines()]
    assert [len(r["messages"]) for r in records] == [5, 0]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ScratchLMError, match=r"file is a file, not a folder"):
        session.save(tmp_path / "file" / "chat.json")


def test_a_model_without_a_chat_template_is_one_clear_line(runs: Path) -> None:
    lm = load_for_inference(runs / "plain", dtype="float32")
    with pytest.raises(ScratchLMError, match=r"plain has no chat template.*cannot chat"):
        ChatSession(lm)


# ---- the command ----


def chat(argv: list[str]) -> None:
    """Run `scratchlm chat ARGV` through the command's parser and handler."""
    args = build_parser().parse_args(["chat", *argv])
    args.handler(args)


def test_messages_print_replies_only(
    runs: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    saved = tmp_path / "chat.json"
    chat([str(runs / "hi-256"), "--message", "aaaa", "--message", "bbbb", "--save", str(saved)])
    out, err = capsys.readouterr()
    assert out == "Hi!\nHi!\n"
    assert err == f"note: the conversation (4 messages) written to {saved}\n"
    assert len(json.loads(saved.read_text(encoding="utf-8"))["messages"]) == 4
    # The sampling flags are generate's: a cut reply is said on stderr.
    chat([str(runs / "hi"), "--message", "a", "--max-new-tokens", "2", "--temperature", "0"])
    out, err = capsys.readouterr()
    assert out == "Hi\n" and "reply cut at 2 tokens" in err


def test_stdin_lines_are_messages(
    runs: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    text = "aaaa\n\n/system S\ntwo \\\nlines\n/quit\nnever sent\n"
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    chat([str(runs / "hi-256"), "--save", str(tmp_path / "chats.jsonl")])
    out, err = capsys.readouterr()
    assert out == "Hi!\nHi!\n" and err.startswith("note: system prompt set\n")
    [record] = [json.loads(line) for line in (tmp_path / "chats.jsonl").read_text().splitlines()]
    assert [m["content"] for m in record["messages"]] == ["S", "aaaa", "Hi!", "two \nlines", "Hi!"]
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9\n")))
    with pytest.raises(ScratchLMError, match=r"standard input: not UTF-8 text: byte 0xe9"):
        chat([str(runs / "hi")])


def test_bad_input_is_refused_before_loading(runs: Path, tmp_path: Path) -> None:
    with pytest.raises(ScratchLMError, match=r"--message is empty"):
        chat([str(runs / "hi"), "--message", " "])
    with pytest.raises(ScratchLMError, match=r"temperature must be >= 0"):
        chat([str(runs / "hi"), "--message", "a", "--temperature", "-1"])
    (tmp_path / "old.json").write_text("{}")
    with pytest.raises(ScratchLMError, match=r"old.json already exists; pass --overwrite"):
        chat([str(runs / "hi"), "--message", "a", "--save", str(tmp_path / "old.json")])
    with pytest.raises(ScratchLMError, match=r"plain has no chat template"):
        chat([str(runs / "plain"), "--message", "a"])


def test_interrupting_a_script_ends_it(
    babble_lm: LanguageModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = io.StringIO()
    console = chat_command.ChatConsole(session_of(babble_lm, 30), "babble", False, out, out)

    class CtrlC(io.StringIO):
        def write(self, s: str) -> int:
            raise KeyboardInterrupt

    console.out = CtrlC()
    with pytest.raises(KeyboardInterrupt):
        console.run_script(["a"])


def test_read_message_joins_continued_lines() -> None:
    lines = iter(["first \\", "second\\", "third"])
    asked: list[str] = []

    def read(prompt: str) -> str:
        asked.append(prompt)
        return next(lines)

    assert chat_command.read_message(read) == "first \nsecond\nthird"
    assert asked == [">>> ", "... ", "... "]


@pytest.mark.slow
def test_smollm2_holds_a_conversation() -> None:
    lm = load_for_inference("smollm2-135m-instruct")
    session = ChatSession(lm, lm.sampling(temperature=0, max_new_tokens=40))
    first = session.reply("What is the capital of France?")
    assert "Paris" in first.text and first.finish == "end"
    # The second question makes sense only with the first one in the history.
    assert "Berlin" in session.reply("And of Germany?").text
