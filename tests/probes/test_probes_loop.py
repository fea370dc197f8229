"""The loop's probes monitor: fires on a planted drop, not on noise; per-subtask curves in the dashboard; CLI and HTML."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from gradtrace.cli import app
from gradtrace.lm.load import load_model
from gradtrace.loop.dashboard import write_dashboard
from gradtrace.loop.lm import LanguageModel
from gradtrace.loop.monitors import MONITORS, Observation, ProbeSuiteMonitor, build_monitors, measure_all
from gradtrace.loop.stop import StopRule, first_stop
from gradtrace.probes import SUBTASKS, Item, score_items, seed_items
from gradtrace.probes.report import run_report_html
from gradtrace.probes.score import run_record

RULE = StopRule("probes.significant_drops", above=0)


def _rows(monitor: ProbeSuiteMonitor, rounds: list[np.ndarray]) -> list[dict]:
    obs = [Observation(round=t, generations=[], extras={"probes.correct": c}) for t, c in enumerate(rounds)]
    rows: list[dict] = []
    for o in obs:
        rows.append({"round": float(o.round), **measure_all([monitor], o, obs[0], rows)})
    return rows


def test_monitor_is_registered_and_built_from_a_config_table():
    assert MONITORS["probes"] is ProbeSuiteMonitor
    (m,) = build_monitors({"probes": {"suite": "seeds", "limit_per_subtask": 3}})
    assert len(m.items) == 3 * len(SUBTASKS)
    with pytest.raises(Exception, match="monitors.probes.alpha"):
        build_monitors({"probes": {"alpha": 2.0}})


def test_monitor_fires_on_a_planted_drop_and_not_on_noise():
    monitor = ProbeSuiteMonitor(suite="seeds")
    subtask = np.array([it.subtask for it in monitor.items])
    rng = np.random.default_rng(0)
    base = rng.random(len(subtask)) < 0.8
    # noise: every round flips 10% of the items at random, in both directions
    noisy = [base] + [base ^ (rng.random(len(base)) < 0.1) for _ in range(6)]
    rows = _rows(monitor, noisy)
    assert first_stop([RULE], rows) is None
    assert all(r["probes.significant_drops"] == 0 for r in rows)
    # planted: from round 3 on, temporal_change is answered wrongly everywhere
    planted = [c.copy() for c in noisy]
    for c in planted[3:]:
        c[subtask == "temporal_change"] = False
    rows = _rows(monitor, planted)
    event = first_stop([RULE], rows)
    assert event is not None and event.round == 3
    assert rows[3]["probes.temporal_change.p"] < 0.05 < min(rows[3][f"probes.{s}.p"] for s in SUBTASKS if s != "temporal_change")
    assert rows[3]["probes.temporal_change.change"] == pytest.approx(-base[subtask == "temporal_change"].mean())


def test_monitor_observes_a_model_and_its_extras_survive_save_and_load(tmp_path):
    model, tok = load_model("tiny", seed=0, n_layer=1, n_embd=32, n_head=2, n_positions=256)
    monitor = ProbeSuiteMonitor(suite="seeds", limit_per_subtask=1)
    extras = monitor.observe(LanguageModel(model, tok))
    direct = score_items(model, tok, monitor.items)
    assert extras["probes.correct"].tolist() == [s.correct for s in direct]
    assert extras["probes.predicted"].tolist() == [s.predicted for s in direct]
    obs = Observation(round=0, generations=["x"], extras=extras)
    obs.save(tmp_path)
    back = Observation.load(tmp_path)
    assert back.extras.keys() == extras.keys() and np.array_equal(back.extras["probes.margin"], extras["probes.margin"])


def test_dashboard_draws_per_subtask_accuracy_curves(tmp_path, h):
    monitor = ProbeSuiteMonitor(suite="seeds")
    rng = np.random.default_rng(1)
    rows = _rows(monitor, [rng.random(len(monitor.items)) < 0.7 for _ in range(3)])
    html = write_dashboard(tmp_path, rows, None).read_text()
    section = html.split("probes: per-subtask accuracy", 1)[1]
    (fig, *_) = h.page_figures(section)  # the first figure after the heading
    assert [t["name"] for t in fig["data"]] == list(SUBTASKS)
    for t in fig["data"]:
        sub = t["name"]
        assert t["y"] == [r[f"probes.{sub}.accuracy"] for r in rows] and t["x"] == [r["round"] for r in rows]


def test_untrusted_item_text_is_escaped_in_the_html_report(h):
    evil = Item("<img src=x onerror=alert(1)>", "self_concept", "<script>alert('s')</script>", "Which is <b>yours</b>?",
                ("<i>mine</i>", "theirs & co"), 0, {"source": "seed"})
    from gradtrace.probes.score import ItemScore

    record = run_record([ItemScore(evil.id, evil.subtask, 0, (-1.0, -2.0))], "<model>", "<suite>")
    page = run_report_html(record, [evil])
    html = h.without_scripts(page)  # the page without plotly's inlined bundle and the figure loader
    assert page.count("<script") == 2
    assert "<script" not in html and "<img" not in html and "<b>yours" not in html and "<i>mine" not in html
    assert "&lt;script&gt;" in html and "&lt;img src=x" in html and "theirs &amp; co" in html
    # the accuracy figure, as gradtrace serve draws it; the model's name escaped for plotly's label markup
    (fig,) = h.page_figures(page)
    (bars,) = fig["data"]
    assert bars["x"] == ["self_concept"] and bars["y"] == [1.0] and bars["name"] == "&lt;model&gt;"


def test_cli_run_compare_and_a_malformed_suite(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run.json"
    res = runner.invoke(app, ["probes", "run", "--model", "tiny", "--limit-per-subtask", "2", "--out", str(out), "--no-progress",
                              "--report", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert set(data["summary"]) == set(SUBTASKS) and len(data["items"]) == 2 * len(SUBTASKS)
    # each item's result carries its texts (what gradtrace serve shows)
    from gradtrace.probes import first_per_subtask

    suite = {it.id: it for it in first_per_subtask(seed_items(), 2)}
    assert [(r["scenario"], r["question"], r["options"]) for r in data["items"]] == [
        (suite[r["id"]].scenario, suite[r["id"]].question, list(suite[r["id"]].options)) for r in data["items"]]
    res = runner.invoke(app, ["probes", "compare", str(out), str(out), "--json", "--out", str(tmp_path / "cmp.json")])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.output)
    cmp = printed["subtasks"]
    assert all(v["difference"] == 0 and v["p_corrected"] == 1.0 for v in cmp.values())
    written = json.loads((tmp_path / "cmp.json").read_text())
    assert written == {k: v for k, v in printed.items() if k != "out"} and written["a"] == str(out)
    res = runner.invoke(app, ["probes", "compare", str(out), str(out), "--out", str(tmp_path / "cmp.txt")])
    assert res.exit_code == 2 and "--out" in res.output
    bad = tmp_path / "bad.jsonl"
    good = seed_items()[0].to_dict()
    bad.write_text(json.dumps(good) + "\n" + json.dumps(dict(good, id="z", key=7)) + "\n")
    res = runner.invoke(app, ["probes", "run", "--model", "tiny", "--suite", str(bad), "--no-progress"])
    assert res.exit_code == 2 and "line 2" in res.output and "key must be an option index" in res.output


def test_cli_generate_and_validate_templates(tmp_path):
    runner = CliRunner()
    suite = tmp_path / "suite.jsonl"
    res = runner.invoke(app, ["probes", "generate", "--out", str(suite), "--templates", "30", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["items"] == len(seed_items()) + 30 * len(SUBTASKS)
    kept, report = tmp_path / "kept.jsonl", tmp_path / "report.json"
    res = runner.invoke(app, ["probes", "validate", str(suite), "--out", str(kept), "--report", str(report), "--embedder", "hashing"])
    assert res.exit_code == 0, res.output
    r = json.loads(report.read_text())
    assert r["format"]["failed"] == 0 and r["kept_total"] == len(kept.read_text().splitlines())


def test_a_loop_run_with_the_probes_monitor_records_and_resumes(tmp_path):
    from gradtrace.demos.loop_corpus import write_example_data
    from gradtrace.loop import LoopConfig, SelfTrainingLoop
    from gradtrace.loop.config import DataConfig, GenerationConfig, ModelConfig, TrainConfig

    files = write_example_data(tmp_path / "data", seed=0, n_train=60, n_heldout=10)
    config = LoopConfig(
        data=DataConfig(train=str(files["train.jsonl"]), heldout=str(files["heldout.jsonl"]), prompts=str(files["prompts.txt"]),
                        probes=str(files["probes.txt"])),
        rounds=1, seed=0, model=ModelConfig(n_layer=1, n_embd=32, n_head=2),
        generation=GenerationConfig(n_per_prompt=2, max_new_tokens=8, temperature=0.9),
        train=TrainConfig(base_steps=4, steps=2, batch_size=8, lr=3e-3, checkpoint_every=2),
        monitors={"probes": {"limit_per_subtask": 2}}, stop=(RULE,), embedder="hashed",
    )
    result = SelfTrainingLoop(config, tmp_path / "run", progress=False).run()
    assert [int(r["round"]) for r in result.rows] == [0, 1]
    assert result.rows[0]["probes.significant_drops"] == 0 and all(result.rows[0][f"probes.{s}.change"] == 0 for s in SUBTASKS)
    obs = Observation.load(tmp_path / "run" / "round_001")
    assert obs.extras["probes.correct"].shape == (2 * len(SUBTASKS),)
    assert "probes: per-subtask accuracy" in (tmp_path / "run" / "dashboard.html").read_text()
    again = SelfTrainingLoop.resume(tmp_path / "run", progress=False).run()
    assert again.rows == result.rows


def _run_file(path, right: int, n: int = 10):
    """A run file in the format of 'gradtrace probes run --out': self_concept items, the first ``right`` answered right."""
    items = [{"id": f"i{j}", "subtask": "self_concept", "key": 0, "predicted": 0 if j < right else 1, "correct": j < right, "margin": 0.0}
             for j in range(n)]
    path.write_text(json.dumps({"model": "m", "suite": "s", "summary": {}, "items": items}))
    return str(path)


def test_cli_against_seeds(tmp_path):
    from gradtrace.probes import compare_to_seeds
    from gradtrace.probes.score import read_run

    runner = CliRunner()
    refs = [_run_file(tmp_path / f"n{k}.json", r) for k, r in enumerate((4, 5, 6))]
    run = _run_file(tmp_path / "planted.json", 10)
    res = runner.invoke(app, ["probes", "against-seeds", run, *refs, "--json"])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.output)
    assert printed["subtasks"] == json.loads(json.dumps(compare_to_seeds([read_run(r) for r in refs], read_run(run))))
    assert printed["subtasks"]["self_concept"]["significant"] and printed["reference"] == refs
    res = runner.invoke(app, ["probes", "against-seeds", run, *refs])
    assert res.exit_code == 0 and "self_concept" in res.output
    res = runner.invoke(app, ["probes", "against-seeds", run, *refs[:2]])
    assert res.exit_code == 2 and "at least 3 reference runs" in res.output
    res = runner.invoke(app, ["probes", "against-seeds", run, *refs[:2], str(tmp_path / "missing.json")])
    assert res.exit_code == 2 and "missing.json" in res.output
