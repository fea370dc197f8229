"""gradtrace's methods on a case prepared by benchmarks/peers.py (run in the
project's own environment; see _common.py for the calling convention)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Case, Recorder, main  # noqa: E402

from gradtrace.checkpoints import CheckpointRef  # noqa: E402
from gradtrace.config import FeaturizeConfig  # noqa: E402
from gradtrace.featurize import featurize  # noqa: E402
from gradtrace.grads.projection import ProjectionConfig  # noqa: E402
from gradtrace.scoring.attributor import Attributor  # noqa: E402
from gradtrace.scoring.factors import fit_factors  # noqa: E402
from gradtrace.scoring.methods import (  # noqa: E402
    AdamMethod, EKFACMethod, FisherMethod, KFACMethod, TrackStarMethod, TrackStarTransform, fit_whitening,
)
from gradtrace.task import ClassificationTask  # noqa: E402

DAMPINGS = (0.01, 0.1, 1.0)


def run(case: Case, method: str, rec: Recorder) -> None:
    task = ClassificationTask()
    refs = [CheckpointRef(p, lr, step=i) for i, (p, lr) in enumerate(zip(case.checkpoints, case.lrs))]
    model = case.model(0)
    train = case.tensors("train")
    pairwise = case.mode == "pairwise"
    queries = case.tensors("query") if pairwise else None
    tmp = Path(tempfile.mkdtemp(prefix=f"gradtrace-peers-{method}-"))

    def store(projection: ProjectionConfig, **kw: object) -> Attributor:
        fc = FeaturizeConfig(projection=projection, batch_size=256)
        return Attributor(featurize(model, task, refs, train, tmp / "store", fc, progress=False, **kw), model, task)

    def out(att: Attributor, variant: object) -> object:
        return att.score(queries, variant=variant) if pairwise else att.self_influence(variant)

    dense = ProjectionConfig("dense", 1024, seed=0)
    exact = ProjectionConfig("factored")
    if method in ("adam", "trackstar"):
        states = [torch.load(p, weights_only=True) for p in case.meta["optimizer_states"]]
    if method == "raw":
        rec.variant("exact", lambda: out(rec.cached("store", lambda: store(exact)), "raw"))
    elif method == "cosine":
        rec.variant("dense1024", lambda: out(rec.cached("store", lambda: store(dense)), "cosine"))
    elif method == "adam":
        rec.variant("dense1024", lambda: out(rec.cached("store", lambda: store(dense)), AdamMethod(states)))
    elif method == "fisher":
        for d in DAMPINGS:
            rec.variant(f"dense1024_damping={d}", lambda: out(rec.cached("store", lambda: store(dense)), FisherMethod(d)))
    elif method in ("kfac", "ekfac"):
        cls = KFACMethod if method == "kfac" else EKFACMethod
        fishers = ("empirical", "true") if method == "ekfac" else ("empirical",)

        def fitted(fisher: str) -> Attributor:
            att = rec.cached("store", lambda: store(exact))
            rec.cached(f"factors_{fisher}", lambda: fit_factors(att.store, model, task, train, name=fisher, fisher=fisher, progress=False))
            return att

        for fisher in fishers:
            for ck in ("all", "last"):
                for d in DAMPINGS:
                    rec.variant(f"{fisher}_{ck}_damping={d}", lambda: out(fitted(fisher), cls(d, checkpoints=ck, factors=fisher)))
    elif method == "trackstar":
        def tracked(whitening: bool) -> Attributor:
            att = rec.cached("store", lambda: store(dense, train_transform=TrackStarTransform(states, refs)))
            if whitening:
                rec.cached("whitening", lambda: fit_whitening(att, case.tensors("task"), TrackStarMethod(states), name="task"))
            return att

        for ck in ("all", "last"):
            rec.variant(f"{ck}", lambda: out(tracked(False), TrackStarMethod(states, checkpoints=ck)))
            if pairwise:
                rec.variant(f"{ck}_whitening", lambda: out(tracked(True), TrackStarMethod(states, checkpoints=ck, whitening="task")))
    else:
        raise SystemExit(f"unknown gradtrace method {method!r}")


if __name__ == "__main__":
    main(run)
