"""`gradtrace fit-factors` and `--variant kfac/ekfac` end to end on the digits
task (the demo's model, smaller), asserting what a user sees and that the
numbers are the library's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gradtrace.cli import app
from gradtrace.scoring import Attributor
from gradtrace.spec import load_task_spec

runner = CliRunner()

TASK = '''
from gradtrace.demos.digits import DigitsConfig, make_task as digits_task

def make_task():
    return digits_task(r"{work}", DigitsConfig(hidden=16, epochs=6, n_checkpoints=2))
'''


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.slow
def test_fit_factors_then_query_and_self_influence_with_ekfac(tmp_path: Path) -> None:
    path = tmp_path / "task.py"
    path.write_text(TASK.format(work=tmp_path / "run"))
    task_file = f"{path}:make_task"
    store = tmp_path / "store"
    r = invoke("featurize", "--task", task_file, "--out", store, "--projection", "factored", "--no-progress")
    assert r.exit_code == 0, r.output

    r = invoke("query", store, "--task", task_file, "--variant", "ekfac", "--limit", "1")
    assert r.exit_code == 2, r.output
    assert "no fitted ekfac factors" in r.output and "gradtrace fit-factors" in r.output and "Traceback" not in r.output

    r = invoke("fit-factors", store, "--task", task_file, "--no-progress", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["name"] == "ekfac" and (store / "factors" / "ekfac.json").is_file()

    out = tmp_path / "ekfac.jsonl"
    r = invoke("query", store, "--task", task_file, "--variant", "ekfac", "--k", "3", "--limit", "2", "--out", out)
    assert r.exit_code == 0, r.output
    assert "EK-FAC influence" in " ".join(r.output.split())
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    spec = load_task_spec(task_file)
    att = Attributor(store, spec.model(), spec.task)
    top = att.top_k((spec.queries[0][:2], spec.queries[1][:2]), k=3, variant="ekfac")
    np.testing.assert_allclose([x["score"] for x in rows], top.scores.ravel(), rtol=1e-6)
    assert {x["variant"] for x in rows} == {"ekfac"}

    si = tmp_path / "si.jsonl"
    r = invoke("self-influence", store, "--variant", "kfac", "--out", si, "--top", "3")
    assert r.exit_code == 0, r.output
    got = {x["train_index"]: x["self_influence"] for x in map(json.loads, si.read_text().splitlines())}
    want = att.self_influence("kfac")
    np.testing.assert_allclose([got[i] for i in range(len(want))], want, rtol=1e-6)

    r = invoke("self-influence", store, "--variant", "cosine")
    assert r.exit_code == 2 and "self-influence is not defined for variant 'cosine'" in " ".join(r.output.split())
    r = invoke("fit-factors", store, "--task", task_file, "--checkpoints", "first")
    assert r.exit_code == 2 and "--checkpoints must be 'all' or 'last'" in r.output
