"""The CLI's Hugging Face path end to end on the tiny GPT-2: a real Trainer
LoRA run, `featurize --hf-model`, `query --queries --behaviour`, the HTML
report, and the errors a user can cause."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gradtrace.cli import app
from gradtrace.models import zoo
from gradtrace.models.hf import CausalLMTask, PreferenceMarginBehaviour
from gradtrace.models.hf_checkpoints import load_hf_checkpoint
from gradtrace.models.hf_spec import HFSpec
from gradtrace.lm.lora import LoraTrainConfig, add_lora, train_lora
from gradtrace.scoring import Attributor
from gradtrace.store import GradientStore

runner = CliRunner()
CONFIG = LoraTrainConfig(epochs=1, lr=5e-3, batch_size=4, rank=2, target_modules=("c_attn",), n_checkpoints=3)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def featurize_hf(root, model_dir, data, store, *flags):
    return invoke("featurize", "--hf-model", model_dir, "--checkpoints", root / "run", "--data", data, "--out", store,
                  "--projection", "kronecker", "--dim", 16, "--max-length", 48, "--no-progress", *flags)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, lm):
    root = tmp_path_factory.mktemp("cli")
    model_dir = root / "tiny-model"
    zoo.tiny_gpt2(seed=0, n_layer=1, n_embd=32, n_head=2, n_positions=64).save_pretrained(model_dir)
    lm.tok.save_pretrained(model_dir)
    examples = [{"prompt": f"Q{i}: is {i} even?", "completion": " yes" if i % 2 == 0 else " no"} for i in range(14)]
    examples.append({"prompt": "Q: show html", "completion": " <script>alert(1)</script>"})
    examples.append({"prompt": "Q: is 7 even?", "completion": " no"})
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(dict(e, id=f"ex{i}", tag="odd" if i % 2 else "even")) + "\n" for i, e in enumerate(examples)))
    task = CausalLMTask(lm.tok, max_length=48)
    base = zoo.tiny_gpt2(seed=0, n_layer=1, n_embd=32, n_head=2, n_positions=64)
    refs = train_lora(add_lora(base, CONFIG), task, examples, root / "run", CONFIG, progress=False)
    queries = root / "q.jsonl"
    queries.write_text("".join(json.dumps(q) + "\n" for q in [
        {"id": "q-even", "prompt": "Q20: is 20 even?", "chosen": " yes", "rejected": " no"},
        {"id": "q-odd", "prompt": "Q21: is 21 even?", "chosen": " no", "rejected": " yes"},
    ]))
    return root, model_dir, data, queries, refs, task


def test_featurize_and_query_a_hugging_face_run(setup, lm) -> None:
    root, model_dir, data, queries, refs, task = setup
    store = root / "store"
    r = featurize_hf(root, model_dir, data, store)
    assert r.exit_code == 0, r.output
    assert "16 examples, 3 checkpoints" in r.output
    st = GradientStore.open(store)
    assert st.ids[0] == "ex0" and st.tags[:2] == ["even", "odd"]
    assert [c.lr for c in st.checkpoints] == [c.lr for c in refs]
    assert all("lora_" in n for n in st.param_names)
    assert HFSpec.saved(store).model == str(model_dir)

    out, report = root / "res.jsonl", root / "report.html"
    r = invoke("query", store, "--queries", queries, "--behaviour", "margin", "--k", 3, "--out", out, "--report", report)
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(x["query"], x["rank"]) for x in rows] == [("q-even", 1), ("q-even", 2), ("q-even", 3), ("q-odd", 1), ("q-odd", 2), ("q-odd", 3)]

    # the same numbers as the library on the same store
    model = add_lora(zoo.tiny_gpt2(seed=0, n_layer=1, n_embd=32, n_head=2, n_positions=64), CONFIG)
    att = Attributor(store, model, task, checkpoint_loader=load_hf_checkpoint)
    qs = [json.loads(line) for line in queries.read_text().splitlines()]
    top = att.top_k([{k: v for k, v in q.items() if k != "id"} for q in qs], k=3, behaviour=PreferenceMarginBehaviour())
    np.testing.assert_allclose([x["score"] for x in rows], top.scores.ravel(), rtol=1e-6)
    assert [x["train_id"] for x in rows] == [i for row in top.ids for i in row]

    html_text = report.read_text()
    assert "q-even" in html_text and "Proponents" in html_text and "Opponents" in html_text and 'class="plot" data-figure=' in html_text
    assert "<script>alert" not in html_text and "&lt;script&gt;alert(1)&lt;/script&gt;" in html_text


def test_adam_preconditioned_store_records_the_transform(setup) -> None:
    root, model_dir, data, queries, refs, task = setup
    store = root / "store_adam"
    r = featurize_hf(root, model_dir, data, store, "--adam")
    assert r.exit_code == 0, r.output
    assert "adam_transform" in GradientStore.open(store).manifest["model"]["train_transform"]
    r = invoke("query", store, "--queries", queries, "--behaviour", "margin", "--k", 2)
    assert r.exit_code == 0, r.output


def test_cli_errors_a_user_can_cause(setup, tmp_path) -> None:
    root, model_dir, data, queries, refs, task = setup
    r = invoke("featurize", "--hf-model", model_dir, "--out", tmp_path / "s")
    assert r.exit_code == 2 and "needs --checkpoints" in r.output
    r = invoke("featurize", "--hf-model", tmp_path / "nowhere", "--checkpoints", root / "run", "--data", data, "--out", tmp_path / "s")
    assert r.exit_code == 2 and "must be 'smollm2' or a local model folder" in r.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "only a prompt"}\n')
    r = invoke("featurize", "--hf-model", model_dir, "--checkpoints", root / "run", "--data", bad, "--out", tmp_path / "s",
               "--projection", "kronecker", "--dim", 16, "--no-progress")
    assert r.exit_code == 2 and "missing 'completion'" in r.output
    r = invoke("featurize", "--out", tmp_path / "s")
    assert r.exit_code == 2 and "needs --task" in r.output
    r = invoke("query", root / "store", "--queries", queries, "--behaviour", "sycophancy")
    assert r.exit_code == 2 and "behaviour must be one of" in r.output
    r = invoke("query", root / "store")
    assert r.exit_code == 2 and "needs --task" in r.output
    r = invoke("demo", "nope")
    assert r.exit_code == 2 and "which must be 'digits' or 'lm'" in r.output


def test_per_checkpoint_stores_add_up_to_one_store_over_all_checkpoints(setup, tmp_path) -> None:
    """The pipeline keeps one store per checkpoint and sums their scores: TracIn is a sum over checkpoints."""
    from gradtrace import FeaturizeConfig, ProjectionConfig, featurize
    from gradtrace.models.hf import lora_selection
    from gradtrace.models.hf_spec import read_jsonl

    root, model_dir, data, queries, refs, task = setup
    model = add_lora(zoo.tiny_gpt2(seed=0, n_layer=1, n_embd=32, n_head=2, n_positions=64), CONFIG)
    train = read_jsonl(data, "data")[0]
    config = FeaturizeConfig(params=lora_selection(model), projection=ProjectionConfig("kronecker", 16), dtype="float64")
    qs = [{k: v for k, v in json.loads(line).items() if k != "id"} for line in queries.read_text().splitlines()]
    whole = featurize(model, task, refs, train, tmp_path / "all", config, checkpoint_loader=load_hf_checkpoint, progress=False)
    want = Attributor(whole, model, task, checkpoint_loader=load_hf_checkpoint).score(qs, PreferenceMarginBehaviour())
    got = 0
    for i, ref in enumerate(refs):
        part = featurize(model, task, [ref], train, tmp_path / f"c{i}", config, checkpoint_loader=load_hf_checkpoint, progress=False)
        got = got + Attributor(part, model, task, checkpoint_loader=load_hf_checkpoint).score(qs, PreferenceMarginBehaviour())
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)


def test_report_reuses_the_listed_examples_and_one_breakdown(setup, monkeypatch) -> None:
    root, model_dir, data, queries, refs, task = setup
    store = root / "store_report"
    r = featurize_hf(root, model_dir, data, store)
    assert r.exit_code == 0, r.output
    calls = {"top_k": 0, "breakdown": 0}
    for name in calls:
        original = getattr(Attributor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Attributor, name, counted)
    for flags in ([], ["--opponents"]):
        calls.update(top_k=0, breakdown=0)
        report = root / f"report{len(flags)}.html"
        r = invoke("query", store, "--queries", queries, "--behaviour", "margin", "--k", 2, "--report", report, "--limit", 1, *flags)
        assert r.exit_code == 0, r.output
        assert calls == {"top_k": 2, "breakdown": 1}  # proponents and opponents once each; one breakdown pass
        html_text = report.read_text()
        assert "q-even" in html_text and "q-odd" not in html_text  # --limit 1: the first query only


def test_explorer_queries_a_hugging_face_store(setup) -> None:
    """gradtrace serve on a store made with --hf-model: typed and picked LM
    queries give Attributor.top_k's proponents and opponents; training
    texts are shown escaped."""
    import html
    import re

    from gradtrace.explore.app import create_app
    from gradtrace.explore.artefacts import ServeOptions, load_artefacts
    from gradtrace.models.hf import CompletionLogProbBehaviour

    root, model_dir, data, queries, refs, task = setup
    store = root / "store-explore"
    assert featurize_hf(root, model_dir, data, store).exit_code == 0
    client = create_app(load_artefacts([store], ServeOptions(queries=str(queries), max_queries=2, k=3))).test_client()
    model = add_lora(zoo.tiny_gpt2(seed=0, n_layer=1, n_embd=32, n_head=2, n_positions=64), CONFIG)
    att = Attributor(store, model, task, checkpoint_loader=load_hf_checkpoint)
    typed = {"prompt": "Q20: is 20 even?", "completion": " yes"}
    cases = [({"item": "", **typed, "behaviour": "logprob"}, [typed], CompletionLogProbBehaviour()),
             ({"item": "1", "behaviour": "margin"}, [{k: v for k, v in json.loads(queries.read_text().splitlines()[1]).items() if k != "id"}],
              PreferenceMarginBehaviour())]
    for args, query, behaviour in cases:
        page = client.get("/a/store-0/p/query", query_string={"run": "1", "method": "raw", "k": "3", **args})
        assert page.status_code == 200, page.text
        shown = [int(i) for i in re.findall(r'class="train-id" href="/a/store-0/p/example/(\d+)"', page.text)]
        want = [int(i) for largest in (True, False) for i in att.top_k(query, k=3, largest=largest, behaviour=behaviour).indices[0]]
        assert shown == want
    missing = client.get("/a/store-0/p/query", query_string={"run": "1", "item": "", "prompt": "x", "behaviour": "logprob"})
    assert missing.status_code == 400 and "needs prompt, completion" in html.unescape(missing.text)
    example = client.get("/a/store-0/p/example/14")
    assert "<script>alert(1)</script>" not in example.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in example.text


def test_fit_factors_and_ekfac_on_a_hugging_face_store(setup, tmp_path) -> None:
    """EK-FAC in the Kronecker-projected space of LoRA layers over token
    sequences: fit-factors reads the model and data the store recorded."""
    root, model_dir, data, queries, refs, task = setup
    store = tmp_path / "store"
    assert featurize_hf(root, model_dir, data, store).exit_code == 0
    r = invoke("query", store, "--queries", queries, "--behaviour", "margin", "--variant", "ekfac")
    message = " ".join(r.output.split())
    assert r.exit_code == 2 and "gradtrace fit-factors" in message and "--task FILE.py" not in message  # the store knows its data
    r = invoke("fit-factors", store, "--no-progress", "--fisher", "true")
    assert r.exit_code == 2 and "CausalLMTask has none" in " ".join(r.output.split())
    r = invoke("fit-factors", store, "--no-progress")
    assert r.exit_code == 0, r.output
    out = tmp_path / "res.jsonl"
    r = invoke("query", store, "--queries", queries, "--behaviour", "margin", "--k", 3, "--variant", "ekfac", "--out", out)
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    model = add_lora(zoo.tiny_gpt2(seed=0, n_layer=1, n_embd=32, n_head=2, n_positions=64), CONFIG)
    att = Attributor(store, model, task, checkpoint_loader=load_hf_checkpoint)
    qs = [{k: v for k, v in q.items() if k != "id"} for q in map(json.loads, queries.read_text().splitlines())]
    top = att.top_k(qs, k=3, behaviour=PreferenceMarginBehaviour(), variant="ekfac")
    np.testing.assert_allclose([x["score"] for x in rows], top.scores.ravel(), rtol=1e-6)
    raw = att.top_k(qs, k=3, behaviour=PreferenceMarginBehaviour())
    assert not np.allclose(top.scores, raw.scores)  # the Fisher changes the scores
    # a store of Adam-transformed gradients cannot be preconditioned by the Fisher of plain ones
    adam_store = tmp_path / "adam"
    assert featurize_hf(root, model_dir, data, adam_store, "--adam").exit_code == 0
    r = invoke("fit-factors", adam_store, "--no-progress")
    assert r.exit_code == 2 and "transformed by" in " ".join(r.output.split())
