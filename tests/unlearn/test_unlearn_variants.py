"""Score variants (raw, cosine, Adam, projected Fisher) against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradtrace import FeaturizeConfig, ProjectionConfig, featurize
from gradtrace.errors import InputError
from gradtrace.grads.adam import adam_diagonal
from gradtrace.scoring.methods import fisher_inverse
from gradtrace.grads.projection import DenseProjector
from gradtrace.task import ClassificationTask, LogitMarginBehaviour
from gradtrace.unlearn.train import TrainConfig, train
from gradtrace.unlearn.variants import VariantConfig, score_variants


def mlp() -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
    return model


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen)


def grad_of(model: nn.Module, value: torch.Tensor) -> torch.Tensor:
    gs = torch.autograd.grad(value, list(model.parameters()))
    return torch.cat([g.reshape(-1) for g in gs])


def brute(model, refs, states, train_xy, query_xy, behaviour_sign, behaviour_fn, damping, proj=None):
    """Loops of single-example backward passes; formulas written out."""
    x, y = train_xy
    qx, qy = query_xy
    out = {v: np.zeros((len(qy), len(y))) for v in ("raw", "cosine", "adam", "fisher")}
    for ref, state in zip(refs, states):
        model.load_state_dict(torch.load(ref.path, weights_only=True))
        G = torch.stack([grad_of(model, F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])) for i in range(len(y))])
        Q = torch.stack([grad_of(model, behaviour_sign * behaviour_fn(model, (qx[j : j + 1], qy[j : j + 1]))[0]) for j in range(len(qy))])
        # Adam diagonal from the raw optimizer state
        diag = []
        for pid in range(len(list(model.parameters()))):
            s = state["state"][pid]
            t = float(s["step"])
            v_hat = s["exp_avg_sq"] / (1 - 0.999**t)
            diag.append((1 / (v_hat.sqrt() + 1e-8)).reshape(-1))
        D = torch.cat(diag)
        if proj is not None:
            Gp, Qp, DQp = G @ proj, Q @ proj, (Q * D) @ proj
        else:
            Gp, Qp, DQp = G, Q, Q * D
        k = Gp.shape[1]
        fisher = Gp.T @ Gp / len(y)
        lam = damping * torch.trace(fisher) / k
        inv = torch.linalg.inv(fisher + lam * torch.eye(k, dtype=torch.float64))
        for j in range(len(qy)):
            for i in range(len(y)):
                out["raw"][j, i] += ref.lr * float(Qp[j] @ Gp[i])
                out["cosine"][j, i] += ref.lr * float(Qp[j] @ Gp[i] / (Qp[j].norm() * Gp[i].norm()))
                out["adam"][j, i] += ref.lr * float(DQp[j] @ Gp[i])
                out["fisher"][j, i] += ref.lr * float(Qp[j] @ inv @ Gp[i])
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    model = mlp()
    xy = data(14, 1)
    rec = train(model, ClassificationTask(), xy, TrainConfig(steps=12, lr=0.02, batch_size=4, optimizer="adam", n_checkpoints=2), checkpoint_dir=root / "ckpt")
    states = [torch.load(p, weights_only=True) for p in rec.optimizer_states]
    return root, rec, states, xy


@pytest.mark.parametrize("projection", ["none", "dense"])
@pytest.mark.parametrize("behaviour", [None, LogitMarginBehaviour()])
def test_variants_equal_brute_force(run, projection, behaviour):
    root, rec, states, xy = run
    model = mlp()
    pc = ProjectionConfig("none") if projection == "none" else ProjectionConfig("dense", 16, seed=3)
    store = featurize(model, ClassificationTask(), rec.checkpoints, xy, root / f"store-{projection}-{behaviour is None}",
                      FeaturizeConfig(projection=pc, dtype="float64", batch_size=5, shard_size=6), progress=False)
    queries = data(3, 9)
    got = score_variants(store, model, ClassificationTask(), queries, behaviour, VariantConfig(fisher_damping=0.05), adam_states=states)
    proj = DenseProjector(43, pc).matrix(torch.float64) if projection == "dense" else None
    if behaviour is None:
        sign, fn = 1.0, ClassificationTask().per_example_loss
    else:
        sign, fn = -1.0, behaviour
    want = brute(mlp(), rec.checkpoints, states, xy, queries, sign, fn, 0.05, proj)
    assert set(got) == {"raw", "cosine", "adam", "fisher"}
    for v in got:
        np.testing.assert_allclose(got[v], want[v], rtol=1e-8, atol=1e-10, err_msg=v)


def test_adam_diagonal_and_fisher_inverse_formulas(run):
    _, rec, states, _ = run
    model = mlp()
    names = [n for n, _ in model.named_parameters()]
    d = adam_diagonal(states[0], model, names[2:3])
    s = states[0]["state"][2]
    torch.testing.assert_close(d, (1 / ((s["exp_avg_sq"] / (1 - 0.999 ** float(s["step"]))).sqrt() + 1e-8)).reshape(-1))
    g = torch.randn(7, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(fisher_inverse(g.T @ g, 7, 0.3) @ (g.T @ g / 7 + 0.3 * torch.eye(3, dtype=torch.float64)), torch.eye(3, dtype=torch.float64))
    with pytest.raises(InputError, match="lambda must be positive"):
        fisher_inverse(g.T @ g, 7, 0.0)
    with pytest.raises(InputError, match="exp_avg_sq"):
        adam_diagonal({"state": {}, "param_groups": states[0]["param_groups"]}, model, names)
    with pytest.raises(InputError, match="covers 4 parameters but the model has 2"):
        adam_diagonal(states[0], nn.Linear(2, 2), ["weight"])


def test_variant_input_errors(run, tmp_path):
    root, rec, states, xy = run
    store = featurize(mlp(), ClassificationTask(), rec.checkpoints, xy, tmp_path / "s", FeaturizeConfig(projection=ProjectionConfig("factored")), progress=False)
    with pytest.raises(InputError, match="projection 'none' or 'dense'"):
        score_variants(store, mlp(), ClassificationTask(), data(2, 3))
    store2 = featurize(mlp(), ClassificationTask(), rec.checkpoints, xy, tmp_path / "s2", progress=False)
    with pytest.raises(InputError, match="one optimizer state dict per checkpoint \\(2\\); got None"):
        score_variants(store2, mlp(), ClassificationTask(), data(2, 3))
    with pytest.raises(InputError, match="variants must be a non-empty subset"):
        VariantConfig(variants=("raw", "magic"))
    assert math.isfinite(score_variants(store2, mlp(), ClassificationTask(), data(2, 3), config=VariantConfig(variants=("fisher",)))["fisher"].sum())
