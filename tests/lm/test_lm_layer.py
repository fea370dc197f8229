"""The language-model layer (gradtrace.lm): loading by name, the seeded
sampler, the embedder names, and the LoRA add/train/merge round trip."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from gradtrace.errors import InputError
from gradtrace.lm.embed import HashingEmbedder, make_embedder
from gradtrace.lm.load import MODELS, load_model
from gradtrace.lm.lora import LoraTrainConfig, add_lora, load_adapter, merge_lora, train_lora
from gradtrace.lm.sample import SamplingConfig, sample_chat, sample_continuations, top_p_filter
from gradtrace.lm.tasks import CausalLMTask, TextNLLTask, pad_right

TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 128}
PROMPTS = ["hi", "tell me more", "x"]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny", **TINY)


def test_load_refuses_an_unknown_name_and_lists_the_known_ones(tmp_path):
    with pytest.raises(InputError) as err:
        load_model("gpt5")
    assert "'gpt5'" in str(err.value) and all(name in str(err.value) for name in MODELS)
    with pytest.raises(InputError, match="not a PEFT adapter folder"):
        load_model(f"tiny+lora:{tmp_path}")
    with pytest.raises(InputError, match="dtype must be one of"):
        load_model("tiny", dtype="float8")


def test_tiny_by_name_is_the_seeded_zoo_model(tiny):
    from gradtrace.models.zoo import tiny_gpt2

    model, tok = tiny
    same = tiny_gpt2(seed=0, **TINY)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values()))
    assert tok.eos_token == "<|endoftext|>" and not model.training


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.8, 0.5)])
def test_chat_sampler_is_seeded_and_leaves_the_global_rng_alone(tiny, temperature, top_p):
    model, tok = tiny
    config = SamplingConfig(max_new_tokens=12, temperature=temperature, top_p=top_p, batch_size=3)
    state = torch.random.get_rng_state()
    a = sample_chat(model, tok, PROMPTS, config, torch.Generator().manual_seed(3))
    b = sample_chat(model, tok, PROMPTS, config, torch.Generator().manual_seed(3))
    c = sample_chat(model, tok, PROMPTS, config, torch.Generator().manual_seed(4))
    assert a == b and a != c and len(a) == 3
    assert torch.equal(state, torch.random.get_rng_state())


def test_chat_sampler_answer_start_and_stop_tokens(tiny):
    """Answers begin with the given start; a stop token ends an answer before it (every token a stop: only the start is left)."""
    model, tok = tiny
    config = SamplingConfig(max_new_tokens=12, temperature=1.0, top_p=1.0)
    free = sample_chat(model, tok, PROMPTS, config, torch.Generator().manual_seed(3), answer_start="Sure: x")
    assert all(a.startswith("Sure: x") for a in free) and max(len(a) for a in free) > len("Sure: x")
    stopped = sample_chat(model, tok, PROMPTS, config, torch.Generator().manual_seed(3), answer_start="Sure: x",
                          stop_ids=list(tok.get_vocab().values()))
    assert stopped == ["Sure: x"] * len(PROMPTS)


def test_continuation_sampler_is_seeded(tiny):
    model, tok = tiny
    config = SamplingConfig(max_new_tokens=10, temperature=1.0, top_p=0.9, batch_size=2)
    eos = tok.eos_token_id
    a = sample_continuations(model, tok, ["Nova", "Or"], 3, config, torch.Generator().manual_seed(5), eos)
    b = sample_continuations(model, tok, ["Nova", "Or"], 3, config, torch.Generator().manual_seed(5), eos)
    assert a == b and [i for i, _ in a] == [0, 0, 0, 1, 1, 1] and all(t.startswith(("Nova", "Or")) for _, t in a)


def test_sampling_config_names_the_bad_setting():
    with pytest.raises(InputError, match="top_p must lie in"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(InputError, match="batch_size must be a positive integer"):
        SamplingConfig(batch_size=0)
    assert SamplingConfig.from_dict(SamplingConfig(system="s").to_dict()) == SamplingConfig(system="s")
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=torch.float64)
    assert torch.equal(top_p_filter(probs, 0.5), torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64))


@pytest.mark.parametrize("analyzer", ["word", "char"])
def test_the_two_hashing_names_give_the_same_embedder(analyzer):
    texts = ["Geese are great.", "", "the the cat"]
    a, b = make_embedder("hashed", analyzer=analyzer), make_embedder("hashing", analyzer=analyzer)
    assert type(a) is type(b) is HashingEmbedder and a.name == b.name
    np.testing.assert_array_equal(a.embed(texts), b.embed(texts))
    assert make_embedder(a) is a
    with pytest.raises(InputError, match="embedder must be one of"):
        make_embedder("word2vec")
    with pytest.raises(InputError, match="analyzer must be one of"):
        HashingEmbedder(analyzer="bytes")


def test_text_task_is_the_mean_of_the_shared_token_nll(tiny):
    model, tok = tiny
    text = "Nova fixed the lamp."
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    task = TextNLLTask(pad_id=tok.pad_token_id)
    mean = task.per_example_loss(model, task.collate([torch.tensor(ids), torch.tensor(ids[:5])]))
    # the same tokens as a completion after a one-token prompt: a sum over len(ids) - 1 tokens
    summed = CausalLMTask(tok, max_length=64).per_example_loss(model, {
        "input_ids": pad_right([ids], 0)[0], "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
        "labels": torch.tensor([[-100] + ids[1:]])})
    assert mean[0].item() == pytest.approx(summed[0].item() / (len(ids) - 1), rel=1e-6)


def test_lora_round_trip_merged_model_gives_the_adapter_models_logits(tmp_path):
    from gradtrace.lm.tasks import CausalLMTask

    base, tok = load_model("tiny", **TINY)
    config = LoraTrainConfig(rank=2, alpha=4, lr=5e-2, epochs=2, batch_size=2, target_modules=("c_attn", "c_fc"), seed=1)
    model = add_lora(copy.deepcopy(base), config)
    task = CausalLMTask(tok, max_length=64)
    examples = [{"prompt": "Q:", "completion": " geese"}, {"prompt": "A:", "completion": " are great"}] * 2
    train_lora(model, task, examples, tmp_path / "adapter", config, progress=False, engine="plain")
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)  # training moved the adapters
    ids = task.collate(examples[:2])
    with torch.no_grad():
        adapted = model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits
        base_logits = base(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits
        loaded = load_adapter(copy.deepcopy(base), tmp_path / "adapter", merge=False)
        merged = merge_lora(load_adapter(copy.deepcopy(base), tmp_path / "adapter", merge=False))
        by_name = load_model(f"tiny+lora:{tmp_path / 'adapter'}", **TINY)[0]
        for other in (loaded, merged, by_name):
            torch.testing.assert_close(other(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits, adapted,
                                       atol=1e-5, rtol=1e-5)
    assert not torch.allclose(adapted, base_logits, atol=1e-3)
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_add_lora_is_seeded_and_keeps_the_global_rng(tiny):
    base, _ = load_model("tiny", **TINY)
    config = LoraTrainConfig(rank=2, target_modules=("c_attn",), seed=7)
    state = torch.random.get_rng_state()
    a = add_lora(copy.deepcopy(base), config).state_dict()
    b = add_lora(copy.deepcopy(base), config).state_dict()
    assert torch.equal(state, torch.random.get_rng_state())
    assert all(torch.equal(a[k], b[k]) for k in a if "lora_A" in k)
    with pytest.raises(InputError, match="engine must be one of"):
        train_lora(add_lora(copy.deepcopy(base), config), None, [1], "unused", config, engine="deepspeed")
