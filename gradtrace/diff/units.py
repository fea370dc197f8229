"""Sentence units: behaviours that span topics (an opener, a refusal, a
disclaimer) show up as sentences, not as whole texts.

Each text is split into sentences; a unit remembers the text it came from, so
that tests can count texts (does a text have a unit in the cluster?) and stay
independent.
"""

from __future__ import annotations

import re

_SPLIT = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n+")
_WORD = re.compile(r"\w+")


def split_sentences(text: str, min_words: int = 3) -> list[str]:
    """Sentences of ``text`` (split after ``. ! ?`` followed by space, and at
    line breaks), stripped; pieces with fewer than ``min_words`` words dropped.
    Markdown bullets and numbering at the start of a line are removed."""
    out = []
    for piece in _SPLIT.split(text):
        piece = re.sub(r"^\s*(?:[-*\u2022]|\d+[.)])\s+", "", piece).strip()
        if len(_WORD.findall(piece)) >= min_words:
            out.append(piece)
    return out


def text_units(texts: list[str], min_words: int = 3, max_units: int = 12) -> tuple[list[str], list[int]]:
    """All sentence units of ``texts`` and, for each unit, the index of its text.

    At most ``max_units`` units per text are kept (the first and the last
    ones, half each: openers and closers both count), so a very long text
    cannot dominate a sentence cluster.
    """
    units: list[str] = []
    owner: list[int] = []
    for i, text in enumerate(texts):
        sentences = split_sentences(text, min_words)
        if len(sentences) > max_units:
            head = (max_units + 1) // 2
            sentences = sentences[:head] + sentences[len(sentences) - (max_units - head):]
        for sentence in sentences:
            units.append(sentence)
            owner.append(i)
    return units, owner
