"""Unlearning losses equal their formulas; the runner checks its input."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradtrace.errors import InputError
from gradtrace.task import ClassificationTask
from gradtrace.unlearn.methods import (
    UnlearnConfig, Unlearner, ga_loss, graddiff_loss, layer_output, npo_loss, rmu_loss,
)

TASK = ClassificationTask()


def mlp(seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return model


def batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen)


def log_p(model: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """log p(y|x) written out: logit of y minus log-sum-exp of the logits."""
    logits = model(b[0])
    return torch.stack([logits[i, b[1][i]] - torch.log(torch.exp(logits[i]).sum()) for i in range(len(b[1]))])


def test_ga_and_graddiff_equal_their_formulas():
    m, f, r = mlp(), batch(5, 1), batch(7, 2)
    torch.testing.assert_close(ga_loss(m, TASK, f), log_p(m, f).mean())
    torch.testing.assert_close(graddiff_loss(m, TASK, f, r, 0.7), log_p(m, f).mean() - 0.7 * log_p(m, r).mean())


def test_npo_equals_its_formula():
    m, ref, f, r = mlp(0), mlp(1), batch(5, 1), batch(7, 2)
    beta = 0.1
    ratio = log_p(m, f) - log_p(ref, f)
    expected = -(2 / beta) * torch.log(torch.sigmoid(-beta * ratio)).mean()
    torch.testing.assert_close(npo_loss(m, ref, TASK, f, None, beta, 0.0), expected)
    torch.testing.assert_close(npo_loss(m, ref, TASK, f, r, beta, 2.0), expected - 2.0 * log_p(m, r).mean())
    # at the reference model NPO's forget term is (2/beta) log 2, whatever the data
    torch.testing.assert_close(npo_loss(m, m, TASK, f, None, beta, 0.0), torch.tensor(2 / beta * torch.log(torch.tensor(2.0)).item(), dtype=torch.float64))


def test_rmu_equals_its_formula():
    m, frozen, f, r = mlp(0), mlp(1), batch(5, 1), batch(7, 2)
    control = torch.arange(5, dtype=torch.float64) / 3
    h_f = m[0](f[0])
    h_r, h_r0 = m[0](r[0]), frozen[0](r[0])
    expected = ((h_f - control) ** 2).sum() / h_f.numel() + 1200.0 * ((h_r - h_r0) ** 2).sum() / h_r.numel()
    torch.testing.assert_close(rmu_loss(m, frozen, "0", TASK, f, r, control, 1200.0), expected)
    torch.testing.assert_close(layer_output(m, "1", TASK, f), torch.tanh(h_f))


def test_unlearner_runs_each_method_deterministically_and_leaves_the_input_alone():
    model = mlp()
    before = copy.deepcopy(model.state_dict())
    f, r = batch(12, 1), batch(20, 2)
    for method in ("ga", "graddiff", "npo", "rmu"):
        cfg = UnlearnConfig(method=method, lr=1e-2, steps=4, batch_size=4, rmu_layer="0", rmu_params=("0.*",))
        a = Unlearner(cfg).fit(model, TASK, f, r)
        b = Unlearner(cfg).fit(model, TASK, f, r)
        assert len(a.history) == 4 and a.config == cfg
        for (n, pa), pb in zip(a.model.named_parameters(), b.model.parameters()):
            torch.testing.assert_close(pa, pb, rtol=0, atol=0)
        if method == "rmu":  # only the chosen layer moves
            torch.testing.assert_close(a.model[2].weight, model[2].weight, rtol=0, atol=0)
            assert not torch.equal(a.model[0].weight, model[0].weight)
        else:
            assert not torch.equal(a.model[2].weight, model[2].weight)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    # gradient ascent raises the forget loss
    ga = Unlearner(UnlearnConfig(method="ga", lr=1e-2, steps=20, batch_size=12)).fit(model, TASK, f, r)
    assert TASK.per_example_loss(ga.model, f).mean() > TASK.per_example_loss(model, f).mean()


def test_config_round_trip():
    cfg = UnlearnConfig(method="rmu", rmu_layer="0", rmu_params=("0.*",), lr=3e-4)
    assert UnlearnConfig.from_dict(cfg.to_dict()) == cfg


def test_bad_unlearning_input():
    model, f, r = mlp(), batch(6, 1), batch(6, 2)
    empty = (f[0][:0], f[1][:0])
    with pytest.raises(InputError, match="forget set is empty"):
        Unlearner(UnlearnConfig()).fit(model, TASK, empty, r)
    overlap = (torch.cat([r[0][:2], f[0]]), torch.cat([r[1][:2], f[1]]))
    with pytest.raises(InputError, match="forget and retain overlap: 2 example"):
        Unlearner(UnlearnConfig()).fit(model, TASK, overlap, r)
    with pytest.raises(InputError, match="'nope' is not a module"):
        Unlearner(UnlearnConfig(method="rmu", rmu_layer="nope", steps=1)).fit(model, TASK, f, r)
    with pytest.raises(InputError, match="rmu_layer must name"):
        UnlearnConfig(method="rmu")
    with pytest.raises(InputError, match="method must be one of"):
        UnlearnConfig(method="magic")
    with pytest.raises(InputError, match="rmu_params"):
        Unlearner(UnlearnConfig(method="rmu", rmu_layer="0", rmu_params=("zzz*",), steps=1)).fit(model, TASK, f, r)
    with pytest.raises(InputError, match="steps must be a positive integer; got 0"):
        UnlearnConfig(steps=0)


def test_compare_config_and_spec_checks():
    from gradtrace.unlearn.compare import CompareConfig, UnlearnSpec, split_by_weights
    from gradtrace.unlearn.relearn import RelearnConfig
    from gradtrace.unlearn.routing import RoutingConfig
    from gradtrace.unlearn.train import TrainConfig

    cfg = CompareConfig(methods=("filter", "rmu", "era"), unlearn={"rmu": UnlearnConfig(method="rmu", rmu_layer="0")},
                        routing=RoutingConfig(layers=("0:2",)), relearn=RelearnConfig(ks=(2,)))
    assert CompareConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InputError, match="needs a routing config"):
        CompareConfig(methods=("era",))
    with pytest.raises(InputError, match="methods must be a non-empty subset"):
        CompareConfig(methods=("filter", "magic"))
    x, y = batch(6, 1)

    def spec(w):
        return UnlearnSpec(mlp, TASK, (x, y), w, (x, y), lambda m: 0.0, lambda m: 0.0, TrainConfig(steps=1))

    f, r, labelled = split_by_weights(spec(torch.tensor([1.0, 0, 0, 0.5, 0, 0])))
    assert labelled.tolist() == [True, False, False, True, False, False]
    torch.testing.assert_close(f[0], x[[0, 3]])
    torch.testing.assert_close(r[0], x[[1, 2, 4, 5]])
    with pytest.raises(InputError, match="no training example is labelled forget"):
        split_by_weights(spec(torch.zeros(6)))
    with pytest.raises(InputError, match="every training example is labelled forget"):
        split_by_weights(spec(torch.ones(6)))
    with pytest.raises(InputError, match="one row per training example \\(6\\)"):
        split_by_weights(spec(torch.ones(5)))
