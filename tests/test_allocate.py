"""Loss-change allocation against closed forms and a brute-force oracle;
grouping; influence over time; comparison across runs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gradtrace.allocate import allocate_run, default_points, group_of, quadrature
from gradtrace.allocate.runs import (
    average_runs, compare_runs, most_different, spearman_rows, split_half_stability, topk_jaccard,
)
from gradtrace.allocate.timeline import critical_period, influence_over_time
from gradtrace.checkpoints import CheckpointRef
from gradtrace.errors import InputError
from gradtrace.task import ClassificationTask


# -- quadrature -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rule,points,degree", [("gauss", 1, 1), ("gauss", 3, 5), ("gauss", 8, 15), ("trapezoid", 2, 1),
                                                ("trapezoid", 9, 1), ("simpson", 3, 3), ("simpson", 9, 3)])
def test_rules_integrate_polynomials_up_to_their_degree_exactly(rule: str, points: int, degree: int) -> None:
    t, w = quadrature(rule, points)
    assert len(t) == points and t.min() >= 0 and t.max() <= 1
    for d in range(degree + 1):
        assert float((w * t**d).sum()) == pytest.approx(1.0 / (d + 1), abs=1e-13)
    # one degree more is not exact (the rule's order is what it says)
    assert abs(float((w * t ** (degree + 1)).sum()) - 1.0 / (degree + 2)) > 1e-11


def test_left_rule_is_first_order_and_bad_points_are_refused() -> None:
    t, w = quadrature("left", 1)
    assert t.tolist() == [0.0] and w.tolist() == [1.0]
    t, w = quadrature("left", 100)
    assert abs(float((w * t).sum()) - 0.5) == pytest.approx(0.005)  # error 1/(2n)
    for rule, points, match in (("simpson", 4, "odd"), ("trapezoid", 1, "at least 2"), ("gauss", 0, "positive"),
                                ("midpoint", 3, "rule must be one of")):
        with pytest.raises(InputError, match=match):
            quadrature(rule, points)
    assert default_points("gauss") >= 1 and default_points("left") == 1


# -- a quadratic behaviour: closed form -------------------------------------------------------------------------------

class TwoTensors(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros(3, dtype=torch.float64))
        self.m = nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))

    def flat(self) -> torch.Tensor:
        return torch.cat([self.a, self.m.reshape(-1)])


def quadratic(model: TwoTensors, batch) -> torch.Tensor:
    """Per query q: 0.5 (x_q . θ)^2 + c_q . θ, θ = (a, m flattened)."""
    x, c = batch
    theta = model.flat()
    return 0.5 * (x @ theta) ** 2 + c @ theta


def _save_states(tmp_path: Path, thetas: list[np.ndarray]) -> list[CheckpointRef]:
    refs = []
    for i, th in enumerate(thetas):
        path = tmp_path / f"ckpt_{i}.pt"
        torch.save({"a": torch.tensor(th[:3]), "m": torch.tensor(th[3:]).reshape(2, 2)}, path)
        refs.append(CheckpointRef(str(path), 1.0, step=i * 10))
    return refs


@pytest.mark.parametrize("rule,points", [("gauss", 1), ("gauss", 4), ("trapezoid", 2), ("simpson", 3)])
def test_quadratic_behaviour_allocation_equals_closed_form(tmp_path: Path, rule: str, points: int) -> None:
    rng = np.random.default_rng(0)
    x, c = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    thetas = [rng.normal(size=7) for _ in range(3)]
    refs = _save_states(tmp_path, thetas)
    hess, g = x.T @ x / 5, c.mean(axis=0)
    run = allocate_run(TwoTensors(), quadratic, (torch.tensor(x), torch.tensor(c)), refs, rule=rule, points=points,
                       keep_elements=True, batch_size=2)
    assert [iv.label() for iv in run.intervals] == ["step 0 -> step 10", "step 10 -> step 20"]
    for k, iv in enumerate(run.intervals):
        t0, t1 = thetas[k], thetas[k + 1]
        closed = (t1 - t0) * (hess @ (t0 + t1) / 2 + g)  # Δ ⊙ ∫ ∇B along the line
        got = np.concatenate([iv.elements["a"].numpy(), iv.elements["m"].numpy().reshape(-1)])
        np.testing.assert_allclose(got, closed, rtol=1e-10, atol=1e-12)
        assert iv.per_tensor["a"] == pytest.approx(closed[:3].sum(), rel=1e-10)
        def value(th): return float(np.mean(0.5 * (x @ th) ** 2 + c @ th))
        assert iv.measured_change == pytest.approx(value(t1) - value(t0), rel=1e-12)
        assert abs(iv.completeness_error) < 1e-10 * max(1.0, abs(iv.measured_change))


def test_first_order_rule_is_not_exact_on_a_quadratic(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x, c = rng.normal(size=(4, 7)), rng.normal(size=(4, 7))
    refs = _save_states(tmp_path, [rng.normal(size=7) for _ in range(2)])
    left = allocate_run(TwoTensors(), quadratic, (torch.tensor(x), torch.tensor(c)), refs, rule="left", points=1)
    exact = allocate_run(TwoTensors(), quadratic, (torch.tensor(x), torch.tensor(c)), refs, rule="gauss", points=1)
    # the first-order error is -0.5 Δᵀ H Δ, far from 0 for random points
    assert left.intervals[0].relative_error > 1e-2
    assert exact.intervals[0].relative_error < 1e-10


# -- digits MLP: convergence against a fine Riemann-sum oracle ---------------------------------------------------------

@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    from gradtrace.demos.digits import DigitsConfig, load_digits_data, make_mlp, train_digits

    out = tmp_path_factory.mktemp("digits_alloc")
    cfg = DigitsConfig(hidden=16, epochs=6, n_checkpoints=2, lr=0.5, flip_fraction=0.0)
    data = load_digits_data(cfg, dtype=torch.float64)
    refs = train_digits(data, out, cfg, dtype=torch.float64)
    queries = (data.x_test[:40], data.y_test[:40])
    return cfg, refs, queries, lambda: make_mlp(16, 0, torch.float64)


def _riemann_oracle(model: nn.Module, refs: list[CheckpointRef], queries, n: int) -> dict[str, float]:
    """Per-tensor allocation of the first interval by an n-point midpoint sum,
    each gradient from its own functional forward and backward."""
    from torch.func import functional_call

    a = torch.load(refs[0].path, weights_only=True)
    b = torch.load(refs[1].path, weights_only=True)
    total = {k: torch.zeros_like(v) for k, v in a.items()}
    x, y = queries
    for i in range(n):
        t = (i + 0.5) / n
        point = {k: (a[k] + t * (b[k] - a[k])).requires_grad_(True) for k in a}
        loss = nn.functional.cross_entropy(functional_call(model, point, (x,)), y)
        grads = torch.autograd.grad(loss, list(point.values()))
        for k, g in zip(point, grads):
            total[k] += g / n
    return {k: float(((b[k] - a[k]) * total[k]).sum()) for k in a}


def test_digits_completeness_error_shrinks_with_points_and_matches_the_oracle(digits_run) -> None:
    cfg, refs, queries, fresh = digits_run
    task = ClassificationTask()
    errors = {}
    for points in (1, 2, 4, 8):
        run = allocate_run(fresh(), None, queries, refs, task=task, rule="gauss", points=points, include_initial=True)
        errors[points] = [abs(iv.completeness_error) for iv in run.intervals]
    change = abs(run.intervals[0].measured_change)
    assert change > 0.1  # the behaviour really moved in the first interval
    first = [errors[p][0] for p in (1, 2, 4, 8)]
    assert first[0] > first[1] > first[2] > first[3]
    assert first[0] > 1e-3 * change  # one point is visibly inexact here ...
    assert first[3] < 1e-4 * change  # ... eight are not
    left = allocate_run(fresh(), None, queries, refs, task=task, rule="left", points=1, include_initial=True)
    assert abs(left.intervals[0].completeness_error) > 1e-2 * change

    oracle = _riemann_oracle(fresh(), refs, queries, n=600)
    gauss8 = allocate_run(fresh(), None, queries, refs, task=task, rule="gauss", points=8)
    got = gauss8.intervals[0].per_tensor
    assert set(got) == set(oracle)
    scale = max(abs(v) for v in oracle.values())
    for k in oracle:  # the midpoint sum's own error is O(1/n^2)
        assert got[k] == pytest.approx(oracle[k], abs=1e-5 * scale)
    assert math.fsum(oracle.values()) == pytest.approx(gauss8.intervals[0].measured_change, rel=1e-5)
    # and the first-order allocation is far from it
    first_order = allocate_run(fresh(), None, queries, refs, task=task, rule="left", points=1).intervals[0].per_tensor
    assert max(abs(first_order[k] - oracle[k]) for k in oracle) > 1e-3 * scale


def test_groups_sum_their_tensors_and_the_model_is_given_back(digits_run) -> None:
    cfg, refs, queries, fresh = digits_run
    model = fresh()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run = allocate_run(model, None, queries, refs, task=ClassificationTask(), include_initial=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert run.params == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    for level in ("module", "block", "layer", "tensor"):
        by = run.by(level)
        for i, iv in enumerate(run.intervals):
            expected: dict[str, float] = {}
            for name, v in iv.per_tensor.items():
                key = name.split(".")[0] if level in ("module", "block") else f"layer {name.split('.')[0]}" if level == "layer" else name
                expected[key] = expected.get(key, 0.0) + v
            assert set(by) == set(expected)
            for g, v in expected.items():
                assert by[g][i] == pytest.approx(v, rel=1e-12, abs=1e-15)
        totals = run.total(level)
        assert math.fsum(totals.values()) == pytest.approx(sum(iv.allocated for iv in run.intervals), rel=1e-9)
    d = run.to_dict()
    assert d["intervals"][0]["start"] == "initial" and len(d["intervals"]) == 2


def test_selection_leaves_moved_tensors_unallocated_and_counts_them_as_error(digits_run) -> None:
    cfg, refs, queries, fresh = digits_run
    run = allocate_run(fresh(), None, queries, refs, task=ClassificationTask(), params=("4.*",), include_initial=True)
    assert run.params == ["4.weight", "4.bias"]
    assert run.unallocated == ["0.weight", "0.bias", "2.weight", "2.bias"]
    full = allocate_run(fresh(), None, queries, refs, task=ClassificationTask(), include_initial=True)
    iv, fv = run.intervals[0], full.intervals[0]
    assert iv.per_tensor["4.weight"] == pytest.approx(fv.per_tensor["4.weight"], rel=1e-12)
    missing = sum(v for k, v in fv.per_tensor.items() if not k.startswith("4."))
    assert iv.completeness_error == pytest.approx(fv.completeness_error - missing, rel=1e-6, abs=1e-12)


def test_allocation_input_errors(digits_run, tmp_path: Path) -> None:
    cfg, refs, queries, fresh = digits_run
    task = ClassificationTask()
    with pytest.raises(InputError, match="at least two points"):
        allocate_run(fresh(), None, queries, refs[:1], task=task)
    with pytest.raises(InputError, match="odd number"):
        allocate_run(fresh(), None, queries, refs, task=task, rule="simpson", points=4)
    with pytest.raises(InputError, match="one value per query"):
        allocate_run(fresh(), lambda m, b: m(b[0]).sum(), queries, refs, task=task)

    def nan_on_third(model, batch):
        v = task.per_example_loss(model, batch)
        return torch.where(torch.arange(len(v)) == 2, torch.full_like(v, float("nan")), v)

    with pytest.raises(InputError, match="query 2 has a non-finite"):
        allocate_run(fresh(), nan_on_third, queries, refs, task=task)
    wrong = tmp_path / "other.pt"
    torch.save(nn.Linear(3, 2).double().state_dict(), wrong)
    from gradtrace.errors import CheckpointError

    with pytest.raises(CheckpointError, match="missing keys"):
        allocate_run(fresh(), None, queries, [refs[0], CheckpointRef(str(wrong), 1.0)], task=task)


# -- grouping of real model names -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,module,block,layer", [
    ("0.weight", "0", "0", "layer 0"),
    ("transformer.h.1.attn.c_attn.weight", "transformer.h.1.attn.c_attn", "transformer.h.1.attn", "layer 1"),
    ("transformer.h.0.ln_1.bias", "transformer.h.0.ln_1", "transformer.h.0.ln_1", "layer 0"),
    ("transformer.wte.weight", "transformer.wte", "transformer.wte", "(no layer)"),
    ("model.layers.12.mlp.down_proj.weight", "model.layers.12.mlp.down_proj", "model.layers.12.mlp", "layer 12"),
    ("base_model.model.transformer.h.1.attn.c_attn.lora_A.default.weight", "base_model.model.transformer.h.1.attn.c_attn [LoRA]",
     "base_model.model.transformer.h.1.attn", "layer 1"),
    ("base_model.model.transformer.h.1.attn.c_attn.lora_B.default.weight", "base_model.model.transformer.h.1.attn.c_attn [LoRA]",
     "base_model.model.transformer.h.1.attn", "layer 1"),
])
def test_group_of(name: str, module: str, block: str, layer: str) -> None:
    assert (group_of(name, "module"), group_of(name, "block"), group_of(name, "layer"), group_of(name, "tensor")) == \
        (module, block, layer, name)
    with pytest.raises(InputError, match="level must be one of"):
        group_of(name, "head")


# -- influence over time ----------------------------------------------------------------------------------------------

def test_critical_period_rule() -> None:
    c = critical_period(np.array([0.1, 0.6, 0.1, 0.2]))
    assert (c.first, c.last, c.peak) == (1, 1, 1) and c.share == pytest.approx(0.6) and c.concentration == pytest.approx(2.4)
    c = critical_period(np.array([0.3, 0.3, 0.4]))  # length 2: [0.6, 0.7] -> the larger
    assert (c.first, c.last) == (1, 2)
    c = critical_period(np.array([1.0, 1.0, 1.0, 1.0]))  # uniform: ties go to the earliest
    assert (c.first, c.last) == (0, 1) and c.concentration == pytest.approx(1.0)
    c = critical_period(np.array([0.2, 0.2, 0.2, 0.4]), mass=0.9)
    assert (c.first, c.last) == (0, 3)
    with pytest.raises(InputError, match="mass"):
        critical_period(np.array([1.0]), mass=0.0)


def test_influence_over_time_against_brute_force(tmp_path: Path, h) -> None:
    from gradtrace import Attributor, FeaturizeConfig, featurize

    model = h.make_mlp(d_in=4, hidden=3, n_out=3)
    ckpts = h.write_checkpoints(lambda s: h.make_mlp(d_in=4, hidden=3, n_out=3, seed=s), tmp_path / "ck", [0.5, 0.2, 0.1])
    train = h.classification_data(23, d_in=4, seed=1)
    queries = h.classification_data(3, d_in=4, seed=2)
    task = ClassificationTask()
    refs = [CheckpointRef(p, lr, step=i) for i, (p, lr) in enumerate(ckpts)]
    store = featurize(model, task, refs, train, tmp_path / "store", FeaturizeConfig(shard_size=7, dtype="float64"), progress=False)
    att = Attributor(store, model, task)
    qf = att.query_features(queries)
    tl = influence_over_time(att, qf, k=4, chunk=5, mass=0.5)
    # per checkpoint, by the double loop of one-example backward passes
    per_ckpt = np.stack([h.brute_force_scores(model, [c], h.ce_per_example, train, h.ce_per_example, queries).numpy()
                         for c in ckpts])  # [C, Q, N]
    np.testing.assert_allclose(tl.abs_mass, np.abs(per_ckpt).sum(axis=2), rtol=1e-9)
    np.testing.assert_allclose(tl.signed, per_ckpt.sum(axis=2), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(tl.abs_share.sum(axis=0), 1.0)
    for c in range(3):
        for q in range(3):
            order = np.argsort(-per_ckpt[c, q], kind="stable")[:4]
            assert tl.top[c, q].tolist() == order.tolist()
            assert tl.bottom[c, q].tolist() == np.argsort(per_ckpt[c, q], kind="stable")[:4].tolist()
            np.testing.assert_allclose(tl.top_scores[c, q], per_ckpt[c, q, order], rtol=1e-9)
    assert tl.behaviour_critical() == critical_period(tl.abs_share.mean(axis=1), 0.5)
    d = tl.to_dict(store.ids)
    assert d["queries"][0]["periods"][0]["proponents"][0]["train"] == store.ids[int(tl.top[0, 0, 0])]


# -- across runs ------------------------------------------------------------------------------------------------------

def test_run_against_itself_gives_correlation_one_and_full_overlap() -> None:
    s = np.random.default_rng(0).normal(size=(4, 50))
    comp = compare_runs(s, s, k=10)
    np.testing.assert_allclose(comp.spearman, 1.0)
    np.testing.assert_allclose(comp.jaccard, 1.0)
    np.testing.assert_allclose(comp.jaccard_opponents, 1.0)
    np.testing.assert_allclose(comp.differ_z, 0.0)
    stab = split_half_stability([s, s, s, s], k=5)
    assert [r["m"] for r in stab] == [1, 2] and all(r["spearman"] == pytest.approx(1.0) and r["jaccard"] == 1.0 for r in stab)
    # a positive rescaling of a run changes nothing
    np.testing.assert_allclose(compare_runs(s, 3 * s).spearman, 1.0)


def test_spearman_and_overlap_against_peers() -> None:
    from scipy.stats import spearmanr

    rng = np.random.default_rng(1)
    a = rng.integers(0, 6, size=(3, 40)).astype(float)  # many ties
    b = a + rng.normal(scale=2.0, size=a.shape)
    np.testing.assert_allclose(spearman_rows(a, b), [spearmanr(x, y)[0] for x, y in zip(a, b)], rtol=1e-12)
    x, y = rng.normal(size=(2, 30)), rng.normal(size=(2, 30))
    for q in range(2):
        ta, tb = set(np.argsort(-x[q])[:7]), set(np.argsort(-y[q])[:7])
        assert topk_jaccard(x, y, 7)[q] == pytest.approx(len(ta & tb) / len(ta | tb))
    idx, dz = most_different(x, y, n=3)
    z = x / x.std(axis=1, keepdims=True) - y / y.std(axis=1, keepdims=True)
    for q in range(2):
        assert idx[q].tolist() == np.argsort(-np.abs(z[q]))[:3].tolist()
        np.testing.assert_allclose(dz[q], z[q, idx[q]])
    with pytest.raises(InputError, match="differ in shape"):
        compare_runs(x, y[:, :5])


def test_averaging_noisy_runs_stabilises_the_ranking() -> None:
    rng = np.random.default_rng(2)
    truth = rng.normal(size=(5, 200))
    runs = [truth + rng.normal(scale=1.5, size=truth.shape) for _ in range(6)]
    stab = split_half_stability(runs, k=20, max_splits=10, seed=0)
    assert [r["m"] for r in stab] == [1, 2, 3]
    assert stab[0]["spearman"] < stab[1]["spearman"] < stab[2]["spearman"]
    assert stab[0]["n_splits"] == 10 and stab[2]["n_splits"] == 10  # C(6,3) pairs = 10
    single = np.nanmean([spearman_rows(r, truth).mean() for r in runs])
    assert spearman_rows(average_runs(runs), truth).mean() > single


# -- the benchmark's planted set-up, small ----------------------------------------------------------------------------

@pytest.mark.slow
def test_planted_backdoor_is_allocated_to_its_layer_and_period(tmp_path: Path) -> None:
    from setups.allocate_runs import PlantedConfig, parameter_change_norms, planted_run

    from gradtrace.demos.digits import make_mlp

    cfg = PlantedConfig(hidden=32, epochs_per_period=3, n_queries=60, seed=3)
    run = planted_run(cfg, tmp_path)
    assert run.asr_before < 0.2 < 0.8 < run.asr_after  # the backdoor was learned in the planted period
    task = ClassificationTask()
    cell = (cfg.planted_module, cfg.planted_period)

    def share(queries) -> float:
        by = allocate_run(make_mlp(cfg.hidden, cfg.seed), None, queries, run.refs, task=task).by("module")
        helped = {(g, i): max(-float(v[i]), 0.0) for g, v in by.items() for i in range(len(v))}  # a loss: decreases
        return helped[cell] / sum(helped.values())

    norms = parameter_change_norms(run.refs, lambda n: group_of(n, "module"))
    norm_share = float(norms[cell[0]][cell[1]]) / sum(float(v.sum()) for v in norms.values())
    backdoor = share(run.backdoor_queries)
    assert backdoor > 0.7 and backdoor > 2 * norm_share
    assert share(run.clean_queries) < 0.2  # the control behaviour is not learned there


def test_runs_report_draws_a_bounded_sample_and_escapes(h) -> None:
    from gradtrace.allocate import report

    rng = np.random.default_rng(3)
    n = report.SCATTER_POINTS + 700
    a, b = rng.normal(size=(1, n)), rng.normal(size=(1, n))
    a[0, 5] = 50.0  # the most extreme example is always drawn
    ids = [f"<b>z{i}</b>" for i in range(n)]
    html_text = report.runs_html(["<run1>", "run2"], [(0, 1, compare_runs(a, b, k=5))], ["<q>"], ids, [a, b], None, None)
    (scatter,) = [f for f in h.page_figures(html_text) if f["data"][-1]["mode"] == "markers"]
    points = scatter["data"][-1]
    assert len(points["x"]) == len(points["text"]) == report.SCATTER_POINTS
    assert "&lt;b&gt;z5&lt;/b&gt;" in points["text"]  # plotly shows the escaped id literally
    markup = h.without_scripts(html_text)
    assert "<b>z" not in markup and "<run1>" not in markup and "<q>" not in markup
