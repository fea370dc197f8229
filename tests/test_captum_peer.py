"""Peer tier: scores and self-influence equal Captum's ``TracInCP`` on the
same float64 MLP and the same three checkpoints (different learning rates)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from captum.influence import TracInCP
from torch import nn
from torch.utils.data import TensorDataset

import gradtrace as gt

LRS = [0.4, 0.15, 0.03]
TOL = dict(rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("kind", ["none", "factored"])
def test_matches_captum_tracincp(h, tmp_path, kind):
    model = h.make_mlp(d_in=6, hidden=5, n_out=3, seed=0)
    ckpts = h.write_checkpoints(lambda s: h.make_mlp(d_in=6, hidden=5, n_out=3, seed=s), tmp_path / "ck", LRS)
    x_train, y_train = h.classification_data(11, d_in=6, seed=1)
    x_test, y_test = h.classification_data(4, d_in=6, seed=2)

    config = gt.FeaturizeConfig(projection=gt.ProjectionConfig(kind), batch_size=4, shard_size=5, dtype="float64")
    task = gt.ClassificationTask()
    store = gt.featurize(model, task, ckpts, (x_train, y_train), tmp_path / "store", config, progress=False)
    attributor = gt.Attributor(store, model, task)
    ours = attributor.score((x_test, y_test))
    ours_self = attributor.self_influence()

    lr_of = {path: lr for path, lr in ckpts}

    def load(m: nn.Module, path: str) -> float:
        m.load_state_dict(torch.load(path, weights_only=True))
        return lr_of[path]

    peer_model = h.make_mlp(d_in=6, hidden=5, n_out=3, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tracin = TracInCP(
            peer_model,
            TensorDataset(x_train, y_train),
            checkpoints=[path for path, _ in ckpts],
            checkpoints_load_func=load,
            loss_fn=nn.CrossEntropyLoss(reduction="sum"),
            batch_size=4,
            sample_wise_grads_per_batch=True,
        )
        theirs = tracin.influence((x_test, y_test), k=None).detach().numpy()
        theirs_self = tracin.self_influence(show_progress=False).detach().numpy()

    assert theirs.shape == ours.shape == (4, 11)
    assert np.abs(theirs).max() > 1e-2
    np.testing.assert_allclose(ours, theirs, **TOL)
    np.testing.assert_allclose(ours_self, theirs_self, **TOL)
    # top-k agrees with Captum's ranking as well
    top = attributor.top_k((x_test, y_test), k=3)
    np.testing.assert_array_equal(top.indices, np.argsort(-theirs, axis=1)[:, :3])
