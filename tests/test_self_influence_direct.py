"""Oracle tier: self-influence straight from checkpoints (no store) equals
``sum_c lr_c |g_c(z)|^2`` from one backward pass per example, for every
gradient path (single-token linear layers, token sequences, bias-only
selections, non-linear parameters through vmap)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradtrace as gt
from gradtrace.errors import InputError

LRS = [0.5, 0.25, 0.125]


class TokenModel(nn.Module):
    """Linear layers applied per token of a (batch, tokens, features) input, plus a LayerNorm."""

    def __init__(self, bias: bool = True):
        super().__init__()
        self.up = nn.Linear(4, 6, bias=bias)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.norm(self.up(x)))).mean(dim=1)


def token_model(seed: int, bias: bool = True) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TokenModel(bias).double().eval()


def oracle(h, model, ckpts, data, names):
    total = torch.zeros(len(data[1]), dtype=torch.float64)
    for path, lr in ckpts:
        model.load_state_dict(torch.load(path, weights_only=True))
        g = h.oracle_grads(model, h.ce_per_example, h.singles(data), names)
        total += lr * g.pow(2).sum(1)
    return total.numpy()


@pytest.mark.parametrize("params", ["all", "0.*", ["2.bias"]])
def test_mlp_equals_oracle_and_store(h, tmp_path, params):
    make = lambda s: h.make_mlp(seed=s)  # noqa: E731
    ckpts = h.write_checkpoints(make, tmp_path / "c", LRS)
    data = h.classification_data(11, seed=4)
    model = make(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    task = gt.ClassificationTask()
    got = gt.self_influence_from_checkpoints(model, task, ckpts, data, params=params, batch_size=4, progress=False)
    names = gt.grads.selection.select_parameters(model, params)
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(oracle(h, make(0), ckpts, data, names)), rtol=1e-10, atol=0)
    store = gt.featurize(make(0), task, ckpts, data, tmp_path / "s", gt.FeaturizeConfig(params=params), progress=False)
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(gt.self_influence(store)), rtol=1e-10, atol=0)
    for k, v in model.state_dict().items():  # the caller's weights are restored
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("params,method", [("*.weight", "auto"), (["up.weight", "up.bias", "head.*"], "auto"), ("all", "auto"), ("all", "loop")])
def test_token_sequences_equal_oracle(h, tmp_path, bias, params, method):
    if not bias and params != "all" and "up.bias" in params:
        params = ["up.weight", "head.*"]
    make = lambda s: token_model(s, bias)  # noqa: E731
    ckpts = h.write_checkpoints(make, tmp_path / "c", LRS)
    gen = torch.Generator().manual_seed(7)
    data = (torch.randn(9, 5, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (9,), generator=gen))
    names = gt.grads.selection.select_parameters(make(0), params)
    got = gt.self_influence_from_checkpoints(make(0), gt.ClassificationTask(), ckpts, data, params=params, method=method, batch_size=5, progress=False)
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(oracle(h, make(0), ckpts, data, names)), rtol=1e-10, atol=0)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_bad_batch_size_is_named(h, tmp_path, bad):
    ckpts = h.write_checkpoints(lambda s: h.make_mlp(seed=s), tmp_path / "c", LRS)
    with pytest.raises(InputError, match="batch_size"):
        gt.self_influence_from_checkpoints(h.make_mlp(), gt.ClassificationTask(), ckpts, h.classification_data(3), batch_size=bad)


def test_empty_data_is_an_error(h, tmp_path):
    ckpts = h.write_checkpoints(lambda s: h.make_mlp(seed=s), tmp_path / "c", LRS)
    empty = (torch.zeros(0, 5, dtype=torch.float64), torch.zeros(0, dtype=torch.long))
    with pytest.raises(InputError, match="empty"):
        gt.self_influence_from_checkpoints(h.make_mlp(), gt.ClassificationTask(), ckpts, empty, progress=False)
