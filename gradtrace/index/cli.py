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
        kind: str = typer.Option("auto", help="flat (exact search) | ivf | ivfpq | hnsw | auto (flat below 100,000 examples, else ivfpq)"),
        variant: str = typer.Option("raw", help="the score the index serves: raw | cosine (one index per variant)"),
        nlist: Optional[int] = typer.Option(None, help="ivf, ivfpq: number of inverted lists (default ~sqrt(examples), a power of two)"),
        nprobe: Optional[int] = typer.Option(None, help="ivf, ivfpq: lists searched per query (default nlist/16, at least 8)"),
        pq_m: Optional[int] = typer.Option(None, help="ivfpq: bytes per vector (sub-quantizers; default one per 8 numbers)"),
        hnsw_m: int = typer.Option(32, help="hnsw: links per node"),
        ef_construction: int = typer.Option(80, help="hnsw: search width while building"),
        ef_search: int = typer.Option(256, help="hnsw: search width per query (at least the number of candidates)"),
        train_sample: Optional[int] = typer.Option(None, help="ivf, ivfpq: rows sampled to train on (default 40 x nlist, at least 16,384)"),
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
                                (hnsw_m, "--hnsw-m"), (ef_construction, "--ef-construction"), (ef_search, "--ef-search")):
                positive_option(value, name)
            if out is not None:
                output_dir(out, "--out")
            st = GradientStore.open(store, verify=verify)
            params = IndexParams(kind, nlist, nprobe, pq_m, hnsw_m, ef_construction, ef_search, train_sample, seed)
            built = build_index(st, variant, params, folder=out, progress=progress)
            _summary(built, as_json)

        run_or_exit(go)


def _summary(built: Any, as_json: bool) -> None:
    meta = built.meta
    file = built.path.parent / meta["file"]["name"]
    summary = {
        "index": str(built.path), "file": str(file), "size_bytes": meta["file"]["size"], "variant": meta["variant"],
        "settings": meta["settings"], "examples": meta["store"]["examples"], "seconds": meta["built"]["seconds"],
    }
    if as_json:
        print_json(summary)
        return
    settings = ", ".join(f"{k}={v}" for k, v in meta["settings"].items() if k not in ("max_squared_norm",))
    console.print(table(f"index {built.path}", ["field", "value"], [
        ("variant", meta["variant"]), ("examples", f"{summary['examples']:,}"), ("settings", settings),
        ("file", str(file)), ("size on disk", f"{summary['size_bytes'] / 2**20:.1f} MiB"),
        ("build time", f"{summary['seconds']:.1f} s"),
    ]))
    console.print(f"use it with: gradtrace query {meta['store']['root']} ... --index --variant {meta['variant']}")
