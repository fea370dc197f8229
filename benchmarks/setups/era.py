"""Benchmark runners of ERA against the unlearning baselines (``benchmarks/act.py``).

The specs and compare settings live with the built-in unlearning specs in
:mod:`gradtrace.demos.era_digits` and :mod:`gradtrace.demos.era_lm`; this
module runs them over seeds and label fractions and summarises the results.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from gradtrace.demos.era_digits import digits_compare_config, digits_forget_spec
from gradtrace.demos.era_lm import lm_compare_config, lm_forget_spec
from gradtrace.unlearn.compare import compare_methods


def run_era_digits(
    label_fractions: tuple[float, ...] = (1.0, 0.5), seeds: tuple[int, ...] = (0, 1, 2), progress: bool = False,
    cache_dir: str | None = None,
) -> dict[str, Any]:
    """Mean over seeds of forget, retain and relearn_k* per method, per label
    fraction; ``cache_dir`` keeps finished methods so a killed run resumes."""
    out: dict[str, Any] = {}
    for frac in label_fractions:
        runs = [compare_methods(digits_forget_spec(frac, s), digits_compare_config(s), progress=progress, cache_dir=cache_dir)
                for s in seeds]
        out[f"labels_{int(round(frac * 100))}"] = summarise(runs)
    out["config"] = digits_compare_config(0).to_dict()
    out["train_config"] = dataclasses.asdict(digits_forget_spec(1.0, 0).train_config)
    out["seeds"] = list(seeds)
    out["forget_metric"] = "loss"
    return out


def summarise(runs: list[Any]) -> dict[str, Any]:
    """Per method: the mean over runs of each scalar, the per-seed values,
    and the mean relearning curve of the best learning rate at k=16."""
    methods = list(runs[0].results)
    table: dict[str, Any] = {}
    for m in methods:
        dicts = [r.results[m].to_dict() for r in runs]
        keys = [k for k, v in dicts[0].items() if isinstance(v, float)]
        row = {k: float(np.mean([d[k] for d in dicts])) for k in keys}
        row["per_seed"] = {k: [d[k] for d in dicts] for k in keys}
        row["curves"] = {k: np.mean([d["relearn"]["curves"][k][repr(d["relearn"]["best_lr"][k])] for d in dicts], axis=0).tolist()
                         for k in dicts[0]["relearn"]["curves"]}
        row["steps"] = dicts[0]["relearn"]["steps"]
        for name in dicts[0].get("extra", {}):
            row[name] = float(np.mean([d["extra"][name] for d in dicts]))
        if "selection" in dicts[0]:
            row["selected"] = [{k: d["selection"]["selected"][k] for k in ("lr", "steps", "admissible")} for d in dicts]
            if "after_ablation" in dicts[0]["selection"]:
                row["after_ablation"] = {k: float(np.mean([d["selection"]["after_ablation"][k] for d in dicts])) for k in ("forget", "retain")}
                row["base_retain_validation"] = float(np.mean([d["selection"]["base_retain"] for d in dicts]))
        table[m] = row
    return table


def run_era_lm(
    label_fractions: tuple[float, ...] = (1.0, 0.5), seeds: tuple[int, ...] = (0,), progress: bool = False,
    cache_dir: str | None = None,
) -> dict[str, Any]:
    """Mean over seeds per method, per label fraction; ``cache_dir`` keeps
    finished methods so a killed run resumes."""
    out: dict[str, Any] = {}
    for frac in label_fractions:
        runs = [compare_methods(lm_forget_spec(frac, s), lm_compare_config(s), progress=progress, cache_dir=cache_dir) for s in seeds]
        out[f"labels_{int(round(frac * 100))}"] = summarise(runs)
    out["config"] = lm_compare_config(0).to_dict()
    out["train_config"] = lm_forget_spec(1.0, 0).train_config.to_dict()
    out["seeds"] = list(seeds)
    out["forget_metric"] = "loss"
    return out
