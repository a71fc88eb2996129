"""`scratchlm chat`: talk to a chat model in the terminal, or script a conversation.

    scratchlm chat smollm2-135m-instruct [--system "Answer briefly."] [--temperature 0.7 ...]
    scratchlm chat RUN --message "Hi" --message "And then?"     # replies only, one a message
    printf 'Hi\\nAnd then?\\n' | scratchlm chat RUN                # the same, a line a message

Interactive (standard input is a terminal and no --message): a prompt, each reply streamed as
it is written, the commands of HELP, line editing and history (Python's readline). Ctrl-C
stops the reply being written and the session goes on; Ctrl-C twice at the prompt, Ctrl-D or
/quit ends it. Otherwise each message is answered in turn and standard output gets the
replies alone, one after another, each ending with a newline; notes go to standard error.

The conversation itself (history, system prompt, dropping the oldest turns when the context
is full, saving) is inference.chat_session.ChatSession; this module only reads and prints.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from scratchlm.cli.generate import SAMPLE_ALIASES
from scratchlm.cli.options import add_section_options, section_from_args
from scratchlm.cli.weights_options import add_weights_options
from scratchlm.core.errors import ScratchLMError
from scratchlm.inference.config import SampleConfig

if TYPE_CHECKING:
    from scratchlm.inference.chat_session import ChatSession, Reply

PROMPT = ">>> "
CONTINUATION = "... "
COMMANDS = ("/system", "/reset", "/save", "/quit", "/exit", "/help")
HELP = """\
/system TEXT  use TEXT as the system prompt (/system alone shows it, /system - removes it)
/reset        forget the conversation (the system prompt stays)
/save FILE    write the conversation to FILE as JSON (a .jsonl FILE: append it as one line)
/quit         leave (also /exit, Ctrl-D, or Ctrl-C twice at the prompt)
/help         this list
A line ending in \\ goes on on the next line; start a message with // to send one that
begins with /. Ctrl-C stops the reply being written."""


def register(commands: Any) -> None:
    """Add the `chat` subparser to `commands` (argparse's subparsers action)."""
    p = commands.add_parser("chat", help="talk to a chat model in the terminal")
    p.add_argument(
        "run_dir",
        type=Path,
        help="a run with a chat template, or a pretrained chat model (smollm2-135m-instruct: "
        "downloaded and imported into the cache on first use)",
    )
    p.add_argument("--system", default=None, help="the system prompt to start with")
    p.add_argument(
        "--message",
        action="append",
        default=[],
        help="answer this message and print the reply (no prompt, replies only); repeatable, "
        "as the turns of one conversation. Without it and with standard input not a "
        "terminal, each line of standard input is a message",
    )
    p.add_argument(
        "--save",
        type=Path,
        default=None,
        help="write the conversation to this file when the session ends (as /save does)",
    )
    p.add_argument("--overwrite", action="store_true", help="let --save replace a file")
    add_weights_options(p)
    add_section_options(p, "sample", SampleConfig, aliases=SAMPLE_ALIASES, skip=("prompts",))
    p.set_defaults(handler=cmd_chat)


def cmd_chat(args: argparse.Namespace) -> None:
    from scratchlm.core.user_paths import check_output
    from scratchlm.inference.chat_session import ChatSession
    from scratchlm.inference.language_model import load_for_inference

    # Mistakes on the command line are refused before the model is loaded.
    section_from_args(args, "sample", SampleConfig())
    if any(not m.strip() for m in args.message):
        raise ScratchLMError("--message is empty; give the text to send")
    if args.save is not None:
        check_output(args.save, folder=False, overwrite=args.overwrite or is_jsonl(args.save))
    lm = load_for_inference(args.run_dir, args.checkpoint, args.device, args.dtype, args.quantize)
    settings = section_from_args(args, "sample", lm.defaults)
    session = ChatSession(lm, settings.sampling(), system=args.system)
    if args.save is not None and args.overwrite:
        session.saved.add(args.save.expanduser().resolve())
    interactive = not args.message and sys.stdin.isatty()
    console = ChatConsole(session, str(args.run_dir), interactive)
    try:
        if interactive:
            console.interact()
        else:
            console.run_script(args.message or stdin_lines())
    finally:
        if args.save is not None:
            console.save(str(args.save))


def is_jsonl(path: Path) -> bool:
    return path.suffix == ".jsonl"


def stdin_lines() -> Iterator[str]:
    """Standard input's lines as they come (a script may write one, read the reply, write the
    next), decoded as UTF-8 with a clear error for bytes that are not."""
    from scratchlm.core.user_files import decode_utf8

    while line := sys.stdin.buffer.readline():
        yield decode_utf8(line, "standard input").rstrip("\r\n")


class ChatConsole:
    """Reads messages and commands, prints replies and notes.

    interactive: replies and notes go to the terminal (stdout) and a mistake is an `error:`
    line, after which the session goes on. Otherwise (a script) stdout gets the replies alone,
    notes go to stderr, and a mistake ends the command (main prints it, exit status 2).
    """

    def __init__(
        self,
        session: ChatSession,
        model: str,
        interactive: bool,
        out: TextIO | None = None,
        info: TextIO | None = None,
    ) -> None:
        self.session = session
        self.model = model
        self.interactive = interactive
        self.out = out or sys.stdout
        self.info = info or (sys.stdout if interactive else sys.stderr)

    def say(self, text: str) -> None:
        """A note about the session (not a reply)."""
        if not self.interactive:  # a line of its own on stderr, as core.messages.note writes
            text = "note: " + text.strip().removeprefix("[").removesuffix("]")
        print(text, file=self.info, flush=True)

    # ---- the two modes ----

    def interact(self) -> None:
        """The prompt loop, until /quit, Ctrl-D, or Ctrl-C twice in a row at the prompt."""
        use_readline()
        # Ctrl-C must reach us as KeyboardInterrupt even when we were started with SIGINT
        # ignored (a background job of a script, a test runner): Python then leaves it ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        lm, session = self.session.lm, self.session
        self.say(
            f"chatting with {self.model}: a {lm.block_size:,}-token context, replies of up to "
            f"{session.max_new_tokens:,} tokens. /help for commands; Ctrl-C stops a reply; "
            "Ctrl-D or /quit leaves."
        )
        interrupts = 0
        while True:
            try:
                line = read_message(input)
            except EOFError:  # Ctrl-D
                print(file=self.out)
                return
            except KeyboardInterrupt:
                interrupts += 1
                if interrupts >= 2:
                    print(file=self.out)
                    return
                self.say("\n(Ctrl-C again, Ctrl-D or /quit to leave)")
                continue
            interrupts = 0
            try:
                if not self.handle(line):
                    return
            except ScratchLMError as e:
                self.say(f"error: {e}")
            except KeyboardInterrupt:  # between the reply and its notes: the session goes on
                self.say("\n[interrupted]")

    def run_script(self, lines: Iterable[str]) -> None:
        """Answer each message in turn (commands too): replies alone on stdout."""
        pending: list[str] = []
        for line in lines:
            # A line ending in a backslash goes on on the next, as at the prompt.
            if line.endswith("\\"):
                pending.append(line[:-1])
                continue
            if not self.handle("\n".join([*pending, line])):
                return
            pending = []
        if pending:
            self.handle("\n".join(pending))

    # ---- one line ----

    def handle(self, line: str) -> bool:
        """Send a message or run a command; False when the session should end."""
        if not line.strip():
            return True
        if line.startswith("//"):
            self.send(line[1:])
        elif line.startswith("/"):
            return self.command(line)
        else:
            self.send(line)
        return True

    def command(self, line: str) -> bool:
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        session = self.session
        if name in ("/quit", "/exit"):
            return False
        if name == "/help":
            self.say(HELP)
        elif name == "/reset":
            session.reset()
            self.say("the conversation is forgotten (the system prompt stays)")
        elif name == "/system":
            if not arg:
                shown = "none (the chat template's default)" if session.system is None else ""
                self.say(f"system prompt: {shown or session.system}")
            elif arg == "-":
                session.set_system(None)
                self.say("system prompt removed (the chat template's default applies)")
            else:
                session.set_system(arg)
                self.say("system prompt set")
        elif name == "/save":
            if not arg:
                raise ScratchLMError("/save needs a file name, e.g. /save chat.json")
            self.save(arg)
        else:
            raise ScratchLMError(
                f"unknown command {name}; /help lists them (start a message with // to send "
                "one that begins with /)"
            )
        return True

    def save(self, path: str) -> None:
        written = self.session.save(path, model=self.model)
        count = len(self.session.messages())
        how = "appended to" if is_jsonl(written) else "written to"
        self.say(f"the conversation ({count} messages) {how} {written}")

    def send(self, text: str) -> None:
        """Ask for a reply to `text`, streamed to out as it is written."""

        def show(piece: str) -> None:
            self.out.write(piece)
            self.out.flush()

        def dropped(n: int) -> None:
            turns = "turn" if n == 1 else f"{n} turns"
            self.say(
                f"[the context ({self.session.lm.block_size:,} tokens) is full: dropped the "
                f"oldest {turns}; the model no longer sees {'it' if n == 1 else 'them'}]"
            )

        reply = self.session.reply(text, on_text=show, on_dropped=dropped)
        print(file=self.out, flush=True)
        if reply.finish == "interrupted" and not self.interactive:
            raise KeyboardInterrupt  # a script's Ctrl-C ends it (main: "interrupted", 130)
        note = finish_note(reply, self.session)
        if note:
            self.say(note)


def finish_note(reply: Reply, session: ChatSession) -> str | None:
    """What to say when a reply did not end with its end-of-turn token."""
    if reply.finish == "interrupted":
        return "[interrupted]" if reply.text else "[interrupted: the message is forgotten]"
    if reply.finish == "length":
        return f"[reply cut at {session.max_new_tokens} tokens; more with --max-new-tokens]"
    if reply.finish == "context":
        return (
            f"[reply cut: the context ({session.lm.block_size:,} tokens) is full; the oldest "
            "turns will be dropped to go on]"
        )
    return None


def read_message(read_line: Callable[[str], str]) -> str:
    """One message from the prompt: a line, or several where each but the last ends in \\."""
    lines = [read_line(PROMPT)]
    while lines[-1].endswith("\\"):
        lines[-1] = lines[-1][:-1]
        lines.append(read_line(CONTINUATION))
    return "\n".join(lines)


def use_readline() -> None:
    """Line editing, history (this session's) and /command completion at the prompt, where
    Python has readline (not on Windows)."""
    try:
        import readline
    except ImportError:
        return

    def complete(text: str, state: int) -> str | None:
        matches = [c for c in COMMANDS if c.startswith(text)] if text.startswith("/") else []
        return matches[state] if state < len(matches) else None

    readline.set_completer(complete)
    readline.set_completer_delims(" \t\n")
    readline.parse_and_bind("tab: complete")
