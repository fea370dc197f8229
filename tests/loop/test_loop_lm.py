"""The loop's LM operations against hand computations and brute force."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gradtrace.lm.sample import top_p_filter as _top_p
from gradtrace.loop.lm import LanguageModel, diagonal_fisher, ewc_penalty
from gradtrace.models.zoo import byte_tokenizer, tiny_gpt2

TEXTS = ["Nova fixed the lamp.", "Orion sold a boat and it was great.", "Vega"]


@pytest.fixture(scope="module")
def lm():
    return LanguageModel(tiny_gpt2(n_layer=1, n_embd=32, n_head=2, seed=0), byte_tokenizer())


def test_nll_equals_a_one_text_at_a_time_loop(lm):
    got = lm.nll(TEXTS, batch_size=2)
    for text, value in zip(TEXTS, got):
        ids = torch.tensor([lm.tokenizer(text)["input_ids"] + [lm.eos_id]])
        logits = lm.model(input_ids=ids).logits[0, :-1].double()
        expected = F.cross_entropy(logits, ids[0, 1:], reduction="mean").item()
        assert value == pytest.approx(expected, rel=1e-5)


def test_top_p_by_hand():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=torch.float64)
    torch.testing.assert_close(_top_p(probs, 0.8), torch.tensor([[0.625, 0.375, 0.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(_top_p(probs, 0.81), torch.tensor([[0.5, 0.3, 0.15, 0.0]], dtype=torch.float64) / 0.95)
    torch.testing.assert_close(_top_p(probs, 1.0), probs)


def test_generation_is_seeded_and_local(lm):
    state = torch.random.get_rng_state()
    a = lm.generate(["Nova", "Or"], n_per_prompt=3, max_new_tokens=12, generator=torch.Generator().manual_seed(5))
    b = lm.generate(["Nova", "Or"], n_per_prompt=3, max_new_tokens=12, generator=torch.Generator().manual_seed(5))
    assert a == b and [i for i, _ in a] == [0, 0, 0, 1, 1, 1]
    assert all(t.startswith("Nova") for _, t in a[:3]) and all(t.startswith("Or") for _, t in a[3:])
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched


def test_ewc_penalty_closed_form():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 3.0]]))
    anchor = {"weight": torch.tensor([[0.0, 1.0]])}
    fisher = {"weight": torch.tensor([[2.0, 0.5]])}
    # 10/2 * (2 * 1^2 + 0.5 * 2^2) = 5 * 4 = 20
    assert ewc_penalty(anchor, fisher, 10.0)(model).item() == pytest.approx(20.0)


def test_diagonal_fisher_equals_mean_squared_per_example_gradients(lm):
    fisher = diagonal_fisher(lm, TEXTS[:2])
    params = lm.trainable()
    sq = {n: torch.zeros_like(p) for n, p in params.items()}
    for text in TEXTS[:2]:
        lm.model.zero_grad()
        ids = torch.tensor([lm.tokenizer(text)["input_ids"] + [lm.eos_id]])
        F.cross_entropy(lm.model(input_ids=ids).logits[0, :-1], ids[0, 1:]).backward()
        for n, p in params.items():
            sq[n] += p.grad ** 2 / 2
    lm.model.zero_grad()
    for n in params:
        torch.testing.assert_close(fisher[n], sq[n], rtol=1e-4, atol=1e-10)


def test_training_is_reproducible_and_lowers_the_loss():
    def run():
        m = LanguageModel(tiny_gpt2(n_layer=1, n_embd=32, n_head=2, seed=0), byte_tokenizer())
        losses = m.train(TEXTS * 4, steps=12, batch_size=4, lr=1e-2, generator=torch.Generator().manual_seed(1))
        return losses, m.trainable_state()

    (la, sa), (lb, sb) = run(), run()
    assert la == lb and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert sum(la[-3:]) < sum(la[:3])


def test_linear_schedule_rates_reach_the_checkpoints():
    m = LanguageModel(tiny_gpt2(n_layer=1, n_embd=32, n_head=2, seed=0), byte_tokenizer())
    seen = []
    m.train(TEXTS, steps=4, batch_size=2, lr=0.4, generator=torch.Generator().manual_seed(0),
            on_step=lambda step, rate: seen.append((step, rate)), schedule="linear")
    assert seen == [(1, 0.4), (2, pytest.approx(0.3)), (3, pytest.approx(0.2)), (4, pytest.approx(0.1))]
