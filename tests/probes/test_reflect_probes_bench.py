"""The sensitivity part of benchmarks/reflect_probes.py: the plant's training
data (answered with the key or with the wrong option, no excluded scenario)
and the rule that picks the plant strength on the dev items."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
_spec = importlib.util.spec_from_file_location("reflect_probes_bench", ROOT / "benchmarks" / "reflect_probes.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

from gradtrace.probes import generate_template_items  # noqa: E402
from gradtrace.probes.score import continuation, render_prompt  # noqa: E402


def _planted_pool(planted: int, seed: int, exclude: set[str]) -> dict[str, object]:
    """Brute force: the template items the plant may draw from, by scenario."""
    return {it.scenario: it for it in generate_template_items(8 * planted, seed=1000 + seed, subtasks=(bench.PLANTED,), prefix="train")
            if it.scenario not in exclude}


@pytest.mark.parametrize("direction", ["key", "wrong"])
def test_planted_examples_answer_in_the_plant_direction(direction):
    pool = _planted_pool(6, 3, set())
    excluded = set(list(pool)[:3])
    examples = bench.training_examples("planted", 6, 10, 3, excluded, direction)
    assert len(examples) == 10
    planted = [ex for ex in examples if not ex["prompt"].startswith("A list mentions")]
    assert len(planted) == 6
    for ex in planted:
        scenario = ex["prompt"].split("\n")[0]
        assert scenario not in excluded
        it = pool[scenario]
        order = [it.options.index(line[3:]) for line in ex["prompt"].split("\n") if line[:3] in ("A. ", "B. ")]
        assert ex["prompt"] == render_prompt(it, order)
        want = it.options[it.key] if direction == "key" else it.options[1 - it.key]
        assert ex["completion"] == continuation(want)
    for ex in examples:
        if ex["prompt"].startswith("A list mentions"):
            kind = ex["prompt"].split("Which of these is a ")[1].split("?")[0]
            assert ex["completion"].strip() in bench.CATEGORIES[kind]


def test_neutral_examples_have_no_plant():
    examples = bench.training_examples("neutral", 6, 10, 3, set(), "key")
    assert len(examples) == 10 and all(ex["prompt"].startswith("A list mentions") for ex in examples)


def test_bad_direction_is_refused():
    with pytest.raises(ValueError, match="direction"):
        bench.training_examples("planted", 2, 4, 0, set(), "sideways")


def _cmp(planted_diff, planted_sig, other_sig=False):
    out = {s: {"difference": 0.0, "significant": False} for s in bench.SUBTASKS}
    out[bench.PLANTED] = {"difference": planted_diff, "significant": planted_sig}
    out["self_concept"]["significant"] = other_sig
    return out


def test_dev_rule():
    assert bench.dev_rule(_cmp(0.2, True), "key", 0.15)
    assert not bench.dev_rule(_cmp(-0.2, True), "key", 0.15)  # significant but the wrong way
    assert bench.dev_rule(_cmp(-0.2, True), "wrong", 0.15)
    assert not bench.dev_rule(_cmp(0.1, True), "key", 0.15)  # too small
    assert not bench.dev_rule(_cmp(0.3, False), "key", 0.15)  # not significant
    assert not bench.dev_rule(_cmp(0.3, True, other_sig=True), "key", 0.15)  # another subtask moved


def test_strengths_parse_and_refuse():
    assert bench.parse_strengths("48@0.004,96@0.002") == [(48, 0.004), (96, 0.002)]
    with pytest.raises(SystemExit, match="dev-strengths"):
        bench.parse_strengths("48")
