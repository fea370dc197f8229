"""gradtrace's methods on a case prepared by benchmarks/peers.py (run in the
project's own environment; see _common.py for the calling convention).

A language-model case (``lm_lds``) goes through gradtrace's LM path: the
loss is :class:`gradtrace.lm.tasks.CausalLMTask` (summed completion NLL)
over the prompt/completion examples, tokenized by the case's word-level
tokenizer; every ``nn.Linear`` layer's weight and bias are attributed. Its
stores: ``exact`` (no projection, 0.9M numbers per example and
checkpoint), ``kron{d}`` (each layer's gradient projected to
``sqrt(d) x sqrt(d)``, LoGra-style), ``dense{d}`` (one random projection).
``last`` variants use a store of the final checkpoint alone (its own
store and factors, charged to it), except ekfac's, which use the store
and factors of all checkpoints with ``checkpoints="last"`` (and are
charged all of them, so their seconds overstate). The stores are deleted at the end."""

from __future__ import annotations

import shutil
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
    tmp = Path(tempfile.mkdtemp(prefix=f"gradtrace-peers-{method}-"))
    try:
        (run_lm if case.is_lm else run_digits)(case, method, rec, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_digits(case: Case, method: str, rec: Recorder, tmp: Path) -> None:
    task = ClassificationTask()
    refs = [CheckpointRef(p, lr, step=i) for i, (p, lr) in enumerate(zip(case.checkpoints, case.lrs))]
    model = case.model(0)
    train = case.tensors("train")
    pairwise = case.mode == "pairwise"
    queries = case.tensors("query") if pairwise else None

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


#: the LM case's variants per method (store, checkpoints, damping): few, to fit the CPU budget (see BENCHMARKS.md):
#: raw and cosine all and last; adam and fisher all; kfac exact; ekfac exact and kron4096; trackstar exact (all) and kron256
LM_DAMPINGS = (0.01, 0.1, 1.0)
LM_KRON = 4096  # per-layer dim of the Kronecker-projected stores (64 x 64 per layer)
LM_TRACKSTAR_KRON = 256  # 16 x 16 per layer: small enough for the whitening's k x k
LM_DENSE = 1024


def run_lm(case: Case, method: str, rec: Recorder, tmp: Path) -> None:
    from _lm import word_tokenizer

    from gradtrace.lm.tasks import CausalLMTask

    task = CausalLMTask(word_tokenizer(case.meta["words"]), max_length=int(case.meta["max_length"]))
    refs = [CheckpointRef(p, lr, step=i) for i, (p, lr) in enumerate(zip(case.checkpoints, case.lrs))]
    model = case.model(0)
    train, queries = case.examples("train"), case.examples("query")
    params = tuple(case.meta["params"])
    states_all = [torch.load(p, weights_only=True) for p in case.meta["optimizer_states"]] if method in ("adam", "trackstar") else []

    def chosen(ck: str) -> tuple[list[CheckpointRef], list[object]]:
        return (refs, states_all) if ck == "all" else (refs[-1:], states_all[-1:])

    def store(name: str, projection: ProjectionConfig, ck: str, **kw: object) -> Attributor:
        def make() -> Attributor:
            # a dense projection of 0.9M numbers is too big to cache: it is drawn again for every batch, so one batch
            batch = len(train) if projection.kind == "dense" else 64
            fc = FeaturizeConfig(params=params, projection=projection, batch_size=batch)
            st = featurize(model, task, chosen(ck)[0], train, tmp / f"{name}_{ck}", fc, progress=False, **kw)
            return Attributor(st, model, task)
        return rec.cached(f"store_{name}_{ck}", make)

    exact = ProjectionConfig("none")
    kron = ProjectionConfig("kronecker", LM_KRON, seed=0)
    score = lambda att, variant: att.score(queries, variant=variant)  # noqa: E731
    if method in ("raw", "cosine"):
        for ck in ("all", "last"):
            rec.variant(f"exact_{ck}", lambda: score(store("exact", exact, ck), method))
    elif method == "adam":
        for ck in ("all",):
            rec.variant(f"exact_{ck}", lambda: score(store("exact", exact, ck), AdamMethod(chosen(ck)[1])))
    elif method == "fisher":
        dense = ProjectionConfig("dense", LM_DENSE, seed=0)
        for ck in ("all",):
            for d in LM_DAMPINGS:
                rec.variant(f"dense{LM_DENSE}_{ck}_damping={d}", lambda: score(store("dense", dense, ck), FisherMethod(d)))
    elif method in ("kfac", "ekfac"):
        cls = KFACMethod if method == "kfac" else EKFACMethod

        def fitted(name: str, projection: ProjectionConfig, ck: str) -> Attributor:
            att = store(name, projection, ck)
            rec.cached(f"factors_{name}_{ck}", lambda: fit_factors(att.store, model, task, train, name="empirical", progress=False))
            return att

        stores = (("exact", exact), (f"kron{LM_KRON}", kron)) if method == "ekfac" else (("exact", exact),)
        for name, projection in stores:
            for ck in ("all", "last"):
                for d in LM_DAMPINGS:
                    # the language-model task has no sampled loss: gradtrace fits the empirical Fisher only.
                    # ekfac's last: the store and factors of all checkpoints, checkpoints="last" (charged all of them)
                    if method == "ekfac":
                        rec.variant(f"{name}_empirical_{ck}_damping={d}",
                                    lambda: score(fitted(name, projection, "all"), cls(d, checkpoints=ck, factors="empirical")))
                    else:
                        rec.variant(f"{name}_empirical_{ck}_damping={d}",
                                    lambda: score(fitted(name, projection, ck), cls(d, factors="empirical")))
    elif method == "trackstar":
        small = ProjectionConfig("kronecker", LM_TRACKSTAR_KRON, seed=0)
        rec.variant("exact_all", lambda: score(store("exact", exact, "all"), TrackStarMethod(states_all)))
        for ck in ("all", "last"):
            def tracked(whitening: bool) -> Attributor:
                refs_ck, states = chosen(ck)
                att = store(f"kron{LM_TRACKSTAR_KRON}", small, ck, train_transform=TrackStarTransform(states, refs_ck))
                if whitening:
                    rec.cached(f"whitening_{ck}", lambda: fit_whitening(att, case.examples("task"), TrackStarMethod(states), name="task"))
                return att

            rec.variant(f"kron{LM_TRACKSTAR_KRON}_{ck}", lambda: score(tracked(False), TrackStarMethod(chosen(ck)[1])))
            rec.variant(f"kron{LM_TRACKSTAR_KRON}_{ck}_whitening",
                        lambda: score(tracked(True), TrackStarMethod(chosen(ck)[1], whitening="task")))
    else:
        raise SystemExit(f"unknown gradtrace method {method!r}")


if __name__ == "__main__":
    main(run)
