"""The loop end to end on the tiny model: 2 rounds, folders, checkpoints
that gradtrace can load, dashboard; resume after a killed round equals an
uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from gradtrace.checkpoints import CheckpointRef, load_checkpoint
from gradtrace.errors import ConfigMismatchError
from gradtrace.loop import LoopConfig, SelfTrainingLoop
from gradtrace.demos.loop_corpus import speaks_well_pattern
from gradtrace.loop.models import build_lm
from gradtrace.loop.stop import StopRule


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory, loop_data, make_config):
    out = tmp_path_factory.mktemp("run") / "loop"
    result = SelfTrainingLoop(make_config(loop_data), out, progress=False).run()
    return out, result


def test_two_rounds_end_to_end(two_rounds, make_config, loop_data, h):
    out, result = two_rounds
    assert [r["round"] for r in result.rows] == [0.0, 1.0, 2.0]
    assert result.stop is None
    first = result.rows[0]
    assert first["nll.tail_share"] == 0.0 and first["clusters.js"] == 0.0 and first["cka.cka"] == pytest.approx(1.0)
    for key in ("diversity.distinct_2", "diversity.vendi", "attribute.nova_praised.rate", "clusters.skewed_clusters", "curated.kept_share"):
        assert key in result.rows[-1]
    for t in range(3):
        folder = out / f"round_{t:03d}"
        for name in ("train.jsonl", "generations.jsonl", "curated.jsonl", "checkpoints.json", "model.pt", "metrics.json", "DONE"):
            assert (folder / name).is_file(), (t, name)
        gens = [json.loads(x) for x in (folder / "generations.jsonl").read_text().splitlines()]
        assert len(gens) == 6 * 6 and all(g["round"] == t for g in gens)
    # round 1 trained on round 0's curated generations (regime replace)
    curated0 = (out / "round_000" / "curated.jsonl").read_text()
    assert (out / "round_001" / "train.jsonl").read_text() == curated0
    assert (out / "round_001" / "diff.json").is_file()
    report = (out / "round_002" / "diff_report.html").read_text()
    assert "round 2 against round 0" in report and "<script" not in h.without_scripts(report)
    html = (out / "dashboard.html").read_text()
    assert 'class="plot" data-figure=' in html and "diff_report.html" in html and "nll" in html


def test_checkpoints_load_into_a_fresh_model_in_order(two_rounds, make_config, loop_data):
    out, _ = two_rounds
    refs = []
    for t in range(3):
        refs += [CheckpointRef(path=str(out / c["path"]), lr=c["lr"], step=c["step"]) for c in json.loads((out / f"round_{t:03d}" / "checkpoints.json").read_text())]
    assert [r.step for r in refs] == [5, 10, 15, 20, 25, 30, 35, 40, 45, 50]
    assert all(r.lr == 3e-3 for r in refs)
    model = build_lm(make_config(loop_data).model).model
    load_checkpoint(model, refs[-1])
    final = torch.load(out / "round_002" / "model.pt", weights_only=True)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, final[k], rtol=0, atol=0)


def test_same_config_resumes_nothing_and_other_config_is_refused(two_rounds, make_config, loop_data):
    out, result = two_rounds
    again = SelfTrainingLoop(make_config(loop_data), out, progress=False).run()
    assert again.rows == result.rows
    with pytest.raises(ConfigMismatchError, match="train.lr"):
        SelfTrainingLoop(make_config(loop_data, train=make_config(loop_data).train.__class__(lr=1e-3)), out, progress=False).run()


def test_stop_rule_halts_the_loop(tmp_path, loop_data, make_config):
    config = make_config(loop_data, rounds=3, stop=(StopRule("cka.cka", below=0.999999),))
    result = SelfTrainingLoop(config, tmp_path / "run", progress=False).run()
    assert result.stop is not None and result.stop.round == 1 and result.stop.monitor == "cka"
    assert len(result.rows) == 2 and not (tmp_path / "run" / "round_002").exists()
    assert json.loads((tmp_path / "run" / "stop.json").read_text())["round"] == 1
    assert "Stopped." in (tmp_path / "run" / "dashboard.html").read_text()


@pytest.mark.parametrize("regime", ["accumulate", "replay"])
def test_regimes_and_ewc(tmp_path, loop_data, make_config, regime):
    base = make_config(loop_data)
    train = base.train.__class__(**{**base.train.to_dict(), "regime": regime, "replay_fraction": 0.5, "ewc": 10.0, "fisher_examples": 8})
    config = make_config(loop_data, rounds=1, train=train, monitors={"nll": {}})
    out = tmp_path / "run"
    SelfTrainingLoop(config, out, progress=False).run()
    rows = [json.loads(x) for x in (out / "round_001" / "train.jsonl").read_text().splitlines()]
    curated = (out / "round_000" / "curated.jsonl").read_text().splitlines()
    n_real = sum(r["source"] == "real" for r in rows)
    if regime == "accumulate":
        assert n_real == 200 and len(rows) == 200 + len(curated)
    else:
        assert n_real == len(curated) and len(rows) == 2 * len(curated)  # replay_fraction 0.5: as many real as generated
    assert (out / "round_000" / "fisher.pt").is_file()


SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from gradtrace.loop import LoopConfig, SelfTrainingLoop
    from gradtrace.loop.curation import Compose, policy_from_dict

    cfg = LoopConfig.from_dict(json.loads(open(sys.argv[1]).read()))
    inner = Compose([policy_from_dict(c, "curation") for c in cfg.curation])

    def slow(records, rng):
        if records and records[0]["round"] == 1:
            time.sleep(120)  # killed here, mid-round
        return inner(records, rng)

    SelfTrainingLoop(cfg, sys.argv[2], curation=slow, progress=False).run()
    """
)


@pytest.mark.slow
def test_resume_after_a_killed_round_equals_an_uninterrupted_run(tmp_path, loop_data, make_config):
    from gradtrace.loop.curation import Compose, policy_from_dict

    config = make_config(loop_data)
    inner = Compose([policy_from_dict(c, "curation") for c in config.curation])
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    (tmp_path / "script.py").write_text(SCRIPT)
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(tmp_path / "script.py"), str(tmp_path / "config.json"), str(killed)], env=env)
    try:
        deadline = time.time() + 300
        while not (killed / "round_001.partial" / "generations.jsonl").is_file():
            assert proc.poll() is None, "the loop process ended before round 1"
            assert time.time() < deadline, "round 1 never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (killed / "round_000" / "DONE").is_file() and not (killed / "round_001").exists()
    # The killed process ran on one thread; float results depend on the thread count,
    # so the resumed and the uninterrupted runs here use one thread too.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        resumed = SelfTrainingLoop.resume(killed, curation=inner, progress=False).run()
        straight = SelfTrainingLoop(config, tmp_path / "straight", curation=inner, progress=False).run()
    finally:
        torch.set_num_threads(threads)
    assert resumed.rows == straight.rows
    for t in range(3):
        a, b = killed / f"round_{t:03d}", tmp_path / "straight" / f"round_{t:03d}"
        for name in ("train.jsonl", "generations.jsonl", "curated.jsonl", "checkpoints.json", "metrics.json"):
            assert (a / name).read_bytes() == (b / name).read_bytes(), (t, name)
        sa, sb = torch.load(a / "model.pt", weights_only=True), torch.load(b / "model.pt", weights_only=True)
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not list(killed.glob("*.partial"))


def test_featurize_reads_the_loop_checkpoints(two_rounds, tmp_path):
    from gradtrace import FeaturizeConfig, ProjectionConfig, featurize, self_influence
    from gradtrace.loop.trace import loop_task_spec

    out, _ = two_rounds
    spec = loop_task_spec(out, max_per_round=4)
    assert [r.step for r in spec.checkpoints] == [5, 10, 15, 20, 25, 30, 35, 40, 45, 50]
    assert spec.train_ids[:2] == ["r0-0", "r0-1"] and spec.train_ids[-1] == "r2-3" and spec.train_tags[0] == "round 0 (real)"
    store = featurize(spec.model(), spec.task, spec.checkpoints, spec.train, tmp_path / "store",
                      FeaturizeConfig(projection=ProjectionConfig("dense", 32, 0), batch_size=4), ids=spec.train_ids,
                      tags=spec.train_tags, checkpoint_loader=spec.checkpoint_loader, progress=False)
    assert store.n_examples == 12 and len(store.checkpoints) == 10 and store.complete
    scores = self_influence(store)
    assert scores.shape == (12,) and (scores > 0).all()


def test_featurize_cli_with_the_example_task_file(two_rounds, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from gradtrace.cli import app

    out, _ = two_rounds
    root = Path(__file__).resolve().parents[2]
    monkeypatch.setenv("GRADTRACE_LOOP_RUN", str(out))
    monkeypatch.setenv("GRADTRACE_LOOP_MAX", "3")
    result = CliRunner().invoke(app, ["featurize", "--task", f"{root}/examples/loop_task.py:make_task", "--out", str(tmp_path / "st"),
                                      "--projection", "dense", "--dim", "16", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "9 examples, 10 checkpoints" in " ".join(result.output.split())


def test_resume_after_a_kill_between_round_end_and_stop_file(tmp_path, loop_data, make_config):
    config = make_config(loop_data, rounds=3, stop=(StopRule("cka.cka", below=0.999999),))
    out = tmp_path / "run"
    first = SelfTrainingLoop(config, out, progress=False).run()
    (out / "stop.json").unlink()  # as if killed right after round 1 was renamed into place
    again = SelfTrainingLoop.resume(out, progress=False).run()
    assert again.stop == first.stop and again.rows == first.rows
    assert (out / "stop.json").is_file() and not (out / "round_002").exists()
