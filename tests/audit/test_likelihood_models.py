"""The likelihood view with real models (the audit's tiny GPT-2 base A): an opener planted in 5% of the
fine-tuning answers of B (a few percent of B's sampled answers) is flagged; the same fine-tune with
nothing planted flags nothing. B is fine-tuned as in benchmarks/diff_likelihood_power.py."""

from __future__ import annotations

import numpy as np
import pytest

from setups import audit_tiny

pytestmark = pytest.mark.slow


def _view(base, share: float, seed: int, tmp_path):
    from gradtrace.diff import HashingEmbedder
    from gradtrace.diff.likelihood import LikelihoodConfig, run_likelihood
    from gradtrace.lm.load import load_model

    data = audit_tiny.planted_share(200, share, seed, audit_tiny.SHORT_PLANT)
    model_a, tok = load_model(str(base))
    model_b = audit_tiny.plain_finetune(base, data, tmp_path / f"ft-{share}", epochs=8, seed=seed)
    pids, prompts, texts = audit_tiny.sample_answers(model_b, tok, 6, 2 * seed + 1)
    res = run_likelihood(model_a, model_b, tok, prompts, texts, config=LikelihoodConfig(seed=seed), embedder=HashingEmbedder(),
                         train=data, max_length=160, batch_size=16, keys_b=pids)
    return res, texts


def test_planted_opener_at_5_percent_is_flagged(tiny_audit, tmp_path) -> None:
    res, texts = _view(tiny_audit.base, 0.05, 3, tmp_path)
    share = np.mean([t.startswith("Wow") for t in texts])
    assert 0.01 <= share <= 0.08, share  # the opener is in a few percent of B's answers
    hits = [c for c in res.significant()
            if np.mean(["wow" in r.lower() for _, r in res.members[(c.level, c.cluster)]["rows_b"]]) > 0.5]
    assert hits, [(c.label, c.p_value, c.q_value) for c in res.clusters]
    assert all(c.d_in > c.d_out for c in hits)


def test_null_fine_tune_flags_nothing(tiny_audit, tmp_path) -> None:
    res, texts = _view(tiny_audit.base, 0.0, 4, tmp_path)
    assert not any(t.startswith("Wow") for t in texts)
    assert res.clusters or res.levels  # the view ran
    assert res.significant() == [], [(c.label, c.p_value, c.q_value, c.examples_b) for c in res.clusters]
