"""``gradtrace index STORE``: build (or rebuild) the approximate index of a store."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ..cli_common import console, json_option, output_dir, positive_option, print_json, progress_option, run_or_exit, table


def register(app: typer.Typer) -> None:
    @app.command("index")
    def index_cmd(
        store: Path = typer.Argument(..., help="a complete store made by 'gradtrace featurize'"),
        kind: str = typer.Option("auto", help="flat (exact search) | ivf | ivfsq | ivfpq | hnsw | auto (flat below 100,000 examples, else ivfsq)"),
        variant: str = typer.Option("raw", help="the score the index serves: raw | cosine (one index per variant)"),
        nlist: Optional[int] = typer.Option(None, help="ivf, ivfsq, ivfpq: inverted lists per norm bucket (default ~sqrt(rows), x4 with --quantizer hnsw; a power of two)"),
        nprobe: Optional[int] = typer.Option(None, help="ivf, ivfsq, ivfpq: lists searched per query (default nlist/16, at least 8)"),
        pq_m: Optional[int] = typer.Option(None, help="ivfpq: bytes per vector (sub-quantizers; default one per 8 numbers)"),
        sq_type: str = typer.Option("8bit", help="ivfsq: code of each number: 8bit (one byte) | fp16 (two)"),
        quantizer: str = typer.Option("flat", help="ivf, ivfsq, ivfpq: coarse quantizer: flat (exact search of the lists) | hnsw (a graph; for many lists)"),
        metric: str = typer.Option("ip", help="ivf, ivfsq, ivfpq: ip (lists of directions, searched by inner product) | l2 (vectors augmented so that L2 ranks as the inner product)"),
        exact_share: Optional[float] = typer.Option(
            None, help="share of the rows (largest vector norms) searched exactly; default raw 1/32, cosine 0",
        ),
        hnsw_m: int = typer.Option(32, help="hnsw: links per node"),
        ef_construction: int = typer.Option(80, help="hnsw: search width while building"),
        ef_search: int = typer.Option(256, help="hnsw: search width per query (at least the number of candidates)"),
        train_sample: Optional[int] = typer.Option(None, help="ivf, ivfsq, ivfpq: rows sampled to train on (default 40 x nlist, at least 16,384)"),
        norm_buckets: Optional[int] = typer.Option(
            None, help="ivf, ivfsq, ivfpq, hnsw: the rows outside the exact share split by vector norm into this many buckets, "
            "each indexed alone (default: raw 2 + log2(rows / 262,144), at least 1; cosine 1)",
        ),
        seed: int = typer.Option(0, help="seed of the training sample and of k-means"),
        out: Optional[Path] = typer.Option(None, help="index folder (default: index/ inside the store)"),
        verify: bool = typer.Option(True, help="check each shard read against its recorded checksum (--no-verify: faster, trusts the files)"),
        progress: bool = progress_option(),
        as_json: bool = json_option(),
    ) -> None:
        """Build the approximate index used by `query --index` (rerun to rebuild it after the store changed)."""

        def go() -> None:
            from ..store import GradientStore
            from .store_index import IndexParams, build_index
            from .vectors import check_variant

            check_variant(variant)
            for value, name in ((nlist, "--nlist"), (nprobe, "--nprobe"), (pq_m, "--pq-m"), (train_sample, "--train-sample"),
                                (hnsw_m, "--hnsw-m"), (ef_construction, "--ef-construction"), (ef_search, "--ef-search"),
                                (norm_buckets, "--norm-buckets")):
                positive_option(value, name)
            if out is not None:
                output_dir(out, "--out")
            st = GradientStore.open(store, verify=verify)
            params = IndexParams(
                kind=kind, nlist=nlist, nprobe=nprobe, pq_m=pq_m, sq_type=sq_type, quantizer=quantizer, metric=metric, exact_share=exact_share, hnsw_m=hnsw_m, ef_construction=ef_construction,
                ef_search=ef_search, train_sample=train_sample, norm_buckets=norm_buckets, seed=seed,
            )
            built = build_index(st, variant, params, folder=out, progress=progress)
            _summary(built, as_json)

        run_or_exit(go)


def _summary(built: Any, as_json: bool) -> None:
    meta = built.meta
    files = [str(built.path.parent / e["file"]["name"]) for e in meta["buckets"]]
    buckets = [{k: v for k, v in e.items() if k != "file"} for e in meta["buckets"]]
    summary = {
        "index": str(built.path), "files": files, "size_bytes": sum(e["file"]["size"] for e in meta["buckets"]),
        "variant": meta["variant"], "settings": meta["settings"], "buckets": buckets, "examples": meta["store"]["examples"],
        "seconds": meta["built"]["seconds"],
    }
    if as_json:
        print_json(summary)
        return
    settings = ", ".join(f"{k}={v}" for k, v in meta["settings"].items() if v is not None)
    per_bucket = "; ".join(
        f"{b['kind']} {b['rows']:,} rows" + (f" nlist={b['nlist']} nprobe={b['nprobe']}" if "nlist" in b else "") for b in buckets
    )
    console.print(table(f"index {built.path}", ["field", "value"], [
        ("variant", meta["variant"]), ("examples", f"{summary['examples']:,}"), ("settings", settings),
        ("norm buckets", per_bucket), ("files", f"{len(files)} in {built.path.parent}"),
        ("size on disk", f"{summary['size_bytes'] / 2**20:.1f} MiB"), ("build time", f"{summary['seconds']:.1f} s"),
    ]))
    where = "" if built.path.parent == Path(meta["store"]["root"]) / "index" else f" --index-dir {built.path.parent}"
    console.print(f"use it with: gradtrace query {meta['store']['root']} ... --index{where} --variant {meta['variant']}")
