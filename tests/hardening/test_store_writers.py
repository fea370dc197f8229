"""The manifest is the truth: writers of one store are serialised by OS file
locks (a writer with other settings is refused while another runs; writers
with the same settings both finish), manifest changes re-read the manifest
first, and checkpoint files are checked against the fingerprints recorded
when the store was made."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import gradtrace
import gradtrace.store.lock as store_lock
from gradtrace.errors import CheckpointError, ConfigMismatchError, InputError, StoreError
from gradtrace.fingerprint import checkpoint_fingerprint, fingerprint_change, forget_digests
from gradtrace.store import GradientStore, open_for_writing
from gradtrace.store.io import TMP_MARK
from store_builders import N, fill, make_store, segment_for, settings, shard_arrays, write_checkpoint_files

HERE = Path(__file__).parent

HOLDER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {here!r})
from store_builders import fill, segment_for, settings
from gradtrace.store import open_for_writing

root, go, ready = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
with open_for_writing(root, settings(sys.argv[4:], seed=0), prepare=segment_for()) as session:
    ready.touch()
    deadline = time.monotonic() + 60
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    fill(session.store, session.prepared)
print("done", flush=True)
"""


def _assert_holds(store: GradientStore, seed: int) -> None:
    assert store.manifest["config"]["projection"]["seed"] == seed
    assert store.complete and store.verify() == [] and store.invalid_shards() == []
    for c, a, b in store.iter_shards():
        rows, _ = shard_arrays(store, c, a, b)
        np.testing.assert_array_equal(store.features(c, a, b), rows)
    assert not list(store.root.rglob(f"*{TMP_MARK}*"))


def test_a_second_writer_with_other_settings_is_refused_while_the_first_runs(tmp_path):
    """The seen case: the second featurize discarded and recreated the store under the first."""
    paths = write_checkpoint_files(tmp_path / "ckpts")
    root, go, ready = tmp_path / "store", tmp_path / "go", tmp_path / "ready"
    script = tmp_path / "holder.py"
    script.write_text(HOLDER.format(here=str(HERE)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(gradtrace.__file__).parents[1]), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, str(script), str(root), str(go), str(ready), *paths],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the first writer did not start"
            time.sleep(0.01)
        assert not GradientStore.open(root).has_any_shard()  # the first has not written a shard yet
        with pytest.raises(ConfigMismatchError, match="which another process is writing right now") as err:
            open_for_writing(root, settings(paths, seed=1), prepare=segment_for())
        assert err.value.differences == {"config.projection.seed": (0, 1)}
        with pytest.raises(StoreError, match="being written by another process; refusing to discard"):
            GradientStore.open(root).discard_unwritten()
        go.touch()
        out, errors = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, errors.decode()
    _assert_holds(GradientStore.open(root), seed=0)
    with pytest.raises(ConfigMismatchError, match="config.projection.seed") as err:  # finished: the ordinary refusal
        open_for_writing(root, settings(paths, seed=1), prepare=segment_for())
    assert "another process" not in str(err.value)


def _in_threads(n, target):
    errors, threads = [], []

    def run(i):
        try:
            target(i)
        except BaseException as exc:  # reported to the test below
            errors.append(exc)

    for i in range(n):
        threads.append(threading.Thread(target=run, args=(i,)))
        threads[-1].start()
    for t in threads:
        t.join(60)
    assert not errors, errors


def test_two_writers_with_the_same_settings_both_finish(tmp_path):
    paths = write_checkpoint_files(tmp_path / "ckpts")
    root = tmp_path / "store"
    both_open = threading.Barrier(2, timeout=30)
    sessions = []

    def writer(i):
        with open_for_writing(root, settings(paths), prepare=segment_for()) as session:
            sessions.append(session)
            both_open.wait()  # both are writing at once
            fill(session.store, session.prepared)

    _in_threads(2, writer)
    assert sorted(s.created for s in sessions) == [False, True]
    assert sessions[0].prepared == sessions[1].prepared  # one segment, found by the second
    _assert_holds(GradientStore.open(root), seed=0)
    assert len(GradientStore.open(root).segments) == 1


def test_a_shard_published_by_another_writer_is_kept(tmp_path):
    store = make_store(tmp_path / "store", write_checkpoint_files(tmp_path / "ckpts"))
    record = (store.root / "ckpt_000" / "rows_000000000_000000004.json").read_bytes()
    rows, norms = shard_arrays(store, 0, 0, 4)
    store.write_shard(0, 0, 4, (rows * 0).astype(rows.dtype), norms)  # a late duplicate: dropped
    assert (store.root / "ckpt_000" / "rows_000000000_000000004.json").read_bytes() == record
    np.testing.assert_array_equal(store.features(0, 0, 4), rows)
    assert not list(store.root.rglob(f"*{TMP_MARK}*"))


def test_add_segment_reads_the_manifest_again_first(tmp_path):
    store = make_store(tmp_path / "store", write_checkpoint_files(tmp_path / "ckpts"))
    first, second = GradientStore.open(store.root), GradientStore.open(store.root)
    first.add_segment("data-1", ["a0", "a1"], None)
    seg = second.add_segment("data-2", ["b0", "b1", "b2"], None)  # its manifest predates data-1
    assert (seg.start, seg.stop) == (N + 2, N + 5)
    reopened = GradientStore.open(store.root)
    assert [s.fingerprint for s in reopened.segments] == ["data-0", "data-1", "data-2"]
    assert reopened.ids[N:] == ["a0", "a1", "b0", "b1", "b2"]
    with pytest.raises(InputError, match="already in the store"):
        first.add_segment("data-3", ["b1"], None)


def test_appending_writers_each_get_their_segment(tmp_path):
    paths = write_checkpoint_files(tmp_path / "ckpts")
    root = tmp_path / "store"
    make_store(root, paths)
    all_open = threading.Barrier(3, timeout=30)

    def writer(i):
        with open_for_writing(root, settings(paths), prepare=segment_for(3, f"extra-{i}")) as session:
            all_open.wait()
            fill(session.store, session.prepared)

    _in_threads(3, writer)
    store = GradientStore.open(root)
    assert sorted(s.fingerprint for s in store.segments) == ["data-0", "extra-0", "extra-1", "extra-2"]
    assert store.n_examples == N + 9 and len(set(store.ids)) == N + 9
    _assert_holds(store, seed=0)


def test_a_store_without_shards_is_started_afresh_only_when_nobody_writes_it(tmp_path):
    paths = write_checkpoint_files(tmp_path / "ckpts")
    root = tmp_path / "store"
    open_for_writing(root, settings(paths, seed=0), prepare=segment_for()).close()  # failed before a shard
    with open_for_writing(root, settings(paths, seed=1), prepare=segment_for()) as session:
        assert session.created and session.store.manifest["config"]["projection"]["seed"] == 1
        fill(session.store, session.prepared)
    _assert_holds(GradientStore.open(root), seed=1)


def test_temporaries_of_a_running_writer_survive_a_joining_one(tmp_path):
    paths = write_checkpoint_files(tmp_path / "ckpts")
    root = tmp_path / "store"
    first = open_for_writing(root, settings(paths), prepare=segment_for())
    (root / "ckpt_000").mkdir()
    in_flight = root / "ckpt_000" / f"rows_000000000_000000004.features.npy{TMP_MARK}1-2"
    in_flight.write_bytes(b"half")
    joined = threading.Thread(target=lambda: open_for_writing(root, settings(paths), prepare=segment_for()).close())
    joined.start()
    joined.join(30)
    assert in_flight.exists()
    first.close()
    open_for_writing(root, settings(paths), prepare=segment_for()).close()  # alone now: cleans up
    assert not in_flight.exists()


def test_a_held_manifest_lock_times_out_with_a_clear_error(tmp_path):
    paths = write_checkpoint_files(tmp_path / "ckpts")
    root = tmp_path / "store"
    root.mkdir()
    held, release = threading.Event(), threading.Event()

    def holder():
        with store_lock.manifest_lock(root):
            held.set()
            release.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    try:
        held.wait(30)
        with pytest.raises(StoreError, match="held by another gradtrace process for more than 0 s"):
            open_for_writing(root, settings(paths), prepare=segment_for(), timeout=0.2)
    finally:
        release.set()
        t.join(30)
    with open_for_writing(root, settings(paths), prepare=segment_for()) as session:
        fill(session.store, session.prepared)


def test_no_lock_file_is_left_in_a_directory_that_is_refused(tmp_path):
    root = tmp_path / "busy"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        open_for_writing(root, settings(write_checkpoint_files(tmp_path / "ckpts")), prepare=segment_for())
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt"]


def test_without_fcntl_writing_still_works_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(store_lock, "fcntl", None)
    monkeypatch.setattr(store_lock, "_warned", [])
    with pytest.warns(RuntimeWarning, match="not detected"):
        store = make_store(tmp_path / "store", write_checkpoint_files(tmp_path / "ckpts"))
    _assert_holds(store, seed=0)


# -- checkpoint fingerprints -----------------------------------------------------------

def test_a_file_fingerprint_is_size_mtime_and_sha256(tmp_path):
    path = Path(write_checkpoint_files(tmp_path)[1])
    fp = checkpoint_fingerprint(path)
    st = path.stat()
    assert fp == {"size": 64, "mtime_ns": st.st_mtime_ns, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert checkpoint_fingerprint(tmp_path / "absent.pt") is None  # a name only a custom loader knows
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes: still the same
    assert fingerprint_change(path, fp) is None
    path.write_bytes(b"\x09" * 64)
    assert "has other contents" in fingerprint_change(path, fp)
    path.unlink()
    assert "no longer exists" in fingerprint_change(path, fp)


def test_a_checkpoint_folder_is_fingerprinted_by_its_weight_files(tmp_path):
    folder = tmp_path / "checkpoint-40"
    folder.mkdir()
    for name, data in [("adapter_model.safetensors", b"w" * 32), ("optimizer.pt", b"o" * 16),
                       ("trainer_state.json", b"{}"), ("README.md", b"notes"), ("training_args.bin", b"a")]:
        (folder / name).write_bytes(data)
    fp = checkpoint_fingerprint(folder)
    assert sorted(fp["files"]) == ["adapter_model.safetensors", "optimizer.pt", "trainer_state.json", "training_args.bin"]
    assert fp["size"] == 32 + 16 + 2 + 1
    (folder / "README.md").write_text("other notes")
    assert fingerprint_change(folder, fp) is None
    (folder / "optimizer.pt").write_bytes(b"p" * 16)
    assert "optimizer.pt" in fingerprint_change(folder, fp)
    (folder / "optimizer.pt").write_bytes(b"o" * 16)
    assert fingerprint_change(folder, fp) is None  # same bytes again (rehashed: the mtime moved)
    (folder / "model.safetensors").write_bytes(b"m")
    assert "added ['model.safetensors']" in fingerprint_change(folder, fp)


@pytest.mark.parametrize("when", ["query", "resume"])
def test_a_rewritten_checkpoint_is_an_error_naming_it(tmp_path, when):
    """The seen cases: a resume mixed old and new weights; a query used the new ones."""
    paths = write_checkpoint_files(tmp_path / "ckpts", n=3)
    root = tmp_path / "store"
    with open_for_writing(root, settings(paths), prepare=segment_for()) as session:
        fill(session.store, session.prepared)
        assert [fp["size"] for fp in session.store.checkpoint_fingerprints] == [64, 64, 64]
    store = GradientStore.open(root)
    store.check_checkpoints()
    Path(paths[1]).write_bytes(b"\x07" * 80)  # retrained and saved over the old file
    forget_digests()
    if when == "query":
        check = store.check_checkpoints
    else:
        def check():
            open_for_writing(root, settings(paths), prepare=segment_for())
    with pytest.raises(CheckpointError) as err:
        check()
    message = str(err.value)
    assert f"checkpoint 1 ({paths[1]!r}) changed" in message
    assert "restore the original file, or featurize into a new directory" in message
    store.check_checkpoints([0, 2])  # the others are unchanged


def test_checkpoints_a_custom_loader_names_are_not_checked(tmp_path):
    paths = ["s3://bucket/ckpt-0", "s3://bucket/ckpt-1"]
    store = make_store(tmp_path / "store", paths)
    assert store.checkpoint_fingerprints == [None, None]
    store.check_checkpoints()


def test_settings_with_tuples_are_kept_as_on_disk(tmp_path):
    """A store made from settings holding tuples compares equal to its own
    manifest when a manifest change reads it back from disk."""
    given = settings(write_checkpoint_files(tmp_path / "ckpts"))
    given["model"]["param_names"] = ("w",)
    store = GradientStore.create(tmp_path / "store", given)
    store.add_segment("data-0", ["a"], None)
    assert GradientStore.open(store.root).segments == store.segments
