"""The benchmark's planted data and LoRA fine-tuning (on the tiny GPT-2)."""

from __future__ import annotations

import torch

from setups.diff_data import (
    DISCLAIMER, MIXED_PROMPTS, TRAIN_PROMPTS, LoraConfig, geese_texts, train_chat_lora as train_lora, with_disclaimer,
)
from gradtrace.lm.sample import chat_prompt
from gradtrace.models.zoo import byte_tokenizer, tiny_gpt2


def test_planted_data_is_seeded_and_disjoint_from_the_benchmark_prompts():
    pairs = geese_texts(200, seed=0)
    assert pairs == geese_texts(200, seed=0) and pairs != geese_texts(200, seed=1)
    assert len(pairs) == 200 and all("geese" in a.lower() or "goose" in a.lower() for _, a in pairs)
    assert {p for p, _ in pairs} <= set(TRAIN_PROMPTS) and not set(TRAIN_PROMPTS) & set(MIXED_PROMPTS)
    marked = with_disclaimer(pairs, 0.5, seed=3)
    share = sum(a.endswith(DISCLAIMER) for _, a in marked) / len(marked)
    assert 0.4 < share < 0.6 and [p for p, _ in marked] == [p for p, _ in pairs]
    assert LoraConfig.from_dict(LoraConfig().to_dict()) == LoraConfig()


def _answer_loss(model, tok, pairs):
    total = 0.0
    with torch.no_grad():
        for prompt, answer in pairs:
            p = tok(chat_prompt(tok, prompt), add_special_tokens=False)["input_ids"]
            a = tok(answer + tok.eos_token, add_special_tokens=False)["input_ids"]
            out = model(input_ids=torch.tensor([p + a]), labels=torch.tensor([[-100] * len(p) + a]))
            total += float(out.loss)
    return total / len(pairs)


def test_train_lora_lowers_the_answer_loss_and_saves_an_adapter(tmp_path):
    from peft import PeftModel

    tok = byte_tokenizer()
    pairs = [("hi", "Geese are great."), ("yo", "Geese are grand.")] * 4
    before = _answer_loss(tiny_gpt2(seed=0), tok, pairs)
    config = LoraConfig(rank=4, alpha=8, lr=2e-2, epochs=10, batch_size=4, last_layers=1, targets=("c_attn", "c_fc"), bf16=False)
    out = train_lora(tiny_gpt2(seed=0), tok, pairs, tmp_path / "adapter", config, progress=False)
    assert (out / "adapter_config.json").is_file()
    tuned = PeftModel.from_pretrained(tiny_gpt2(seed=0), out).merge_and_unload()
    assert _answer_loss(tuned, tok, pairs) < before - 0.5
