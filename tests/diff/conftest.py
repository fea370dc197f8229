"""Fixtures of the diff tests: synthetic texts whose embeddings are known."""

from __future__ import annotations

import types

import numpy as np
import pytest

from gradtrace.lm.embed import HashingEmbedder


class TableEmbedder:
    """Looks each text up in a table of known vectors; unknown texts (labels) get a hashing vector."""

    name = "table"

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table
        self.fallback = HashingEmbedder(dim=len(next(iter(table.values()))))

    def embed(self, texts):
        out = [self.table[t] if t in self.table else self.fallback.embed([t])[0] for t in texts]
        return np.stack(out).astype(np.float32) if out else np.zeros((0, 1), np.float32)


def mixture(n_a: int, n_b: int, weights_a, weights_b, seed: int, dim: int = 16, spread: float = 0.15):
    """Texts ``"<side> <i> topic<c>"`` whose vectors are a well-separated centre per topic plus noise.

    Returns (texts_a, texts_b, embedder, topic_of_text)."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[: len(weights_a)] * 3.0
    table: dict[str, np.ndarray] = {}
    topic: dict[str, int] = {}
    sides = []
    for side, n, w in (("a", n_a, weights_a), ("b", n_b, weights_b)):
        w = np.asarray(w, float) / np.sum(w)
        texts = []
        for i, c in enumerate(rng.choice(len(w), size=n, p=w)):
            t = f"{side} {i} topic{c}"
            table[t] = centres[c] + spread * rng.standard_normal(dim)
            topic[t] = int(c)
            texts.append(t)
        sides.append(texts)
    return sides[0], sides[1], TableEmbedder(table), topic


@pytest.fixture(scope="session")
def synth() -> types.SimpleNamespace:
    return types.SimpleNamespace(mixture=mixture, TableEmbedder=TableEmbedder)
