"""Checkpoints and input errors: every message names the file, field or value."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from torch import nn

import gradtrace as gt
from gradtrace.checkpoints import CheckpointRef, read_state_dict
from gradtrace.errors import CheckpointError, InputError


def _featurize(h, tmp_path, ckpts, data=None, task=None, **kwargs):
    model = h.make_mlp()
    return gt.featurize(
        model, task or gt.ClassificationTask(), ckpts, h.classification_data(5) if data is None else data,
        tmp_path / "store", gt.FeaturizeConfig(dtype="float64"), progress=False, **kwargs,
    )


# -- checkpoint files ---------------------------------------------------------------

def test_missing_checkpoint_file(h, tmp_path):
    missing = tmp_path / "nowhere" / "step_3.pt"
    with pytest.raises(CheckpointError, match=re.escape(str(missing)) + ".*does not exist"):
        _featurize(h, tmp_path, [(missing, 0.1)])
    with pytest.raises(CheckpointError, match="does not exist"):
        gt.load_checkpoint(h.make_mlp(), missing)


def test_checkpoint_of_another_model_names_keys(h, tmp_path):
    path = tmp_path / "other.pt"
    other = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3), nn.Linear(3, 2)).double()
    state = other.state_dict()
    del state["0.bias"]
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        gt.load_checkpoint(h.make_mlp(), path)
    message = str(err.value)
    assert str(path) in message
    assert "missing keys ['0.bias']" in message
    assert "unexpected keys ['3.bias', '3.weight']" in message
    with pytest.raises(CheckpointError, match=r"missing keys \['0\.bias'\]"):
        _featurize(h, tmp_path, [(path, 0.1)])


def test_checkpoint_with_wrong_shapes_names_them(h, tmp_path):
    path = tmp_path / "wide.pt"
    torch.save(h.make_mlp(hidden=6).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        gt.load_checkpoint(h.make_mlp(hidden=4), path)
    message = str(err.value)
    assert "0.weight: file (6, 5) vs model (4, 5)" in message
    assert "0.bias: file (6,) vs model (4,)" in message
    assert "2.weight: file (3, 6) vs model (3, 4)" in message
    assert "2.bias" not in message  # same shape: not reported


def test_failed_load_leaves_the_model_unchanged(h, tmp_path):
    path = tmp_path / "wide.pt"
    torch.save(h.make_mlp(hidden=6).state_dict(), path)
    model = h.make_mlp(seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError):
        gt.load_checkpoint(model, path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_nested_state_dict_and_non_state_dict(h, tmp_path):
    model = h.make_mlp(seed=4)
    nested = tmp_path / "nested.pt"
    torch.save({"model_state_dict": model.state_dict(), "epoch": 3}, nested)
    loaded = gt.load_checkpoint(h.make_mlp(seed=5), nested)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, model.state_dict()[k])
    junk = tmp_path / "junk.pt"
    torch.save({"weights": [1, 2, 3]}, junk)
    with pytest.raises(CheckpointError, match="state dict of tensors"):
        read_state_dict(junk)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="could not be read"):
        read_state_dict(garbage)


@dataclasses.dataclass
class Payload:
    value: int = 1


def test_pickled_objects_are_refused_by_default(h, tmp_path):
    path = tmp_path / "pickled.pt"
    state = dict(h.make_mlp().state_dict())
    torch.save({"state_dict": state, "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match="could not be read"):
        read_state_dict(path)
    assert set(read_state_dict(path, weights_only=False)) == set(state)


# -- learning rates ---------------------------------------------------------------------

@pytest.mark.parametrize("lr", [0.0, -0.1, float("nan"), float("inf")])
def test_non_positive_lr(h, tmp_path, lr):
    with pytest.raises(InputError, match="lr must be a positive finite number"):
        CheckpointRef(path="c.pt", lr=lr)
    ckpts = h.write_checkpoints(lambda s: h.make_mlp(seed=s), tmp_path / "ck", [0.1])
    with pytest.raises(InputError, match=re.escape(repr(lr))):
        _featurize(h, tmp_path, [(ckpts[0][0], lr)])


def test_checkpoint_list_shape_errors(h):
    with pytest.raises(InputError, match="at least one checkpoint"):
        gt.checkpoints_from_list([])
    with pytest.raises(InputError, match=r"checkpoints\[1\]"):
        gt.checkpoints_from_list([("a.pt", 0.1), "b.pt"])


# -- checkpoints_from_dir ------------------------------------------------------------------

def _touch_checkpoints(directory, names):
    directory.mkdir()
    for name in names:
        torch.save({"w": torch.zeros(1)}, directory / name)


def test_checkpoints_from_dir_orders_by_step(tmp_path):
    d = tmp_path / "run"
    _touch_checkpoints(d, ["ckpt_10.pt", "ckpt_2.pt", "ckpt_100.pt", "ckpt_1.pt", "notes.txt"])
    refs = gt.checkpoints_from_dir(d, lr=0.1)
    assert [r.step for r in refs] == [1, 2, 10, 100]
    assert [r.path for r in refs] == [str(d / f"ckpt_{s}.pt") for s in (1, 2, 10, 100)]
    assert all(r.lr == 0.1 for r in refs)


def test_checkpoints_from_dir_uses_the_last_number(tmp_path):
    d = tmp_path / "run"
    _touch_checkpoints(d, ["run7_step20.pt", "run7_step3.pt"])
    assert [r.step for r in gt.checkpoints_from_dir(d, lr=1.0)] == [3, 20]


def test_checkpoints_from_dir_lr_schedules(tmp_path):
    d = tmp_path / "run"
    _touch_checkpoints(d, ["s_100.pt", "s_200.pt", "s_50.pt"])
    refs = gt.checkpoints_from_dir(d, lr={50: 0.3, 100: 0.2, 200: 0.1})
    assert [(r.step, r.lr) for r in refs] == [(50, 0.3), (100, 0.2), (200, 0.1)]
    refs = gt.checkpoints_from_dir(d, lr=lambda step: 1.0 / step)
    assert [r.lr for r in refs] == [1 / 50, 1 / 100, 1 / 200]
    with pytest.raises(InputError, match=r"no entry for step 200.*s_200\.pt"):
        gt.checkpoints_from_dir(d, lr={50: 0.3, 100: 0.2})
    with pytest.raises(InputError, match="lr must be a positive"):
        gt.checkpoints_from_dir(d, lr=lambda step: 0.0 if step == 100 else 0.1)


def test_checkpoints_from_dir_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        gt.checkpoints_from_dir(tmp_path / "absent", lr=0.1)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"no checkpoint files matching '\*\.pt'"):
        gt.checkpoints_from_dir(empty, lr=0.1)
    d = tmp_path / "run"
    _touch_checkpoints(d, ["final.pt", "ckpt_1.pt"])
    with pytest.raises(InputError, match="'final.pt' has no step number"):
        gt.checkpoints_from_dir(d, lr=0.1)
    assert [r.step for r in gt.checkpoints_from_dir(d, lr=0.1, pattern="ckpt_*.pt")] == [1]


# -- data, ids, tags, task ------------------------------------------------------------------

def test_empty_data(h, tmp_path):
    ckpts = h.write_checkpoints(lambda s: h.make_mlp(seed=s), tmp_path / "ck", [0.1])
    x, y = h.classification_data(4)
    with pytest.raises(InputError, match="empty"):
        _featurize(h, tmp_path, ckpts, data=(x[:0], y[:0]))
    with pytest.raises(InputError, match="empty"):
        _featurize(h, tmp_path, ckpts, data=[])


def test_tuple_of_unequal_lengths(h, tmp_path):
    ckpts = h.write_checkpoints(lambda s: h.make_mlp(seed=s), tmp_path / "ck", [0.1])
    x, y = h.classification_data(4)
    with pytest.raises(InputError, match=r"\[4, 3\]"):
        _featurize(h, tmp_path, ckpts, data=(x, y[:3]))


def test_unsupported_data_type(h, tmp_path):
    ckpts = h.write_checkpoints(lambda s: h.make_mlp(seed=s), tmp_path / "ck", [0.1])
    with pytest.raises(InputError, match="got int"):
        _featurize(h, tmp_path, ckpts, data=5)


def test_ids_and_tags_of_wrong_length(h, tmp_path):
    ckpts = h.write_checkpoints(lambda s: h.make_mlp(seed=s), tmp_path / "ck", [0.1])
    with pytest.raises(InputError, match=r"ids: need one id per example \(5\); got 4"):
        _featurize(h, tmp_path / "a", ckpts, ids=["a", "b", "c", "d"])
    with pytest.raises(InputError, match=r"tags: need one tag per example \(5\); got 6"):
        _featurize(h, tmp_path / "b", ckpts, tags=list(range(6)))


def test_ids_and_tags_are_kept(h, tmp_path):
    ckpts = h.write_checkpoints(lambda s: h.make_mlp(seed=s), tmp_path / "ck", [0.1])
    store = _featurize(h, tmp_path, ckpts, ids=list("abcde"), tags=["x", None, 3, "y", "z"])
    reopened = gt.GradientStore.open(store.root)
    assert reopened.ids == list("abcde")
    assert reopened.tags == ["x", None, 3, "y", "z"]


@dataclasses.dataclass(frozen=True)
class ColumnTask:
    def per_example_loss(self, model, batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(model(x), y, reduction="none")[:, None]


@dataclasses.dataclass(frozen=True)
class MeanTask:
    def per_example_loss(self, model, batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(model(x), y)


def test_task_returning_a_column_names_the_shape(h, tmp_path):
    ckpts = h.write_checkpoints(lambda s: h.make_mlp(seed=s), tmp_path / "ck", [0.1])
    with pytest.raises(InputError, match=r"one value per example.*got shape \(5, 1\)"):
        _featurize(h, tmp_path / "a", ckpts, task=ColumnTask())
    with pytest.raises(InputError, match=r"got shape \(\)"):
        _featurize(h, tmp_path / "b", ckpts, task=MeanTask())


def test_object_without_per_example_loss(h, tmp_path):
    ckpts = h.write_checkpoints(lambda s: h.make_mlp(seed=s), tmp_path / "ck", [0.1])
    with pytest.raises(InputError, match="per_example_loss"):
        _featurize(h, tmp_path, ckpts, task=object())


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(method="jit"), "method"),
        (dict(batch_size=0), "batch_size"),
        (dict(shard_size=True), "shard_size"),
        (dict(dtype="bfloat16"), "dtype"),
        (dict(projection="dense"), "projection"),
    ],
)
def test_featurize_config_validation(kwargs, field):
    with pytest.raises(InputError, match=field):
        gt.FeaturizeConfig(**kwargs)


def test_featurize_config_round_trip():
    cfg = gt.FeaturizeConfig(params=["0.*", "2.weight"], projection=gt.ProjectionConfig("dense", dim=4), batch_size=3)
    assert cfg.params == ("0.*", "2.weight")
    assert gt.FeaturizeConfig.from_dict(cfg.to_dict()) == cfg


def test_store_open_errors(tmp_path):
    with pytest.raises(gt.StoreError, match="manifest.json is missing"):
        gt.GradientStore.open(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(gt.StoreError, match="not valid JSON"):
        gt.GradientStore.open(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "gradtrace.gradient-store", "format_version": 99}')
    with pytest.raises(gt.StoreError, match="format_version 99"):
        gt.GradientStore.open(tmp_path)


def test_out_directory_not_empty(h, tmp_path):
    ckpts = h.write_checkpoints(lambda s: h.make_mlp(seed=s), tmp_path / "ck", [0.1])
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "unrelated.txt").write_text("hello")
    with pytest.raises(InputError, match="not empty"):
        _featurize(h, tmp_path, ckpts)
