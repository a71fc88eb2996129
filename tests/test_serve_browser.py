"""The chat page of `scratchlm serve` in a real browser: Debian's chromium, driven by Playwright,
talks to a live server of a scripted chat model (tests/test_chat.py), so every reply is known
to the character. What a user does: read the model's name, send with Enter (Shift+Enter is a
new line), watch a reply stream in, carry on the conversation, stop a reply, start a new chat,
see a server error, give the API key the server asks for; and the page reaches nothing but the
server it came from.

Chromium: as in tests/test_report_browser.py, Debian's package (`make browser`), no download;
these tests skip without it on a developer's machine and fail in CI (env CI set).

Screenshots: PNGs under each test's tmp_path; set SCRATCHLM_SCREENSHOTS to also copy the
desktop and phone ones to /tmp/serve-shots/ and look at them:

    SCRATCHLM_SCREENSHOTS=1 .venv/bin/python -m pytest -q tests/test_serve_browser.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Request, Route, expect

from live_server import live_server
from test_chat import BABBLES, save_chat_run

SHOTS = Path("/tmp/serve-shots")
API_KEY = "sk-test-page"
# The streaming model's reply: long enough to arrive in many pieces, with HTML in it that must
# show as characters. The scripted model picks each token from the one before alone, so no
# character may repeat; "\n" is where every ChatML reply starts.
REPLY = "<b>Streaming: 0123456789-ABCDEFGHIJKLMNOPQRTUVWXYZ!"
BLAH = "blah blah blah"  # BABBLES says this, and goes on to the max-tokens limit
STARTED = re.compile("^b")  # a babbled reply has begun to come in


def script_saying(reply: str) -> dict[str, str | None]:
    """A scripted model's script whose every reply is `reply`, then the end of the turn."""
    chain = "\n" + reply
    assert len(set(chain)) == len(chain), "a character repeats: the script cannot say this"
    return dict(pairwise(chain)) | {reply[-1]: None}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("serve-browser-runs")
    save_chat_run(base / "streamer", script_saying(REPLY), block_size=256)
    # Room to babble for a while, so there is time to press Stop.
    save_chat_run(base / "babbler", BABBLES, block_size=2048)
    return base


@pytest.fixture(scope="module")
def server(runs: Path) -> Iterator[str]:
    with live_server(runs / "streamer") as url:
        yield url


@pytest.fixture(scope="module")
def keyed_server(runs: Path) -> Iterator[str]:
    with live_server(runs / "babbler", "--api-key", API_KEY) as url:
        yield url


def model_id(url: str, key: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(url + "/v1/models", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.load(response)["data"][0]["id"])


@dataclass
class Visit:
    page: Page
    errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions
    outside: list[str] = field(default_factory=list)  # requests not to the server: refused
    chats: list[Request] = field(default_factory=list)  # POST /v1/chat/completions, in order
    aborted: list[str] = field(default_factory=list)  # URLs of requests that failed

    def chat_body(self, index: int) -> dict[str, Any]:
        body = self.chats[index].post_data_json
        assert isinstance(body, dict)
        return body

    def unexpected_errors(self, *statuses: int) -> list[str]:
        """Console errors but Chrome's note of each HTTP error the test provoked on purpose."""
        expected = tuple(f"the server responded with a status of {s}" for s in statuses)
        return [e for e in self.errors if not any(x in e for x in expected)]


@contextmanager
def visit(
    browser: Browser,
    url: str,
    width: int = 1280,
    key: str | None = None,
    bypass_csp: bool = False,
) -> Iterator[Visit]:
    """The chat page at `width` px (with `key` already in the tab's sessionStorage), every
    request that is not to `url` recorded and refused."""
    context = browser.new_context(viewport={"width": width, "height": 800}, bypass_csp=bypass_csp)
    context.set_default_timeout(10_000)
    if key is not None:
        context.add_init_script(f"sessionStorage.setItem('scratchlm-api-key', {json.dumps(key)})")
    page = context.new_page()
    seen = Visit(page)

    def refuse_outside(route: Route) -> None:
        if route.request.url == url or route.request.url.startswith(url + "/"):
            route.continue_()
        else:
            seen.outside.append(route.request.url)
            route.abort()

    def on_request(request: Request) -> None:
        if request.url == url + "/v1/chat/completions":
            seen.chats.append(request)

    context.route("**/*", refuse_outside)
    page.on("request", on_request)
    page.on("requestfailed", lambda r: seen.aborted.append(r.url))
    page.on("console", lambda m: seen.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen.errors.append(str(e)))
    try:
        page.goto(url + "/", wait_until="load")
        yield seen
    finally:
        context.close()


def screenshot(page: Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=path)
    if os.environ.get("SCRATCHLM_SCREENSHOTS"):
        SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SHOTS / name)


# Every text the newest reply has shown, in order: a MutationObserver keeps each text node set
# into a reply, so pieces that arrive within one network read are still seen one by one.
WATCH_REPLIES_JS = """() => {
  window.replyTexts = [];
  new MutationObserver(records => {
    for (const r of records) {
      if (!r.target.matches || !r.target.matches(".message.assistant .content")) continue;
      for (const n of r.addedNodes) if (n.nodeType === Node.TEXT_NODE) window.replyTexts.push(n.data);
    }
  }).observe(document.getElementById("messages"), {childList: true, subtree: true});
}"""


def send(page: Page, text: str) -> None:
    """Type `text` (a "\\n" typed as Shift+Enter) into the message box and press Enter."""
    box = page.get_by_label("Message")
    box.click()
    for i, line in enumerate(text.split("\n")):
        if i:
            box.press("Shift+Enter")
        box.press_sequentially(line)
    box.press("Enter")


def replies(page: Page) -> list[str]:
    return page.locator(".message.assistant .content").all_text_contents()


def wait_for_reply(page: Page, count: int) -> str:
    """The text of reply number `count` once it is complete (Stop disabled again)."""
    expect(page.locator(".message.assistant")).to_have_count(count)
    expect(page.get_by_role("button", name="Stop")).to_be_disabled()
    return replies(page)[count - 1]


def test_a_conversation_streams_keeps_its_history_and_shows_text_as_text(
    browser: Browser, server: str, tmp_path: Path
) -> None:
    with visit(browser, server) as seen:
        page = seen.page
        send_button = page.get_by_role("button", name="Send")
        stop_button = page.get_by_role("button", name="Stop")
        new_chat = page.get_by_role("button", name="New chat")
        expect(page.locator("#model-name")).to_have_text(model_id(server))
        # Nothing to send, stop or clear yet.
        expect(send_button).to_be_disabled()
        expect(stop_button).to_be_disabled()
        expect(new_chat).to_be_disabled()

        page.evaluate(WATCH_REPLIES_JS)
        send(page, "Hello there")
        assert wait_for_reply(page, 1) == REPLY
        # It came in pieces, each the start of the reply, before the whole of it.
        shown = page.evaluate("window.replyTexts")
        partial = {t for t in shown if t != REPLY}
        assert len(partial) >= 2 and all(REPLY.startswith(t) for t in partial), shown
        assert shown[-1] == REPLY
        # The HTML in the reply is characters on the screen, not elements.
        content = page.locator(".message.assistant .content").first
        assert content.evaluate("e => e.children.length") == 0
        assert content.inner_text().startswith("<b>Streaming")
        assert page.locator("#messages b").count() == 0

        # Shift+Enter is a new line, and sends nothing.
        box = page.get_by_label("Message")
        box.press_sequentially("two")
        box.press("Shift+Enter")
        box.press_sequentially("lines")
        expect(box).to_have_value("two\nlines")
        expect(send_button).to_be_enabled()
        assert len(seen.chats) == 1 and page.locator(".message.user").count() == 1
        box.press("Enter")
        assert wait_for_reply(page, 2) == REPLY
        expect(box).to_have_value("")
        assert page.locator(".message.user .content").all_text_contents() == [
            "Hello there",
            "two\nlines",
        ]
        # Every request carries the whole conversation so far, streamed.
        first, second = seen.chat_body(0), seen.chat_body(1)
        assert first["messages"] == [{"role": "user", "content": "Hello there"}]
        assert second["messages"] == [
            {"role": "user", "content": "Hello there"},
            {"role": "assistant", "content": REPLY},
            {"role": "user", "content": "two\nlines"},
        ]
        assert second["stream"] is True and second["model"] == model_id(server)
        assert "temperature" not in second and "max_tokens" not in second  # empty: defaults
        screenshot(page, tmp_path, "chat_desktop.png")

        # The controls are sent; a reply cut at max tokens says so.
        page.get_by_label("Temperature").fill("0")
        page.get_by_label("Max tokens").fill("9")
        send(page, "short")
        assert wait_for_reply(page, 3) == REPLY[:9]
        assert seen.chat_body(2)["temperature"] == 0 and seen.chat_body(2)["max_tokens"] == 9
        expect(page.locator(".message.assistant .note").last).to_contain_text("max-tokens")

        # A message the context cannot hold: the server's error, as one readable line; the
        # message is marked unsent and leaves the history.
        send(page, "x" * 300)
        error = page.locator(".message.error")
        expect(error).to_have_count(1)
        line = error.inner_text()
        assert line.startswith("Error: ") and "\n" not in line and "New chat" in line, line
        expect(page.locator(".message.user").last).to_contain_text("not sent")
        assert page.locator(".message.assistant").count() == 3
        expect(send_button).to_be_disabled()  # the box is empty again
        expect(stop_button).to_be_disabled()
        screenshot(page, tmp_path, "chat_error.png")

        # New chat empties the pane and the history.
        new_chat.click()
        expect(page.locator("#messages .message")).to_have_count(0)
        expect(page.locator("#empty-hint")).to_be_visible()
        expect(new_chat).to_be_disabled()
        send(page, "again")
        assert wait_for_reply(page, 1) == REPLY[:9]  # the controls are kept
        assert seen.chat_body(4)["messages"] == [{"role": "user", "content": "again"}]
        assert len(seen.chats) == 5
    assert seen.outside == [] and seen.aborted == []
    assert seen.unexpected_errors(400) == []


def test_the_page_fits_a_phone(browser: Browser, server: str, tmp_path: Path) -> None:
    with visit(browser, server, width=360) as seen:
        page = seen.page
        expect(page.locator("#model-name")).to_have_text(model_id(server))
        send(page, "Hello from a phone")
        assert wait_for_reply(page, 1) == REPLY
        page.get_by_label("Message").press_sequentially("A question being typed")
        sideways = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert sideways == 0
        # Every control is on the screen, none cut off at the right edge.
        for name in ("New chat", "Send", "Stop"):
            box = page.get_by_role("button", name=name).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 360, name
        for label in ("Message", "Temperature", "Max tokens"):
            box = page.get_by_label(label).bounding_box()
            assert box is not None and box["x"] + box["width"] <= 360, label
        screenshot(page, tmp_path, "chat_phone.png")
    assert seen.outside == [] and seen.errors == []


def test_the_page_asks_for_the_api_key_the_server_wants(
    browser: Browser, keyed_server: str, tmp_path: Path
) -> None:
    with visit(browser, keyed_server) as seen:
        page = seen.page
        key_box = page.get_by_label("This server needs an API key")
        expect(key_box).to_be_visible()
        expect(key_box).to_be_focused()
        # A wrong key is refused, and asked for again.
        key_box.fill("sk-wrong")
        key_box.press("Enter")
        expect(page.locator("#key-note")).to_contain_text("refused")
        expect(key_box).to_be_visible()
        screenshot(page, tmp_path, "chat_key_refused.png")
        key_box.fill(API_KEY)
        key_box.press("Enter")
        expect(page.locator("#model-name")).to_have_text(model_id(keyed_server, API_KEY))
        expect(key_box).to_be_hidden()
        assert page.evaluate("sessionStorage.getItem('scratchlm-api-key')") == API_KEY

        page.get_by_label("Max tokens").fill(str(len(BLAH)))
        send(page, "hi")
        assert wait_for_reply(page, 1) == BLAH
        assert seen.chats[0].headers["authorization"] == f"Bearer {API_KEY}"
        screenshot(page, tmp_path, "chat_with_key.png")
    assert seen.outside == [] and seen.aborted == []
    assert seen.unexpected_errors(401) == []


def test_stop_ends_a_reply_and_keeps_what_came(
    browser: Browser, keyed_server: str, tmp_path: Path
) -> None:
    with visit(browser, keyed_server, key=API_KEY) as seen:
        page = seen.page
        send_button = page.get_by_role("button", name="Send")
        stop_button = page.get_by_role("button", name="Stop")
        page.get_by_label("Max tokens").fill("2000")
        send(page, "talk")
        # While it streams: Stop on, Send off even with a message typed.
        expect(page.locator(".message.assistant .content").nth(0)).to_have_text(STARTED)
        expect(stop_button).to_be_enabled()
        page.get_by_label("Message").press_sequentially("next")
        expect(send_button).to_be_disabled()
        stop_button.click()

        stopped = page.locator(".message.assistant.stopped")
        expect(stopped).to_have_count(1)
        expect(stopped.locator(".note")).to_have_text("stopped")
        expect(stop_button).to_be_disabled()
        expect(send_button).to_be_enabled()
        partial = replies(page)[0]
        assert 0 < len(partial) < 2000 and ("blah " * 400).startswith(partial), partial
        assert seen.aborted == [keyed_server + "/v1/chat/completions"]  # the request was cut
        screenshot(page, tmp_path, "chat_stopped.png")

        # The partial reply stays as it was, and is what the model reads of it next turn.
        page.get_by_label("Max tokens").fill("4")
        send_button.click()
        assert wait_for_reply(page, 2) == "blah"
        assert replies(page)[0] == partial
        assert seen.chat_body(1)["messages"][1] == {"role": "assistant", "content": partial}

        # New chat in the middle of a reply cuts it off and clears everything.
        page.get_by_label("Max tokens").fill("2000")
        send(page, "more")
        expect(page.locator(".message.assistant .content").nth(2)).to_have_text(STARTED)
        page.get_by_role("button", name="New chat").click()
        expect(page.locator("#messages .message")).to_have_count(0)
        expect(stop_button).to_be_disabled()
        assert seen.aborted == [keyed_server + "/v1/chat/completions"] * 2
    assert seen.outside == [] and seen.unexpected_errors() == []


def test_a_request_outside_the_server_is_refused_twice(browser: Browser, server: str) -> None:
    """The server's Content-Security-Policy stops the page reaching elsewhere; with it
    bypassed, this test's own guard still catches and records the request."""
    leak = "() => fetch('https://example.invalid/track').catch(() => null)"
    with visit(browser, server) as seen:
        seen.page.evaluate(leak)  # awaits the fetch: refused by now
    assert seen.outside == []
    assert any("Content Security Policy" in e for e in seen.errors), seen.errors
    with visit(browser, server, bypass_csp=True) as seen:
        seen.page.evaluate(leak)
    assert seen.outside == ["https://example.invalid/track"]
