"""Oracle tier: per-example gradients from every method equal a loop of
single-example ``loss.backward()`` passes (the oracle lives in conftest.py and
does not use gradtrace)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradtrace.errors import InputError
from gradtrace.grads.per_example import GradientFeaturizer
from gradtrace.grads.projection import ProjectionConfig
from gradtrace.grads.selection import select_parameters

NONE = ProjectionConfig("none")
TOL = dict(rtol=1e-10, atol=1e-12)


def _check(h, model, fn, batch, names, method):
    fb = GradientFeaturizer(names, NONE, method)(model, fn, batch)
    expected = h.oracle_grads(model, fn, h.singles(batch), names)
    assert expected.abs().max() > 1e-3  # the oracle is not all zeros
    torch.testing.assert_close(fb.features, expected, **TOL)
    torch.testing.assert_close(fb.sqnorms, expected.pow(2).sum(1), **TOL)
    return fb


# -- MLP: every method, several selections -----------------------------------

@pytest.mark.parametrize("method", ["hooks", "vmap", "loop", "auto"])
@pytest.mark.parametrize("selection", ["all", "last", "0.*", ("0.weight", "2.bias")])
def test_mlp_every_method_and_selection(h, method, selection):
    model = h.make_mlp(seed=1)
    batch = h.classification_data(6, seed=2)
    names = select_parameters(model, selection)
    expected_names = {
        "all": ["0.weight", "0.bias", "2.weight", "2.bias"],
        "last": ["2.weight", "2.bias"],
        "0.*": ["0.weight", "0.bias"],
        ("0.weight", "2.bias"): ["0.weight", "2.bias"],
    }[selection]
    assert names == expected_names
    _check(h, model, h.ce_per_example, batch, names, method)


def test_selection_keeps_requires_grad_and_skips_frozen(h):
    model = h.make_mlp(seed=1)
    model[0].weight.requires_grad_(False)
    names = select_parameters(model, "all")
    assert names == ["0.bias", "2.weight", "2.bias"]
    batch = h.classification_data(4, seed=3)
    GradientFeaturizer(names, NONE, "vmap")(model, h.ce_per_example, batch)
    assert [p.requires_grad for p in model.parameters()] == [False, True, True, True]
    assert all(p.grad is None for p in model.parameters())


# -- non-Linear parameterised layers: vmap and loop --------------------------

class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 3, kernel_size=3)
        self.head = nn.Linear(3 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.conv(x)).flatten(1))


class NormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 4)
        self.norm = nn.LayerNorm(4)
        self.out = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.norm(self.fc(x))))


def _init(h, cls, seed):
    with h.seeded(seed):
        model = cls()
        for p in model.parameters():  # LayerNorm starts at (1, 0): perturb it so its gradient is generic
            p.data.add_(0.1 * torch.randn_like(p))
    return model.double().eval()


@pytest.mark.parametrize("method", ["vmap", "loop", "auto"])
@pytest.mark.parametrize("selection", ["all", "conv.*", "last"])
def test_conv_model(h, method, selection):
    model = _init(h, ConvNet, 4)
    gen = torch.Generator().manual_seed(5)
    batch = (torch.randn(5, 2, 6, generator=gen, dtype=torch.float64), torch.randint(0, 3, (5,), generator=gen))
    names = select_parameters(model, selection)
    _check(h, model, h.ce_per_example, batch, names, method)


@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_layernorm_model(h, method):
    model = _init(h, NormNet, 6)
    batch = h.classification_data(5, seed=7)
    names = select_parameters(model, "all")
    assert "norm.weight" in names
    _check(h, model, h.ce_per_example, batch, names, method)


def test_auto_resolves_to_vmap_for_non_linear_params_and_hooks_for_linear(h):
    names = select_parameters(_init(h, NormNet, 6), "all")
    f = GradientFeaturizer(names, NONE, "auto")
    assert f.resolved_method(_init(h, NormNet, 6)) == "vmap"
    mlp = h.make_mlp()
    assert GradientFeaturizer(select_parameters(mlp, "all"), NONE, "auto").resolved_method(mlp) == "hooks"


# -- tokens: a Linear applied to a 3-D input -----------------------------------

class TokenNet(nn.Module):
    """Per-token linear layers on (batch, tokens, features); the per-example loss
    is the sum of the token losses."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.fc(x)))


def token_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch  # x: (b, t, 4), y: (b, t)
    logits = model(x)
    return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).sum(1)


@pytest.mark.parametrize("method", ["hooks", "vmap", "loop"])
@pytest.mark.parametrize("selection", ["all", "fc.weight"])
def test_token_inputs(h, method, selection):
    with h.seeded(8):
        model = TokenNet().double().eval()
    gen = torch.Generator().manual_seed(9)
    batch = (torch.randn(4, 6, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (4, 6), generator=gen))
    names = select_parameters(model, selection)
    _check(h, model, token_loss, batch, names, method)


class SharedNet(nn.Module):
    """One linear layer called twice in a forward pass (same module, no tying)."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.mix(torch.tanh(self.mix(x)))))


def test_hooks_sum_over_repeated_calls(h):
    with h.seeded(10):
        model = SharedNet().double().eval()
    batch = h.classification_data(5, d_in=4, seed=11)
    _check(h, model, h.ce_per_example, batch, select_parameters(model, "all"), "hooks")


# -- auto falls back to loop when vmap cannot trace --------------------------

class ItemNet(nn.Module):
    """A forward that calls .item(), which vmap cannot trace; a LayerNorm so
    that auto does not pick hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 4)
        self.norm = nn.LayerNorm(4)
        self.out = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.norm(self.fc(x))
        if hidden.abs().sum().item() > 1e12:  # never true; only the .item() call matters
            raise RuntimeError("unreachable")
        return self.out(torch.tanh(hidden))


def test_auto_falls_back_to_loop_with_one_warning(h):
    model = _init(h, ItemNet, 12)
    names = select_parameters(model, "all")
    featurizer = GradientFeaturizer(names, NONE, "auto")
    batches = [h.classification_data(4, seed=13), h.classification_data(3, seed=14)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [featurizer(model, h.ce_per_example, b) for b in batches]
    ours = [w for w in caught if "gradtrace" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert "vmap" in str(ours[0].message) and "loop" in str(ours[0].message)
    assert featurizer.resolved_method(model) == "loop"
    for fb, batch in zip(results, batches):
        expected = h.oracle_grads(model, h.ce_per_example, h.singles(batch), names)
        torch.testing.assert_close(fb.features, expected, **TOL)


def test_explicit_vmap_does_not_fall_back(h):
    model = _init(h, ItemNet, 12)
    featurizer = GradientFeaturizer(select_parameters(model, "all"), NONE, "vmap")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback warning would turn into an error of another type
        with pytest.raises(RuntimeError, match="item"):
            featurizer(model, h.ce_per_example, h.classification_data(3, seed=1))


# -- bad selections and methods -----------------------------------------------

def test_pattern_matching_nothing_names_the_pattern(h):
    model = h.make_mlp()
    with pytest.raises(InputError, match=r"encoder\.\*"):
        select_parameters(model, "encoder.*")
    with pytest.raises(InputError, match=r"nope"):
        select_parameters(model, ["nope", "also_nope*"])


@pytest.mark.parametrize("bad", [[], [""], ["0.weight", 3]])
def test_malformed_selection(h, bad):
    with pytest.raises(InputError, match="params"):
        select_parameters(h.make_mlp(), bad)


def test_featurize_rejects_pattern_naming_it(h, tmp_path):
    import gradtrace as gt

    model = h.make_mlp()
    ckpts = h.write_checkpoints(lambda s: h.make_mlp(seed=s), tmp_path / "ck", [0.1])
    config = gt.FeaturizeConfig(params="decoder.*")
    with pytest.raises(InputError, match=r"decoder\.\*"):
        gt.featurize(model, gt.ClassificationTask(), ckpts, h.classification_data(4), tmp_path / "s", config, progress=False)


def test_hooks_rejects_non_linear_params(h):
    model = _init(h, ConvNet, 1)
    featurizer = GradientFeaturizer(select_parameters(model, "all"), NONE, "hooks")
    with pytest.raises(InputError, match="hooks"):
        featurizer.resolved_method(model)


def test_unknown_method_and_unknown_param(h):
    with pytest.raises(InputError, match="method"):
        GradientFeaturizer(["0.weight"], NONE, "jacrev")
    featurizer = GradientFeaturizer(["0.weight", "missing.weight"], NONE, "loop")
    with pytest.raises(InputError, match="missing.weight"):
        featurizer.resolved_method(h.make_mlp())


@pytest.mark.parametrize("method", ["hooks", "vmap", "loop"])
def test_per_example_fn_with_wrong_shape_names_it(h, method):
    model = h.make_mlp()
    featurizer = GradientFeaturizer(select_parameters(model, "all"), NONE, method)

    def column(m, batch):
        return h.ce_per_example(m, batch)[:, None]

    with pytest.raises(InputError, match=r"shape \(\d+, 1\)"):
        featurizer(model, column, h.classification_data(4))


class TiedNet(nn.Module):
    """``out.weight`` is ``fc.weight``: the hooks would miss one of its two uses."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 4)
        self.out.weight = self.fc.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.fc(x)))


@pytest.mark.parametrize("method", ["auto", "vmap", "loop"])
def test_tied_weights(h, method):
    with h.seeded(15):
        model = TiedNet().double().eval()
    names = select_parameters(model, "all")
    assert names == ["fc.weight", "fc.bias", "out.bias"]
    featurizer = GradientFeaturizer(names, NONE, method)
    if method == "auto":
        assert featurizer.resolved_method(model) == "vmap"
    _check(h, model, h.ce_per_example, h.classification_data(5, d_in=4, n_out=4, seed=16), names, method)
    with pytest.raises(InputError, match="untied"):
        GradientFeaturizer(names, NONE, "hooks").resolved_method(model)
