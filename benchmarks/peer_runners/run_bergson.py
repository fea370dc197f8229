"""Bergson's ``build`` on a pre-tokenized dataset, timed; run in Bergson's own
virtualenv by ``benchmarks/scale.py --part bergson`` (never imports gradtrace).

    python run_bergson.py build SPEC.json      # one timed build; writes SPEC["result"]
    python run_bergson.py dump SPEC.json       # projection matrices and stored rows for the check

``SPEC`` (JSON): ``model`` (a Hugging Face folder), ``data`` (JSONL of
``input_ids``/``labels``: the exact tokens and labels gradtrace computes on),
``run`` (the index folder to write), ``projection_dim`` (per side, 16:
16 x 16 per module), ``token_batch_size``, ``threads``, ``result``; for
``dump`` also ``modules`` (names inside the base model, e.g.
``layers.0.self_attn.q_proj``), ``rows`` (example indices) and ``out`` (an
``.npz``).

Timing: ``collect_seconds`` is ``collect_gradients`` alone (the forward and
backward passes, projection and writing of every batch: what gradtrace's
featurize call does), ``build_seconds`` the whole ``build`` call (with
loading the model and the dataset).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def _configs(spec: dict):
    from bergson.config.config import DataConfig, IndexConfig, PreprocessConfig

    index = IndexConfig(
        run_path=spec["run"], model=spec["model"], precision="fp32", projection_dim=spec["projection_dim"],
        projection_type="rademacher", projection_scale="jl", token_batch_size=spec["token_batch_size"],
        data=DataConfig(dataset=spec["data"]), overwrite=True,
    )
    return index, PreprocessConfig()


def build(spec: dict) -> None:
    import torch

    torch.set_num_threads(spec["threads"])
    import bergson.build as bb

    timed: dict[str, float] = {}
    inner = bb.collect_gradients

    def collect(**kwargs):
        kwargs["batches"] = list(kwargs["batches"])
        timed["batches"] = len(kwargs["batches"])
        lengths = kwargs["data"]["length"][:]
        timed["padded_tokens"] = sum(max(lengths[i] for i in b) * len(b) for b in kwargs["batches"])
        start = time.perf_counter()
        inner(**kwargs)
        timed["collect_seconds"] = time.perf_counter() - start

    bb.collect_gradients = collect
    index, preprocess = _configs(spec)
    start = time.perf_counter()
    bb.build(index, preprocess)
    timed["build_seconds"] = time.perf_counter() - start
    timed["threads"] = torch.get_num_threads()
    timed["torch"] = torch.__version__
    import bergson

    timed["bergson"] = bergson.__version__
    Path(spec["result"]).write_text(json.dumps(timed))


def dump(spec: dict) -> None:
    """Bergson's projection matrices of ``modules`` and its stored rows of
    ``rows`` for them, with its per-example losses, for an exact check."""
    import numpy as np
    import torch
    from datasets import Dataset

    from bergson.collector.collector import create_module_projection_matrix
    from bergson.data import load_module_gradients

    grads = load_module_gradients(spec["run"])
    out = {}
    p = spec["projection_dim"]
    for name in spec["modules"]:
        shape = spec["shapes"][name]  # [out, in]
        for role, n in (("left", shape[0]), ("right", shape[1])):
            m = create_module_projection_matrix(name, role, p, n, torch.float32, torch.device("cpu"), "rademacher", "jl", None)
            out[f"{name}/{role}"] = m.numpy()
        out[f"{name}/rows"] = np.asarray(grads[name][spec["rows"]], dtype=np.float32)
    ds = Dataset.load_from_disk(str(Path(spec["run"]) / "data.hf"))
    out["loss"] = np.asarray(ds["loss"], dtype=np.float64)
    out["modules"] = np.array(list(grads.keys()))
    np.savez(spec["out"], **out)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    what, spec_path = sys.argv[1], sys.argv[2]
    spec = json.loads(Path(spec_path).read_text())
    {"build": build, "dump": dump}[what](spec)
