"""The hyper-parameter selection rule, and resuming killed runs from the cache."""

from __future__ import annotations

import dataclasses
import importlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from gradtrace.errors import InputError
from gradtrace.unlearn.compare import CompareConfig, select_unlearn_config
from gradtrace.unlearn.methods import UnlearnConfig, Unlearner
from gradtrace.unlearn.select import SelectionGrid, SelectionRule, choose

# A tiny spec importable by a subprocess (written to a file by the tests).
SPEC = textwrap.dedent(
    """
    import os, signal
    import numpy as np
    import torch
    from torch import nn
    from gradtrace.task import ClassificationTask
    from gradtrace.unlearn.compare import CompareConfig, UnlearnSpec
    from gradtrace.unlearn.methods import UnlearnConfig
    from gradtrace.unlearn.relearn import RelearnConfig
    from gradtrace.unlearn.routing import RoutingConfig
    from gradtrace.unlearn.select import SelectionGrid, SelectionRule
    from gradtrace.unlearn.train import TrainConfig, train

    KILL_AT = int(os.environ.get("KILL_AT", "0"))  # kill this process at the KILL_AT-th call (0: never)
    CALLS = [0]

    def tick():
        CALLS[0] += 1
        if CALLS[0] == KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)

    def init(seed):
        gen = torch.Generator().manual_seed(seed)
        m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
        return m

    gen = torch.Generator().manual_seed(0)
    X = torch.randn(60, 4, generator=gen, dtype=torch.float64)
    Y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()

    def loss(idx):
        def f(m):
            with torch.no_grad():
                return float(nn.functional.cross_entropy(m(X[idx]), Y[idx]))
        return f

    def forget_metric(m):
        tick()
        return loss(Y == 2)(m)

    def make():
        w = (Y == 2).double()
        spec = UnlearnSpec(init, ClassificationTask(), (X, Y), w, (X[Y == 2][:8], Y[Y == 2][:8]), forget_metric, loss(Y != 2),
                           TrainConfig(steps=20, lr=0.05, batch_size=16), attacker_maximises=False, name="tiny",
                           select_forget_metric=loss(Y == 2), select_retain_metric=loss(Y != 2))
        config = CompareConfig(
            methods=("base", "filter", "graddiff", "npo", "era"),
            unlearn={"graddiff": UnlearnConfig("graddiff", steps=3, batch_size=8), "npo": UnlearnConfig("npo", steps=3, batch_size=8)},
            routing=RoutingConfig(layers=("0:2",), expand=4),
            coherence=TrainConfig(steps=3, lr=1e-2, batch_size=8),
            relearn=RelearnConfig(ks=(2, 4), lrs=(1e-2,), steps=4, eval_every=2, batch_size=4),
            select={"graddiff": SelectionGrid(lrs=(1e-3, 1e-2), steps=(2, 4)), "era": SelectionGrid(steps=(2, 4))},
            rule=SelectionRule(retain_tolerance=0.5, relative=True, retain_higher_is_better=False),
        )
        return spec, config

    def train_fn(indices, seed):
        tick()
        m = init(seed)
        idx = torch.as_tensor(np.asarray(indices))
        train(m, ClassificationTask(), (X[idx], Y[idx]), TrainConfig(steps=10, lr=0.05, batch_size=8, seed=seed))
        return m

    def measure(m):
        return loss(Y == 2)(m)
    """
)

COMPARE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from spec_mod import make
from gradtrace.unlearn.compare import compare_methods
spec, config = make()
r = compare_methods(spec, config, cache_dir=sys.argv[2])
print(json.dumps({m: x.to_dict() for m, x in r.results.items()}))
"""

REMOVAL = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from spec_mod import measure, train_fn
from gradtrace.unlearn.retrain import RemovalConfig, RemovalExperiment
scores = np.linspace(0, 1, 60)
attribute = lambda m, kept: -np.arange(len(kept), dtype=float)
exp = RemovalExperiment(train_fn, measure, 60, RemovalConfig(k=6, seeds=(0, 1), iterative_rounds=2), attribute=attribute,
                        extra_measures={"again": measure}, cache_dir=sys.argv[2], cache_tag="test")
print(json.dumps(exp.run(scores).to_dict()))
"""


def test_rule_limits_and_choice_match_a_brute_force_reading():
    acc = SelectionRule(retain_tolerance=0.02)  # accuracy, 2 points absolute
    assert acc.limit(0.95) == pytest.approx(0.93) and acc.admissible(0.93, 0.95) and not acc.admissible(0.929, 0.95)
    loss = SelectionRule(retain_tolerance=0.1, relative=True, retain_higher_is_better=False)  # loss <= 1.1 x base
    assert loss.limit(0.5) == pytest.approx(0.55) and loss.admissible(0.55, 0.5) and not loss.admissible(0.551, 0.5)
    pts = [{"lr": 1, "steps": 1, "forget": 0.9, "retain": 0.95}, {"lr": 2, "steps": 1, "forget": 0.2, "retain": 0.90},
           {"lr": 3, "steps": 1, "forget": 0.5, "retain": 0.94}, {"lr": 4, "steps": 1, "forget": 0.5, "retain": 0.96}]
    # attacker maximises an accuracy: the lowest forget accuracy among admissible points; ties to the earlier point
    assert choose([dict(p) for p in pts], acc, 0.95, attacker_maximises=True)["lr"] == 3
    # a forget loss (attacker minimises): the highest among admissible
    assert choose([dict(p) for p in pts], acc, 0.95, attacker_maximises=False)["lr"] == 1
    # nothing admissible: the best retain, flagged
    chosen = choose([dict(p) for p in pts], acc, 1.0, attacker_maximises=True)
    assert chosen["lr"] == 4 and chosen["admissible"] is False
    with pytest.raises(InputError, match="retain_tolerance must be non-negative"):
        SelectionRule(retain_tolerance=-1)
    with pytest.raises(InputError, match="steps must be a non-empty tuple"):
        SelectionGrid(lrs=(1e-3,), steps=())
    with pytest.raises(InputError, match=r"select\['era'\] chooses the coherence steps only"):
        CompareConfig(methods=("filter",), select={"era": SelectionGrid(lrs=(1e-3,), steps=(5,))})
    with pytest.raises(InputError, match="only .* have settings to select; got 'filter'"):
        CompareConfig(methods=("filter",), select={"filter": SelectionGrid(lrs=(1e-3,), steps=(5,))})
    assert CompareConfig.from_dict(CompareConfig(methods=("ga",), select={"ga": SelectionGrid((1e-3,), (5, 2))}).to_dict()).select["ga"].steps == (2, 5)


def _load_spec(tmp_path: Path, name: str) -> Any:
    """Import ``SPEC`` as module ``name`` (a distinct name per test: imports are cached)."""
    (tmp_path / f"{name}.py").write_text(SPEC)
    sys.path.insert(0, str(tmp_path))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(tmp_path))


def test_grid_points_read_along_one_run_equal_separate_shorter_runs(tmp_path):
    spec_mod = _load_spec(tmp_path, "spec_mod")
    spec, config = spec_mod.make()
    base = spec.init(0)
    from gradtrace.unlearn.train import train

    train(base, spec.task, spec.train_data, spec.train_config)
    labelled = spec.forget_weights > 0
    forget, retain = (spec_mod.X[labelled], spec_mod.Y[labelled]), (spec_mod.X[~labelled], spec_mod.Y[~labelled])
    cfg = UnlearnConfig("graddiff", batch_size=8)
    grid = SelectionGrid(lrs=(1e-3, 1e-2), steps=(2, 5))
    base_retain = spec.select_retain_metric(base)
    chosen_cfg, record = select_unlearn_config(spec, cfg, grid, config.rule, base, base_retain, forget, retain)
    assert len(record["points"]) == 4
    for p in record["points"]:  # brute force: a separate run with exactly these settings
        m = Unlearner(dataclasses.replace(cfg, lr=p["lr"], steps=p["steps"])).fit(base, spec.task, forget, retain).model
        assert p["forget"] == spec.select_forget_metric(m) and p["retain"] == spec.select_retain_metric(m)
        assert p["admissible"] == (p["retain"] <= 1.5 * base_retain)
    ok = [p for p in record["points"] if p["admissible"]]
    best = max(ok, key=lambda p: p["forget"])  # attacker minimises the loss: the highest forget loss wins
    assert (chosen_cfg.lr, chosen_cfg.steps) == (best["lr"], best["steps"]) and record["selected"] == best


def _run(script: str, tmp_path, cache, kill_at: int) -> subprocess.CompletedProcess:
    env = {"KILL_AT": str(kill_at), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", script, str(tmp_path), str(cache)], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("script,kill_at,pieces", [(COMPARE, 15, "*.json"), (REMOVAL, 5, "*.json")], ids=["compare", "removal"])
def test_a_killed_run_resumes_from_the_cache_with_the_same_result(tmp_path, script, kill_at, pieces):
    (tmp_path / "spec_mod.py").write_text(SPEC)
    killed = _run(script, tmp_path, tmp_path / "cache", kill_at)
    assert killed.returncode == -9, killed.stderr  # SIGKILL mid-run
    (key,) = list((tmp_path / "cache").iterdir())
    done = {p.name: p.stat().st_mtime_ns for p in key.glob(pieces)}
    assert done and not list(key.glob("*.tmp"))  # some pieces finished, none half-written
    resumed = _run(script, tmp_path, tmp_path / "cache", 0)
    assert resumed.returncode == 0, resumed.stderr
    fresh = _run(script, tmp_path, tmp_path / "fresh_cache", 0)
    assert fresh.returncode == 0, fresh.stderr
    assert json.loads(resumed.stdout) == json.loads(fresh.stdout)
    # the finished pieces were read back, not recomputed (their files were not rewritten); the rest were added
    assert {name: (key / name).stat().st_mtime_ns for name in done} == done
    assert len(list(key.glob(pieces))) > len(done)


def test_default_iterative_attribution_is_tracin_at_the_retrained_model():
    from torch import nn

    from gradtrace.config import FeaturizeConfig
    from gradtrace.spec import TaskSpec
    from gradtrace.task import ClassificationTask, resolve_behaviour
    from gradtrace.unlearn.validate import retrained_tracin

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    y = (x[:, 0] > 0).long()
    m = nn.Linear(3, 2).double()
    with torch.no_grad():
        m.weight.copy_(torch.randn(2, 3, generator=gen, dtype=torch.float64))
        m.bias.copy_(torch.randn(2, generator=gen, dtype=torch.float64))
    task = ClassificationTask()
    spec = TaskSpec(model=lambda: nn.Linear(3, 2).double(), task=task, checkpoints=[], train=(x, y))
    kept = np.array([1, 3, 5, 7, 20, 29])
    scores = retrained_tracin(spec, FeaturizeConfig(), resolve_behaviour(None, task), (x[:4], y[:4]))(m, kept)

    def grad(i: int) -> torch.Tensor:
        m.zero_grad()
        torch.nn.functional.cross_entropy(m(x[i : i + 1]), y[i : i + 1]).backward()
        return torch.cat([p.grad.flatten() for p in m.parameters()])

    query = sum(grad(i) for i in range(4))
    brute = np.array([float(grad(int(i)) @ query) for i in kept])  # lr 1 x train gradient . summed query gradient
    np.testing.assert_allclose(scores, brute, rtol=1e-5, atol=1e-6)


def test_cache_reuses_methods_whose_settings_did_not_change(tmp_path):
    from gradtrace.unlearn.compare import compare_methods

    spec, config = _load_spec(tmp_path, "spec_mod2").make()
    first = compare_methods(spec, dataclasses.replace(config, methods=("filter", "graddiff")), cache_dir=tmp_path / "c")
    (key,) = list((tmp_path / "c").iterdir())
    before = {p.name: p.stat().st_mtime_ns for p in key.glob("*.json")}
    # graddiff's grid changes, filter's settings do not; one more method is asked for
    changed = dataclasses.replace(config, methods=("filter", "graddiff", "npo"),
                                  select={**config.select, "graddiff": SelectionGrid(lrs=(1e-2,), steps=(2,))})
    second = compare_methods(spec, changed, cache_dir=tmp_path / "c")
    after = {p.name: p.stat().st_mtime_ns for p in key.glob("*.json")}
    filter_piece = next(n for n in before if n.startswith("filter-"))
    assert after[filter_piece] == before[filter_piece] and second.results["filter"].model is None  # read back
    assert second.results["filter"].to_dict() == first.results["filter"].to_dict()
    assert len(after) == len(before) + 2  # a new graddiff piece and the npo piece
    assert second.results["graddiff"].selection["grid"] == {"lrs": [1e-2], "steps": [2]}
