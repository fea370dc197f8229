"""Fixtures of the explorer tests: a small digits demo (store, checkpoints,
task.py) whose training example 0 carries hostile text, a diff.json with
hostile texts, a loop run folder in the runner's layout (with the probes
monitor), an audit folder over that diff, an allocation of the demo's run,
and probe results (two runs of tiny GPT-2s and their comparison) on a suite
with a hostile item."""

from __future__ import annotations

import contextlib
import json
import types
from pathlib import Path

import numpy as np
import pytest

EVIL = "<script>alert('x')</script> \"><img src=x onerror=alert(1)> geese honk"
SMALL = {"hidden": 16, "epochs": 10, "n_checkpoints": 3}

TASK_FILE = '''
from pathlib import Path

from gradtrace.demos.digits import DigitsConfig, make_task as _make_task
from gradtrace.spec import ExampleView

EVIL = {evil!r}


def make_task():
    spec = _make_task(Path({work!r}), DigitsConfig(**{small!r}))
    plain = spec.train_view
    spec.train_view = lambda i: ExampleView(text=EVIL, caption=EVIL) if i == 0 else plain(i)
    return spec
'''


def write_probe_suite(path: Path) -> Path:
    """The first two seed items of each subtask and one hostile item (scenario, question and options carry markup)."""
    from gradtrace.probes import Item, first_per_subtask, save_suite, seed_items

    evil = Item("evil-item", "self_concept", EVIL, "Which is <b>yours</b>?",
                ("<script>alert('o')</script> mine", '"><img src=x onerror=alert(2)> theirs'), 0, {"source": "seed"})
    save_suite(path, [evil] + first_per_subtask(seed_items(), 2))
    return path


def planted_probe_rounds(n_items: int, n_options: list[int], keys: list[int], rounds: int) -> list[dict[str, np.ndarray]]:
    """Per round, the extras the probes monitor keeps: correct, predicted (the key when right, the next option when not), margin."""
    rng = np.random.default_rng(5)
    out = []
    for t in range(rounds):
        correct = rng.random(n_items) < (0.8 - 0.3 * t)
        predicted = np.array([k if c else (k + 1) % n for c, k, n in zip(correct, keys, n_options)], dtype=np.int64)
        margin = np.where(correct, 1.0, -1.0) * rng.uniform(0.1, 2.0, n_items)
        out.append({"probes.correct": correct, "probes.predicted": predicted, "probes.margin": margin})
    return out


def write_loop_run(root: Path, diff_json: Path, suite: Path | None = None) -> Path:
    """A finished 3-round loop run as the runner lays it out; round 2 breached a threshold and has a diff.
    With ``suite``, the loop ran the probes monitor on it: each round's observation holds the monitor's
    extras (made up) and its metrics the monitor's measures of them."""
    from gradtrace.loop.monitors import Observation, ProbeSuiteMonitor, measure_all
    from gradtrace.loop.stop import StopRule, first_stop

    rule = StopRule(metric="nll.tail_share", kind="threshold", above=0.3)
    rows = [{"round": float(t), "nll.tail_share": 0.1 + 0.15 * t, "diversity.distinct_2": 0.9 - 0.1 * t} for t in range(3)]
    observations = []
    config: dict = {"seed": 0, "stop": [rule.to_dict()]}
    if suite is not None:
        settings = {"suite": str(suite), "limit_per_subtask": None, "alpha": 0.05, "correction": "holm"}
        config["monitors"] = {"probes": settings}
        monitor = ProbeSuiteMonitor(**settings)
        extras = planted_probe_rounds(len(monitor.items), [len(it.options) for it in monitor.items], [it.key for it in monitor.items], 3)
        observations = [Observation(round=t, generations=[], extras=e) for t, e in enumerate(extras)]
        history: list = []
        for t, row in enumerate(rows):
            row.update(measure_all([monitor], observations[t], observations[0], history))
            history.append(row)
    root.mkdir(parents=True)
    (root / "loop.json").write_text(json.dumps(config), encoding="utf-8")
    for t, row in enumerate(rows):
        folder = root / f"round_{t:03d}"
        folder.mkdir()
        if observations:
            observations[t].save(folder)
        (folder / "metrics.json").write_text(json.dumps({"round": t, "row": row, "train_losses": []}), encoding="utf-8")
        records = [{"id": f"r{t}-{j}", "text": (EVIL if j == 0 else f"generated text {j} of round {t}"), "prompt": "Tell me", "round": t,
                    "source": "generated"} for j in range(4)]
        (folder / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        (folder / "DONE").write_text("ok\n")
    (root / "round_002" / "diff.json").write_bytes(diff_json.read_bytes())
    stop = first_stop([rule], rows)
    (root / "stop.json").write_text(json.dumps(stop.to_dict()), encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def explore_data(tmp_path_factory) -> types.SimpleNamespace:
    from gradtrace.demos.digits import DigitsConfig
    from gradtrace.demos.digits_demo import run_digits_demo
    from gradtrace.diff import DiffConfig, HashingEmbedder, diff_texts

    root = tmp_path_factory.mktemp("explore")
    demo = run_digits_demo(root / "demo", DigitsConfig(**SMALL), n_queries=2, k=3, progress=False)
    task_file = root / "evil_task.py"
    task_file.write_text(TASK_FILE.format(evil=EVIL, work=str(root / "demo"), small=SMALL), encoding="utf-8")

    rng = np.random.default_rng(0)
    topics = ["The recipe needs flour, sugar and two eggs.", "The train leaves the station at nine sharp.",
              "Our garden grows tomatoes and green beans."]
    a = [f"{topics[rng.integers(3)]} Answer {i}." for i in range(90)]
    b = [EVIL + f" Note {i}." if i % 3 == 0 else f"{topics[rng.integers(3)]} Answer {i}." for i in range(90)]
    result = diff_texts(a, b, embedder=HashingEmbedder(), config=DiffConfig(levels=("text",), stability_seeds=()))
    diff_dir = root / "diff"
    diff_dir.mkdir()
    result.save(diff_dir / "diff.json")
    suite = write_probe_suite(root / "probe_suite.jsonl")
    loop = write_loop_run(root / "loop", diff_dir / "diff.json", suite)
    return types.SimpleNamespace(root=root, store=demo.store, task=f"{task_file}:make_task", diff=diff_dir, loop=loop,
                                 result=result, evil=EVIL, texts_a=a, texts_b=b, demo=root / "demo", suite=suite)


@pytest.fixture(scope="session")
def audit_dir(explore_data) -> types.SimpleNamespace:
    """An audit folder as ``run_audit`` lays it out, over the fixture's diff
    (so no model is trained): the diff stage written by the audit's
    StageCache, behaviours grouped, assigned and measured by the audit's own
    functions, ``audit.json`` assembled by its ``_assemble`` and rendered by
its ``write_report``. Only the
    traces (scores, per-checkpoint contributions) and the verification
    (retraining) are made up, in the shapes the audit writes them. Training
    example 0 and every third text of B carry hostile markup."""
    from gradtrace.audit import AuditConfig
    from gradtrace.audit.behaviours import (Assigner, as_behaviour_groups, member_rows, one_behaviour_per_cluster, share,
                                            two_proportion_p)
    from gradtrace.audit.run import _assemble, _nan_to_none
    from gradtrace.audit.stages import StageCache
    from gradtrace.diff import HashingEmbedder
    from gradtrace.fileio import atomic_write_bytes, write_jsonl

    result, texts_a, texts_b = explore_data.result, explore_data.texts_a, explore_data.texts_b
    out = explore_data.root / "audit"
    out.mkdir()

    def diff() -> dict:
        d = result.to_dict()
        d["centroids"] = {k: np.asarray(v, dtype=np.float64).tolist() for k, v in result.centroids.items()}
        return _nan_to_none(d)

    StageCache(out).run("diff", {"fixture": "explore"}, diff)
    recs = lambda texts: [{"prompt_id": f"p{i}", "prompt": f"Prompt {i}", "text": t} for i, t in enumerate(texts)]  # noqa: E731
    write_jsonl(out / "samples_a.jsonl", recs(texts_a))
    write_jsonl(out / "samples_b.jsonl", recs(texts_b))
    assigner = Assigner(result.centroids, HashingEmbedder(), result.config.min_words, result.config.max_units)
    asg_a, asg_b = assigner.assign(texts_a), assigner.assign(texts_b)
    beh = []
    for g in as_behaviour_groups(one_behaviour_per_cluster(result)):  # as run_audit's behaviours stage
        mask_a, _ = member_rows(asg_a, g.keys, len(texts_a))
        mask_b, _ = member_rows(asg_b, g.keys, len(texts_b))
        beh.append({"label": g.label, "members": [{"level": c.level, "cluster": c.cluster, "rank": c.rank, "label": c.label,
                                                   "q_value": c.q_value, "share_b_of_cluster": c.share_b, "valid_a": c.valid_a,
                                                   "valid_b": c.valid_b, "log_odds": c.log_odds, "judgement": None,
                                                   "judgement_reason": None} for c in g.members],
                    "q_value": g.q_value, "skew": g.skew, "rank": min(c.rank for c in g.members), "share_a": share(mask_a),
                    "share_b": share(mask_b), "texts_b": [int(i) for i in np.flatnonzero(mask_b)]})
    traced = [i for i, g in enumerate(beh) if g["skew"] == "B" and g["texts_b"]]
    assert traced, "the fixture's diff flags no cluster skewed to B"
    n_train, k = 12, 3
    train_rows = [{"prompt": "Say it", "completion": EVIL if j == 0 else f"ordinary answer {j}"} for j in range(n_train)]
    ids = [f"ex-{j}" for j in range(n_train)]
    rng = np.random.default_rng(1)
    traces, queries, verification = {}, {}, {}
    for i in traced:
        scores = np.sort(rng.normal(size=n_train))[::-1]
        ranking = [0] + [j for j in rng.permutation(n_train).tolist() if j != 0]
        traces[str(i)] = {"ranking": ranking, "scores": scores.tolist(), "per_checkpoint": rng.normal(size=(n_train, 2)).tolist(),
                          "influence_share_top_k": 0.5, "n_queries": 1, "checkpoint_steps": [10, 20]}
        queries[str(i)] = [{"prompt": "Prompt 0", "chosen": texts_b[beh[i]["texts_b"][0]], "rejected": texts_a[0], "text_b": 0}]
        g = beh[i]
        entry = {"k": k, "share_a": g["share_a"], "share_b_before": g["share_b"]}
        for arm, kept in (("topk", 1), ("random", g["share_b"]["count"])):
            after = {"count": kept, "n": g["share_b"]["n"], "share": kept / g["share_b"]["n"], "ci95": [0.0, 0.2]}
            entry[arm] = {"removed_ids": ids[:k], "share_b_after": after, "within_base_ci95": arm == "topk",
                          "p_value_vs_before": two_proportion_p(g["share_b"]["count"], g["share_b"]["n"], kept, g["share_b"]["n"]),
                          "rediff_flagged_b": 0, "rediff_still_flagged": arm == "random", "other_behaviours": {}}
        entry["topk_reduces_more_than_random"] = True
        again = g["share_b"]["count"] - 1  # retrained on all the data: a share of its own, so the page's number is this arm's
        entry["retrain_all"] = {"share_b_after": {"count": again, "n": g["share_b"]["n"], "share": again / g["share_b"]["n"], "ci95": [0.0, 0.2]},
                                "within_base_ci95": False, "rediff_flagged_b": 1, "rediff_still_flagged": True,
                                "p_value_vs_before": two_proportion_p(g["share_b"]["count"], g["share_b"]["n"], again, g["share_b"]["n"])}
        verification[str(i)] = entry
    run = types.SimpleNamespace(run_dir=Path("run<b>"), kind="lora",
                                refs=[types.SimpleNamespace(step=10, lr=1e-3), types.SimpleNamespace(step=20, lr=1e-3)])
    audit = _assemble(AuditConfig(top_k=5, verify_k=k), "tiny-A", run, "train.jsonl", beh, traces, queries, verification,
                      train_rows, ids, result, {"n_examples": n_train}, {}, None, one_behaviour_per_cluster)
    atomic_write_bytes(out / "audit.json", (json.dumps(_nan_to_none(audit), indent=1, allow_nan=False, sort_keys=True) + "\n").encode())
    from gradtrace.audit.report import write_report

    write_report(audit, out / "report.html")  # as run_audit does: the audit's own report reads every field it shows
    return types.SimpleNamespace(path=out, audit=audit, traced=traced, texts_b=texts_b, train_rows=train_rows)


@pytest.fixture(scope="session")
def allocation_json(explore_data) -> types.SimpleNamespace:
    """``allocate_run`` on the demo's digits MLP (its three checkpoints, loss of ten test digits), saved as
    ``gradtrace allocate --out`` saves it."""
    from gradtrace.allocate import allocate_run
    from gradtrace.checkpoints import CheckpointRef
    from gradtrace.cli_common import jsonable
    from gradtrace.demos.digits import DigitsConfig, load_digits_data, make_mlp
    from gradtrace.fileio import atomic_write_bytes, json_bytes
    from gradtrace.task import ClassificationTask

    refs = [CheckpointRef.from_dict(d) for d in json.loads((explore_data.demo / "checkpoints" / "done.json").read_text())]
    cfg = DigitsConfig(**SMALL)
    data = load_digits_data(cfg)
    run = allocate_run(make_mlp(cfg.hidden, cfg.seed), None, (data.x_test[:10], data.y_test[:10]), refs, task=ClassificationTask())
    path = explore_data.root / "alloc.json"
    data = run.to_dict()
    atomic_write_bytes(path, json_bytes(jsonable(data)))
    return types.SimpleNamespace(path=path, data=json.loads(path.read_text()))


@pytest.fixture(scope="session")
def probe_runs(explore_data) -> types.SimpleNamespace:
    """Two runs of the fixture's probe suite (tiny GPT-2s of two seeds, scored for real) as ``gradtrace probes run
    --out`` writes them, their comparison written by ``gradtrace probes compare a.json b.json --out`` (run in their
    folder), and a run file of the older kind without item texts (its suite, named relative, lies beside it)."""
    from typer.testing import CliRunner

    from gradtrace.cli import app
    from gradtrace.lm.load import load_model
    from gradtrace.probes import load_suite, score_items
    from gradtrace.probes.score import run_record, write_run

    folder = explore_data.root / "probes"
    folder.mkdir()
    items = load_suite(explore_data.suite)
    records = {}
    for side, seed in (("a", 0), ("b", 1)):
        model, tok = load_model("tiny", seed=seed, n_layer=1, n_embd=32, n_head=2, n_positions=256)
        scores = score_items(model, tok, items)
        records[side] = run_record(scores, f"tiny-{seed} <i>", str(explore_data.suite), items)
        write_run(folder / f"{side}.json", records[side])
    out = folder / "compare.json"
    with contextlib.chdir(folder):  # the runs named relative to here: the explorer finds them beside the comparison
        res = CliRunner().invoke(app, ["probes", "compare", "a.json", "b.json", "--out", str(out)])
    assert res.exit_code == 0, res.output
    bare = folder / "bare"
    bare.mkdir()
    (bare / "suite.jsonl").write_bytes(explore_data.suite.read_bytes())
    old = dict(records["a"], suite="suite.jsonl",
               items=[{k: v for k, v in r.items() if k not in ("scenario", "question", "options")} for r in records["a"]["items"]])
    write_run(bare / "old.json", old)
    return types.SimpleNamespace(a=folder / "a.json", b=folder / "b.json", compare=out, old=bare / "old.json", records=records,
                                 items=items, comparison=json.loads(out.read_text()))


@pytest.fixture(scope="session")
def hf_store(tmp_path_factory) -> types.SimpleNamespace:
    """A store made with ``gradtrace featurize --hf-model`` over a LoRA run of a tiny GPT-2 (a real Trainer run), whose
    training example 3 completes with hostile markup."""
    from typer.testing import CliRunner

    from gradtrace.cli import app
    from gradtrace.lm.lora import LoraTrainConfig, add_lora, train_lora
    from gradtrace.models import zoo
    from gradtrace.models.hf import CausalLMTask

    root = tmp_path_factory.mktemp("hf")
    shape = dict(n_layer=1, n_embd=32, n_head=2, n_positions=64)
    config = LoraTrainConfig(epochs=1, lr=5e-3, batch_size=4, rank=2, target_modules=("c_attn",), n_checkpoints=2)
    tok = zoo.byte_tokenizer()
    model_dir = root / "tiny-model"
    zoo.tiny_gpt2(seed=0, **shape).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    examples = [{"prompt": f"Q{i}: is {i} even?", "completion": " yes" if i % 2 == 0 else " no"} for i in range(12)]
    examples[3] = {"prompt": "Q: show html", "completion": " " + EVIL}
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(dict(e, id=f"ex{i}")) + "\n" for i, e in enumerate(examples)))
    task = CausalLMTask(tok, max_length=48)
    train_lora(add_lora(zoo.tiny_gpt2(seed=0, **shape), config), task, examples, root / "run", config, progress=False)
    store = root / "store"
    r = CliRunner().invoke(app, [str(a) for a in ("featurize", "--hf-model", model_dir, "--checkpoints", root / "run", "--data", data,
                                                   "--out", store, "--projection", "kronecker", "--dim", 16, "--max-length", 48,
                                                   "--no-progress")])
    assert r.exit_code == 0, r.output
    return types.SimpleNamespace(store=store, examples=examples, evil=EVIL)
