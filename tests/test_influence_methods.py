"""K-FAC, EK-FAC and TrackStar against brute-force formulas on a tiny MLP in
float64: the Fisher written out as a dense Kronecker-factored matrix and
inverted with torch.linalg; TrackStar's normalised dot products in explicit
loops. Then the artefacts: factors refused when the store changed, missing
ones explained, stores that cannot serve a method refused."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gradtrace as gt
from gradtrace.errors import ConfigMismatchError, InputError
from gradtrace.grads.projection import DenseProjector, kronecker_factors
from gradtrace.scoring.factors import fit_factors, load_factors
from gradtrace.scoring.methods import EKFACMethod, KFACMethod, TrackStarMethod, TrackStarTransform, fit_whitening
from gradtrace.unlearn.train import TrainConfig, train

D_IN, HIDDEN, N_OUT = 4, 5, 3
NAMES = ["0.weight", "0.bias", "2.weight", "2.bias"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, h):
    """An Adam-trained run of a tiny MLP (2 checkpoints, optimizer states) and
    stores of it: exact (none), factored, Kronecker-projected."""
    root = tmp_path_factory.mktemp("influence")
    ns = types.SimpleNamespace(h=h, root=root)
    ns.mlp = lambda: h.make_mlp(d_in=D_IN, hidden=HIDDEN, n_out=N_OUT)
    ns.xy = h.classification_data(19, d_in=D_IN, n_out=N_OUT, seed=1)
    ns.queries = h.classification_data(3, d_in=D_IN, n_out=N_OUT, seed=7)
    config = TrainConfig(steps=12, lr=0.05, batch_size=4, optimizer="adam", n_checkpoints=2)
    ns.rec = train(ns.mlp(), gt.ClassificationTask(), ns.xy, config, checkpoint_dir=root / "ckpt")
    ns.refs = ns.rec.checkpoints
    ns.states = [torch.load(p, weights_only=True) for p in ns.rec.optimizer_states]
    ns.task = gt.ClassificationTask()

    def store(name, projection, **kw):
        fc = gt.FeaturizeConfig(projection=projection, dtype="float64", batch_size=5, shard_size=7)
        return gt.featurize(ns.mlp(), ns.task, ns.refs, ns.xy, root / name, fc, progress=False, **kw)

    ns.make_store = store
    ns.none = store("none", gt.ProjectionConfig("none"))
    ns.factored = store("factored", gt.ProjectionConfig("factored"))
    ns.kron = store("kron", gt.ProjectionConfig("kronecker", 9, seed=2))
    for st in (ns.none, ns.factored, ns.kron):
        fit_factors(st, ns.mlp(), ns.task, ns.xy, progress=False)
    ns.attributor = lambda st: gt.Attributor(st, ns.mlp(), ns.task)
    return ns


# -- the oracle: activations and output gradients written out for Linear-Tanh-Linear with cross-entropy ----
def layer_factors_by_hand(model, x, y):
    """Per layer, each example's (input with a 1 for the bias, output gradient
    of its own cross-entropy loss), from the closed-form backward pass."""
    w0, b0, w1, b1 = (p.detach() for p in model.parameters())
    h = torch.tanh(x @ w0.T + b0)
    p = torch.softmax(h @ w1.T + b1, dim=1)
    g1 = p - F.one_hot(y, N_OUT).to(p.dtype)
    g0 = (g1 @ w1) * (1 - h**2)
    ones = torch.ones(x.shape[0], 1, dtype=x.dtype)
    return [(torch.cat([x, ones], 1), g0), (torch.cat([h, ones], 1), g1)]


def at_checkpoint(ns, c):
    model = ns.mlp()
    model.load_state_dict(torch.load(ns.refs[c].path, weights_only=True))
    return model


def projected(ns, pairs, c_projection):
    """The pairs projected with the store's Kronecker factors (``None``: as they are)."""
    if c_projection is None:
        return pairs
    out = []
    for name, (x, g) in zip(("0", "2"), pairs):
        f = kronecker_factors(name, x.shape[1], g.shape[1], c_projection, torch.float64, torch.device("cpu"))
        out.append((x if f.p_in is None else x @ f.p_in, g if f.p_out is None else g @ f.p_out))
    return out


def dense_fisher_inverse(x, g, corrected, damping=0.1):
    """``(F + lambda I)^-1`` of one layer as a dense matrix over row-major
    ``vec(G)``, ``G = g x^T`` (index ``o * d_in + i``): ``F = S (x) A`` for
    K-FAC, ``(Q_S (x) Q_A) diag(Lambda) (Q_S (x) Q_A)^T`` for EK-FAC."""
    n = x.shape[0]
    a = x.T @ x / n
    s = g.T @ g / n
    ea, qa = torch.linalg.eigh(a)
    es, qs = torch.linalg.eigh(s)
    if corrected:
        q = torch.kron(qs, qa)
        vecs = torch.stack([torch.outer(g[k], x[k]).reshape(-1) for k in range(n)])
        lam = ((vecs @ q) ** 2).mean(0)
        fisher = q @ torch.diag(lam) @ q.T
    else:
        fisher = torch.kron(s, a)
        lam = torch.kron(es.clamp_min(0), ea.clamp_min(0))
    return torch.linalg.inv(fisher + damping * lam.mean() * torch.eye(fisher.shape[0], dtype=torch.float64))


def influence_oracle(ns, corrected, projection=None, checkpoints="all", fisher_labels=None):
    """``sum_c w_c sum_l vec(G_q)^T (F_l + lambda I)^-1 vec(G_z)`` with dense
    matrices; ``F`` from the gradients at ``fisher_labels`` (default: the training labels)."""
    out = torch.zeros(ns.queries[0].shape[0], ns.xy[0].shape[0], dtype=torch.float64)
    n_ckpt = len(ns.refs)
    for c in range(n_ckpt):
        weight = ns.refs[c].lr if checkpoints == "all" else float(c == n_ckpt - 1)
        if not weight:
            continue
        model = at_checkpoint(ns, c)
        train_pairs = projected(ns, layer_factors_by_hand(model, *ns.xy), projection)
        query_pairs = projected(ns, layer_factors_by_hand(model, *ns.queries), projection)
        labels = ns.xy[1] if fisher_labels is None else fisher_labels
        fisher_pairs = projected(ns, layer_factors_by_hand(model, ns.xy[0], labels), projection)
        for (x, g), (xq, gq), (xf, gf) in zip(train_pairs, query_pairs, fisher_pairs):
            inverse = dense_fisher_inverse(xf, gf, corrected)
            gz = torch.stack([torch.outer(g[k], x[k]).reshape(-1) for k in range(x.shape[0])])
            gqv = torch.stack([torch.outer(gq[k], xq[k]).reshape(-1) for k in range(xq.shape[0])])
            out += weight * (gqv @ inverse @ gz.T)
    return out.numpy()


def test_hand_written_factors_are_the_gradients(run, h):
    """The oracle's own check: g x^T per layer is each example's gradient."""
    model = at_checkpoint(run, 1)
    grads = h.oracle_grads(model, h.ce_per_example, h.singles(run.xy), NAMES)
    (x0, g0), (x1, g1) = layer_factors_by_hand(model, *run.xy)
    k = 4
    np.testing.assert_allclose(grads[k, : HIDDEN * D_IN].reshape(HIDDEN, D_IN), torch.outer(g0[k], x0[k, :-1]), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads[k, -N_OUT:], g1[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", [KFACMethod(), EKFACMethod()], ids=["kfac", "ekfac"])
@pytest.mark.parametrize("kind", ["none", "factored"])
def test_kfac_and_ekfac_equal_the_dense_fisher_inverse(run, method, kind):
    store = run.none if kind == "none" else run.factored
    got = run.attributor(store).score(run.queries, variant=method.name)
    want = influence_oracle(run, method.corrected)
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-12)
    assert np.abs(want).max() > 1e-3  # not a comparison of zeros


@pytest.mark.parametrize("corrected", [False, True], ids=["kfac", "ekfac"])
def test_projected_ekfac_on_a_kronecker_store_is_the_fisher_of_projected_factors(run, corrected):
    """LoGra-style: the factors of the projected inputs and output gradients."""
    method = EKFACMethod() if corrected else KFACMethod()
    got = run.attributor(run.kron).score(run.queries, variant=method)
    want = influence_oracle(run, corrected, projection=gt.ProjectionConfig.from_dict(run.kron.settings.projection))
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-12)


def test_last_checkpoint_alone_and_damping(run):
    att = run.attributor(run.none)
    got = att.score(run.queries, variant=EKFACMethod(checkpoints="last"))
    np.testing.assert_allclose(got, influence_oracle(run, True, checkpoints="last"), rtol=1e-8, atol=1e-12)
    # more damping shrinks every score toward TracIn / lambda: the ranking differs, the scale drops
    loose = att.score(run.queries, variant=EKFACMethod(damping=100.0))
    assert np.abs(loose).max() < np.abs(att.score(run.queries, variant="ekfac")).max()


def test_self_influence_is_the_diagonal_and_top_k_breakdown_agree(run):
    att = run.attributor(run.factored)
    train_as_queries = att.score(run.xy, variant="ekfac")
    np.testing.assert_allclose(att.self_influence("ekfac"), np.diag(train_as_queries), rtol=1e-8)
    exact = run.attributor(run.none)
    np.testing.assert_allclose(exact.self_influence("kfac"), np.diag(att.score(run.xy, variant="kfac")), rtol=1e-8)
    np.testing.assert_allclose(exact.self_influence("fisher"), np.diag(exact.score(run.xy, variant="fisher")), rtol=1e-8)
    np.testing.assert_allclose(exact.self_influence(), gt.scoring.self_influence(run.none), rtol=0)
    qf = att.query_features(run.queries)
    full = att.score(qf, variant="ekfac")
    top = att.top_k(qf, k=4, variant="ekfac")
    np.testing.assert_allclose(top.scores, -np.sort(-full, axis=1)[:, :4], rtol=1e-12)
    parts = att.breakdown(qf, [0, 5, 18], variant="ekfac")
    np.testing.assert_allclose(parts.sum(0), full[:, [0, 5, 18]], rtol=1e-10)
    assert top.meaning.startswith("EK-FAC")
    with pytest.raises(InputError, match="self-influence is not defined for variant 'cosine'"):
        att.self_influence("cosine")


def test_factors_record_settings_and_reload(run):
    fitted = load_factors(run.none)
    assert fitted.settings["fisher"] == "empirical" and fitted.settings["checkpoints"] == [0, 1]
    assert [(l["d_in"], l["d_out"]) for l in fitted.layout] == [(D_IN + 1, HIDDEN), (HIDDEN + 1, N_OUT)]


def test_missing_factors_explain_the_command(run):
    store = run.make_store("nofactors", gt.ProjectionConfig("factored"))
    with pytest.raises(InputError, match=r"no fitted ekfac factors named 'ekfac'.*gradtrace fit-factors .*nofactors --task"):
        run.attributor(store).score(run.queries, variant="ekfac")


def test_factors_are_refused_when_the_store_changed(run):
    store = run.make_store("changes", gt.ProjectionConfig("factored"))
    fit_factors(store, run.mlp(), run.task, run.xy, checkpoints="last", progress=False)
    att = run.attributor(store)
    att.score(run.queries, variant=EKFACMethod(checkpoints="last"))
    with pytest.raises(InputError, match=r"needs factors at checkpoints \[0\].*checkpoints='last'"):
        att.score(run.queries, variant="ekfac")
    more = run.h.classification_data(4, d_in=D_IN, n_out=N_OUT, seed=11)
    fc = gt.FeaturizeConfig(projection=gt.ProjectionConfig("factored"), dtype="float64", batch_size=5, shard_size=7)
    gt.featurize(run.mlp(), run.task, run.refs, more, store.root, fc, append=True, progress=False)
    changed = gt.GradientStore.open(store.root)
    with pytest.raises(ConfigMismatchError, match=r"factors 'ekfac' of the store .* were fitted before the store changed; fit them again \(gradtrace fit-factors(.|\n)*segments \(sha256\)"):
        run.attributor(changed).score(run.queries, variant=EKFACMethod(checkpoints="last"))


def test_fit_factors_checks_its_inputs(run):
    other = run.h.classification_data(19, d_in=D_IN, n_out=N_OUT, seed=2)
    with pytest.raises(InputError, match="not the training examples the store"):
        fit_factors(run.none, run.mlp(), run.task, other, progress=False)
    with pytest.raises(InputError, match="holds 19 training examples; got 5"):
        fit_factors(run.none, run.mlp(), run.task, (other[0][:5], other[1][:5]), progress=False)
    with pytest.raises(InputError, match="checkpoints must be 'all' or 'last'"):
        fit_factors(run.none, run.mlp(), run.task, run.xy, checkpoints="first", progress=False)
    with pytest.raises(InputError, match="factors name must be"):
        fit_factors(run.none, run.mlp(), run.task, run.xy, name="../x", progress=False)
    dense = run.make_store("dense", gt.ProjectionConfig("dense", 8, seed=0))
    with pytest.raises(InputError, match=r"'dense'.*mixes every layer.*use variant 'fisher'"):
        fit_factors(dense, run.mlp(), run.task, run.xy, progress=False)
    with pytest.raises(InputError, match=r"variant 'ekfac' need per-layer gradients"):
        run.attributor(dense).score(run.queries, variant="ekfac")
    with pytest.raises(InputError, match="damping must be a positive number"):
        EKFACMethod(damping=0)


# -- TrackStar ---------------------------------------------------------------------------------------------------
def adam_normaliser(state, eps=None):
    """``1/(sqrt(v / (1 - beta2^t)) + eps)`` of every parameter, flat, read from the state dict by hand."""
    group = state["param_groups"][0]
    beta2 = group["betas"][1]
    e = group["eps"] if eps is None else eps
    parts = []
    for pid in group["params"]:
        st = state["state"][pid]
        v = st["exp_avg_sq"].to(torch.float64) / (1 - beta2 ** float(st["step"]))
        parts.append((1.0 / (v.sqrt() + e)).reshape(-1))
    return torch.cat(parts)


def trackstar_oracle(ns, projection=None, whitening_examples=None, damping=0.1, checkpoints="all"):
    """``sum_c w_c cos(W P D g_q, W P D g_z)`` with explicit loops; with
    whitening, ``cos_M(a, b) = a^T M b / sqrt(a^T M a b^T M b)``,
    ``M = W^2 = (Phi^T Phi / n + lambda I)^-1``."""
    h = ns.h
    n_q, n_z = ns.queries[0].shape[0], ns.xy[0].shape[0]
    out = torch.zeros(n_q, n_z, dtype=torch.float64)
    for c, ref in enumerate(ns.refs):
        weight = ref.lr if checkpoints == "all" else float(c == len(ns.refs) - 1)
        model = at_checkpoint(ns, c)
        d = adam_normaliser(ns.states[c])
        p = torch.eye(d.numel(), dtype=torch.float64) if projection is None else DenseProjector(d.numel(), projection).matrix(torch.float64)

        def phi(data):
            return (h.oracle_grads(model, h.ce_per_example, h.singles(data), NAMES) * d) @ p

        gz, gq = phi(ns.xy), phi(ns.queries)
        m = torch.eye(p.shape[1], dtype=torch.float64)
        if whitening_examples is not None:
            t = phi(whitening_examples)
            r = t.T @ t / t.shape[0]
            lam = damping * torch.linalg.eigvalsh(r).clamp_min(0).mean()
            m = torch.linalg.inv(r + lam * torch.eye(r.shape[0], dtype=torch.float64))
        for i in range(n_q):
            for j in range(n_z):
                a, b = gq[i], gz[j]
                out[i, j] += weight * (a @ m @ b) / torch.sqrt((a @ m @ a) * (b @ m @ b))
    return out.numpy()


@pytest.fixture(scope="module")
def ts_dense(run):
    return run.make_store("ts_dense", gt.ProjectionConfig("dense", 12, seed=5), train_transform=TrackStarTransform(run.states, run.refs))


def test_trackstar_on_exact_gradients_equals_the_loops(run):
    att = run.attributor(run.none)
    got = att.score(run.queries, variant=TrackStarMethod(run.states))
    np.testing.assert_allclose(got, trackstar_oracle(run), rtol=1e-9, atol=1e-12)
    last = att.score(run.queries, variant=TrackStarMethod(run.states, checkpoints="last"))
    np.testing.assert_allclose(last, trackstar_oracle(run, checkpoints="last"), rtol=1e-9, atol=1e-12)


def test_trackstar_on_a_projected_store_equals_the_loops(run, ts_dense):
    att = run.attributor(ts_dense)
    got = att.score(run.queries, variant=TrackStarMethod(run.states))
    want = trackstar_oracle(run, projection=gt.ProjectionConfig("dense", 12, seed=5))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert np.abs(got).max() <= sum(r.lr for r in run.refs) + 1e-12


def test_trackstar_whitening_equals_the_loops(run, ts_dense):
    att = run.attributor(ts_dense)
    task_set = run.h.classification_data(30, d_in=D_IN, n_out=N_OUT, seed=21)
    fit_whitening(att, task_set, TrackStarMethod(run.states), name="task")
    got = att.score(run.queries, variant=TrackStarMethod(run.states, whitening="task"))
    want = trackstar_oracle(run, projection=gt.ProjectionConfig("dense", 12, seed=5), whitening_examples=task_set)
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-12)
    # whitening fitted with other optimizer states is refused
    other = [dict(s) for s in run.states[::-1]]
    with pytest.raises(InputError, match="fitted with other optimizer states"):
        att.score(run.queries, variant=TrackStarMethod(other, whitening="task"))
    with pytest.raises(InputError, match=r"no fitted trackstar-whitening factors named 'absent'"):
        att.score(run.queries, variant=TrackStarMethod(run.states, whitening="absent"))


def test_trackstar_refuses_what_it_cannot_score(run):
    att = run.attributor(run.kron)
    with pytest.raises(InputError, match=r"'kronecker' store needs the training gradients normalised.*TrackStarTransform"):
        att.score(run.queries, variant=TrackStarMethod(run.states))
    with pytest.raises(InputError, match=r"trackstar needs one optimizer state dict per checkpoint \(2\); got None"):
        run.attributor(run.none).score(run.queries, variant="trackstar")
    with pytest.raises(InputError, match="self-influence is not defined for variant 'trackstar'"):
        run.attributor(run.none).self_influence(TrackStarMethod(run.states))
    with pytest.raises(InputError, match="does not support projection kind 'factored'"):
        run.attributor(run.factored).score(run.queries, variant=TrackStarMethod(run.states))


def test_score_variants_takes_the_new_methods(run):
    from gradtrace.unlearn.variants import VariantConfig, score_variants

    config = VariantConfig(variants=("ekfac", "kfac", "trackstar"), kfac_damping=0.1)
    got = score_variants(run.none, run.mlp(), run.task, run.queries, None, config, adam_states=run.states)
    np.testing.assert_allclose(got["ekfac"], influence_oracle(run, True), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(got["kfac"], influence_oracle(run, False), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(got["trackstar"], trackstar_oracle(run), rtol=1e-9, atol=1e-12)


# -- layers that see several tokens per example --------------------------------------------------------------------
class Pooled(torch.nn.Module):
    """Tokens -> Linear -> tanh -> masked mean -> Linear: the first layer sees
    several tokens per example, masked tokens get exactly zero gradient."""

    def __init__(self, seed: int):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.inp = torch.nn.Linear(3, 4)
            self.out = torch.nn.Linear(4, 3)
        self.double()

    def forward(self, x, mask):
        h = torch.tanh(self.inp(x))
        return self.out((h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))


class PooledTask:
    def per_example_loss(self, model, batch):
        x, mask, y = batch
        return F.cross_entropy(model(x, mask), y, reduction="none")


def tokens_by_hand(model, x, mask, y):
    """Per layer: every token's (input with a 1, output gradient), ``[n, T, .]``."""
    w0, b0, w1, b1 = (p.detach() for p in model.parameters())
    h = torch.tanh(x @ w0.T + b0)
    count = mask.sum(1, keepdim=True)
    pooled = (h * mask[..., None]).sum(1) / count
    g1 = torch.softmax(pooled @ w1.T + b1, 1) - F.one_hot(y, 3).to(x.dtype)
    g0 = (g1 @ w1)[:, None, :] * (mask / count)[..., None] * (1 - h**2)
    ones = torch.ones(*x.shape[:2], 1, dtype=x.dtype)
    return [(torch.cat([x, ones], 2), g0), (torch.cat([pooled, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)[:, None], g1[:, None])]


def test_ekfac_over_tokens_counts_live_tokens_in_A_and_sums_tokens_per_example(tmp_path, h):
    gen = torch.Generator().manual_seed(3)
    n, t = 13, 4
    x = torch.randn(n, t, 3, generator=gen, dtype=torch.float64)
    mask = (torch.rand(n, t, generator=gen) < 0.7).to(torch.float64)
    mask[:, 0] = 1.0  # every example has a token
    y = torch.randint(0, 3, (n,), generator=gen)
    qx, qm, qy = x[:3] * 0.5, torch.ones(3, t, dtype=torch.float64), y[:3].flip(0)
    refs = h.write_checkpoints(Pooled, tmp_path / "ckpt", [0.3, 0.2])
    task = PooledTask()
    fc = gt.FeaturizeConfig(projection=gt.ProjectionConfig("none"), dtype="float64", batch_size=5, shard_size=6)
    store = gt.featurize(Pooled(0), task, refs, (x, mask, y), tmp_path / "store", fc, progress=False)
    fit_factors(store, Pooled(0), task, (x, mask, y), progress=False)
    got = gt.Attributor(store, Pooled(0), task).score((qx, qm, qy), variant="ekfac")

    want = torch.zeros(3, n, dtype=torch.float64)
    for path, lr in refs:
        model = Pooled(0)
        model.load_state_dict(torch.load(path, weights_only=True))
        for (xs, gs), (xq, gq) in zip(tokens_by_hand(model, x, mask, y), tokens_by_hand(model, qx, qm, qy)):
            live = (gs != 0).any(-1)
            a = xs[live].T @ xs[live] / live.sum()
            s = torch.einsum("nto,ntp->op", gs, gs) / n
            qa, qs = torch.linalg.eigh(a)[1], torch.linalg.eigh(s)[1]
            q = torch.kron(qs, qa)
            gz = torch.einsum("nto,nti->noi", gs, xs).reshape(n, -1)
            lam = ((gz @ q) ** 2).mean(0)
            fisher = q @ torch.diag(lam) @ q.T + 0.1 * lam.mean() * torch.eye(q.shape[0], dtype=torch.float64)
            gqv = torch.einsum("nto,nti->noi", gq, xq).reshape(3, -1)
            want += lr * gqv @ torch.linalg.inv(fisher) @ gz.T
    assert int((mask == 0).sum()) > 0
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-8, atol=1e-12)


def test_the_same_scores_through_every_store_that_holds_the_exact_gradient(run):
    """A Kronecker store whose factors are the identity (every layer smaller
    than the side) and a float32 factored store give the exact store's scores."""
    exact = run.attributor(run.none).score(run.queries, variant="ekfac")
    wide = run.make_store("kron_identity", gt.ProjectionConfig("kronecker", 49, seed=2))
    fit_factors(wide, run.mlp(), run.task, run.xy, progress=False)
    np.testing.assert_allclose(run.attributor(wide).score(run.queries, variant="ekfac"), exact, rtol=1e-9, atol=1e-12)
    fc = gt.FeaturizeConfig(projection=gt.ProjectionConfig("factored"), dtype="float32", batch_size=5, shard_size=7)
    single = gt.featurize(run.mlp(), run.task, run.refs, run.xy, run.root / "factored32", fc, progress=False)
    fit_factors(single, run.mlp(), run.task, run.xy, progress=False)
    att = run.attributor(single)
    np.testing.assert_allclose(att.score(run.queries, variant="ekfac"), exact, rtol=1e-4, atol=1e-6 * np.abs(exact).max())
    np.testing.assert_allclose(att.top_k(run.queries, k=3, variant="kfac").scores,
                               -np.sort(-run.attributor(run.none).score(run.queries, variant="kfac"), axis=1)[:, :3], rtol=1e-4)


def test_true_fisher_fits_on_labels_drawn_by_the_task(run, monkeypatch):
    """fisher='true': the factors come from task.sampled_loss (here labels shifted
    by one, so the oracle knows them); the scored gradients stay the training loss's."""

    def shifted(self, model, batch, generator):
        return F.cross_entropy(model(batch[0]), (batch[1] + 1) % N_OUT, reduction="none")

    monkeypatch.setattr(gt.ClassificationTask, "sampled_loss", shifted)
    fit_factors(run.factored, run.mlp(), run.task, run.xy, name="true", fisher="true", progress=False)
    assert load_factors(run.factored, "true").settings["fisher"] == "true"
    got = run.attributor(run.factored).score(run.queries, variant=EKFACMethod(factors="true"))
    want = influence_oracle(run, True, fisher_labels=(run.xy[1] + 1) % N_OUT)
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-12)
    assert not np.allclose(got, influence_oracle(run, True), rtol=1e-3)


def test_sampled_labels_follow_the_model_distribution(run):
    task = gt.ClassificationTask()
    x = torch.zeros(3000, 2, dtype=torch.float64)
    uniform = torch.nn.Linear(2, 3).double()
    torch.nn.init.zeros_(uniform.weight)
    with torch.no_grad():
        uniform.bias.copy_(torch.log(torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)))
    loss = task.sampled_loss(uniform, (x, None), torch.Generator().manual_seed(0))
    # the loss is -log p(label): read the labels back from it
    drawn = np.round(np.exp(-loss.detach().numpy()), 6)
    shares = [float(np.mean(drawn == p)) for p in (0.2, 0.3, 0.5)]
    np.testing.assert_allclose(shares, [0.2, 0.3, 0.5], atol=0.03)
    again = task.sampled_loss(uniform, (x, None), torch.Generator().manual_seed(0))
    assert torch.equal(loss, again)
    with pytest.raises(InputError, match="fisher must be one of"):
        fit_factors(run.none, run.mlp(), run.task, run.xy, fisher="ggn", progress=False)
    with pytest.raises(InputError, match=r"fisher='true' needs a task with sampled_loss.*PooledTask has none"):
        fit_factors(run.none, run.mlp(), PooledTask(), run.xy, fisher="true", progress=False)
