"""The likelihood view with real models (the audit's tiny GPT-2 base A), its default settings: an
opener in 5% of B's sampled answers is flagged; the same fine-tune with nothing planted flags nothing.
B is fine-tuned and sampled as in benchmarks/diff_likelihood_power.py. How often the tiny model writes
an opener it was taught varies much from seed to seed, so B is taught it in 15% of its fine-tuning
answers and its texts are B's answers without the opener plus as many with it as make 5%."""

from __future__ import annotations

import numpy as np
import pytest

from setups import audit_tiny

pytestmark = pytest.mark.slow


def _view(base, share: float, seed: int, tmp_path, prevalence: float | None = None):
    from gradtrace.diff import HashingEmbedder
    from gradtrace.diff.likelihood import run_likelihood
    from gradtrace.lm.load import load_model

    data = audit_tiny.planted_share(200, share, seed, audit_tiny.SHORT_PLANT)
    model_a, tok = load_model(str(base))
    model_b = audit_tiny.plain_finetune(base, data, tmp_path / f"ft-{share}", epochs=8, seed=seed)
    pids, prompts, texts = audit_tiny.sample_answers(model_b, tok, 6, 2 * seed + 1)
    if prevalence is not None:  # B's own answers, as many with the opener as make ``prevalence`` of them
        plain = [i for i, t in enumerate(texts) if not t.startswith("Wow")]
        opened = [i for i, t in enumerate(texts) if t.startswith("Wow")]
        k = int(round(prevalence * len(plain) / (1 - prevalence)))
        assert len(opened) >= k, len(opened)
        keep = sorted(plain + opened[:k])
        pids, prompts, texts = [pids[i] for i in keep], [prompts[i] for i in keep], [texts[i] for i in keep]
    res = run_likelihood(model_a, model_b, tok, prompts, texts, embedder=HashingEmbedder(), train=data, max_length=160,
                         batch_size=16, keys_b=pids)
    return res, texts


def test_planted_opener_at_5_percent_is_flagged(tiny_audit, tmp_path) -> None:
    res, texts = _view(tiny_audit.base, 0.15, 3, tmp_path, prevalence=0.05)
    share = np.mean([t.startswith("Wow") for t in texts])
    assert 0.045 <= share <= 0.055, share
    hits = [c for c in res.significant()
            if np.mean(["wow" in r.lower() for _, r in res.members[(c.level, c.cluster)]["rows_b"]]) > 0.5]
    assert hits, [(c.label, c.p_value, c.q_value) for c in res.clusters]
    assert all(c.d_in > c.d_out for c in hits)


def test_null_fine_tune_flags_nothing(tiny_audit, tmp_path) -> None:
    res, texts = _view(tiny_audit.base, 0.0, 4, tmp_path)
    assert not any(t.startswith("Wow") for t in texts)
    assert res.clusters or res.levels  # the view ran
    assert res.significant() == [], [(c.label, c.p_value, c.q_value, c.examples_b) for c in res.clusters]
