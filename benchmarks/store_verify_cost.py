"""What checking shard files on every read costs a scan of a store.

Builds a store of 200,000 x 256 float16 unit rows (one checkpoint, through
the store API, as query_throughput.py does) and times three ways of reading
it whole, each as a plain numpy pass over every shard (features summed in
float32 blocks, norms read) and as ``Attributor.top_k`` (10 queries, k=10):

* ``off``: ``GradientStore.open(root, verify=False)``: structural checks only
  (the ``.npy`` header and file size against the manifest, every open);
* ``cold``: verification on, digest cache emptied before each run: every
  file hashed (sha256), as in the first scan of a process;
* ``warm``: verification on, files already verified in this process: a
  ``stat`` per open, as in every later scan.

Files are in the page cache (the store was just written), so ``cold``
measures hashing, not disk reads. Medians of ``--repeats`` runs. Writes
benchmarks/results/store_verify_cost.json; last line: JSON.
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
from _record import ROOT, machine, median_time  # noqa: E402
from query_throughput import build_store, numpy_pass  # noqa: E402

from gradtrace import Attributor, GradientStore, QueryFeatures  # noqa: E402
from gradtrace.fingerprint import file_sha256, forget_digests  # noqa: E402


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--shard", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gt-verify-cost-"))
    try:
        store = build_store(work / "store", args.n, args.dim, shard=args.shard)
        nbytes = sum(p.stat().st_size for p in store.root.rglob("*.npy"))
        gen = torch.Generator().manual_seed(1)
        q = torch.randn(10, args.dim, generator=gen, dtype=torch.float64)
        qf = QueryFeatures([q / q.norm(dim=1, keepdim=True)], [torch.ones(10, dtype=torch.float64)], "synthetic", 10)
        stores = {"off": GradientStore.open(store.root, verify=False), "on": GradientStore.open(store.root)}

        def scan(s: GradientStore) -> float:
            total = numpy_pass(s)
            for a, b in s.shard_ranges():
                total += float(s.norms(0, a, b)[0, 0])
            return total

        def cold(fn):
            def run():
                forget_digests()
                return fn()
            return run

        scan(stores["off"])  # warm the page cache
        times = {}
        for label, fn in [
            ("scan_off", lambda: scan(stores["off"])),
            ("scan_cold", cold(lambda: scan(stores["on"]))),
            ("scan_warm", lambda: scan(stores["on"])),
            ("top_k_off", lambda: Attributor(stores["off"], None, None).top_k(qf, k=10)),
            ("top_k_cold", cold(lambda: Attributor(stores["on"], None, None).top_k(qf, k=10))),
            ("top_k_warm", lambda: Attributor(stores["on"], None, None).top_k(qf, k=10)),
        ]:
            times[label], _ = median_time(fn, args.repeats)
        paths = sorted(store.root.rglob("*.npy"))
        hash_s, _ = median_time(lambda: [file_sha256(p) for p in paths], args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    command = "python benchmarks/store_verify_cost.py " + " ".join(sys.argv[1:])
    results = {
        "command": command.strip(),
        "machine": machine(),
        "n": args.n, "dim": args.dim, "dtype": "float16", "shard_rows": args.shard, "store_bytes": nbytes,
        "repeats": args.repeats,
        "seconds": {k: round(v, 4) for k, v in times.items()},
        "sha256_MB_per_s": round(nbytes / hash_s / 1e6, 1),
        "cold_over_off": {"scan": round(times["scan_cold"] / times["scan_off"], 2), "top_k": round(times["top_k_cold"] / times["top_k_off"], 2)},
        "warm_over_off": {"scan": round(times["scan_warm"] / times["scan_off"], 2), "top_k": round(times["top_k_warm"] / times["top_k_off"], 2)},
        "when": time.strftime("%Y-%m-%d %H:%M"),
    }
    out = ROOT / "benchmarks" / "results" / "store_verify_cost.json"
    out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    return results


if __name__ == "__main__":
    print(json.dumps(main()))
