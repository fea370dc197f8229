"""Small synthetic gradient stores for the store hardening tests: written
through the store API with deterministic rows, no model needed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from gradtrace.store import GradientStore, open_for_writing

N, DIM, SHARD = 10, 6, 4


def write_checkpoint_files(directory: Path, n: int = 2) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = directory / f"ckpt_{i}.pt"
        path.write_bytes(bytes([i]) * 64)
        paths.append(str(path))
    return paths


def settings(ckpt_paths: list[str], seed: int = 0, dtype: str = "float32", shard: int = SHARD, dim: int = DIM) -> dict[str, Any]:
    return {
        "config": {"params": "all", "projection": {"kind": "dense", "dim": dim, "seed": seed, "distribution": "rademacher"},
                   "method": "auto", "batch_size": 2, "shard_size": shard, "dtype": dtype},
        "model": {"fingerprint": "synthetic", "param_names": ["w"], "grad_dim": 40, "method": "hooks", "factor_layout": []},
        "task": "synthetic",
        "checkpoints": [{"path": p, "lr": 0.1 * (i + 1), "step": i} for i, p in enumerate(ckpt_paths)],
        "feature_dim": dim,
    }


def shard_arrays(store: GradientStore, c: int, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows of a shard: a function of the settings' seed and the position only."""
    seed = store.manifest["config"]["projection"]["seed"]
    gen = np.random.default_rng([seed, c, a, b])
    rows = gen.standard_normal((b - a, store.feature_dim))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    norms = np.stack([np.full(b - a, 1.0 + c), np.arange(a, b, dtype=np.float64) + 10.0 * c], axis=1)
    return rows.astype(store.config.dtype), norms


def segment_for(n: int = N, fingerprint: str = "data-0"):
    """A ``prepare`` for open_for_writing: find the data's segment or add it."""

    def prepare(store: GradientStore):
        for seg in store.segments:
            if seg.fingerprint == fingerprint:
                return seg
        start = store.n_examples
        return store.add_segment(fingerprint, [f"x{start + i}" for i in range(n)], None)

    return prepare


def fill(store: GradientStore, segment=None) -> None:
    for c, a, b in store.missing_shards(segment):
        store.write_shard(c, a, b, *shard_arrays(store, c, a, b))


def make_store(root: Path, ckpt_paths: list[str], **kwargs: Any) -> GradientStore:
    with open_for_writing(root, settings(ckpt_paths, **kwargs), prepare=segment_for()) as session:
        fill(session.store, session.prepared)
    return GradientStore.open(root)


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
