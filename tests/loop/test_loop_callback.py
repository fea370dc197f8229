"""The monitors inside a user's own training: a Hugging Face Trainer stopped
by the callback, and a plain loop stopped by the session."""

from __future__ import annotations

import pytest
import torch

from gradtrace.errors import InputError
from gradtrace.loop.callback import LoopMonitorCallback, MonitorSession
from gradtrace.loop.config import GenerationConfig
from gradtrace.demos.loop_corpus import CorpusConfig, make_corpus
from gradtrace.loop.monitors import Diversity, HeldoutNLL, RepresentationDrift
from gradtrace.loop.stop import StopRule
from gradtrace.models.zoo import byte_tokenizer, tiny_gpt2

TEXTS = make_corpus(CorpusConfig(n=140, seed=5))
PROBES = ["Nova fixed the", "Orion built the", "Lyra sold the", "Vega moved the"]


def session(rules, tokenizer):
    return MonitorSession(
        tokenizer, prompts=["Nova", "Orion"], heldout=TEXTS[100:120], probes=PROBES,
        monitors=[HeldoutNLL(margin=0.05), RepresentationDrift(), Diversity(n_pairs=20)], rules=rules,
        generation=GenerationConfig(n_per_prompt=3, max_new_tokens=20),
    )


def test_trainer_callback_stops_training_at_the_breach(tmp_path):
    from transformers import Trainer, TrainingArguments

    tok = byte_tokenizer()
    model = tiny_gpt2(n_layer=1, n_embd=32, n_head=2)
    enc = [tok(t + tok.eos_token)["input_ids"] for t in TEXTS[:100]]
    width = max(len(e) for e in enc)
    data = [{"input_ids": torch.tensor(e + [tok.pad_token_id] * (width - len(e))),
             "attention_mask": torch.tensor([1] * len(e) + [0] * (width - len(e))),
             "labels": torch.tensor(e + [-100] * (width - len(e)))} for e in enc]
    # random init -> training lowers held-out NLL at once: the rule fires at the first check after step 0
    s = session([StopRule("nll.mean_change", below=-0.05)], tok)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=40, per_device_train_batch_size=10, learning_rate=3e-3,
                             use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no", seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[LoopMonitorCallback(s, every=5)])
    trainer.train()
    assert s.steps[0] == 0 and s.rows[0]["nll.mean_change"] == 0.0 and s.rows[0]["cka.cka"] == pytest.approx(1.0)
    assert s.should_stop and s.stop.monitor == "nll"
    assert trainer.state.global_step == s.steps[s.stop.round] < 40
    assert s.steps == [5 * i for i in range(len(s.steps))]


def test_plain_loop_runs_until_the_session_says_stop():
    tok = byte_tokenizer()
    model = tiny_gpt2(n_layer=1, n_embd=32, n_head=2)
    s = session([StopRule("cka.cka", below=0.999)], tok)
    s.observe(model, step=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    steps_done = 0
    for step in range(1, 101):
        idx = torch.randint(0, 100, (8,), generator=gen).tolist()
        batch = tok([TEXTS[i] for i in idx], return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps_done = step
        if step % 10 == 0:
            s.observe(model, step=step)
            if s.should_stop:
                break
    assert s.should_stop and steps_done < 100 and s.stop.metric == "cka.cka"
    assert s.stop.value < 0.999 and all(r["cka.cka"] >= 0.999 for r in s.rows[: s.stop.round])


def test_session_checks_its_inputs():
    tok = byte_tokenizer()
    with pytest.raises(InputError, match="heldout"):
        MonitorSession(tok, prompts=["a"], monitors=[HeldoutNLL()])
    with pytest.raises(InputError, match="every must be a positive integer"):
        LoopMonitorCallback(session([], tok), every=0)
