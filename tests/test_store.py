"""Consistency tier for the gradient store: sharded == in-memory, same seed ==
same bytes, resumed == uninterrupted (after a SIGKILL), settings checked on
reopen, append, duplicate ids, float16 storage, verify(), no temporaries."""

from __future__ import annotations

import dataclasses
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import gradtrace as gt
import gradtrace.fileio as fileio
import gradtrace.store.io as store_io
from gradtrace.errors import ConfigMismatchError, InputError

LRS = [0.3, 0.1, 0.05]
TOL = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture
def run(h, tmp_path):
    """A model, three checkpoints, training data and queries; ``run.featurize(out, **config)``."""

    class Run:
        dir = tmp_path
        model = h.make_mlp(seed=0)
        task = gt.ClassificationTask()
        ckpts = h.write_checkpoints(lambda s: h.make_mlp(seed=s), tmp_path / "ckpts", LRS)
        train = h.classification_data(17, seed=1)
        queries = h.classification_data(4, seed=2)

        def featurize(self, out, data=None, ckpts=None, task=None, **kwargs):
            extra = {k: kwargs.pop(k) for k in ("ids", "tags", "append") if k in kwargs}
            config = gt.FeaturizeConfig(**{"dtype": "float64", **kwargs})
            return gt.featurize(
                self.model, task or self.task, ckpts or self.ckpts, self.train if data is None else data,
                tmp_path / out, config, progress=False, **extra,
            )

        def attributor(self, store):
            return gt.Attributor(store, self.model, self.task)

    return Run()


def _all_rows(store, c):
    return np.concatenate([np.asarray(store.features(c, a, b)) for a, b in store.shard_ranges()])


def test_sharded_equals_one_shard(run):
    sharded = run.featurize("sharded", shard_size=7, batch_size=3)
    whole = run.featurize("whole", shard_size=4096, batch_size=64)
    assert sharded.shard_ranges() == [(0, 7), (7, 14), (14, 17)]
    assert whole.shard_ranges() == [(0, 17)]
    assert sharded.complete and whole.complete
    for c in range(len(LRS)):
        np.testing.assert_allclose(_all_rows(sharded, c), _all_rows(whole, c), **TOL)
    a, b = run.attributor(sharded), run.attributor(whole)
    np.testing.assert_allclose(a.score(run.queries), b.score(run.queries), **TOL)
    np.testing.assert_allclose(a.self_influence(), b.self_influence(), **TOL)
    ta, tb = a.top_k(run.queries, k=5), b.top_k(run.queries, k=5)
    np.testing.assert_array_equal(ta.indices, tb.indices)
    assert sharded.verify() == [] and whole.verify() == []


@pytest.mark.parametrize(
    "projection",
    [gt.ProjectionConfig("dense", dim=8, seed=5), gt.ProjectionConfig("kronecker", dim=9, seed=5)],
    ids=["dense", "kronecker"],
)
def test_same_seed_gives_byte_identical_stores(h, run, projection):
    a = run.featurize("a", projection=projection, shard_size=7, batch_size=3, dtype="float32")
    b = run.featurize("b", projection=projection, shard_size=7, batch_size=3, dtype="float32")
    files_a, files_b = h.store_files(a.root), h.store_files(b.root)
    assert "manifest.json" in files_a and any(k.endswith(".features.npy") for k in files_a)
    assert len(files_a) == 1 + 1 + 3 * 3 * 3  # manifest, ids, 3 checkpoints x 3 shards x 3 files
    assert files_a == files_b
    other = run.featurize("c", projection=dataclasses.replace(projection, seed=6), shard_size=7, batch_size=3, dtype="float32")
    files_c = h.store_files(other.root)
    feats = [k for k in files_a if k.endswith(".features.npy")]
    assert all(files_a[k] != files_c[k] for k in feats)


# -- resume ----------------------------------------------------------------------

RESUME_SCRIPT = '''
import sys, time
import torch
from torch import nn
import gradtrace as gt

N, SHARD, BATCH = 24, 2, 2

def build(ckpt_paths, lrs):
    gen = torch.Generator().manual_seed(42)
    x = torch.randn(N, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (N,), generator=gen)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    config = gt.FeaturizeConfig(
        projection=gt.ProjectionConfig("dense", dim=8, seed=3), shard_size=SHARD, batch_size=BATCH, dtype="float32"
    )
    return dict(model=model, task=gt.ClassificationTask(), checkpoints=list(zip(ckpt_paths, lrs)),
                data=(x, y), config=config, progress=False)

if __name__ == "__main__":
    torch.set_num_threads(1)
    out, lrs, paths = sys.argv[1], [float(v) for v in sys.argv[2].split(",")], sys.argv[3:]
    args = build(paths, lrs)
    # slow each forward down (a hook does not change the model's fingerprint) so the kill lands mid-run
    args["model"].register_forward_pre_hook(lambda m, inp: time.sleep(0.03))
    print("started", flush=True)
    gt.featurize(out=out, **args)
    print("finished", flush=True)
'''


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted(h, run, tmp_path):
    script = tmp_path / "resume_job.py"
    script.write_text(RESUME_SCRIPT)
    paths = [p for p, _ in run.ckpts]
    lrs = ",".join(str(lr) for lr in LRS)
    out = tmp_path / "interrupted"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(gt.__file__).parents[1]), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out), lrs, *paths],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob("ckpt_*/*.json")):
            if proc.poll() is not None:
                pytest.fail(f"featurize subprocess exited (rc {proc.returncode}) before writing a shard:\n"
                            f"{proc.stderr.read().decode()}")
            if time.monotonic() > deadline:
                pytest.fail("no shard record appeared within 60 s")
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    partial = gt.GradientStore.open(out)
    assert not partial.complete
    n_missing = len(partial.missing_shards())
    assert 0 < n_missing < 12 * 3
    assert any("missing shard" in p for p in partial.verify())

    build = runpy.run_path(str(script), run_name="resume_job")["build"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        resumed = gt.featurize(out=out, **build(paths, LRS))
        fresh = gt.featurize(out=tmp_path / "fresh", **build(paths, LRS))
    finally:
        torch.set_num_threads(threads)
    assert resumed.complete and resumed.verify() == []
    assert not list(out.rglob(f"*{store_io.TMP_MARK}*"))
    assert h.store_files(out) == h.store_files(fresh.root)


@dataclasses.dataclass(frozen=True)
class FlakyTask:
    """Cross-entropy that fails on example index >= ``FAIL_FROM[0]`` (a switch
    outside the dataclass fields, so the task's identity does not change)."""

    def per_example_loss(self, model, batch):
        x, y, idx = batch
        if FAIL_FROM[0] is not None and int(idx.max()) >= FAIL_FROM[0]:
            raise RuntimeError("simulated crash")
        return torch.nn.functional.cross_entropy(model(x), y, reduction="none")


FAIL_FROM: list[int | None] = [None]


def test_resume_after_exception_equals_uninterrupted(h, run):
    x, y = run.train
    data = (x, y, torch.arange(len(y)))
    FAIL_FROM[0] = 10
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            run.featurize("r", data=data, task=FlakyTask(), shard_size=4, batch_size=2)
    finally:
        FAIL_FROM[0] = None
    partial = gt.GradientStore.open(run.dir / "r")
    assert sorted(partial.missing_shards()) != [] and not partial.complete
    assert partial.has_shard(0, 0, 4) and partial.has_shard(0, 4, 8) and not partial.has_shard(0, 8, 12)
    resumed = run.featurize("r", data=data, task=FlakyTask(), shard_size=4, batch_size=2)
    fresh = run.featurize("f", data=data, task=FlakyTask(), shard_size=4, batch_size=2)
    assert resumed.complete and resumed.verify() == []
    assert h.store_files(resumed.root) == h.store_files(fresh.root)


def test_failed_write_leaves_no_temporary_and_resumes(h, run, monkeypatch):
    real_replace = os.replace
    calls = {"n": 0}

    def flaky_replace(src, dst):
        if str(dst).endswith(".norms.npy") and "rows_000000007" in str(dst):
            calls["n"] += 1
            raise OSError("disk full (simulated)")
        return real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="simulated"):
        run.featurize("w", shard_size=7, batch_size=3)
    monkeypatch.setattr(fileio.os, "replace", real_replace)
    assert calls["n"] == 1
    root = run.dir / "w"
    assert not list(root.rglob(f"*{store_io.TMP_MARK}*"))
    assert sorted(p.name for p in root.glob("ckpt_*/*.json")) == ["rows_000000000_000000007.json"]
    resumed = run.featurize("w", shard_size=7, batch_size=3)
    fresh = run.featurize("w2", shard_size=7, batch_size=3)
    assert resumed.verify() == []
    assert h.store_files(resumed.root) == h.store_files(fresh.root)


# -- settings checked on reopen ------------------------------------------------------

BASE = dict(projection=gt.ProjectionConfig("dense", dim=8, seed=0), shard_size=7, batch_size=3, dtype="float32")


@pytest.mark.parametrize(
    "change,field,values",
    [
        (dict(projection=gt.ProjectionConfig("dense", dim=8, seed=1)), "config.projection.seed", "0 -> 1"),
        (dict(projection=gt.ProjectionConfig("dense", dim=6, seed=0)), "config.projection.dim", "8 -> 6"),
        (dict(params="2.*"), "config.params", "'all' -> '2.*'"),
        (dict(dtype="float64"), "config.dtype", "'float32' -> 'float64'"),
        (dict(shard_size=5), "config.shard_size", "7 -> 5"),
        (dict(lr_scale=2.0), "checkpoints[1].lr", "0.1 -> 0.2"),
        (dict(drop_last_ckpt=True), "checkpoints", None),
    ],
)
def test_reopen_with_other_settings_shows_the_field(run, change, field, values):
    run.featurize("s", **BASE)
    change = dict(change)
    ckpts = run.ckpts
    if change.pop("lr_scale", None):
        ckpts = [(p, lr * 2) for p, lr in ckpts]
    if change.pop("drop_last_ckpt", None):
        ckpts = ckpts[:-1]
    with pytest.raises(ConfigMismatchError) as err:
        run.featurize("s", ckpts=ckpts, **{**BASE, **change})
    assert field in err.value.differences
    message = str(err.value)
    assert field in message
    if values is not None:
        assert values in message


def test_reopen_with_other_task_shows_it(run):
    run.featurize("s", **BASE)
    with pytest.raises(ConfigMismatchError, match="task"):
        run.featurize("s", task=FlakyTask(), **BASE)


def test_other_data_needs_append(run, h):
    run.featurize("s", **BASE)
    other = h.classification_data(5, seed=9)
    with pytest.raises(InputError, match="append"):
        run.featurize("s", data=other, **BASE)


def test_append_adds_a_segment_scored_with_the_first(run, h):
    first = run.train
    second = h.classification_data(6, seed=9)
    run.featurize("s", **BASE)
    store = run.featurize("s", data=second, append=True, **BASE)
    assert [(s.start, s.stop) for s in store.segments] == [(0, 17), (17, 23)]
    assert store.n_examples == 23 and store.complete and store.verify() == []
    assert store.ids == [str(i) for i in range(23)]
    assert (7, 14) in store.shard_ranges() and (17, 23) in store.shard_ranges()
    both = (torch.cat([first[0], second[0]]), torch.cat([first[1], second[1]]))
    joint = run.featurize("joint", data=both, **BASE)
    a, b = run.attributor(gt.GradientStore.open(store.root)), run.attributor(joint)
    scores = a.score(run.queries)
    assert scores.shape == (4, 23)
    # float32 rows computed in other batches: equal to float32 rounding
    np.testing.assert_allclose(scores, b.score(run.queries), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(a.self_influence(), b.self_influence(), rtol=1e-12, atol=1e-14)
    # appending the same data again resumes that segment instead of duplicating it
    again = run.featurize("s", data=second, append=True, **BASE)
    assert again.n_examples == 23 and len(again.segments) == 2


def test_duplicate_ids_raise(run, h):
    n = len(run.train[1])
    with pytest.raises(InputError, match=r"repeated: \['x3'\]"):
        run.featurize("d", ids=[f"x{i}" for i in range(n - 1)] + ["x3"], **BASE)
    run.featurize("e", ids=[f"x{i}" for i in range(n)], **BASE)
    with pytest.raises(InputError, match="already in the store"):
        run.featurize("e", data=h.classification_data(3, seed=9), ids=["new0", "x5", "new2"], append=True, **BASE)


def test_corrected_ids_after_an_ids_error_are_accepted(run):
    """An InputError about ids must not leave a directory that refuses the corrected call."""
    n = len(run.train[1])
    with pytest.raises(InputError, match="ids"):
        run.featurize("d", ids=["a"] * n, **BASE)
    store = run.featurize("d", ids=[f"z{i}" for i in range(n)], **BASE)
    assert store.n_examples == n and store.ids[0] == "z0" and store.complete


# -- float16 ----------------------------------------------------------------------------

def test_float16_store_close_to_float32(run):
    proj = dict(projection=gt.ProjectionConfig("dense", dim=16, seed=2), shard_size=7, batch_size=3)
    s16 = run.featurize("h", dtype="float16", **proj)
    s32 = run.featurize("f", dtype="float32", **proj)
    assert s16.features(0, 0, 7).dtype == np.float16
    a16, a32 = run.attributor(s16), run.attributor(s32)
    qf = a32.query_features(run.queries)
    scores16, scores32 = a16.score(qf), a32.score(qf)
    # Stored rows are unit vectors t; float16 keeps each entry to a relative error
    # of at most u = 2^-11 (entries of a unit 16-vector are far above the
    # subnormal range), so |<q, t16 - t>| <= u * sum|q_i t_i| <= u for unit q.
    # The score term lr_c |q_c| |t_c| <q_c, t_c> therefore moves by at most
    # u * lr_c |q_c| |t_c|; 1.25 u covers float32 accumulation on top.
    bound = np.zeros_like(scores32)
    for c, lr in enumerate(LRS):
        tn = np.concatenate([s32.norms(c, a, b)[:, 0] for a, b in s32.shard_ranges()])
        bound += lr * qf.norms[c].numpy()[:, None] * tn[None, :]
    diff = np.abs(scores16 - scores32)
    assert (diff <= 1.25 * 2.0**-11 * bound).all(), (diff / bound).max()
    assert diff.max() > 0  # float16 really rounded something
    # self-influence comes from the float64 norms, so storage precision does not touch it
    np.testing.assert_allclose(a16.self_influence(), a32.self_influence(), rtol=1e-12, atol=0)
    # the scan widens the stored float16 rows to float32 exactly: scores equal a float64
    # brute force over the stored values up to float32 rounding of the products
    brute = np.zeros_like(scores32)
    for c, lr in enumerate(LRS):
        t16 = np.concatenate([s16.features(c, a, b) for a, b in s16.shard_ranges()]).astype(np.float64)
        tn = np.concatenate([s16.norms(c, a, b)[:, 0] for a, b in s16.shard_ranges()])
        q32 = qf.unit[c].to(torch.float32).double().numpy()
        brute += lr * (qf.norms[c].numpy()[:, None] * tn[None, :]) * (q32 @ t16.T)
    np.testing.assert_allclose(scores16, brute, rtol=1e-5, atol=1e-6 * np.abs(brute).max())


# -- verify, model checks, temporaries ----------------------------------------------------

def test_verify_reports_corruption(run):
    store = run.featurize("v", **BASE)
    assert store.verify() == []
    target = store.root / "ckpt_001" / "rows_000000007_000000014.features.npy"
    raw = bytearray(target.read_bytes())
    raw[-1] ^= 0xFF
    target.write_bytes(bytes(raw))
    problems = store.verify()
    assert problems == ["rows_000000007_000000014.features.npy: checksum mismatch"]
    (store.root / "ckpt_002" / "rows_000000014_000000017.norms.npy").unlink()
    (store.root / "ckpt_000" / "rows_000000000_000000007.json").unlink()
    problems = store.verify()
    assert "rows_000000014_000000017.norms.npy: file missing" in problems
    assert "missing shard checkpoint 0 rows 0-7" in problems
    assert len(problems) == 3


def test_attributor_rejects_another_architecture(run, h):
    store = run.featurize("m", **BASE)
    other = h.make_mlp(hidden=6)
    with pytest.raises(ConfigMismatchError, match="model.fingerprint"):
        gt.Attributor(store, other, run.task).score(run.queries)
    with pytest.raises(ConfigMismatchError, match="task"):
        gt.Attributor(store, run.model, FlakyTask()).score(run.queries)


@dataclasses.dataclass(frozen=True)
class ColumnTask:
    """Returns shape (b, 1) instead of (b,)."""

    def per_example_loss(self, model, batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(model(x), y, reduction="none")[:, None]


@pytest.mark.parametrize("method", ["auto", "vmap", "loop"])
def test_wrong_shape_leaves_no_shard_or_temporary(run, method):
    with pytest.raises(InputError, match=r"shape \(3, 1\)|shape \(1, 1\)"):
        run.featurize("t", task=ColumnTask(), method=method, **BASE)
    root = run.dir / "t"
    assert not list(root.glob("ckpt_*/*.json"))
    assert not list(root.rglob(f"*{store_io.TMP_MARK}*"))
    assert not list(root.rglob("*.npy"))
