"""Query a gradient store: scores, proponents/opponents, self-influence.

Query features (gradients of the behaviour on the queries) are computed once
per checkpoint and reused for every shard; training features are streamed
from the store one shard range at a time, all checkpoints of a range
together, so ``top_k`` never holds more than ``n_query x shard_size`` scores.
"""

from __future__ import annotations

import dataclasses
import numbers
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoints import CheckpointRef
from ..data import as_source
from ..devices import Placement
from ..errors import ConfigMismatchError, InputError
from ..execution import Executor, LocalExecutor
from ..grads.compute import compute_shard, model_fingerprint, resolve_loader, restored
from ..grads.per_example import GradientFeaturizer
from ..grads.projection import ProjectionConfig
from ..progress import progress_bar
from ..store.gradient_store import GradientStore
from ..store.settings import dict_differences
from ..task import Behaviour, Task, behaviour_sign, check_task, describe, resolve_behaviour
from .methods import QueryInputs, ScoreMethod, get_method
from .results import TopK

SCAN_ROWS = 16384
SELF_ROWS = 512  # training rows scored against themselves at once (a SELF_ROWS^2 block)
#: Exact re-rank of index candidates: at most about this many bytes of candidate rows gathered at once (queries are
#: re-ranked in batches; a query with more candidates than this still goes alone, in one batch).
RERANK_BYTES = 256 << 20
#: With an index: candidates a query gets by default from each approximate norm bucket (at least k).
DEFAULT_CANDIDATES = 1000


@dataclasses.dataclass(frozen=True)
class QueryFeatures:
    """Behaviour gradients of a set of queries at every checkpoint of a store.

    Compute once with :meth:`Attributor.query_features` and pass to ``score``,
    ``top_k`` and ``breakdown`` as often as needed. ``transformed_for`` is the
    score method whose query transform they carry (e.g. Adam's diagonal), or
    None for plain gradients; they can only be scored with that method.
    """

    unit: list[Tensor]  # per checkpoint, [n_query, feature_dim] rows as stored (unit norm unless factored)
    norms: list[Tensor]  # per checkpoint, [n_query] gradient norms (projected, or exact when factored)
    behaviour: str
    n: int
    transformed_for: ScoreMethod | None = None


class Attributor:
    """Scores training examples in ``store`` against queries.

    ``model`` and ``task`` must be those the store was made with (checked by
    fingerprint). Checkpoints are loaded as in :func:`gradtrace.featurize`.
    Both may be None when only precomputed :class:`QueryFeatures` and
    self-influence are used.

    ``variant`` (of ``score``, ``top_k``, ``breakdown``, ``query_features``)
    is a registered method name (``available_methods()``: ``raw``,
    ``cosine``, ``adam``, ``fisher``, ``kfac``, ``ekfac``, ``trackstar``) or
    a method object made with options (``FisherMethod(damping=0.05)``,
    ``AdamMethod(adam_states)``, ``EKFACMethod(checkpoints="last")``); see
    :mod:`gradtrace.scoring.methods` and docs/methods.md. Whatever a method
    fits on the store (Fisher's inverses) is fitted once and kept by this
    attributor; what is fitted beforehand (K-FAC factors) is read once.
    ``executor`` decides which shard ranges this process scans (default: all
    of them; see :mod:`gradtrace.execution`).

    ``device`` (``"auto" | "cpu" | "cuda" | "cuda:N"``; None: the host and
    the model where it is) is where query gradients are computed and where
    stored rows are scored: shards stream through it block by block and each
    block is cut to its top-k candidates there (exact). ``model_dtype``
    (``"float32" | "bfloat16" | "float16"``; None: the model's own) is the
    dtype of the forward and backward passes of the queries; their features
    accumulate in float32 and are kept in float64.

    ``verify`` sets ``store.verify_reads``: each shard file read is checked
    against its recorded sha256, once per process per file (on by default for
    a store opened from a path; None keeps a given store's own setting).
    Before query features are computed, every checkpoint file is checked
    against the fingerprint recorded when the store was made
    (:class:`~gradtrace.errors.CheckpointError` naming the one that changed).

    ``index`` makes :meth:`top_k` approximate-then-exact for the variants an
    index serves (``raw``, ``cosine``): ``True`` uses the store's own index
    folder (built by :func:`gradtrace.index.build_index`, CLI ``gradtrace
    index``), a path another index folder, a
    :class:`~gradtrace.index.StoreIndex` that index. The index gives
    ``candidates`` store rows per query from each of its approximate norm
    buckets (default :data:`DEFAULT_CANDIDATES`, at least ``k``) and the
    best ``k`` of each exact one; those rows alone are read from the store
    and scored exactly, so every returned score is exact for its row, and a row is
    missed only if the index did not propose it. ``score`` and ``breakdown``
    never use the index. An index that does not belong to the store as it
    is now is refused (:class:`~gradtrace.errors.StoreError`); a variant it
    cannot serve raises :class:`~gradtrace.errors.InputError`.
    """

    def __init__(
        self,
        store: GradientStore | str | Path,
        model: nn.Module | None,
        task: Task | None,
        *,
        checkpoint_loader: Callable[[nn.Module, CheckpointRef], Any] | None = None,
        weights_only: bool = True,
        batch_size: int | None = None,
        progress: bool = False,
        executor: Executor | None = None,
        verify: bool | None = None,
        device: str | torch.device | None = None,
        model_dtype: str | torch.dtype | None = None,
        index: Any = None,
        candidates: int | None = None,
    ):
        if candidates is not None and (not isinstance(candidates, numbers.Integral) or isinstance(candidates, bool) or candidates < 1):
            raise InputError(f"candidates must be a positive integer; got {candidates!r}")
        if candidates is not None and index in (None, False):
            raise InputError("candidates applies only with an index (index=True, a folder or a StoreIndex)")
        if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
            raise InputError(f"batch_size must be a positive integer; got {batch_size!r}")
        self.store = store if isinstance(store, GradientStore) else GradientStore.open(store)
        if verify is not None:
            self.store.verify_reads = bool(verify)
        self.model = model
        self.task = task
        self.checkpoint_loader = checkpoint_loader
        self.weights_only = weights_only
        self.batch_size = batch_size
        self.progress = progress
        self.executor: Executor = executor or LocalExecutor()
        self.placement = Placement.of(device, model_dtype)
        self._fitted: dict[Any, Any] = {}
        self.index = None if index is False else index
        self.candidates = None if candidates is None else int(candidates)
        self._indexes: dict[str, Any] = {}

    # -- query side -------------------------------------------------------------
    def query_features(
        self, queries: Any, behaviour: Behaviour | Callable[..., Tensor] | None = None, variant: str | ScoreMethod = "raw",
    ) -> QueryFeatures:
        """Gradients of ``behaviour`` (default: the task loss) on ``queries``,
        transformed as ``variant`` needs (plain gradients for most methods)."""
        method = self._method(variant)
        if self.model is None:
            raise InputError("Attributor was made without a model; pass the model to compute query features")
        task = check_task(self.task)
        self._check_model()
        self.store.check_checkpoints()  # the weights the store's gradients were taken at
        behaviour = resolve_behaviour(behaviour, task)
        sign = behaviour_sign(behaviour)
        source = as_source(queries, collate=getattr(task, "collate", None), what="queries")
        if len(source) == 0:
            raise InputError("queries: the query set is empty")
        settings = self.store.settings
        param_names = self.store.param_names
        # queries use only the row norm: exact squared norms (costly with Kronecker) only where they are it (factored)
        featurizer = GradientFeaturizer(param_names, ProjectionConfig.from_dict(settings.projection), settings.method,
                                        exact_norms=settings.projection_kind == "factored")
        transforms = method.transforms_queries

        def signed(model: nn.Module, batch: Any) -> Tensor:
            return sign * behaviour(model, batch)

        loader = resolve_loader(self.checkpoint_loader, self.weights_only)
        unit, norms = [], []
        n_ckpt = len(self.store.checkpoints)
        with (progress_bar("query features", len(source) * n_ckpt, self.progress and getattr(self.executor, "is_main", True)) as bar,
              restored(self.model), self.placement.model(self.model)):
            self.model.eval()
            for c, ref in enumerate(self.store.checkpoints):
                loader(self.model, ref)
                featurizer.transform = method.query_transform(self.model, c, param_names) if transforms else None
                rows, nrm = compute_shard(
                    self.model, signed, featurizer, source, 0, len(source), batch_size=self.batch_size or settings.batch_size,
                    normalise=settings.projection_kind != "factored", dtype="float64", bar=bar,
                    on_nonfinite=_refuse_query(c, ref), what="queries", value_name="behaviour value",
                    placement=self.placement,
                )
                unit.append(torch.from_numpy(rows))
                norms.append(torch.from_numpy(nrm[:, 0].copy()))
        return QueryFeatures(unit, norms, describe(behaviour), len(source), method if transforms else None)

    @staticmethod
    def _check_finite(qf: QueryFeatures) -> None:
        """Refuse precomputed query features holding NaN or inf, naming the query."""
        for c, (unit, norms) in enumerate(zip(qf.unit, qf.norms)):
            finite = torch.isfinite(unit).all(dim=1) & torch.isfinite(norms)
            if not bool(finite.all()):
                q = int((~finite).nonzero()[0, 0])
                raise InputError(
                    f"queries: query {q} of these QueryFeatures has non-finite features or norm at checkpoint {c}; "
                    "gradtrace refuses non-finite query values"
                )

    def _check_model(self) -> None:
        fp = model_fingerprint(self.model)
        if fp != self.store.manifest["model"]["fingerprint"]:
            raise ConfigMismatchError(
                f"the model given for the store at {str(self.store.root)!r}",
                {"model.fingerprint": (self.store.manifest["model"]["fingerprint"], fp)},
            )
        diff = dict_differences(self.store.manifest["task"], describe(self.task), "task")
        if diff:
            raise ConfigMismatchError(f"the task given for the store at {str(self.store.root)!r}", diff)

    def _method(self, variant: str | ScoreMethod) -> ScoreMethod:
        method = get_method(variant)
        method.check(self.store)
        return method

    def _as_query_features(self, queries: Any, behaviour: Any, method: ScoreMethod) -> QueryFeatures:
        if not isinstance(queries, QueryFeatures):
            return self.query_features(queries, behaviour, method)
        if behaviour is not None:
            raise InputError("behaviour must be None when queries are precomputed QueryFeatures (it is fixed there)")
        wanted = method if method.transforms_queries else None
        if queries.transformed_for is not wanted:
            made = "plain gradients" if queries.transformed_for is None else f"variant {queries.transformed_for!r}"
            raise InputError(
                f"these QueryFeatures were computed for {made}; variant {method!r} needs its own: "
                "query_features(queries, variant=<that method>), or pass the queries themselves"
            )
        self._check_finite(queries)
        return queries

    # -- scoring ----------------------------------------------------------------
    def score(self, queries: Any, behaviour: Any = None, variant: str | ScoreMethod = "raw") -> np.ndarray:
        """The full ``[n_query, n_train]`` float64 score matrix."""
        method = self._method(variant)
        qf = self._as_query_features(queries, behaviour, method)
        out = np.zeros((qf.n, self.store.n_examples), dtype=np.float64)
        for a, b, block in self._scan(qf, method):
            out[:, a:b] = block.to(torch.float64).cpu().numpy()
        # each process filled the columns it scanned (all of them, in this one)
        return sum(self.executor.gather(out)[1:], out)

    def top_k(
        self, queries: Any, k: int = 10, largest: bool = True, behaviour: Any = None, variant: str | ScoreMethod = "raw",
    ) -> TopK:
        """The ``k`` highest (proponents) or lowest (opponents) scores per query,
        streamed: the full score matrix is never built."""
        if not isinstance(k, numbers.Integral) or isinstance(k, (bool, np.bool_)) or k < 1:
            raise InputError(f"k must be a positive integer; got {k!r} ({type(k).__name__})")
        k = int(k)
        method = self._method(variant)
        if self.index is not None:
            index = self._open_index(method)  # refused before any query gradient is computed
            qf = self._as_query_features(queries, behaviour, method)
            return self._indexed_top_k(index, qf, method, min(k, self.store.n_examples), largest)
        qf = self._as_query_features(queries, behaviour, method)
        k = min(k, self.store.n_examples)
        best_s = np.empty((qf.n, 0), dtype=np.float64)
        best_i = np.empty((qf.n, 0), dtype=np.int64)
        on_host = not self._on_device
        for a, b, block in self._scan(qf, method):
            if on_host:
                best_s, best_i = merge_top_k(best_s, best_i, block.numpy(), a, k, largest)
            else:  # cut to candidates on the device; only they travel to the host
                rows, cols, vals = block_candidates(block, best_s, k, largest)
                best_s, best_i = merge_candidates(best_s, best_i, rows, cols, vals, a, b - a, k, largest)
        best_s, best_i = _combine_top_k(self.executor.gather((best_s, best_i)), k, largest)
        ids = self.store.ids
        return TopK(best_i, best_s, [[ids[i] for i in row] for row in best_i], largest, method.name)

    def _open_index(self, method: ScoreMethod) -> Any:
        """The index serving ``method`` (opened once per variant and kept)."""
        from ..index import INDEXED_VARIANTS, StoreIndex, check_index, open_index
        from .methods.cosine import CosineMethod
        from .methods.raw import RawMethod

        if type(method) not in (RawMethod, CosineMethod) or method.name not in INDEXED_VARIANTS:
            raise InputError(
                f"variant {method.name!r} cannot be served by an index (only raw and cosine scores are one inner product "
                "of per-example vectors); query it without an index"
            )
        if isinstance(self.index, StoreIndex):
            if self.index.variant != method.name:
                raise InputError(f"this index was built for variant {self.index.variant!r}; variant {method.name!r} needs its own")
            check_index(self.store, method.name, self.index.path.parent)  # still the store's index
            return self.index
        if method.name not in self._indexes:
            if self.index is not True and not isinstance(self.index, (str, Path)):
                raise InputError(f"index must be True, an index folder or a StoreIndex; got {self.index!r}")
            self._indexes[method.name] = open_index(self.store, method.name, None if self.index is True else self.index)
        else:
            check_index(self.store, method.name, self._indexes[method.name].path.parent)
        return self._indexes[method.name]

    def _indexed_top_k(self, index: Any, qf: QueryFeatures, method: ScoreMethod, k: int, largest: bool) -> TopK:
        """Candidates from ``index``, re-ranked exactly against the store."""
        from ..index import query_vectors

        self._check_query_features(qf)
        n_cand = DEFAULT_CANDIDATES if self.candidates is None else self.candidates
        if self.candidates is not None and self.candidates < k:
            raise InputError(f"candidates ({self.candidates}) must be at least k ({k})")
        n_cand = min(max(n_cand, k), self.store.n_examples)
        vectors = query_vectors(qf.unit, qf.norms, self.store.learning_rates, method.name)
        cand = index.search(vectors if largest else -vectors, n_cand, k)
        found = (cand >= 0).sum(axis=1)
        if found.min(initial=k) < k:
            q = int(np.argmin(found))
            raise InputError(
                f"the index proposed only {int(found[q])} candidates for query {q}, fewer than k={k}; search more of it "
                "(a larger nprobe or ef_search: StoreIndex.set_search, or gradtrace index --nprobe) or ask for fewer"
            )
        best_s, best_i = self._rerank(qf, method, cand, k, largest)
        ids = self.store.ids
        return TopK(best_i, best_s, [[ids[i] for i in row] for row in best_i], largest, method.name)

    def _rerank(self, qf: QueryFeatures, method: ScoreMethod, cand: np.ndarray, k: int, largest: bool) -> tuple[np.ndarray, np.ndarray]:
        """Each query's ``k`` best among its own candidates (-1: none), scored
        exactly (the stored rows in float64, as :meth:`breakdown` does); ties
        go to the lower index. Each candidate row is read from the store once
        however many queries of a batch proposed it: the sorted union of their
        candidates, gathered in one read per shard and checkpoint (each
        shard's norms read once). Then each query scores its own rows only,
        one call per checkpoint: work in proportion to its candidates, not to
        the union (queries share few approximate candidates). Queries go in
        batches whose gathered rows fit in :data:`RERANK_BYTES`."""
        mine = [np.unique(row[row >= 0]) for row in cand]
        dtype = np.dtype(self.store.settings.dtype)
        per_row = len(qf.unit) * (self.store.feature_dim * dtype.itemsize + 8)
        budget = max(1, RERANK_BYTES // per_row)
        best_s = np.empty((qf.n, k), dtype=np.float64)
        best_i = np.empty((qf.n, k), dtype=np.int64)
        lo = 0
        while lo < qf.n:
            hi, rows = lo + 1, mine[lo].size
            while hi < qf.n and rows + mine[hi].size <= budget:
                rows += mine[hi].size
                hi += 1
            self._rerank_batch(qf, method, mine, lo, hi, best_s, best_i, largest)
            lo = hi
        return best_s, best_i

    def _rerank_batch(
        self, qf: QueryFeatures, method: ScoreMethod, mine: list[np.ndarray], lo: int, hi: int,
        best_s: np.ndarray, best_i: np.ndarray, largest: bool,
    ) -> None:
        """:meth:`_rerank` of queries ``lo..hi-1`` (their sorted candidates in
        ``mine``), written into rows ``lo..hi-1`` of ``best_s`` and ``best_i``."""
        sign, k = 1.0 if largest else -1.0, best_s.shape[1]
        union = np.unique(np.concatenate(mine[lo:hi]))
        n_ckpt, dtype = len(qf.unit), np.dtype(self.store.settings.dtype)
        rows = [np.empty((union.size, self.store.feature_dim), dtype=dtype) for _ in range(n_ckpt)]  # stored dtype: widened per query
        norms = [np.empty(union.size, dtype=np.float64) for _ in range(n_ckpt)]
        for a, b in self.store.shard_ranges():
            ua, ub = np.searchsorted(union, a), np.searchsorted(union, b)
            if ua == ub:
                continue
            local = union[ua:ub] - a
            for c in range(n_ckpt):
                rows[c][ua:ub] = self.store.features(c, a, b)[local]
                norms[c][ua:ub] = self.store.norms(c, a, b)[local, 0]
        skipped = self.store.skipped_indices
        for q in range(lo, hi):
            rows_q = mine[q]
            where = np.searchsorted(union, rows_q)
            one = dataclasses.replace(qf, unit=[u[q : q + 1] for u in qf.unit], norms=[n[q : q + 1] for n in qf.norms], n=1)
            score = self._prepare(one, method, torch.float64, torch.float64)
            vals = np.zeros(rows_q.size, dtype=np.float64)
            for c in range(n_ckpt):
                part = torch.from_numpy(rows[c][where].astype(np.float64))
                vals += score(c, part, torch.from_numpy(norms[c][where]))[0].numpy()
            vals[np.isin(rows_q, skipped)] = 0.0  # examples left out score 0
            order = np.lexsort((rows_q, -sign * vals))[:k]
            best_s[q], best_i[q] = vals[order], rows_q[order]

    def breakdown(
        self, queries: Any, train_indices: Sequence[int], behaviour: Any = None, variant: str | ScoreMethod = "raw",
    ) -> np.ndarray:
        """``[n_checkpoint, n_query, len(train_indices)]`` contributions of each
        checkpoint; summing over axis 0 gives :meth:`score` at those columns.
        Read in this process (a few columns of the store)."""
        method = self._method(variant)
        qf = self._as_query_features(queries, behaviour, method)
        idx = np.asarray(train_indices, dtype=np.int64)
        n = self.store.n_examples
        if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= n)):
            raise InputError(f"train_indices must be a 1-D list of positions in [0, {n}); got {train_indices!r}")
        score = self._prepare(qf, method, torch.float64, torch.float64)
        out = np.zeros((len(qf.unit), qf.n, idx.size), dtype=np.float64)
        for a, b in self.store.shard_ranges():
            cols = np.nonzero((idx >= a) & (idx < b))[0]
            if cols.size == 0:
                continue
            local = idx[cols] - a
            for c in range(len(qf.unit)):
                rows = torch.from_numpy(np.asarray(self.store.features(c, a, b)[local], dtype=np.float64))
                fn = torch.from_numpy(self.store.norms(c, a, b)[local, 0])
                out[c][:, cols] = score(c, rows, fn).numpy()
        out[:, :, np.isin(idx, self.store.skipped_indices)] = 0.0  # examples left out score 0
        return out

    def self_influence(self, variant: str | ScoreMethod = "raw") -> np.ndarray:
        """Self-influence ``score(z, z)`` of every training example under
        ``variant`` (float64; examples left out read 0). ``raw`` is the exact
        TracIn self-influence from the stored exact norms (see
        :func:`self_influence`); ``fisher``, ``kfac`` and ``ekfac`` give
        ``sum_c w_c g_z^T (F_c + lambda I)^{-1} g_z`` from the stored rows (the
        influence-function self-influence Kronfluence ranks mislabelled data
        by). Methods under which it means nothing (``cosine``, ``trackstar``:
        always 1) or that transform query gradients (``adam``) are refused.
        Methods other than ``raw`` compute on the host."""
        method = self._method(variant)
        if type(method).__name__ == "RawMethod":
            return self_influence(self.store, device=self.placement.device if self._on_device else None)
        if method.transforms_queries or not getattr(method, "supports_self_influence", False):
            raise InputError(
                f"self-influence is not defined for variant {method.name!r}: it normalises gradients (every example scores 1) "
                "or transforms query gradients only; use raw, fisher, kfac or ekfac"
            )
        store = self.store
        n_ckpt = len(store.checkpoints)
        out = np.zeros(store.n_examples, dtype=np.float64)
        # a method may score rows against themselves directly (prepare_self); else the diagonal of a block
        own = method.prepare_self(store, self._fitted) if hasattr(method, "prepare_self") else None
        step = SCAN_ROWS if own is not None else SELF_ROWS
        with progress_bar(f"self-influence ({method.name})", store.n_examples, self.progress) as bar:
            for a, b in store.shard_ranges():
                for lo in range(a, b, step):
                    hi = min(lo + step, b)
                    unit = [torch.from_numpy(np.asarray(store.features(c, a, b)[lo - a : hi - a], dtype=np.float64)) for c in range(n_ckpt)]
                    norms = [torch.from_numpy(np.array(store.norms(c, a, b)[lo - a : hi - a, 0], dtype=np.float64)) for c in range(n_ckpt)]
                    if own is not None:
                        out[lo:hi] = sum(own(c, unit[c], norms[c]).numpy() for c in range(n_ckpt))
                    else:
                        score = self._prepare(QueryFeatures(unit, norms, "self", hi - lo), method, torch.float64, torch.float64)
                        out[lo:hi] = sum(torch.diagonal(score(c, unit[c], norms[c])).numpy() for c in range(n_ckpt))
                    bar.advance(hi - lo)
        out[store.skipped_indices] = 0.0
        return out

    @property
    def _on_device(self) -> bool:
        """Scoring runs on an accelerator (not the host)."""
        return self.placement.device is not None and self.placement.device.type != "cpu"

    def _check_query_features(self, qf: QueryFeatures) -> None:
        if len(qf.unit) != len(self.store.checkpoints) or qf.unit[0].shape[1] != self.store.feature_dim:
            raise InputError("these QueryFeatures were computed for another store (checkpoints or feature dim differ)")

    def _prepare(self, qf: QueryFeatures, method: ScoreMethod, compute: torch.dtype, accumulate: torch.dtype) -> Any:
        lrs = [float(lr) for lr in self.store.learning_rates]
        self._check_query_features(qf)
        inputs = QueryInputs(qf, lrs, self.store.factor_layout, compute, accumulate)
        return method.prepare(self.store, inputs, self._fitted)

    def _scan(self, qf: QueryFeatures, method: ScoreMethod) -> Iterator[tuple[int, int, Tensor]]:
        """Score blocks ``(start, stop, [n_query, stop - start])`` of the shard
        ranges the executor gives this process."""
        # float16 rows are widened block by block into one reused float32 buffer and scored
        # with float32 matmuls: exact arithmetic on the stored values, and faster on CPUs
        # without native float16 matmul than float16 arithmetic (a fresh buffer per block
        # would spend more time in page faults than in the matmul).
        dtype = self.store.settings.dtype
        compute = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float32}[dtype]
        accumulate = torch.float64 if compute == torch.float64 else torch.float32
        device = self.placement.device if self._on_device else None
        if device is not None:  # the queries go to the device once; the rows stream through it
            qf = dataclasses.replace(qf, unit=[u.to(device) for u in qf.unit], norms=[n.to(device) for n in qf.norms])
        score = self._prepare(qf, method, compute, accumulate)
        buffer = torch.empty((SCAN_ROWS, self.store.feature_dim), dtype=compute, device=device) if dtype == "float16" else None
        n_ckpt = len(qf.unit)
        skipped = self.store.skipped_indices  # examples left out score 0 (usually none)

        def blocks(a: int, b: int) -> Iterator[tuple[int, int, Tensor]]:
            for lo in range(a, b, SCAN_ROWS):
                hi = min(lo + SCAN_ROWS, b)
                total: Tensor | None = None
                for c in range(n_ckpt):
                    feats = _readonly_tensor(self.store.features(c, a, b)[lo - a : hi - a])
                    rows = buffer[: hi - lo].copy_(feats) if buffer is not None else feats.to(device=device, dtype=compute)
                    fn = torch.from_numpy(self.store.norms(c, a, b)[lo - a : hi - a, 0]).to(device=device, dtype=accumulate)
                    part = score(c, rows, fn)
                    total = part if total is None else total.add_(part)
                assert total is not None  # a store has at least one checkpoint
                if skipped.size:
                    here = skipped[np.searchsorted(skipped, lo) : np.searchsorted(skipped, hi)]
                    total[:, torch.from_numpy(here - lo).to(total.device)] = 0
                yield lo, hi, total

        return self.executor.scan(self.store.shard_ranges(), blocks)


def _refuse_query(checkpoint: int, ref: CheckpointRef) -> Callable[[int, str], None]:
    def refuse(index: int, problem: str) -> None:
        raise InputError(
            f"queries: query {index} has a {problem} at checkpoint {checkpoint} ({ref.path!r}); "
            "gradtrace refuses non-finite query values"
        )

    return refuse


def _combine_top_k(parts: list[tuple[np.ndarray, np.ndarray]], k: int, largest: bool) -> tuple[np.ndarray, np.ndarray]:
    """Merge the running top-k of several processes (best first; ties to the
    lower index). One part, as in this process alone, is returned as it is."""
    if len(parts) == 1:
        return parts[0]
    vals = np.concatenate([s for s, _ in parts], axis=1)
    idx = np.concatenate([i for _, i in parts], axis=1)
    order = np.lexsort((idx, -(1.0 if largest else -1.0) * vals), axis=1)[:, :k]
    return np.take_along_axis(vals, order, 1), np.take_along_axis(idx, order, 1)


def block_candidates(block: Tensor, best_s: np.ndarray, k: int, largest: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, cols, values)`` of the entries of a score ``block`` (on any
    device) that can enter each row's running top ``k`` (``best_s``, best
    first): those at least as good as the row's ``k``-th best in the block
    (ties kept, so the lower-index rule can decide) and, once a row holds
    ``k`` results, at least as good as its current ``k``-th (ties kept again:
    blocks may come in any order). Computed where the block is; only the
    candidates, about ``k`` per row, come back to the host."""
    kk = min(k, block.shape[1])
    kth = torch.topk(block, kk, dim=1, largest=largest).values[:, -1:]
    mask = block >= kth if largest else block <= kth
    if best_s.shape[1] == k:
        # every running score came from a block of this dtype, so the cast is exact
        worst = torch.from_numpy(np.ascontiguousarray(best_s[:, -1:])).to(device=block.device, dtype=block.dtype)
        mask &= block >= worst if largest else block <= worst
    rows, cols = mask.nonzero(as_tuple=True)
    return rows.cpu().numpy(), cols.cpu().numpy(), block[rows, cols].cpu().numpy()


def merge_candidates(
    best_s: np.ndarray, best_i: np.ndarray, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray,
    offset: int, width: int, k: int, largest: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Merge the candidates of a block of ``width`` columns (column ``c`` is
    training index ``offset + c``; from :func:`block_candidates`) into each
    row's running top ``k``, best first, ties to the lower index: the same
    result as merging the whole block (:func:`merge_top_k`)."""
    nq, have = best_s.shape
    keep_n = min(k, have + width)
    sign = 1.0 if largest else -1.0
    v = np.concatenate([best_s.ravel(), vals.astype(np.float64)])
    i = np.concatenate([best_i.ravel(), cols.astype(np.int64) + offset])
    row = np.concatenate([np.repeat(np.arange(nq), have), rows.astype(np.int64)])
    order = np.lexsort((i, -sign * v, row))
    starts = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=nq))[:-1]])
    keep = order[np.arange(order.size) - starts[row[order]] < keep_n]
    return v[keep].reshape(nq, keep_n), i[keep].reshape(nq, keep_n)


def merge_top_k(
    best_s: np.ndarray, best_i: np.ndarray, block: np.ndarray, offset: int, k: int, largest: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Merge a block of scores (columns ``offset...``) into each row's running
    top k, best first; ties go to the lower training index.

    Once every row holds k results, only entries that beat a row's current
    k-th score are touched: one comparison pass instead of a top-k per block.
    """
    nq, m = block.shape
    sign = 1.0 if largest else -1.0
    if best_s.shape[1] < k:
        vals = np.concatenate([best_s, block.astype(np.float64)], axis=1)
        idx = np.concatenate([best_i, np.broadcast_to(np.arange(offset, offset + m, dtype=np.int64), (nq, m))], axis=1)
        if vals.shape[1] > 4 * k:
            # Sort only the entries at or beyond each row's k-th value (ties included,
            # so the lower-index rule still decides among them), not the whole block.
            kth = np.partition(sign * vals, vals.shape[1] - k, axis=1)[:, vals.shape[1] - k]
            rows, cols = np.nonzero(sign * vals >= kth[:, None])
            order = np.lexsort((idx[rows, cols], -sign * vals[rows, cols], rows))
            starts = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=nq))[:-1]])
            keep = order[np.arange(order.size) - starts[rows[order]] < k]
            return vals[rows[keep], cols[keep]].reshape(nq, k), idx[rows[keep], cols[keep]].reshape(nq, k)
        order = np.lexsort((idx, -sign * vals), axis=1)[:, :k] if vals.shape[1] > 0 else idx
        return np.take_along_axis(vals, order, 1), np.take_along_axis(idx, order, 1)
    # every running score came from a block of this dtype, so the cast is exact
    worst = best_s[:, -1:].astype(block.dtype)
    rows, cols = np.nonzero(block > worst if largest else block < worst)
    if rows.size == 0:
        return best_s, best_i
    vals = np.concatenate([best_s.ravel(), block[rows, cols].astype(np.float64)])
    idx = np.concatenate([best_i.ravel(), cols.astype(np.int64) + offset])
    row = np.concatenate([np.repeat(np.arange(nq), k), rows])
    order = np.lexsort((idx, -sign * vals, row))
    starts = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=nq))[:-1]])
    keep = order[np.arange(order.size) - starts[row[order]] < k]
    return vals[keep].reshape(nq, k), idx[keep].reshape(nq, k)


def _readonly_tensor(array: np.ndarray) -> Tensor:
    """A tensor over a read-only memory map, without copying; never written to."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(array))


def self_influence(store: GradientStore, device: str | torch.device | None = None) -> np.ndarray:
    """``sum_c lr_c * |g_c(z)|^2`` per training example, from the exact
    (unprojected) squared gradient norms kept in the store: exact even when
    the features are projected. High values flag mislabelled, poisoned or
    atypical examples. Examples left out for non-finite values
    (``store.skipped_examples``) read 0. ``device``: where the sums are
    taken (float64, in the same order: the same numbers as on the host)."""
    on = Placement.of(device, None).device
    lrs = store.learning_rates
    if on is None or on.type == "cpu":
        out = np.zeros(store.n_examples, dtype=np.float64)
        for a, b in store.shard_ranges():  # streamed: one float64 per example, whatever the number of checkpoints
            for c, lr in enumerate(lrs):
                out[a:b] += lr * store.exact_sqnorms(c, a, b, "raw self-influence")
        out[store.skipped_indices] = 0.0
        return out
    total = torch.zeros(store.n_examples, dtype=torch.float64, device=on)
    for a, b in store.shard_ranges():
        for c, lr in enumerate(lrs):
            total[a:b] += float(lr) * torch.from_numpy(np.ascontiguousarray(store.exact_sqnorms(c, a, b, "raw self-influence"))).to(on)
    out = total.cpu().numpy()
    out[store.skipped_indices] = 0.0
    return out


def self_influence_by_checkpoint(store: GradientStore) -> np.ndarray:
    """``[n_checkpoint, n_examples]``: ``lr_c * |g_c(z)|^2``, each
    checkpoint's term of :func:`self_influence` (0 for examples left out)."""
    lrs = store.learning_rates
    out = np.zeros((len(lrs), store.n_examples), dtype=np.float64)
    for a, b in store.shard_ranges():
        for c, lr in enumerate(lrs):
            out[c, a:b] = lr * store.exact_sqnorms(c, a, b, "raw self-influence")
    out[:, store.skipped_indices] = 0.0
    return out
