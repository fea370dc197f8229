"""Build, save, open and search an approximate index of a gradient store.

An index is a derived artefact: a FAISS index of the vectors of
:mod:`gradtrace.index.vectors` (one per training example, whose inner
product with a query's vector is the raw or cosine score summed over
checkpoints) and a small JSON file beside it that records the settings, the
store's :meth:`~gradtrace.store.GradientStore.content_fingerprint` and the
index file's checksum. Both live in an index folder (by default ``index/``
inside the store), one pair per variant::

    STORE/index/raw.json                 settings, store fingerprint, file name, sha256
    STORE/index/raw-<sha256[:16]>.faiss  the FAISS index

The JSON file is written last, by atomic rename, and names the index file it
belongs to, so a reader sees the old index or the new one, never a mix; a
rebuild (rerun ``gradtrace index``) replaces both. Opening an index for a
store whose fingerprint differs from the recorded one is refused.

Search returns candidates only; :class:`gradtrace.Attributor` re-ranks them
exactly against the store (see ``Attributor(index=...)``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..configbase import in_range, non_negative_int, positive_int
from ..errors import InputError, MissingDependencyError, StoreError
from ..fileio import atomic_write_bytes, json_bytes, write_temporary_with
from ..fingerprint import file_sha256
from ..progress import human_bytes, progress_bar
from ..store.gradient_store import GradientStore
from ..store.settings import dict_differences
from .vectors import NORM_MARGIN, augment, check_store, check_variant, store_vectors, vector_dim

FORMAT = "gradtrace.store-index"
FORMAT_VERSION = 2
KINDS = ("flat", "ivf", "ivfsq", "ivfpq", "hnsw")
IVF_KINDS = ("ivf", "ivfsq", "ivfpq")
#: ``ivfsq``: the scalar quantizer of each number (FAISS ``QT_8bit``: one byte, per-dimension range; ``QT_fp16``: two).
SQ_TYPES = ("8bit", "fp16")
#: Coarse quantizers of the IVF kinds: an exact search of the list centroids, or an HNSW graph over them (many lists).
QUANTIZERS = ("flat", "hnsw")
#: How the IVF kinds search for large inner products: ``l2`` (each bucket's vectors augmented by one coordinate so that
#: the L2 distance ranks as the inner product; lists are k-means cells of the augmented vectors) or ``ip`` (lists are
#: spherical k-means cells of the vectors' directions, probed and scanned by inner product).
METRICS = ("l2", "ip")
#: Raw scores: the share of rows (largest vector norms) searched exactly by default.
DEFAULT_EXACT_SHARE = 1 / 32
#: ``kind="auto"``: ``flat`` (exact search) below this many examples, AUTO_KIND from it on.
AUTO_FLAT_BELOW = 100_000
AUTO_KIND = "ivfsq"
#: Default norm buckets: one up to 4 x this many rows (outside the exact share); each bucket holds at least ~4 x this many.
FLAT_BUCKET_ROWS = 65536
#: Search-time pruning: slack on the k-th exact-bucket score, relative to |w(q)| x the largest vector norm, for float32 rounding.
PRUNE_SLACK = 1e-4
#: Candidates beyond k taken from an exact (flat) bucket: its float32 search may order near-ties otherwise than the exact scores.
EXACT_MARGIN = 16
#: k-means rounds that train the inverted lists (FAISS's default is 25; the lists change little after 10).
KMEANS_ROUNDS = 10
#: Rows turned into vectors and added to the index at a time.
CHUNK_ROWS = 16384
FOLDER = "index"
INSTALL = "pip install 'gradtrace[index]'  (or: pip install faiss-cpu)"


def import_faiss() -> Any:
    """The ``faiss`` module, or :class:`MissingDependencyError` naming the extra."""
    try:
        import faiss  # type: ignore[import-not-found]
    except ImportError:
        raise MissingDependencyError("faiss-cpu", "the store index (gradtrace index, query --index)", INSTALL) from None
    return faiss


def index_folder(store: GradientStore, folder: str | Path | None = None) -> Path:
    """Where the indexes of ``store`` live: ``folder``, or ``index/`` inside the store."""
    return Path(folder) if folder is not None else store.root / FOLDER


def store_summary(store: GradientStore) -> dict[str, Any]:
    """The store fields an index records (to say what changed when it is refused)."""
    return {
        "root": str(store.root), "examples": store.n_examples, "checkpoints": len(store.checkpoints),
        "learning_rates": [float(lr) for lr in store.learning_rates], "feature_dim": store.feature_dim,
        "dtype": store.settings.dtype, "projection": dict(store.settings.projection), "segments": len(store.segments),
    }


@dataclasses.dataclass(frozen=True)
class IndexParams:
    """Settings of an index (``None``: chosen from the store's size; see :func:`build_index`)."""

    kind: str = "auto"
    nlist: int | None = None
    nprobe: int | None = None
    pq_m: int | None = None
    sq_type: str = "8bit"
    quantizer: str = "flat"
    metric: str = "ip"
    exact_share: float | None = None
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 256
    train_sample: int | None = None
    norm_buckets: int | None = None
    seed: int = 0

    def resolved(self, n: int, dim: int, variant: str) -> dict[str, Any]:
        """Every setting, defaults filled in for ``n`` vectors of ``dim`` numbers
        (InputError naming the setting when one cannot fit)."""
        kind = self.kind
        if kind == "auto":
            kind = "flat" if n < AUTO_FLAT_BELOW else AUTO_KIND
        if kind not in KINDS:
            raise InputError(f"kind must be one of auto, {', '.join(KINDS)}; got {self.kind!r}")
        for name in ("nlist", "nprobe", "pq_m", "train_sample", "norm_buckets"):
            value = getattr(self, name)
            if value is not None:
                positive_int(value, name)
        for name in ("hnsw_m", "ef_construction", "ef_search"):
            positive_int(getattr(self, name), name)
        non_negative_int(self.seed, "seed")
        if self.sq_type not in SQ_TYPES:
            raise InputError(f"sq_type must be one of {', '.join(SQ_TYPES)}; got {self.sq_type!r}")
        if self.quantizer not in QUANTIZERS:
            raise InputError(f"quantizer must be one of {', '.join(QUANTIZERS)}; got {self.quantizer!r}")
        if self.metric not in METRICS:
            raise InputError(f"metric must be one of {', '.join(METRICS)}; got {self.metric!r}")
        if self.exact_share is not None:
            in_range(0.0, 1.0, high_open=True)(self.exact_share, "exact_share")
        out: dict[str, Any] = {"kind": kind, "seed": self.seed, "vector_dim": dim}
        if kind == "flat":
            if self.norm_buckets not in (None, 1):
                raise InputError(f"norm_buckets applies to kinds ivf, ivfsq, ivfpq and hnsw (flat searches exactly); got {self.norm_buckets!r}")
            out.update(norm_buckets=1, exact_share=1.0, exact_rows=0)
            return out
        share = self.exact_share if self.exact_share is not None else (DEFAULT_EXACT_SHARE if variant == "raw" else 0.0)
        exact_rows = min(n - 1, math.ceil(share * n))  # at least one row stays in an approximate bucket
        rest = n - exact_rows
        buckets = self.norm_buckets if self.norm_buckets is not None else default_norm_buckets(rest, variant)
        if buckets > 1 and rest >> max(1, buckets - 2) < 1:
            raise InputError(
                f"norm_buckets ({buckets}) is too many for the {rest} examples outside the exact share (the top bucket would be empty)"
            )
        out.update(norm_buckets=buckets, exact_share=float(share), exact_rows=exact_rows, nlist=self.nlist, train_sample=self.train_sample)
        if kind in IVF_KINDS:
            out.update(nprobe=self.nprobe, quantizer=self.quantizer, metric=self.metric)
            if self.quantizer == "hnsw":
                out.update(hnsw_m=self.hnsw_m, ef_construction=self.ef_construction)
            if kind == "ivfpq":
                pq_m = self.pq_m if self.pq_m is not None else max(1, math.ceil((dim + 1) / 8))
                if pq_m > dim + 1:
                    raise InputError(f"pq_m ({pq_m}) must be at most the vector size + 1 ({dim + 1})")
                out.update(pq_m=pq_m, pq_bits=8)
            if kind == "ivfsq":
                out.update(sq_type=self.sq_type)
        else:  # hnsw
            out.update(hnsw_m=self.hnsw_m, ef_construction=self.ef_construction, ef_search=self.ef_search)
        return out


def bucket_plan(settings: dict[str, Any], sizes: list[int]) -> list[dict[str, Any]]:
    """Per norm bucket (rows counted in ``sizes``, by rising norm; with
    ``settings['exact_rows']`` the last one is the exact share): its index
    kind and sizes. The exact share (the rows of largest norm, which
    dominate raw scores whatever their direction, so that no
    nearest-neighbour structure finds them well) is searched exactly
    (``flat``); the others get ``settings['kind']`` (an empty one: flat)."""
    kind, dim = settings["kind"], settings["vector_dim"]
    exact_last = settings.get("exact_rows", 0) > 0
    plan = []
    for b, rows in enumerate(sizes):
        is_exact = exact_last and b == len(sizes) - 1
        if kind == "flat" or is_exact or rows == 0:
            plan.append({"rows": rows, "kind": "flat", "index_dim": dim, "augmented": False, "exact_share": is_exact})
            continue
        augmented = settings.get("metric", "l2") == "l2"
        entry: dict[str, Any] = {"rows": rows, "kind": kind, "augmented": augmented, "index_dim": dim + augmented, "exact_share": False}
        if kind in IVF_KINDS:
            hnsw_q = settings["quantizer"] == "hnsw"
            nlist = min(settings["nlist"], max(1, rows // 39)) if settings["nlist"] is not None else default_nlist(rows, 4 if hnsw_q else 1)
            sample = settings["train_sample"] if settings["train_sample"] is not None else max(40 * nlist, 16384)
            sample = min(rows, sample)
            if sample < nlist:
                raise InputError(f"train_sample ({sample}) must be at least nlist ({nlist})")
            nprobe = settings["nprobe"] if settings["nprobe"] is not None else max(8, nlist // 16)
            entry.update(nlist=nlist, train_sample=sample, nprobe=min(nprobe, nlist), quantizer=settings["quantizer"])
            if kind == "ivfpq":
                if sample < 256:
                    raise InputError(
                        f"kind 'ivfpq' trains 256 codes per sub-vector and needs at least 256 rows per norm bucket "
                        f"(a bucket holds {rows}, train_sample {sample}); use kind 'flat', 'ivf' or 'ivfsq', or fewer norm_buckets"
                    )
                entry["index_dim"] = math.ceil((dim + augmented) / settings["pq_m"]) * settings["pq_m"]  # PQ needs pq_m | dim
        plan.append(entry)
    return plan


def default_nlist(n: int, factor: int = 1) -> int:
    """About ``factor x sqrt(n)`` lists (a power of two), with at least 39 examples per list."""
    target = 2 ** round(math.log2(max(1.0, factor * math.sqrt(n))))
    return max(1, min(target, n // 39 if n >= 39 else 1))


def norm_bucket_ids(sq: np.ndarray, buckets: int, exact_rows: int = 0) -> np.ndarray:
    """Bucket of each row by its squared norm (rank order, ties to the lower
    position). The ``exact_rows`` largest get bucket ``buckets`` (the exact
    share); the others are split into ``buckets``: one; the lower and upper
    half; or, for three or more, the lowest quarter, the next quarter, then
    half of the rest, half of what is left, ...: the top bucket holds the
    largest ``m / 2^(buckets-2)`` of those ``m`` rows."""
    n = sq.size
    out = np.zeros(n, dtype=np.int16)
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(sq, kind="stable")] = np.arange(n)
    m = n - exact_rows
    if buckets == 2:
        out[rank >= m - (m >> 1)] = 1
    elif buckets > 2:
        out[rank >= m // 4] = 1
        for j in range(1, buckets - 1):
            out[rank >= m - (m >> j)] = j + 1
    if exact_rows:
        out[rank >= m] = buckets
    return out


def default_norm_buckets(n: int, variant: str) -> int:
    """Approximate norm buckets for ``n`` rows (outside the exact share).
    Raw: 1 up to 4 x :data:`FLAT_BUCKET_ROWS` rows, then ``2 + floor(log2(n
    / (4 FLAT_BUCKET_ROWS)))`` (so the top one holds at least 4 x
    FLAT_BUCKET_ROWS rows); cosine: 1 (all its vectors have one norm)."""
    if variant == "cosine" or n <= 4 * FLAT_BUCKET_ROWS:
        return 1
    return 2 + math.floor(math.log2(n / (4 * FLAT_BUCKET_ROWS)))


@dataclasses.dataclass(frozen=True)
class Estimate:
    """What building an index will cost, said before it starts (rough: the
    time is from floating-point operation counts and this machine's measured
    matrix-multiply speed, plus reading the store at 1 GB/s)."""

    n: int
    kind: str
    buckets: int
    read_bytes: int
    disk_bytes: int
    memory_bytes: int
    seconds: float

    def describe(self) -> str:
        return (
            f"index {self.kind} over {self.n:,} vectors in {self.buckets} norm bucket(s): reads ~{human_bytes(self.read_bytes)} of "
            f"the store, needs ~{human_bytes(self.disk_bytes)} on disk and ~{human_bytes(self.memory_bytes)} of memory, "
            f"roughly {_duration(self.seconds)} on this machine"
        )


#: Bytes per number of the ``ivfsq`` codes.
SQ_BYTES = {"8bit": 1, "fp16": 2}
#: Estimate: distance computations of one HNSW search (building: ef_construction; coarse assignment: this) per neighbour link.
HNSW_ASSIGN_EF = 64


def estimate(store: GradientStore, settings: dict[str, Any], plan: list[dict[str, Any]]) -> Estimate:
    """The cost of building an index with ``settings`` and its bucket ``plan``
    (every kind, coarse quantizer and code size it can hold)."""
    n = store.n_examples
    item = np.dtype(store.settings.dtype).itemsize
    read = n * (vector_dim(store) * item + 16 * len(store.checkpoints))
    flops = 2.0 * n * vector_dim(store)  # forming the vectors
    disk = memory = 0
    for entry in plan:
        rows, d, kind = entry["rows"], entry["index_dim"], entry["kind"]
        if kind == "flat":
            size = rows * (d * 4 + 8)
        elif kind == "hnsw":
            size = rows * (d * 4 + settings["hnsw_m"] * 2 * 4 + 8)
            flops += 2.0 * rows * d * settings["ef_construction"] * settings["hnsw_m"] * 0.5
        else:
            nlist, sample = entry["nlist"], entry["train_sample"]
            code = {"ivf": d * 4, "ivfsq": d * SQ_BYTES.get(settings.get("sq_type", "8bit"), 4), "ivfpq": settings.get("pq_m", 0)}[kind]
            size = rows * (code + 8) + nlist * d * 4
            flops += 2.0 * sample * nlist * d * KMEANS_ROUNDS  # k-means
            if entry.get("quantizer") == "hnsw":
                size += nlist * settings["hnsw_m"] * 2 * 4
                # the graph over the centroids, then each row's list found through it (scalar distances: ~4x a BLAS flop)
                flops += 2.0 * nlist * d * settings["ef_construction"] * settings["hnsw_m"] * 0.5
                flops += 4 * 2.0 * rows * d * HNSW_ASSIGN_EF * settings["hnsw_m"] * 0.5
            else:
                flops += 2.0 * rows * nlist * d  # each row's list: a search of all centroids
            if kind == "ivfpq":
                flops += 2.0 * min(sample, 65536) * 256 * d * 25 + 2.0 * rows * 256 * d  # codebooks, encoding
            elif kind == "ivfsq":
                flops += 4.0 * rows * d  # ranges, encoding
            memory += sample * d * 4
        disk += size
        memory += size
    memory += CHUNK_ROWS * (vector_dim(store) + 1) * 4 * 3 + n * 10
    seconds = flops / _flops_per_second() + read / 1.0e9
    return Estimate(n, settings["kind"], len(plan), int(read), int(disk), int(memory), seconds)


def _flops_per_second() -> float:
    """This machine's float32 matrix-multiply speed, measured in ~0.05 s."""
    a = np.ones((384, 384), dtype=np.float32)
    a @ a
    start, reps = time.perf_counter(), 0
    while time.perf_counter() - start < 0.05:
        a @ a
        reps += 1
    return max(1e8, reps * 2 * 384**3 / (time.perf_counter() - start))


@dataclasses.dataclass
class StoreIndex:
    """An opened index: its description (``meta``) and one FAISS index per
    norm bucket.

    ``search`` gives candidates; :class:`~gradtrace.Attributor` (made with
    ``index=``) re-ranks them exactly. ``nprobe`` (IVF kinds),
    ``ef_search`` (HNSW) and ``prune`` can be changed after opening with
    :meth:`set_search`, without rebuilding.
    """

    path: Path  # the JSON file
    meta: dict[str, Any]
    faiss_indexes: list[Any]
    #: Skip, per query, the approximate buckets whose largest norm cannot reach the k-th best exact-bucket score (see :meth:`search`).
    prune: bool = True
    _flat: dict[int, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict, repr=False)
    #: Of the last :meth:`search`: per bucket, the share of the queries that searched it (1 for exact buckets).
    last_searched: list[float] = dataclasses.field(default_factory=list, repr=False)

    @property
    def variant(self) -> str:
        return str(self.meta["variant"])

    @property
    def kind(self) -> str:
        return str(self.meta["settings"]["kind"])

    @property
    def n(self) -> int:
        return int(self.meta["store"]["examples"])

    def set_search(self, nprobe: int | None = None, ef_search: int | None = None, prune: bool | None = None) -> None:
        """Search settings used from now on (None keeps the current one);
        ``nprobe`` is capped at each bucket's number of lists."""
        settings = self.meta["settings"]
        if nprobe is not None:
            if self.kind not in IVF_KINDS:
                raise InputError(f"nprobe applies to kinds {', '.join(IVF_KINDS)}; this index is {self.kind!r}")
            positive_int(nprobe, "nprobe")
            settings["nprobe"] = int(nprobe)
            for entry in self.meta["buckets"]:
                if "nlist" in entry:
                    entry["nprobe"] = min(int(nprobe), entry["nlist"])
        if ef_search is not None:
            if self.kind != "hnsw":
                raise InputError(f"ef_search applies to kind hnsw; this index is {self.kind!r}")
            positive_int(ef_search, "ef_search")
            settings["ef_search"] = int(ef_search)
        if prune is not None:
            if not isinstance(prune, bool):
                raise InputError(f"prune must be true or false; got {prune!r}")
            self.prune = prune

    def search(self, vectors: np.ndarray, n_candidates: int, k: int) -> np.ndarray:
        """Candidate store positions for each query vector (from
        :func:`~gradtrace.index.vectors.query_vectors`), by largest inner
        product: the ``k`` (+ :data:`EXACT_MARGIN`, for float32 rounding)
        best of each exact (flat) bucket, and up to ``n_candidates`` from
        each approximate one. ``[n_query, m]`` int64, -1 where a bucket
        found fewer. The candidates of all buckets are kept (not cut by the
        index's estimates, whose errors differ between buckets): the caller
        scores them exactly.

        Pruning (``prune``, on by default) is exact: the exact buckets are
        searched first; an approximate bucket is skipped for a query when
        ``|w(q)|`` times the bucket's largest vector norm (an upper bound on
        every score in it) is below the ``k``-th best score the exact
        buckets gave that query (less a float32 rounding slack,
        :data:`PRUNE_SLACK`): no row of the bucket can then be in the
        query's top ``k``."""
        settings = self.meta["settings"]
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != settings["vector_dim"]:
            raise InputError(f"query vectors must be [n, {settings['vector_dim']}]; got shape {vectors.shape}")
        positive_int(n_candidates, "candidates")
        positive_int(k, "k")
        nq = vectors.shape[0]
        buckets = self.meta["buckets"]
        labels: list[np.ndarray] = []
        searched = [1.0] * len(buckets)
        exact_scores = []
        for b, (entry, index) in enumerate(zip(buckets, self.faiss_indexes)):
            if entry["kind"] != "flat":
                continue
            want = min(int(entry["rows"]), int(k) + EXACT_MARGIN)
            if want == 0:
                continue
            if b not in self._flat:
                self._flat[b] = flat_rows(index)
            scores, found = _flat_search(*self._flat[b], vectors, want)
            labels.append(found)
            exact_scores.append(scores)
        # the k-th best exact-bucket score of each query, less the rounding slack (-inf: fewer than k exact rows)
        threshold = np.full(nq, -np.inf)
        qnorm = np.linalg.norm(vectors.astype(np.float64), axis=1)
        if self.prune and exact_scores:
            pooled = np.concatenate(exact_scores, axis=1)
            if pooled.shape[1] >= k:
                kth = -np.partition(-pooled, k - 1, axis=1)[:, k - 1]
                largest = math.sqrt(max(float(e.get("max_squared_norm", 0.0)) for e in buckets))
                threshold = kth - PRUNE_SLACK * qnorm * largest
        for b, (entry, index) in enumerate(zip(buckets, self.faiss_indexes)):
            if entry["kind"] == "flat":
                continue
            want = min(int(n_candidates), int(entry["rows"]))
            bound = qnorm * math.sqrt(float(entry["max_squared_norm"]))  # >= every score in the bucket
            active = np.nonzero(bound >= threshold)[0]
            searched[b] = active.size / max(1, nq)
            out = np.full((nq, want), -1, dtype=np.int64)
            if active.size:
                if entry["kind"] in IVF_KINDS:
                    index.nprobe = int(entry["nprobe"])
                    if entry.get("quantizer") == "hnsw":
                        faiss_hnsw_quantizer(index).hnsw.efSearch = max(2 * int(entry["nprobe"]), HNSW_QUANTIZER_EF)
                else:
                    faiss_hnsw(index).hnsw.efSearch = max(int(settings["ef_search"]), want)
                out[active] = index.search(augment(vectors[active], entry["index_dim"], None), want)[1]
            labels.append(out)
        self.last_searched = searched
        return np.concatenate(labels, axis=1).astype(np.int64, copy=False)


def flat_rows(index: Any) -> tuple[np.ndarray, np.ndarray]:
    """The vectors (a read-only view into FAISS's memory, alive as long as
    ``index``) and ids of a flat bucket (``IndexIDMap(IndexFlatIP)``)."""
    import faiss  # type: ignore[import-not-found]

    inner = faiss.downcast_index(index.index)
    xb = faiss.rev_swig_ptr(inner.get_xb(), inner.ntotal * inner.d).reshape(inner.ntotal, inner.d)
    xb.flags.writeable = False
    return xb, faiss.vector_to_array(index.id_map).astype(np.int64)


#: Exact (flat) bucket search: rows scored at a time; the first block is smaller, so that the running top-k that
#: filters every later block (one comparison pass each) is cheap to start.
FLAT_FIRST_ROWS = 8192
FLAT_BLOCK_ROWS = 65536


def _flat_search(xb: np.ndarray, ids: np.ndarray, queries: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``want`` inner products of ``queries`` with ``xb`` (float64
    copies of the float32 scores, best first, ties to the lower row), in row
    blocks merged into a running top-``want`` per query as the exact scan
    merges its blocks (:func:`~gradtrace.scoring.attributor.merge_top_k`:
    after the first block, only the entries that beat a query's current
    ``want``-th score are touched). FAISS's flat search keeps a heap per
    query, which is slower for this many candidates."""
    from ..scoring.attributor import merge_top_k

    nq = queries.shape[0]
    best_s = np.empty((nq, 0), dtype=np.float64)
    best_i = np.empty((nq, 0), dtype=np.int64)
    lo = 0
    while lo < xb.shape[0]:
        hi = min(xb.shape[0], lo + (FLAT_FIRST_ROWS if lo == 0 else FLAT_BLOCK_ROWS))
        best_s, best_i = merge_top_k(best_s, best_i, queries @ xb[lo:hi].T, lo, want, True)
        lo = hi
    return best_s, ids[best_i]


def faiss_hnsw(index: Any) -> Any:
    """The HNSW index inside its id map."""
    import faiss  # type: ignore[import-not-found]

    return faiss.downcast_index(index.index)


#: Search width of an HNSW coarse quantizer: at least this, and twice nprobe.
HNSW_QUANTIZER_EF = 64


def faiss_hnsw_quantizer(index: Any) -> Any:
    """The HNSW coarse quantizer of an IVF index."""
    import faiss  # type: ignore[import-not-found]

    return faiss.downcast_index(index.quantizer)


def build_index(
    store: GradientStore | str | Path,
    variant: str = "raw",
    params: IndexParams | None = None,
    *,
    folder: str | Path | None = None,
    progress: bool = False,
    verify: bool | None = None,
) -> StoreIndex:
    """Build the index of ``store`` for ``variant`` (``raw`` or ``cosine``) and
    save it in ``folder`` (default ``index/`` inside the store), replacing an
    older one for that variant. Returns it, open.

    ``params`` (:class:`IndexParams`): ``kind`` ``flat`` (exact inner-product
    search of float32 vectors), ``ivf`` (inverted lists, float32 vectors),
    ``ivfsq`` (inverted lists, 8-bit or fp16 scalar codes, ``sq_type``),
    ``ivfpq`` (inverted lists, product-quantised codes of ``pq_m`` bytes),
    ``hnsw`` (a graph), or ``auto`` (flat below 100,000 examples, ivfsq from
    there). The approximate kinds keep the ``exact_share`` of rows with the
    largest norms (raw default 1/32), where the rows that dominate raw
    scores whatever their direction live, as a flat bucket searched exactly,
    and split the others into ``norm_buckets`` by vector norm
    (:func:`norm_bucket_ids`; default :func:`default_norm_buckets`;
    :func:`bucket_plan`), each indexed on its own: IVF lists of directions
    searched by inner product (``metric="ip"``) or of augmented vectors
    searched by L2 (``"l2"``, and ``hnsw``), with a flat or HNSW coarse
    ``quantizer``. IVF kinds train their
    lists (and codebooks) on ``train_sample`` rows per bucket drawn with
    ``seed``. The store is read shard by shard; only the indexes (as FAISS
    holds them), the sample and one chunk of vectors are in memory. Before
    the work starts an estimate of time, disk and memory is shown
    (``progress``). Raises if the store changes while the index is built.
    """
    faiss = import_faiss()
    variant = check_variant(variant)
    params = params or IndexParams()
    if not isinstance(params, IndexParams):
        raise InputError(f"params must be an IndexParams; got {type(params).__name__}")
    store = store if isinstance(store, GradientStore) else GradientStore.open(store)
    if verify is not None:
        store.verify_reads = bool(verify)
    check_store(store)
    n, dim = store.n_examples, vector_dim(store)
    settings = params.resolved(n, dim, variant)
    folder = index_folder(store, folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"index folder {str(folder)!r} is a file; it must be a folder")
    fingerprint = store.content_fingerprint()
    started = time.perf_counter()
    sq = squared_norms(store, variant)
    exact_rows = settings.get("exact_rows", 0)
    bucket = norm_bucket_ids(sq, settings["norm_buckets"], exact_rows)
    plan = bucket_plan(settings, np.bincount(bucket, minlength=settings["norm_buckets"] + (1 if exact_rows else 0)).tolist())
    for b, entry in enumerate(plan):
        members = sq[bucket == b]
        entry["max_squared_norm"] = float(NORM_MARGIN * members.max(initial=0.0))
        entry["min_squared_norm"] = float(members.min()) if members.size else 0.0
    cost = estimate(store, settings, plan)
    indexes = [_new_index(faiss, settings, entry) for entry in plan]
    with progress_bar(f"index {settings['kind']} ({variant})", n, progress) as bar:
        bar.note(f"gradtrace: {cost.describe()}")
        if any("nlist" in e for e in plan):
            bar.note(f"gradtrace: training inverted lists on {sum(e.get('train_sample', 0) for e in plan):,} sampled rows")
            for b, rows in _training_samples(store, variant, plan, bucket, settings["seed"]):
                indexes[b].train(rows)
        for lo, hi, vectors in _chunks(store, variant):
            where = bucket[lo:hi]
            for b in np.unique(where):
                sel = np.nonzero(where == b)[0]
                entry = plan[b]
                v = augment(vectors[sel], entry["index_dim"], entry["max_squared_norm"] if entry["augmented"] else None)
                indexes[b].add_with_ids(v, (sel + lo).astype(np.int64))
            bar.advance(hi - lo)
    if store.content_fingerprint() != fingerprint:
        raise StoreError(
            f"the store at {str(store.root)!r} changed while its index was built; nothing was saved. "
            "Rerun `gradtrace index` once no other process writes it"
        )
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "variant": variant, "settings": settings, "buckets": plan,
        "store": dict(store_summary(store), fingerprint=fingerprint),
        "built": {"seconds": time.perf_counter() - started, "faiss": str(getattr(faiss, "__version__", "?")),
                  "estimated_seconds": cost.seconds},
    }
    return _save(faiss, folder, indexes, meta)


def squared_norms(store: GradientStore, variant: str) -> np.ndarray:
    """``|v(z)|^2`` per example (float64), from the norms files only."""
    from .vectors import checkpoint_weights

    w, _ = checkpoint_weights(store.learning_rates)
    out = np.zeros(store.n_examples, dtype=np.float64)
    for a, b in store.shard_ranges():
        for c, wc in enumerate(w):
            norms = store.norms(c, a, b)[:, 0]
            out[a:b] += wc**2 * (norms**2 if variant == "raw" else (norms > 0))
    out[store.skipped_indices] = 0.0
    return out


def _new_index(faiss: Any, settings: dict[str, Any], entry: dict[str, Any]) -> Any:
    kind, d = entry["kind"], entry["index_dim"]
    if kind == "flat":
        return faiss.IndexIDMap(faiss.IndexFlatIP(d))
    if kind == "hnsw":
        inner = faiss.IndexHNSWFlat(d, settings["hnsw_m"], faiss.METRIC_L2)
        inner.hnsw.efConstruction = settings["ef_construction"]
        return faiss.IndexIDMap(inner)
    metric = faiss.METRIC_L2 if entry["augmented"] else faiss.METRIC_INNER_PRODUCT
    if entry.get("quantizer") == "hnsw":
        quantizer = faiss.IndexHNSWFlat(d, settings["hnsw_m"], metric)
        quantizer.hnsw.efConstruction = settings["ef_construction"]
    else:
        quantizer = faiss.IndexFlatL2(d) if entry["augmented"] else faiss.IndexFlatIP(d)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, d, entry["nlist"], metric)
    elif kind == "ivfsq":
        qtype = {"8bit": faiss.ScalarQuantizer.QT_8bit, "fp16": faiss.ScalarQuantizer.QT_fp16}[settings["sq_type"]]
        index = faiss.IndexIVFScalarQuantizer(quantizer, d, entry["nlist"], qtype, metric)
    else:
        index = faiss.IndexIVFPQ(quantizer, d, entry["nlist"], settings["pq_m"], settings["pq_bits"], metric)
        index.pq.cp.seed = settings["seed"]
        index.pq.cp.min_points_per_centroid = 1  # the sample size is ours to choose (see bucket_plan)
    index.cp.seed = settings["seed"]
    index.cp.min_points_per_centroid = 1
    index.cp.niter = KMEANS_ROUNDS
    index.cp.spherical = not entry["augmented"]  # ip: unit centroids, cells of directions
    if entry.get("quantizer") == "hnsw":
        # k-means searches its centroids exactly; the graph is built once over the final ones
        clustering = faiss.IndexFlatL2(d) if entry["augmented"] else faiss.IndexFlatIP(d)
        index.clustering_index = clustering
        index.referenced_objects.append(clustering)  # alive as long as the index (FAISS does not own it)
    return index  # faiss's Python layer keeps the quantizer alive with the index


def _chunks(store: GradientStore, variant: str) -> Iterator[tuple[int, int, np.ndarray]]:
    for a, b in store.shard_ranges():
        for lo in range(a, b, CHUNK_ROWS):
            hi = min(lo + CHUNK_ROWS, b)
            yield lo, hi, store_vectors(store, variant, a, b, np.arange(lo - a, hi - a))


def _training_samples(
    store: GradientStore, variant: str, plan: list[dict[str, Any]], bucket: np.ndarray, seed: int,
) -> Iterator[tuple[int, np.ndarray]]:
    """Per bucket with inverted lists: ``train_sample`` of its rows drawn
    without replacement (seeded), as index vectors. One pass over the store
    reads the rows of every bucket's sample."""
    rng = np.random.default_rng(seed)
    chosen, owner = [], []
    for b, entry in enumerate(plan):
        if "nlist" in entry:
            members = np.nonzero(bucket == b)[0]
            chosen.append(np.sort(rng.choice(members, size=entry["train_sample"], replace=False)))
            owner.append(np.full(entry["train_sample"], b))
    if not chosen:
        return
    rows, owners = np.concatenate(chosen), np.concatenate(owner)
    order = np.argsort(rows, kind="stable")
    rows, owners = rows[order], owners[order]
    parts: dict[int, list[np.ndarray]] = {}
    for a, b in store.shard_ranges():
        lo, hi = np.searchsorted(rows, a), np.searchsorted(rows, b)
        if hi == lo:
            continue
        vectors = store_vectors(store, variant, a, b, rows[lo:hi] - a)
        for o in np.unique(owners[lo:hi]):
            entry = plan[o]
            sel = owners[lo:hi] == o
            parts.setdefault(int(o), []).append(
                augment(vectors[sel], entry["index_dim"], entry["max_squared_norm"] if entry["augmented"] else None)
            )
    for b, chunks in sorted(parts.items()):
        yield b, np.concatenate(chunks)


def _save(faiss: Any, folder: Path, indexes: list[Any], meta: dict[str, Any]) -> StoreIndex:
    folder.mkdir(parents=True, exist_ok=True)
    variant = meta["variant"]
    written = []
    try:
        for b, (entry, index) in enumerate(zip(meta["buckets"], indexes)):
            tmp, digest = write_temporary_with(folder / f"{variant}.faiss", lambda path: faiss.write_index(index, str(path)))
            final = folder / f"{variant}-{b}-{digest[:16]}.faiss"
            try:
                os.replace(tmp, final)
            finally:
                tmp.unlink(missing_ok=True)
            written.append(final)
            entry["file"] = {"name": final.name, "size": final.stat().st_size, "sha256": digest}
        path = folder / f"{variant}.json"
        try:
            old = _read_meta(path) if path.is_file() else None
        except StoreError:  # a damaged description: its files are left, and this build replaces it
            old = None
        atomic_write_bytes(path, json_bytes(meta))
    except BaseException:
        for final in written:  # not named by any description yet
            if not (folder / f"{variant}.json").is_file() or final.name not in (folder / f"{variant}.json").read_text():
                final.unlink(missing_ok=True)
        raise
    keep = {e["file"]["name"] for e in meta["buckets"]}
    for entry in (old or {}).get("buckets", []):
        name = Path(str(entry.get("file", {}).get("name", ""))).name
        if name and name not in keep:
            (folder / name).unlink(missing_ok=True)
    return StoreIndex(path, meta, indexes)


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"index file {str(path)!r} cannot be read ({exc}); rebuild it with `gradtrace index`") from None
    ok = (
        isinstance(meta, dict) and meta.get("format") == FORMAT and isinstance(meta.get("settings"), dict)
        and isinstance(meta.get("store"), dict) and isinstance(meta.get("buckets"), list)
        and all(isinstance(e, dict) and isinstance(e.get("file"), dict) for e in meta["buckets"])
    )
    if not ok:
        raise StoreError(f"{str(path)!r} is not a gradtrace index description; rebuild it with `gradtrace index`")
    if meta.get("format_version") != FORMAT_VERSION:
        raise StoreError(
            f"{str(path)!r} has index format version {meta.get('format_version')!r}; this gradtrace reads "
            f"{FORMAT_VERSION}: rebuild it with `gradtrace index`"
        )
    return meta


def check_index(
    store: GradientStore, variant: str = "raw", folder: str | Path | None = None,
) -> dict[str, Any]:
    """The description of ``store``'s index for ``variant``, checked to belong
    to the store as it is now (without loading the index itself). Raises
    :class:`InputError` for a variant no index can serve or when there is no
    index, and :class:`StoreError` when the store changed since the index
    was built."""
    variant = check_variant(variant)
    folder = index_folder(store, folder)
    path = folder / f"{variant}.json"
    rebuild = f"gradtrace index {str(store.root)!r} --variant {variant}" + ("" if folder == store.root / FOLDER else f" --out {str(folder)!r}")
    if not path.is_file():
        others = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
        have = f" (it has an index for {', '.join(others)})" if others else ""
        raise InputError(f"no index for variant {variant!r} in {str(folder)!r}{have}; build it first: {rebuild}")
    meta = _read_meta(path)
    if meta.get("variant") != variant:
        raise StoreError(f"{str(path)!r} describes an index for variant {meta.get('variant')!r}, not {variant!r}; rebuild: {rebuild}")
    recorded = meta["store"]
    if recorded.get("fingerprint") != store.content_fingerprint():
        now = store_summary(store)
        diff = dict_differences({k: recorded.get(k) for k in now if k != "root"}, {k: v for k, v in now.items() if k != "root"})
        what = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items())) or "shard contents differ"
        raise StoreError(
            f"the store at {str(store.root)!r} changed since its {variant} index was built ({what}); "
            f"the index no longer describes it. Rebuild it: {rebuild}"
        )
    return meta


def open_index(
    store: GradientStore | str | Path, variant: str = "raw", folder: str | Path | None = None, *, verify: bool | None = None,
) -> StoreIndex:
    """Open the index of ``store`` for ``variant`` (see :func:`check_index`);
    the index file is checked against its recorded size, and its sha256
    when ``verify`` (default: the store's ``verify_reads``)."""
    faiss = import_faiss()
    store = store if isinstance(store, GradientStore) else GradientStore.open(store)
    meta = check_index(store, variant, folder)
    path = index_folder(store, folder) / f"{variant}.json"
    rebuild = "rebuild it with `gradtrace index`"
    check_sum = store.verify_reads if verify is None else verify
    indexes = []
    for entry in meta["buckets"]:
        file = path.parent / Path(str(entry["file"].get("name"))).name
        if not file.is_file():
            raise StoreError(f"index file {str(file)!r} named by {str(path)!r} is missing; {rebuild}")
        if file.stat().st_size != entry["file"].get("size"):
            raise StoreError(f"index file {str(file)!r} is {file.stat().st_size} bytes; {entry['file'].get('size')} were written; {rebuild}")
        if check_sum and file_sha256(file) != entry["file"].get("sha256"):
            raise StoreError(f"index file {str(file)!r} does not match its recorded checksum; {rebuild}")
        try:
            index = faiss.read_index(str(file))
        except RuntimeError as exc:
            raise StoreError(f"index file {str(file)!r} cannot be read by FAISS ({str(exc).splitlines()[0]}); {rebuild}") from None
        if index.ntotal != entry["rows"] or index.d != entry["index_dim"]:
            raise StoreError(f"index file {str(file)!r} holds {index.ntotal} vectors of {index.d}; its description says otherwise; {rebuild}")
        indexes.append(index)
    return StoreIndex(path, meta, indexes)




def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
