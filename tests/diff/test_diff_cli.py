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
