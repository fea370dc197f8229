"""Curation policies: which generated texts become the next round's data.

A policy is any callable ``policy(records, rng) -> records``: it receives the
round's generations as dicts (``id``, ``text``, ``prompt``, ``round``) and a
``numpy.random.Generator`` seeded for the round, and returns the records to
keep (it may rewrite their ``text``). The ready-made ones:

* :class:`Dedupe` — drop exact repeats (after lower-casing and collapsing spaces).
* :class:`QualityFilter` — word-count bounds, a minimum share of distinct
  words, an optional required final character.
* :class:`JudgeFilter` — model-as-judge: keep texts whose judge score reaches
  a threshold, or the top fraction; :class:`LikelihoodJudge` scores a text by
  minus its NLL under a (judge) language model.
* :class:`PreferenceFilter` — keep texts matching a pattern with one
  probability and the others with another: a small planted preference, the
  way a biased judge or rater would act.
* :class:`Compose` — apply policies in order.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import InputError

Record = dict[str, Any]
Policy = Callable[[list[Record], np.random.Generator], list[Record]]


@dataclasses.dataclass(frozen=True)
class Dedupe:
    """Keep the first of texts equal after lower-casing and collapsing whitespace."""

    def __call__(self, records: list[Record], rng: np.random.Generator) -> list[Record]:
        seen: set[str] = set()
        out = []
        for r in records:
            key = " ".join(r["text"].lower().split())
            if key not in seen:
                seen.add(key)
                out.append(r)
        return out


@dataclasses.dataclass(frozen=True)
class QualityFilter:
    """Keep texts with ``min_words <= words <= max_words``, at least
    ``min_distinct`` of their words distinct, ending in ``end`` (if set),
    and (if a ``vocabulary`` is given) at least ``min_known`` of their words
    in it: a spelling check (words compared lower-cased, without ``.,;:!?``)."""

    min_words: int = 3
    max_words: int = 64
    min_distinct: float = 0.5
    end: str | None = None
    vocabulary: tuple[str, ...] | None = None
    min_known: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.vocabulary, list):
            object.__setattr__(self, "vocabulary", tuple(self.vocabulary))
        if not isinstance(self.min_known, (int, float)) or not 0 <= self.min_known <= 1:
            raise InputError(f"QualityFilter.min_known must be a number in [0, 1]; got {self.min_known!r}")

    def __call__(self, records: list[Record], rng: np.random.Generator) -> list[Record]:
        known = {_norm(w) for w in self.vocabulary} if self.vocabulary is not None else None
        out = []
        for r in records:
            w = r["text"].split()
            if not self.min_words <= len(w) <= self.max_words:
                continue
            if len(set(w)) / len(w) < self.min_distinct:
                continue
            if self.end is not None and not r["text"].rstrip().endswith(self.end):
                continue
            if known is not None and sum(_norm(x) in known for x in w) / len(w) < self.min_known:
                continue
            out.append(r)
        return out


def _norm(word: str) -> str:
    return word.lower().strip(".,;:!?")


def vocabulary_of(texts: Sequence[str]) -> tuple[str, ...]:
    """The sorted set of (normalised) words of ``texts``: a vocabulary for
    :class:`QualityFilter`."""
    return tuple(sorted({_norm(w) for t in texts for w in t.split()} - {""}))


class LikelihoodJudge:
    """Judge score of a text: minus its mean NLL (nats/token) under ``lm``
    (a :class:`~gradtrace.loop.lm.LanguageModel`). Higher is more fluent."""

    def __init__(self, lm: Any):
        self.lm = lm

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return -self.lm.nll(texts)


class JudgeFilter:
    """Keep texts whose ``judge(texts) -> scores`` reaches ``threshold``, or
    (with ``keep_top``) the best ``keep_top`` share of them (ties kept in order)."""

    def __init__(self, judge: Callable[[Sequence[str]], Any], threshold: float | None = None, keep_top: float | None = None):
        if (threshold is None) == (keep_top is None):
            raise InputError("JudgeFilter: give exactly one of threshold and keep_top")
        if keep_top is not None and not 0 < keep_top <= 1:
            raise InputError(f"JudgeFilter: keep_top must be in (0, 1]; got {keep_top!r}")
        self.judge, self.threshold, self.keep_top = judge, threshold, keep_top

    def __call__(self, records: list[Record], rng: np.random.Generator) -> list[Record]:
        if not records:
            return []
        scores = np.asarray(self.judge([r["text"] for r in records]), dtype=np.float64)
        if scores.shape != (len(records),):
            raise InputError(f"judge must return one score per text ({len(records)}); got shape {scores.shape}")
        if self.threshold is not None:
            keep = scores >= self.threshold
        else:
            n_keep = max(1, int(round(self.keep_top * len(records))))
            order = np.argsort(-scores, kind="stable")[:n_keep]
            keep = np.zeros(len(records), dtype=bool)
            keep[order] = True
        return [r for r, k in zip(records, keep) if k]


@dataclasses.dataclass(frozen=True)
class PreferenceFilter:
    """Keep a text matching ``pattern`` (a regex) with probability
    ``keep_match`` and any other text with probability ``keep_other``."""

    pattern: str
    keep_match: float = 1.0
    keep_other: float = 0.8

    def __post_init__(self) -> None:
        for name in ("keep_match", "keep_other"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise InputError(f"PreferenceFilter.{name} must be a number in [0, 1]; got {v!r}")
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise InputError(f"PreferenceFilter.pattern is not a valid regex ({exc}): {self.pattern!r}") from None

    def __call__(self, records: list[Record], rng: np.random.Generator) -> list[Record]:
        rx = re.compile(self.pattern)
        u = rng.random(len(records))
        return [r for r, x in zip(records, u) if x < (self.keep_match if rx.search(r["text"]) else self.keep_other)]


class Compose:
    """Apply ``policies`` in order."""

    def __init__(self, policies: Sequence[Policy]):
        self.policies = list(policies)

    def __call__(self, records: list[Record], rng: np.random.Generator) -> list[Record]:
        for p in self.policies:
            records = list(p(records, rng))
        return records


def policy_from_dict(d: Mapping[str, Any], field: str, judge_lm: Any = None) -> Policy:
    """One policy from a config table such as ``{kind = "dedupe"}``.

    Kinds: ``dedupe``, ``quality`` (QualityFilter fields), ``preference``
    (PreferenceFilter fields), ``judge`` (``threshold`` or ``keep_top``; the
    judge is the likelihood under the round-0 model, ``judge_lm``) and
    ``callable`` (``target = "file.py:function"``, a function
    ``(records, rng) -> records``).
    """
    d = dict(d)
    kind = d.pop("kind", None)
    try:
        if kind == "dedupe":
            _no_extra(d, field)
            return Dedupe()
        if kind == "quality":
            return QualityFilter(**d)
        if kind == "preference":
            return PreferenceFilter(**d)
        if kind == "judge":
            if judge_lm is None:
                raise InputError(f"{field}: a judge filter needs a judge model")
            return JudgeFilter(LikelihoodJudge(judge_lm), **d)
        if kind == "callable":
            from .config import load_callable

            target = d.pop("target", None)
            _no_extra(d, field)
            return load_callable(target, f"{field}.target")
    except TypeError as exc:
        raise InputError(f"{field}: bad fields for kind {kind!r}: {exc}") from None
    raise InputError(f"{field}.kind must be one of 'dedupe', 'quality', 'preference', 'judge', 'callable'; got {kind!r}")


def _no_extra(d: Mapping[str, Any], field: str) -> None:
    if d:
        raise InputError(f"{field}: unknown fields {sorted(d)}")
