"""Kronfluence (identity, K-FAC, EK-FAC influence functions) on a case
prepared by benchmarks/peers.py; runs in benchmarks/.peers/kronfluence.

Measurement: the query's cross-entropy loss (the behaviour gradtrace
scores). Kronfluence is made for one model: its variants use the final
checkpoint (``last``) and, as TracIn does, the learning-rate-weighted sum of
the scores of each checkpoint (``all``). Damping: Kronfluence's heuristic
(``heuristic``: 0.1 x mean eigenvalue, the same rule as gradtrace's default)
and absolute values.

A language-model case (``lm_lds``): the training loss and the measurement
are the summed NLL of the completion tokens (the case's ``labels``, -100
elsewhere: gradtrace's CausalLMTask), the true Fisher samples each
completion token from the model; padding is masked out of the factors
(``get_attention_mask``); every ``nn.Linear`` is tracked (Kronfluence's
default), the layers gradtrace attributes.
"""

from __future__ import annotations

import logging
import shutil
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


class CompletionTask(Task):
    """Summed completion NLL of a causal LM (gradtrace's CausalLMTask)."""

    def _nll(self, batch, model, sample):  # type: ignore[no-untyped-def]
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        if sample:
            with torch.no_grad():
                gen = torch.Generator().manual_seed(0)
                drawn = torch.multinomial(F.softmax(logits.detach().reshape(-1, logits.shape[-1]).float(), -1), 1, generator=gen)
                labels = torch.where(labels != -100, drawn.view_as(labels), labels)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum")

    def compute_train_loss(self, batch, model, sample=False):  # type: ignore[no-untyped-def]
        return self._nll(batch, model, sample)

    def compute_measurement(self, batch, model):  # type: ignore[no-untyped-def]
        return self._nll(batch, model, False)

    def get_attention_mask(self, batch):  # type: ignore[no-untyped-def]
        return batch["attention_mask"]


class Rows(torch.utils.data.Dataset):
    """Dict rows of an LM case's token arrays."""

    def __init__(self, arrays: dict[str, torch.Tensor]):
        self.arrays = arrays

    def __len__(self) -> int:
        return int(next(iter(self.arrays.values())).shape[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.arrays.items()}


def run(case: Case, method: str, rec: Recorder) -> None:
    if method not in ("identity", "kfac", "ekfac"):
        raise SystemExit(f"unknown kronfluence method {method!r}")
    pairwise = case.mode == "pairwise"
    if case.is_lm:
        task: Task = CompletionTask()
        train: torch.utils.data.Dataset = Rows(case.token_arrays("train"))
        queries = Rows(case.token_arrays("query"))
    else:
        task = ClassificationTask()
        train = TensorDataset(*case.tensors("train"))
        queries = TensorDataset(*case.tensors("query")) if pairwise else None
    out_dir = tempfile.mkdtemp(prefix="kronfluence-peers-")
    fishers = {"true": False, "empirical": True} if method != "identity" else {"true": False}
    # the LM case: the heuristic damping alone (gradtrace's rule), to fit the CPU budget
    dampings = DAMPINGS if method != "identity" and not case.is_lm else {"heuristic": None}
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

    def scores(fisher: str, c: int, dname: str) -> np.ndarray:  # each checkpoint's scores once (all reuses last's)
        return rec.cached(f"scores_{fisher}_{c}_{dname}", lambda: compute(fisher, c, dname))

    def compute(fisher: str, c: int, dname: str) -> np.ndarray:
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

    try:
        for fisher in fishers:
            for ck, idx in ckpts.items():
                for dname in dampings:
                    rec.variant(f"{fisher}_{ck}_damping={dname}",
                                lambda: sum(case.lrs[c] * scores(fisher, c, dname) for c in idx) if ck == "all" else scores(fisher, idx[0], dname))
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


if __name__ == "__main__":
    main(run)
