"""LoRA per-example gradients on the tiny GPT-2 (float64): the selection, the
hooks path against single-example backward passes, the token-summed
Kronecker projection against the dense projection of the full per-example
gradient, and Adam preconditioning against its formula."""

from __future__ import annotations

import pytest
import torch

from gradtrace.errors import CheckpointError, InputError
from gradtrace.grads.per_example import GradientFeaturizer
from gradtrace.grads.adam import AdamPreconditioner
from gradtrace.grads.projection import ProjectionConfig, kronecker_factors
from gradtrace.grads.selection import select_parameters
from gradtrace.models import zoo
from gradtrace.models.hf import lora_selection


def _setup(lm):
    model = lm.lora_gpt2()
    names = select_parameters(model, lora_selection(model))
    batch = lm.task.collate(lm.examples)
    singles = [lm.task.collate([e]) for e in lm.examples]
    return model, names, batch, singles


def test_peft_models_select_exactly_the_adapter_weights(lm) -> None:
    model = lm.lora_gpt2()
    names = select_parameters(model, lora_selection(model))
    lora = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert names == lora and len(names) == 2 * 2 * 2  # 2 layers x (c_attn, c_fc) x (A, B)
    assert lora_selection(zoo.tiny_gpt2()) == "all"


def test_hooks_gradients_equal_single_example_backward_passes(lm, h) -> None:
    model, names, batch, singles = _setup(lm)
    featurizer = GradientFeaturizer(names, ProjectionConfig("none"), "auto")
    got = featurizer(model, lm.task.per_example_loss, batch)
    assert featurizer.resolved_method(model) == "hooks"
    want = h.oracle_grads(model, lm.task.per_example_loss, singles, names)
    assert (want.norm(dim=1) > 0).all()
    torch.testing.assert_close(got.features, want, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(got.sqnorms, want.pow(2).sum(1), rtol=1e-9, atol=1e-11)


def _dense_kronecker(model, names, grads, config):
    """``P_out^T G P_in`` per layer from full per-example gradients, in layer order."""
    params = dict(model.named_parameters())
    out, at = [], 0
    for name in names:
        shape = params[name].shape
        n = params[name].numel()
        g = grads[:, at : at + n].reshape(-1, *shape)
        at += n
        module = name.rsplit(".", 1)[0]
        f = kronecker_factors(module, shape[1], shape[0], config, g.dtype, g.device)
        proj = g if f.p_out is None else torch.einsum("boi,ok->bki", g, f.p_out)
        proj = proj if f.p_in is None else proj @ f.p_in
        out.append(proj.reshape(g.shape[0], -1))
    return torch.cat(out, dim=1)


def test_token_summed_kronecker_equals_dense_projection_of_full_gradient(lm, h) -> None:
    model, names, batch, singles = _setup(lm)
    config = ProjectionConfig("kronecker", 9, seed=3)  # 3 columns per factor: rank-3 sides stay exact
    got = GradientFeaturizer(names, config, "auto")(model, lm.task.per_example_loss, batch)
    full = h.oracle_grads(model, lm.task.per_example_loss, singles, names)
    torch.testing.assert_close(got.features, _dense_kronecker(model, names, full, config), rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(got.sqnorms, full.pow(2).sum(1), rtol=1e-9, atol=1e-11)


def test_adam_preconditioner_matches_its_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    m, v = torch.randn(3, 4, generator=gen, dtype=torch.float64), torch.rand(3, 4, generator=gen, dtype=torch.float64)
    g = torch.randn(5, 3, 4, generator=gen, dtype=torch.float64)
    pre = AdamPreconditioner({"w": m}, {"w": v}, beta1=0.8, beta2=0.95, eps=1e-6)
    got = pre("w", g)
    for i in range(5):
        m2 = 0.8 * m + 0.2 * g[i]
        v2 = 0.95 * v + 0.05 * g[i] ** 2
        torch.testing.assert_close(got[i], m2 / (v2.sqrt() + 1e-6))
    with pytest.raises(CheckpointError, match="no moments for parameter 'b'"):
        pre("b", g)
    with pytest.raises(CheckpointError, match="have shape"):
        pre("w", torch.zeros(2, 4, 3, dtype=torch.float64))
    with pytest.raises(InputError, match="beta1 must be in"):
        AdamPreconditioner({"w": m}, {"w": v}, beta1=1.0)


def _moments(model, names, seed=1):
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    m = {n: torch.randn(params[n].shape, generator=gen, dtype=torch.float64) * 1e-2 for n in names}
    v = {n: torch.rand(params[n].shape, generator=gen, dtype=torch.float64) * 1e-3 for n in names}
    return AdamPreconditioner(m, v)


@pytest.mark.parametrize("kind", ["none", "kronecker"])
def test_adam_transformed_features_equal_transformed_oracle_gradients(lm, h, kind) -> None:
    model, names, batch, singles = _setup(lm)
    pre = _moments(model, names)
    config = ProjectionConfig(kind, None if kind == "none" else 9, seed=1)
    featurizer = GradientFeaturizer(names, config, "auto")
    featurizer.transform = pre
    got = featurizer(model, lm.task.per_example_loss, batch)
    full = h.oracle_grads(model, lm.task.per_example_loss, singles, names)
    params = dict(model.named_parameters())
    pieces, at = [], 0
    for n in names:
        k = params[n].numel()
        pieces.append(pre(n, full[:, at : at + k].reshape(-1, *params[n].shape)).reshape(full.shape[0], -1))
        at += k
    want = torch.cat(pieces, dim=1)
    expected = want if kind == "none" else _dense_kronecker(model, names, want, config)
    torch.testing.assert_close(got.features, expected, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(got.sqnorms, want.pow(2).sum(1), rtol=1e-9, atol=1e-11)


def test_factored_projection_refuses_a_transform(lm) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2)).double()
    featurizer = GradientFeaturizer(["0.weight"], ProjectionConfig("factored"), "auto")
    featurizer.transform = AdamPreconditioner({"0.weight": torch.zeros(2, 3)}, {"0.weight": torch.zeros(2, 3)})
    with pytest.raises(InputError, match="cannot apply a gradient transform"):
        featurizer(model, lambda m, b: m(b).sum(1), torch.ones(2, 3, dtype=torch.float64))
