"""Stop strings across token boundaries, and in the batched text generator."""

from __future__ import annotations

import pytest

from scratchlm.core.errors import ScratchLMError
from scratchlm.inference.stop_strings import StopStringMatcher


def run(pieces: list[str], stop: list[str]) -> tuple[list[str], bool]:
    m = StopStringMatcher(stop)
    out = [m.feed(p) for p in pieces]
    if not m.stopped:
        out.append(m.flush())
    return out, m.stopped


def test_stop_string_spanning_pieces_is_never_shown() -> None:
    out, stopped = run(["Hello\n", "Us", "er: hi"], ["User:"])
    assert stopped
    assert "".join(out) == "Hello\n"
    # "Us" could begin "User:", so it was held back rather than streamed.
    assert out[1] == ""


def test_held_back_text_is_released_when_it_is_no_stop() -> None:
    out, stopped = run(["ab", "U", "s", "a"], ["User:"])
    assert not stopped
    assert out == ["ab", "", "", "Usa", ""]
    out, stopped = run(["ab", "U"], ["User:"])
    assert out == ["ab", "", "U"]  # the end of generation flushes the held tail


def test_earliest_of_several_stops_wins() -> None:
    out, stopped = run(["one two three"], ["three", "two"])
    assert stopped and "".join(out) == "one "
    out, _ = run(["x\n", "\ny"], ["\n\n"])
    assert "".join(out) == "x"


def test_empty_stop_string_is_a_user_error() -> None:
    with pytest.raises(ScratchLMError, match="stop string is empty"):
        StopStringMatcher(["ok", ""])
