"""The audit end to end on the tiny GPT-2: a planted opener is flagged,
traced to the planted training examples and verified by removal; stages are
cached and resume; untrusted text is escaped; bad inputs are named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gradtrace.cli import app
from setups import audit_tiny

pytestmark = pytest.mark.slow


def planted_behaviour(audit: dict) -> dict:
    """The behaviour skewed to B whose members' labels name the planted word, best ranked."""
    found = [b for b in audit["behaviours"] if b["skew"] == "B" and any(audit_tiny.PLANT_WORD in m["label"] for m in b["members"])]
    assert found, [b["label"] for b in audit["behaviours"]]
    return found[0]


def test_planted_opener_is_flagged_traced_and_verified(tiny_audit, audited) -> None:
    audit = audited.first.audit
    b = planted_behaviour(audit)
    assert b["q_value"] < 0.05
    assert b["share_a"]["share"] < 0.02 and b["share_b"]["share"] > 0.08
    # its B texts really open with the planted phrase: the detector agrees with a string search
    samples = json.loads(next((audited.out / "stages").glob("sample-*.json")).read_text())
    has_plant = np.array([audit_tiny.PLANT_WORD in s["text"].lower() for s in samples["b"]])
    assert b["share_b"]["count"] >= 0.8 * has_plant.sum()
    # traced: the planted examples fill the top of the ranking
    k = len(tiny_audit.planted)
    top = [p["index"] for p in b["proponents"][:k]]
    recall = len(set(top) & set(tiny_audit.planted)) / k
    assert recall >= 0.8, recall
    assert all(audit_tiny.PLANT in p["example"]["completion"] for p in b["proponents"][:5])
    assert 0.0 < b["influence_share_top_k"] <= 1.0
    steps = [str(c["step"]) for c in audit["checkpoints"]]
    for p in b["proponents"]:
        assert list(p["per_checkpoint"]) == steps
        assert sum(p["per_checkpoint"].values()) == pytest.approx(p["score"], rel=1e-6, abs=1e-9)
    # verified: removing the top-K proponents takes the opener away; K random examples do not
    v = b["verification"]
    assert v["topk"]["share_b_after"]["share"] < v["random"]["share_b_after"]["share"]
    assert v["topk_reduces_more_than_random"]
    assert v["topk"]["within_base_ci95"]
    assert v["random"]["share_b_after"]["share"] > v["share_a"]["ci95"][1]
    assert len(v["topk"]["removed_ids"]) == k == len(v["random"]["removed_ids"])
    # the recipe's own spread: retrained on all the data, the opener stays (the plant is learnt again)
    r = v["retrain_all"]
    assert r["share_b_after"]["share"] > v["share_a"]["ci95"][1] and not r["within_base_ci95"]
    assert r["share_b_after"]["n"] == b["share_b"]["n"]
    assert audited.first.computed["verify"] == 3  # all the data, top-K removed, K random removed


def test_settings_of_the_run_are_read_from_its_folder(tiny_audit, audited) -> None:
    s = audited.first.audit["retrain_settings"]
    src = audited.first.audit["retrain_settings_source"]
    # what build_run trained with
    assert (s["epochs"], s["batch_size"], s["rank"], s["alpha"], s["schedule"]) == (20, 8, 8, 16, "constant")
    assert s["lr"] == pytest.approx(5e-3)
    assert sorted(s["target_modules"]) == ["c_attn", "c_fc"]
    assert src["lr"].startswith("trainer_state.json") and src["rank"] == "adapter_config.json" and src["seed"] == "default"


def test_rerun_reuses_every_stage(audited) -> None:
    assert audited.first.computed.keys() >= {"sample", "diff", "behaviours", "targets", "featurize", "trace", "verify"}
    assert audited.second.computed == {}
    assert audited.second.reused == audited.first.computed
    assert audited.second.json_path.read_bytes() == audited.first_json


class Killed(Exception):
    pass


@pytest.mark.parametrize("stage", ["diff", "featurize"])
def test_killed_after_a_stage_resumes_to_the_same_audit(tiny_audit, audited, tmp_path, stage) -> None:
    from gradtrace.audit import one_behaviour_per_cluster, run_audit

    t = tiny_audit
    args = dict(prompts=t.prompts, config=t.config(0), embedder=t.embedder(), progress=False, grouper=one_behaviour_per_cluster)
    outs = {}
    for name in ("whole", "killed"):
        out = tmp_path / name
        shutil.copytree(audited.out / "cache", out / "cache")  # sampled batches and embeddings: only the stages are redone
        outs[name] = out
    whole = run_audit(str(t.base), t.run, t.train, outs["whole"], **args)

    def kill(name: str) -> None:
        if name == stage:
            raise Killed(name)

    with pytest.raises(Killed):
        run_audit(str(t.base), t.run, t.train, outs["killed"], on_stage_done=kill, **args)
    assert not (outs["killed"] / "audit.json").exists()
    resumed = run_audit(str(t.base), t.run, t.train, outs["killed"], **args)
    assert resumed.computed.get(stage, 0) == 0 and resumed.reused[stage] == 1
    assert resumed.json_path.read_bytes() == whole.json_path.read_bytes()


def test_script_in_training_data_and_generated_text_renders_as_text(audited, tmp_path) -> None:
    from gradtrace.audit.report import write_report

    html = audited.first.report_path.read_text()
    assert "<script" not in html.lower()
    audit = json.loads(audited.first.json_path.read_text())
    b = planted_behaviour(audit)
    evil = "<script>alert(1)</script>"
    b["proponents"][0]["example"]["completion"] = evil
    b["target"]["queries"][0]["chosen"] = evil
    b["label"] = evil
    b["members"][0]["label"] = evil
    html = write_report(audit, tmp_path / "r.html").read_text()
    assert "<script" not in html.lower()
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 4


def test_report_shows_what_the_target_traces(audited, tmp_path) -> None:
    from gradtrace.audit.report import write_report

    audit = json.loads(audited.first.json_path.read_text())
    b = planted_behaviour(audit)
    assert b["target"]["behaviour"] == "logprob"  # the default: only B's text is traced, so A's answer is not shown
    html = write_report(audit, tmp_path / "l.html").read_text()
    assert "attribution target: logprob" in html and "rejected (A)" not in html
    assert b["target"]["queries"][0]["chosen"].split()[0] in html
    b["target"]["behaviour"] = "contrast"
    b["target"]["queries"][0]["rejected"] = "A-ANSWER-SHOWN"
    html = write_report(audit, tmp_path / "c.html").read_text()
    assert "attribution target: contrast" in html and "rejected (A)" in html and "A-ANSWER-SHOWN" in html


def test_target_setting_is_checked() -> None:
    from gradtrace.audit import AuditConfig
    from gradtrace.errors import InputError

    with pytest.raises(InputError, match="target"):
        AuditConfig(target="margin")
    assert AuditConfig(target="contrast").target == "contrast"


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["audit", *args, "--no-progress", "--embedder", "hashing"])
    return result.exit_code, result.output


def test_bad_inputs_give_clear_errors(tiny_audit, tmp_path) -> None:
    t = tiny_audit
    common = ["--a", str(t.base), "--out", str(tmp_path / "o")]
    # a run folder without checkpoints
    empty = tmp_path / "empty_run"
    empty.mkdir()
    code, out = _cli(*common, "--run", str(empty), "--data", str(t.train), "--prompts", str(t.prompts))
    assert code == 2 and "--run" in out and "no checkpoint-N folders" in out
    # training data that does not match the run's recorded step count
    short = audit_tiny.write_jsonl(tmp_path / "short.jsonl", t.data[:40])
    code, out = _cli(*common, "--run", str(t.run), "--data", str(short), "--prompts", str(t.prompts))
    assert code == 2 and "--data" in out and "holds 40 examples" in out and "89 to 96" in out
    # no prompts
    code, out = _cli(*common, "--run", str(t.run), "--data", str(t.train))
    assert code == 2 and "--prompts is required" in out
    code, out = _cli(*common, "--run", str(t.run), "--data", str(t.train), "--prompts", str(tmp_path / "none.jsonl"))
    assert code == 2 and "--prompts" in out and "does not exist" in out
    # A and B with different tokenizers: B's run carries a tokenizer with one more token
    from gradtrace.models.zoo import byte_tokenizer

    other = tmp_path / "other_run"
    shutil.copytree(t.run, other)
    tok = byte_tokenizer()
    tok.add_tokens(["<extra>"])
    tok.save_pretrained(other)
    code, out = _cli(*common, "--run", str(other), "--data", str(t.train), "--prompts", str(t.prompts))
    assert code == 2 and "different tokenizers" in out and "--a" in out and "--run" in out
    # unknown --train-config key
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"learning_rate": 1.0}))
    code, out = _cli(*common, "--run", str(t.run), "--data", str(t.train), "--prompts", str(t.prompts), "--verify", "5",
                     "--train-config", str(cfg))
    assert code == 2 and "--train-config" in out and "learning_rate" in out
    # a device this machine does not have, refused before any work
    import torch

    missing = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    code, out = _cli(*common, "--run", str(t.run), "--data", str(t.train), "--prompts", str(t.prompts), "--device", missing)
    assert code == 2 and "--device" in out and missing in out
    assert not (tmp_path / "o" / "stages").exists()


def test_learning_rate_schedules_are_recognised_from_the_logged_rates(tmp_path) -> None:
    import math

    from gradtrace.audit.inputs import RunInfo, infer_lr_schedule

    steps = 40
    for name, f in (("constant", lambda s: 1.0), ("linear", lambda s: 1 - s / steps),
                    ("cosine", lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))):
        history = [{"step": s, "learning_rate": 2e-3 * f(s), "loss": 1.0} for s in range(1, steps + 1)]
        run = RunInfo(tmp_path, [], "lora", {"max_steps": steps, "log_history": history}, None)
        lr, sched = infer_lr_schedule(run)
        assert sched == name and lr == pytest.approx(2e-3)
    warm = [{"step": s, "learning_rate": 1e-3 * min(1, s / 10)} for s in range(1, steps + 1)]
    assert infer_lr_schedule(RunInfo(tmp_path, [], "lora", {"max_steps": steps, "log_history": warm}, None)) is None


def test_cli_audit_writes_the_json_and_the_report(tiny_audit, audited, tmp_path) -> None:
    t = tiny_audit
    out = tmp_path / "cli"
    shutil.copytree(audited.out / "cache", out / "cache")  # the sampled batches: the CLI samples with the same settings
    code, output = _cli("--a", str(t.base), "--run", str(t.run), "--data", str(t.train), "--prompts", str(t.prompts), "--out", str(out),
                        "--n-per-prompt", "6", "--max-new-tokens", "64", "--batch-size", "72", "--max-length", "160", "--dim", "256",
                        "--top-k", "5", "--json")
    assert code == 0, output
    data = json.loads(output[output.index("{"):])
    assert Path(data["json"]).is_file() and Path(data["report"]).is_file()
    assert data["computed"]["featurize"] == 1 and data["computed"]["trace"] == 1
    b = planted_behaviour(json.loads(Path(data["json"]).read_text()))
    assert all(p["index"] in t.planted for p in b["proponents"])


def merge_planted(result):
    """A grouper: the flagged clusters naming the planted word are one behaviour; every other one stands alone."""
    from gradtrace.audit import BehaviourGroup

    flagged = result.significant()
    planted = [c for c in flagged if audit_tiny.PLANT_WORD in c.label and c.skew == "B"]
    return [BehaviourGroup(planted, "the planted opener")] + [[c] for c in flagged if c not in planted]


def test_a_grouper_plugs_in_and_the_group_is_measured_and_traced_as_a_whole(tiny_audit, audited, tmp_path) -> None:
    from gradtrace.audit import run_audit

    t = tiny_audit
    out = tmp_path / "grouped"
    shutil.copytree(audited.out, out)
    res = run_audit(str(t.base), t.run, t.train, out, prompts=t.prompts, config=t.config(0), embedder=t.embedder(), progress=False,
                    grouper=merge_planted)
    assert res.computed.get("featurize", 0) == 0 and res.computed.get("diff", 0) == 0  # one store, one diff, reused
    assert res.computed["behaviours"] == 1 and res.audit["grouper"].endswith("merge_planted")
    merged = res.audit["behaviours"][0]
    alone = [b for b in audited.first.audit["behaviours"]
             if b["view"] == "clusters" and b["skew"] == "B" and audit_tiny.PLANT_WORD in b["members"][0]["label"]]
    assert merged["label"] == "the planted opener"
    assert sorted((m["level"], m["cluster"]) for m in merged["members"]) == sorted(
        (m["level"], m["cluster"]) for b in alone for m in b["members"])
    # the group's texts are the union of its members' texts
    assert set(merged["b_texts"]) == set().union(*(b["b_texts"] for b in alone))
    assert merged["target"]["n_queries"] == 16 and len(merged["proponents"]) == 30
    # traced as a whole: its second member (the fine-tune's shift to one answer template, with and without the opener)
    # dilutes the target, yet the top of the ranking is the planted examples (30 of 96 in the data)
    top = [p["index"] for p in merged["proponents"]]
    assert len(set(top[:10]) & set(t.planted)) >= 8 and len(set(top) & set(t.planted)) >= 15


def test_the_benchmark_measures_a_planted_behaviour(tiny_audit, audited) -> None:
    """benchmarks/audit_planted.py's measures on the tiny audit (the same code path as at SmolLM2 scale)."""
    import re

    from audit_planted import planted_metrics

    t = tiny_audit
    read = lambda name: [json.loads(line) for line in (audited.out / name).read_text().splitlines()]  # noqa: E731
    samples_a, samples_b = read("samples_a.jsonl"), read("samples_b.jsonl")
    (entry,) = planted_metrics(audited.first.audit, samples_a, samples_b, t.data, {"opener": t.planted},
                               {"opener": re.compile(audit_tiny.PLANT_WORD, re.I)})
    b = planted_behaviour(audited.first.audit)
    in_b = np.mean([audit_tiny.PLANT_WORD in s["text"].lower() for s in samples_b])
    assert entry["in_b_samples"] == pytest.approx(in_b) and entry["in_a_samples"] == 0.0
    assert entry["flagged_rank"] == 1 and entry["label"] == b["label"] and entry["q_value"] == b["q_value"]
    assert entry["recall_at_k"] == len({p["index"] for p in b["proponents"][:30]} & set(t.planted)) / 30
    for key in ("bm25_recall_at_k", "minilm_recall_at_k"):
        assert 0.0 <= entry[key] <= 1.0
    assert entry["share_b_after_topk_removal"] < entry["share_b_after_random_removal"]
    assert entry["base_share_ci95"] == b["share_a"]["ci95"]
