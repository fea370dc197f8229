"""Captum's TracInCP on a case prepared by benchmarks/peers.py: exact
gradients of all parameters over the checkpoints, weighted by their
learning rates (Captum's ``checkpoints_load_func`` returns the rate)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Case, Recorder, main, make_mlp  # noqa: E402

from captum.influence import TracInCP  # noqa: E402


def run(case: Case, method: str, rec: Recorder) -> None:
    if method != "tracincp":
        raise SystemExit(f"unknown captum method {method!r}")
    lr_of = dict(zip(case.checkpoints, case.lrs))
    model = make_mlp(case.meta["hidden"])

    def load(m: nn.Module, path: str) -> float:
        m.load_state_dict(torch.load(path, weights_only=True))
        return lr_of[path]

    def scores() -> torch.Tensor:
        tracin = TracInCP(model, TensorDataset(*case.tensors("train")), case.checkpoints, checkpoints_load_func=load,
                          loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=64, sample_wise_grads_per_batch=True)
        if case.mode == "pairwise":
            return tracin.influence(case.tensors("query"), k=None)
        return tracin.self_influence()

    rec.variant("exact", scores)


if __name__ == "__main__":
    main(run)
