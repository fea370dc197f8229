"""Removal-and-retrain, LDS and the relearning attack against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from gradtrace.errors import InputError
from gradtrace.task import ClassificationTask
from gradtrace.unlearn.lds import LDSConfig, SubsetOutputs, draw_subsets, lds, retrain_subsets, spearman
from gradtrace.unlearn.relearn import RelearnConfig, relearn
from gradtrace.unlearn.retrain import RemovalConfig, RemovalExperiment, parameters_equal
from gradtrace.unlearn.train import TrainConfig, train

Y = np.array([0.1, 5.0, -1.0, 3.0, 0.5, 4.0, 2.0, -0.3, 1.5, 0.0])


class MeanModel(nn.Module):
    """A one-parameter model: the mean of y over the training indices plus a seeded jitter."""

    def __init__(self, value: float):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(value, dtype=torch.float64))


def mean_train_fn(indices: np.ndarray, seed: int) -> nn.Module:
    jitter = float(np.random.default_rng(seed).normal() * 1e-3)
    return MeanModel(float(Y[indices].mean()) + jitter)


def measure(model: nn.Module) -> float:
    return float(model.value.detach())


def test_removal_matches_brute_force():
    exp = RemovalExperiment(mean_train_fn, measure, len(Y), RemovalConfig(k=3, seeds=(0, 1), random_seed=5),
                            extra_measures={"double": lambda m: 2 * measure(m)})
    res = exp.run(Y)  # score = y: the top 3 raise the mean the most
    top = [1, 3, 5]
    assert res.removed_topk == top
    rng = np.random.default_rng(5)
    for s, seed in enumerate((0, 1)):
        jitter = np.random.default_rng(seed).normal() * 1e-3
        assert res.base[s] == pytest.approx(Y.mean() + jitter, abs=1e-12)
        assert res.after_topk[s] == pytest.approx(np.delete(Y, top).mean() + jitter, abs=1e-12)
        rand = rng.choice(len(Y), size=3, replace=False)
        assert res.after_random[s] == pytest.approx(np.delete(Y, rand).mean() + jitter, abs=1e-12)
    assert res.summary()["after_topk"] < res.summary()["base"]
    assert res.extras["after_topk"]["double"] == [2 * v for v in res.after_topk]
    assert res.summary()["double_base"] == pytest.approx(2 * res.summary()["base"])
    assert RemovalConfig.from_dict(res.config.to_dict()) == res.config


def test_iterative_removal_re_attributes():
    calls = []

    def attribute(model: nn.Module, kept: np.ndarray) -> np.ndarray:
        calls.append(kept.copy())
        return -np.abs(Y[kept] - 2.0)  # the second round prefers values near 2

    exp = RemovalExperiment(mean_train_fn, measure, len(Y), RemovalConfig(k=4, seeds=(0,), iterative_rounds=2), attribute=attribute)
    res = exp.run(Y)
    # round 1 removes the two largest (5.0, 4.0); round 2 the two nearest 2.0 among the rest (2.0, 1.5)
    kept = np.setdiff1d(np.arange(len(Y)), [1, 5, 6, 8])
    jitter = np.random.default_rng(0).normal() * 1e-3
    assert res.after_iterative[0] == pytest.approx(Y[kept].mean() + jitter, abs=1e-12)
    assert len(calls) == 1 and list(calls[0]) == [0, 2, 3, 4, 6, 7, 8, 9]


def digits_like(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen)


def test_retraining_is_deterministic_under_a_seed():
    x, y = digits_like()

    def train_fn(indices: np.ndarray, seed: int) -> nn.Module:
        gen = torch.Generator().manual_seed(seed)
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.3)
        idx = torch.as_tensor(indices)
        train(model, ClassificationTask(), (x[idx], y[idx]), TrainConfig(steps=15, lr=0.05, batch_size=8, seed=seed))
        return model

    keep = np.arange(5, 40)
    assert parameters_equal(train_fn(keep, 3), train_fn(keep, 3))
    assert not parameters_equal(train_fn(keep, 3), train_fn(keep, 4))
    assert not parameters_equal(train_fn(keep, 3), train_fn(np.arange(6, 40), 3))


def test_bad_removal_input():
    with pytest.raises(InputError, match="k must be smaller than n_train"):
        RemovalExperiment(mean_train_fn, measure, 3, RemovalConfig(k=3))
    with pytest.raises(InputError, match="scores must have one value per training example"):
        RemovalExperiment(mean_train_fn, measure, len(Y), RemovalConfig(k=2)).run(Y[:5])
    with pytest.raises(InputError, match="needs attribute"):
        RemovalExperiment(mean_train_fn, measure, len(Y), RemovalConfig(k=2, iterative_rounds=2))
    with pytest.raises(InputError, match="seeds must be a non-empty"):
        RemovalConfig(seeds=())


def test_spearman_equals_scipy():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=30), rng.normal(size=30)
    y[:5] = y[0]  # ties
    assert spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    assert np.isnan(spearman(x, np.ones(30)))


def test_lds_is_one_for_exact_linear_scores_and_signs_follow_direction():
    n, q = 12, 3
    rng = np.random.default_rng(1)
    w = rng.normal(size=(q, n))
    cfg = LDSConfig(n_subsets=20, alpha=0.5, seed=2)
    masks = draw_subsets(n, cfg)
    assert (masks.sum(1) == 6).all()
    # a loss: training on i lowers the loss by w[q, i] (score w = proponent strength)
    outputs = 10.0 - masks.astype(float) @ w.T
    sub = SubsetOutputs(cfg, masks, outputs)
    assert lds(w, sub, "decrease") == pytest.approx(1.0)
    assert lds(w, sub, "increase") == pytest.approx(-1.0)
    assert lds(rng.normal(size=(q, n)), sub) < 0.9
    with pytest.raises(InputError, match="scores must have shape"):
        lds(w[:, :5], sub)


def test_retrain_subsets_measures_each_subset():
    cfg = LDSConfig(n_subsets=5, alpha=0.5, seed=0, train_seed=7)
    out = retrain_subsets(mean_train_fn, lambda m: torch.stack([m.value, 2 * m.value]), len(Y), cfg)
    jitter = np.random.default_rng(7).normal() * 1e-3
    for j in range(5):
        expected = Y[out.masks[j]].mean() + jitter
        np.testing.assert_allclose(out.outputs[j], [expected, 2 * expected], atol=1e-12)
    with pytest.raises(InputError, match="n_subsets must be an integer >= 3"):
        LDSConfig(n_subsets=2)


def test_relearn_sweeps_and_reports_the_attackers_best():
    x, y = digits_like(30, seed=3)
    model = nn.Sequential(nn.Linear(6, 3)).double()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.zero_()
    task = ClassificationTask()
    acc = lambda m: float((m(x).argmax(1) == y).double().mean())  # noqa: E731
    cfg = RelearnConfig(ks=(4, 16), lrs=(1e-3, 1e-1), steps=20, eval_every=5, batch_size=8)
    res = relearn(model, task, (x, y), acc, cfg)
    assert res.steps == [0, 5, 10, 15, 20]
    for k in (4, 16):
        for lr in (1e-3, 1e-1):
            assert len(res.curves[k][lr]) == 5 and res.curves[k][lr][0] == res.before
        assert res.best[k] == max(max(c[1:]) for c in res.curves[k].values())
        assert res.curves[k][res.best_lr[k]][res.steps.index(res.best_step[k])] == res.best[k]
    assert res.best[16] > res.before  # fine-tuning on the data brings accuracy up
    again = relearn(model, task, (x, y), acc, cfg)
    assert again.curves == res.curves
    assert torch.count_nonzero(model[0].weight) == 0  # the attack works on copies
    low = relearn(model, task, (x, y), acc, RelearnConfig(ks=(4,), lrs=(1e-3, 1e-1), steps=5, eval_every=5, attacker_maximises=False))
    assert low.best[4] == min(min(c[1:]) for c in low.curves[4].values())
    with pytest.raises(InputError, match="needs max\\(ks\\)=64"):
        relearn(model, task, (x, y), acc, RelearnConfig(ks=(64,)))
