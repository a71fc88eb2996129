"""Split patterns between Python's `regex` module (ours) and Oniguruma (Hugging Face's).

A Hugging Face `tokenizer.json` stores the split regex as text, and the `tokenizers` library
compiles it with Oniguruma in Ruby syntax. Most of a split pattern reads the same in both
dialects, but a few constructs that split patterns really use do not, and they would change
the chunks without any error (we checked each one against tokenizers 0.23.3):

    construct    regex (ours)                         Oniguruma, Ruby syntax
    X{1,3}+      possessive: at most 3, no backtrack  (?:X{1,3})+ : any number of X
    $            end, or before a final newline       before ANY newline (end of line)
    ^            start of the text                    start of any line
    \\Z           end of the text                      end, or before a final newline
    \\pL          letters                              not a property escape
    (?s) (?m)    dot-all, multi-line                  (?m) is dot-all; no multi-line flag
    [a[b]]       "[" is a literal inside a class      nested class; "&&" intersects

cl100k_base writes digits as \\p{N}{1,3}+, so copying our pattern verbatim would turn
"1234567" into one chunk instead of "123", "456", "7". `to_oniguruma` rewrites each such
construct into one that means the same in Oniguruma (e.g. X{1,3}+ -> (?>X{1,3})), and
`from_oniguruma` does the reverse for files made elsewhere. Whatever neither function knows
how to carry over raises ScratchLMError naming it, rather than being copied with a different
meaning.

What no rewriting can fix is the Unicode version behind \\p{L}, \\p{N}, \\s and friends:
Oniguruma in tokenizers 0.23.3 is older than the regex module, so some 17,000 recently
assigned code points (historic scripts, new symbols) fall in different classes. Text made of
them may be split differently; everyday text (any living script, code, emoji) is not.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable

from scratchlm.core.errors import ScratchLMError

# Inline flags. Python's "s" (dot matches newline) is Oniguruma's "m"; "i" and "x" agree.
_FLAGS_TO_ONIG = {"i": "i", "x": "x", "s": "m"}
_FLAGS_FROM_ONIG = {"i": "i", "x": "x", "m": "s"}


def to_oniguruma(pattern: str) -> str:
    """Rewrite a `regex`-module split pattern so that Oniguruma (Ruby syntax) matches the same.

    Raises ScratchLMError for a construct that has no faithful Oniguruma spelling here.
    """
    return _Translator(pattern, to_onig=True).run()


def from_oniguruma(pattern: str) -> str:
    """Rewrite an Oniguruma (Ruby syntax) split pattern for the `regex` module.

    Raises ScratchLMError for a construct that has no faithful `regex` spelling here.
    """
    return _Translator(pattern, to_onig=False).run()


class _Translator:
    """One left-to-right pass over a pattern, copying it piece by piece into `out`.

    The scanner knows just enough of the grammar to find escapes, character classes, groups
    and quantifiers; everything else is copied as it is. `atom` is where in `out` the last
    complete atom (a character, escape, class or whole group) starts, which is what a
    quantifier applies to and what an atomic group must wrap.
    """

    def __init__(self, pattern: str, to_onig: bool) -> None:
        if not isinstance(pattern, str):
            raise ScratchLMError(f"split pattern must be a string, got {type(pattern).__name__}")
        self.pattern = pattern
        self.to_onig = to_onig
        self.pos = 0
        self.out: list[str] = []
        self.atom: int | None = None
        self.groups: list[int] = []  # where each open group starts in `out`

    @property
    def target(self) -> str:
        return "Oniguruma (Hugging Face tokenizers)" if self.to_onig else "the regex module"

    def fail(self, what: str, at: int) -> ScratchLMError:
        return ScratchLMError(
            f"split pattern {self.pattern!r}: {what} at character {at} cannot be carried over "
            f"to {self.target} with the same meaning"
        )

    def run(self) -> str:
        p = self.pattern
        while self.pos < len(p):
            ch = p[self.pos]
            start = len(self.out)
            if ch == "\\":
                self.out.append(self.escape(in_class=False))
                self.atom = start
            elif ch == "[":
                self.out.append(self.char_class())
                self.atom = start
            elif ch == "(":
                self.open_group()
            elif ch == ")":
                self.pos += 1
                self.out.append(")")
                self.atom = self.groups.pop() if self.groups else None
            elif ch in "*+?":
                self.pos += 1
                self.out.append(ch + self.quantifier_suffix())
                self.atom = None
            elif ch == "{" and self.interval() is not None:
                self.apply_interval()
            elif ch == "|":
                self.pos += 1
                self.out.append("|")
                self.atom = None
            elif ch in "^$":
                self.pos += 1
                self.out.append(self.anchor(ch))
                self.atom = None
            else:
                self.pos += 1
                self.out.append("\\{" if ch == "{" else ch)
                self.atom = start
        return "".join(self.out)

    # --------------------------------------------------------------------------- pieces

    def anchor(self, ch: str) -> str:
        if self.to_onig:
            return r"\A" if ch == "^" else r"\Z"  # Python's ^ and $ without (?m)
        return "(?m:^)" if ch == "^" else "(?m:$)"  # Ruby's ^ and $ are line anchors

    def quantifier_suffix(self) -> str:
        # A lazy "?" or possessive "+" after *, +, ? means the same in both dialects.
        if self.pos < len(self.pattern) and self.pattern[self.pos] in "?+":
            self.pos += 1
            return self.pattern[self.pos - 1]
        return ""

    def interval(self) -> tuple[str, str, int] | None:
        """At "{": (min, max-part, end) when it is a counted repetition, else None (literal)."""
        p = self.pattern
        end = p.find("}", self.pos)
        if end < 0:
            return None
        body = p[self.pos + 1 : end]
        low, comma, high = body.partition(",")
        if not (low.isdigit() or (comma and low == "" and high.isdigit())):
            return None
        if high and not high.isdigit():
            return None
        return low or "0", comma + high, end + 1

    def apply_interval(self) -> None:
        found = self.interval()
        assert found is not None
        low, rest, end = found
        start = self.pos
        self.pos = end
        suffix = self.quantifier_suffix()
        counted = f"{{{low}{rest}}}"
        if suffix != "+":
            self.out.append(counted + suffix)
        elif self.atom is None:
            raise self.fail("a possessive repetition with nothing to repeat", start)
        elif self.to_onig:
            # Ruby reads X{n,m}+ as (?:X{n,m})+; the possessive meaning is an atomic group.
            self.out.insert(self.atom, "(?>")
            self.out.append(counted + ")")
        else:
            self.out.insert(self.atom, "(?:")
            self.out.append(counted + ")+")
        self.atom = None

    def open_group(self) -> None:
        p, at = self.pattern, self.pos
        start = len(self.out)
        if not p.startswith("(?", at):
            self.pos += 1
            self.out.append("(")
            self.groups.append(start)
            return
        for prefix in ("(?:", "(?>", "(?=", "(?!", "(?<=", "(?<!"):
            if p.startswith(prefix, at):
                self.pos += len(prefix)
                self.out.append(prefix)
                self.groups.append(start)
                return
        if p.startswith("(?#", at):  # a comment: same in both, no group to close
            end = p.find(")", at)
            if end < 0:
                raise self.fail("an unclosed comment", at)
            self.pos = end + 1
            self.out.append(p[at : end + 1])
            return
        if p.startswith("(?P<", at) or p.startswith("(?<", at) or p.startswith("(?'", at):
            close = ">" if p[at + 2] != "'" else "'"
            name_start = at + (4 if p.startswith("(?P<", at) else 3)
            end = p.find(close, name_start)
            if end < 0:
                raise self.fail("an unfinished group name", at)
            self.pos = end + 1
            self.out.append(f"(?<{p[name_start:end]}>")  # both read this spelling
            self.groups.append(start)
            return
        self.flags_group(at)

    def flags_group(self, at: int) -> None:
        p = self.pattern
        i = at + 2
        while i < len(p) and (p[i].isalnum() or p[i] == "-"):
            i += 1
        letters = p[at + 2 : i]
        if i >= len(p) or p[i] not in ":)" or not letters:
            raise self.fail(f"the group {p[at : i + 1]!r}", at)
        if p[i] == ")" and at != 0:
            # A bare (?i) in the middle applies to the rest of its group in Oniguruma but to
            # the whole pattern in the regex module.
            raise self.fail(f"the inline flags {p[at : i + 1]!r} after the start", at)
        table = _FLAGS_TO_ONIG if self.to_onig else _FLAGS_FROM_ONIG
        mapped = []
        for letter in letters:
            if letter == "-":
                mapped.append("-")
            elif letter in table:
                mapped.append(table[letter])
            else:
                raise self.fail(f"the inline flag {letter!r} in {p[at : i + 1]!r}", at)
        self.pos = i + 1
        self.out.append(f"(?{''.join(mapped)}{p[i]}")
        if p[i] == ":":
            self.groups.append(len(self.out) - 1)
        else:
            self.atom = None  # (?i) applies to what follows; it is not an atom

    def escape(self, in_class: bool) -> str:
        p, at = self.pattern, self.pos
        if at + 1 >= len(p):
            raise self.fail("a trailing backslash", at)
        letter = p[at + 1]
        self.pos = at + 2

        def braced() -> str:
            end = p.find("}", self.pos)
            if end < 0 or p[self.pos] != "{":
                raise self.fail(f"the escape \\{letter} without a closing brace", at)
            body = p[self.pos + 1 : end]
            self.pos = end + 1
            return body

        if letter in "pP":
            if self.pos < len(p) and p[self.pos] == "{":
                return f"\\{letter}{{{braced()}}}"
            if self.pos >= len(p):
                raise self.fail("an unfinished \\p", at)
            self.pos += 1
            return f"\\{letter}{{{p[self.pos - 1]}}}"  # \pL is only Python's shorthand
        if letter == "x" and self.pos < len(p) and p[self.pos] == "{":
            return self.code_point(int(_hex(braced(), self.fail, at), 16))
        if letter == "x":
            self.pos = min(self.pos + 2, len(p))
            return p[at : self.pos]
        if letter == "u":
            self.pos += 4
            return p[at : self.pos]
        if letter == "U":
            self.pos += 8
            return self.code_point(int(_hex(p[at + 2 : self.pos], self.fail, at), 16))
        if letter == "N" and self.to_onig:  # \N{NAME}, a character by its Unicode name
            name = braced()
            try:
                return self.code_point(ord(unicodedata.lookup(name)))
            except KeyError:
                raise self.fail(f"the unknown character name {name!r}", at) from None
        if letter == "N" and not in_class:  # Oniguruma's "any character but a newline"
            return r"[^\n]"
        if letter in "kg" and self.pos < len(p) and p[self.pos] in "<'{":
            close = {"<": ">", "'": "'", "{": "}"}[p[self.pos]]
            end = p.find(close, self.pos + 1)
            if end < 0:
                raise self.fail(f"an unfinished \\{letter} reference", at)
            name = p[self.pos + 1 : end]
            self.pos = end + 1
            if letter == "g":
                raise self.fail(f"the subroutine call \\g<{name}>", at)
            return f"\\k<{name}>" if self.to_onig else f"(?P={name})"
        if not in_class:
            if self.to_onig and letter == "Z":
                return r"\z"
            if not self.to_onig and letter == "Z":
                return "$"
            if not self.to_onig and letter == "z":
                return r"\Z"
        if not self.to_onig and letter in "hH":  # Oniguruma's hex-digit class
            if letter == "h":
                return "0-9a-fA-F" if in_class else "[0-9a-fA-F]"
            if not in_class:
                return "[^0-9a-fA-F]"
            raise self.fail("\\H inside a character class", at)
        return p[at : self.pos]

    def code_point(self, value: int) -> str:
        if self.to_onig:
            return f"\\x{{{value:X}}}"
        return f"\\U{value:08X}"

    def char_class(self) -> str:
        p, at = self.pattern, self.pos
        parts = ["["]
        i = at + 1
        if i < len(p) and p[i] == "^":
            parts.append("^")
            i += 1
        if i < len(p) and p[i] == "]":  # a "]" right after "[" or "[^" is a literal
            parts.append("\\]")
            i += 1
        while True:
            if i >= len(p):
                raise self.fail("an unclosed character class", at)
            ch = p[i]
            if ch == "]":
                parts.append("]")
                self.pos = i + 1
                return "".join(parts)
            if ch == "\\":
                self.pos = i
                parts.append(self.escape(in_class=True))
                i = self.pos
                continue
            if ch == "[":
                end = p.find(":]", i)
                posix = p[i + 1 : end + 1] if end > 0 else ""
                if posix.startswith(":") and posix[1:-1].replace("^", "").isalpha():
                    parts.append(p[i : end + 2])  # [:alpha:] means the same in both
                    i = end + 2
                    continue
                if not self.to_onig:
                    raise self.fail("a nested character class", i)
                parts.append("\\[")  # a literal for the regex module, nesting for Oniguruma
            elif ch == "&":
                if not self.to_onig and p.startswith("&&", i):
                    raise self.fail("a character class intersection (&&)", i)
                parts.append("\\&" if self.to_onig else "&")
            else:
                parts.append(ch)
            i += 1


def _hex(digits: str, fail: Callable[[str, int], ScratchLMError], at: int) -> str:
    if not digits or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise fail(f"the code point {digits!r}", at)
    return digits
