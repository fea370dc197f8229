"""A damaged store is an error naming the file, never a silent wrong answer
or a traceback: shard files are checked on every read, the manifest, shard
records and ids files like user input; stores written before these checks
still open."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import gradtrace.fingerprint as fingerprint
from gradtrace import Attributor, GradientStore, QueryFeatures
from gradtrace.errors import StoreError
from gradtrace.scoring.attributor import self_influence
from gradtrace.store import open_for_writing
from store_builders import N, SHARD, edit_json, fill, make_store, segment_for, settings, shard_arrays, write_checkpoint_files

HINT = "re-run featurize with the same arguments"
OLD_STORE = Path(__file__).parent / "data" / "store_v1_c079224"  # written by gradtrace at commit c079224


@pytest.fixture(autouse=True)
def fresh_digest_cache():
    """Each test starts with no file verified in this process."""
    fingerprint.forget_digests()
    yield
    fingerprint.forget_digests()


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "store", write_checkpoint_files(tmp_path / "ckpts"))


def _stem(store, c=1, a=4, b=8):
    return store.root / f"ckpt_{c:03d}" / f"rows_{a:09d}_{b:09d}"


def _file(store, suffix, c=1, a=4, b=8):
    stem = _stem(store, c, a, b)
    return stem.with_name(stem.name + suffix)


def _flip_last_byte(path):
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))


def _rewrite_npy(path, array):
    with open(path, "wb") as fh:
        np.save(fh, array)


def _query_features(store, n=3):
    q = torch.randn(n, store.feature_dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    unit = q / q.norm(dim=1, keepdim=True)
    return QueryFeatures([unit] * len(store.checkpoints), [torch.ones(n, dtype=torch.float64)] * len(store.checkpoints), "q", n)


# -- shard files ------------------------------------------------------------------

def test_a_clean_store_reads_as_written(store):
    for c, a, b in store.iter_shards():
        rows, norms = shard_arrays(store, c, a, b)
        np.testing.assert_array_equal(store.features(c, a, b), rows)
        np.testing.assert_array_equal(store.norms(c, a, b), norms)
    assert store.verify() == [] and store.invalid_shards() == []


CORRUPTIONS = {
    "features byte flipped": (".features.npy", _flip_last_byte, "does not match its recorded checksum"),
    "norms byte flipped": (".norms.npy", _flip_last_byte, "does not match its recorded checksum"),
    "features truncated": (".features.npy", lambda p: p.write_bytes(p.read_bytes()[:-8]), "bytes; its header and shape (4, 6) float32 need"),
    "norms truncated": (".norms.npy", lambda p: p.write_bytes(p.read_bytes()[:-8]), "bytes; its header and shape (4, 2) float64 need"),
    "features header shape": (".features.npy", lambda p: _rewrite_npy(p, np.zeros((4, 5), np.float32)), "header of shape (4, 5) float32"),
    "features header dtype": (".features.npy", lambda p: _rewrite_npy(p, np.zeros((4, 6), np.float64)), "header of shape (4, 6) float64"),
    "features header rows": (".features.npy", lambda p: _rewrite_npy(p, np.zeros((5, 6), np.float32)), "header of shape (5, 6) float32"),
    "features Fortran order": (".features.npy", lambda p: _rewrite_npy(p, np.asfortranarray(np.zeros((4, 6), np.float32))), "Fortran order"),
    "features not npy": (".features.npy", lambda p: p.write_bytes(b"garbage" * 20), "is not a readable .npy file"),
    "features deleted": (".features.npy", Path.unlink, "is missing"),
    "norms deleted": (".norms.npy", Path.unlink, "is missing"),
    "record not JSON": (".json", lambda p: p.write_text("{oops"), "is not valid JSON"),
    "record a list": (".json", lambda p: p.write_text("[]"), "must hold a JSON object; got list"),
    "record other rows": (".json", lambda p: edit_json(p, lambda d: d.update(start=0)), "field 'start' must be 4 (from its file name); got 0"),
    "record without checksums": (".json", lambda p: edit_json(p, lambda d: d.pop("sha256")), "field 'sha256' must map exactly"),
    "record bad checksum": (".json", lambda p: edit_json(p, lambda d: d["sha256"].update({next(iter(d["sha256"])): "abc"})), "must be 64 lowercase hex digits; got 'abc'"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_a_damaged_shard_is_an_error_naming_the_file(store, case):
    suffix, damage, problem = CORRUPTIONS[case]
    target = _file(store, suffix) if suffix != ".json" else _stem(store).with_suffix(".json")
    damage(target)
    read = store.norms if suffix == ".norms.npy" else store.features
    with pytest.raises(StoreError) as err:
        read(1, 4, 8)
    message = str(err.value)
    assert repr(str(target)) in message and problem in message and HINT in message
    # the other shards still read; the damaged one is listed, with the file and the problem
    store.features(0, 4, 8)
    store.norms(1, 0, 4)
    assert [(c, a, b) for c, a, b, _ in store.invalid_shards()] == [(1, 4, 8)]
    assert store.invalid_shards()[0][3].startswith(target.name)


def test_a_flipped_byte_no_longer_changes_rankings(store):
    """The seen case: one flipped byte made a clean example every query's top opponent."""
    qf = _query_features(store)
    assert abs(Attributor(store, None, None).score(qf)).max() < 10
    target = _file(store, ".features.npy")
    raw = bytearray(target.read_bytes())
    raw[-4:] = np.float32(-1e30).tobytes()  # the last entry of example 7 becomes huge
    target.write_bytes(bytes(raw))
    reopened = GradientStore.open(store.root)
    with pytest.raises(StoreError, match="does not match its recorded checksum"):
        Attributor(reopened, None, None).top_k(qf, k=3, largest=False)
    unchecked = GradientStore.open(store.root, verify=False)  # what main did: a wrong answer
    assert abs(Attributor(unchecked, None, None).score(qf)[:, 7]).max() > 1e20


def test_a_flipped_norm_no_longer_ranks_first_in_self_influence(store):
    _flip_last_byte(_file(store, ".norms.npy"))
    with pytest.raises(StoreError, match="rows_000000004_000000008.norms.npy"):
        self_influence(GradientStore.open(store.root))


def test_verification_can_be_turned_off_but_structure_is_always_checked(store):
    target = _file(store, ".features.npy")
    _flip_last_byte(target)
    unchecked = GradientStore.open(store.root, verify=False)
    assert unchecked.features(1, 4, 8).shape == (4, 6)
    store.verify_reads = False  # settable after opening too
    store.features(1, 4, 8)
    store.verify_reads = True
    with pytest.raises(StoreError, match="checksum"):
        store.features(1, 4, 8)
    target.write_bytes(target.read_bytes()[:-4])
    with pytest.raises(StoreError, match="need"):
        unchecked.features(1, 4, 8)


def test_each_file_is_hashed_once_until_it_changes(store, monkeypatch):
    hashed = []
    real = fingerprint.stream_sha256

    def counting(fh):
        hashed.append(fh.name)
        return real(fh)

    monkeypatch.setattr(fingerprint, "stream_sha256", counting)
    for _ in range(3):
        store.features(0, 0, 4)
        store.norms(0, 0, 4)
    assert len(hashed) == 2
    # replaced by a file with other bytes (a new inode): hashed again and caught
    target = _file(store, ".features.npy", 0, 0, 4)
    raw = bytearray(target.read_bytes())
    raw[-1] ^= 0xFF
    tmp = target.with_name("replacement")
    tmp.write_bytes(bytes(raw))
    os.replace(tmp, target)
    with pytest.raises(StoreError, match="checksum"):
        store.features(0, 0, 4)
    assert len(hashed) == 3
    # rewritten in place with a new mtime: hashed again
    raw[-1] ^= 0xFF
    target.write_bytes(bytes(raw))
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    store.features(0, 0, 4)
    assert len(hashed) == 4


def test_repair_lists_damaged_shards_as_missing_and_a_rewrite_fixes_them(store):
    _flip_last_byte(_file(store, ".features.npy"))
    _file(store, ".norms.npy", 0, 8, 10).unlink()
    _stem(store, 0, 0, 4).with_suffix(".json").write_text("not json")
    assert store.missing_shards() == []
    found = store.repair()
    assert sorted((c, a, b) for c, a, b, _ in found) == [(0, 0, 4), (0, 8, 10), (1, 4, 8)]
    assert sorted(store.missing_shards()) == [(0, 0, 4), (0, 8, 10), (1, 4, 8)]
    assert not store.complete
    fill(store)
    assert store.complete and store.verify() == [] and store.invalid_shards() == []
    rows, _ = shard_arrays(store, 1, 4, 8)
    np.testing.assert_array_equal(store.features(1, 4, 8), rows)


def test_inspect_verify_reports_a_bad_record_instead_of_a_traceback(store):
    _stem(store).with_suffix(".json").write_text("{")
    _flip_last_byte(_file(store, ".features.npy", 0, 0, 4))
    problems = store.verify()
    assert problems[0] == "rows_000000000_000000004.features.npy: checksum mismatch"
    assert problems[1].startswith("rows_000000004_000000008.json: is not valid JSON")
    assert len(problems) == 2


# -- the manifest, checked like user input ---------------------------------------------

def _set(path, value):
    def change(m):
        *parents, last = path
        for key in parents:
            m = m[key]
        m[last] = value
    return change


def _drop(key):
    return lambda m: m.pop(key)


MANIFEST_CASES = {
    "lr negative": (_set(["checkpoints", 0, "lr"], -5), "checkpoints[0].lr", "a positive finite number; got -5"),
    "lr zero": (_set(["checkpoints", 1, "lr"], 0), "checkpoints[1].lr", "got 0"),
    "lr not a number": (_set(["checkpoints", 0, "lr"], "0.1"), "checkpoints[0].lr", "got '0.1'"),
    "lr NaN": (_set(["checkpoints", 0, "lr"], float("nan")), "checkpoints[0].lr", "got nan"),
    "lr true": (_set(["checkpoints", 0, "lr"], True), "checkpoints[0].lr", "got True"),
    "step not an integer": (_set(["checkpoints", 0, "step"], "one"), "checkpoints[0].step", "an integer; got 'one'"),
    "checkpoint path": (_set(["checkpoints", 0, "path"], 3), "checkpoints[0].path", "a non-empty string; got 3"),
    "no checkpoints": (_set(["checkpoints"], []), "'checkpoints'", "a non-empty list; got []"),
    "segments missing": (_drop("segments"), "'segments'", "is missing"),
    "segments not a list": (_set(["segments"], {"start": 0}), "'segments'", "a list; got {'start': 0}"),
    "segment gap": (_set(["segments", 0, "start"], 2), "segments[0].start", "must be 0"),
    "segment empty": (_set(["segments", 0, "stop"], 0), "segments[0].stop", "an integer >= 1; got 0"),
    "segment extra key": (_set(["segments", 0, "extra"], 1), "segments[0]", "exactly the keys"),
    "segment ids outside": (_set(["segments", 0, "ids_file"], "../../etc/passwd"), "segments[0].ids_file", "a relative path inside the store"),
    "feature_dim zero": (_set(["feature_dim"], 0), "'feature_dim'", "an integer >= 1; got 0"),
    "feature_dim string": (_set(["feature_dim"], "6"), "'feature_dim'", "got '6'"),
    "config shard_size": (_set(["config", "shard_size"], 0), "'config.shard_size'", "an integer >= 1; got 0"),
    "config dtype": (_set(["config", "dtype"], "int8"), "'config.dtype'", "got 'int8'"),
    "config not an object": (_set(["config"], [1]), "'config'", "a JSON object; got [1]"),
    "projection kind": (_set(["config", "projection", "kind"], "magic"), "'config.projection.kind'", "got 'magic'"),
    "param_names a string": (_set(["model", "param_names"], "w"), "model.param_names", "a non-empty list; got 'w'"),
    "param_names numbers": (_set(["model", "param_names"], [1]), "model.param_names[0]", "got 1"),
    "factor_layout pair": (_set(["model", "factor_layout"], [[3]]), "model.factor_layout[0]", "got [3]"),
    "factor_layout width": (_set(["model", "factor_layout"], [[2, 3]]), "model.factor_layout", "summing to feature_dim (6)"),
    "model missing": (_drop("model"), "'model'", "is missing"),
    "fingerprints length": (_set(["checkpoint_fingerprints"], [None]), "checkpoint_fingerprints", "a list of 2"),
    "fingerprint sha": (_set(["checkpoint_fingerprints", 0, "sha256"], "xyz"), "checkpoint_fingerprints[0].sha256", "got 'xyz'"),
}


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_a_bad_manifest_field_is_named_with_its_rule_and_value(store, case):
    change, field, rule_and_value = MANIFEST_CASES[case]
    path = store.root / "manifest.json"
    edit_json(path, change)
    with pytest.raises(StoreError) as err:
        GradientStore.open(store.root)
    message = str(err.value)
    assert repr(str(path)) in message and field in message and rule_and_value in message


@pytest.mark.parametrize(
    "text,expected",
    [("[1, 2]", r"must hold a JSON object \(a gradtrace store manifest\); got a list"),
     ('"store"', "got a string"),
     ("\xff\xfe", "not valid JSON")],
)
def test_a_manifest_that_is_no_object_is_an_error(store, text, expected):
    (store.root / "manifest.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(StoreError, match=expected):
        GradientStore.open(store.root)


# -- ids files ---------------------------------------------------------------------------

IDS_CASES = {
    "deleted": (Path.unlink, "is missing: the store cannot name its examples"),
    "not JSON": (lambda p: p.write_text("[oops"), "is not valid JSON"),
    "a list": (lambda p: p.write_text("[]"), "must hold a JSON object; got a list"),
    "too few ids": (lambda p: edit_json(p, lambda d: d["ids"].pop()), "field 'ids' must be a list of 10 strings"),
    "numbers as ids": (lambda p: edit_json(p, lambda d: d.update(ids=list(range(10)))), "field 'ids' must be a list of 10 strings"),
    "repeated id": (lambda p: edit_json(p, lambda d: d["ids"].__setitem__(3, "x0")), "must be unique in the store"),
    "tags of another length": (lambda p: edit_json(p, lambda d: d.update(tags=[1])), "field 'tags' must be null or a list of 10"),
}


@pytest.mark.parametrize("case", list(IDS_CASES))
def test_a_bad_ids_file_is_an_error_naming_it(store, case):
    damage, expected = IDS_CASES[case]
    path = store.root / "ids" / "segment_000.json"
    damage(path)
    with pytest.raises(StoreError) as err:
        GradientStore.open(store.root).ids
    assert repr(str(path)) in str(err.value) and expected in str(err.value)


def test_ids_shared_between_segments_are_an_error(store):
    store.add_segment("data-1", ["y0", "y1"], None)
    edit_json(store.root / "ids" / "segment_001.json", lambda d: d.update(ids=["y0", "x3"]))
    with pytest.raises(StoreError, match=r"segment_001.json.*unique in the store.*\['x3'\]"):
        GradientStore.open(store.root).ids


# -- stores written before these checks ---------------------------------------------------

def test_a_store_written_by_the_previous_code_still_opens_and_reads(tmp_path):
    root = tmp_path / "old"
    shutil.copytree(OLD_STORE, root)
    store = GradientStore.open(root)
    assert store.checkpoint_fingerprints is None and store.complete
    assert store.ids == [f"x{i}" for i in range(N)] and store.tags == ["t"] * N
    for c, a, b in store.iter_shards():
        rows, norms = shard_arrays(store, c, a, b)
        np.testing.assert_array_equal(store.features(c, a, b), rows)
        np.testing.assert_array_equal(store.norms(c, a, b), norms)
    assert store.verify() == [] and store.invalid_shards() == []
    with pytest.warns(UserWarning, match="checkpoint files cannot be checked"):
        store.check_checkpoints()
    # a resumed (or joining) writer accepts it too: same settings, nothing to redo
    manifest = json.loads((root / "manifest.json").read_text())
    old_settings = {k: manifest[k] for k in ("config", "model", "task", "checkpoints", "feature_dim")}
    assert old_settings == settings(["ckpt_0.pt", "ckpt_1.pt"], seed=3, dtype="float16")
    with pytest.warns(UserWarning, match="cannot be checked"):
        with open_for_writing(root, old_settings, prepare=segment_for()) as session:
            assert session.prepared.stop == N and session.store.missing_shards() == [] and session.repaired == []
    assert len(store.shard_ranges()) == -(-N // SHARD)
