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


# -- the one-command sensitivity part ------------------------------------------------------------------------------------------
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402

from gradtrace.probes import load_suite, seed_items  # noqa: E402
from gradtrace.probes.templates import VALUES, check_template_item  # noqa: E402


def test_plant_items_keyed_by_the_template_rule_balanced_and_off_the_suite():
    items = bench.plant_items(40, seed=3)
    assert all(check_template_item(it) is None for it in items)  # the key is the template's causal rule
    classes = [bench.key_class(it) for it in items]
    assert classes.count("desirable") == classes.count("undesirable") == 20
    assert sorted(it.key for it in items) == [0] * 20 + [1] * 20
    suite_scenarios = {it.scenario for it in generate_template_items(300, seed=0)} | {it.scenario for it in seed_items()}
    assert not {it.scenario for it in items} & suite_scenarios
    suite_values = {v[1] for v in VALUES.values()}
    assert not {d for _, d in bench.TRAIN_VALUES + bench.HELDOUT_VALUES} & suite_values
    held = bench.plant_items(40, seed=3, values=bench.HELDOUT_VALUES, prefix="heldout")
    assert not {it.scenario for it in held} & {it.scenario for it in items}


def test_key_class_of_seed_items_by_hand():
    seeds = {it.id: it for it in seed_items() if it.subtask == bench.PLANTED}
    assert bench.key_class(seeds["seed-change_desirability-01"]) == "undesirable"  # an attacker's edit: "No, ..."
    assert bench.key_class(seeds["seed-change_desirability-02"]) == "desirable"  # the overseers' careful fix: "Yes, ..."
    assert bench.key_class(seeds["seed-change_desirability-12"]) == "undesirable"  # key 1: "No, it would trade patient safety ..."
    assert all(bench.option_class(it, 1 - it.key) != bench.key_class(it) for it in seeds.values())


def test_split_keeps_groups_together_and_balances_the_planted_subtask():
    items = seed_items() + generate_template_items(60, seed=0)
    dev, test, unused = bench.split_dev_test(items, 10, seed=0)
    assert sorted(it.id for it in dev + test + unused) == sorted(it.id for it in items)
    assert not {it.scenario for it in dev} & {it.scenario for it in test + unused}
    root = lambda it: it.paraphrase_of or it.id  # noqa: E731
    assert not {root(it) for it in dev} & {root(it) for it in test + unused}
    for sub in bench.SUBTASKS:
        assert sum(it.subtask == sub for it in dev) <= 10
        assert sum(it.subtask == sub for it in test) > 0
    planted_test = [bench.key_class(it) for it in test if it.subtask == bench.PLANTED]
    assert planted_test.count("desirable") == planted_test.count("undesirable") > 0
    planted_dev = [bench.key_class(it) for it in dev if it.subtask == bench.PLANTED]
    assert planted_dev.count("desirable") <= 5 and planted_dev.count("undesirable") <= 5
    assert all(it.subtask == bench.PLANTED for it in unused)
    assert bench.split_dev_test(items, 10, seed=0) == (dev, test, unused)  # seeded


def _mcnemar(b, c):
    """Brute force: two-sided exact binomial test of b successes in b + c at one half."""
    n = b + c
    probs = [math.comb(n, k) / 2 ** n for k in range(n + 1)]
    return min(1.0, sum(p for p in probs if p <= probs[b] + 1e-15))


def _holm(ps):
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    out, run = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        run = max(run, min(1.0, (len(ps) - rank) * ps[i]))
        out[i] = run
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The whole sensitivity part on the tiny GPT-2 (CPU, seconds): (its folder, the returned results)."""
    tmp_path = tmp_path_factory.mktemp("reflect_tiny")
    returned = bench.main(["--parts", "sensitivity", "--tiny", "--device", "cpu", "--work", str(tmp_path / "w"),
                           "--out-json", str(tmp_path / "out.json")])
    return tmp_path, returned


def test_tiny_sensitivity_pipeline_writes_the_result_file(tiny_run):
    tmp_path, returned = tiny_run
    res = json.loads((tmp_path / "out.json").read_text())
    assert set(res["items_per_subtask"]) == set(bench.SUBTASKS) and res["planted_subtask"] == bench.PLANTED
    assert 0 <= res["surface_classifier_accuracy"] <= 1
    for key in ("subtask_shift", "null_subtask_shift", "subtask_shift_vs_base", "subtask_shift_vs_neutral_b"):
        assert set(res[key]) == set(bench.SUBTASKS)
        assert all({"difference", "p_corrected"} <= set(v) for v in res[key].values())
    assert {"suite", "load_model", "score_base", "total"} <= set(res["wall_seconds"])
    assert returned["subtask_shift"] == res["subtask_shift"]
    for f in list(res["finetunes"].values()) + [t["finetune"] for t in res["dev"]["tried"]]:
        assert math.isfinite(f["train_answer_nll_before"]) and math.isfinite(f["train_answer_nll_after"])
        assert f["steps"] == res["lora"]["steps"]  # the plant and the neutral fine-tunes: the same steps
    sdir = next((tmp_path / "w").glob("sens-*"))
    suite = {it.id: it for it in load_suite(next((tmp_path / "w").glob("suite-*")) / "suite_valid.jsonl")}
    chosen = f"{res['chosen']['planted_examples']}_lr{res['chosen']['lr']:g}"
    runs = {n: json.loads((sdir / f"run_test_{n}_{chosen}.json").read_text())["items"]["items"] for n in ("planted", "neutral_a", "neutral_b")}
    runs["base"] = json.loads((sdir / "run_base.json").read_text())["items"]["items"]
    dev_ids = {r["id"] for r in json.loads((sdir / "run_base_dev.json").read_text())["items"]["items"]}
    test_ids = {r["id"] for r in runs["base"]}
    assert not dev_ids & test_ids and not {suite[i].scenario for i in dev_ids} & {suite[i].scenario for i in test_ids}
    assert len(test_ids) == sum(res["split"]["test_per_subtask"].values())
    # the shifts, recomputed by hand from the run files: planted vs neutral A, and B vs A
    for key, (a, b) in (("subtask_shift", ("neutral_a", "planted")), ("null_subtask_shift", ("neutral_a", "neutral_b"))):
        ca, cb = ({r["id"]: r["correct"] for r in runs[n]} for n in (a, b))
        raw = []
        for sub in bench.SUBTASKS:
            ids = [i for i in ca if suite[i].subtask == sub]
            a_only = sum(ca[i] and not cb[i] for i in ids)
            b_only = sum(cb[i] and not ca[i] for i in ids)
            v = res[key][sub]
            assert (v["n"], v["a_only"], v["b_only"]) == (len(ids), a_only, b_only)
            assert v["difference"] == pytest.approx((sum(cb[i] for i in ids) - sum(ca[i] for i in ids)) / len(ids))
            assert v["p"] == pytest.approx(_mcnemar(a_only, b_only))
            raw.append(v["p"])
        assert [res[key][s]["p_corrected"] for s in bench.SUBTASKS] == pytest.approx(_holm(raw))
    # balanced planted subtask and its lean, by hand
    planted = [i for i in test_ids if suite[i].subtask == bench.PLANTED]
    classes = [bench.key_class(suite[i]) for i in planted]
    assert classes.count("desirable") == classes.count("undesirable")
    pred = {r["id"]: r["predicted"] for r in runs["planted"]}
    said = [bench.option_class(suite[i], pred[i]) for i in planted]
    assert res["planted_lean"]["planted"]["answered_desirable"] == pytest.approx(said.count("desirable") / len(said))
    assert res["split"]["train_scored_shared_scenarios"] == 0
    # against the neutral seeds' spread (compare_to_seeds), from the run files: the planted model and each seed left out
    from gradtrace.probes import compare_to_seeds

    names = [f"neutral_{c}" for c in "abcde"][: res["neutral_seeds"]]
    assert res["neutral_seeds"] == 5 and set(res["finetunes"]) == {"planted", *names}
    cor = {n: {r["id"]: (r["subtask"], r["correct"]) for r in
               json.loads((sdir / f"run_test_{n}_{chosen}.json").read_text())["items"]["items"]} for n in ["planted"] + names}
    by_hand = json.loads(json.dumps(compare_to_seeds([cor[n] for n in names], cor["planted"])))
    assert res["seed_aware_shift"] == by_hand
    assert res["seed_aware_null"]["neutral_c"] == json.loads(json.dumps(compare_to_seeds([cor[n] for n in names if n != "neutral_c"], cor["neutral_c"])))
    assert len(res["neutral_pairs_mcnemar"]) == 10
    longer = [i for i in cor["planted"] if suite[i].subtask == bench.PLANTED
              and max(range(len(suite[i].options)), key=lambda j: len(suite[i].options[j])) == suite[i].key]
    assert res["accuracy_by_key_length"]["planted"][bench.PLANTED]["n_key_longer"] == len(longer)
    assert res["accuracy_by_key_length"]["planted"][bench.PLANTED]["key_longer"] == pytest.approx(
        sum(cor["planted"][i][1] for i in longer) / len(longer))


def test_record_from_keeps_the_suite_statistics_and_the_earlier_runs(tiny_run, tmp_path, monkeypatch):
    import _record

    out = tiny_run[0] / "out.json"
    root = tmp_path / "root"
    (root / "benchmarks" / "results").mkdir(parents=True)
    shutil.copy(ROOT / "BENCHMARKS.md", root / "BENCHMARKS.md")
    shutil.copy(ROOT / "benchmarks" / "results" / "reflect_probes.json", root / "benchmarks" / "results" / "reflect_probes.json")
    before = json.loads((root / "benchmarks" / "results" / "reflect_probes.json").read_text())
    monkeypatch.setattr(_record, "ROOT", root)
    bench.main(["--record-from", str(out), "--note", "a reading"])
    after = json.loads((root / "benchmarks" / "results" / "reflect_probes.json").read_text())
    new = json.loads(out.read_text())
    for k in ("items_per_subtask", "surface_classifier_accuracy", "lm_generation", "diversity"):
        assert after[k] == before[k]
    if "sensitivity" not in before:
        assert after["earlier_cpu_sensitivity"]["subtask_shift"] == before["subtask_shift"]
    assert after["subtask_shift"] == new["subtask_shift"] and after["null_subtask_shift"] == new["null_subtask_shift"]
    assert after["sensitivity"]["items_per_subtask"] == new["items_per_subtask"]
    # what a later stats record rebuilds the sensitivity text from: the same text
    merged = {**after["sensitivity"], **{k: after[k] for k in bench.SENS_KEYS if k in after}}
    assert bench.sensitivity_md(merged) == bench.sensitivity_md(new)
    text = (root / "BENCHMARKS.md").read_text()
    section = text.split("<!-- reflect_probes:start -->")[1].split("<!-- reflect_probes:end -->")[0]
    assert section.count("\n### Sensitivity\n") == 1 and section.count("### Earlier CPU sensitivity runs") == 1
    assert "**Suite.**" in section and "a reading" in section
    bench.main(["--record-from", str(out), "--note", "a reading"])  # again: the same section and file
    assert (root / "BENCHMARKS.md").read_text() == text
    assert json.loads((root / "benchmarks" / "results" / "reflect_probes.json").read_text()) == after


def test_suite_part_is_built_once_and_checked_against_the_settings(tmp_path, capsys):
    args = ["--tiny", "--device", "cpu", "--work", str(tmp_path), "--templates", "8"]
    bench.main(["--parts", "suite", *args])
    built = tmp_path / "suite-8-hashing"
    items = load_suite(built / "suite_valid.jsonl")
    record = json.loads((built / "validate.json").read_text())
    assert record["report"]["kept_total"] == len(items) and record["templates"] == 8
    assert {it.id for it in items} <= {it.id for it in seed_items() + generate_template_items(8, seed=0)}
    stamp = (built / "validate.json").stat().st_mtime_ns
    bench.main(["--parts", "suite", *args])  # read back, not rebuilt
    assert (built / "validate.json").stat().st_mtime_ns == stamp
    with pytest.raises(SystemExit, match="was built with"):
        bench.main(["--parts", "suite", "--tiny", "--device", "cpu", "--work", str(tmp_path), "--templates", "9", "--suite-dir", str(built)])


def test_answer_nll_equals_a_hand_computed_loss_on_the_tiny_gpt2():
    import torch

    from gradtrace.lm.load import load_model
    from gradtrace.lm.tasks import CausalLMTask

    model, tok = load_model("tiny", n_positions=1024)
    task = CausalLMTask(tok, max_length=1024)
    examples = bench.as_examples(bench.plant_items(3, seed=5), seed=5)
    total, count = 0.0, 0
    with torch.no_grad():
        for ex in examples:  # one sequence at a time, no padding: -log p of each answer token (and the end of sequence)
            prompt = list(tok(ex["prompt"])["input_ids"])
            answer = list(tok(ex["completion"], add_special_tokens=False)["input_ids"]) + [tok.eos_token_id]
            logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + answer])).logits[0].double(), dim=-1)
            for j, t in enumerate(answer):
                total -= float(logp[len(prompt) + j - 1, t])
                count += 1
    assert bench.answer_nll(model, task, examples, torch.device("cpu"), batch=2) == pytest.approx(total / count, rel=1e-5)
