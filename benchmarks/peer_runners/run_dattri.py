"""dattri (TracIn, TRAK) on a case prepared by benchmarks/peers.py; runs in
benchmarks/.peers/dattri.

TracIn: gradient dot products over the checkpoints weighted by their
learning rates, projected with dattri's random projection (its default 512
dimensions, and 4096). TRAK: dattri's TRAK over the final checkpoint alone
projected to 512 and 1024 dimensions (below the 1,438 training examples, so
X^T X stays invertible without regularisation), and over the 5 checkpoints
as its ensemble at 512; its output function is the margin log(p / (1 - p))
of the label (dattri's examples), whose increase is the query loss's decrease.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Case, Recorder, main, make_mlp  # noqa: E402

from dattri.algorithm.tracin import TracInAttributor  # noqa: E402
from dattri.algorithm.trak import TRAKAttributor  # noqa: E402
from dattri.task import AttributionTask  # noqa: E402


def run(case: Case, method: str, rec: Recorder) -> None:
    model = make_mlp(case.meta["hidden"]).eval()
    states = case.state_dicts()
    loader = lambda name: DataLoader(TensorDataset(*case.tensors(name)), batch_size=64, shuffle=False)  # noqa: E731
    train = loader("train")
    pairwise = case.mode == "pairwise"

    def loss(params, data):  # type: ignore[no-untyped-def]
        x, y = data
        return nn.functional.cross_entropy(torch.func.functional_call(model, params, x.unsqueeze(0)), y.unsqueeze(0))

    def margin(params, data):  # TRAK's output function, as in dattri's examples: log(p / (1 - p)) of the label
        logp = -loss(params, data)
        return logp - torch.log(1 - torch.exp(logp))

    def correct_probability(params, data):  # type: ignore[no-untyped-def]
        x, y = data
        return torch.exp(-nn.functional.cross_entropy(torch.func.functional_call(model, params, x.unsqueeze(0)), y.unsqueeze(0)))

    if method == "tracin":
        for dim in (512, 4096):
            def tracin() -> torch.Tensor:
                task = AttributionTask(loss_func=loss, model=model, checkpoints=states)
                att = TracInAttributor(task=task, weight_list=torch.tensor(case.lrs), normalized_grad=False,
                                       projector_kwargs={"proj_dim": dim, "proj_seed": 0, "device": "cpu"}, device="cpu")
                return att.attribute(train, loader("query")).T if pairwise else att.self_attribute(train)
            rec.variant(f"proj{dim}", tracin)
    elif method == "trak":
        for ck, chosen, dim in (("last", states[-1:], 512), ("last", states[-1:], 1024), ("all", states, 512)):
            if True:
                def trak() -> torch.Tensor:
                    task = AttributionTask(loss_func=margin, model=model, checkpoints=chosen)
                    att = TRAKAttributor(task=task, correct_probability_func=correct_probability,
                                         projector_kwargs={"proj_dim": dim, "proj_seed": 0, "device": "cpu"}, device="cpu")
                    if not pairwise:  # dattri's self_attribute reads its own loader, not a cached one
                        return att.self_attribute(train).flatten()  # dattri returns [n_train, 1]
                    att.cache(train)
                    return att.attribute(loader("query")).T
                rec.variant(f"{ck}_proj{dim}", trak)
    else:
        raise SystemExit(f"unknown dattri method {method!r}")


if __name__ == "__main__":
    main(run)
