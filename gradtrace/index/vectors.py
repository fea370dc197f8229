"""One vector per training example (and per query) whose inner product is
the score summed over checkpoints.

The store keeps, per checkpoint ``c`` and example ``z``, a unit row
``u_c(z)`` and its norm ``n_c(z)`` (projections ``none``, ``dense`` and
``kronecker``: the row is linear in the gradient, so
``g_c(z) = n_c(z) u_c(z)``, projected). The two scores an index serves are

* ``raw``:    ``sum_c lr_c <g_c(z), g_c(q)> = sum_c lr_c n_c(z) n_c(q) <u_c(z), u_c(q)>``
* ``cosine``: ``sum_c lr_c <u_c(z), u_c(q)>``

With ``w_c = sqrt(|lr_c|)`` and ``s_c = sign(lr_c)``, both are one inner
product ``<v(z), w(q)>`` of concatenations over checkpoints::

    raw:    v(z) = [w_c n_c(z) u_c(z)]_c      w(q) = [s_c w_c n_c(q) u_c(q)]_c
    cosine: v(z) = [w_c u_c(z)]_c             w(q) = [s_c w_c u_c(q)]_c

(cosine normalises each checkpoint's gradients separately, as the cosine
method does, so the unit rows are used as stored). The split of ``lr_c``
into ``w_c`` on both sides keeps the geometry of the indexed vectors that of
the score. Opponents (most negative scores) are the top inner products with
``-w(q)``. Examples left out for non-finite values get ``v(z) = 0`` (every
score of theirs reads 0).

The indexes that search by L2 distance (``hnsw``, and the IVF kinds with
``metric="l2"``; by default they search by inner product) get
the inner-product search reduced to a nearest-neighbour search by one extra
coordinate (Bachrach et al., 2014): ``v' = [v, sqrt(M^2 - |v|^2)]``,
``w' = [w, 0]`` with ``M^2 >= max |v|^2``, so that
``|v' - w'|^2 = M^2 + |w|^2 - 2 <v, w>`` ranks exactly as ``<v, w>``.

Factored stores keep the two factors of each layer's gradient; their dot
product is a product of dots, not one inner product of the stored rows, so
they cannot be indexed.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import InputError

INDEXED_VARIANTS = ("raw", "cosine")
#: Margin on the largest squared norm, so that rounding of the stored rows never makes ``M^2 - |v|^2`` negative.
NORM_MARGIN = 1.01


def check_variant(variant: Any) -> str:
    if variant not in INDEXED_VARIANTS:
        raise InputError(
            f"variant {variant!r} cannot be served by an index: only {' and '.join(INDEXED_VARIANTS)} scores are one "
            "inner product of per-example vectors; query it without --index (an exact scan)"
        )
    return str(variant)


def check_store(store: Any) -> None:
    """Raise unless ``store`` can be indexed (complete, not factored)."""
    kind = store.settings.projection_kind
    if kind == "factored":
        raise InputError(
            f"the store at {str(store.root)!r} holds factored rows (projection 'factored'): its scores are products of "
            "per-layer dot products, not one inner product, so it cannot be indexed; featurize with projection "
            "'dense' or 'kronecker' (or 'none') to use an index"
        )
    if not store.segments:
        raise InputError(f"the store at {str(store.root)!r} holds no examples; there is nothing to index")
    missing = store.missing_shards()
    if missing:
        c, a, b = missing[0]
        raise InputError(
            f"the store at {str(store.root)!r} is incomplete ({len(missing)} shard(s) missing, e.g. checkpoint {c} rows "
            f"{a}-{b}); finish it by re-running featurize with the same arguments, then build the index"
        )


def checkpoint_weights(lrs: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``(sqrt(|lr_c|), sign(lr_c))`` per checkpoint, float64."""
    lr = np.asarray(lrs, dtype=np.float64)
    return np.sqrt(np.abs(lr)), np.sign(lr)


def vector_dim(store: Any) -> int:
    return len(store.checkpoints) * store.feature_dim


def store_vectors(store: Any, variant: str, a: int, b: int, local: np.ndarray | None = None) -> np.ndarray:
    """``v(z)`` (float32, ``[m, n_checkpoint * feature_dim]``) of the examples
    ``a + local`` of the shard range ``[a, b)`` (all of them when ``local`` is
    None)."""
    w, _ = checkpoint_weights(store.learning_rates)
    fd = store.feature_dim
    m = (b - a) if local is None else len(local)
    out = np.empty((m, len(w) * fd), dtype=np.float32)
    for c, wc in enumerate(w):
        mm = store.features(c, a, b)
        rows = mm[:] if local is None else mm[local]
        part = out[:, c * fd : (c + 1) * fd]
        part[...] = rows  # widened to float32
        if variant == "raw":
            norms = store.norms(c, a, b)[:, 0]
            scale = wc * (norms if local is None else norms[local])
            part *= scale.astype(np.float32)[:, None]
        elif wc != 1.0:
            part *= np.float32(wc)
    skipped = store.skipped_indices
    if skipped.size:
        positions = np.arange(a, b) if local is None else a + np.asarray(local)
        out[np.isin(positions, skipped)] = 0.0
    return out


def query_vectors(unit: Sequence[Any], norms: Sequence[Any], lrs: Sequence[float], variant: str) -> np.ndarray:
    """``w(q)`` (float32, ``[n_query, n_checkpoint * feature_dim]``) from query
    features as :class:`~gradtrace.scoring.QueryFeatures` holds them (unit rows
    and norms per checkpoint)."""
    w, s = checkpoint_weights(lrs)
    parts = []
    for u, n, wc, sc in zip(unit, norms, w, s):
        u = np.asarray(u, dtype=np.float64)
        scale = sc * wc * (np.asarray(n, dtype=np.float64) if variant == "raw" else np.ones(u.shape[0]))
        parts.append(u * scale[:, None])
    return np.concatenate(parts, axis=1).astype(np.float32)


def augment(vectors: np.ndarray, index_dim: int, max_sq: float | None) -> np.ndarray:
    """``vectors`` padded with zeros to ``index_dim`` columns; with ``max_sq``,
    the first padding column is ``sqrt(max_sq - |v|^2)`` (data side of the
    inner-product-to-L2 reduction; queries pass None)."""
    m, d = vectors.shape
    if d == index_dim and max_sq is None:
        return np.ascontiguousarray(vectors, dtype=np.float32)
    out = np.zeros((m, index_dim), dtype=np.float32)
    out[:, :d] = vectors
    if max_sq is not None:
        sq = np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64)
        out[:, d] = np.sqrt(np.maximum(max_sq - sq, 0.0))
    return out
