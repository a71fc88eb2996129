"""core/messages.py: the one way every stage talks to the terminal."""

from __future__ import annotations

import pytest

from scratchlm.core import messages


def test_warnings_show_even_when_quiet_and_notes_do_not(capsys: pytest.CaptureFixture[str]) -> None:
    messages.warn("3 files were skipped")
    messages.note("cropped the prompt")
    messages.status("tokenizer: 512 tokens")
    assert capsys.readouterr() == (
        "",
        "warning: 3 files were skipped\nnote: cropped the prompt\ntokenizer: 512 tokens\n",
    )
    with messages.quietly():
        assert messages.is_quiet()
        messages.warn("still shown")
        messages.note("hidden")
        messages.status("hidden")
    assert capsys.readouterr() == ("", "warning: still shown\n")


def test_quietly_nests_and_restores() -> None:
    assert not messages.is_quiet()
    with messages.quietly():
        with messages.quietly(False):  # an inner "not quiet" does not undo an outer quiet
            assert messages.is_quiet()
        assert messages.is_quiet()
    assert not messages.is_quiet()
    with pytest.raises(RuntimeError), messages.quietly():
        raise RuntimeError
    assert not messages.is_quiet()


def test_progress_bars_follow_quiet_and_the_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    with messages.progress(total=3, desc="counting", enabled=True) as bar:
        bar.update(3)
    assert "counting" in capsys.readouterr().err
    with messages.quietly(), messages.progress(total=3, desc="hidden", enabled=True) as bar:
        bar.update(3)
    with messages.progress(total=3, desc="not a terminal") as bar:  # capsys is no terminal
        bar.update(3)
    assert capsys.readouterr().err == ""
