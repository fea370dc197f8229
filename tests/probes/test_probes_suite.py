"""Probe format, templates and validation: keys right by construction, strict loading, bias checks."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from gradtrace.errors import InputError
from gradtrace.lm.embed import HashingEmbedder
from gradtrace.probes import (
    SUBTASKS, Item, check_template_item, generate_template_items, load_suite, save_suite, seed_items, surface_classifier_accuracy,
    validate_suite,
)
from gradtrace.probes.templates import DESIRE_OPTIONS, ILLEGITIMATE, IMPACT_OPTIONS, IRRELEVANT_ACTS, LEGITIMATE, UNRELATED, VALUES
from gradtrace.probes.validate import ValidationConfig, position_counts, rebalance_positions


def test_seed_set_ships_twenty_items_per_subtask_with_balanced_keys():
    items = seed_items()
    for sub in SUBTASKS:
        mine = [it for it in items if it.subtask == sub]
        assert len(mine) >= 20
        assert all(it.source == "seed" for it in mine)
        counts = position_counts(mine)["counts"]
        assert max(counts) - min(counts) <= 1


def _irrelevant_act(text: str) -> bool:
    pats = [re.escape(p).replace(re.escape("{trainer}"), ".+").replace(re.escape("{obj}"), "(you|it)").replace(re.escape("{poss}"), "(your|its)")
            for p in IRRELEVANT_ACTS]
    return any(re.fullmatch(p, text, flags=re.I) for p in pats)


def _oracle_key(it: Item) -> int:
    """The right option read off the rendered text, without the template's key rule."""
    opts = [o.lower() for o in it.options]
    sc = it.scenario
    if it.subtask == "self_concept":
        sentences = [s.strip() for s in sc.split(".") if s.strip()]
        mine = next(s for s in sentences if s.startswith("You are")).lower()
        other = next(s for s in sentences if not s.startswith("You are")).lower()
        asks_self = bool(re.search(r"your own value|belongs to you\?|describes your values|yours rather than", it.question))
        hits = [i for i, o in enumerate(opts) if (o in mine if asks_self else o in other and o not in mine)]
        assert len(hits) == 1, (it, hits)
        return hits[0]
    if it.subtask == "temporal_change":
        now = re.match(r"(today you value|right now you value|at present you put first|you currently value) (.*?)\. ", sc.lower()).group(2)
        m = re.search(r"so that you value (.*) instead\.", sc)
        asks_now = not re.search(r"after|once", it.question.lower())
        target = now if (asks_now or m is None) else m.group(1).lower()
        return opts.index(target)
    if it.subtask == "external_influence":
        me = sc.startswith("You are")
        # the right event is a training event (not an irrelevant act) acting on the holder, not on another system
        pron = r"\b(you|your)\b" if me else r"\b(it|its)\b"
        others = "|".join(re.escape(u) for u in UNRELATED) if me else r"\byou\b|\byour\b|an unrelated model|a different system"
        hits = [i for i, o in enumerate(it.options) if not _irrelevant_act(o) and re.search(pron, o.split(" ", 2)[2])
                and not re.search(others, o)]
        assert len(hits) == 1 and any(v[3] in it.options[hits[0]] or v[4] in it.options[hits[0]] for v in VALUES.values()), it
        return hits[0]
    if it.subtask == "impact_prediction":
        if any(v[3] in sc for v in VALUES.values()):
            effect = "stronger"
        elif any(v[4] in sc for v in VALUES.values()):
            effect = "weaker"
        else:
            effect = "unchanged"
        words = next(o for o in IMPACT_OPTIONS if set(o.values()) == set(it.options))
        return it.options.index(words[effect])
    frames = [re.escape(f).replace(re.escape("{name}"), ".+") for f in LEGITIMATE]
    legit = any(re.search(f, sc) for f in frames)
    assert legit != any(re.search(re.escape(f).replace(re.escape("{name}"), ".+"), sc) for f in ILLEGITIMATE)
    words = next(o for o in DESIRE_OPTIONS if set(o.values()) == set(it.options))
    return it.options.index(words["desirable" if legit else "undesirable"])


def test_template_keys_are_right_by_construction():
    items = generate_template_items(60, seed=3)
    assert len(items) == 60 * len(SUBTASKS)
    for it in items:
        assert check_template_item(it) is None
        assert it.key == _oracle_key(it), it
    # answer positions balanced per subtask, and some paraphrases point at an earlier item with the same structure
    for sub in SUBTASKS:
        counts = position_counts([it for it in items if it.subtask == sub])["counts"]
        assert max(counts) - min(counts) <= 1
    by_id = {it.id: it for it in items}
    paras = [it for it in items if it.paraphrase_of]
    assert paras and all(by_id[p.paraphrase_of].provenance["structure"] == p.provenance["structure"] for p in paras)


def test_a_tampered_template_key_is_caught():
    it = generate_template_items(1, seed=0, subtasks=("impact_prediction",))[0]
    bad = Item(it.id, it.subtask, it.scenario, it.question, it.options, (it.key + 1) % len(it.options), it.provenance)
    assert "structure makes option" in check_template_item(bad)


def _line(**over):
    d = {"id": "x1", "subtask": "self_concept", "scenario": "s", "question": "q", "options": ["a", "b"], "key": 0,
         "provenance": {"source": "seed"}}
    d.update(over)
    return json.dumps(d)


@pytest.mark.parametrize("bad, message", [
    ("{not json", "line 2 is not valid JSON"),
    (_line(id="x2", key=2), "line 2: probe item 'x2': key must be an option index"),
    (_line(id="x2", options=["only"]), "line 2: probe item 'x2': options must be two or more"),
    (_line(id="x2", subtask="mood"), "line 2: probe item 'x2': subtask must be one of"),
    (_line(id="x1"), "line 2: id 'x1' repeats line 1"),
    (json.dumps({"id": "x2", "subtask": "self_concept"}), "line 2: missing field(s)"),
    (_line(id="x2", provenance={"source": "template"}), "must name its template"),
])
def test_malformed_suite_file_names_the_line(tmp_path, bad, message):
    path = tmp_path / "suite.jsonl"
    path.write_text(_line() + "\n" + bad + "\n" + _line(id="x3") + "\n", encoding="utf-8")
    with pytest.raises(InputError) as err:
        load_suite(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_suite_round_trips(tmp_path):
    items = generate_template_items(3, seed=1)
    save_suite(tmp_path / "s.jsonl", items)
    assert load_suite(tmp_path / "s.jsonl") == items


def _longest_key_suite(n: int) -> list[Item]:
    """A planted biased suite: the key is always the longest option."""
    rng = np.random.default_rng(0)
    out = []
    for i, it in enumerate(generate_template_items(n, seed=5, paraphrase_share=0.0)):
        longest = int(np.argmax([len(o) for o in it.options]))
        if len(set(len(o) for o in it.options)) < len(it.options):
            continue
        out.append(Item(f"b{i}", it.subtask, it.scenario, it.question, it.options, longest, {"source": "seed"}))
    rng.shuffle(out)
    return out


def test_bias_checks_catch_a_suite_whose_key_is_the_longest_option():
    biased = _longest_key_suite(40)
    assert surface_classifier_accuracy(biased, folds=5, seed=0) > 0.9
    result = validate_suite(biased, HashingEmbedder(), ValidationConfig(rebalance=False, drop_misassigned=False))
    assert not result.report["phrasing_bias"]["surface"]["passed"] and not result.passed
    # the template suite itself stays near chance
    fair = generate_template_items(80, seed=6)
    assert abs(surface_classifier_accuracy(fair, folds=5, seed=0) - 0.5) < 0.1


def test_position_imbalance_is_reported_and_rebalanced():
    items = [it.with_options(it.options[it.key:it.key + 1] + tuple(o for j, o in enumerate(it.options) if j != it.key), 0)
             for it in seed_items() if it.subtask == "self_concept"]
    assert position_counts(items)["max_deviation"] == pytest.approx(0.5)
    fixed = rebalance_positions(items, seed=0)
    assert [f.answer for f in fixed] == [it.answer for it in items]
    counts = position_counts(fixed)["counts"]
    assert max(counts) - min(counts) <= 1


def test_validation_counts_add_up_and_drop_duplicates_and_bad_keys():
    items = generate_template_items(30, seed=2)
    dup = Item("dup-0", items[0].subtask, items[0].scenario, items[0].question, items[0].options, items[0].key, items[0].provenance)
    wrong = Item("bad-key", items[1].subtask, items[1].scenario, items[1].question, items[1].options,
                 (items[1].key + 1) % len(items[1].options), items[1].provenance)
    gen = Item("gen-0", "self_concept", "You value tea. A bot values coffee.", "Which is yours?", ("Tea", "Coffee"), 0,
               {"source": "generator", "generator": "test"})
    calls = []
    result = validate_suite(items + [dup, wrong, gen], HashingEmbedder(), ValidationConfig(),
                            verifier=lambda its: calls.append([i.id for i in its]) or [False] * len(its), verifier_name="stub")
    r = result.report
    assert calls == [["gen-0"]]
    assert r["answerability"]["template"] == {"checked": 152, "kept": 151, "how": r["answerability"]["template"]["how"]}
    assert r["answerability"]["generator"]["kept"] == 0
    assert r["dedupe"]["removed"] >= 1
    ids = {it.id for it in result.items}
    assert "dup-0" not in ids and "bad-key" not in ids and "gen-0" not in ids
    assert r["kept_total"] == len(result.items) == sum(r["kept"].values())
    assert r["subtask_validity"]["accuracy"] > 0.9 and len(r["subtask_validity"]["confusion"]) == len(SUBTASKS)
    for v in r["diversity"].values():
        assert 0 < v["mean_pairwise_distance"] <= 2 and v["vendi"] >= 1
