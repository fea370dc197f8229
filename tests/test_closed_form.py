"""Hand-computed tier: TracIn on linear regression equals its closed form.

For f(x) = w.x + b and loss 0.5 (f(x) - y)^2 the per-example gradient with
respect to (w, b) is (w.x + b - y) [x, 1], so with checkpoints c of learning
rate lr_c:  score(q, z) = sum_c lr_c <g_c(z), g_c(q)>  and
self-influence(z) = sum_c lr_c |g_c(z)|^2.  Everything below is computed
with numpy from the raw checkpoint tensors, not with autograd.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import gradtrace as gt

D = 4
LRS = [0.5, 0.1, 0.02]


@dataclasses.dataclass(frozen=True)
class SquaredErrorTask:
    def per_example_loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        return 0.5 * (model(x).squeeze(-1) - y) ** 2


def _setup(tmp_path):
    gen = torch.Generator().manual_seed(3)
    ckpts = []
    weights = []
    for c, lr in enumerate(LRS):
        w = torch.randn(1, D, generator=gen, dtype=torch.float64)
        b = torch.randn(1, generator=gen, dtype=torch.float64)
        path = tmp_path / f"step_{c}.pt"
        torch.save({"weight": w, "bias": b}, path)
        ckpts.append((str(path), lr))
        weights.append((w[0].numpy(), float(b[0])))
    x_train = torch.randn(7, D, generator=gen, dtype=torch.float64)
    y_train = torch.randn(7, generator=gen, dtype=torch.float64)
    x_q = torch.randn(3, D, generator=gen, dtype=torch.float64)
    y_q = torch.randn(3, generator=gen, dtype=torch.float64)
    model = nn.Linear(D, 1).double()
    return model, ckpts, weights, (x_train, y_train), (x_q, y_q)


def _closed_form(weights, train, queries):
    xt, yt = (t.numpy() for t in train)
    xq, yq = (t.numpy() for t in queries)
    scores = np.zeros((len(xq), len(xt)))
    selfinf = np.zeros(len(xt))
    for (w, b), lr in zip(weights, LRS):
        gt_ = (xt @ w + b - yt)[:, None] * np.hstack([xt, np.ones((len(xt), 1))])
        gq = (xq @ w + b - yq)[:, None] * np.hstack([xq, np.ones((len(xq), 1))])
        scores += lr * gq @ gt_.T
        selfinf += lr * (gt_ ** 2).sum(1)
    return scores, selfinf


@pytest.mark.parametrize(
    "kind,method", [("none", "auto"), ("none", "vmap"), ("none", "loop"), ("factored", "auto")]
)
def test_linear_regression_matches_closed_form(tmp_path, kind, method):
    model, ckpts, weights, train, queries = _setup(tmp_path)
    config = gt.FeaturizeConfig(
        projection=gt.ProjectionConfig(kind), method=method, batch_size=3, shard_size=4, dtype="float64"
    )
    store = gt.featurize(model, SquaredErrorTask(), ckpts, train, tmp_path / "store", config, progress=False)
    attributor = gt.Attributor(store, model, SquaredErrorTask())
    expected_scores, expected_self = _closed_form(weights, train, queries)

    np.testing.assert_allclose(attributor.score(queries), expected_scores, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(attributor.self_influence(), expected_self, rtol=1e-10, atol=1e-12)
    # The closed form is not trivially small or degenerate.
    assert np.abs(expected_scores).max() > 0.1
    assert (np.sign(expected_scores) > 0).any() and (np.sign(expected_scores) < 0).any()


def test_closed_form_single_checkpoint_by_hand(tmp_path):
    """One checkpoint, one training example, one query, numbers worked by hand:
    w = (1, 2), b = 0.5, lr = 0.1.
    z: x = (1, 0), y = 1   -> residual 1 + 0.5 - 1 = 0.5,  g(z) = 0.5 (1, 0, 1) = (0.5, 0, 0.5)
    q: x = (0, 1), y = 0   -> residual 2 + 0.5 - 0 = 2.5,  g(q) = 2.5 (0, 1, 1) = (0, 2.5, 2.5)
    score = 0.1 * (0 + 0 + 1.25) = 0.125;  self-influence = 0.1 * (0.25 + 0.25) = 0.05
    """
    path = tmp_path / "c.pt"
    torch.save({"weight": torch.tensor([[1.0, 2.0]], dtype=torch.float64),
                "bias": torch.tensor([0.5], dtype=torch.float64)}, path)
    model = nn.Linear(2, 1).double()
    train = (torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64))
    query = (torch.tensor([[0.0, 1.0]], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64))
    config = gt.FeaturizeConfig(dtype="float64")
    store = gt.featurize(model, SquaredErrorTask(), [(path, 0.1)], train, tmp_path / "s", config, progress=False)
    attributor = gt.Attributor(store, model, SquaredErrorTask())
    np.testing.assert_allclose(attributor.score(query), [[0.125]], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(attributor.self_influence(), [0.05], rtol=1e-12, atol=1e-15)
