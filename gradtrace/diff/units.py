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


def _keep(n: int, max_units: int) -> list[int]:
    """Indices of the units a text keeps: all, or the first and the last ones (half each)."""
    if n <= max_units:
        return list(range(n))
    head = (max_units + 1) // 2
    return list(range(head)) + list(range(n - (max_units - head), n))


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
        for j in _keep(len(sentences), max_units):
            units.append(sentences[j])
            owner.append(i)
    return units, owner


def unit_spans(text: str, min_words: int = 3, max_units: int = 12) -> list[tuple[str, int, int]]:
    """The units :func:`text_units` keeps for ``text``, each with its character span ``[start, end)`` in ``text``."""
    sentences = split_sentences(text, min_words)
    spans: list[tuple[str, int, int]] = []
    cursor = 0
    for s in sentences:
        start = text.find(s, cursor)
        if start < 0:  # cannot happen: a unit is a stripped piece of the text
            start = text.find(s)
        spans.append((s, start, start + len(s)))
        cursor = start + len(s)
    return [spans[j] for j in _keep(len(spans), max_units)]
