"""The stop trace: when a stop rule fires, the stop report says which rounds'
data (and which examples) drove the monitor that fired.

Oracle set-up: a loop on the tiny GPT-2 whose round-2 training data is
planted (a curation policy hands round 2 six texts carrying a marker the
round-1 model never writes, among ordinary corpus sentences; rounds 1 and
the rest get ordinary sentences only). The marker's rate jumps at round 2
and the rule fires there. The stop report must name round 2 and put the
planted texts on top; its per-round influence must equal a brute-force sum
of per-example TracIn scores computed here with one backward pass per text.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from gradtrace.demos.loop_corpus import CorpusConfig, make_corpus, write_example_data
from gradtrace.errors import InputError
from gradtrace.loop import LoopConfig, SelfTrainingLoop, StopRule
from gradtrace.loop.config import DataConfig, GenerationConfig, ModelConfig, StopTraceConfig, TrainConfig
from gradtrace.loop.lm import load_state
from gradtrace.loop.models import build_lm
from gradtrace.loop.stop import StopEvent

MARK = "zq"
K = 2  # the planted round
PLANTED = [f"Nova {MARK} {MARK} {MARK}."] * 4 + [f"Nova {MARK} {MARK}.", f"Nova {MARK} {MARK} {MARK} {MARK}."]
UNTRUSTED = "Vega fixed the lamp <script>alert(1)</script> \x1b[2J and it was great."  # an ordinary text of round 1
ORDINARY = make_corpus(CorpusConfig(n=100, seed=5))
TAIL_RULE = StopRule("nll.tail_share", above=2.0)  # never fires (a share is at most 1); gives stop_target an nll rule


def planted_policy(records, rng):
    t = records[0]["round"]
    plain = [{"id": f"ord-{t}-{i}", "text": x, "source": "real", "round": t} for i, x in enumerate(ORDINARY[t * 24:(t + 1) * 24])]
    if t == 0:
        plain[3]["text"] = UNTRUSTED
    if t + 1 == K:
        return [{"id": f"planted-{i}", "text": x, "source": "planted", "round": t} for i, x in enumerate(PLANTED)] + plain[: 24 - len(PLANTED)]
    return plain


def planted_config(folder: Path, **trace: object) -> LoopConfig:
    p = write_example_data(folder, seed=0, n_train=100, n_heldout=40)
    p["prompts.txt"].write_text("Nova\n")
    data = DataConfig(train=str(p["train.jsonl"]), heldout=str(p["heldout.jsonl"]), prompts=str(p["prompts.txt"]), probes=str(p["probes.txt"]))
    settings = {"projection": "none", "dtype": "float64", "max_queries": 64, "include_base": True, "top_k": 1000, **trace}
    return LoopConfig(
        data=data, rounds=2, seed=0, model=ModelConfig(n_layer=1, n_embd=32, n_head=2),
        generation=GenerationConfig(n_per_prompt=24, max_new_tokens=24, temperature=1.0),
        train=TrainConfig(base_steps=60, steps=30, batch_size=16, lr=1e-2, checkpoint_every=15),
        monitors={"nll": {"margin": 0.05}, "attribute": {"classifiers": {"marker": {"kind": "regex", "pattern": MARK}}}},
        stop=(StopRule("attribute.marker.rate", above=0.1), TAIL_RULE), embedder="hashed",
        stop_trace=StopTraceConfig(**settings),
    )


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    config = planted_config(root / "data")
    result = SelfTrainingLoop(config, root / "run", curation=planted_policy, progress=False).run()
    return config, root / "run", result


def test_stop_report_names_the_planted_round_and_its_examples(planted):
    config, out, result = planted
    assert result.stop is not None and result.stop.round == K and result.stop.metric == "attribute.marker.rate"
    a = result.attribution
    assert a["traced"] and a["stop_round"] == K and [r["round"] for r in a["rounds"]] == [0, 1, 2]
    assert a["largest_share_round"] == K
    shares = {r["round"]: r["share"] for r in a["rounds"]}
    assert shares[K] > 0 and all(shares[K] > shares[t] for t in shares if t != K)
    assert sum(abs(v) for v in shares.values()) == pytest.approx(1.0)
    top = a["top_examples"][: len(PLANTED)]
    assert all(e["source"] == "planted" and e["round"] == K for e in top)
    assert sorted(e["text"] for e in top) == sorted(PLANTED)
    assert a["target"]["kind"] == "attribute_contrast" and a["target"]["direction"] == "rise"
    on_disk = json.loads((out / "stop.json").read_text())
    assert on_disk["attribution"] == json.loads(json.dumps(a)) and StopEvent.from_dict(on_disk) == result.stop


def _trapezoid(out: Path, config: LoopConfig, t: int) -> list[tuple[Path, float]]:
    """Round t's scoring points and weights, written out independently: start weights, then each checkpoint."""
    n = len((out / f"round_{t:03d}" / "train.jsonl").read_text().splitlines())
    ckpts = json.loads((out / f"round_{t:03d}" / "checkpoints.json").read_text())
    start_step = 0 if t == 0 else config.train.base_steps + (t - 1) * config.train.steps
    start = out / "stop_trace" / "init.pt" if t == 0 else out / f"round_{t - 1:03d}" / "model.pt"
    steps = [start_step] + [c["step"] for c in ckpts]
    areas = [c["lr"] * (steps[i + 1] - steps[i]) / n for i, c in enumerate(ckpts)]
    weights = [areas[0] / 2] + [(areas[i] + (areas[i + 1] if i + 1 < len(areas) else 0.0)) / 2 for i in range(len(areas))]
    return list(zip([start] + [out / c["path"] for c in ckpts], weights))


def _grad(lm, text: str) -> torch.Tensor:
    ids = torch.tensor([lm.encode([text])[0]])
    lm.model.zero_grad(set_to_none=True)
    lm.token_nll(ids, torch.ones_like(ids)).sum().backward()
    return torch.cat([p.grad.reshape(-1).double() for p in lm.model.parameters()])


@pytest.fixture(scope="module")
def brute(planted):
    """Every traced example's TracIn score on the target, by one backward pass per text at every point."""
    config, out, result = planted
    # the target, rebuilt: every stop-round generation (max_queries exceeds each side), +1/n with the marker, -1/n without
    # (a side the stop round has none of comes from round 0's generations)
    def sides(t):
        gens = [json.loads(x)["text"] for x in (out / f"round_{t:03d}" / "generations.jsonl").read_text().splitlines()]
        return [g for g in gens if re.search(MARK, g)], [g for g in gens if not re.search(MARK, g)]

    (pos, neg), (pos0, neg0) = sides(K), sides(0)
    pos, neg = pos or pos0, neg or neg0
    assert 0 < len(pos) <= 64 and 0 < len(neg) <= 64
    target = [(g, 1.0 / len(pos)) for g in pos] + [(g, -1.0 / len(neg)) for g in neg]
    lm = build_lm(config.model)
    scores = {}
    for t in (0, 1, 2):
        texts = [json.loads(x)["text"] for x in (out / f"round_{t:03d}" / "train.jsonl").read_text().splitlines()]
        score = np.zeros(len(texts))
        for path, w in _trapezoid(out, config, t):
            load_state(lm.model, torch.load(path, weights_only=True))
            g_target = sum(wq * _grad(lm, q) for q, wq in target)  # gradient of sum_q w_q NLL_q
            score += [w * float(g_target @ _grad(lm, x)) for x in texts]
        scores[t] = score
    return scores


def test_round_influence_equals_a_brute_force_sum_of_per_example_scores(planted, brute):
    config, out, result = planted
    a = result.attribution
    scores_file = {r["id"]: r["score"] for r in map(json.loads, (out / "stop_trace" / "scores.jsonl").read_text().splitlines())}
    for t, score in brute.items():
        for j, s in enumerate(score):
            assert scores_file[f"r{t}-{j}"] == pytest.approx(s, rel=1e-4, abs=1e-9)
    totals = {t: s.sum() for t, s in brute.items()}
    absolute = sum(abs(v) for v in totals.values())
    for r in a["rounds"]:
        assert r["influence"] == pytest.approx(totals[r["round"]], rel=1e-4, abs=1e-9)
        assert r["influence_from_scores"] == pytest.approx(totals[r["round"]], rel=1e-4, abs=1e-9)
        assert r["share"] == pytest.approx(totals[r["round"]] / absolute, rel=1e-4)
    assert a["total_influence"] == pytest.approx(sum(totals.values()), rel=1e-4)


def test_round_influence_is_exact_under_a_projection(planted, brute, tmp_path):
    """Through a dense projection to 32 the examples' scores are estimates, the rounds' influence still exact."""
    from gradtrace.loop.trace import trace_stop

    config, out, result = planted
    copy = tmp_path / "run"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("stop_trace"))
    dense = config.__class__(**{**{f: getattr(config, f) for f in config.__dataclass_fields__},
                                "stop_trace": StopTraceConfig(**{**config.stop_trace.to_dict(), "projection": "dense", "dim": 32, "dtype": "float32"})})
    a = trace_stop(dense, copy, result.stop, progress=False)
    for r in a["rounds"]:
        assert r["influence"] == pytest.approx(brute[r["round"]].sum(), rel=1e-4, abs=1e-9)
    projected = [r["influence_from_scores"] for r in a["rounds"]]
    assert projected != pytest.approx([r["influence"] for r in a["rounds"]], rel=1e-6)  # the projection changed the scores
    assert a["projection"]["kind"] == "dense" and a["projection"]["dim"] == 32


def test_rerun_reads_the_cache_and_a_lost_round_is_redone_alone(planted, tmp_path, monkeypatch):
    import importlib

    from gradtrace.scoring import Attributor

    featurize_module = importlib.import_module("gradtrace.featurize")

    config, out, result = planted
    copy = tmp_path / "run"
    shutil.copytree(out, copy)

    def refuse(*args, **kwargs):
        raise AssertionError("recomputed a cached stop trace")

    with monkeypatch.context() as m:
        m.setattr(featurize_module, "featurize", refuse)
        m.setattr(Attributor, "score", refuse)
        again = SelfTrainingLoop(config, copy, curation=planted_policy, progress=False).run()
    assert again.attribution == result.attribution and again.stop == result.stop
    # a trace killed before round 2's scores were written: only round 2 is computed again
    stages = sorted((copy / "stop_trace" / "stages").glob("round-*.json"))
    assert len(stages) == 3
    r2 = [p for p in stages if json.loads(p.read_text())["scores"] == [e["score"] for e in _round_scores(copy, 2)]]
    assert len(r2) == 1
    r2[0].unlink()
    calls = []
    real = featurize_module.featurize

    def counting(*args, **kwargs):
        calls.append(Path(args[4]).name)
        return real(*args, **kwargs)

    monkeypatch.setattr(featurize_module, "featurize", counting)
    resumed = SelfTrainingLoop(config, copy, curation=planted_policy, progress=False).run()
    assert [c.split("-")[0] for c in calls] == ["round_002"]
    assert resumed.attribution == result.attribution


def _round_scores(out: Path, t: int) -> list[dict]:
    return [r for r in map(json.loads, (out / "stop_trace" / "scores.jsonl").read_text().splitlines()) if r["round"] == t]


def test_untrusted_text_is_escaped_in_the_dashboard_and_the_terminal(planted):
    from gradtrace.cli import app

    config, out, result = planted
    html = (out / "dashboard.html").read_text()
    assert "What drove the stop" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert(1)" not in html
    done = CliRunner().invoke(app, ["loop", "--resume", str(out), "--no-progress"])
    assert done.exit_code == 0, done.output
    assert "\x1b" not in done.output and "\\x1b[2J" in done.output
    assert "top training examples" in done.output and f"largest share: round {K}" in done.output
    rows = [line.split("\t") for line in done.output.splitlines() if line.startswith(("1\tr2-", "6\tr2-"))]
    assert len(rows) == 2 and all(r[2] == str(K) for r in rows)
    as_json = CliRunner().invoke(app, ["loop", "--resume", str(out), "--no-progress", "--json"])
    assert json.loads(as_json.output)["attribution"]["largest_share_round"] == K


def test_the_switch_turns_it_off_and_settings_may_change_on_resume(planted, tmp_path):
    config, out, result = planted
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    off = config.__class__(**{**{f: getattr(config, f) for f in config.__dataclass_fields__}, "stop_trace": StopTraceConfig(enabled=False)})
    again = SelfTrainingLoop(off, copy, progress=False).run()
    assert again.attribution is None and again.stop == result.stop
    assert "attribution" not in json.loads((copy / "stop.json").read_text())
    assert "What drove the stop" not in (copy / "dashboard.html").read_text()
    saved = json.loads((copy / "loop.json").read_text())
    assert saved["stop_trace"]["enabled"] is False
    assert SelfTrainingLoop.resume(copy).config.stop_trace.enabled is False
    # a run folder written before the stop trace existed (no stop_trace key) resumes, with the trace on by default
    del saved["stop_trace"]
    (copy / "loop.json").write_text(json.dumps(saved))
    assert SelfTrainingLoop.resume(copy, progress=False).config.stop_trace == StopTraceConfig()


def test_targets_of_the_nll_monitor_and_a_falling_rule(planted):
    from gradtrace.loop.monitors import Observation
    from gradtrace.loop.runner import read_texts
    from gradtrace.loop.trace import stop_target

    config, out, _ = planted
    event = StopEvent("nll.tail_share", K, 0.5, 2.0, 0.1, TAIL_RULE.describe())
    target = stop_target(config, out, event)
    rise = Observation.load(out / f"round_{K:03d}").heldout_nll - Observation.load(out / "round_000").heldout_nll
    texts = read_texts(config.data.heldout)
    expected = [texts[i] for i in np.argsort(-rise, kind="stable") if rise[i] > 0.05] or [texts[i] for i in np.argsort(-rise, kind="stable")]
    assert [q["text"] for q in target["queries"]] == expected[: config.stop_trace.max_queries]
    assert all(q["weight"] == pytest.approx(-1 / len(target["queries"])) for q in target["queries"])  # rise of mean NLL = fall of log p
    # a rule watching for a fall flips every weight
    falling = config.__class__(**{**{f: getattr(config, f) for f in config.__dataclass_fields__},
                                  "stop": (StopRule("attribute.marker.rate", below=0.5),)})
    up = stop_target(config, out, StopEvent("attribute.marker.rate", K, 0.8, 0.1, 0.7, config.stop[0].describe()))
    down = stop_target(falling, out, StopEvent("attribute.marker.rate", K, 0.8, 0.5, 0.3, falling.stop[0].describe()))
    assert [q["weight"] for q in down["queries"]] == [-q["weight"] for q in up["queries"]] and down["direction"] == "fall"
    cka = stop_target(config, out, StopEvent("cka.cka", K, 0.5, 0.9, 0.4, "cka.cka < 0.9"))
    assert cka["supported"] is False and "cka.cka" in cka["reason"]


def test_stop_trace_settings_are_checked_by_name():
    with pytest.raises(InputError, match=r"stop_trace.projection must be one of"):
        StopTraceConfig(projection="sparse")
    with pytest.raises(InputError, match=r"stop_trace.max_queries must be a positive integer"):
        StopTraceConfig(max_queries=0)
    with pytest.raises(InputError, match=r"stop_trace.*unknown fields \['bogus'\]"):
        LoopConfig.from_dict({"data": {}, "stop_trace": {"bogus": 1}})


def test_stage_cache_says_what_is_done(tmp_path):
    from gradtrace.audit.stages import StageCache

    cache = StageCache(tmp_path)
    assert not cache.done("round", {"round": 1})
    assert cache.run("round", {"round": 1}, lambda: {"scores": [1.5]}) == {"scores": [1.5]}
    assert cache.done("round", {"round": 1}) and not cache.done("round", {"round": 2})
    assert StageCache(tmp_path).run("round", {"round": 1}, lambda: {"scores": [0.0]}) == {"scores": [1.5]}  # read back


def test_round_weights_sum_the_learning_rates_of_each_interval(tmp_path, loop_data):
    """Linear decay, checkpoints every 4 of 10 steps: each point gets half the rates of the steps on either side, over n."""
    from gradtrace.loop.trace import round_checkpoints

    config = LoopConfig(data=loop_data, rounds=2, train=TrainConfig(base_steps=20, steps=10, lr=0.5, schedule="linear", checkpoint_every=4))
    folder = tmp_path / "round_001"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(5)))
    (folder / "checkpoints.json").write_text(json.dumps([{"path": f"round_001/checkpoints/step_{s:06d}.pt", "lr": 0.0, "step": s}
                                                         for s in (24, 28, 30)]))
    refs = round_checkpoints(tmp_path, config, 1)
    rates = {j: 0.5 * (10 - j + 1) / 10 for j in range(1, 11)}  # step j of the round
    a1, a2, a3 = (sum(rates[j] for j in js) / 5 for js in ((1, 2, 3, 4), (5, 6, 7, 8), (9, 10)))
    assert [r.step for r in refs] == [20, 24, 28, 30]
    assert refs[0].path.endswith("round_000/model.pt")
    assert [r.lr for r in refs] == pytest.approx([a1 / 2, (a1 + a2) / 2, (a2 + a3) / 2, a3 / 2])


def test_rate_gradient_target(planted):
    from gradtrace.loop.trace import stop_target

    config, out, result = planted
    other = config.__class__(**{**{f: getattr(config, f) for f in config.__dataclass_fields__},
                                "stop_trace": StopTraceConfig(attribute_target="rate_gradient", max_queries=64)})
    target = stop_target(other, out, result.stop)
    gens = [json.loads(x)["text"] for x in (out / f"round_{K:03d}" / "generations.jsonl").read_text().splitlines()]
    hits = [bool(re.search(MARK, g)) for g in gens]
    if all(hits) or not any(hits):  # saturated: round 0's generations pooled in
        gens += [json.loads(x)["text"] for x in (out / "round_000" / "generations.jsonl").read_text().splitlines()]
        hits = [bool(re.search(MARK, g)) for g in gens]
    rate = sum(hits) / len(hits)
    expected = [(g, (h - rate) / len(gens)) for g, h in zip(gens, hits) if h != rate]
    assert [(q["text"], q["weight"]) for q in target["queries"]] == [(g, pytest.approx(w)) for g, w in expected]
    assert sum(q["weight"] for q in target["queries"]) == pytest.approx(0.0, abs=1e-12) and all(q["sum_tokens"] for q in target["queries"])


def test_the_round_toward_the_breach_is_none_when_no_round_pushed_that_way() -> None:
    from gradtrace.loop.trace import toward_breach_round

    assert toward_breach_round([{"round": 1, "influence": -0.3}, {"round": 2, "influence": -0.6}]) is None
    assert toward_breach_round([{"round": 1, "influence": 0.0}]) is None
    assert toward_breach_round([{"round": 1, "influence": 0.2}, {"round": 2, "influence": 0.2}, {"round": 3, "influence": -1.0}]) == 1
    assert toward_breach_round([{"round": 1, "influence": -0.2}, {"round": 2, "influence": 0.1}]) == 2
    assert toward_breach_round([]) is None
