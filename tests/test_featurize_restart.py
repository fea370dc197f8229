"""A featurize call that failed before writing a shard can be corrected and
re-run in the same directory; resuming with other ids is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import gradtrace as gt


def _setup(tmp_path: Path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    torch.save(model.state_dict(), tmp_path / "c0.pt")
    data = (torch.randn(9, 4, dtype=torch.float64), torch.randint(0, 3, (9,)))
    return model, data


def test_wrong_checkpoint_path_then_corrected_call_succeeds(tmp_path: Path) -> None:
    model, data = _setup(tmp_path)
    out = tmp_path / "store"
    with pytest.raises(gt.CheckpointError, match="does not exist"):
        gt.featurize(model, gt.ClassificationTask(), [(tmp_path / "missing.pt", 0.1)], data, out, progress=False)
    store = gt.featurize(model, gt.ClassificationTask(), [(tmp_path / "c0.pt", 0.1)], data, out, progress=False)
    assert store.complete
    assert store.checkpoints[0].path == str(tmp_path / "c0.pt")


def test_bad_ids_leave_nothing_that_blocks_the_corrected_call(tmp_path: Path) -> None:
    model, data = _setup(tmp_path)
    out = tmp_path / "store"
    with pytest.raises(gt.InputError, match="unique"):
        gt.featurize(model, gt.ClassificationTask(), [(tmp_path / "c0.pt", 0.1)], data, out, ids=["a"] * 9, progress=False)
    assert not (out / "manifest.json").exists()
    store = gt.featurize(model, gt.ClassificationTask(), [(tmp_path / "c0.pt", 0.1)], data, out, ids=[f"z{i}" for i in range(9)], progress=False)
    assert store.ids == [f"z{i}" for i in range(9)]


def test_resume_with_other_ids_is_refused(tmp_path: Path) -> None:
    model, data = _setup(tmp_path)
    out = tmp_path / "store"
    refs = [(tmp_path / "c0.pt", 0.1)]
    gt.featurize(model, gt.ClassificationTask(), refs, data, out, ids=[f"a{i}" for i in range(9)], progress=False)
    with pytest.raises(gt.InputError, match="ids differ"):
        gt.featurize(model, gt.ClassificationTask(), refs, data, out, ids=[f"b{i}" for i in range(9)], progress=False)
    again = gt.featurize(model, gt.ClassificationTask(), refs, data, out, ids=[f"a{i}" for i in range(9)], progress=False)
    assert again.complete and again.ids[0] == "a0"
