"""Score methods through the registry, the executor seam, and the store's
independence of the gradient engine."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import gradtrace as gt
from gradtrace.data import as_source
from gradtrace.errors import InputError
from gradtrace.execution import LocalExecutor
from gradtrace.grads.compute import compute_shard, default_loader
from gradtrace.grads.per_example import GradientFeaturizer
from gradtrace.scoring.methods import (
    AdamMethod, FisherMethod, MethodBase, available_methods, get_method, register_method, unregister_method,
)
from gradtrace.store import GradientStore
from gradtrace.unlearn.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory, h):
    """An Adam-trained run (2 checkpoints, their optimizer states), a dense
    store of it, and makers of its model, data and attributor."""
    root = tmp_path_factory.mktemp("methods")
    ns = types.SimpleNamespace(
        mlp=lambda: h.make_mlp(d_in=4, hidden=5), data=lambda n, seed: h.classification_data(n, d_in=4, seed=seed),
        files=h.store_files,
    )
    ns.xy = ns.data(23, 1)
    config = TrainConfig(steps=12, lr=0.02, batch_size=4, optimizer="adam", n_checkpoints=2)
    ns.rec = train(ns.mlp(), gt.ClassificationTask(), ns.xy, config, checkpoint_dir=root / "ckpt")
    ns.states = [torch.load(p, weights_only=True) for p in ns.rec.optimizer_states]
    fc = gt.FeaturizeConfig(projection=gt.ProjectionConfig("dense", 16, seed=3), dtype="float64", batch_size=5, shard_size=6)
    ns.store = gt.featurize(ns.mlp(), gt.ClassificationTask(), ns.rec.checkpoints, ns.xy, root / "store", fc, progress=False)
    ns.attributor = lambda store, **kw: gt.Attributor(store, ns.mlp(), gt.ClassificationTask(), **kw)
    return ns


def expected_top_k(scores: np.ndarray, k: int, largest: bool) -> tuple[np.ndarray, np.ndarray]:
    """Best first, ties to the lower index."""
    order = np.stack([np.lexsort((np.arange(row.size), -row if largest else row))[:k] for row in scores])
    return order, np.take_along_axis(scores, order, 1)


# -- registry -------------------------------------------------------------------
def test_unknown_variant_names_the_available_ones(run):
    store = run.store
    att = run.attributor(store)
    with pytest.raises(InputError, match=r"variant must be one of \('raw', 'cosine', 'adam', 'fisher'.*; got 'magic'"):
        att.top_k(run.data(2, 5), variant="magic")
    with pytest.raises(InputError, match="variant must be a method name"):
        att.score(run.data(2, 5), variant=3)
    assert available_methods()[:4] == ("raw", "cosine", "adam", "fisher")
    assert gt.scoring.VARIANTS == ("raw", "cosine", "adam", "fisher", "kfac", "ekfac", "trackstar")
    assert gt.scoring.SCORE_MEANING["fisher"] == get_method("fisher").meaning


class SquaredCosine(MethodBase):
    """``sum_c lr_c cos(g_z, g_q)^2``: a method the library does not have."""

    name = "squared_cosine"
    meaning = "test method"
    projections = ("none", "dense")

    def prepare(self, store, queries, cache):
        unit = [u.to(queries.compute) for u in queries.features.unit]
        return lambda c, rows, norms: (unit[c] @ rows.T).to(queries.accumulate).pow_(2).mul_(queries.lrs[c])


def test_a_registered_method_is_accepted_and_equals_brute_force(run):
    store = run.store
    register_method(SquaredCosine())
    try:
        with pytest.raises(InputError, match="registered already"):
            register_method(SquaredCosine())
        att = run.attributor(store)
        qf = att.query_features(run.data(3, 5))
        top = att.top_k(qf, k=4, variant="squared_cosine")
        want = np.zeros((3, store.n_examples))
        for c, lr in enumerate(store.learning_rates):
            for a, b in store.shard_ranges():
                rows = np.asarray(store.features(c, a, b), dtype=np.float64)
                want[:, a:b] += lr * (qf.unit[c].numpy() @ rows.T) ** 2
        idx, vals = expected_top_k(want, 4, True)
        np.testing.assert_array_equal(top.indices, idx)
        np.testing.assert_allclose(top.scores, vals, rtol=1e-12)
        assert top.variant == "squared_cosine" and top.meaning == "test method"
        assert "squared_cosine" in gt.scoring.SCORE_MEANING
    finally:
        unregister_method("squared_cosine")
    assert "squared_cosine" not in available_methods()


# -- fisher and adam stream like raw --------------------------------------------
@pytest.mark.parametrize("largest", [True, False])
def test_top_k_of_fisher_and_adam_equals_the_score_matrix(run, largest):
    states, store = run.states, run.store
    queries = run.data(3, 7)
    for variant in ("fisher", FisherMethod(damping=0.05), AdamMethod(states)):
        att = run.attributor(store)
        scores = att.score(queries, variant=variant)
        top = att.top_k(queries, k=5, largest=largest, variant=variant)
        idx, vals = expected_top_k(scores, 5, largest)
        np.testing.assert_array_equal(top.indices, idx)
        np.testing.assert_allclose(top.scores, vals, rtol=1e-10)
        cols = att.breakdown(queries, idx[0], variant=variant).sum(axis=0)
        np.testing.assert_allclose(cols, scores[:, idx[0]], rtol=1e-10)


def test_fisher_is_fitted_once_per_attributor(run, monkeypatch):
    store = run.store
    calls = []
    fit = FisherMethod.fit
    monkeypatch.setattr(FisherMethod, "fit", lambda self, st, c: calls.append(c) or fit(self, st, c))
    att = run.attributor(store)
    qf = att.query_features(run.data(2, 3))
    att.top_k(qf, variant="fisher")
    att.score(qf, variant="fisher")
    att.breakdown(qf, [0, 1], variant="fisher")
    assert calls == [0, 1]


def test_methods_say_what_they_cannot_score(run, tmp_path):
    rec, states, xy, store = run.rec, run.states, run.xy, run.store
    att = run.attributor(store)
    with pytest.raises(InputError, match=r"one optimizer state dict per checkpoint \(2\); got None"):
        att.top_k(run.data(2, 3), variant="adam")
    plain = att.query_features(run.data(2, 3))
    with pytest.raises(InputError, match="computed for plain gradients"):
        att.top_k(plain, variant=AdamMethod(states))
    adam = AdamMethod(states)
    with pytest.raises(InputError, match="computed for variant AdamMethod"):
        att.top_k(att.query_features(run.data(2, 3), variant=adam), variant="raw")
    factored = gt.featurize(run.mlp(), gt.ClassificationTask(), rec.checkpoints, xy, tmp_path / "f",
                            gt.FeaturizeConfig(projection=gt.ProjectionConfig("factored")), progress=False)
    with pytest.raises(InputError, match="variant 'fisher' does not support projection kind 'factored'"):
        run.attributor(factored).top_k(run.data(2, 3), variant="fisher")
    with pytest.raises(InputError, match="damping must be a positive number"):
        FisherMethod(damping=0)


# -- the executor seam ------------------------------------------------------------
class ReversedExecutor(LocalExecutor):
    """Shards and scan ranges in the opposite order: results must not change."""

    def run(self, tasks, worker):
        super().run(list(reversed(tasks)), worker)

    def scan(self, ranges, score):
        return super().scan(list(reversed(ranges)), score)


def test_local_executor_writes_the_bytes_of_the_plain_loop(run, tmp_path):
    rec, xy, store = run.rec, run.xy, run.store
    config = store.config
    # the loop featurize ran before the executor seam: checkpoint by checkpoint, shard by shard
    ref_root = tmp_path / "reference"
    manifest = {k: v for k, v in store.manifest.items() if k not in ("format", "format_version", "segments")}
    ref = GradientStore.create(ref_root, manifest)
    seg = store.segments[0]
    ref.add_segment(seg.fingerprint, store.ids, None)
    model = run.mlp()
    featurizer = GradientFeaturizer(store.param_names, config.projection, config.method)
    source = as_source(xy)
    for c, ckpt in enumerate(store.checkpoints):
        default_loader()(model, ckpt)
        for a, b in ref.shard_ranges():
            unit, norms = compute_shard(model, gt.ClassificationTask().per_example_loss, featurizer, source, a, b,
                                        batch_size=config.batch_size, normalise=True, dtype=config.dtype)
            ref.write_shard(c, a, b, unit, norms)
    assert run.files(ref_root) == run.files(store.root)
    other = gt.featurize(run.mlp(), gt.ClassificationTask(), rec.checkpoints, xy, tmp_path / "reversed", config,
                         progress=False, executor=ReversedExecutor())
    assert run.files(other.root) == run.files(store.root)


def test_attributor_scans_through_its_executor(run):
    store = run.store
    queries = run.data(3, 4)
    plain = run.attributor(store)
    qf = plain.query_features(queries)
    other = run.attributor(store, executor=ReversedExecutor())
    for largest in (True, False):
        a, b = plain.top_k(qf, k=6, largest=largest), other.top_k(qf, k=6, largest=largest)
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(plain.score(qf), other.score(qf))


# -- layering ---------------------------------------------------------------------
def test_the_store_imports_nothing_of_the_gradient_engine():
    """gradtrace.store on its own (the package's __init__ bypassed) loads
    neither gradtrace.grads nor gradtrace.config; nor does scoring load featurize."""
    code = (
        "import sys, types\n"
        f"pkg = types.ModuleType('gradtrace'); pkg.__path__ = [{str(ROOT / 'gradtrace')!r}]\n"
        "sys.modules['gradtrace'] = pkg\n"
        "import gradtrace.store\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('gradtrace.grads', 'gradtrace.config')))\n"
        "assert not bad, bad\n"
        "import gradtrace.scoring\n"
        "assert 'gradtrace.featurize' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr


def test_store_settings_are_read_once(run):
    store = run.store
    opened = GradientStore.open(store.root)
    assert opened.settings is opened.settings and opened.settings.dtype == "float64"
    assert opened.settings.projection_kind == "dense" and opened.settings.shard_size == 6
    assert opened.config is opened.config and opened.config.projection.kind == "dense"


def test_old_import_places_still_work():
    from gradtrace.featurize import compute_shard as old_compute_shard, model_fingerprint
    from gradtrace.grads import adam, compute, precondition, query_preconditioners
    from gradtrace.scoring.methods import fisher

    assert precondition.AdamPreconditioner is adam.AdamPreconditioner
    assert query_preconditioners.adam_diagonal is adam.adam_diagonal
    assert query_preconditioners.fisher_inverse is fisher.fisher_inverse
    assert old_compute_shard is compute.compute_shard and model_fingerprint is compute.model_fingerprint


def test_both_adam_formulas_read_the_state_the_same_way(run):
    states = run.states
    from gradtrace.grads.adam import AdamPreconditioner, adam_diagonals

    model = run.mlp()
    names = [n for n, _ in model.named_parameters()]
    pre = AdamPreconditioner.from_optimizer_state(states[0], names)
    diag = adam_diagonals(states[0], model, names)
    step = float(states[0]["state"][0]["step"])
    for pid, name in enumerate(names):
        torch.testing.assert_close(pre.exp_avg[name], states[0]["state"][pid]["exp_avg"])
        v_hat = pre.exp_avg_sq[name] / (1 - pre.beta2**step)
        torch.testing.assert_close(diag[name], 1 / (v_hat.sqrt() + pre.eps))
