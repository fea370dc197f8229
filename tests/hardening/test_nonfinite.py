"""Non-finite values are refused where they appear.

The seen cases: one NaN input, or one checkpoint with NaN weights, gave a
store marked complete that passed verify; then ``top_k`` failed with
``cannot reshape array``, ``score`` returned all NaN and self-influence
ranked the NaN example last (a bare ``NaN`` in JSONL). Now featurize stops at
the first non-finite loss or gradient, naming the example and the
checkpoint, or (``on_nonfinite="skip"``) leaves the example out, recorded,
scoring 0. Queries with non-finite values are refused naming the query; a
store written before these checks that holds NaN is refused on read.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gradtrace as gt
from gradtrace.errors import InputError, StoreError
from gradtrace.store import GradientStore

LRS = [0.3, 0.1]
BAD = 3  # the example made non-finite


def _poisoned(run):
    x, y = run.train[0].clone(), run.train[1]
    x[BAD, 2] = float("nan")
    return x, y


CONFIGS = {
    "hooks-none": dict(),
    "hooks-dense": dict(projection=gt.ProjectionConfig("dense", dim=8)),
    "hooks-kronecker": dict(projection=gt.ProjectionConfig("kronecker", dim=4)),
    "hooks-factored": dict(projection=gt.ProjectionConfig("factored")),
    "vmap": dict(method="vmap"),
    "loop": dict(method="loop"),
}


@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
def test_a_nan_input_stops_featurize_naming_the_example_and_checkpoint(run, config):
    cfg = run.config(**CONFIGS[config])
    with pytest.raises(InputError) as err:
        run.featurize(data=_poisoned(run), config=cfg)
    msg = str(err.value)
    assert f"training example {BAD} of data (id 'ex{BAD}')" in msg
    assert "non-finite loss (nan)" in msg
    assert f"checkpoint 0 ({run.ckpts[0][0]!r})" in msg and "on_nonfinite='skip'" in msg
    assert not GradientStore.open(run.dir / "store").complete


def test_a_checkpoint_with_nan_weights_stops_featurize_naming_it(run, h):
    state = h.make_mlp(seed=101).state_dict()
    state["2.weight"][0, 0] = float("nan")
    torch.save(state, run.ckpts[1][0])
    with pytest.raises(InputError, match=rf"training example 0 of data \(id 'ex0'\) has a non-finite loss \(nan\) at checkpoint 1 \({run.ckpts[1][0]!r}\)"):
        run.featurize()
    store = GradientStore.open(run.dir / "store")
    assert not store.complete and store.missing_shards() == [(1, 0, 4), (1, 4, 8), (1, 8, 10)]


def test_an_infinite_loss_with_a_finite_gradient_is_refused(run):
    """The loss itself is checked, not only its gradient."""

    class InfTask:
        def per_example_loss(self, model, batch):
            x, y = batch
            return F.cross_entropy(model(x), y, reduction="none") + torch.where(x[:, 0] > 1.5, math.inf, 0.0)

    x, y = run.train
    x = x.clone()
    x[:, 0] = 0.0
    x[6, 0] = 2.0
    with pytest.raises(InputError, match=r"training example 6 .* non-finite loss \(inf\) at checkpoint 0"):
        run.featurize(data=(x, y), task=InfTask())


def test_skip_leaves_the_example_out_recorded_and_scoring_zero(run, h):
    store = run.featurize(data=_poisoned(run), on_nonfinite="skip")
    assert store.complete and store.verify() == [] and store.invalid_shards() == []
    skipped = store.skipped_examples
    assert [(s.index, s.id, s.checkpoint, s.checkpoint_path) for s in skipped] == [
        (BAD, f"ex{BAD}", c, run.ckpts[c][0]) for c in range(2)
    ]
    assert all(s.reason == "non-finite loss (nan)" for s in skipped)
    assert store.skipped_indices.tolist() == [BAD]
    for c in range(2):
        assert not np.asarray(store.features(c, 0, 4))[BAD].any() and not store.norms(c, 0, 4)[BAD].any()
    record = json.loads((store.root / "ckpt_000" / "rows_000000000_000000004.json").read_text())
    assert record["skipped"] == [{"index": BAD, "reason": "non-finite loss (nan)"}]

    attributor = gt.Attributor(store.root, run.model, run.task)
    si = attributor.self_influence()
    assert np.isfinite(si).all() and si[BAD] == 0.0
    scores = attributor.score(run.queries)
    assert np.isfinite(scores).all() and (scores[:, BAD] == 0).all()
    top = attributor.top_k(run.queries, k=3)  # was: cannot reshape array of size 8 into shape (4,3)
    assert top.scores.shape == (3, 3) and np.isfinite(top.scores).all()
    assert (attributor.breakdown(run.queries, [BAD, 0])[:, :, 0] == 0).all()

    # every other example scores as in a store made without the bad one
    keep = [i for i in range(10) if i != BAD]
    x, y = run.train
    clean = gt.featurize(
        run.model, run.task, run.ckpts, (x[keep], y[keep]), run.dir / "clean", run.config(), progress=False,
    )
    clean_attr = gt.Attributor(clean, run.model, run.task)
    np.testing.assert_allclose(scores[:, keep], clean_attr.score(run.queries), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(si[keep], clean_attr.self_influence(), rtol=1e-10, atol=1e-12)


def test_a_nan_checkpoint_skipped_only_where_it_is_nan(run, h):
    """An example left out at one checkpoint reads 0 in every score, not a partial sum."""
    state = h.make_mlp(seed=101).state_dict()
    state["2.bias"][0] = float("inf")
    torch.save(state, run.ckpts[1][0])
    store = run.featurize(on_nonfinite="skip")
    assert {(s.index, s.checkpoint) for s in store.skipped_examples} == {(i, 1) for i in range(10)}
    assert np.asarray(store.features(0, 0, 4)).any()  # checkpoint 0 was fine and is kept as written
    attributor = gt.Attributor(store, run.model, run.task)
    assert (attributor.self_influence() == 0).all()
    with pytest.raises(InputError, match="queries: query 0 has a non-finite behaviour value .* at checkpoint 1"):
        attributor.score(run.queries)  # the queries meet the same NaN weights


def test_stores_without_nonfinite_values_are_byte_identical_in_both_modes(run, h):
    a = run.featurize(out="a")
    b = run.featurize(out="b", on_nonfinite="skip")
    assert h.store_files(a.root) == h.store_files(b.root)
    assert all("skipped" not in json.loads(p.read_text()) for p in a.root.glob("ckpt_*/rows_*.json"))
    assert a.skipped_examples == [] and a.skipped_indices.size == 0


def test_a_run_stopped_by_a_nan_can_be_finished_with_skip(run):
    data = _poisoned(run)
    with pytest.raises(InputError, match="non-finite"):
        run.featurize(data=data, config=run.config(shard_size=2, batch_size=1))
    store = run.featurize(data=data, config=run.config(shard_size=2, batch_size=1), on_nonfinite="skip")
    assert store.complete and store.skipped_indices.tolist() == [BAD]


def test_on_nonfinite_must_be_a_known_choice(run):
    with pytest.raises(InputError, match=r"on_nonfinite must be one of \('raise', 'skip'\); got 'ignore'"):
        run.featurize(on_nonfinite="ignore")


def test_a_nan_query_is_refused_naming_the_query(run):
    store = run.featurize()
    xq, yq = run.queries
    xq = xq.clone()
    xq[1, 0] = float("nan")
    attributor = gt.Attributor(store, run.model, run.task)
    with pytest.raises(InputError, match=rf"queries: query 1 has a non-finite behaviour value \(nan\) at checkpoint 0 \({run.ckpts[0][0]!r}\)"):
        attributor.top_k((xq, yq), k=2)
    with pytest.raises(InputError, match="queries: query 1"):
        attributor.score((xq, yq))


def test_precomputed_query_features_with_nan_are_refused(run):
    store = run.featurize()
    attributor = gt.Attributor(store, run.model, run.task)
    qf = attributor.query_features(run.queries)
    qf.unit[1][2, 0] = float("nan")
    with pytest.raises(InputError, match="queries: query 2 of these QueryFeatures has non-finite features or norm at checkpoint 1"):
        attributor.top_k(qf, k=2)


def _write_nan_like_an_old_gradtrace(store: GradientStore, c: int, a: int, b: int, row: int) -> None:
    """Put NaN in a shard's norms and record the new checksum, as the code before these checks wrote it."""
    stem = store.root / f"ckpt_{c:03d}" / f"rows_{a:09d}_{b:09d}"
    norms_path = stem.with_name(stem.name + ".norms.npy")
    norms = np.load(norms_path)
    norms[row - a] = np.nan
    np.save(norms_path, norms)
    record = json.loads(stem.with_suffix(".json").read_text())
    record["sha256"][norms_path.name] = hashlib.sha256(norms_path.read_bytes()).hexdigest()
    stem.with_suffix(".json").write_text(json.dumps(record))


def test_a_store_holding_nan_from_older_code_is_refused_on_read_and_rewritten(run, h):
    fresh = run.featurize(out="fresh")
    store = run.featurize()
    _write_nan_like_an_old_gradtrace(store, 1, 4, 8, 6)
    store = GradientStore.open(store.root)
    attributor = gt.Attributor(store, run.model, run.task)
    for call in (lambda: attributor.top_k(run.queries, k=2), attributor.self_influence, lambda: attributor.score(run.queries)):
        with pytest.raises(StoreError, match=r"\(checkpoint 1, rows 4-8\) holds a non-finite gradient norm for example 6 "):
            call()
    assert any("non-finite gradient norm for example 6" in p for p in store.verify())
    assert [bad[:3] for bad in store.invalid_shards()] == [(1, 4, 8)]
    run.featurize()  # resume: the shard fails its check and is rewritten from the (finite) data
    assert h.store_files(store.root) == h.store_files(fresh.root)


def test_direct_self_influence_refuses_or_skips_nan(run):
    data = _poisoned(run)
    with pytest.raises(InputError, match=rf"example {BAD} of data has a non-finite gradient .* at checkpoint 0"):
        gt.self_influence_from_checkpoints(run.model, run.task, run.ckpts, data, progress=False)
    with pytest.warns(RuntimeWarning, match=r"1 example\(s\) left out"):
        si = gt.self_influence_from_checkpoints(run.model, run.task, run.ckpts, data, progress=False, on_nonfinite="skip")
    assert np.isfinite(si).all() and si[BAD] == 0.0
