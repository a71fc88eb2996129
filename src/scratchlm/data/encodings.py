"""What encoding a file's bytes are in: byte-order marks, text or binary, and a likely encoding.

The reader (readers.py) decodes UTF-8, but real corpora arrive in other encodings too:
  - a byte-order mark (BOM) says the encoding outright: UTF-8, UTF-16 or UTF-32, little- or
    big-endian; `bom_encoding` finds it, and the reader decodes with that codec;
  - a file without a suffix (Brown's ca01, ca02, ...) may be text or binary; `sniff` looks at
    its first few kilobytes to decide;
  - text that is not UTF-8 and has no BOM cannot be decoded for sure; `likely_encoding` guesses
    from the bytes (NUL bytes at odd or even offsets: UTF-16 without a BOM; otherwise an 8-bit
    code page) so a warning can name it, with the iconv command that converts it.
"""

from __future__ import annotations

import codecs
import shlex
from typing import Literal

# How much of a file `sniff` looks at: enough to tell text from binary, cheap for many files.
SNIFF_BYTES = 8192

# Longest first: the UTF-32-LE mark begins with the UTF-16-LE one.
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)

# Control bytes that plain text holds: tab, newline, vertical tab, form feed, carriage return,
# and escape (terminal colours in logs). Any other below 0x20 marks binary data.
_BINARY_CONTROLS = bytes(b for b in range(0x20) if b not in b"\t\n\v\f\r\x1b")
# The share of other control bytes above which a sample without NULs is binary after all.
_MAX_CONTROL_FRACTION = 0.01
# A share of NUL bytes at even or odd offsets above which text looks like UTF-16 or UTF-32.
_WIDE_NUL_FRACTION = 0.3


def bom_encoding(data: bytes) -> tuple[str, int] | None:
    """(codec name, length of the mark) of the byte-order mark `data` starts with, if any."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            return name, len(bom)
    return None


Sniffed = Literal["text", "binary"]


def sniff(sample: bytes) -> Sniffed:
    """Whether the first bytes of a file look like text (in any common encoding) or binary.

    Text: a byte-order mark, or no NUL byte and hardly any control bytes other than tab and
    line ends. That takes UTF-8 and 8-bit code pages such as Latin-1 alike: text either way,
    whose bytes that are not UTF-8 the reader counts and names (or skips, if they are most).
    """
    if bom_encoding(sample) is not None:
        return "text"
    if b"\x00" in sample:
        return "binary"
    controls = len(sample) - len(sample.translate(None, _BINARY_CONTROLS))  # counted in C
    return "binary" if controls > _MAX_CONTROL_FRACTION * len(sample) else "text"


def wide_encoding(data: bytes) -> str | None:
    """ "utf-16-le" etc. when `data` looks like UTF-16/32 text without a byte-order mark.

    ASCII letters in UTF-16-LE are a byte and a NUL: NULs at odd offsets; in UTF-16-BE at even
    ones; UTF-32 has three NULs in every four bytes.
    """
    sample = data[:SNIFF_BYTES]
    if len(sample) < 4:
        return None
    quarters = [sample[i::4].count(0) / len(sample[i::4]) for i in range(4)]
    if min(quarters[1:]) > _WIDE_NUL_FRACTION * 2 and quarters[0] < _WIDE_NUL_FRACTION:
        return "utf-32-le"
    if min(quarters[:3]) > _WIDE_NUL_FRACTION * 2 and quarters[3] < _WIDE_NUL_FRACTION:
        return "utf-32-be"
    even, odd = sample[0::2].count(0) / len(sample[0::2]), sample[1::2].count(0) / len(sample[1::2])
    if odd > _WIDE_NUL_FRACTION and even < odd / 4:
        return "utf-16-le"
    if even > _WIDE_NUL_FRACTION and odd < even / 4:
        return "utf-16-be"
    return None


def likely_encoding(data: bytes) -> str:
    """The encoding text that is not UTF-8 is most likely in, as iconv names it.

    UTF-16/32 without a byte-order mark by its NUL bytes; otherwise CP1252 (Windows Latin-1),
    which reads every Latin-1 text the same except bytes 0x80-0x9f, which Latin-1 uses for
    control codes no text holds.
    """
    wide = wide_encoding(data)
    if wide is not None:
        return wide.replace("-", "").upper()  # iconv's spelling: UTF16LE
    return "CP1252"


def iconv_command(path: str, encoding: str) -> str:
    """The shell command that converts the file at `path` from `encoding` to UTF-8."""
    target = path + ".utf8.txt"
    return f"iconv -f {encoding} -t UTF-8 {shlex.quote(path)} > {shlex.quote(target)}"
