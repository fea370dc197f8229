"""ERA vs unlearning baselines on digits: forget classes 5-9.

The training set is scikit-learn's digits (no flipped labels); the forget
set is every training image of classes 5-9, of which ``label_fraction`` is
labelled (ERA routes, and filtering removes, only the labelled ones). The
held-out test images of classes 5-9 are split in two halves: the relearning
pool (the attacker's data) and the forget evaluation set. Metrics are
accuracies: forget (classes 5-9, lower is better), retain (classes 0-4).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from ..task import ClassificationTask
from ..unlearn.compare import CompareConfig, UnlearnSpec, compare_methods
from ..unlearn.methods import UnlearnConfig
from ..unlearn.relearn import RelearnConfig
from ..unlearn.routing import RoutingConfig
from ..unlearn.train import TrainConfig
from .digits import DigitsConfig, accuracy, load_digits_data, make_mlp

FORGET_CLASSES = (5, 6, 7, 8, 9)


def digits_forget_spec(label_fraction: float = 1.0, seed: int = 0, steps: int = 1500) -> UnlearnSpec:
    """The digits forget-classes task as an :class:`UnlearnSpec`."""
    d = load_digits_data(DigitsConfig(flip_fraction=0.0))
    x, y = d.x_train, d.y_train
    forget = torch.isin(y, torch.tensor(FORGET_CLASSES))
    rng = np.random.default_rng(seed)
    f_idx = np.nonzero(forget.numpy())[0]
    labelled = rng.choice(f_idx, int(round(label_fraction * len(f_idx))), replace=False)
    weights = torch.zeros(len(y))
    weights[torch.as_tensor(labelled)] = 1.0
    test_forget = torch.nonzero(torch.isin(d.y_test, torch.tensor(FORGET_CLASSES))).flatten()
    perm = torch.randperm(len(test_forget), generator=torch.Generator().manual_seed(0))
    pool, evaluation = test_forget[perm[: len(perm) // 2]], test_forget[perm[len(perm) // 2 :]]
    retain_test = torch.nonzero(~torch.isin(d.y_test, torch.tensor(FORGET_CLASSES))).flatten()
    xf, yf = d.x_test[evaluation], d.y_test[evaluation]
    xr, yr = d.x_test[retain_test], d.y_test[retain_test]
    return UnlearnSpec(
        init=lambda s: make_mlp(128, s), task=ClassificationTask(), train_data=(x, y), forget_weights=weights,
        relearn_pool=(d.x_test[pool], d.y_test[pool]),
        forget_metric=lambda m: accuracy(m, xf, yf), retain_metric=lambda m: accuracy(m, xr, yr),
        train_config=TrainConfig(steps=steps, lr=0.1, batch_size=32, optimizer="sgd", seed=seed),
        attacker_maximises=True, name="digits MLP (forget classes 5-9)",
    )


def digits_compare_config(seed: int = 0) -> CompareConfig:
    """The settings of the benchmark (fixed before the final runs; see docs/unlearn.md)."""
    return CompareConfig(
        unlearn={
            "ga": UnlearnConfig("ga", lr=1e-3, steps=20, batch_size=32, seed=seed),
            "graddiff": UnlearnConfig("graddiff", lr=1e-3, steps=100, batch_size=32, seed=seed),
            "npo": UnlearnConfig("npo", lr=1e-3, steps=100, batch_size=32, seed=seed),
            "rmu": UnlearnConfig("rmu", lr=1e-3, steps=100, batch_size=32, seed=seed, rmu_layer="2",
                                 rmu_params=("0.*", "2.*"), rmu_steering=100.0, rmu_alpha=10.0),
        },
        routing=RoutingConfig(layers=("0:2", "2:4"), expand=64, forget_original=-1.0, l1_coef=1e-3, seed=seed),
        coherence=TrainConfig(steps=100, lr=1e-3, batch_size=32, optimizer="adam", seed=seed),
        relearn=RelearnConfig(ks=(4, 16, 64), lrs=(1e-3, 3e-3, 1e-2), steps=50, eval_every=10, batch_size=16, seed=seed),
        seed=seed,
    )


def run_era_digits(label_fractions: tuple[float, ...] = (1.0, 0.5), seeds: tuple[int, ...] = (0, 1, 2), progress: bool = False) -> dict[str, Any]:
    """Mean over seeds of forget, retain and relearn_k* per method, per label fraction."""
    out: dict[str, Any] = {}
    for frac in label_fractions:
        runs = [compare_methods(digits_forget_spec(frac, s), digits_compare_config(s), progress=progress) for s in seeds]
        out[f"labels_{int(round(frac * 100))}"] = summarise(runs)
    out["config"] = digits_compare_config(0).to_dict()
    out["train_config"] = dataclasses.asdict(digits_forget_spec(1.0, 0).train_config)
    out["seeds"] = list(seeds)
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
        table[m] = row
    return table
