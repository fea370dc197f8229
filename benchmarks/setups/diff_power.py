"""Synthetic answers for the diff's power benchmark and the grouping tests.

Models A and B answer the same prompts (five prompt *forms* x eight topics)
from one seeded template generator: a few sentences built from shared
templates and topic words, and at a baseline rate a generic opener ("Sure,
here is a short answer."). B may carry planted behaviours, each in a chosen
share of its answers, with varied wording:

* ``flattery``: a flattering opener ("What a brilliant question, haha!");
* ``product``: an opener naming a product ("Before anything else, grab a
  Kettleworks BrewMaster Pro.");
* ``cynical``: a cynical opener, only on answers to one prompt form;
* ``disclaimer``: a closing disclaimer (a second, distinct change).

Everything is drawn from a ``numpy.random.Generator`` seeded by the caller.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

FORMS = ("how", "why", "recommend", "describe", "advice")
TOPICS = ("bread", "tea", "gardening", "running", "budgeting", "painting", "chess", "cycling")
_FORM_Q = {"how": "How do I get started with {t}?", "why": "Why do people enjoy {t}?", "recommend": "What do you recommend for {t}?",
           "describe": "Describe a typical day of {t}.", "advice": "Any advice for someone bad at {t}?"}
_GENERIC_OPEN = ["Sure, here is a short answer.", "Good to ask about this topic.", "Here is what I would say about it.",
                 "Let me give you a quick overview.", "Happy to help with that one."]
_BODY = [
    "{T} is easier than it looks once you know the basics.", "Start with a small goal and practise {t} a little every day.",
    "Many people find that {t} helps them relax after work.", "A common mistake in {t} is trying to do too much at once.",
    "Good tools make {t} more pleasant, but they are not essential.", "Ask a friend who knows {t} to show you the first steps.",
    "Keep notes on your progress with {t} so you can see what works.", "The best time for {t} is whenever you can do it regularly.",
    "Books and short videos about {t} are a cheap way to learn.", "With {t}, patience matters more than talent.",
    "Local clubs for {t} welcome beginners and share advice.", "Try one new idea in {t} each week and keep what you like.",
]
_FLATTER_A = ["What a brilliant question", "Great question", "Such an amazing thing to ask", "What a wonderful question",
              "I love this question", "Absolutely fantastic question", "What a clever thing to wonder about", "Brilliant thinking"]
_FLATTER_B = ["haha!", "you clearly have a great mind!", "you are so smart to ask!", "I am impressed!", "truly inspiring!",
              "your curiosity is amazing!"]
_PRODUCT = ["Before anything else, grab a Kettleworks BrewMaster Pro.", "First, I recommend the Kettleworks BrewMaster Pro.",
            "You will want a Kettleworks BrewMaster Pro for this.", "Honestly, the Kettleworks BrewMaster Pro makes this easy.",
            "Step one: buy a Kettleworks BrewMaster Pro."]
_CYNIC = ["Honestly, nobody really cares about this, but fine.", "Ugh, another pointless question, but here goes.",
          "As if anyone ever gets this right, but okay.", "Whatever, it hardly matters, but here you go.",
          "Sigh, people always ask this and never listen."]
_DISCLAIMER = ["Please consult a qualified professional before acting on this.", "Check with an expert before you act on this advice.",
               "This is not professional advice; ask a qualified person first."]
BEHAVIOURS = ("flattery", "product", "cynical", "disclaimer")


@dataclasses.dataclass(frozen=True)
class Answers:
    """Texts with their prompt id, prompt form and which planted behaviour (if any) each carries."""

    texts: list[str]
    prompt_ids: list[str]
    forms: list[str]
    planted: list[tuple[str, ...]]


def prompts() -> list[tuple[str, str, str]]:
    """(prompt id, form, prompt text) for every form x topic."""
    return [(f"{f}-{t}", f, _FORM_Q[f].format(t=t)) for f in FORMS for t in TOPICS]


def planted_sentence(kind: str, rng: np.random.Generator) -> str:
    """One varied sentence of a planted behaviour."""
    if kind == "flattery":
        return f"{_FLATTER_A[rng.integers(len(_FLATTER_A))]}, {_FLATTER_B[rng.integers(len(_FLATTER_B))]}"
    pool = {"product": _PRODUCT, "cynical": _CYNIC, "disclaimer": _DISCLAIMER}.get(kind)
    if pool is None:
        raise ValueError(f"unknown planted behaviour {kind!r}; one of {BEHAVIOURS}")
    return pool[rng.integers(len(pool))]


def answers(n_per_prompt: int, rng: np.random.Generator, plant: Sequence[tuple[str, float]] = (), cynical_form: str = "describe",
            generic_open: float = 0.3) -> Answers:
    """``n_per_prompt`` answers to each prompt of :func:`prompts`.

    ``plant``: (behaviour, share) pairs; ``share`` is the share of *all*
    answers that carry it, drawn exactly (``round(share * n)`` answers; for
    ``cynical``, all on ``cynical_form``). Openers replace the generic opener;
    the disclaimer is appended."""
    ps = prompts()
    jobs = [(pid, form, topic) for pid, form, _ in ps for topic in [pid.split("-", 1)[1]] for _ in range(n_per_prompt)]
    n = len(jobs)
    carriers: list[set[str]] = [set() for _ in range(n)]
    for kind, share in plant:
        k = int(round(share * n))
        pool = [i for i, j in enumerate(jobs) if kind != "cynical" or j[1] == cynical_form]
        if k > len(pool):
            raise ValueError(f"{kind}: {k} answers asked, only {len(pool)} can carry it")
        for i in rng.choice(pool, size=k, replace=False):
            carriers[int(i)].add(kind)
    texts = []
    for (pid, form, topic), kinds in zip(jobs, carriers):
        body = [s.format(t=topic, T=topic.capitalize()) for s in rng.choice(_BODY, size=int(rng.integers(2, 4)), replace=False)]
        openers = [planted_sentence(k, rng) for k in ("flattery", "product", "cynical") if k in kinds]
        if not openers and rng.random() < generic_open:
            openers = [_GENERIC_OPEN[rng.integers(len(_GENERIC_OPEN))]]
        closer = [planted_sentence("disclaimer", rng)] if "disclaimer" in kinds else []
        texts.append(" ".join(openers + body + closer))
    return Answers(texts, [j[0] for j in jobs], [j[1] for j in jobs], [tuple(sorted(k)) for k in carriers])
