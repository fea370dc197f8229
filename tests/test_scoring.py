"""Oracle tier: scores from ``featurize`` + ``Attributor`` equal a brute-force
double loop over (query, train) pairs with single-example backward passes;
top-k equals sorting; self-influence equals the diagonal; breakdown sums to
the score; cosine, behaviour sign and precomputed query features."""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest
import torch

import gradtrace as gt
from gradtrace.errors import InputError


LRS = [0.3, 0.1, 0.05]
N_TRAIN, N_QUERY = 9, 4
TOL = dict(rtol=1e-9, atol=1e-12)


@pytest.fixture(scope="module", params=["none", "factored"])
def setup(request, tmp_path_factory, h):
    kind = request.param
    tmp = tmp_path_factory.mktemp(f"scoring_{kind}")
    model = h.make_mlp(seed=0)
    ckpts = h.write_checkpoints(lambda s: h.make_mlp(seed=s), tmp / "ckpts", LRS)
    train = h.classification_data(N_TRAIN, seed=1)
    queries = h.classification_data(N_QUERY, seed=2)
    config = gt.FeaturizeConfig(
        projection=gt.ProjectionConfig(kind), batch_size=3, shard_size=4, dtype="float64"
    )
    task = gt.ClassificationTask()
    store = gt.featurize(model, task, ckpts, train, tmp / "store", config, progress=False)
    attributor = gt.Attributor(store, model, task)
    brute = h.brute_force_scores(model, ckpts, h.ce_per_example, train, h.ce_per_example, queries).numpy()
    return types.SimpleNamespace(
        kind=kind, model=model, ckpts=ckpts, train=train, queries=queries, store=store,
        attributor=attributor, brute=brute, task=task,
    )


def test_score_equals_brute_force(setup):
    scores = setup.attributor.score(setup.queries)
    assert scores.shape == (N_QUERY, N_TRAIN) and scores.dtype == np.float64
    np.testing.assert_allclose(scores, setup.brute, **TOL)
    assert (setup.brute > 0).any() and (setup.brute < 0).any()


def test_featurize_and_query_restore_the_model(h, setup):
    reference = h.make_mlp(seed=0).state_dict()
    setup.attributor.score(setup.queries)
    for key, value in setup.model.state_dict().items():
        torch.testing.assert_close(value, reference[key], rtol=0, atol=0)


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("k", [1, 3, N_TRAIN, 100])
def test_top_k_equals_sorting(setup, largest, k):
    scores = setup.attributor.score(setup.queries)
    top = setup.attributor.top_k(setup.queries, k=k, largest=largest)
    kk = min(k, N_TRAIN)
    order = np.argsort(-scores if largest else scores, axis=1, kind="stable")[:, :kk]
    assert top.indices.shape == (N_QUERY, kk) and top.scores.shape == (N_QUERY, kk)
    np.testing.assert_array_equal(top.indices, order)
    np.testing.assert_allclose(top.scores, np.take_along_axis(scores, order, axis=1), rtol=1e-12, atol=1e-15)
    assert top.ids == [[setup.store.ids[i] for i in row] for row in order]
    assert top.largest is largest


def test_top_k_rejects_bad_k(setup):
    for bad in (0, -1, 2.0, True):
        with pytest.raises(InputError, match="k must be"):
            setup.attributor.top_k(setup.queries, k=bad)


def test_self_influence_is_the_diagonal(h, setup):
    diag = np.diag(
        h.brute_force_scores(setup.model, setup.ckpts, h.ce_per_example, setup.train, h.ce_per_example, setup.train).numpy()
    )
    np.testing.assert_allclose(setup.attributor.self_influence(), diag, **TOL)
    np.testing.assert_allclose(gt.self_influence(setup.store), diag, **TOL)
    # and the diagonal of the store's own score matrix with the training set as queries
    np.testing.assert_allclose(np.diag(setup.attributor.score(setup.train)), diag, **TOL)


def test_breakdown_sums_to_score_and_each_checkpoint_is_its_term(h, setup):
    idx = [8, 0, 5, 2, 5]
    parts = setup.attributor.breakdown(setup.queries, idx)
    assert parts.shape == (len(LRS), N_QUERY, len(idx))
    np.testing.assert_allclose(parts.sum(0), setup.attributor.score(setup.queries)[:, idx], **TOL)
    for c, (path, lr) in enumerate(setup.ckpts):
        single = h.brute_force_scores(
            setup.model, [(path, lr)], h.ce_per_example, setup.train, h.ce_per_example, setup.queries
        ).numpy()
        np.testing.assert_allclose(parts[c], single[:, idx], **TOL)


def test_breakdown_rejects_out_of_range(setup):
    with pytest.raises(InputError, match="train_indices"):
        setup.attributor.breakdown(setup.queries, [0, N_TRAIN])
    with pytest.raises(InputError, match="train_indices"):
        setup.attributor.breakdown(setup.queries, [-1])


def test_cosine_equals_brute_force(h, setup):
    brute = h.brute_force_scores(
        setup.model, setup.ckpts, h.ce_per_example, setup.train, h.ce_per_example, setup.queries, cosine=True
    ).numpy()
    np.testing.assert_allclose(setup.attributor.score(setup.queries, variant="cosine"), brute, **TOL)
    assert np.abs(brute).max() <= sum(LRS) + 1e-12
    parts = setup.attributor.breakdown(setup.queries, [1, 4], variant="cosine")
    np.testing.assert_allclose(parts.sum(0), brute[:, [1, 4]], **TOL)
    top = setup.attributor.top_k(setup.queries, k=2, variant="cosine")
    np.testing.assert_array_equal(top.indices, np.argsort(-brute, axis=1)[:, :2])


def test_unknown_variant(setup):
    with pytest.raises(InputError, match="variant"):
        setup.attributor.score(setup.queries, variant="dot")


def _margin(model, batch):
    return gt.LogitMarginBehaviour()(model, batch)


def test_increase_behaviour_flips_the_raw_product(h, setup):
    raw = h.brute_force_scores(
        setup.model, setup.ckpts, h.ce_per_example, setup.train, _margin, setup.queries
    ).numpy()
    assert np.abs(raw).max() > 1e-3
    scores = setup.attributor.score(setup.queries, behaviour=gt.LogitMarginBehaviour())
    np.testing.assert_allclose(scores, -raw, **TOL)
    # a plain callable without a direction counts as "increase" too
    np.testing.assert_allclose(setup.attributor.score(setup.queries, behaviour=_margin), -raw, **TOL)


@dataclasses.dataclass(frozen=True)
class MarginAsCost:
    direction: str = "decrease"

    def __call__(self, model, batch):
        return _margin(model, batch)


def test_decrease_behaviour_keeps_the_raw_product(h, setup):
    raw = h.brute_force_scores(
        setup.model, setup.ckpts, h.ce_per_example, setup.train, _margin, setup.queries
    ).numpy()
    np.testing.assert_allclose(setup.attributor.score(setup.queries, behaviour=MarginAsCost()), raw, **TOL)
    with pytest.raises(InputError, match="direction"):
        setup.attributor.score(setup.queries, behaviour=MarginAsCost(direction="up"))


def test_precomputed_query_features_give_identical_results(setup):
    att = setup.attributor
    qf = att.query_features(setup.queries)
    assert isinstance(qf, gt.QueryFeatures) and qf.n == N_QUERY and len(qf.unit) == len(LRS)
    np.testing.assert_array_equal(att.score(qf), att.score(setup.queries))
    np.testing.assert_array_equal(att.score(qf, variant="cosine"), att.score(setup.queries, variant="cosine"))
    a, b = att.top_k(qf, k=4, largest=False), att.top_k(setup.queries, k=4, largest=False)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(att.breakdown(qf, [0, 3]), att.breakdown(setup.queries, [0, 3]))
    qm = att.query_features(setup.queries, gt.LogitMarginBehaviour())
    np.testing.assert_array_equal(att.score(qm), att.score(setup.queries, behaviour=gt.LogitMarginBehaviour()))
    with pytest.raises(InputError, match="behaviour"):
        att.score(qf, behaviour=gt.LogitMarginBehaviour())


def test_query_features_of_another_store_are_rejected(setup, tmp_path):
    other = gt.featurize(
        setup.model, setup.task, setup.ckpts[:2], setup.train, tmp_path / "other",
        gt.FeaturizeConfig(projection=gt.ProjectionConfig(setup.kind), dtype="float64"), progress=False,
    )
    qf = gt.Attributor(other, setup.model, setup.task).query_features(setup.queries)
    with pytest.raises(InputError, match="another store"):
        setup.attributor.score(qf)


def test_empty_queries(setup):
    empty = (setup.queries[0][:0], setup.queries[1][:0])
    with pytest.raises(InputError, match="empty"):
        setup.attributor.score(empty)


@pytest.mark.parametrize(
    "projection",
    [gt.ProjectionConfig("dense", dim=12, seed=1), gt.ProjectionConfig("kronecker", dim=4, seed=1)],
    ids=["dense", "kronecker"],
)
def test_self_influence_is_exact_under_projection(h, tmp_path, projection):
    """Self-influence comes from the exact squared norms, not the projected rows."""
    model = h.make_mlp(seed=0)
    ckpts = h.write_checkpoints(lambda s: h.make_mlp(seed=s), tmp_path / "ck", LRS)
    train = h.classification_data(N_TRAIN, seed=1)
    store = gt.featurize(
        model, gt.ClassificationTask(), ckpts, train, tmp_path / "s",
        gt.FeaturizeConfig(projection=projection, shard_size=4, batch_size=3, dtype="float32"), progress=False,
    )
    diag = np.diag(h.brute_force_scores(model, ckpts, h.ce_per_example, train, h.ce_per_example, train).numpy())
    np.testing.assert_allclose(gt.self_influence(store), diag, **TOL)
    # while the projected score of an example with itself is only approximately its self-influence
    projected = np.diag(gt.Attributor(store, model, gt.ClassificationTask()).score(train))
    assert not np.allclose(projected, diag, rtol=1e-6, atol=0)


def test_dataset_and_list_inputs_equal_tensor_tuples(h, setup, tmp_path):
    from torch.utils.data import TensorDataset

    x, y = setup.train
    config = gt.FeaturizeConfig(projection=gt.ProjectionConfig(setup.kind), batch_size=3, shard_size=4, dtype="float64")
    for name, data in (("dataset", TensorDataset(x, y)), ("list", [(x[i], y[i]) for i in range(len(y))])):
        store = gt.featurize(setup.model, setup.task, setup.ckpts, data, tmp_path / name, config, progress=False)
        att = gt.Attributor(store, setup.model, setup.task)
        np.testing.assert_allclose(att.score(TensorDataset(*setup.queries)), setup.brute, **TOL)


def test_incomplete_store_is_an_error_naming_the_shard(setup, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(setup.store.root, copy)
    (copy / "ckpt_001" / "rows_000000004_000000008.json").unlink()
    att = gt.Attributor(copy, setup.model, setup.task)
    with pytest.raises(gt.StoreError, match="checkpoint 1, rows 4-8 is missing"):
        att.score(setup.queries)
    with pytest.raises(gt.StoreError, match="checkpoint 1, rows 4-8 is missing"):
        att.self_influence()


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("k,block", [(1, 7), (5, 3), (5, 64), (40, 50), (40, 500)])
def test_streamed_merge_equals_stable_sort_with_many_ties(largest, k, block):
    """Blocks of small integers (ties everywhere) merged block by block give
    exactly a stable sort of the whole row: ties go to the lower index."""
    from gradtrace.scoring.attributor import merge_top_k

    gen = np.random.default_rng(k * 1000 + block)
    full = gen.integers(-5, 6, size=(4, 1003)).astype(np.float32)
    best_s, best_i = np.zeros((4, 0)), np.zeros((4, 0), dtype=np.int64)
    for lo in range(0, full.shape[1], block):
        best_s, best_i = merge_top_k(best_s, best_i, full[:, lo : lo + block], lo, k, largest)
    order = np.argsort(-full if largest else full, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(best_i, order)
    np.testing.assert_array_equal(best_s, np.take_along_axis(full, order, axis=1))
