"""``gradtrace diff`` end to end on JSONL sources, as a user runs it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from gradtrace.cli import app


def _write(path, texts):
    path.write_text("".join(json.dumps({"prompt_id": f"p{i % 10}", "text": t}) + "\n" for i, t in enumerate(texts)))


def _samples(tmp_path):
    rng = np.random.default_rng(0)
    topics = ["How to bake bread: mix flour, water and yeast, then knead the dough.",
              "The weather will be sunny tomorrow with a light breeze from the west.",
              "To learn a language, practise speaking every day with native speakers.",
              "Saving money starts with a budget that tracks every expense."]
    a = [f"{topics[rng.integers(4)]} Thanks for asking, friend number {i}." for i in range(160)]
    b = [f"{topics[rng.integers(4)]} Thanks for asking, friend number {i}." + (" Please consult a qualified professional before acting on this." if i % 2 else "")
         for i in range(160)]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"question {i}"}) + "\n" for i in range(10)))
    _write(tmp_path / "a.jsonl", a)
    _write(tmp_path / "b.jsonl", b)
    return prompts


@pytest.mark.slow
def test_cli_diff_on_jsonl_with_minilm(tmp_path):
    prompts = _samples(tmp_path)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["diff", "--a", f"jsonl:{tmp_path / 'a.jsonl'}", "--b", f"jsonl:{tmp_path / 'b.jsonl'}",
                                   "--prompts", str(prompts), "--intended", "add a safety disclaimer", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "diff.json").read_text())
    assert data["intended"] == "add a safety disclaimer" and data["embedder"] == "all-MiniLM-L6-v2"
    flagged = [c for c in data["clusters"] if c["q_value"] <= 0.05]
    top = flagged[0]
    assert top["level"] == "sentence" and top["log_odds"] > 0 and top["valid_a"] == 0
    assert any("consult a qualified professional" in m for m in top["medoids"])
    assert {"share_b", "p_value", "q_value", "log_odds", "log_odds_low", "log_odds_high", "label", "label_accuracy",
            "examples_a", "examples_b"} <= set(top)
    assert (out / "report.html").is_file() and (out / "samples_b.jsonl").is_file()
    assert "clusters flagged at FDR 0.05" in res.output


def test_cli_diff_errors(tmp_path):
    prompts = _samples(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["diff", "--a", f"jsonl:{tmp_path / 'nope.jsonl'}", "--b", f"jsonl:{tmp_path / 'b.jsonl'}",
                              "--prompts", str(prompts), "--out", str(tmp_path / "o"), "--embedder", "hashing"])
    assert res.exit_code == 2 and "does not exist" in res.output
    short = tmp_path / "short.jsonl"
    _write(short, ["only one text here"] * 3)
    res = runner.invoke(app, ["diff", "--a", f"jsonl:{short}", "--b", f"jsonl:{short}", "--out", str(tmp_path / "o"), "--embedder", "hashing"])
    assert res.exit_code == 2 and "needs at least min_texts=10" in res.output
    res = runner.invoke(app, ["diff", "--a", "gpt-5", "--b", "smollm2", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "is not one of" in res.output
    res = runner.invoke(app, ["diff", "--a", f"jsonl:{short}", "--b", "smollm2", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--prompts is required: model B (hf)" in res.output
    res = runner.invoke(app, ["diff", "--a", f"jsonl:{short}", "--b", f"jsonl:{short}", "--levels", "words", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "levels must be a non-empty subset" in res.output


def test_cli_diff_with_an_endpoint_judge(tmp_path):
    from gradtrace.diff.serve import ChatServer

    prompts = _samples(tmp_path)
    asked = []

    def completer(messages, params):
        asked.append(messages[-1]["content"])
        if "intention" in messages[-1]["content"]:
            return "unexpected: the fine-tuning was not meant to add disclaimers."
        return "Adds a safety disclaimer"

    with ChatServer(completer, model_name="judge") as server:
        res = CliRunner().invoke(app, [
            "diff", "--a", f"jsonl:{tmp_path / 'a.jsonl'}", "--b", f"jsonl:{tmp_path / 'b.jsonl'}", "--prompts", str(prompts),
            "--intended", "be more concise", "--out", str(tmp_path / "out"), "--embedder", "hashing", "--no-progress",
            "--judge", f"{server.base_url}#judge"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "out" / "diff.json").read_text())
    flagged = [c for c in data["clusters"] if c["q_value"] <= 0.05]
    assert flagged and all(c["judgement"] == "unexpected" and c["llm_label"] == "Adds a safety disclaimer" for c in flagged)
    assert any("be more concise" in q for q in asked)
    assert "Adds a safety disclaimer" in (tmp_path / "out" / "report.html").read_text()
    unflagged = [c for c in data["clusters"] if c["q_value"] > 0.05]
    assert all(c["judgement"] is None for c in unflagged)


def test_cli_diff_seed_reaches_the_clusterer(tmp_path, monkeypatch):
    from gradtrace.diff import cluster

    seeds = []
    original = cluster.ClusterConfig.make

    def make(self, seed=None):
        made = original(self, seed)
        seeds.append(getattr(made, "seed", None))
        return made

    monkeypatch.setattr(cluster.ClusterConfig, "make", make)
    prompts = _samples(tmp_path)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["diff", "--a", f"jsonl:{tmp_path / 'a.jsonl'}", "--b", f"jsonl:{tmp_path / 'b.jsonl'}",
                                   "--prompts", str(prompts), "--out", str(out), "--embedder", "hashing", "--levels", "text",
                                   "--seed", "7", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert seeds and seeds[0] == 7
    assert json.loads((out / "diff.json").read_text())["config"]["text_clusters"]["seed"] == 7


def test_cli_diff_embedder_by_the_loops_name_too(tmp_path):
    """``--embedder hashed`` (the loop's name) is the same embedder as ``hashing``; an unknown name lists the names."""
    prompts = _samples(tmp_path)
    runner, results = CliRunner(), {}
    for name in ("hashing", "hashed"):
        out = tmp_path / name
        res = runner.invoke(app, ["diff", "--a", f"jsonl:{tmp_path / 'a.jsonl'}", "--b", f"jsonl:{tmp_path / 'b.jsonl'}",
                                  "--prompts", str(prompts), "--out", str(out), "--embedder", name, "--levels", "text", "--no-progress"])
        assert res.exit_code == 0, res.output
        results[name] = json.loads((out / "diff.json").read_text())
    assert results["hashed"]["embedder"] == results["hashing"]["embedder"] == "hashing-256"
    assert results["hashed"]["clusters"] == results["hashing"]["clusters"]
    res = runner.invoke(app, ["diff", "--a", f"jsonl:{tmp_path / 'a.jsonl'}", "--b", f"jsonl:{tmp_path / 'b.jsonl'}",
                              "--out", str(tmp_path / "o"), "--embedder", "tfidf"])
    assert res.exit_code == 2 and "--embedder must be one of ['hashed', 'hashing', 'minilm']; got 'tfidf'" in " ".join(res.output.split())


def test_cli_diff_json_summary(tmp_path):
    prompts = _samples(tmp_path)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["diff", "--a", f"jsonl:{tmp_path / 'a.jsonl'}", "--b", f"jsonl:{tmp_path / 'b.jsonl'}",
                                   "--prompts", str(prompts), "--out", str(out), "--embedder", "hashing", "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    data = json.loads((out / "diff.json").read_text())
    assert summary["json"] == str(out / "diff.json") and summary["report"] == str(out / "report.html")
    assert summary["clusters"] == len(data["clusters"]) and summary["alpha"] == 0.05
    assert [c["rank"] for c in summary["flagged"]] == [c["rank"] for c in data["clusters"] if c["q_value"] <= 0.05]


def test_cli_diff_writes_behaviours_and_tests_within_prompts(tmp_path):
    prompts = _samples(tmp_path)
    runner = CliRunner()
    common = ["diff", "--a", f"jsonl:{tmp_path / 'a.jsonl'}", "--b", f"jsonl:{tmp_path / 'b.jsonl'}", "--prompts", str(prompts),
              "--embedder", "hashing", "--no-progress"]
    res = runner.invoke(app, [*common, "--out", str(tmp_path / "out"), "--json", "--levels", "text,sentence,fine", "--test", "cmh"])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.output)
    data = json.loads((tmp_path / "out" / "diff.json").read_text())
    assert data["config"]["test"] == "cmh" and data["config"]["levels"] == ["text", "sentence", "fine"]
    assert data["grouping"] == {"rule": data["grouping"]["rule"], "jaccard": 0.5, "cosine": 0.4}
    flagged = {(c["level"], c["cluster"]) for c in data["clusters"] if c["q_value"] <= 0.05}
    assert data["behaviours"] and printed["behaviours"] == data["behaviours"]
    # every flagged cluster is in exactly one behaviour; the disclaimer behaviour is skewed to B
    in_behaviours = [(m["level"], m["cluster"]) for b in data["behaviours"] for m in b["members"]]
    assert sorted(in_behaviours) == sorted(flagged)
    top = next(b for b in data["behaviours"] if b["skew"] == "B")
    assert top["valid_a"] == 0 and any("consult a qualified professional" in r for _, r in top["rows_b"])
    assert all(i % 2 == 1 for i in top["ids_b"])  # the disclaimer was added to the odd texts
    assert "Behaviours" in (tmp_path / "out" / "report.html").read_text()
    # without prompt ids the stratified test has no strata
    bare = tmp_path / "bare.jsonl"
    bare.write_text("".join(json.dumps({"text": json.loads(line)["text"]}) + "\n" for line in (tmp_path / "b.jsonl").read_text().splitlines()))
    res = runner.invoke(app, ["diff", "--a", f"jsonl:{bare}", "--b", f"jsonl:{bare}", "--embedder", "hashing", "--test", "cmh",
                              "--out", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "every sample needs a prompt id" in " ".join(res.output.split())
    res = runner.invoke(app, [*common, "--out", str(tmp_path / "o3"), "--test", "chi2"])
    assert res.exit_code == 2 and "test must be one of" in res.output
    res = runner.invoke(app, [*common, "--out", str(tmp_path / "o4"), "--group-cosine", "-1"])
    assert res.exit_code == 2 and "cosine must be a number >= 0" in " ".join(res.output.split())
