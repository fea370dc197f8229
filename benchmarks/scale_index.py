"""The store index at scale: recall@100 against the exact top-100, and query
time against gradtrace's exact scan, in the same run.

Writes a synthetic float16 store through the store API (one checkpoint;
seeded; under /tmp, deleted at the end): ``n`` unit rows of ``dim`` numbers
whose norms are log-normal (sigma 0.5, so the raw score's large-norm
examples matter), drawn from an anisotropic Gaussian (variance of
coordinate i proportional to (1 + i)^-0.5), and, for each of the 100
queries (drawn from the same distribution), 100 planted rows near it
(cosine 0.45-0.9) at random positions, so that each query's exact top-100
is a set of real near neighbours rather than a tie among noise. Then builds
the index (``gradtrace.index.build_index``), and times ``Attributor.top_k``
(k=100, variant raw) with and without ``index=`` on the same 100 queries,
alternating (medians). Recall@100 = the share of the exact top-100 that the
index path returns (its scores are exact, re-ranked against the store).

``--variant cosine`` measures the cosine index instead (recorded apart, not
in scale.json). ``--tune`` sweeps the search settings (nprobe x candidates) on one seed and
records the sweep; a plain run uses the settings given (chosen on another
seed) and merges ``index_recall_at_100_<size>`` (and, for 10m,
``index_speedup_10m``) into benchmarks/results/scale.json. Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import ROOT, paired_time, record  # noqa: E402

from gradtrace import Attributor, GradientStore, QueryFeatures  # noqa: E402
from gradtrace.errors import InputError, StoreError  # noqa: E402
from gradtrace.fileio import atomic_write_bytes, json_bytes  # noqa: E402
from gradtrace.index import IndexParams, build_index, open_index, query_vectors  # noqa: E402
from gradtrace.index.vectors import vector_dim  # noqa: E402

SIZES = {"1m": (1_000_000, 1024), "10m": (10_000_000, 256)}
SHARD = 65536
NORM_SIGMA = 0.5


def spectrum(dim: int) -> np.ndarray:
    return ((1.0 + np.arange(dim)) ** -0.25).astype(np.float32)  # standard deviations: variance ~ (1 + i)^-0.5


def make_queries(dim: int, nq: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 1])
    q = rng.standard_normal((nq, dim), dtype=np.float32) * spectrum(dim)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def planted_positions(n: int, nq: int, planted: int, seed: int) -> np.ndarray:
    """The positions of the planted rows, ``[n_query, planted]`` (seeded)."""
    rng = np.random.default_rng([seed, 2])
    return rng.choice(n, size=nq * planted, replace=False).reshape(nq, planted)


def open_or_build_store(root: Path, n: int, dim: int, queries: np.ndarray, planted: int, seed: int) -> tuple[GradientStore, np.ndarray, bool]:
    """The synthetic store at ``root``: reused when a complete one with these
    settings is there (its ``synthetic.json`` says so), else written anew.
    Returns it, the planted positions and whether it was reused."""
    recipe = {"n": n, "dim": dim, "queries": int(queries.shape[0]), "planted": planted, "seed": seed, "norm_sigma": NORM_SIGMA}
    marker = root / "synthetic.json"
    if marker.is_file() and json.loads(marker.read_text()) == recipe:
        store = GradientStore.open(root)
        if not store.missing_shards():
            return store, planted_positions(n, queries.shape[0], planted, seed), True
    if root.exists():
        shutil.rmtree(root)
    store, positions = build_store(root, n, dim, queries, planted, seed)
    atomic_write_bytes(marker, json_bytes(recipe))
    return store, positions, False


def build_store(root: Path, n: int, dim: int, queries: np.ndarray, planted: int, seed: int) -> tuple[GradientStore, np.ndarray]:
    """The synthetic store (see the module docstring); returns it and the planted positions ``[n_query, planted]``."""
    settings = {
        "config": {"params": "all", "projection": {"kind": "dense", "dim": dim, "seed": seed, "distribution": "rademacher"},
                   "method": "auto", "batch_size": 64, "shard_size": SHARD, "dtype": "float16"},
        "model": {"fingerprint": "synthetic", "param_names": ["w"], "grad_dim": 10 * dim, "method": "hooks", "factor_layout": []},
        "task": "synthetic", "checkpoints": [{"path": "synthetic.pt", "lr": 1.0, "step": 0}], "feature_dim": dim,
    }
    store = GradientStore.create(root, settings)
    store.add_segment("synthetic", [str(i) for i in range(n)], None)
    nq = queries.shape[0]
    positions = planted_positions(n, nq, planted, seed).ravel()
    owner = np.repeat(np.arange(nq), planted)
    order = np.argsort(positions)
    positions_sorted, owner_sorted = positions[order], owner[order]
    scale = spectrum(dim)
    for s, a in enumerate(range(0, n, SHARD)):
        b = min(a + SHARD, n)
        gen = np.random.default_rng([seed, 3, s])
        rows = gen.standard_normal((b - a, dim), dtype=np.float32)
        rows *= scale
        lo, hi = np.searchsorted(positions_sorted, a), np.searchsorted(positions_sorted, b)
        if hi > lo:
            noise = gen.standard_normal((hi - lo, dim), dtype=np.float32)
            noise /= np.linalg.norm(noise, axis=1, keepdims=True)
            eps = gen.uniform(0.48, 2.0, size=(hi - lo, 1)).astype(np.float32)  # cosine ~ 1/sqrt(1 + eps^2): 0.45-0.9
            rows[positions_sorted[lo:hi] - a] = queries[owner_sorted[lo:hi]] + eps * noise
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        norms = np.exp(gen.normal(0.0, NORM_SIGMA, size=b - a))
        store.write_shard(0, a, b, rows.astype(np.float16), np.stack([norms, norms**2], axis=1))
    return store, positions.reshape(nq, planted)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(e.tolist())) / exact.shape[1] for f, e in zip(found, exact)]))


def merge_scale_json(keys: dict) -> None:
    """Merge ``keys`` into benchmarks/results/scale.json (read, update, atomic write; other keys kept)."""
    path = ROOT / "benchmarks" / "results" / "scale.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(keys)
    atomic_write_bytes(path, json_bytes(data))


def open_or_build_index(store: GradientStore, variant: str, params: IndexParams, folder: Path) -> tuple[Any, float, bool]:
    """The index in ``folder`` when it was built for this store as it is with
    these settings (its build time as recorded), else a new one built there.
    Returns it, the build seconds and whether it was reused."""
    want = params.resolved(store.n_examples, vector_dim(store), variant)
    try:
        index = open_index(store, variant, folder, verify=False)
    except (InputError, StoreError):
        index = None
    if index is not None and {k: v for k, v in index.meta["settings"].items() if k != "nprobe"} == {
        k: v for k, v in want.items() if k != "nprobe"
    }:
        return index, float(index.meta["built"]["seconds"]), True
    t0 = time.perf_counter()
    index = build_index(store, variant, params, folder=folder, progress=True)
    return index, time.perf_counter() - t0, False


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="1m")
    parser.add_argument("--n", type=int, help="rows (default from --size; smaller for a trial run, which writes nothing to scale.json)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--planted", type=int, default=100)
    parser.add_argument("--kind", default="ivfsq")
    parser.add_argument("--variant", choices=("raw", "cosine"), default="raw")
    parser.add_argument("--nlist", type=int, help="lists per norm bucket (at most); default: gradtrace's (~sqrt of the bucket's rows)")
    parser.add_argument("--pq-m", type=int)
    parser.add_argument("--sq-type", default="8bit")
    parser.add_argument("--quantizer", default="flat")
    parser.add_argument("--metric", default="ip")
    parser.add_argument("--exact-share", type=float, help="share of rows (largest norms) searched exactly; default gradtrace's")
    parser.add_argument("--norm-buckets", type=int)
    parser.add_argument("--train-sample", type=int)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--candidates", type=int, default=300)
    parser.add_argument("--no-prune", action="store_true", help="search every approximate bucket for every query")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tune", action="store_true", help="sweep --nprobes x --candidates-list; records the sweep only")
    parser.add_argument("--nprobes", default="8,16,32,64,128")
    parser.add_argument("--candidates-list", default="100,300,1000")
    parser.add_argument("--store-dir", help="keep the synthetic store here and reuse it when it is already there (default: a temporary folder, deleted)")
    parser.add_argument("--workdir", default="/tmp")
    parser.add_argument("--prepare", action="store_true", help="only write the synthetic store into --store-dir (and, with --index-dir, build the index there), outside the timing lock, then stop")
    parser.add_argument("--index-dir", help="keep the index here and reuse it when it was built for this store with these settings (default: a temporary folder)")
    parser.add_argument("--label", default="", help="suffix of the recorded section name (tuning variants)")
    args = parser.parse_args()
    n, dim = SIZES[args.size]
    trial = args.n is not None and args.n != n
    n = args.n or n
    load_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="gt-scale-index-", dir=args.workdir))
    try:
        queries = make_queries(dim, args.queries, args.seed)
        t0 = time.perf_counter()
        root = Path(args.store_dir) if args.store_dir else work / "store"
        store, planted, reused = open_or_build_store(root, n, dim, queries, args.planted, args.seed)
        store_s = time.perf_counter() - t0
        store_bytes = store.size_bytes()
        if args.prepare and not args.index_dir:
            return {"store": str(root), "n": n, "dim": dim, "seed": args.seed, "reused": reused, "seconds": store_s}
        qf = QueryFeatures([torch.from_numpy(queries.astype(np.float64))], [torch.ones(args.queries, dtype=torch.float64)],
                           "synthetic", args.queries)
        params = IndexParams(kind=args.kind, nlist=args.nlist, pq_m=args.pq_m, nprobe=args.nprobe, sq_type=args.sq_type,
                             quantizer=args.quantizer, metric=args.metric, exact_share=args.exact_share, norm_buckets=args.norm_buckets,
                             train_sample=args.train_sample, seed=0)
        index, build_s, index_reused = open_or_build_index(store, args.variant, params, Path(args.index_dir) if args.index_dir else work / "index")
        index.set_search(prune=not args.no_prune)
        if args.prepare:
            return {"store": str(root), "index": str(index.path), "index_reused": index_reused, "index_build_seconds": build_s}
        index_bytes = sum(e["file"]["size"] for e in index.meta["buckets"])
        buckets = [{k: v for k, v in e.items() if k != "file"} for e in index.meta["buckets"]]
        exact_attr = Attributor(store, None, None)
        t0 = time.perf_counter()
        exact = exact_attr.top_k(qf, k=args.k, variant=args.variant)  # also hashes every shard file once (cached for both paths)
        first_exact_s = time.perf_counter() - t0
        planted_share = float(np.mean([np.isin(e, p).mean() for e, p in zip(exact.indices, planted)]))
        vectors = query_vectors(qf.unit, qf.norms, store.learning_rates, args.variant)

        def indexed(nprobe: int, candidates: int):
            index.set_search(nprobe=nprobe) if index.kind in ("ivf", "ivfsq", "ivfpq") else None
            return Attributor(store, None, None, index=index, candidates=candidates).top_k(qf, k=args.k, variant=args.variant)

        def search_only(candidates: int) -> tuple[float, list[float]]:
            t = time.perf_counter()
            index.search(vectors, candidates, args.k)
            return time.perf_counter() - t, list(index.last_searched)

        settings = {k: v for k, v in index.meta["settings"].items() if k != "max_squared_norm"}
        common = {
            "size": args.size, "n": n, "dim": dim, "seed": args.seed, "variant": args.variant, "queries": args.queries, "k": args.k,
            "planted_per_query": args.planted, "planted_share_of_exact_top_k": planted_share,
            "store_bytes": store_bytes, "store_write_seconds": None if reused else store_s, "store_reused": reused,
            "index_settings": settings, "prune": not args.no_prune, "index_reused": index_reused,
            "index_build_seconds": build_s, "index_estimated_seconds": index.meta["built"]["estimated_seconds"],
            "index_bytes": index_bytes, "index_buckets": buckets, "first_exact_top_k_seconds_with_hashing": first_exact_s,
            "load_average_start": load_start,
        }
        label = f"_{args.label}" if args.label else ""
        if args.tune:
            sweep = []
            for nprobe in parse_ints(args.nprobes):
                for candidates in parse_ints(args.candidates_list):
                    t = time.perf_counter()
                    try:
                        found = indexed(nprobe, candidates)
                    except InputError as exc:  # the lists searched held fewer than k rows for some query
                        sweep.append({"nprobe": nprobe, "candidates": candidates, "recall_at_k": None, "error": str(exc)})
                        continue
                    seconds = time.perf_counter() - t
                    search_s, searched = search_only(candidates)
                    sweep.append({"nprobe": nprobe, "candidates": candidates, "recall_at_k": recall(found.indices, exact.indices),
                                  "seconds": seconds, "search_seconds": search_s, "searched_share_per_bucket": searched})
                    print(json.dumps(sweep[-1]), flush=True)
            results = dict(common, sweep=sweep, load_average_end=os.getloadavg()[0])
            name = f"scale_index_{args.size}_tuning{label}"
            rows = "\n".join(
                f"| {r['nprobe']} | {r['candidates']} | {r['recall_at_k']:.3f} | {r['seconds']:.2f} s | {r['search_seconds']:.2f} s |"
                if r["recall_at_k"] is not None else f"| {r['nprobe']} | {r['candidates']} | fewer than k candidates | | |" for r in sweep
            )
            summary = f"""
Tuning run (seed {args.seed}; the reported run uses another seed): {n:,} x {dim} float16 rows, {args.queries} queries, k={args.k}, variant {args.variant}, prune {not args.no_prune}, index {dict((k, v) for k, v in settings.items() if k != "nprobe")}; per bucket (kind, rows, nlist): {[(b["kind"], b["rows"], b.get("nlist")) for b in buckets]}. Candidates are per approximate norm bucket. Only the index path is timed here (the exact scan's first call, which also hashes every shard file: {first_exact_s:.1f} s); "search" is the index search alone, the rest of the time is the exact re-rank. Load average {load_start:.1f} at the start.

| nprobe | candidates | recall@{args.k} | index path, {args.queries} queries | of which search |
|---|---|---|---|---|
{rows}
"""
        else:
            t_exact, t_index, ratio, _, found = paired_time(
                lambda: exact_attr.top_k(qf, k=args.k, variant=args.variant), lambda: indexed(args.nprobe, args.candidates), args.repeats,
            )
            search_s, searched = search_only(args.candidates)
            rec = recall(found.indices, exact.indices)
            cols = {int(i) for i in found.indices.ravel()}
            check = sorted(cols)[:2000]
            full = exact_attr.breakdown(qf, check, variant=args.variant).sum(axis=0)
            col = {c: j for j, c in enumerate(check)}
            err = max((abs(found.scores[q, r] - full[q, col[int(i)]]) for q in range(found.indices.shape[0])
                       for r, i in enumerate(found.indices[q]) if int(i) in col), default=0.0)
            load_end = os.getloadavg()[0]
            results = dict(common, recall_at_k=rec, exact_seconds=t_exact, index_seconds=t_index, speedup=ratio,
                           nprobe=args.nprobe, candidates=args.candidates, max_abs_score_error_vs_breakdown=float(err),
                           repeats=args.repeats, index_search_seconds=search_s, searched_share_per_bucket=searched,
                           load_average_end=load_end)
            name = f"scale_index_{args.size}{label}"
            shares = ", ".join(f"{b['kind']} {b['rows']:,}: {s:.0%}" for b, s in zip(buckets, searched))
            summary = f"""
Synthetic float16 store of {n:,} x {dim} rows ({store_bytes / 2**30:.2f} GiB; seed {args.seed}; 100 planted near neighbours per query, which make up {planted_share:.0%} of the exact top-{args.k}), {args.queries} queries, k={args.k}, variant {args.variant}. Index {settings["kind"]} ({", ".join(f"{k}={v}" for k, v in settings.items() if k not in ("kind", "seed", "augmented", "nprobe"))}); search settings nprobe={args.nprobe}, candidates={args.candidates}, prune {not args.no_prune}, {"chosen on seed 0 (`--tune`)" if args.seed != 0 else "on seed 0, the tuning seed itself (a dev check of settings, not a reported result)"}. Load average {load_start:.1f} at the start, {load_end:.1f} at the end (2 cores, shared).

| | value |
|---|---|
| recall@{args.k} against the exact top-{args.k} | **{rec:.3f}** |
| exact scan (`top_k`), {args.queries} queries | {t_exact:.2f} s |
| index + exact re-rank (`top_k`, `index=`), {args.queries} queries | {t_index:.3f} s (of which the index search {search_s:.3f} s) |
| speedup (median of paired ratios) | **{ratio:.1f}x** |
| queries that searched each bucket (kind, rows: share) | {shares} |
| index build (train + add, one process{", before this run (--prepare)" if index_reused else ""}) | {build_s:.0f} s (estimated beforehand: {index.meta['built']['estimated_seconds']:.0f} s) |
| index on disk | {index_bytes / 2**20:.0f} MiB (store: {store_bytes / 2**20:.0f} MiB) |
| writing the synthetic store | {"reused from --store-dir" if reused else f"{store_s:.0f} s"} |

Returned scores equal the exact float64 scores of their rows (largest difference {err:.1e}).
"""
        command = f"python benchmarks/scale_index.py --size {args.size} --seed {args.seed} --kind {args.kind}" + (
            f" --tune --nprobes {args.nprobes} --candidates-list {args.candidates_list}" if args.tune
            else f" --nprobe {args.nprobe} --candidates {args.candidates}"
        )
        for flag, value in (("--n", args.n), ("--nlist", args.nlist), ("--pq-m", args.pq_m), ("--exact-share", args.exact_share),
                            ("--norm-buckets", args.norm_buckets), ("--train-sample", args.train_sample),
                            ("--store-dir", args.store_dir), ("--index-dir", args.index_dir), ("--label", args.label)):
            if value is not None and value != "":
                command += f" {flag} {value}"
        if args.kind == "ivfsq" and args.sq_type != "8bit":
            command += f" --sq-type {args.sq_type}"
        if args.metric != "ip":
            command += f" --metric {args.metric}"
        if args.quantizer != "flat":
            command += f" --quantizer {args.quantizer}"
        if args.no_prune:
            command += " --no-prune"
        if args.variant != "raw":
            command += f" --variant {args.variant}"
            name += f"_{args.variant}"
        command = "OMP_NUM_THREADS=1 " + ("" if args.tune else "flock /tmp/gt-timing.lock ") + "nice -n 10 " + command
        if trial and not args.tune:
            name = f"scale_index_{n}_rows{label}" + ("" if args.variant == "raw" else f"_{args.variant}")
        record(name, command, summary, results)  # a run at another size is recorded under its own name, not in scale.json
        if not trial and not args.tune and args.variant == "raw" and not args.label:
            keys = {f"index_recall_at_100_{args.size}": rec}
            if args.size == "10m":
                keys["index_speedup_10m"] = ratio
            merge_scale_json(dict(keys, **{f"index_details_{args.size}": results}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


if __name__ == "__main__":
    out = main()
    print(json.dumps({k: v for k, v in out.items() if not isinstance(v, (dict, list))}))
