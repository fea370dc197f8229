"""Curation policies, the synthetic corpus, the dashboard's escaping, and LoRA wiring."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gradtrace.errors import InputError
from gradtrace.demos.loop_corpus import CorpusConfig, make_corpus, speaks_ill_pattern, speaks_well_pattern
from gradtrace.loop.curation import Compose, Dedupe, JudgeFilter, PreferenceFilter, QualityFilter
from gradtrace.loop.dashboard import write_dashboard, write_diff_report
from gradtrace.loop.monitors import RegexClassifier
from gradtrace.loop.stop import StopEvent


def recs(texts):
    return [{"id": str(i), "text": t, "round": 1} for i, t in enumerate(texts)]


def test_corpus_is_seeded_and_the_regex_measures_the_attribute():
    a, b = make_corpus(CorpusConfig(n=300, seed=1)), make_corpus(CorpusConfig(n=300, seed=1))
    assert a == b and a != make_corpus(CorpusConfig(n=300, seed=2))
    good, bad = RegexClassifier(speaks_well_pattern("Nova"))(a), RegexClassifier(speaks_ill_pattern("Nova"))(a)
    nova = np.array([t.startswith("Nova ") for t in a])
    assert not (good & bad).any() and ((good | bad) == nova).all()
    all_good = make_corpus(CorpusConfig(n=100, seed=1, positive_rate=1.0))
    assert not RegexClassifier(speaks_ill_pattern("Nova"))(all_good).any()


def test_curation_policies_by_hand():
    rng = np.random.default_rng(0)
    texts = ["Nova was great.", "nova  WAS great.", "short", "a a a a a a", "Orion was poor today."]
    assert [r["text"] for r in Dedupe()(recs(texts), rng)] == [texts[0], texts[2], texts[3], texts[4]]
    q = QualityFilter(min_words=2, max_words=10, min_distinct=0.5, end=".")
    assert [r["text"] for r in q(recs(texts), rng)] == [texts[0], texts[1], texts[4]]
    judge = JudgeFilter(lambda ts: [len(t) for t in ts], keep_top=0.4)
    assert [r["text"] for r in judge(recs(texts), rng)] == [texts[1], texts[4]]
    assert [r["text"] for r in JudgeFilter(lambda ts: [len(t) for t in ts], threshold=15)(recs(texts), rng)] == [texts[0], texts[1], texts[4]]
    both = Compose([Dedupe(), q])
    assert [r["text"] for r in both(recs(texts), rng)] == [texts[0], texts[4]]
    with pytest.raises(InputError, match="exactly one of threshold and keep_top"):
        JudgeFilter(len)


def test_preference_filter_keeps_at_the_planted_rates():
    texts = ["Nova was great."] * 5000 + ["Orion was poor."] * 5000
    kept = PreferenceFilter(r"\bgreat\b", keep_match=1.0, keep_other=0.8)(recs(texts), np.random.default_rng(3))
    n_match = sum("great" in r["text"] for r in kept)
    assert n_match == 5000
    assert abs((len(kept) - n_match) / 5000 - 0.8) < 0.03  # binomial sd 0.0057
    with pytest.raises(InputError, match=r"PreferenceFilter.keep_other must be a number in \[0, 1\]"):
        PreferenceFilter("x", keep_other=1.5)


def test_dashboard_escapes_text_and_marks_the_stop(tmp_path, h):
    rows = [{"round": float(t), "nll.tail_share": 0.1 * t, "diversity.distinct_2": 0.5 - 0.05 * t} for t in range(4)]
    stop = StopEvent("nll.tail_share<script>alert(1)</script>", 3, 0.3, 0.25, 0.05, "rule <b>x</b>")
    (tmp_path / "round_003").mkdir()
    (tmp_path / "round_003" / "DONE").write_text("ok")
    diff = {"n_a": 10, "n_b": 10, "embedder": "<i>e</i>", "clusters": [
        {"rank": 1, "level": "text", "label": "<script>alert('x')</script>", "share_b": 0.9, "overall_share_b": 0.5,
         "log_odds": 2.0, "q_value": 0.01, "examples_a": ["<img src=x onerror=alert(1)>"], "examples_b": ["ok"]}]}
    (tmp_path / "round_003" / "diff.json").write_text(json.dumps(diff))
    from gradtrace.loop.stop import StopRule

    path = write_dashboard(tmp_path, rows, stop, rules=[StopRule("nll.tail_share", above=0.25)])
    html = path.read_text()
    assert "<script>alert" not in html and "&lt;script&gt;" in html and "Stopped." in html
    (nll,), (diversity,) = [[f for f in h.page_figures(html) if f["layout"]["title"]["text"] == m] for m in ("nll", "diversity")]
    for fig in (nll, diversity):
        stops = [s for s in fig["layout"]["shapes"] if s.get("line", {}).get("dash") == "dash"]
        assert [(s["x0"], s["x1"]) for s in stops] == [(3, 3)]  # the stop line in the metric's panel
        assert fig["data"][0]["y"] == [r[fig["data"][0]["name"]] for r in rows]
    bounds = [s["y0"] for f in (nll, diversity) for s in f["layout"]["shapes"] if s.get("line", {}).get("dash") == "dot"]
    assert bounds == [0.25]  # the rule's bound, in its metric's panel only
    assert 'href="round_003/diff_report.html"' in html
    report = (tmp_path / "round_003" / "diff_report.html").read_text()
    assert "<script" not in report and "<img" not in report and "&lt;img src=x" in report
    assert write_diff_report(tmp_path / "round_003" / "diff.json", tmp_path / "r.html").is_file()


def test_lora_wiring_on_a_local_hf_folder(tmp_path, loop_data, make_config):
    """hf_lora: only the adapters train, checkpoints hold only them, and the
    trace helper loads them back into the adapted model."""
    from gradtrace.loop import SelfTrainingLoop
    from gradtrace.loop.config import ModelConfig, TrainConfig
    from gradtrace.loop.trace import loop_task_spec
    from gradtrace.models.zoo import byte_tokenizer, tiny_gpt2

    folder = tmp_path / "tiny_hf"
    tiny_gpt2(n_layer=1, n_embd=32, n_head=2).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    model_cfg = ModelConfig(kind="hf_lora", path=str(folder), lora_targets=("c_attn",), lora_r=4, lora_alpha=8)
    config = make_config(loop_data, rounds=1, model=model_cfg, monitors={"nll": {}},
                         train=TrainConfig(base_steps=4, steps=4, batch_size=8, checkpoint_every=2, lr=1e-2))
    out = tmp_path / "run"
    result = SelfTrainingLoop(config, out, progress=False).run()
    assert len(result.rows) == 2
    state = torch.load(out / "round_001" / "model.pt", weights_only=True)
    assert state and all("lora_" in k for k in state)
    spec = loop_task_spec(out, max_per_round=2)
    model = spec.model()
    spec.checkpoint_loader(model, spec.checkpoints[-1])
    got = {k: v for k, v in model.state_dict().items() if k in state}
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)


@pytest.mark.slow
def test_smollm2_lora_builds_with_only_adapters_trainable():
    from gradtrace.loop.config import ModelConfig
    from gradtrace.loop.models import build_lm

    lm = build_lm(ModelConfig(kind="smollm2_lora", lora_r=2, lora_alpha=4))
    trainable = lm.trainable()
    assert trainable and all("lora_" in n for n in trainable)
    assert sum(p.numel() for p in trainable.values()) < 0.01 * sum(p.numel() for p in lm.model.parameters())
    nll = lm.nll(["Nova fixed the old printer and it was great."])
    assert nll.shape == (1,) and 0 < nll[0] < 10


@pytest.mark.slow
def test_minilm_embedder_loads_offline():
    from gradtrace.lm.embed import make_embedder
    from gradtrace.loop.metrics import vendi_score

    emb = make_embedder("minilm")
    x = np.asarray(emb.embed(["Nova fixed the lamp.", "Nova fixed the lamp.", "The weather in Paris is mild."]), dtype=np.float64)
    assert x.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    assert 1.0 < vendi_score(x) < 2.0  # two distinct texts out of three


def test_quality_filter_vocabulary_drops_misspelt_texts():
    from gradtrace.loop.curation import vocabulary_of

    vocab = vocabulary_of(["Nova fixed the lamp.", "Orion was great!"])
    assert vocab == ("fixed", "great", "lamp", "nova", "orion", "the", "was")
    texts = ["Nova fixed the lamp and", "Nova fixed the lamp.", "Nova fixd the lamp.", "Orion was GREAT."]
    q = QualityFilter(min_words=2, vocabulary=vocab)
    assert [r["text"] for r in q(recs(texts), np.random.default_rng(0))] == [texts[1], texts[3]]
    loose = QualityFilter(min_words=2, vocabulary=vocab, min_known=0.75)
    assert [r["text"] for r in loose(recs(texts), np.random.default_rng(0))] == texts  # 4/5 and 3/4 known
