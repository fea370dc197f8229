"""Attributor.score on the digits store, timed in fresh processes for two or
more checkouts of gradtrace (A/B of the query path across commits).

Each process trains the digits MLP, featurizes a factored store and times
``Attributor.score`` on 200 precomputed query features (median of 15); the
checkouts alternate, ``--processes`` times each, because a process's speed on
this machine varies between runs (thread placement), which one process per
checkout cannot tell apart from a change in the code.

    git worktree add /tmp/old <commit>
    python benchmarks/score_ab.py --checkout /tmp/old --checkout . --processes 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, tempfile, time
from pathlib import Path
import gradtrace as gt
try:
    from gradtrace.demos.digits import DigitsConfig, load_digits_data, make_mlp, train_digits
except ImportError:  # checkouts from before the redesign
    from gradtrace.bench.digits import DigitsConfig, load_digits_data, make_mlp, train_digits
cfg = DigitsConfig(); data = load_digits_data(cfg)
work = Path(tempfile.mkdtemp(prefix="gt-ab-"))
refs = train_digits(data, work / "ckpt", cfg)
task = gt.ClassificationTask()
store = gt.featurize(make_mlp(cfg.hidden), task, refs, (data.x_train, data.y_train), work / "s",
                     gt.FeaturizeConfig(projection=gt.ProjectionConfig("factored"), batch_size=2048), progress=False)
att = gt.Attributor(store, make_mlp(cfg.hidden), task)
qf = att.query_features((data.x_test[:200], data.y_test[:200]))
att.score(qf)
ts = []
for _ in range(15):
    t = time.perf_counter(); att.score(qf); ts.append(time.perf_counter() - t)
print(json.dumps(sorted(ts)[7]))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", action="append", required=True, type=Path, help="a gradtrace checkout (repeat)")
    parser.add_argument("--processes", type=int, default=3, help="fresh processes per checkout, alternating")
    args = parser.parse_args()
    times: dict[str, list[float]] = {str(c): [] for c in args.checkout}
    for _ in range(args.processes):
        for c in args.checkout:
            env = dict(os.environ, PYTHONPATH=str(c.resolve()))
            out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True).stdout
            times[str(c)].append(json.loads(out.strip().splitlines()[-1]))
    print(json.dumps({"seconds_per_process": times}, indent=1))


if __name__ == "__main__":
    main()
