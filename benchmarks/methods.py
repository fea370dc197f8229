"""Every score method on the digits MLP: LDS and mislabel detection.

    python benchmarks/methods.py                    # both parts (about 15 min on 2 busy cores)
    python benchmarks/methods.py --parts mislabel   # one part; the other is kept from methods.json

*LDS*: the set-up of ``act.py --parts lds`` (clean digits, Adam, 1,500
steps, 5 checkpoints, 50 random half-subsets retrained with a fixed seed,
the loss of 40 test images). Each method scores on the store it needs:
dense 1024-dim projection (raw, cosine, adam, fisher), factored exact
gradients (raw, kfac, ekfac), dense 1024 of TrackStar-normalised gradients
(trackstar; whitening fitted on 200 other test images).

*Mislabel*: the demo's run (SGD, 200 epochs, 5 checkpoints) with 10% and
20% of the training labels flipped; training examples ranked by
self-influence under each method that has one; the share of flipped labels
found after checking the top 10% and 20%. The final loss is the baseline.

Writes benchmarks/results/methods.json and the ``methods`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import ROOT, machine, record  # noqa: E402

from gradtrace.config import FeaturizeConfig  # noqa: E402
from gradtrace.demos.digits import DigitsConfig, found_at, load_digits_data, make_mlp, train_digits  # noqa: E402
from gradtrace.featurize import featurize  # noqa: E402
from gradtrace.grads.projection import ProjectionConfig  # noqa: E402
from gradtrace.checkpoints import load_checkpoint  # noqa: E402
from gradtrace.scoring.attributor import Attributor  # noqa: E402
from gradtrace.scoring.factors import fit_factors  # noqa: E402
from gradtrace.scoring.methods import (  # noqa: E402
    AdamMethod, EKFACMethod, FisherMethod, KFACMethod, TrackStarMethod, TrackStarTransform, fit_whitening,
)
from gradtrace.task import ClassificationTask  # noqa: E402
from gradtrace.unlearn.lds import lds, retrain_subsets  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "methods.json"
COMMAND = "python benchmarks/methods.py"


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run_lds(n_subsets: int = 50, progress: bool = False) -> dict[str, Any]:
    from setups.backdoor import DigitsTrainer, LDSBenchConfig

    config = dataclasses.replace(LDSBenchConfig(), lds=dataclasses.replace(LDSBenchConfig().lds, n_subsets=n_subsets))
    d = load_digits_data(DigitsConfig(flip_fraction=0.0))
    x, y = d.x_train, d.y_train
    queries = (d.x_test[: config.n_queries], d.y_test[: config.n_queries])
    task_set = (d.x_test[config.n_queries : config.n_queries + 200], d.y_test[config.n_queries : config.n_queries + 200])
    task = ClassificationTask()
    scores: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="gradtrace-methods-") as tmp:
        trainer = DigitsTrainer(x, y, config.train, tmp)
        trainer(np.arange(len(y)), config.lds.train_seed)
        refs = trainer.last_checkpoints
        states = [torch.load(p, weights_only=True) for p in trainer.last_optimizer_states]
        model = make_mlp(128, 0)

        def store(name: str, projection: ProjectionConfig, **kw: Any) -> Any:
            fc = FeaturizeConfig(projection=projection, batch_size=128)
            st, s = _timed(lambda: featurize(model, task, refs, (x, y), Path(tmp) / name, fc, progress=progress, **kw))
            seconds[f"featurize/{name}"] = s
            return st

        dense = Attributor(store("dense", ProjectionConfig("dense", config.projection_dim, seed=0)), model, task)
        factored = Attributor(store("factored", ProjectionConfig("factored")), model, task)
        ts_store = store("trackstar", ProjectionConfig("dense", config.projection_dim, seed=0), train_transform=TrackStarTransform(states, refs))
        tracked = Attributor(ts_store, model, task)
        _, seconds["fit/ekfac factors (5 checkpoints)"] = _timed(lambda: fit_factors(factored.store, model, task, (x, y), progress=progress))
        _, seconds["fit/ekfac factors, true Fisher"] = _timed(lambda: fit_factors(
            factored.store, model, task, (x, y), name="true", fisher="true", progress=progress))
        _, seconds["fit/trackstar whitening"] = _timed(lambda: fit_whitening(tracked, task_set, TrackStarMethod(states), name="task"))
        plan: list[tuple[str, Attributor, Any]] = [
            ("raw (dense 1024)", dense, "raw"), ("cosine (dense 1024)", dense, "cosine"),
            ("adam (dense 1024)", dense, AdamMethod(states)), ("fisher (dense 1024)", dense, FisherMethod(0.1)),
            ("raw (exact, factored)", factored, "raw"),
            ("kfac", factored, KFACMethod()), ("kfac last checkpoint", factored, KFACMethod(checkpoints="last")),
            ("ekfac", factored, EKFACMethod()), ("ekfac last checkpoint", factored, EKFACMethod(checkpoints="last")),
            ("ekfac true Fisher", factored, EKFACMethod(factors="true")),
            ("ekfac true Fisher last checkpoint", factored, EKFACMethod(checkpoints="last", factors="true")),
            ("trackstar", tracked, TrackStarMethod(states)),
            ("trackstar last checkpoint", tracked, TrackStarMethod(states, checkpoints="last")),
            ("trackstar + whitening", tracked, TrackStarMethod(states, whitening="task")),
            ("trackstar last checkpoint + whitening", tracked, TrackStarMethod(states, checkpoints="last", whitening="task")),
        ]
        for label, att, method in plan:
            scores[label], seconds[f"score/{label}"] = _timed(lambda: att.score(queries, variant=method))
        plain = dataclasses.replace(config.train, n_checkpoints=0)
        subsets, seconds["retrain subsets"] = _timed(lambda: retrain_subsets(
            DigitsTrainer(x, y, plain, tmp), lambda m: task.per_example_loss(m, queries), len(y), config.lds, progress=progress,
        ))
    return {"lds_by_method": {k: lds(s, subsets, "decrease") for k, s in scores.items()}, "seconds": seconds,
            "config": config.to_dict(), "task_set": "200 test images after the 40 queries (loss)"}


def run_mislabel(flips: tuple[float, ...] = (0.1, 0.2), progress: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    task = ClassificationTask()
    for flip in flips:
        config = DigitsConfig(flip_fraction=flip)
        d = load_digits_data(config)
        found: dict[str, dict[str, float]] = {}
        seconds: dict[str, float] = {}
        with tempfile.TemporaryDirectory(prefix="gradtrace-mislabel-") as tmp:
            refs, seconds["train"] = _timed(lambda: train_digits(d, Path(tmp) / "ckpt", config))
            model = make_mlp(config.hidden, config.seed)
            data = (d.x_train, d.y_train)
            fstore, seconds["featurize/factored"] = _timed(lambda: featurize(
                model, task, refs, data, Path(tmp) / "factored", FeaturizeConfig(projection=ProjectionConfig("factored"), batch_size=512), progress=progress))
            dstore, seconds["featurize/dense"] = _timed(lambda: featurize(
                model, task, refs, data, Path(tmp) / "dense", FeaturizeConfig(projection=ProjectionConfig("dense", 1024, seed=0), batch_size=512), progress=progress))
            _, seconds["fit/ekfac factors"] = _timed(lambda: fit_factors(fstore, model, task, data, progress=progress))
            _, seconds["fit/ekfac factors, true Fisher"] = _timed(lambda: fit_factors(
                fstore, model, task, data, name="true", fisher="true", progress=progress))
            factored, dense = Attributor(fstore, model, task), Attributor(dstore, model, task)
            rankings = {}
            for label, att, method in (("raw", factored, "raw"), ("fisher (dense 1024)", dense, "fisher"),
                                       ("kfac", factored, "kfac"), ("ekfac", factored, "ekfac"),
                                       ("ekfac last checkpoint", factored, EKFACMethod(checkpoints="last")),
                                       ("ekfac true Fisher", factored, EKFACMethod(factors="true"))):
                rankings[label], seconds[f"self-influence/{label}"] = _timed(lambda: att.self_influence(method))
            final = make_mlp(config.hidden, config.seed)
            load_checkpoint(final, refs[-1])
            with torch.no_grad():
                rankings["final loss (baseline)"] = nn.functional.cross_entropy(final(d.x_train), d.y_train, reduction="none").numpy()
            for label, s in rankings.items():
                found[label] = found_at(np.asarray(s), d.flipped, (0.1, 0.2))
        out[f"flip_{int(round(flip * 100))}"] = {"found": found, "seconds": seconds, "n_flipped": int(d.flipped.sum()), "config": config.to_dict()}
    return out


def write_section(r: dict[str, Any]) -> None:
    md = []
    if "lds" in r:
        lds_r = r["lds"]
        s = lds_r["seconds"]
        md.append("### LDS on digits per method\n\n50 random half-subsets retrained (Adam, 1,500 steps, fixed seed), the loss of "
                  "40 test images, 5 checkpoints (the set-up of `act.py --parts lds`). Seconds: scoring the 40 queries against "
                  "1,437 training examples (query gradients included), on the store the method reads: dense 1024-dim projection "
                  "(raw, cosine, adam, fisher), factored exact gradients (raw, kfac, ekfac), dense 1024 of TrackStar-normalised "
                  "gradients (trackstar; whitening fitted on the loss gradients of 200 other test images). Damping 0.1 x mean "
                  "eigenvalue everywhere. Fisher: empirical unless named true (labels drawn from the model, seed 0).\n")
        md.append("| method | LDS | seconds |\n|---|---|---|")
        for k, v in sorted(lds_r["lds_by_method"].items(), key=lambda kv: -kv[1]):
            md.append(f"| {k} | {v:.3f} | {s[f'score/{k}']:.2f} |")
        by = lds_r["lds_by_method"]
        best = max(by, key=by.get)
        md.append(f"\nBest: {best} ({by[best]:.3f}), {by[best] / by['raw (exact, factored)']:.2f}x raw TracIn's LDS "
                  f"({by['raw (exact, factored)']:.3f}); EK-FAC over all checkpoints vs the final checkpoint alone: "
                  f"{by['ekfac']:.3f} vs {by['ekfac last checkpoint']:.3f}; TrackStar summed vs last: "
                  f"{by['trackstar']:.3f} vs {by['trackstar last checkpoint']:.3f}.")
        md.append("\nOne-off costs (seconds): " + ", ".join(f"{k} {v:.1f}" for k, v in s.items() if not k.startswith("score/")) + ".")
    if "mislabel" in r:
        md.append("\n### Mislabel detection on digits per method\n\nThe demo's run (SGD, 200 epochs, 5 checkpoints) with a share "
                  "of labels flipped; training examples ranked by self-influence; share of the flipped labels found after "
                  "checking the top 10% and 20% (with 20% flipped, checking 10% can find at most 0.5). cosine and trackstar have no self-influence (every example scores 1); "
                  "adam needs exact training gradients and is left out.\n")
        cases = sorted(r["mislabel"])
        md.append("| method | " + " | ".join(f"{c.replace('flip_', '')}% flipped: found @10% | @20%" for c in cases) + " |")
        md.append("|---|" + "---|---|" * len(cases))
        first = r["mislabel"][cases[0]]["found"]
        labels = sorted(first, key=lambda k: (-first[k]["10%"], -first[k]["20%"]))
        for label in labels:
            cells = []
            for c in cases:
                f = r["mislabel"][c]["found"][label]
                cells += [f"{f['10%']:.3f}", f"{f['20%']:.3f}"]
            md.append(f"| {label} | " + " | ".join(cells) + " |")
        md.append("\nSeconds (self-influence of all 1,437 examples): " + "; ".join(
            f"{c}: " + ", ".join(f"{k.split('/', 1)[1]} {v:.2f}" for k, v in r["mislabel"][c]["seconds"].items() if k.startswith("self-influence/"))
            for c in cases) + ".")
    record("methods", COMMAND, "\n".join(md), r)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", choices=("lds", "mislabel"), default=["lds", "mislabel"])
    ap.add_argument("--subsets", type=int, default=50, help="LDS subsets (retrains)")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for part in args.parts:
        value, secs = _timed(lambda: run_lds(args.subsets, args.progress) if part == "lds" else run_mislabel(progress=args.progress))
        results[part] = value
        results.setdefault("wall_seconds", {})[part] = secs
        results.setdefault("machine", {})[part] = machine()
        write_section(results)


if __name__ == "__main__":
    main()
