"""Kronfluence (identity, K-FAC, EK-FAC influence functions) on a case
prepared by benchmarks/peers.py; runs in benchmarks/.peers/kronfluence.

Measurement: the query's cross-entropy loss (the behaviour gradtrace
scores). Kronfluence is made for one model: its variants use the final
checkpoint (``last``) and, as TracIn does, the learning-rate-weighted sum of
the scores of each checkpoint (``all``). Damping: Kronfluence's heuristic
(``heuristic``: 0.1 x mean eigenvalue, the same rule as gradtrace's default)
and absolute values.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Case, Recorder, main  # noqa: E402

from kronfluence.analyzer import Analyzer, prepare_model  # noqa: E402
from kronfluence.arguments import FactorArguments, ScoreArguments  # noqa: E402
from kronfluence.task import Task  # noqa: E402

DAMPINGS = {"heuristic": None, "1e-3": 1e-3, "1e-1": 1e-1}


class ClassificationTask(Task):
    def compute_train_loss(self, batch, model, sample=False):  # type: ignore[no-untyped-def]
        x, y = batch
        logits = model(x)
        if sample:
            with torch.no_grad():
                gen = torch.Generator().manual_seed(0)
                y = torch.multinomial(F.softmax(logits.detach(), -1), 1, generator=gen).flatten()
        return F.cross_entropy(logits, y, reduction="sum")

    def compute_measurement(self, batch, model):  # type: ignore[no-untyped-def]
        x, y = batch
        return F.cross_entropy(model(x), y, reduction="sum")


def run(case: Case, method: str, rec: Recorder) -> None:
    if method not in ("identity", "kfac", "ekfac"):
        raise SystemExit(f"unknown kronfluence method {method!r}")
    task = ClassificationTask()
    train = TensorDataset(*case.tensors("train"))
    pairwise = case.mode == "pairwise"
    queries = TensorDataset(*case.tensors("query")) if pairwise else None
    out_dir = tempfile.mkdtemp(prefix="kronfluence-peers-")
    fishers = {"true": False, "empirical": True} if method != "identity" else {"true": False}
    dampings = DAMPINGS if method != "identity" else {"heuristic": None}
    ckpts = {"last": [len(case.checkpoints) - 1], "all": list(range(len(case.checkpoints)))}
    analyzers: dict[tuple[str, int], Analyzer] = {}

    def analyzer(fisher: str, c: int) -> Analyzer:
        return rec.cached(f"factors_{fisher}_{c}", lambda: fit(fisher, c))

    def fit(fisher: str, c: int) -> Analyzer:
        if (fisher, c) not in analyzers:
            model = prepare_model(case.model(c), task)
            a = Analyzer(analysis_name=f"ckpt{c}", model=model, task=task, cpu=True, disable_tqdm=True,
                         output_dir=out_dir, log_level=logging.WARNING)
            args = FactorArguments(strategy=method, use_empirical_fisher=fishers[fisher])
            a.fit_all_factors(factors_name=f"{method}_{fisher}", dataset=train, per_device_batch_size=256, factor_args=args)
            analyzers[fisher, c] = a
        return analyzers[fisher, c]

    def scores(fisher: str, c: int, dname: str) -> np.ndarray:
        a = analyzer(fisher, c)
        name = f"s_{method}_{fisher}_{dname}"
        sargs = ScoreArguments(damping_factor=dampings[dname])
        if pairwise:
            a.compute_pairwise_scores(scores_name=name, factors_name=f"{method}_{fisher}", query_dataset=queries,
                                      train_dataset=train, per_device_query_batch_size=64, per_device_train_batch_size=256,
                                      score_args=sargs)
            return a.load_pairwise_scores(name)["all_modules"].double().numpy()
        a.compute_self_scores(scores_name=name, factors_name=f"{method}_{fisher}", train_dataset=train,
                              per_device_train_batch_size=256, score_args=sargs)
        return a.load_self_scores(name)["all_modules"].double().numpy()

    for fisher in fishers:
        for ck, idx in ckpts.items():
            for dname in dampings:
                rec.variant(f"{fisher}_{ck}_damping={dname}",
                            lambda: sum(case.lrs[c] * scores(fisher, c, dname) for c in idx) if ck == "all" else scores(fisher, idx[0], dname))


if __name__ == "__main__":
    main(run)
