"""The audit's default grouping (one planted change found as several clusters becomes one behaviour,
tested and traced as a whole, its members kept in audit.json and the report) and its likelihood view
(the planted opener found among B's texts B finds far likelier than A; a rerun reuses it)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy import stats

from setups import audit_tiny

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def grouped(tiny_audit, audited, tmp_path_factory):
    """The fixture's audit again with the default grouper (its sample, diff and likelihood stages, the store reused)."""
    from gradtrace.audit import run_audit

    t = tiny_audit
    out = tmp_path_factory.mktemp("grouped") / "out"
    shutil.copytree(audited.out, out)
    first = run_audit(str(t.base), t.run, t.train, out, prompts=t.prompts, config=t.config(0), embedder=t.embedder(), progress=False)
    second = run_audit(str(t.base), t.run, t.train, out, prompts=t.prompts, config=t.config(0), embedder=t.embedder(), progress=False)
    return first, second, out


def test_one_planted_change_found_as_several_clusters_is_one_behaviour(tiny_audit, audited, grouped) -> None:
    from gradtrace.audit.run import _diff_from_dict

    res, _, out = grouped
    audit = res.audit
    assert res.computed.get("diff", 0) == 0 and res.computed.get("featurize", 0) == 0 and res.computed["behaviours"] == 1
    assert audit["grouper"].endswith("group_flagged") and audit["grouping"]["clusters"].startswith("gradtrace.diff.group_behaviours")
    # the flagged clusters of the cluster view that name the planted word, each its own behaviour in the fixture's audit
    alone = [b for b in audited.first.audit["behaviours"]
             if b["view"] == "clusters" and b["skew"] == "B" and audit_tiny.PLANT_WORD in b["members"][0]["label"]]
    keys = {(b["members"][0]["level"], b["members"][0]["cluster"]) for b in alone}
    assert len(keys) >= 2
    holding = [b for b in audit["behaviours"] if b["view"] == "clusters" and keys & {(m["level"], m["cluster"]) for m in b["members"]}]
    assert len(holding) == 1, [b["label"] for b in holding]
    merged = holding[0]
    assert keys <= {(m["level"], m["cluster"]) for m in merged["members"]} and len(merged["members"]) >= 2
    # tested as a whole: Fisher's test of the union of its members' validation texts, by hand from the cached diff
    diff_file = next((out / "stages").glob("diff-*.json"))
    samples = json.loads(next((out / "stages").glob("sample-*.json")).read_text())
    diff = _diff_from_dict(json.loads(diff_file.read_text()), [s["text"] for s in samples["a"]], [s["text"] for s in samples["b"]])
    va, vb = set(), set()
    for m in merged["members"]:
        mem = diff.members[(m["level"], m["cluster"])]
        va |= set(mem.valid_ids_a)
        vb |= set(mem.valid_ids_b)
    na, nb = len(diff.validation_ids[0]), len(diff.validation_ids[1])
    p = stats.fisher_exact([[len(vb), len(va)], [nb - len(vb), na - len(va)]]).pvalue
    assert merged["test"]["p_value"] == pytest.approx(p, rel=1e-9)
    assert (merged["test"]["valid_a"], merged["test"]["valid_b"]) == (len(va), len(vb))
    assert merged["q_value"] == merged["test"]["q_value"] >= merged["test"]["p_value"]
    # measured as a whole: its B texts are the union of its members' B texts
    by_key = {(b["members"][0]["level"], b["members"][0]["cluster"]): b for b in audited.first.audit["behaviours"] if b["view"] == "clusters"}
    union = set().union(*(set(by_key[(m["level"], m["cluster"])]["b_texts"]) for m in merged["members"] if (m["level"], m["cluster"]) in by_key))
    assert set(merged["b_texts"]) == union
    # traced as a whole: one target, its proponents led by the planted examples
    assert merged["target"]["n_queries"] >= 8
    top = [p["index"] for p in merged["proponents"][:10]]
    assert len(set(top) & set(tiny_audit.planted)) >= 8
    # members visible in the report, escaped
    html = res.report_path.read_text()
    for m in merged["members"]:
        assert m["label"].replace("&", "&amp;") in html
    assert f"{len(merged['members'])} member cluster(s)" in html


def test_likelihood_view_in_the_audit_finds_the_opener_and_is_cached(tiny_audit, grouped) -> None:
    res, second, out = grouped
    lik = [b for b in res.audit["behaviours"] if b["view"] == "likelihood"]
    assert res.audit["likelihood"]["flagged"] >= 1 and lik
    samples = json.loads(next((out / "stages").glob("sample-*.json")).read_text())
    planted = [b for b in lik if np.mean([audit_tiny.PLANT_WORD in samples["b"][i]["text"].lower() for i in b["b_texts"]]) > 0.5]
    assert planted, [b["label"] for b in lik]
    b = planted[0]
    assert b["skew"] == "B" and b["q_value"] <= 0.05
    assert all(m["view"] == "likelihood" and m["d_in"] > m["d_out"] for m in b["members"])
    # its target: B's texts in it given their prompts (the default, logprob); traced to the planted examples
    assert b["target"]["behaviour"] == "logprob" and b["target"]["n_queries"] >= 8
    assert np.mean([audit_tiny.PLANT_WORD in q["chosen"].lower() for q in b["target"]["queries"]]) >= 0.5
    top = [p["index"] for p in b["proponents"][:10]]
    assert len(set(top) & set(tiny_audit.planted)) >= 8
    # the rerun reused every stage, the likelihood view included, and wrote the same audit
    assert second.computed == {} and second.reused.get("likelihood") == 1
    assert second.json_path.read_bytes() == res.json_path.read_bytes()
    # the scores were cached per batch (resumable)
    assert list((out / "cache" / "logprobs").glob("logprobs-*.jsonl"))
