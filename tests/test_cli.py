"""The gradtrace command end to end, asserting what a user sees."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradtrace.cli import app
from gradtrace.report.html import Raw, esc, table

runner = CliRunner()

TASK = '''
from gradtrace.demos.digits import DigitsConfig, make_task as digits_task

def make_task():
    return digits_task(r"{work}", DigitsConfig(hidden=16, epochs=10, n_checkpoints=3))
'''


@pytest.fixture()
def task_file(tmp_path: Path) -> str:
    path = tmp_path / "task.py"
    path.write_text(TASK.format(work=tmp_path / "run"))
    return f"{path}:make_task"


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    return result


@pytest.mark.slow
def test_featurize_inspect_self_influence_query(tmp_path: Path, task_file: str) -> None:
    store = tmp_path / "store"
    r = invoke("featurize", "--task", task_file, "--out", store, "--projection", "factored", "--no-progress")
    assert r.exit_code == 0, r.output
    assert "complete=True" in r.output

    r = invoke("inspect", store, "--verify")
    assert r.exit_code == 0, r.output
    assert "checksums OK" in r.output and "3 of 3 written" in r.output and "1438" in r.output

    out = tmp_path / "si.jsonl"
    r = invoke("self-influence", store, "--top", "5", "--out", out)
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 1438 and rows[0]["rank"] == 1
    assert rows[0]["self_influence"] >= rows[-1]["self_influence"]
    assert {"flipped", "clean"} >= {r["train_tag"] for r in rows}

    pq = tmp_path / "pro.parquet"
    r = invoke("query", store, "--task", task_file, "--k", "4", "--limit", "2", "--out", pq)
    assert r.exit_code == 0, r.output
    import pyarrow.parquet as papq

    t = papq.read_table(pq).to_pylist()
    assert len(t) == 8 and t[0]["query"] == "test-0" and t[0]["kind"] == "proponent"
    assert t[0]["score"] >= t[3]["score"]
    assert "positive score means" in r.output

    r = invoke("query", store, "--task", task_file, "--k", "3", "--limit", "1", "--opponents", "--variant", "cosine")
    assert r.exit_code == 0, r.output
    assert "opponent" in r.output and "Cosine" in r.output


@pytest.mark.slow
def test_cli_errors_are_clear(tmp_path: Path, task_file: str) -> None:
    store = tmp_path / "store"
    assert invoke("featurize", "--task", task_file, "--out", store, "--no-progress").exit_code == 0
    r = invoke("featurize", "--task", task_file, "--out", store, "--projection", "dense", "--dim", "8", "--no-progress")
    assert r.exit_code == 2
    assert "config.projection.kind" in r.output and "'none' -> 'dense'" in r.output
    r = invoke("query", store, "--task", task_file, "--out", tmp_path / "x.csv")
    assert r.exit_code == 2 and ".jsonl or .parquet" in r.output
    r = invoke("inspect", tmp_path / "nowhere")
    assert r.exit_code == 2 and "manifest.json is missing" in r.output
    r = invoke("featurize", "--task", "nofile.py:make_task", "--out", tmp_path / "s2")
    assert r.exit_code == 2 and "does not exist" in r.output
    r = invoke("featurize", "--task", task_file, "--out", tmp_path / "s3", "--projection", "sideways")
    assert r.exit_code == 2 and "projection.kind" in r.output and "sideways" in r.output


@pytest.mark.slow
def test_demo_finds_flipped_labels_and_writes_report(tmp_path: Path, h) -> None:
    out = tmp_path / "demo"
    r = invoke("demo", "--out", out, "--no-progress")
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    found, baseline = summary["found_self_influence"], summary["found_loss"]
    assert found["20%"] >= 0.9
    assert found["20%"] > baseline["20%"]
    assert "share of the 288 flipped labels found" in r.output
    html_text = (out / "report.html").read_text()
    markup = h.without_scripts(html_text)
    assert markup.count('<img class="pixels"') > 20 and not re.search(r"(src|href)=[\"']?https?:", markup) and "<script" not in markup
    assert len(h.page_figures(html_text)) == 8  # contributions per checkpoint of the raw proponents and opponents of 4 queries
    assert "Proponents (raw)" in html_text and "Opponents (raw)" in html_text and "Proponents (cosine)" in html_text
    # a second run reuses checkpoints and store
    r2 = invoke("demo", "--out", out, "--no-progress")
    assert r2.exit_code == 0
    assert json.loads((out / "summary.json").read_text())["found_self_influence"] == found
    # EK-FAC on the demo's store: its TaskSpec (make_task reuses the demo's checkpoints), fit-factors, then --variant
    task = tmp_path / "demo_task.py"
    task.write_text(f"from gradtrace.demos.digits import make_task as t\n\ndef make_task():\n    return t(r\"{out}\")\n")
    r = invoke("fit-factors", out / "store", "--task", f"{task}:make_task", "--no-progress")
    assert r.exit_code == 0, r.output
    r = invoke("query", out / "store", "--task", f"{task}:make_task", "--variant", "ekfac", "--k", "3", "--limit", "1")
    assert r.exit_code == 0 and "EK-FAC influence" in " ".join(r.output.split()), r.output
    r = invoke("self-influence", out / "store", "--variant", "ekfac", "--json")
    assert r.exit_code == 0, r.output
    assert sum(row["train_tag"] == "flipped" for row in json.loads(r.output)["top"]) >= 15  # of the top 20


def test_report_escapes_untrusted_text() -> None:
    evil = '<script>alert("x")</script>'
    html_text = table(["id", evil], [[evil, Raw("<b>ok</b>")]])
    assert "<script>" not in html_text and "&lt;script&gt;" in html_text
    assert "<b>ok</b>" in html_text
    assert esc('"') == "&quot;"
