"""Untrusted text (example ids, tags, model outputs, paths) made safe to show.

Training data and model outputs are untrusted: an id may hold terminal
escape sequences (``ESC]0;title``, ``ESC[2J``), bidirectional overrides that
reorder what the reader sees, or Rich markup (``[link=...]``, ``[/]``).
:func:`for_terminal` turns every control and format character into a visible
escape (``\\x1b``, ``\\u202e``), so the text is shown, never executed;
:func:`for_markup` also escapes Rich markup, for text placed inside a string
that Rich parses as markup. HTML has its own escaping (``html.escape``) in
the report modules.
"""

from __future__ import annotations

import unicodedata

# Categories shown as escapes: Cc (C0/C1 controls: ESC, BEL, CR, ...), Cf (format:
# bidi overrides, zero-width joiners), Cs (lone surrogates), Co/Cn (private, unassigned).
_UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn"}


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def for_terminal(value: object, *, keep_newlines: bool = False) -> str:
    """``str(value)`` with every control/format character shown as an escape.

    Backslashes are doubled first, so an escape in the output always means an
    escaped character. ``keep_newlines`` keeps ``\\n`` (for multi-line text
    such as a sampled answer); tabs and everything else are escaped.
    """
    text = str(value).replace("\\", "\\\\")
    out = []
    for ch in text:
        if keep_newlines and ch == "\n":
            out.append(ch)
        elif unicodedata.category(ch) in _UNSAFE_CATEGORIES:
            out.append(_escape_char(ch))
        else:
            out.append(ch)
    return "".join(out)


def for_markup(value: object, *, keep_newlines: bool = False) -> str:
    """:func:`for_terminal`, then Rich markup escaped (``[`` cannot open a tag)."""
    from rich.markup import escape

    return escape(for_terminal(value, keep_newlines=keep_newlines))
