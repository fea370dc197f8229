"""The store index (gradtrace.index, ``gradtrace index``, ``query --index``):
the vectors make the checkpoint-summed score one inner product, a flat index
gives exactly the exact top-k, IVF/HNSW find planted neighbours, returned
scores are exact, a changed store is refused and a rebuild serves it again,
bad inputs are named (exit 2 on the command line)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from gradtrace import Attributor, GradientStore, QueryFeatures
from gradtrace.cli import app
from gradtrace.errors import InputError, MissingDependencyError, StoreError
from gradtrace.index import IndexParams, build_index, open_index, query_vectors, store_vectors

LRS = (0.5, 0.2)


def settings(dim: int, shard: int, lrs=LRS, kind: str = "dense", dtype: str = "float32") -> dict:
    projection = {"kind": kind, "dim": dim, "seed": 0, "distribution": "rademacher"} if kind == "dense" else {"kind": kind}
    return {
        "config": {"params": "all", "projection": projection, "method": "auto", "batch_size": 8, "shard_size": shard, "dtype": dtype},
        "model": {"fingerprint": "synthetic", "param_names": ["w"], "grad_dim": 10 * dim, "method": "hooks",
                  "factor_layout": [[dim // 2, dim - dim // 2]] if kind == "factored" else []},
        "task": "synthetic",
        "checkpoints": [{"path": f"ckpt_{i}.pt", "lr": lr, "step": i} for i, lr in enumerate(lrs)],
        "feature_dim": dim,
    }


def write_rows(store: GradientStore, start: int, rows: list[np.ndarray], norms: list[np.ndarray]) -> None:
    """Write rows[c] (unit) and norms[c] of examples start.. at every checkpoint, shard by shard."""
    n = rows[0].shape[0]
    store.add_segment(f"data-{start}", [f"x{start + i}" for i in range(n)], None)
    seg = store.segments[-1]
    for a, b in store.shard_ranges(seg):
        for c in range(len(rows)):
            nr = norms[c][a - start : b - start]
            store.write_shard(c, a, b, rows[c][a - start : b - start].astype(store.settings.dtype), np.stack([nr, nr**2], axis=1))


def random_rows(gen: np.random.Generator, n: int, dim: int, n_ckpt: int = 2) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rows, norms = [], []
    for _ in range(n_ckpt):
        r = gen.standard_normal((n, dim))
        rows.append(r / np.linalg.norm(r, axis=1, keepdims=True))
        norms.append(np.exp(gen.normal(0.0, 0.5, n)))
    return rows, norms


def make_store(root: Path, n: int = 300, dim: int = 8, shard: int = 64, seed: int = 0, **kw) -> GradientStore:
    store = GradientStore.create(root, settings(dim, shard, **kw))
    write_rows(store, 0, *random_rows(np.random.default_rng(seed), n, dim))
    return store


def queries(dim: int, nq: int = 4, seed: int = 1, n_ckpt: int = 2) -> QueryFeatures:
    gen = torch.Generator().manual_seed(seed)
    q = [torch.randn(nq, dim, generator=gen, dtype=torch.float64) for _ in range(n_ckpt)]
    return QueryFeatures([x / x.norm(dim=1, keepdim=True) for x in q], [x.norm(dim=1) for x in q], "synthetic", nq)


def oracle(store: GradientStore, qf: QueryFeatures, variant: str) -> np.ndarray:
    """[n_query, n_train] scores by a plain loop over checkpoints, from the stored rows in float64."""
    out = np.zeros((qf.n, store.n_examples))
    for c, lr in enumerate(store.learning_rates):
        for a, b in store.shard_ranges():
            rows = np.asarray(store.features(c, a, b), dtype=np.float64)
            dots = qf.unit[c].numpy() @ rows.T
            if variant == "raw":
                dots *= qf.norms[c].numpy()[:, None] * store.norms(c, a, b)[:, 0][None, :]
            out[:, a:b] += lr * dots
    return out


def oracle_top_k(scores: np.ndarray, k: int, largest: bool) -> np.ndarray:
    sign = 1.0 if largest else -1.0
    return np.stack([np.lexsort((np.arange(row.size), -sign * row))[:k] for row in scores])


@pytest.mark.parametrize("variant", ["raw", "cosine"])
def test_the_vectors_make_the_summed_score_one_inner_product(tmp_path: Path, variant: str) -> None:
    store = make_store(tmp_path / "s")
    qf = queries(8)
    v = np.concatenate([store_vectors(store, variant, a, b) for a, b in store.shard_ranges()]).astype(np.float64)
    w = query_vectors(qf.unit, qf.norms, store.learning_rates, variant).astype(np.float64)
    np.testing.assert_allclose(w @ v.T, oracle(store, qf, variant), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["raw", "cosine"])
@pytest.mark.parametrize("largest", [True, False])
def test_a_flat_index_gives_the_exact_top_k_with_exact_scores(tmp_path: Path, variant: str, largest: bool) -> None:
    store = make_store(tmp_path / "s")
    qf = queries(8)
    build_index(store, variant, IndexParams(kind="flat"))
    top = Attributor(store, None, None, index=True, candidates=30).top_k(qf, k=10, largest=largest, variant=variant)
    scores = oracle(store, qf, variant)
    want = oracle_top_k(scores, 10, largest)
    np.testing.assert_array_equal(top.indices, want)
    np.testing.assert_allclose(top.scores, np.take_along_axis(scores, want, 1), rtol=1e-12, atol=1e-12)
    exact = Attributor(store, None, None).top_k(qf, k=10, largest=largest, variant=variant)
    np.testing.assert_array_equal(top.indices, exact.indices)
    assert top.ids == exact.ids and top.variant == variant


@pytest.mark.parametrize("variant", ["raw", "cosine"])
@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("budget", [None, 1, 70 * 2 * (8 * 4 + 8)])
def test_the_re_rank_scores_each_querys_own_candidates_exactly(
    tmp_path: Path, variant: str, largest: bool, dtype: str, budget, monkeypatch,
) -> None:
    """Candidates shared by some queries, own to others, spread over shards and
    padded with -1: each query gets the exact top k of its own candidates
    (ties to the lower index), scores equal to breakdown's; the same whether
    the queries are re-ranked together, one by one (a budget of one byte) or
    in batches (a budget of 70 float32 rows of both checkpoints)."""
    import gradtrace.scoring.attributor as attributor_module

    if budget is not None:
        monkeypatch.setattr(attributor_module, "RERANK_BYTES", budget)
    store = make_store(tmp_path / "s", dtype=dtype)
    qf = queries(8, nq=5)
    gen = np.random.default_rng(3)
    shared = gen.choice(300, size=12, replace=False)
    cand = np.full((5, 50), -1, dtype=np.int64)
    for q in range(5):
        own = gen.choice(np.setdiff1d(np.arange(300), shared), size=20 + 4 * q, replace=False)
        row = np.concatenate([shared[: 6 + q], own])
        cand[q, : row.size] = gen.permutation(row)
    attributor = Attributor(store, None, None)
    method = attributor._method(variant)
    batches = []
    real = attributor._rerank_batch
    monkeypatch.setattr(attributor, "_rerank_batch", lambda qf, m, mine, lo, hi, *rest: (batches.append((lo, hi)), real(qf, m, mine, lo, hi, *rest)))
    best_s, best_i = attributor._rerank(qf, method, cand, 7, largest)
    assert batches[0][0] == 0 and batches[-1][1] == 5 and all(a[1] == b[0] for a, b in zip(batches, batches[1:]))
    assert len(batches) == {None: 1, 1: 5}.get(budget, len(batches))
    if budget not in (None, 1):
        assert 1 < len(batches) < 5  # some queries together, some alone
    full = attributor.breakdown(qf, list(range(300)), variant=variant).sum(axis=0)
    np.testing.assert_allclose(full, oracle(store, qf, variant), rtol=1e-12, atol=1e-12)
    sign = 1.0 if largest else -1.0
    for q in range(5):
        mine = np.unique(cand[q][cand[q] >= 0])
        want = mine[np.lexsort((mine, -sign * full[q, mine]))[:7]]
        np.testing.assert_array_equal(best_i[q], want)
        np.testing.assert_allclose(best_s[q], full[q, want], rtol=1e-13, atol=1e-15)


def planted_store(root: Path, n: int = 3000, dim: int = 32, nq: int = 5, planted: int = 10, seed: int = 0):
    """Random rows plus, for each query direction, ``planted`` rows close to it
    and of a large norm (one checkpoint): they are each query's exact top
    ``planted`` under raw and cosine scores alike."""
    gen = np.random.default_rng(seed)
    q = gen.standard_normal((nq, dim))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    rows = gen.standard_normal((n, dim))
    where = gen.choice(n, size=nq * planted, replace=False).reshape(nq, planted)
    for j in range(nq):
        rows[where[j]] = q[j] + 0.3 * gen.standard_normal((planted, dim)) / np.sqrt(dim)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    norms = np.exp(gen.normal(0.0, 0.2, n))
    norms[where.ravel()] = 2.0
    store = GradientStore.create(root, settings(dim, 512, lrs=(0.3,)))
    write_rows(store, 0, [rows], [norms])
    qf = QueryFeatures([torch.from_numpy(q)], [torch.ones(nq, dtype=torch.float64)], "synthetic", nq)
    return store, qf, where


@pytest.mark.parametrize("variant", ["raw", "cosine"])
@pytest.mark.parametrize("params", [
    IndexParams(kind="ivf", nlist=16, nprobe=4, metric="l2"),
    IndexParams(kind="ivf", nlist=8, nprobe=4, norm_buckets=4),  # four IVF buckets (and the exact share under raw)
    IndexParams(kind="ivfpq", nlist=8, nprobe=4, pq_m=11, metric="l2"),
    IndexParams(kind="ivfsq", nlist=16, nprobe=4),
    IndexParams(kind="ivfsq", nlist=16, nprobe=4, sq_type="fp16", exact_share=0.0),
    IndexParams(kind="ivfsq", nlist=32, nprobe=8, quantizer="hnsw", hnsw_m=8),
    IndexParams(kind="ivfsq", nlist=16, nprobe=4, metric="ip", norm_buckets=2),
    IndexParams(kind="ivfpq", nlist=8, nprobe=4, pq_m=8, metric="ip"),
    IndexParams(kind="hnsw", hnsw_m=16),
], ids=["ivf-l2", "ivf-buckets", "ivfpq-l2", "ivfsq8", "ivfsq16-no-exact-share", "ivfsq-hnsw-quantizer", "ivfsq-ip", "ivfpq-ip", "hnsw"])
def test_approximate_indexes_find_the_planted_neighbours_and_return_exact_scores(tmp_path: Path, variant: str, params) -> None:
    store, qf, planted = planted_store(tmp_path / "s")
    index = build_index(store, variant, params)
    exact_share = variant == "raw" and params.exact_share != 0.0  # raw: the 1/32 of largest norm are searched exactly by default
    assert len(index.meta["buckets"]) == (params.norm_buckets or 1) + exact_share
    assert index.meta["buckets"][-1]["exact_share"] == exact_share
    top = Attributor(store, None, None, index=True, candidates=100).top_k(qf, k=10, variant=variant)
    scores = oracle(store, qf, variant)
    want = oracle_top_k(scores, 10, True)
    assert all(set(row) == set(p) for row, p in zip(want, planted))  # the planted rows are the exact top 10
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top.indices, want)])
    assert recall >= 0.9, recall
    np.testing.assert_allclose(top.scores, np.take_along_axis(scores, top.indices, 1), rtol=1e-12, atol=1e-12)
    assert (np.diff(top.scores, axis=1) <= 0).all()


def test_norm_buckets_split_rows_by_norm(tmp_path: Path) -> None:
    from gradtrace.index.store_index import norm_bucket_ids

    sq = np.array([5.0, 1.0, 3.0, 8.0, 2.0, 7.0, 4.0, 6.0])
    np.testing.assert_array_equal(norm_bucket_ids(sq, 1), np.zeros(8))
    # halves: (1, 2, 3, 4) and (5, 6, 7, 8)
    np.testing.assert_array_equal(norm_bucket_ids(sq, 2), [1, 0, 0, 1, 0, 1, 0, 1])
    # quarters (1, 2), (3, 4), then half of the rest (5, 6) and the top (7, 8)
    np.testing.assert_array_equal(norm_bucket_ids(sq, 4), [2, 0, 1, 3, 0, 3, 1, 2])
    sq = np.arange(64.0)[::-1]
    ids = norm_bucket_ids(sq, 5)  # 16, 16, 16, 8, 8 rows, by rising norm
    np.testing.assert_array_equal(np.bincount(ids), [16, 16, 16, 8, 8])
    assert all(sq[ids == b].max() <= sq[ids == b + 1].min() for b in range(4))


def test_the_exact_share_is_the_largest_norms_and_the_rest_is_split_as_before() -> None:
    from gradtrace.index.store_index import norm_bucket_ids

    sq = np.random.default_rng(0).permutation(np.arange(100.0))
    ids = norm_bucket_ids(sq, 3, exact_rows=20)  # 80 rows left: quarters 20, 20, then the upper half 40; then the exact 20
    np.testing.assert_array_equal(np.bincount(ids), [20, 20, 40, 20])
    assert all(sq[ids == b].max() < sq[ids == b + 1].min() for b in range(3))
    assert set(np.nonzero(ids == 3)[0]) == set(np.argsort(sq)[-20:])


def wide_norm_store(root: Path, n: int = 2000, dim: int = 16, seed: int = 0) -> tuple[GradientStore, QueryFeatures]:
    """Random unit rows with log-normal norms (sigma 1), one checkpoint: under
    raw scores the largest norms dominate."""
    gen = np.random.default_rng(seed)
    rows = gen.standard_normal((n, dim))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    store = GradientStore.create(root, settings(dim, 512, lrs=(0.3,)))
    write_rows(store, 0, [rows], [np.exp(gen.normal(0.0, 1.0, n))])
    q = gen.standard_normal((6, dim))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return store, QueryFeatures([torch.from_numpy(q)], [torch.from_numpy(np.exp(gen.normal(0.0, 0.5, 6)))], "synthetic", 6)


@pytest.mark.parametrize("largest", [True, False])
def test_pruning_skips_buckets_that_cannot_reach_the_top_k_and_loses_nothing(tmp_path: Path, largest: bool) -> None:
    store, qf = wide_norm_store(tmp_path / "s")
    # every list of every bucket searched: without pruning the index path is an exhaustive search, so it must give
    # the exact top k; with pruning too, while the lowest-norm bucket is never searched
    index = build_index(store, "raw", IndexParams(kind="ivf", nlist=4, nprobe=4, norm_buckets=3, exact_share=0.05))
    assert [e["kind"] for e in index.meta["buckets"]] == ["ivf", "ivf", "ivf", "flat"]
    want = oracle_top_k(oracle(store, qf, "raw"), 5, largest)
    for prune in (True, False):
        index.set_search(prune=prune)
        top = Attributor(store, None, None, index=index, candidates=50).top_k(qf, k=5, largest=largest)
        np.testing.assert_array_equal(top.indices, want)
        if prune:
            assert index.last_searched[0] == 0.0 and index.last_searched[-1] == 1.0  # the lowest norms cannot reach the top 5
        else:
            assert index.last_searched == [1.0] * 4


@pytest.mark.parametrize("params", [
    IndexParams(kind="flat"), IndexParams(kind="ivf", nlist=16), IndexParams(kind="ivfsq", nlist=16),
    IndexParams(kind="ivfsq", nlist=16, sq_type="fp16"), IndexParams(kind="ivfpq", nlist=8, pq_m=11),
    IndexParams(kind="ivfsq", nlist=32, quantizer="hnsw", hnsw_m=8), IndexParams(kind="ivfsq", nlist=16, metric="ip"),
    IndexParams(kind="hnsw", hnsw_m=16),
], ids=["flat", "ivf", "ivfsq8", "ivfsq16", "ivfpq", "ivfsq-hnsw-quantizer", "ivfsq-ip", "hnsw"])
def test_the_estimate_before_the_build_covers_every_kind(tmp_path: Path, params) -> None:
    from gradtrace.index.store_index import estimate

    store, _, _ = planted_store(tmp_path / "s", n=4000)
    index = build_index(store, "raw", params)
    cost = estimate(store, index.meta["settings"], index.meta["buckets"])
    written = sum(e["file"]["size"] for e in index.meta["buckets"])
    assert 0.5 * written <= cost.disk_bytes <= 2.0 * written, (cost.disk_bytes, written)
    assert cost.memory_bytes >= cost.disk_bytes and cost.seconds > 0
    assert cost.read_bytes == store.n_examples * (32 * 4 + 16)  # float32 rows of 32 numbers, two float64 norms


@pytest.mark.parametrize("params", [
    IndexParams(kind="ivfsq", nlist=16, nprobe=4), IndexParams(kind="ivfsq", nlist=16, nprobe=4, sq_type="fp16", metric="l2"),
    IndexParams(kind="ivfsq", nlist=32, nprobe=8, quantizer="hnsw", hnsw_m=8), IndexParams(kind="ivfpq", nlist=8, nprobe=4, pq_m=8),
], ids=["ivfsq8-ip", "ivfsq16-l2", "ivfsq-hnsw-quantizer", "ivfpq-ip"])
def test_a_saved_index_opens_to_the_same_search(tmp_path: Path, params) -> None:
    store, qf, _ = planted_store(tmp_path / "s")
    built = build_index(store, "raw", params)
    opened = open_index(store, "raw")
    assert opened.meta == built.meta
    v = query_vectors(qf.unit, qf.norms, store.learning_rates, "raw")
    np.testing.assert_array_equal(opened.search(v, 40, 10), built.search(v, 40, 10))
    assert opened.last_searched == built.last_searched


def test_an_index_of_an_older_format_is_refused_with_the_command_to_rebuild(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s")
    index = build_index(store, "raw", IndexParams(kind="flat"))
    meta = json.loads(index.path.read_text())
    meta["format_version"] = 1  # written before the exact share and the metric existed
    index.path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="has index format version 1; this gradtrace reads 2: rebuild it with `gradtrace index`"):
        open_index(store, "raw")


def test_a_changed_store_is_refused_and_a_rebuild_serves_it(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s")
    qf = queries(8)
    build_index(store, "raw", IndexParams(kind="flat"))
    write_rows(store, 300, *random_rows(np.random.default_rng(5), 40, 8))  # append 40 examples
    attributor = Attributor(store, None, None, index=True, candidates=30)
    with pytest.raises(StoreError, match="changed since its raw index was built") as err:
        attributor.top_k(qf, k=5)
    assert "examples: 300 -> 340" in str(err.value) and "gradtrace index" in str(err.value)
    build_index(store, "raw", IndexParams(kind="flat"))  # rerun: rebuilt for the store as it is
    top = Attributor(store, None, None, index=True, candidates=30).top_k(qf, k=5)
    np.testing.assert_array_equal(top.indices, oracle_top_k(oracle(store, qf, "raw"), 5, True))
    files = sorted(p.name for p in (store.root / "index").iterdir())
    assert len(files) == 2 and "raw.json" in files  # the old index file is gone


def test_a_shard_rewritten_with_other_rows_is_refused(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s")
    build_index(store, "raw", IndexParams(kind="flat"))
    stem = store.root / "ckpt_000" / "rows_000000000_000000064"
    stem.with_suffix(".json").unlink()  # as repair() does; featurize then writes the shard again
    rows, norms = random_rows(np.random.default_rng(9), 64, 8, 1)
    store.write_shard(0, 0, 64, rows[0].astype(np.float32), np.stack([norms[0], norms[0] ** 2], axis=1))
    with pytest.raises(StoreError, match="shard contents differ"):
        open_index(store, "raw")


def test_an_open_index_is_checked_again_at_each_query(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s")
    qf = queries(8)
    index = build_index(store, "raw", IndexParams(kind="flat"))
    attributor = Attributor(store, None, None, index=index)
    attributor.top_k(qf, k=3)
    write_rows(store, 300, *random_rows(np.random.default_rng(5), 10, 8))
    with pytest.raises(StoreError, match="Rebuild it"):
        attributor.top_k(qf, k=3)


def test_a_damaged_index_file_is_refused(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s")
    index = build_index(store, "raw", IndexParams(kind="flat"))
    file = index.path.parent / index.meta["buckets"][0]["file"]["name"]
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="does not match its recorded checksum"):
        open_index(store, "raw")
    file.write_bytes(bytes(data[:-8]))
    with pytest.raises(StoreError, match="bytes; .* were written"):
        open_index(store, "raw", verify=False)


@pytest.mark.parametrize("call,message", [
    (lambda s: build_index(s, "fisher"), "variant 'fisher' cannot be served by an index"),
    (lambda s: build_index(s, "raw", IndexParams(kind="annoy")), "kind must be one of auto, flat, ivf, ivfsq, ivfpq, hnsw; got 'annoy'"),
    (lambda s: build_index(s, "raw", IndexParams(kind="ivfsq", sq_type="4bit")), "sq_type must be one of 8bit, fp16; got '4bit'"),
    (lambda s: build_index(s, "raw", IndexParams(kind="ivf", quantizer="lsh")), "quantizer must be one of flat, hnsw; got 'lsh'"),
    (lambda s: build_index(s, "raw", IndexParams(kind="ivf", metric="cos")), "metric must be one of l2, ip; got 'cos'"),
    (lambda s: build_index(s, "raw", IndexParams(kind="ivf", exact_share=1.0)), "exact_share must lie in [0.0, 1.0); got 1.0"),
    (lambda s: build_index(s, "raw", IndexParams(kind="ivf", norm_buckets=12)), "norm_buckets (12) is too many for the 290 examples"),
    (lambda s: build_index(s, "raw", IndexParams(kind="ivf", nlist=4, train_sample=2)), "train_sample (2) must be at least nlist (4)"),
    (lambda s: build_index(s, "raw", IndexParams(kind="ivf", nprobe=0)), "nprobe must be a positive integer; got 0"),
    (lambda s: build_index(s, "raw", IndexParams(kind="ivfpq", norm_buckets=4)), "needs at least 256 rows per norm bucket"),
    (lambda s: build_index(s, "raw", IndexParams(kind="flat", norm_buckets=2)), "norm_buckets applies to kinds ivf"),
    (lambda s: build_index(s, "raw", IndexParams(seed=-1)), "seed must be a non-negative integer"),
    (lambda s: open_index(s, "raw"), "no index for variant 'raw'"),
    (lambda s: Attributor(s, None, None, candidates=10), "candidates applies only with an index"),
    (lambda s: Attributor(s, None, None, index=True, candidates=0), "candidates must be a positive integer"),
])
def test_bad_inputs_are_named(tmp_path: Path, call, message: str) -> None:
    store = make_store(tmp_path / "s")
    with pytest.raises(InputError) as err:
        call(store)
    assert message in str(err.value)


def test_variants_an_index_cannot_serve_are_refused_before_any_work(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s")
    qf = queries(8)
    build_index(store, "raw", IndexParams(kind="flat"))
    attributor = Attributor(store, None, None, index=True, candidates=20)
    with pytest.raises(InputError, match="variant 'fisher' cannot be served by an index"):
        attributor.top_k(qf, k=3, variant="fisher")
    with pytest.raises(InputError, match=r"no index for variant 'cosine' .*\(it has an index for raw\)"):
        attributor.top_k(qf, k=3, variant="cosine")
    with pytest.raises(InputError, match=r"candidates \(20\) must be at least k \(25\)"):
        attributor.top_k(qf, k=25)
    np.testing.assert_allclose(attributor.score(qf), oracle(store, qf, "raw"), rtol=1e-5, atol=1e-6)  # score() never uses the index


def test_stores_that_cannot_be_indexed(tmp_path: Path) -> None:
    factored = GradientStore.create(tmp_path / "f", settings(8, 64, kind="factored"))
    write_rows(factored, 0, *random_rows(np.random.default_rng(0), 20, 8))
    with pytest.raises(InputError, match="factored rows .* cannot be indexed"):
        build_index(factored, "raw")
    partial = GradientStore.create(tmp_path / "p", settings(8, 64))
    partial.add_segment("d", [str(i) for i in range(100)], None)
    with pytest.raises(InputError, match="is incomplete"):
        build_index(partial, "raw")


def test_without_faiss_the_error_names_the_extra(tmp_path: Path, monkeypatch) -> None:
    store = make_store(tmp_path / "s")
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"gradtrace\[index\]"):
        build_index(store, "raw")
    r = CliRunner().invoke(app, ["index", str(store.root)])
    assert r.exit_code == 2 and "faiss-cpu" in r.output


# -- the command line --------------------------------------------------------------------------

TASK = '''
import torch
from torch import nn
from gradtrace import ClassificationTask, CheckpointRef
from gradtrace.spec import TaskSpec


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def make_task():
    import pathlib
    here = pathlib.Path(__file__).parent
    gen = torch.Generator().manual_seed(0)
    refs = []
    for i in range(2):
        m = model()
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
        torch.save(m.state_dict(), here / f"ckpt{i}.pt")
        refs.append(CheckpointRef(str(here / f"ckpt{i}.pt"), 0.1 * (i + 1)))
    x = torch.randn(150, 4, generator=gen)
    y = torch.randint(0, 3, (150,), generator=gen)
    return TaskSpec(model=model, task=ClassificationTask(), checkpoints=refs, train=(x, y), queries=(x[:3], y[:3]))
'''


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_index_and_query_index_on_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "task.py").write_text(TASK)
    task, store = f"{tmp_path / 'task.py'}:make_task", tmp_path / "store"
    r = invoke("featurize", "--task", task, "--out", store, "--projection", "dense", "--dim", "16", "--shard-size", "64", "--no-progress")
    assert r.exit_code == 0, r.output
    r = invoke("index", store, "--kind", "flat", "--no-progress", "--json")
    assert r.exit_code == 0, r.output
    built = json.loads(r.output)
    assert built["examples"] == 150 and built["variant"] == "raw" and all(Path(f).is_file() for f in built["files"])
    exact = invoke("query", store, "--task", task, "--k", "4", "--json")
    indexed = invoke("query", store, "--task", task, "--k", "4", "--index", "--candidates", "20", "--json")
    assert exact.exit_code == 0 and indexed.exit_code == 0, indexed.output
    a, b = json.loads(exact.output)["records"], json.loads(indexed.output)["records"]
    assert [r["train_id"] for r in a] == [r["train_id"] for r in b]
    np.testing.assert_allclose([r["score"] for r in b], [r["score"] for r in a], rtol=1e-5)

    def exit_2(*args: object, expected: str) -> None:
        r = invoke(*args)
        assert r.exit_code == 2, r.output
        assert expected in " ".join(r.output.split()) and "Traceback" not in r.output

    exit_2("query", store, "--task", task, "--index", "--variant", "fisher", expected="variant 'fisher' cannot be served by an index")
    exit_2("query", store, "--task", task, "--index", "--variant", "cosine", expected="no index for variant 'cosine'")
    exit_2("query", store, "--task", task, "--candidates", "5", expected="--candidates apply only with --index")
    exit_2("query", store, "--task", task, "--index", "--k", "10", "--candidates", "5", expected="--candidates (5) must be at least --k (10)")
    exit_2("index", store, "--variant", "adam", expected="variant 'adam' cannot be served by an index")
    exit_2("index", store, "--kind", "annoy", "--no-progress", expected="kind must be one of auto, flat")
    exit_2("index", store, "--nlist", "0", expected="--nlist must be a positive integer")
    exit_2("index", tmp_path / "nowhere", expected="is not a gradient store")
    # the store changes (another segment): the index is refused until it is rebuilt
    st = GradientStore.open(store)
    write_rows(st, 150, *random_rows(np.random.default_rng(3), 10, 16))
    exit_2("query", store, "--task", task, "--index", expected="changed since its raw index was built")
    assert invoke("index", store, "--kind", "flat", "--no-progress").exit_code == 0


@pytest.mark.parametrize("blocks", [(8192, 65536), (7, 16), (1, 1)])
def test_the_exact_share_search_is_the_brute_force_top_want(monkeypatch, blocks) -> None:
    """The flat (exact) bucket search, whatever its row blocks: each query's
    ``want`` largest float32 inner products, best first, ties to the lower row,
    the bucket's ids returned."""
    from gradtrace.index import store_index

    monkeypatch.setattr(store_index, "FLAT_FIRST_ROWS", blocks[0])
    monkeypatch.setattr(store_index, "FLAT_BLOCK_ROWS", blocks[1])
    gen = np.random.default_rng(4)
    xb = gen.standard_normal((203, 6)).astype(np.float32)
    xb[50] = xb[10]  # a tie: the lower row first
    ids = gen.permutation(10_000)[:203].astype(np.int64)
    q = gen.standard_normal((5, 6)).astype(np.float32)
    q[2] = 0.0  # every score ties
    scores, found = store_index._flat_search(xb, ids, q, 12)
    full = (q @ xb.T).astype(np.float64)
    want = oracle_top_k(full, 12, True)
    np.testing.assert_array_equal(found, ids[want])
    np.testing.assert_allclose(scores, np.take_along_axis(full, want, 1), rtol=1e-6)  # float32 products: blocks round alike only nearly
