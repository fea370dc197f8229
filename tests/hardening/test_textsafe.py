"""Untrusted strings reach the terminal as plain, visible text."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from gradtrace.textsafe import for_markup, for_terminal

NASTY = [
    "\x1b]0;pwned\x07",
    "\x1b[2J",
    "[link=https://evil.example]click[/link]",
    "a[/]b",
    "\u202eevil",
    "tab\there",
    "back\\x1bslash",
]


@pytest.mark.parametrize("text", NASTY)
def test_no_control_character_or_markup_survives(text: str) -> None:
    buf = io.StringIO()
    Console(file=buf, force_terminal=False, width=200).print(f"[bold]id:[/] {for_markup(text)}")
    shown = buf.getvalue()
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert "link" not in text or "[link=https://evil.example]" in shown  # the literal text, not a hyperlink
    assert "\t" not in shown


def test_escapes_are_unambiguous() -> None:
    assert for_terminal("\x1b") == "\\x1b"
    assert for_terminal("\\x1b") == "\\\\x1b"  # a literal backslash-x is not mistaken for ESC
    assert for_terminal("line1\nline2") == "line1\\x0aline2"
    assert for_terminal("line1\nline2", keep_newlines=True) == "line1\nline2"
    assert for_terminal("caf\u00e9 \u4e2d") == "caf\u00e9 \u4e2d"
