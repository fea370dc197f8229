"""Gradient routing / ERA: expansion, masks, ablation."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradtrace.errors import InputError
from gradtrace.task import ClassificationTask
from gradtrace.unlearn.routing import Router, RoutingConfig, ablate, expand
from gradtrace.unlearn.train import TrainConfig, train


def mlp(seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
    return model


def data(n: int = 24, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen)


CFG = RoutingConfig(layers=("0:2", "2:4"), expand=3, seed=0)


def test_expansion_keeps_function_and_ablation_restores_shapes():
    model = mlp()
    x, _ = data()
    big, exp = expand(model, CFG)
    assert big[0].weight.shape == (9, 5) and big[2].weight.shape == (9, 9) and big[4].weight.shape == (3, 9)
    torch.testing.assert_close(big(x), model(x), rtol=0, atol=1e-12)  # zero columns add exact zeros; only the summation order differs
    small = ablate(big, exp)
    assert {k: v.shape for k, v in small.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    torch.testing.assert_close(small(x), model(x), rtol=0, atol=0)
    assert exp.hidden == (6, 6)


def test_mask_one_equals_ordinary_training_step_for_step():
    x, y = data()
    ones = dataclasses.replace(CFG, forget_original=1.0, retain_expanded=1.0, l1_coef=0.0)
    cfg = TrainConfig(steps=12, lr=0.05, batch_size=5, optimizer="adam", seed=3)
    weights = (torch.arange(len(y)) % 2).double()

    def run(routed: bool) -> list[list[torch.Tensor]]:
        big, exp = expand(mlp(), ones)
        trace: list[list[torch.Tensor]] = []
        cb = lambda step, m: trace.append([p.detach().clone() for p in m.parameters()])  # noqa: E731
        if routed:
            train(big, ClassificationTask(), (x, y), cfg, forget_weights=weights, router=Router(big, exp), callback=cb)
        else:
            train(big, ClassificationTask(), (x, y), cfg, callback=cb)
        return trace

    routed, plain = run(True), run(False)
    assert len(routed) == 12
    for a, b in zip(routed, plain):
        for pa, pb in zip(a, b):
            torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    assert not torch.equal(routed[0][0], routed[-1][0])  # training did move the weights


def test_mask_zero_gives_masked_units_no_gradient():
    x, y = data(8)
    cfg = dataclasses.replace(CFG, forget_original=0.0, retain_expanded=0.0)
    big, exp = expand(mlp(), cfg)
    router = Router(big, exp)
    # make the new down columns non-zero so the new units carry gradient
    with torch.no_grad():
        big[2].weight[:, 6:].normal_(generator=torch.Generator().manual_seed(0))
        big[4].weight[:, 6:].normal_(generator=torch.Generator().manual_seed(1))
    with router.route(torch.ones(8, dtype=torch.float64)):  # all forget
        F.cross_entropy(big(x), y).backward()
    assert torch.count_nonzero(big[0].weight.grad[:6]) == 0 and torch.count_nonzero(big[0].bias.grad[:6]) == 0
    assert torch.count_nonzero(big[0].weight.grad[6:]) > 0
    assert torch.count_nonzero(big[2].weight.grad[:6]) == 0
    big.zero_grad()
    with router.route(torch.zeros(8, dtype=torch.float64)):  # all retain: new units get nothing
        F.cross_entropy(big(x), y).backward()
    assert torch.count_nonzero(big[0].weight.grad[6:]) == 0 and torch.count_nonzero(big[0].weight.grad[:6]) > 0


def test_negative_original_weight_flips_the_gradient():
    x, y = data(8)
    # one routed pair: the gradient at layer 0 is scaled once by the original units' weight
    big, exp = expand(mlp(), dataclasses.replace(CFG, layers=("0:2",), forget_original=-0.5))
    F.cross_entropy(big(x), y).backward()
    plain = big[0].weight.grad[:6].clone()
    big.zero_grad()
    with Router(big, exp).route(torch.ones(8, dtype=torch.float64)):
        F.cross_entropy(big(x), y).backward()
    torch.testing.assert_close(big[0].weight.grad[:6], -0.5 * plain)


def test_partial_labels_route_only_labelled_examples():
    x, y = data(8)
    cfg = dataclasses.replace(CFG, forget_original=0.0)
    big, exp = expand(mlp(), cfg)
    with torch.no_grad():
        big[2].weight[:, 6:].normal_(generator=torch.Generator().manual_seed(0))
    router = Router(big, exp)
    labels = torch.tensor([1, 0, 1, 0, 0, 0, 0, 0], dtype=torch.float64)  # half the forget examples unlabelled
    with router.route(labels):
        losses = F.cross_entropy(big(x), y, reduction="none")
    # gradient of the new units equals that of the labelled examples alone
    losses.sum().backward()
    routed = big[0].weight.grad[6:].clone()
    big.zero_grad()
    with router.route(labels[[0, 2]]):
        F.cross_entropy(big(x[[0, 2]]), y[[0, 2]], reduction="sum").backward()
    torch.testing.assert_close(routed, big[0].weight.grad[6:])
    # and a full training run with partial labels works and can be ablated
    big2, exp2 = expand(mlp(), cfg)
    rec = train(big2, ClassificationTask(), data(), TrainConfig(steps=5, lr=0.01, batch_size=6),
                forget_weights=(torch.arange(24) % 4 == 0).double(), router=Router(big2, exp2), l1_coef=0.01)
    assert len(rec.losses) == 5 and all(torch.isfinite(torch.tensor(rec.losses)))
    assert ablate(big2, exp2)[0].weight.shape == (6, 5)


def test_l1_penalty_is_mean_abs_of_new_units():
    x, _ = data(4)
    big, exp = expand(mlp(), CFG)
    with torch.no_grad():
        big[2].weight[:, 6:].fill_(0.3)
    router = Router(big, exp)
    with router.route(torch.zeros(4, dtype=torch.float64)):
        big(x)
        got = router.l1()
    h1 = torch.tanh(big[0](x))
    h2 = torch.tanh(big[2](h1))
    torch.testing.assert_close(got, h1[:, 6:].abs().mean() + h2[:, 6:].abs().mean())


def test_l1_penalty_reaches_new_units_where_the_loss_gradient_is_masked():
    x, y = data(8)
    cfg = dataclasses.replace(CFG, layers=("0:2",), forget_original=0.0, retain_expanded=0.0)
    big, exp = expand(mlp(), cfg)
    router = Router(big, exp)
    with router.route(torch.zeros(8, dtype=torch.float64)):  # all retain: the loss does not reach the new units
        (g_loss,) = torch.autograd.grad(F.cross_entropy(big(x), y), big[0].weight, retain_graph=True)
        (g_l1,) = torch.autograd.grad(router.l1(), big[0].weight)
    assert torch.count_nonzero(g_loss[6:]) == 0
    # the penalty's own gradient, by hand: d mean|tanh(W x + b)| / dW on the new rows
    h = big[0](x)[:, 6:]
    expected = ((torch.sign(torch.tanh(h)) * (1 - torch.tanh(h) ** 2)).T @ x) / h.numel()
    torch.testing.assert_close(g_l1[6:], expected.detach(), rtol=1e-10, atol=1e-12)
    assert torch.count_nonzero(g_l1[:6]) == 0


def test_per_token_masks_on_a_gpt2():
    from gradtrace.models.zoo import tiny_gpt2

    model = tiny_gpt2(n_layer=1, n_embd=16, n_head=2, n_positions=16, vocab_size=20).double()
    cfg = RoutingConfig(layers=("transformer.h.0.mlp.c_fc:transformer.h.0.mlp.c_proj",), expand=4, forget_original=0.0)
    big, exp = expand(model, cfg)
    ids = torch.tensor([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]])
    torch.testing.assert_close(big(ids).logits, model(ids).logits, rtol=0, atol=1e-12)
    with torch.no_grad():
        big.transformer.h[0].mlp.c_proj.weight[64:].normal_(generator=torch.Generator().manual_seed(0))
    token_w = torch.zeros(2, 5, dtype=torch.float64)
    token_w[0, 3] = 1.0  # one forget token
    with Router(big, exp).route(token_w):
        out = big(ids).logits
    out[0, 3].sum().backward()  # a loss on the forget token's own position only (causal: depends on tokens <= 3)
    fc = big.transformer.h[0].mlp.c_fc.weight.grad
    assert torch.count_nonzero(fc[:, :64]) == 0 and torch.count_nonzero(fc[:, 64:]) > 0
    small = ablate(big, exp)
    assert small.transformer.h[0].mlp.c_fc.weight.shape == model.transformer.h[0].mlp.c_fc.weight.shape
    assert small.transformer.h[0].mlp.c_proj.weight.shape == model.transformer.h[0].mlp.c_proj.weight.shape


def test_bad_routing_input():
    with pytest.raises(InputError, match="not a module of the model"):
        expand(mlp(), RoutingConfig(layers=("0:nope",)))
    with pytest.raises(InputError, match="up_module:down_module"):
        RoutingConfig(layers=("0",))
    with pytest.raises(InputError, match="nn.Linear or transformers Conv1D"):
        expand(mlp(), RoutingConfig(layers=("1:2",)))
    with pytest.raises(InputError, match="takes"):
        expand(mlp(), RoutingConfig(layers=("2:0",)))
    with pytest.raises(InputError, match="at least one"):
        RoutingConfig(layers=())
    big, exp = expand(mlp(), CFG)
    with pytest.raises(InputError, match="routing weights must have shape"):
        with Router(big, exp).route(torch.ones(3, dtype=torch.float64)):
            big(data(4)[0])


def test_story_corpus_is_distinct_and_labels_topic_bytes():
    from gradtrace.demos.era_lm import TOPICS, make_stories, topic_token_weights

    train = make_stories(150, "dragons", seed=1)
    held = make_stories(50, "dragons", seed=2, exclude=set(train))
    assert len(set(train)) == 150 and not set(held) & set(train)
    w = topic_token_weights(["Tom saw a dragon."], "dragons", 20)
    start = "Tom saw a dragon.".index("dragon")
    assert w[0].nonzero().flatten().tolist() == list(range(start, start + 6))
    assert "dragon" in TOPICS["dragons"]["thing"]


def test_era_selection_records_what_the_ablation_alone_costs():
    from gradtrace.unlearn.compare import UnlearnSpec, run_era, split_by_weights
    from gradtrace.unlearn.select import SelectionGrid, SelectionRule

    x, y = data(40)
    weights = (y == 2).double()

    def loss(mask: torch.Tensor):
        def f(m: nn.Module) -> float:
            with torch.no_grad():
                return float(F.cross_entropy(m(x[mask]), y[mask]))
        return f

    train_cfg = TrainConfig(steps=15, lr=0.05, batch_size=8, seed=1)
    spec = UnlearnSpec(mlp, ClassificationTask(), (x, y), weights, (x[:4], y[:4]), loss(y == 2), loss(y != 2), train_cfg,
                       attacker_maximises=False, select_forget_metric=loss(y == 2), select_retain_metric=loss(y != 2))
    cfg = dataclasses.replace(CFG, layers=("0:2",))
    _, retain, _ = split_by_weights(spec)
    _, record = run_era(spec, cfg, TrainConfig(steps=4, lr=1e-2, batch_size=8), retain, 0, grid=SelectionGrid(steps=(2, 4)),
                        rule=SelectionRule(retain_tolerance=0.5, relative=True, retain_higher_is_better=False), base_retain=lambda: 1.0)
    # the oracle: the same routed training by hand, then the ablation, with no coherence fine-tune
    big, exp = expand(mlp(0), cfg)
    train(big, ClassificationTask(), (x, y), train_cfg, forget_weights=weights, router=Router(big, exp), l1_coef=cfg.l1_coef)
    ablated = ablate(big, exp)
    assert record is not None
    assert record["after_ablation"] == {"forget": loss(y == 2)(ablated), "retain": loss(y != 2)(ablated)}
    assert record["after_ablation"]["retain"] != record["selected"]["retain"]  # the coherence fine-tune moved it
