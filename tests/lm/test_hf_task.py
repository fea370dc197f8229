"""The causal-LM task: masking, padding, the loss against the model's own
loss, the behaviours, and bad input."""

from __future__ import annotations

import pytest
import torch

from gradtrace.errors import InputError
from gradtrace.models.hf import (
    CausalLMTask, CompletionLogProbBehaviour, CompletionLossBehaviour, PreferenceMarginBehaviour, behaviour_by_name,
)
from gradtrace.models import zoo


def test_collate_masks_prompt_and_padding_exactly(lm) -> None:
    batch = lm.task.collate(lm.examples[:2])
    prompt0, comp0 = lm.tok("Q: 2+2?\nA:")["input_ids"], lm.tok(" 4")["input_ids"] + [lm.tok.eos_token_id]
    n0 = len(prompt0) + len(comp0)
    assert batch["input_ids"][0, :n0].tolist() == prompt0 + comp0
    assert batch["labels"][0, : len(prompt0)].tolist() == [-100] * len(prompt0)
    assert batch["labels"][0, len(prompt0) : n0].tolist() == comp0
    # the first example is shorter: right padding, masked out of attention and labels
    assert batch["attention_mask"][0].tolist() == [1] * n0 + [0] * (batch["input_ids"].shape[1] - n0)
    assert (batch["labels"][0, n0:] == -100).all()
    assert (batch["input_ids"][0, n0:] == lm.tok.pad_token_id).all()


def test_chat_example_masks_everything_but_the_assistant_reply(lm) -> None:
    prompt, completion = lm.task.encode(lm.examples[2])
    assert lm.tok.decode(prompt) == "<user>hi<|endoftext|><assistant>"
    assert lm.tok.decode(completion) == "hello there<|endoftext|>"
    as_chat = CausalLMTask(lm.tok, max_length=96, as_chat=True)
    p2, c2 = as_chat.encode({"prompt": "hi", "completion": "hello there"})
    assert (p2, c2) == (prompt, completion)


def test_loss_equals_the_models_own_loss_on_single_examples(lm) -> None:
    model = lm.lora_gpt2()
    for example in lm.examples:
        batch = lm.task.collate([example])
        n_completion = int((batch["labels"][0] != -100).sum())
        with torch.no_grad():
            out = model(input_ids=batch["input_ids"], labels=batch["labels"])
            ours = lm.task.per_example_loss(model, batch)
        # transformers computes its loss (a mean over completion tokens) in float32
        own = out.loss.double() * n_completion
        torch.testing.assert_close(ours, own.reshape(1), rtol=1e-6, atol=1e-6)
        # and a float64 token loop: -sum_t log softmax(logits_{t-1})[token_t] over completion tokens
        logp = torch.log_softmax(out.logits[0], dim=-1)
        manual = -sum(logp[t - 1, batch["input_ids"][0, t]] for t in range(1, batch["input_ids"].shape[1]) if batch["labels"][0, t] != -100)
        torch.testing.assert_close(ours, manual.reshape(1), rtol=1e-12, atol=1e-12)


def test_padding_does_not_change_any_examples_loss(lm) -> None:
    model = lm.lora_gpt2()
    with torch.no_grad():
        together = lm.task.per_example_loss(model, lm.task.collate(lm.examples))
        alone = torch.cat([lm.task.per_example_loss(model, lm.task.collate([e])) for e in lm.examples])
    torch.testing.assert_close(together, alone, rtol=1e-10, atol=1e-10)


def test_behaviours_are_logprob_loss_and_margin(lm) -> None:
    model = lm.lora_gpt2()
    q = {"prompt": "Is it safe?", "chosen": " no", "rejected": " yes, fully"}
    with torch.no_grad():
        nll_c = lm.task.per_example_loss(model, lm.task.collate([{"prompt": q["prompt"], "completion": q["chosen"]}]))
        nll_r = lm.task.per_example_loss(model, lm.task.collate([{"prompt": q["prompt"], "completion": q["rejected"]}]))
        margin = PreferenceMarginBehaviour()(model, lm.task.collate([q]))
        logprob = CompletionLogProbBehaviour()(model, lm.task.collate([{"prompt": q["prompt"], "completion": q["chosen"]}]))
        loss = CompletionLossBehaviour()(model, lm.task.collate([{"prompt": q["prompt"], "completion": q["chosen"]}]))
    torch.testing.assert_close(margin, nll_r - nll_c)
    with torch.no_grad():
        contrast = behaviour_by_name("contrast")(model, lm.task.collate([q]))
        weighted = PreferenceMarginBehaviour(rejected_weight=0.25)(model, lm.task.collate([q]))
        only_chosen = PreferenceMarginBehaviour(rejected_weight=0)(model, lm.task.collate([q]))
    torch.testing.assert_close(contrast, 0.5 * nll_r - nll_c)
    torch.testing.assert_close(weighted, 0.25 * nll_r - nll_c)
    torch.testing.assert_close(only_chosen, -nll_c)
    for bad in (-0.1, 1.5, "half", True):
        with pytest.raises(InputError, match="rejected_weight must be a number in \\[0, 1\\]"):
            PreferenceMarginBehaviour(rejected_weight=bad)
    torch.testing.assert_close(logprob, -nll_c)
    torch.testing.assert_close(loss, nll_c)
    assert behaviour_by_name("contrast").direction == "increase"
    assert behaviour_by_name("margin").direction == "increase" and behaviour_by_name("loss").direction == "decrease"
    with pytest.raises(InputError, match="behaviour must be one of"):
        behaviour_by_name("sycophancy")


def test_long_completion_is_cut_at_the_cap(lm) -> None:
    task = CausalLMTask(lm.tok, max_length=12)
    prompt, completion = task.encode({"prompt": "abcd", "completion": "x" * 40})
    assert len(prompt) == 4 and len(completion) == 8


@pytest.mark.parametrize(
    "example, message",
    [
        ({"prompt": "hi"}, "missing 'completion'"),
        ({"completion": "hi"}, "missing 'prompt'"),
        ({"prompt": "hi", "completion": ""}, "'completion' is empty"),
        ({"prompt": "p" * 200, "completion": "x"}, "longer than the context max_length=96"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "last message must be the assistant"),
        ({"prompt": 3, "completion": "x"}, "'prompt' must be a string"),
        ("just text", "must be a dict"),
    ],
)
def test_bad_examples_raise_clear_errors(lm, example, message) -> None:
    with pytest.raises(InputError, match=message):
        lm.task.collate([{"prompt": "ok", "completion": " fine"}, example])


def test_bad_task_settings_raise(lm) -> None:
    with pytest.raises(InputError, match="max_length must be an integer >= 2"):
        CausalLMTask(lm.tok, max_length=1)
    tok = zoo.byte_tokenizer()
    tok.chat_template = None
    with pytest.raises(InputError, match="chat_template"):
        CausalLMTask(tok, as_chat=True)


def test_task_identity_goes_into_the_manifest_without_the_tokenizer_object(lm) -> None:
    from gradtrace.task import describe

    text = describe(lm.task)
    assert "max_length=96" in text and "tokenizer_id=" in text and "PreTrainedTokenizer" not in text
    assert describe(CausalLMTask(zoo.byte_tokenizer(), max_length=96)) == text
