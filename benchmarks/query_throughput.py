"""Query throughput of a large float16 store: is top-k scoring bound by
reading the bytes, as it should be?

Builds a store of 1,000,000 x 1024 float16 unit feature rows (one checkpoint,
seeded random data written through the store API), then times
``Attributor.top_k`` for 100 queries, k=100, against a plain numpy pass over
the same memory-mapped shard files (each block summed in float32, the least a
numpy program does to touch float16 data). Runs alternate and the medians are
compared. ``scan_ratio`` = gradtrace bytes/s / numpy bytes/s. Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import record  # noqa: E402

from gradtrace import Attributor, GradientStore, QueryFeatures  # noqa: E402
from gradtrace.scoring.attributor import SCAN_ROWS  # noqa: E402


def build_store(root: Path, n: int, dim: int, shard: int) -> GradientStore:
    settings = {
        "config": {"params": "all", "projection": {"kind": "dense", "dim": dim, "seed": 0, "distribution": "rademacher"},
                   "method": "auto", "batch_size": 64, "shard_size": shard, "dtype": "float16"},
        "model": {"fingerprint": "synthetic", "param_names": ["w"], "grad_dim": 10 * dim, "method": "hooks", "factor_layout": []},
        "task": "synthetic", "checkpoints": [{"path": "synthetic.pt", "lr": 1.0, "step": 0}], "feature_dim": dim,
    }
    store = GradientStore.create(root, settings)
    store.add_segment("synthetic", [str(i) for i in range(n)], None)
    gen = np.random.default_rng(0)
    for a in range(0, n, shard):
        b = min(a + shard, n)
        rows = gen.standard_normal((b - a, dim), dtype=np.float32)
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        norms = np.stack([np.ones(b - a), np.ones(b - a)], axis=1)
        store.write_shard(0, a, b, rows.astype(np.float16), norms)
    return store


def numpy_pass(store: GradientStore) -> float:
    total = 0.0
    for a, b in store.shard_ranges():
        mm = store.features(0, a, b)
        for lo in range(0, b - a, SCAN_ROWS):
            total += float(mm[lo : lo + SCAN_ROWS].sum(axis=0, dtype=np.float32)[0])
    return total


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gt-throughput-"))
    try:
        t0 = time.perf_counter()
        store = build_store(work / "store", args.n, args.dim, shard=65536)
        build_s = time.perf_counter() - t0
        nbytes = args.n * args.dim * 2
        gen = torch.Generator().manual_seed(1)
        q = torch.randn(args.queries, args.dim, generator=gen, dtype=torch.float64)
        qf = QueryFeatures([q / q.norm(dim=1, keepdim=True)], [torch.ones(args.queries, dtype=torch.float64)], "synthetic", args.queries)
        attributor = Attributor(store, None, None)
        numpy_pass(store)  # warm the page cache for both
        ours, base = [], []
        for _ in range(args.repeats):
            t = time.perf_counter(); numpy_pass(store); base.append(time.perf_counter() - t)
            t = time.perf_counter(); top = attributor.top_k(qf, k=args.k); ours.append(time.perf_counter() - t)
        ours.sort(); base.sort()
        t_ours, t_base = ours[len(ours) // 2], base[len(base) // 2]
        # exactness of the streamed top-k on the first shard range against a full sort
        first = np.asarray(store.features(0, 0, 65536), dtype=np.float64) @ qf.unit[0].numpy().T
        in_first = top.indices[0][top.indices[0] < 65536]
        results = {
            "scan_ratio": (nbytes / t_ours) / (nbytes / t_base),
            "gradtrace_GBps": nbytes / t_ours / 1e9, "numpy_pass_GBps": nbytes / t_base / 1e9,
            "seconds": {"gradtrace_top_k": t_ours, "numpy_pass": t_base, "build_store": build_s},
            "top1_in_first_shard_matches_float64": bool(in_first.size == 0 or np.argmax(first[:, 0]) in top.indices[0]),
            "setup": {"n": args.n, "dim": args.dim, "queries": args.queries, "k": args.k, "bytes": nbytes, "repeats": args.repeats},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = f"""
A float16 store of {args.n:,} x {args.dim} features ({nbytes / 2**30:.2f} GiB, in the page cache), {args.queries} queries, top-{args.k}. Medians of {args.repeats} alternating runs.

| pass | time | throughput |
|---|---|---|
| plain numpy pass (float32 block sums) | {t_base:.2f} s | {results['numpy_pass_GBps']:.2f} GB/s |
| gradtrace `top_k` | {t_ours:.2f} s | {results['gradtrace_GBps']:.2f} GB/s |

`scan_ratio` = **{results['scan_ratio']:.2f}** (gradtrace bytes/s over numpy bytes/s). float16 rows are widened to float32 in one reused buffer per block and scored with float32 matmuls.
"""
    record("query_throughput", "python benchmarks/query_throughput.py", summary, results)
    return results


if __name__ == "__main__":
    out = main()
    print(json.dumps({k: v for k, v in out.items() if not isinstance(v, dict)}))
