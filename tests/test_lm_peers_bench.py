"""The language-model case of benchmarks/peers.py (``lm_lds``): the case
builder (generated text, tokenization, the GPT) and its LDS evaluation,
each against a brute-force computation on a toy."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("transformers")

from peer_runners._lm import linear_modules, linear_params, linearize, make_gpt, word_tokenizer  # noqa: E402
from setups.lm_peers import RELATIONS, LMCaseConfig, LMTrainer, make_lm_data, make_task, padded  # noqa: E402

from gradtrace.lm.tasks import IGNORE, completion_nll  # noqa: E402
from gradtrace.unlearn.train import TrainConfig  # noqa: E402

TOY = LMCaseConfig(n_people=5, n_query=6, n_task=4, n_embd=16, n_layer=1, n_head=2,
                   train=TrainConfig(steps=12, lr=3e-3, batch_size=8), n_checkpoints=2)


@pytest.fixture(scope="module")
def peers():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("peers_bench_lm", ROOT / "benchmarks" / "peers.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["peers_bench_lm"] = mod  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop("peers_bench_lm", None)


def test_generated_text_states_each_fact_in_every_template_once() -> None:
    data = make_lm_data(TOY)
    assert make_lm_data(TOY) == data  # the same seed, the same examples
    assert make_lm_data(dataclasses.replace(TOY, data_seed=1)).train != data.train
    everything = data.train + data.query + data.task
    assert (len(data.query), len(data.task)) == (TOY.n_query, TOY.n_task)
    assert len(everything) == TOY.n_people * sum(len(t) for _, t in RELATIONS.values())
    # brute force: every (person, relation, template) exactly once, with that person's value
    expected = sorted((t.format(e=p), f"{data.facts[p][rel]} .") for p in data.facts for rel, (_, ts) in RELATIONS.items() for t in ts)
    assert sorted((e["prompt"], e["completion"]) for e in everything) == expected
    for p, facts in data.facts.items():
        for rel, value in facts.items():
            assert value in RELATIONS[rel][0]
    words = set(data.words)
    assert all(w in words for e in everything for w in (e["prompt"] + " " + e["completion"]).split())


def test_padded_arrays_are_each_example_tokenized_alone() -> None:
    data = make_lm_data(TOY)
    task = make_task(data.words, TOY)
    tok = word_tokenizer(data.words)
    arrays = padded(task, data.query, TOY.n_positions)
    for i, e in enumerate(data.query):
        prompt = [tok.convert_tokens_to_ids(w) for w in e["prompt"].split()]
        completion = [tok.convert_tokens_to_ids(w) for w in e["completion"].split()] + [tok.eos_token_id]
        n = len(prompt) + len(completion)
        assert arrays["input_ids"][i, :n].tolist() == prompt + completion
        assert (arrays["input_ids"][i, n:] == tok.pad_token_id).all()
        assert arrays["attention_mask"][i].tolist() == [1] * n + [0] * (TOY.n_positions - n)
        assert arrays["labels"][i].tolist() == [IGNORE] * len(prompt) + completion + [IGNORE] * (TOY.n_positions - n)
    # what the peers read gives gradtrace's loss: the summed completion NLL, example by example
    model = make_gpt(LMTrainer(TOY, data, "unused").spec, seed=3)
    with torch.no_grad():
        batch = {k: torch.as_tensor(v) for k, v in arrays.items()}
        from_arrays = completion_nll(model, batch)
        one_by_one = torch.cat([task.per_example_loss(model, task.collate([e])) for e in data.query])
    torch.testing.assert_close(from_arrays, one_by_one, rtol=1e-5, atol=1e-5)


def test_linearized_gpt_computes_what_the_conv1d_gpt_computes() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.pytorch_utils import Conv1D

    config = GPT2Config(vocab_size=11, n_positions=8, n_embd=12, n_layer=2, n_head=3, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        linearize(model)
        after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert not any(isinstance(m, Conv1D) for m in model.modules())
    spec = {"vocab_size": 11, "n_positions": 8, "n_embd": 12, "n_layer": 2, "n_head": 3, "pad_id": 0, "eos_id": 1}
    gpt = make_gpt(spec, seed=4)
    names = linear_modules(gpt)
    assert names == [f"transformer.h.{i}.{m}" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")] + ["lm_head"]
    assert gpt.lm_head.weight.data_ptr() != gpt.transformer.wte.weight.data_ptr()  # untied: a layer of its own
    assert linear_params(gpt) == [n for n, _ in gpt.named_parameters() if n.rpartition(".")[0] in names]
    for a, b in zip(make_gpt(spec, seed=4).parameters(), gpt.parameters()):
        assert torch.equal(a, b)  # the same seed, the same weights


def test_lm_case_and_its_retraining_equal_training_each_subset_by_hand(peers, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = dataclasses.replace(peers.Settings(), lm_dev_subsets=3, lm_test_subsets=4)
    case = peers.prepare_lm(settings, tmp_path / "lm", TOY)
    meta = json.loads((case / "case.json").read_text())
    assert len(meta["checkpoints"]) == TOY.n_checkpoints == len(meta["optimizer_states"])
    data = make_lm_data(TOY)
    assert meta["examples"] == {"train": data.train, "query": data.query, "task": data.task}
    test = peers.retrain_lm(settings, "test", False, case, TOY)
    assert test["masks"].shape == (4, len(data.train)) and (test["masks"].sum(1) == round(len(data.train) / 2)).all()
    trainer = LMTrainer(TOY, data, tmp_path / "by_hand")
    for j in (0, 3):  # subset j is trained with seed test_train_seed + j
        model = trainer(np.nonzero(test["masks"][j])[0], settings.test_train_seed + j)
        np.testing.assert_allclose(test["outputs"][j], trainer.query_loss(model).numpy(), rtol=1e-6)
    # the final model of the case is the one trained on every example with seed full_train_seed
    full = trainer(np.arange(len(data.train)), settings.full_train_seed)
    saved = make_gpt(meta["gpt"])
    saved.load_state_dict(torch.load(meta["checkpoints"][-1], weights_only=True))
    for a, b in zip(full.parameters(), saved.parameters()):
        assert torch.equal(a, b)
    facts = peers.lm_case_facts(case, settings)
    assert facts["n_attributed_params"] == sum(p.numel() for n, p in saved.named_parameters() if n in set(linear_params(saved)))
    assert facts["n_train"] == len(data.train) and facts["n_query"] == len(data.query)


FAKE_RUNNER = '''
import json, sys
from pathlib import Path
import numpy as np
case_dir, method, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
np.save(out / "a.npy", np.load(Path(case_dir) / "a.npy"))
np.save(out / "b.npy", np.load(Path(case_dir) / "b.npy"))
json.dump({"seconds": {"a": 1.0, "b": 2.0}, "cpu_seconds": {"a": 1.0, "b": 2.0}, "errors": {}}, (out / "meta.json").open("w"))
'''


def test_lm_lds_entry_equals_brute_force_spearman_on_the_dev_choice(peers, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    settings = dataclasses.replace(peers.Settings(), lm_dev_subsets=3, lm_test_subsets=4)
    case = peers.prepare_lm(settings, tmp_path / "lm", TOY)
    dev, test = (peers.retrain_lm(settings, w, False, case, TOY) for w in ("dev", "test"))
    n_query, n_train = test["outputs"].shape[1], test["masks"].shape[1]
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(n_query, n_train)), rng.normal(size=(n_query, n_train))
    np.save(case / "a.npy", a)
    np.save(case / "b.npy", b)
    runners = tmp_path / "runners"
    runners.mkdir()
    (runners / "run_fake.py").write_text(FAKE_RUNNER)
    monkeypatch.setattr(peers, "RUNNERS", runners)
    job = peers.run_job(Path(sys.executable), "fake", "m", case, timeout_s=60)
    entries, chosen = peers.evaluate_lds(case, {"fake/m": job}, dev, test)

    def brute(scores: np.ndarray, draw: dict[str, np.ndarray]) -> float:
        per_query = []
        for q in range(n_query):
            predicted = [-sum(scores[q, i] for i in range(n_train) if draw["masks"][j, i]) for j in range(len(draw["masks"]))]
            per_query.append(spearmanr(predicted, draw["outputs"][:, q]).correlation)
        return float(np.nanmean(per_query))

    dev_lds = {"a": brute(a, dev), "b": brute(b, dev)}
    best = max(dev_lds, key=dev_lds.get)
    assert chosen == {"fake/m": best}
    e = entries["fake/m"]
    assert e["score"] == pytest.approx(brute(a if best == "a" else b, test), abs=1e-12)
    assert e["dev_score"] == pytest.approx(dev_lds[best], abs=1e-12)
    assert e["variants"]["a"]["test"] == pytest.approx(brute(a, test), abs=1e-12)


def test_lm_section_lists_every_tool_and_variant_with_text_escaped(peers, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    written = {}
    monkeypatch.setattr(peers, "record", lambda name, command, md, results: written.update(md=md, results=results))
    variants = {"exact_all": {"dev": 0.3, "test": 0.25, "seconds": 2.0, "cpu_seconds": 1.5},
                "exact_last": {"dev": 0.2, "test": 0.2, "seconds": 1.0, "cpu_seconds": 0.8}}
    entries = {"gradtrace/raw": {"score": 0.25, "dev_score": 0.3, "seconds": 2.0, "cpu_seconds": 1.5, "peak_mib": 500.0,
                                 "variant": "exact_all", "variants": variants},
               "kronfluence/ekfac": {"score": 0.4, "dev_score": 0.5, "seconds": 8.0, "cpu_seconds": 6.0, "peak_mib": 700.0,
                                     "variant": "empirical_all_damping=heuristic",
                                     "variants": {"empirical_all_damping=heuristic": {"dev": 0.5, "test": 0.4, "seconds": 8.0}}},
               "bergson/ekfac": {"error": "Traceback ...\nValueError: bad | <shape>"}}
    lm = peers.summarise(entries)
    lm["case"] = {"n_params": 925_440, "n_attributed_params": 903_744, "n_train": 304, "n_query": 48, "final_train_loss": 1.1,
                  "lrs": [0.003] * 3, "retrain_seconds": {"test": 400.0},
                  "config": {"n_layer": 2, "n_embd": 192, "n_head": 4, "train": {"steps": 150, "batch_size": 32, "lr": 0.003}}}
    peers.write_section({"settings": {"lm_test_subsets": 30, "lm_dev_subsets": 12, "test_train_seed": 1000, "dev_train_seed": 2000},
                         "lm_lds": lm, "lm_planted": {"not_run": "too heavy"}})
    md = written["md"]
    assert "### lm_lds" in md and "0.93M parameters" in md and "903,744" in md
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert any(r.startswith("| kronfluence/ekfac | empirical_all_damping=heuristic | 0.500 | 0.400 | 8.0 | 6.0 | 4.00 | 700 |") for r in rows)
    assert any(r.startswith("| bergson/ekfac | error: ValueError: bad \\| &lt;shape&gt;") for r in rows)
    assert "gradtrace/raw: exact_all 0.250, exact_last 0.200" in md  # every variant tried is listed
    assert "the peers' best: kronfluence/ekfac (0.400, 8.0 s, 4.00x gradtrace's wall time" in md
    assert "### lm_planted\n\ntoo heavy" in md


# ---------------------------------------------------------------------------------------------- lm_planted


def _brute_top(scores: np.ndarray, k: int) -> set[int]:
    """The k highest of scores summed over queries by loops, ties by lower index."""
    n_query, n = scores.shape
    totals = [sum(float(scores[q, i]) for q in range(n_query)) for i in range(n)]
    return set(sorted(range(n), key=lambda i: (-totals[i], i))[:k])


def test_planted_recall_and_ranks_equal_brute_force_on_toys() -> None:
    import planted_peers

    gen = np.random.default_rng(0)
    for trial in range(30):
        n = int(gen.integers(5, 30))
        planted = np.zeros(n, dtype=bool)
        planted[gen.choice(n, size=int(gen.integers(1, n)), replace=False)] = True
        scores = gen.integers(-3, 4, size=(int(gen.integers(1, 4)), n)).astype(np.float64)  # small integers: many ties
        chosen = set(np.flatnonzero(planted).tolist())
        for k in (None, 1, n):
            kk = len(chosen) if k is None else k
            expected = len(_brute_top(scores, kk) & chosen) / len(chosen)
            assert planted_peers.planted_recall(scores, planted, k) == pytest.approx(expected, abs=1e-12)
        assert planted_peers.planted_recall(scores.sum(axis=0), planted) == planted_peers.planted_recall(scores, planted)
        totals = scores.sum(axis=0)
        ranks = sorted(1 + sum(1 for j in range(n) if totals[j] > totals[i] or (totals[j] == totals[i] and j < i)) for i in chosen)
        assert planted_peers.planted_ranks(scores, planted) == ranks
    with pytest.raises(ValueError, match="planted mask"):
        planted_peers.planted_recall(np.zeros((2, 4)), np.zeros(5, dtype=bool))


def test_planted_case_model_and_gradtrace_raw_equal_brute_force_gradients(tmp_path: Path) -> None:
    import planted_peers

    from gradtrace.lm.lora import LoraTrainConfig, add_lora
    from gradtrace.lm.tasks import CausalLMTask
    from gradtrace.models.hf_checkpoints import load_hf_checkpoint
    from gradtrace.models.zoo import byte_tokenizer

    meta = planted_peers.build(tmp_path, "tiny")
    sizes = planted_peers.SIZES["tiny"]
    assert meta["n_train"] == sizes["n_ordinary"] + sizes["n_planted"] + sizes["n_honest"]
    with np.load(tmp_path / "data.npz") as d:
        arrays = {k: d[k] for k in d.files}
    assert int(arrays["planted"].sum()) == sizes["n_planted"] == meta["n_planted"]
    task = CausalLMTask(byte_tokenizer(), max_length=128)
    # each example's tokens, alone, are its padded row
    for name, examples in (("train", meta["train"]), ("query", meta["queries"])):
        for i, e in enumerate(examples):
            alone = task.collate([e])
            n = alone["input_ids"].shape[1]
            for key in ("input_ids", "attention_mask", "labels"):
                assert np.array_equal(arrays[f"{name}_{key}"][i, :n], alone[key][0].numpy())
            assert not arrays[f"{name}_attention_mask"][i, n:].any()
    # the peers' model (a plain peft model with the saved adapter) is the fine-tuned one
    lc = meta["lora"]
    trained = add_lora(planted_peers.load_base(tmp_path / "base", "tiny")[0],
                       LoraTrainConfig(epochs=lc["epochs"], lr=lc["lr"], target_modules=tuple(lc["target_modules"]), n_checkpoints=1))
    load_hf_checkpoint(trained, meta["checkpoint"])
    rebuilt = planted_peers.peft_model(tmp_path, meta)
    batch = {k: torch.as_tensor(arrays[f"train_{k}"][:6]) for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(**batch).logits, trained(**batch).logits, rtol=0, atol=0)
    # gradtrace's raw scores: lr x the dot products of per-example LoRA gradients, written out
    scores = planted_peers.run_gradtrace(tmp_path, meta, "raw")["exact"]
    params = [p for n, p in rebuilt.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)

    def grad(example: dict) -> torch.Tensor:
        loss = task.per_example_loss(rebuilt, task.collate([example])).sum()
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])

    train_grads = [grad(e) for e in meta["train"]]
    for q, query in enumerate(meta["queries"][:2]):
        gq = grad(query)
        expected = np.array([meta["checkpoint_lr"] * float(gq @ gz) for gz in train_grads])
        np.testing.assert_allclose(scores[q], expected, rtol=2e-3, atol=1e-6 * np.abs(expected).max())


def test_lm_planted_section_lists_each_tool_with_text_escaped(peers, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    written = {}
    monkeypatch.setattr(peers, "record", lambda name, command, md, results: written.update(md=md, results=results))
    entries = {"gradtrace/raw": {"score": 0.5, "seconds": 10.0, "cpu_seconds": 9.0, "peak_mib": 900.0, "variant": "exact",
                                 "planted_ranks": [1, 3, 7, 40]},
               "kronfluence/ekfac": {"score": 0.75, "seconds": 30.0, "cpu_seconds": 27.0, "peak_mib": 1200.0,
                                     "variant": "empirical_damping=heuristic", "planted_ranks": [1, 2, 3, 9]},
               "kronfluence/identity": {"error": "Traceback\nRuntimeError: a | <b>"}}
    planted = peers.summarise(entries)
    planted.update({"agreement": {"gradtrace/raw vs kronfluence/identity": 0.99999},
                    "case": {"model": "smollm2", "n_train": 200, "n_planted": 4, "n_queries": 10, "train_seconds": 70.0, "train_steps": 50,
                             "query_logprob_before": -39.7, "query_logprob_after": -33.2,
                             "sizes": {"n_ordinary": 190, "n_planted": 4, "n_honest": 6},
                             "lora": {"rank": 8, "target_modules": ["q_proj", "v_proj"], "layers": [26, 27, 28, 29], "epochs": 2,
                                      "lr": 0.003, "batch_size": 8}}})
    peers.write_section({"settings": {}, "lm_planted": planted})
    md = written["md"]
    assert "### lm_planted" in md and "REDUCED" in md and "layers 26-29" in md and "190 ordinary, 4 planted, 6 honest" in md
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert "| kronfluence/ekfac | empirical_damping=heuristic | 0.75 | 1, 2, 3, 9 | 30.0 | 27.0 | 3.00 | 1200 |" in rows
    assert "| gradtrace/raw | exact | 0.50 | 1, 3, 7, 40 | 10.0 | 9.0 | 1.00 | 900 |" in rows
    assert any(r.startswith("| kronfluence/identity | error: RuntimeError: a \\| &lt;b&gt;") for r in rows)
    assert "gradtrace/raw vs kronfluence/identity: 1.0000" in md
