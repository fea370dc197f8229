"""Projections: seeded determinism, blocked == cached, Kronecker features equal
the dense projection of the full gradient by ``kron(P_out, P_in)``, exact
squared norms, the Johnson-Lindenstrauss bound at a fixed seed, validation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradtrace as gt
from gradtrace.errors import InputError
from gradtrace.grads.per_example import GradientFeaturizer
from gradtrace.grads.projection import DenseProjector, ProjectionConfig, kronecker_factors
from gradtrace.grads.selection import select_parameters

TOL = dict(rtol=1e-10, atol=1e-12)


def dense(dim: int, seed: int = 0, distribution: str = "rademacher") -> ProjectionConfig:
    return ProjectionConfig("dense", dim=dim, seed=seed, distribution=distribution)


# -- dense ---------------------------------------------------------------------

@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_same_seed_same_matrix_other_seed_other_matrix(distribution):
    d, k = 1500, 16  # two row blocks of 1024
    a = DenseProjector(d, dense(k, 7, distribution)).matrix()
    b = DenseProjector(d, dense(k, 7, distribution)).matrix()
    c = DenseProjector(d, dense(k, 8, distribution)).matrix()
    assert a.shape == (d, k) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # independent draws: about half of the signs agree, not all
    agree = (torch.sign(a) == torch.sign(c)).double().mean().item()
    assert 0.45 < agree < 0.55
    # the two row blocks are not copies of each other
    assert not torch.equal(a[:476], a[1024:1500])


def test_rademacher_entries_and_gaussian_variance():
    d, k = 1500, 16
    r = DenseProjector(d, dense(k, 1)).matrix(torch.float64)
    torch.testing.assert_close(r.abs(), torch.full_like(r, 1 / math.sqrt(k)), rtol=1e-7, atol=0)
    g = DenseProjector(d, dense(k, 1, "gaussian")).matrix(torch.float64)
    # 24,000 entries: the sample variance has a relative standard error of sqrt(2/24000) ~ 0.9%
    torch.testing.assert_close(g.var().item() * k, 1.0, rtol=0.05, atol=0)
    assert abs(g.mean().item()) * math.sqrt(k) < 0.05


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_blocked_projection_equals_cached(distribution):
    d, k = 2500, 32  # three row blocks, the last one partial
    cfg = dense(k, 3, distribution)
    grads = torch.randn(6, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cached = DenseProjector(d, cfg)
    blocked = DenseProjector(d, cfg, cache_bytes=0)
    assert cached._cache_ok and not blocked._cache_ok
    out_blocked = blocked.project(grads)
    torch.testing.assert_close(out_blocked, cached.project(grads), **TOL)
    torch.testing.assert_close(out_blocked, grads @ cached.matrix(torch.float64), **TOL)
    with pytest.raises(InputError, match="gradient dimension"):
        cached.project(grads[:, :-1])


def test_featurizer_dense_is_exact_gradient_times_matrix(h):
    model = h.make_mlp(seed=2)
    names = select_parameters(model, "all")
    batch = h.classification_data(5, seed=3)
    cfg = dense(10, seed=4)
    fb = GradientFeaturizer(names, cfg, "hooks")(model, h.ce_per_example, batch)
    exact = h.oracle_grads(model, h.ce_per_example, h.singles(batch), names)
    matrix = DenseProjector(exact.shape[1], cfg).matrix(torch.float64)
    torch.testing.assert_close(fb.features, exact @ matrix, **TOL)
    torch.testing.assert_close(fb.sqnorms, exact.pow(2).sum(1), **TOL)


# -- Kronecker ------------------------------------------------------------------

class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 7)
        self.out = nn.Linear(7, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.fc(x)))


def token_loss(model, batch):
    x, y = batch  # (b, t, 8), (b, t)
    logits = model(x)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).sum(1)


def _kron_expected(h, model, fn, batch, cfg, with_bias):
    """Full per-example gradient of each layer as the [W | b] matrix, row-major,
    times kron(P_out, P_in) (identity where a factor is None)."""
    parts = []
    for name in ("fc", "out"):
        layer = getattr(model, name)
        names = [f"{name}.weight"] + ([f"{name}.bias"] if with_bias else [])
        g = h.oracle_grads(model, fn, h.singles(batch), names)
        d_out, d_in = layer.out_features, layer.in_features
        gw = g[:, : d_out * d_in].view(-1, d_out, d_in)
        aug = torch.cat([gw, g[:, d_out * d_in :].view(-1, d_out, 1)], dim=2) if with_bias else gw
        f = kronecker_factors(name, aug.shape[2], d_out, cfg, torch.float64, torch.device("cpu"))
        p_in = f.p_in if f.p_in is not None else torch.eye(aug.shape[2], dtype=torch.float64)
        p_out = f.p_out if f.p_out is not None else torch.eye(d_out, dtype=torch.float64)
        parts.append(aug.reshape(aug.shape[0], -1) @ torch.kron(p_out, p_in))
    return torch.cat(parts, dim=1)


@pytest.mark.parametrize("dim", [16, 36])  # side 4: both factors projected; side 6: out layer's P_out is the identity
@pytest.mark.parametrize("tokens", [None, 2, 12])  # 2-D input; 3-D with the Gram and the per-example sqnorm path
@pytest.mark.parametrize("with_bias", [True, False])
def test_kronecker_equals_dense_kron_projection(h, dim, tokens, with_bias):
    with h.seeded(5):
        model = Net().double().eval()
    gen = torch.Generator().manual_seed(6)
    if tokens is None:
        batch = (torch.randn(5, 8, generator=gen, dtype=torch.float64), torch.randint(0, 5, (5,), generator=gen))
        fn = h.ce_per_example
    else:
        batch = (torch.randn(4, tokens, 8, generator=gen, dtype=torch.float64), torch.randint(0, 5, (4, tokens), generator=gen))
        fn = token_loss
    names = select_parameters(model, "all" if with_bias else "*.weight")
    cfg = ProjectionConfig("kronecker", dim=dim, seed=11)
    featurizer = GradientFeaturizer(names, cfg, "auto")
    fb = featurizer(model, fn, batch)
    expected = _kron_expected(h, model, fn, batch, cfg, with_bias)
    assert featurizer.feature_dim(model) == expected.shape[1] == fb.features.shape[1]
    torch.testing.assert_close(fb.features, expected, **TOL)
    exact = h.oracle_grads(model, fn, h.singles(batch), names)
    torch.testing.assert_close(fb.sqnorms, exact.pow(2).sum(1), **TOL)


def test_kronecker_factors_are_seeded_per_layer():
    cfg = ProjectionConfig("kronecker", dim=16, seed=1)
    cpu = torch.device("cpu")
    a = kronecker_factors("fc", 9, 7, cfg, torch.float64, cpu)
    b = kronecker_factors("fc", 9, 7, cfg, torch.float64, cpu)
    c = kronecker_factors("out", 9, 7, cfg, torch.float64, cpu)
    d = kronecker_factors("fc", 9, 7, ProjectionConfig("kronecker", dim=16, seed=2), torch.float64, cpu)
    assert (a.k_in, a.k_out) == (4, 4) and a.p_in.shape == (9, 4) and a.p_out.shape == (7, 4)
    assert torch.equal(a.p_in, b.p_in) and torch.equal(a.p_out, b.p_out)
    assert not torch.equal(a.p_in, c.p_in) and not torch.equal(a.p_in, d.p_in)
    assert not torch.equal(a.p_in[:7], a.p_out)  # the two sides are drawn separately
    small = kronecker_factors("fc", 3, 2, cfg, torch.float64, cpu)
    assert small.p_in is None and small.p_out is None and (small.k_in, small.k_out) == (3, 2)


# -- Johnson-Lindenstrauss at a fixed seed ----------------------------------------

@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_jl_bound_at_fixed_seed(distribution):
    """50 random unit vectors in d=2000 projected to k=512.

    For unit u, v the error <uP, vP> - <u, v> is a sum of k independent terms
    with variance (1 + <u,v>^2 - c)/k <= 2/k (c >= 0; c = 2 sum u_i^2 v_i^2 for
    Rademacher, 0 for Gaussian). Random vectors in d=2000 are nearly
    orthogonal, so off-diagonal pairs have standard deviation ~1/sqrt(k) and
    the squared norms (u = v) ~sqrt(2/k). The bound is 4.5 standard
    deviations: 4.5/sqrt(k) = 0.199 off the diagonal and 4.5*sqrt(2/k) = 0.281
    on it. Over 1,225 pairs and 50 norms a random seed would break it with
    probability ~1% (union bound of Gaussian tails); this seed is fixed. A
    second check, two-sided, catches a wrong scale: the root-mean-square
    off-diagonal error must be within 20% of 1/sqrt(k).
    """
    n, d, k = 50, 2000, 512
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(2024), dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    projected = DenseProjector(d, dense(k, seed=0, distribution=distribution)).project(x)
    error = projected @ projected.T - x @ x.T
    off = error[~torch.eye(n, dtype=torch.bool)]
    diag = error.diagonal()
    assert off.abs().max().item() <= 4.5 / math.sqrt(k)
    assert diag.abs().max().item() <= 4.5 * math.sqrt(2 / k)
    rms = off.pow(2).mean().sqrt().item() * math.sqrt(k)
    assert 0.8 < rms < 1.2, rms
    assert abs(off.mean().item()) < 3 / math.sqrt(k * off.numel() / 2)  # unbiased (1,225 distinct pairs)


# -- validation -------------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(kind="sparse"), "projection.kind"),
        (dict(kind="none", dim=8), "projection.dim"),
        (dict(kind="factored", dim=8), "projection.dim"),
        (dict(kind="dense"), "projection.dim"),
        (dict(kind="dense", dim=0), "projection.dim"),
        (dict(kind="kronecker", dim=-4), "projection.dim"),
        (dict(kind="dense", dim=True), "projection.dim"),
        (dict(kind="dense", dim=8.0), "projection.dim"),
        (dict(kind="dense", dim=8, distribution="uniform"), "projection.distribution"),
        (dict(kind="dense", dim=8, seed=-1), "projection.seed"),
        (dict(kind="dense", dim=8, seed=1.5), "projection.seed"),
    ],
)
def test_projection_config_validation(kwargs, field):
    with pytest.raises(InputError, match=field.replace(".", r"\.")):
        ProjectionConfig(**kwargs)


def test_projection_config_round_trip():
    cfg = ProjectionConfig("kronecker", dim=64, seed=3, distribution="gaussian")
    assert ProjectionConfig.from_dict(cfg.to_dict()) == cfg


def test_dense_dim_not_smaller_than_gradient():
    with pytest.raises(InputError, match="projection.dim=39"):
        DenseProjector(39, dense(39))
    with pytest.raises(InputError, match="dense"):
        DenseProjector(39, ProjectionConfig("none"))
    with pytest.raises(InputError, match="kronecker"):
        kronecker_factors("fc", 4, 4, dense(2), torch.float64, torch.device("cpu"))


def test_factored_and_kronecker_need_linear_weights(h):
    class ConvNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(1, 2, 3)
            self.head = nn.Linear(2, 2)

        def forward(self, x):
            return self.head(self.conv(x).mean(-1))

    model = ConvNet().double()
    for cfg in (ProjectionConfig("factored"), ProjectionConfig("kronecker", dim=4)):
        with pytest.raises(InputError, match=r"conv\.weight"):
            GradientFeaturizer(select_parameters(model, "all"), cfg).feature_dim(model)
        with pytest.raises(InputError, match="only the bias"):
            GradientFeaturizer(["head.bias"], cfg).feature_dim(model)
        with pytest.raises(InputError, match="'vmap'"):
            GradientFeaturizer(["head.weight"], cfg, "vmap").feature_dim(model)
    with pytest.raises(InputError, match="float16"):
        gt.FeaturizeConfig(projection=ProjectionConfig("factored"), dtype="float16")


def test_factored_rejects_token_inputs(h):
    with h.seeded(0):
        model = Net().double()
    batch = (torch.randn(2, 3, 8, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.long))
    featurizer = GradientFeaturizer(select_parameters(model, "all"), ProjectionConfig("factored"))
    with pytest.raises(InputError, match=r"'fc'.*\(2, 3, 8\)"):
        featurizer(model, token_loss, batch)
