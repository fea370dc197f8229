"""Linear datamodeling score (LDS, Park et al. 2023, TRAK).

Retrain on ``m`` random subsets of the training set (each holding a fraction
``alpha``), measure each query's behaviour on every retrained model, and
compare with the attribution's linear prediction: for subset ``S``, the
predicted behaviour is ``-s * sum_{i in S} score(q, i)`` where ``s = +1`` for
behaviours that count when they decrease (losses) and ``-1`` otherwise, so
that a higher prediction means a higher behaviour value. LDS is the Spearman
rank correlation between predicted and actual values over the subsets,
averaged over queries.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..configbase import ConfigBase, int_at_least
from ..errors import InputError
from ..progress import progress_bar
from .retrain import TrainFn

#: ``evaluate(model) -> Tensor[n_query]``: the behaviour of each query.
Evaluate = Callable[[nn.Module], Tensor]


@dataclasses.dataclass(frozen=True)
class LDSConfig(ConfigBase):
    """``n_subsets`` random subsets, each ``alpha`` of the training set, drawn
    with ``seed``; subset ``j`` is trained with training seed ``train_seed + j``
    when ``vary_train_seed``, else with ``train_seed`` every time."""

    n_subsets: int = 50
    alpha: float = 0.5
    seed: int = 0
    train_seed: int = 0
    vary_train_seed: bool = False

    _checks = {"n_subsets": int_at_least(3, "a rank correlation needs several points")}

    def _check(self) -> None:
        if not 0 < self.alpha < 1:
            raise InputError(f"alpha must be in (0, 1); got {self.alpha!r}")


@dataclasses.dataclass(frozen=True)
class SubsetOutputs:
    """Masks ``[n_subsets, n_train]`` (True = kept) and the measured behaviour
    ``[n_subsets, n_query]`` of the model retrained on each subset."""

    config: LDSConfig
    masks: np.ndarray
    outputs: np.ndarray


def draw_subsets(n_train: int, config: LDSConfig) -> np.ndarray:
    """Boolean masks ``[n_subsets, n_train]``, each with ``round(alpha * n)`` True."""
    if n_train < 2:
        raise InputError(f"n_train must be at least 2; got {n_train!r}")
    rng = np.random.default_rng(config.seed)
    size = max(1, int(round(config.alpha * n_train)))
    masks = np.zeros((config.n_subsets, n_train), dtype=bool)
    for j in range(config.n_subsets):
        masks[j, rng.choice(n_train, size=size, replace=False)] = True
    return masks


def retrain_subsets(
    train_fn: TrainFn, evaluate: Evaluate, n_train: int, config: LDSConfig = LDSConfig(), *, progress: bool = False,
) -> SubsetOutputs:
    """Retrain on each subset and measure every query's behaviour."""
    masks = draw_subsets(n_train, config)
    outputs = []
    with progress_bar("LDS retrain", config.n_subsets, progress) as bar:
        for j, mask in enumerate(masks):
            seed = config.train_seed + j if config.vary_train_seed else config.train_seed
            model = train_fn(np.nonzero(mask)[0], seed)
            with torch.no_grad():
                values = evaluate(model)
            outputs.append(np.asarray(values.detach().cpu().to(torch.float64) if isinstance(values, Tensor) else values, dtype=np.float64))
            bar.advance(1)
    out = np.stack(outputs)
    if out.ndim != 2:
        raise InputError(f"evaluate must return one value per query (1-D); got shape {out.shape[1:]}")
    return SubsetOutputs(config, masks, out)


def lds(scores: np.ndarray, subsets: SubsetOutputs, direction: str = "decrease") -> float:
    """Mean over queries of the Spearman correlation between predicted and
    actual behaviour across subsets. ``scores``: ``[n_query, n_train]``."""
    return float(np.nanmean(lds_per_query(scores, subsets, direction)))


def lds_per_query(scores: np.ndarray, subsets: SubsetOutputs, direction: str = "decrease") -> np.ndarray:
    if direction not in ("increase", "decrease"):
        raise InputError(f"direction must be 'increase' or 'decrease'; got {direction!r}")
    scores = np.asarray(scores, dtype=np.float64)
    n_train = subsets.masks.shape[1]
    if scores.ndim != 2 or scores.shape != (subsets.outputs.shape[1], n_train):
        raise InputError(f"scores must have shape (n_query={subsets.outputs.shape[1]}, n_train={n_train}); got {scores.shape}")
    sign = 1.0 if direction == "decrease" else -1.0
    predicted = -sign * (subsets.masks.astype(np.float64) @ scores.T)  # [n_sub, n_query]
    return np.array([spearman(predicted[:, q], subsets.outputs[:, q]) for q in range(scores.shape[0])])


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either is constant."""
    rx, ry = _rank(np.asarray(x, dtype=np.float64)), _rank(np.asarray(y, dtype=np.float64))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt((rx**2).sum() * (ry**2).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def _rank(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v), dtype=np.float64)
    ranks[order] = np.arange(len(v), dtype=np.float64)
    _, inverse = np.unique(v, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    counts = np.bincount(inverse)
    return (sums / counts)[inverse]
