"""`gradtrace allocate`, `influence-over-time` and `compare-runs` end to end on
two small digits runs of the same data (other model seeds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gradtrace.cli import app

runner = CliRunner()

TASK = '''
from pathlib import Path
from gradtrace.checkpoints import CheckpointRef
from gradtrace.demos.digits import make_mlp
from gradtrace.spec import TaskSpec
from gradtrace.task import ClassificationTask
from setups.allocate_runs import SeedRunConfig, seed_run, seed_run_data

WORK = Path(r"{work}")
CFG = SeedRunConfig(hidden=8, epochs=4, n_checkpoints=2, lr=0.3)


def _spec(seed):
    data = seed_run_data(CFG)
    folder = WORK / f"run{{seed}}"
    done = sorted(folder.glob("epoch_*.pt")) if folder.is_dir() else []
    if len(done) == CFG.n_checkpoints:
        refs = [CheckpointRef(str(p), CFG.lr, step=int(p.stem.split("_")[1])) for p in done]
    else:
        refs = seed_run(data, CFG, seed, folder)
    n = len(data.y_train)
    return TaskSpec(
        model=lambda: make_mlp(CFG.hidden, seed), task=ClassificationTask(), checkpoints=refs,
        train=(data.x_train, data.y_train), queries=(data.x_test[:6], data.y_test[:6]),
        train_ids=[f"train-{{i}}" for i in range(n)], train_tags=["flipped" if f else "<b>clean</b>" for f in data.flipped],
        query_ids=[f"<i>test-{{i}}</i>" for i in range(6)],
    )


def run0():
    return _spec(0)


def run1():
    return _spec(1)
'''


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("alloc_cli")
    path = root / "task.py"
    path.write_text(TASK.format(work=root))
    tasks = [f"{path}:run0", f"{path}:run1"]
    stores = []
    for i, t in enumerate(tasks):
        store = root / f"store{i}"
        r = invoke("featurize", "--task", t, "--out", store, "--projection", "factored", "--no-progress")
        assert r.exit_code == 0, r.output
        stores.append(store)
    return root, tasks, stores


@pytest.mark.slow
def test_allocate_command(runs, tmp_path: Path, h) -> None:
    root, tasks, stores = runs
    out, report = tmp_path / "a.json", tmp_path / "a.html"
    r = invoke("allocate", "--task", tasks[0], "--from-init", "--out", out, "--report", report, "--no-progress", "--json")
    assert r.exit_code == 0, r.output
    printed = json.loads(r.output)
    data = json.loads(out.read_text())
    assert printed["intervals"] == data["intervals"]
    assert [iv["start"] for iv in data["intervals"]] == ["initial", "step 2"]
    assert data["points"] == 8 and data["rule"] == "gauss"
    assert data["max_relative_error"] < 1e-2
    assert set(data["total"]["module"]) == {"0", "2", "4"}
    for iv in data["intervals"]:
        assert sum(iv["per_tensor"].values()) == pytest.approx(iv["allocated"], rel=1e-9)
    html_text = report.read_text()
    heatmaps = [f for f in h.page_figures(html_text) if f["data"][0]["type"] == "heatmap"]
    assert len(heatmaps) == sum(1 for level in ("layer", "block", "module") if data["total"][level])
    assert "<script" not in h.without_scripts(html_text)

    r = invoke("allocate", "--task", tasks[0], "--rule", "simpson", "--points", 4)
    assert r.exit_code == 2 and "odd number" in r.output
    r = invoke("allocate", "--task", tasks[0])  # two checkpoints: one interval
    assert r.exit_code == 0, r.output
    assert "step 2 -> step 4" in r.output and "whole run by module" in r.output
    r = invoke("allocate", "--task", tasks[0], "--level", "head")
    assert r.exit_code == 2 and "--level must be one of" in r.output
    r = invoke("allocate")
    assert r.exit_code == 2 and "one of --task" in r.output


@pytest.mark.slow
def test_influence_over_time_command(runs, tmp_path: Path) -> None:
    from gradtrace import Attributor
    from gradtrace.allocate.timeline import influence_over_time
    from gradtrace.spec import load_task_spec

    root, tasks, stores = runs
    out, report = tmp_path / "t.json", tmp_path / "t.html"
    r = invoke("influence-over-time", stores[0], "--task", tasks[0], "--k", 3, "--out", out, "--report", report)
    assert r.exit_code == 0, r.output
    assert "critical period" in r.output
    data = json.loads(out.read_text())
    assert data["checkpoints"] == ["step 2", "step 4"]
    spec = load_task_spec(tasks[0])
    att = Attributor(stores[0], spec.model(), spec.task)
    tl = influence_over_time(att, att.query_features(spec.queries), k=3)
    for q, entry in enumerate(data["queries"]):
        shares = [p["abs_share"] for p in entry["periods"]]
        assert sum(shares) == pytest.approx(1.0)
        np.testing.assert_allclose(shares, tl.abs_share[:, q], rtol=1e-9)
        assert [x["train"] for x in entry["periods"][1]["proponents"]] == [f"train-{i}" for i in tl.top[1, q]]
    html_text = report.read_text()
    assert "&lt;i&gt;test-0&lt;/i&gt;" in html_text and "<i>test-0" not in html_text
    assert "<b>clean</b>" not in html_text
    r = invoke("influence-over-time", stores[0], "--task", tasks[0], "--mass", 1.5)
    assert r.exit_code == 2 and "--mass" in r.output


@pytest.mark.slow
def test_compare_runs_command(runs, tmp_path: Path) -> None:
    root, tasks, stores = runs
    r = invoke("compare-runs", stores[0], stores[0], "--task", tasks[0], "--k", 5, "--json")
    assert r.exit_code == 0, r.output
    same = json.loads(r.output)
    assert same["pairs"][0]["spearman_mean"] == pytest.approx(1.0)
    assert same["pairs"][0]["jaccard_mean"] == 1.0
    assert same["self_influence"]["pairs"][0]["spearman"] == pytest.approx(1.0)

    out, report = tmp_path / "c.json", tmp_path / "c.html"
    r = invoke("compare-runs", stores[0], stores[1], "--task", tasks[0], "--k", 5, "--out", out, "--report", report)
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    pair = data["pairs"][0]
    assert len(pair["spearman"]) == 6 and -1 <= pair["spearman_mean"] < 1
    assert 0 <= pair["jaccard_mean"] <= 1 and len(pair["most_different"][0]) == 10
    assert data["averaging"][0]["m"] == 1
    assert "query scores across runs" in r.output
    assert "<i>test" not in report.read_text()

    r = invoke("compare-runs", stores[0], stores[1], "--json")  # no queries: self-influence only
    assert r.exit_code == 0, r.output
    assert "pairs" not in json.loads(r.output) and json.loads(r.output)["self_influence"]["pairs"]
    r = invoke("compare-runs", stores[0])
    assert r.exit_code == 2 and "at least two stores" in r.output
