"""An e-mail as the text its reader sees: the subject line and the decoded body, no headers.

A raw message (RFC 5322, as mail servers store it) is mostly routing: Received: chains,
Message-Ids, mailing-list headers. A classifier trained on those learns which mailbox, list or
month a message passed through, not what it says (in the SpamAssassin corpus, ham and spam were
collected from different mailboxes and lists: 91% of spam-1 was delivered to "zzzz@", 7% of
ham; 68% of the ham has a List-Id header, 12% of the spam), so we keep what a person reading
the mail sees:

    Subject   kept, decoded from RFC 2047 ("=?utf-8?b?...?=") and unfolded, as the first line
    body      every text part, decoded from base64 or quoted-printable and from its charset;
              of a multipart/alternative, the text/plain version (the HTML one only if there
              is no plain one); HTML turned into its visible text (no tags, scripts, styles or
              link targets; entities decoded), also a text/plain body that holds an HTML page
              (<html> or <body> in its first 4 kB: much spam sends one undeclared)
    other     a non-text part (an image, a zip) becomes one line "[attachment: image/gif]"
    spacing   line ends unified, trailing spaces dropped, at most one blank line in a row

Every other header (From, To, Date, Received, X-*, ...) is dropped. Broken MIME, common in
spam, never raises: what cannot be decoded is read as Latin-1 or kept as it is.
"""

from __future__ import annotations

import codecs
import email
import email.errors
import email.header
import email.message
import email.policy
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

# HTML elements whose content a reader never sees, and those that start a new line.
_INVISIBLE = {"script", "style", "head", "title", "noscript", "template"}
_BLOCKS = {
    *("p", "br", "div", "tr", "li", "ul", "ol", "table", "blockquote", "pre", "hr"),
    *("h1", "h2", "h3", "h4", "h5", "h6", "center", "form", "dd", "dt"),
}
# A text/plain body that is really an HTML page (spam often sends one without a Content-Type).
_LOOKS_LIKE_HTML = re.compile(rb"<\s*(html|body)\b", re.IGNORECASE)


@dataclass
class EmailText:
    """The readable text of one e-mail, and how it was obtained (for the dataset's report)."""

    text: str
    html_parts: int = 0  # parts turned from HTML into text
    encoded_parts: int = 0  # parts decoded from base64 or quoted-printable
    attachments: list[str] = field(default_factory=list)  # content types of non-text parts


def email_to_text(raw: bytes) -> EmailText:
    """The subject and body text of a raw RFC 5322 message (module docstring: what is kept)."""
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    result = EmailText(text="")
    body = tidy_whitespace("\n\n".join(p for p in _part_texts(message, result) if p.strip()))
    subject = decode_header_value(message.get("Subject"))
    result.text = f"Subject: {subject}\n\n{body}" if subject else body
    return result


def decode_header_value(value: object) -> str:
    """A header's text: RFC 2047 encoded words decoded, folded lines joined by one space."""
    if value is None:
        return ""
    try:
        text = str(email.header.make_header(email.header.decode_header(str(value))))
    except (LookupError, UnicodeError, ValueError, email.errors.HeaderParseError):
        text = str(value)  # an unknown charset or a broken encoded word: keep it as written
    return " ".join(text.split())


def _part_texts(part: email.message.Message, result: EmailText) -> list[str]:
    """The texts of a MIME part and its children, in order."""
    content_type = part.get_content_type()
    if part.is_multipart():
        children = [p for p in part.get_payload() if isinstance(p, email.message.Message)]
        if content_type == "multipart/alternative" and children:
            # The same content several ways: read one, plain text first.
            by_type = {child.get_content_type(): child for child in children}
            chosen = by_type.get("text/plain") or by_type.get("text/html") or children[-1]
            return _part_texts(chosen, result)
        # mixed, related, a forwarded message/rfc822, ...: every part in order.
        return [text for child in children for text in _part_texts(child, result)]
    # A multipart or message part whose structure the parser could not find (no boundary, a
    # bad one) still holds text as it stands: read it, rather than lose the body.
    if part.get_content_maintype() not in ("text", "multipart", "message"):
        result.attachments.append(content_type)
        return [f"[attachment: {content_type}]"]
    raw = _payload_bytes(part, result)
    text = _decode_charset(raw, part.get_content_charset())
    if content_type == "text/html" or _LOOKS_LIKE_HTML.search(raw[:4096]):
        result.html_parts += 1
        text = html_to_text(text)
    return [text]


def _payload_bytes(part: email.message.Message, result: EmailText) -> bytes:
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if encoding in ("base64", "quoted-printable"):
        result.encoded_parts += 1
    payload = part.get_payload(decode=True)  # undoes base64/quoted-printable; bytes
    if isinstance(payload, bytes):
        return payload
    # A payload the parser could not decode (broken structure): the text as it stands.
    undecoded = part.get_payload()
    return undecoded.encode("utf-8", "surrogateescape") if isinstance(undecoded, str) else b""


def _decode_charset(raw: bytes, charset: str | None) -> str:
    """Bytes in the declared charset; undeclared or unknown: UTF-8 if valid, else Latin-1."""
    if charset:
        try:
            codecs.lookup(charset)
            return raw.decode(charset, errors="replace")
        except (LookupError, UnicodeError):
            pass  # "x-unknown", "unicode-1-1-utf-7" and the like: guess as if undeclared
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # every byte is a character: nothing is lost


class _VisibleText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # &amp; &#233; ... arrive decoded
        self.pieces: list[str] = []
        self.hidden = 0  # depth inside elements a reader does not see

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _INVISIBLE:
            self.hidden += 1
        elif tag in _BLOCKS:
            self.pieces.append("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCKS:  # <br/>, <hr/>
            self.pieces.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _INVISIBLE:
            self.hidden = max(0, self.hidden - 1)
        elif tag in _BLOCKS:
            self.pieces.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.pieces.append(data)


def html_to_text(html: str) -> str:
    """The text a browser would show: tags, comments, scripts and styles gone, entities decoded,
    a line break at each block element, runs of spaces (which HTML ignores) made one."""
    parser = _VisibleText()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.pieces).split("\n"))
    return "\n".join(lines)


def tidy_whitespace(text: str) -> str:
    """One kind of line end, no trailing spaces, at most one blank line in a row, no blank
    lines at either end."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")
