"""featurize() and Attributor use the hardened store: a writing session under
the store's locks, checkpoint fingerprints recorded when the store is made
and checked before each checkpoint is loaded (featurize, resume, queries),
damaged shards rewritten on resume, verified reads that can be turned off,
and a hand-edited manifest refused when querying."""

from __future__ import annotations

import json
import os

import pytest
import torch

import gradtrace as gt
from gradtrace.errors import CheckpointError, StoreError
from gradtrace.store import GradientStore


def _overwrite(path: str, model: torch.nn.Module) -> None:
    before = os.stat(path)
    torch.save(model.state_dict(), path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))  # a later mtime, whatever the clock tick


def test_featurize_records_checkpoint_fingerprints(run):
    store = run.featurize()
    fps = store.checkpoint_fingerprints
    assert fps is not None and len(fps) == 2 and all(fp["size"] > 0 for fp in fps)
    assert json.loads((store.root / "manifest.json").read_text())["checkpoint_fingerprints"] == fps


def test_a_checkpoint_rewritten_after_featurize_is_refused_by_queries(run, h):
    store = run.featurize()
    _overwrite(run.ckpts[1][0], h.make_mlp(seed=55))
    attributor = gt.Attributor(store.root, run.model, run.task)
    with pytest.raises(CheckpointError, match=r"checkpoint 1 \(.*ckpt_1\.pt'\) changed since the store"):
        attributor.top_k(run.queries, k=2)


def test_a_checkpoint_rewritten_before_a_resume_is_refused(run, h):
    def crash_at_checkpoint_1(model, ref):
        if ref.path == run.ckpts[1][0]:
            raise KeyboardInterrupt  # interrupted after checkpoint 0's shards
        gt.load_checkpoint(model, ref)

    with pytest.raises(KeyboardInterrupt):
        run.featurize(checkpoint_loader=crash_at_checkpoint_1)
    _overwrite(run.ckpts[0][0], h.make_mlp(seed=56))
    with pytest.raises(CheckpointError, match=r"checkpoint 0 \(.*ckpt_0\.pt'\) changed since the store"):
        run.featurize()


def test_a_checkpoint_rewritten_during_featurize_is_refused_before_it_is_loaded(run, h):
    """The fingerprint taken when the store is made is checked again right before each load."""
    seen = []

    def loader(model, ref):
        seen.append(ref.path)
        if len(seen) == 1:
            _overwrite(run.ckpts[1][0], h.make_mlp(seed=57))  # while checkpoint 0 is in use
        gt.load_checkpoint(model, ref)

    with pytest.raises(CheckpointError, match=r"checkpoint 1 .* changed since the store"):
        run.featurize(checkpoint_loader=loader)
    assert seen == [run.ckpts[0][0]]


def test_a_damaged_shard_is_rewritten_on_resume_and_said(run, h, tmp_path, capsys):
    fresh = run.featurize(out="fresh")
    store = run.featurize(out="store")
    path = store.root / "ckpt_001" / "rows_000000004_000000008.features.npy"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    gt.featurize(run.model, run.task, run.ckpts, run.train, tmp_path / "store", run.config(), progress=True, ids=store.ids)
    err = capsys.readouterr().err
    assert "checkpoint 1 rows 4-8 failed its check" in err and "rewriting it" in err
    assert h.store_files(store.root) == h.store_files(fresh.root)
    assert GradientStore.open(store.root).verify() == []


def test_the_lock_file_is_the_only_file_a_writer_adds(run, h):
    store = run.featurize()
    names = {p.name for p in store.root.iterdir()}
    assert names == {"manifest.json", "ids", "ckpt_000", "ckpt_001", ".gradtrace-writers.lock"}
    assert (store.root / ".gradtrace-writers.lock").stat().st_size == 0


@pytest.mark.parametrize("verify", [True, False])
def test_attributor_passes_verify_to_the_store(run, verify):
    store = run.featurize()
    assert gt.Attributor(store.root, run.model, run.task, verify=verify).store.verify_reads is verify
    opened = GradientStore.open(store.root)
    assert gt.Attributor(opened, run.model, run.task, verify=verify).store.verify_reads is verify
    assert gt.Attributor(GradientStore.open(store.root, verify=False), run.model, run.task).store.verify_reads is False


def test_a_hand_edited_negative_lr_is_refused_when_querying(run):
    store = run.featurize()
    manifest = json.loads((store.root / "manifest.json").read_text())
    manifest["checkpoints"][1]["lr"] = -5
    (store.root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=r"field 'checkpoints\[1\]\.lr' must be a positive finite number; got -5"):
        gt.Attributor(store.root, run.model, run.task).top_k(run.queries, k=2)
