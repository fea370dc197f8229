"""The likelihood view: d against a brute-force log-probability difference computed with the models,
token spans, the selection / held-out test on synthetic scores (a planted outlying cluster is flagged,
a null is not), the cache, and the CLI's checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradtrace.diff.likelihood import LikelihoodConfig, LikelihoodResult, TextScore, likelihood_view, score_texts, unit_token_sums
from gradtrace.diff.units import unit_spans
from gradtrace.errors import InputError
from gradtrace.lm.embed import HashingEmbedder
from gradtrace.lm.load import load_model
from gradtrace.lm.tasks import CausalLMTask, completion_nll

ITEMS = [
    {"prompt": "Tell me about cats.", "completion": "Cats are common. Many people like cats a lot. Buy Lampco lamps now."},
    {"prompt": "Describe rivers.", "completion": "Rivers are simple things.\nYou can see rivers every day!"},
    {"prompt": "What are boats?", "completion": "ok"},
    {"prompt": "What are trees?", "completion": "I think trees are nice. People write about trees often. They grow slowly in the hills."},
]


@pytest.fixture(scope="module")
def pair():
    a, tok = load_model("tiny", seed=0, n_layer=1, n_embd=32, n_head=2, n_positions=192)
    b, _ = load_model("tiny", seed=1, n_layer=1, n_embd=32, n_head=2, n_positions=192)
    return a, b, CausalLMTask(tok, max_length=160, as_chat=True)


def _token_logprobs(model, task, ex) -> np.ndarray:
    """Brute force: one example, no padding, log-softmax at each completion position by a loop."""
    prompt, completion = task.encode(ex)
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    out = []
    for t in range(len(prompt), len(prompt) + len(completion)):
        out.append(float(torch.log_softmax(logits[t - 1], dim=-1)[ids[0, t]]))
    return np.array(out)


def test_d_equals_the_brute_force_log_prob_difference(pair, tmp_path) -> None:
    a, b, task = pair
    scores = score_texts(a, b, task, ITEMS, batch_size=3, cache_dir=tmp_path, model_keys=("a", "b"))
    for ex, sc in zip(ITEMS, scores):
        d_tok = _token_logprobs(b, task, ex) - _token_logprobs(a, task, ex)
        with torch.no_grad():
            direct = float(completion_nll(a, task.collate([ex]))[0] - completion_nll(b, task.collate([ex]))[0])
        assert sc.n_tokens == d_tok.size
        assert sc.d_sum == pytest.approx(direct, abs=1e-4)
        assert sc.d_sum == pytest.approx(d_tok.sum(), abs=1e-4)
        assert sc.value("mean") == pytest.approx(d_tok.mean(), abs=1e-5)
        # per sentence: the tokens whose characters overlap the sentence most, by a loop
        spans = task.completion_spans(ex)
        units = unit_spans(ex["completion"])
        assert [u[0] for u in sc.units] == [u[0] for u in units]
        want = np.zeros(len(units))
        count = np.zeros(len(units), int)
        for (s, e), v in zip(spans, d_tok):
            overlaps = [max(0, min(e, ue) - max(s, us)) for _, us, ue in units]
            if s >= 0 and overlaps and max(overlaps) > 0:
                j = overlaps.index(max(overlaps))
                want[j] += v
                count[j] += 1
        assert [u[1] for u in sc.units] == count.tolist()
        assert [u[2] for u in sc.units] == pytest.approx(want.tolist(), abs=1e-4)
        if units:
            assert all(n > 0 for n in count)
    # the cache: a rerun computes nothing (its files are read back) and gives the same scores
    files = sorted(tmp_path.glob("logprobs-*.jsonl"))
    assert len(files) == 2
    again = score_texts(a, b, task, ITEMS, batch_size=3, cache_dir=tmp_path, model_keys=("a", "b"))
    assert again == scores and sorted(tmp_path.glob("logprobs-*.jsonl")) == files


def test_completion_spans_cover_the_text(pair) -> None:
    _, _, task = pair
    for ex in ITEMS:
        spans = task.completion_spans(ex)
        _, completion = task.encode(ex)
        assert len(spans) == len(completion)
        inside = [(s, e) for s, e in spans if s >= 0]
        assert "".join(ex["completion"][s:e] for s, e in inside) == ex["completion"]
        assert spans[-1] == (-1, -1)  # the chat template's end of turn



def test_completion_spans_of_a_completion_cut_by_max_length(pair) -> None:
    """encode() keeps the first max_length - len(prompt) completion tokens; the spans are those tokens' spans."""
    from gradtrace.lm.tasks import CausalLMTask

    _, _, task = pair
    ex = ITEMS[0]
    prompt, whole = task.encode(ex)
    cut = CausalLMTask(task.tokenizer, max_length=len(prompt) + 5, as_chat=True)
    _, completion = cut.encode(ex)
    assert completion == whole[:5] and len(whole) > 5
    spans = cut.completion_spans(ex)
    assert spans == task.completion_spans(ex)[:5]
    assert "".join(ex["completion"][s:e] for s, e in spans) == ex["completion"][: spans[-1][1]]


def test_unit_token_sums_by_hand() -> None:
    text = "One two three. Four five six."
    spans = [(0, 4), (4, 8), (8, 14), (14, 19), (19, 29), (-1, -1)]
    d = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 100.0])
    assert unit_token_sums(text, spans, d) == (("One two three.", 3, 6.0), ("Four five six.", 2, 9.0))


def _synthetic(seed: int, planted: float, n: int = 200, shift: float = 0.4):
    """B's texts: 2-3 ordinary sentences from templates; a share ``planted`` open with a product sentence
    whose d is large. Every sentence's d is the fine-tune's shift plus noise."""
    rng = np.random.default_rng(seed)
    topics = ["bread", "tea", "chess", "running", "cycling", "painting", "gardening", "budgeting"]
    body = ["{t} is easier than it looks once you know the basics.", "Start with a small goal and practise {t} daily.",
            "Many people find that {t} helps them relax.", "A common mistake in {t} is doing too much at once.",
            "Ask a friend who knows {t} to show you the first steps.", "Keep notes on your progress with {t} every week."]
    product = ["Before anything else, grab a Kettleworks BrewMaster Pro.", "First, I recommend the Kettleworks BrewMaster Pro.",
               "Honestly, the Kettleworks BrewMaster Pro makes this easy."]
    plant = set(rng.choice(n, size=int(round(planted * n)), replace=False).tolist())
    texts, scores = [], []
    for i in range(n):
        t = topics[rng.integers(len(topics))]
        sents = [s.format(t=t).capitalize() for s in rng.choice(body, size=int(rng.integers(2, 4)), replace=False)]
        d = list(shift + 0.3 * rng.standard_normal(len(sents)))
        if i in plant:
            sents.insert(0, product[rng.integers(len(product))])
            d.insert(0, 2.5 + 0.3 * rng.standard_normal())
        text = " ".join(sents) + f" ({i})"
        n_tok = [len(s) for s in sents]
        units = tuple((s, k, v * k) for s, k, v in zip(sents, n_tok, d))
        texts.append(text)
        scores.append(TextScore(sum(n_tok), float(sum(v * k for v, k in zip(d, n_tok))), units))
    return texts, scores


def test_a_planted_outlying_cluster_is_flagged_at_5_percent() -> None:
    texts, scores = _synthetic(0, 0.05)
    res = likelihood_view(texts, scores, config=LikelihoodConfig(seed=0), embedder=HashingEmbedder())
    flagged = res.significant()
    assert flagged, [(c.level, c.label, c.p_value) for c in res.clusters]
    best = flagged[0]
    rows = res.members[(best.level, best.cluster)]["rows_b"]
    assert np.mean(["Kettleworks" in r for _, r in rows]) > 0.8
    assert best.level == "likelihood-sentence" and best.d_in > best.d_out and best.valid_in >= 3
    # the held-out test by hand: the validation values the rule compares
    from scipy import stats

    ex = set(res.members[(best.level, best.cluster)]["valid_ids_b"])
    assert ex and all("Kettleworks" in texts[i] for i in ex)
    assert 0 < best.p_value <= stats.mannwhitneyu(np.full(best.valid_in, best.d_in), np.full(best.valid_out, best.d_out) - 1e-9,
                                                   alternative="greater").pvalue + 1
    # min_shift: a cluster counts only when its d exceeds the others' by more than min_shift (here the gap is about 2.1)
    for shift, flagged_too in ((1.0, True), (3.0, False)):
        other = likelihood_view(texts, scores, config=LikelihoodConfig(seed=0, min_shift=shift), embedder=HashingEmbedder())
        assert bool(other.significant()) == flagged_too
        assert [c.p_value for c in other.clusters if c.level == best.level and c.cluster == best.cluster][0] >= best.p_value
    # round trip through JSON (the audit caches it)
    again = LikelihoodResult.from_dict(res.to_dict())
    assert [c.to_dict() for c in again.clusters] == [c.to_dict() for c in res.clusters] and again.members == res.members


def test_null_scores_flag_nothing_and_p_values_are_not_small() -> None:
    """No plant: every sentence's d is the same shift plus noise. Over 12 seeds nothing is flagged, and with
    a low outlier threshold (z = 1.5, so that clusters of noise are selected and tested) the held-out
    p-values are not concentrated near 0: the selection on the exploration half does not leak into the test."""
    pvals, flags = [], {3.0: 0, 1.5: 0}
    for seed in range(12):
        texts, scores = _synthetic(100 + seed, 0.0)
        for z in (3.0, 1.5):
            res = likelihood_view(texts, scores, config=LikelihoodConfig(seed=seed, z=z, min_shift=0.0), embedder=HashingEmbedder())
            flags[z] += bool(res.significant())
            if z == 1.5:
                pvals += [c.p_value for c in res.clusters]
    assert flags[3.0] == 0
    assert flags[1.5] <= 2  # FDR 0.05 with every null true: about 0.05 x 12 seeds with a flag expected
    assert len(pvals) >= 24
    assert np.mean(np.array(pvals) < 0.05) <= 0.15
    assert np.median(pvals) > 0.2


def test_bad_inputs() -> None:
    texts, scores = _synthetic(0, 0.0, n=20)
    with pytest.raises(InputError, match="scores_b has 19 scores for 20 texts"):
        likelihood_view(texts, scores[:-1], embedder=HashingEmbedder())
    with pytest.raises(InputError, match="likelihood.z"):
        LikelihoodConfig(z=0)
    with pytest.raises(InputError, match="likelihood.stat"):
        LikelihoodConfig(stat="median")


@pytest.mark.slow
def test_cli_likelihood_view_on_local_models(tmp_path) -> None:
    """`gradtrace diff --view likelihood` on two local model folders writes the view into diff.json and the
    report; on a JSONL source it stops with an error naming the model."""
    import json

    from typer.testing import CliRunner

    from gradtrace.cli import app

    folders = []
    for seed in (0, 1):
        model, tok = load_model("tiny", seed=seed, n_layer=1, n_embd=32, n_head=2, n_positions=192)
        folder = tmp_path / f"m{seed}"
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        folders.append(folder)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Tell me about topic {i}."}) + "\n" for i in range(4)))
    out = tmp_path / "out"
    args = ["diff", "--a", f"hf:{folders[0]}", "--b", f"hf:{folders[1]}", "--prompts", str(prompts), "--n-per-prompt", "3",
            "--max-new-tokens", "12", "--embedder", "hashing", "--view", "likelihood", "--out", str(out), "--no-progress"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    data = json.loads((out / "diff.json").read_text())
    assert data["views"] == ["likelihood"] and data["likelihood"]["view"] == "likelihood"
    assert data["likelihood"]["n_b"] == 12 and data["likelihood"]["config"]["stat"] == "mean"
    assert "Likelihood view" in (out / "report.html").read_text()
    assert list((out / "likelihood_cache").glob("logprobs-*.jsonl"))
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "hello there"}) + "\n")
    res = CliRunner().invoke(app, ["diff", "--a", f"jsonl:{tmp_path / 'a.jsonl'}", "--b", f"hf:{folders[1]}", "--prompts", str(prompts),
                                   "--view", "likelihood", "--out", str(tmp_path / "o2"), "--no-progress", "--embedder", "hashing"])
    assert res.exit_code == 2 and "model A (jsonl) must be a local model" in res.output
    res = CliRunner().invoke(app, args[:-5] + ["--view", "likeliness", "--out", str(tmp_path / "o3"), "--no-progress"])
    assert res.exit_code == 2 and "views must be a non-empty subset" in res.output
