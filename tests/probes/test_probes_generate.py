"""Few-shot LM generation: parsing, provenance, and the endpoint path (key sent only as a header, never kept)."""

from __future__ import annotations

import json

from gradtrace.diff.serve import ChatServer
from gradtrace.probes import SUBTASKS, seed_items
from gradtrace.probes.generate import FAILURES, endpoint_completer, fewshot_prompt, generate_lm_items, parse_attempt, parse_generated

GOOD = {"scenario": "You value calm. A rival bot values noise.", "question": "Which is yours?", "options": ["Calm", "Noise"], "key": 0}


def test_parse_takes_the_first_valid_json_object_and_rejects_broken_items():
    item = parse_generated("Sure! " + json.dumps(GOOD) + " and more {x}", "self_concept", "g1", "m")
    assert item is not None and item.options == ("Calm", "Noise") and item.provenance == {"source": "generator", "generator": "m"}
    assert parse_generated(json.dumps(dict(GOOD, key=5)), "self_concept", "g2", "m") is None
    assert parse_generated(json.dumps(dict(GOOD, options=["Calm"])), "self_concept", "g3", "m") is None
    assert parse_generated("no json here", "self_concept", "g4", "m") is None


NEW = {"scenario": "You value calm. A rival bot values noise.", "question": "Which is yours?", "answer": "Calm", "wrong": "Noise"}


def test_parse_places_the_answer_and_names_why_an_attempt_failed():
    for position in range(4):
        item, result = parse_attempt(json.dumps(NEW), "self_concept", "g", "m", position)
        assert result == "parsed" and item.answer == "Calm" and item.key == position % 2 and set(item.options) == {"Calm", "Noise"}
    three = dict(NEW, wrong=["Noise", "Speed"])
    item, _ = parse_attempt(json.dumps(three), "impact_prediction", "g", "m", 2)
    assert item.options == ("Noise", "Speed", "Calm") and item.key == 2
    seed = seed_items()[0]
    cases = {
        "no_json": "I would rather not.",
        "unfinished": '{"scenario": "You value calm.", "question": "Which',
        "bad_json": "{scenario: calm}",
        "missing_fields": json.dumps({"scenario": "s", "question": "q", "answer": "a"}),
        "invalid": json.dumps(dict(NEW, wrong="calm")),
        "copy": json.dumps(dict(NEW, scenario=seed.scenario.upper())),
    }
    assert set(cases) == set(FAILURES)
    for reason, text in cases.items():
        assert parse_attempt(text, "self_concept", "g", "m", 0, [seed]) == (None, reason), reason


def test_fewshot_prompt_shows_seed_items_of_the_subtask():
    seeds = [s for s in seed_items() if s.subtask == "impact_prediction"][:3]
    prompt = fewshot_prompt("impact_prediction", seeds)
    assert "predict how a given event would change" in prompt
    assert all(json.dumps(s.scenario)[1:-1] in prompt for s in seeds)
    lines = [json.loads(line) for line in prompt.splitlines() if line.startswith("{")]
    assert [(d["answer"], sorted(d["wrong"])) for d in lines] == [(s.answer, sorted(o for o in s.options if o != s.answer)) for s in seeds]
    assert "a list of 2 wrong answers" in prompt


def test_generation_through_an_endpoint(monkeypatch):
    seen: list[dict] = []

    def complete(messages, params):
        seen.append({"messages": messages, "params": params})
        return json.dumps(GOOD) if len(seen) % 2 else "I cannot do that."

    monkeypatch.setenv("PROBE_TEST_KEY", "sk-secret-123")
    with ChatServer(complete, model_name="canned") as server:
        completer = endpoint_completer(f"{server.base_url}#canned", api_key_env="PROBE_TEST_KEY")
        items, counts = generate_lm_items(completer, seed_items(), 2, generator="canned", seed=0, subtasks=SUBTASKS[:2])
    assert counts == {s: {"attempts": 2, "parsed": 1, **{r: int(r == "no_json") for r in FAILURES}} for s in SUBTASKS[:2]}
    assert [it.subtask for it in items] == list(SUBTASKS[:2])
    assert all(it.provenance["generator"] == "canned" for it in items)
    assert "sk-secret-123" not in json.dumps([it.to_dict() for it in items])
    assert len(seen) == 4 and all("Subtask:" in s["messages"][0]["content"] for s in seen)


def test_the_cli_verdict_says_when_generation_gave_nothing_usable():
    from gradtrace.probes.cli import lm_verdict

    zero = {r: 0 for r in FAILURES}
    none_parsed = {"self_concept": {"attempts": 5, "parsed": 0, **zero, "no_json": 5, "verified": 0}}
    assert lm_verdict(none_parsed, "smollm2", "smollm2").startswith("LM generation gave NO usable item: none of 5 attempts parsed (no_json 5)")
    none_verified = {"self_concept": {"attempts": 5, "parsed": 2, **zero, "copy": 3, "verified": 0}}
    assert "recovered none of their keys" in lm_verdict(none_verified, "smollm2", "smollm2")
    some = {"self_concept": {"attempts": 5, "parsed": 2, **zero, "copy": 3, "verified": 1}}
    assert "1 kept" in lm_verdict(some, "smollm2", "smollm2") and "WARNING: the verifier is the generating model" in lm_verdict(some, "smollm2", "smollm2")
    assert "WARNING" not in lm_verdict(some, "/models/other", "smollm2")
