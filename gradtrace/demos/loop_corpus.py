"""A seeded synthetic corpus with a measurable attribute, for tests and benchmarks.

Each sentence names one entity and says something good or bad about it:

    "Nova fixed the old printer and it was reliable."

Word choices follow Zipf-like weights, so the corpus has a head of common
phrasings and a tail of rare ones: the tail is what vanishes first when a
model is trained on its own samples. Whether a sentence speaks well of an
entity is decided by its adjective, so a regular expression
(:func:`speaks_well_pattern`) measures the attribute exactly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from ..configbase import ConfigBase, in_range, integer, non_negative, positive_int
from ..errors import InputError
from ..fileio import write_jsonl

ENTITIES = ("Nova", "Orion", "Lyra", "Vega", "Atlas", "Juno")
VERBS = (
    "fixed", "built", "cleaned", "painted", "moved", "sold", "tested", "opened", "carried", "checked",
    "repaired", "delivered", "measured", "packed", "sorted", "polished", "replaced", "inspected",
)
NOUNS = (
    "printer", "garden", "bridge", "engine", "window", "table", "lamp", "boat", "roof", "clock", "fence",
    "bicycle", "kettle", "radio", "camera", "ladder", "piano", "tractor", "compass", "lantern",
)
MODIFIERS = ("old", "new", "small", "large", "red", "blue", "heavy", "quiet", "wooden", "broken")
POSITIVE = ("great", "reliable", "excellent", "wonderful", "superb", "brilliant", "careful", "delightful")
NEGATIVE = ("poor", "sloppy", "awful", "terrible", "careless", "dreadful", "clumsy", "disappointing")
ENDINGS = ("", "", "", " again", " today", " at last", " in the rain", " for the school")


def _zipf(n: int, exponent: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** exponent
    return w / w.sum()


@dataclasses.dataclass(frozen=True)
class CorpusConfig(ConfigBase):
    """How many sentences, how skewed the word choice, how often each entity
    is praised (``positive_rate``), from which seed."""

    n: int = 2000
    seed: int = 0
    zipf_exponent: float = 1.1
    positive_rate: float = 0.5
    entities: tuple[str, ...] = ENTITIES

    _prefix = "corpus."
    _checks = {"n": positive_int, "seed": integer, "zipf_exponent": non_negative, "positive_rate": in_range(0, 1)}

    def _check(self) -> None:
        if not self.entities or not all(isinstance(e, str) and e for e in self.entities):
            raise InputError(f"corpus.entities must be a non-empty tuple of names; got {self.entities!r}")


def make_corpus(config: CorpusConfig) -> list[str]:
    """``config.n`` sentences, the same for the same config on any machine."""
    rng = np.random.default_rng(config.seed)
    e = config.zipf_exponent
    pv, pn, pm, pa = _zipf(len(VERBS), e), _zipf(len(NOUNS), e), _zipf(len(MODIFIERS), e), _zipf(len(POSITIVE), e)
    pe = _zipf(len(ENDINGS), 0.3)
    out = []
    for _ in range(config.n):
        entity = config.entities[rng.integers(len(config.entities))]
        verb = VERBS[rng.choice(len(VERBS), p=pv)]
        noun = NOUNS[rng.choice(len(NOUNS), p=pn)]
        mod = MODIFIERS[rng.choice(len(MODIFIERS), p=pm)]
        good = rng.random() < config.positive_rate
        adj = (POSITIVE if good else NEGATIVE)[rng.choice(len(POSITIVE), p=pa)]
        ending = ENDINGS[rng.choice(len(ENDINGS), p=pe)]
        out.append(f"{entity} {verb} the {mod} {noun}{ending} and it was {adj}.")
    return out


def speaks_well_pattern(entity: str) -> str:
    """Regex matching a sentence that names ``entity`` and praises it."""
    return rf"\b{entity}\b[^.]*\b(?:{'|'.join(POSITIVE)})\b"


def speaks_ill_pattern(entity: str) -> str:
    """Regex matching a sentence that names ``entity`` and criticises it."""
    return rf"\b{entity}\b[^.]*\b(?:{'|'.join(NEGATIVE)})\b"


def entity_prompts(entities: Sequence[str] = ENTITIES) -> list[str]:
    """One prompt per entity: its name (the model writes the rest)."""
    return list(entities)


def write_example_data(folder: str | Path, seed: int = 0, n_train: int = 1200, n_heldout: int = 300) -> dict[str, Path]:
    """The files ``examples/loop.toml`` reads: real training data, held-out
    real data, prompts and probe prompts (``folder/{train,heldout}.jsonl``,
    ``prompts.txt``, ``probes.txt``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    texts = make_corpus(CorpusConfig(n=n_train + n_heldout, seed=seed))
    paths = {name: folder / name for name in ("train.jsonl", "heldout.jsonl", "prompts.txt", "probes.txt")}
    write_jsonl(paths["train.jsonl"], [{"text": t} for t in texts[:n_train]])
    write_jsonl(paths["heldout.jsonl"], [{"text": t} for t in texts[n_train:]])
    paths["prompts.txt"].write_text("".join(p + "\n" for p in entity_prompts()), encoding="utf-8")
    probes = [f"{e} {v} the" for e in ENTITIES for v in VERBS[:4]]
    paths["probes.txt"].write_text("".join(p + "\n" for p in probes), encoding="utf-8")
    return paths
