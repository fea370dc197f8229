"""Sample sources: JSONL files, an OpenAI-compatible endpoint (a real local HTTP
server serving a local model), a local HF model with a LoRA adapter, and bad input."""

from __future__ import annotations

import json
import socket

import pytest
import torch

from gradtrace.lm.sample import SamplingConfig as GenerationConfig, sample_chat as sample_batch
from gradtrace.diff.serve import ChatServer, hf_completer
from gradtrace.diff.sources import (
    EndpointError, EndpointSource, HFSource, JsonlSource, Prompt, Sample, check_pairing, parse_source, read_prompts,
)
from gradtrace.errors import InputError
from gradtrace.http import Timeouts
from gradtrace.models.zoo import byte_tokenizer, tiny_gpt2

GEN = GenerationConfig(max_new_tokens=12, temperature=1.0, top_p=1.0, batch_size=3)


@pytest.fixture(scope="module")
def tiny():
    return tiny_gpt2(seed=0), byte_tokenizer()


def test_jsonl_source_and_prompts(tmp_path):
    p = tmp_path / "prompts.jsonl"
    p.write_text('{"id": "x", "prompt": "hello"}\n\n{"id": "y", "prompt": "bye"}\n')
    prompts = read_prompts(p)
    assert prompts == [Prompt("x", "hello"), Prompt("y", "bye")]
    s = tmp_path / "a.jsonl"
    s.write_text("".join(json.dumps({"prompt_id": pid, "text": f"t{i}"}) + "\n" for i, pid in enumerate("xyxz")))
    got = JsonlSource(s).sample(prompts)
    assert [(g.prompt_id, g.prompt, g.text) for g in got] == [("x", "hello", "t0"), ("y", "bye", "t1"), ("x", "hello", "t2")]
    assert [g.text for g in JsonlSource(s).sample([])] == ["t0", "t1", "t2", "t3"]


def test_bad_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(InputError, match="the prompt file is empty"):
        read_prompts(empty)
    with pytest.raises(InputError, match="is empty"):
        JsonlSource(empty).sample([])
    with pytest.raises(InputError, match="does not exist"):
        read_prompts(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\nnot json\n')
    with pytest.raises(InputError, match="line 2 is not valid JSON"):
        read_prompts(bad)
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n')
    with pytest.raises(InputError, match="prompt ids must be unique"):
        read_prompts(dup)


def test_unequal_prompt_sets():
    a = [Sample("p1", "q", "t"), Sample("p2", "q", "t")]
    check_pairing(a, list(a))
    with pytest.raises(InputError, match=r"unequal prompt sets: only in A \['p2'\], only in B \['p3'\]"):
        check_pairing(a, [Sample("p1", "q", "t"), Sample("p3", "q", "t")])
    with pytest.raises(InputError, match=r"different counts for \['p1'\]"):
        check_pairing(a, a + [Sample("p1", "q", "t")])


def test_endpoint_serves_a_local_model(tiny, tmp_path):
    model, tok = tiny
    prompts = [Prompt(str(i), f"prompt {i}") for i in range(4)]
    with ChatServer(hf_completer(model, tok), model_name="tiny") as server:
        src = EndpointSource(server.base_url, "tiny", GEN, timeouts=Timeouts(read=30), cache_dir=tmp_path)
        got = src.sample(prompts, 2, seed=5)
        assert [g.prompt_id for g in got] == ["0", "1", "2", "3"] * 2
        # the server answers with the local model itself: same text as sampling it directly with the same seed
        for i, g in enumerate(got[:3]):
            direct = sample_batch(model, tok, [g.prompt], GenerationConfig(max_new_tokens=12, temperature=1.0, top_p=1.0, batch_size=1),
                                  torch.Generator().manual_seed(5 * 1_000_003 * 131 + i))
            assert g.text == direct[0]
    # the server is stopped: the same call is answered from the cache
    assert [g.text for g in src.sample(prompts, 2, seed=5)] == [g.text for g in got]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_endpoint_down_gives_a_clear_error():
    src = EndpointSource(f"http://127.0.0.1:{_free_port()}/v1", "m", GEN, timeouts=Timeouts(connect=2), retries=1, backoff=0.01)
    with pytest.raises(EndpointError, match=r"endpoint http://127\.0\.0\.1:\d+/v1/chat/completions failed after 2 attempt\(s\) "
                                            r"in [\d.]+ s: ConnectionRefusedError: .* \(model 'm'\)"):
        src.sample([Prompt("0", "hi")], 1, seed=0)


def test_endpoint_http_error_is_not_retried_forever(tiny):
    model, tok = tiny
    with ChatServer(hf_completer(model, tok)) as server:
        src = EndpointSource(server.base_url.replace("/v1", "/v2"), "m", GEN, retries=3, backoff=0.01)
        with pytest.raises(EndpointError, match="HTTP 404"):
            src.chat([{"role": "user", "content": "x"}])


def test_hf_source_with_lora_adapter(tiny, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tok = tiny
    folder = tmp_path / "base"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    peft_model = get_peft_model(tiny_gpt2(seed=0), LoraConfig(r=4, target_modules=["c_attn"]))
    # Large seeded adapter weights: a small random adapter on an untrained model can leave
    # every sampled token unchanged (same uniform draws, nearly the same probabilities).
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
    peft_model.save_pretrained(tmp_path / "adapter")
    prompts = [Prompt("a", "tell me"), Prompt("b", "more")]
    base = HFSource(f"{folder}", None, GEN).sample(prompts, 2, seed=1)
    again = HFSource(f"{folder}", None, GEN).sample(prompts, 2, seed=1)
    tuned = HFSource(f"{folder}", tmp_path / "adapter", GEN).sample(prompts, 2, seed=1)
    assert [s.text for s in base] == [s.text for s in again]  # seeded
    assert [s.text for s in base] != [s.text for s in tuned]  # the adapter changes the model
    merged = peft_model.merge_and_unload().eval()
    expected = sample_batch(merged, tok, ["tell me", "more", "tell me"], GEN, torch.Generator().manual_seed(1 * 1_000_003))
    assert [s.text for s in tuned[:3]] == expected


def test_parse_source(tmp_path):
    assert isinstance(parse_source("jsonl:x.jsonl"), JsonlSource)
    assert isinstance(parse_source("out/b.jsonl"), JsonlSource)
    e = parse_source("http://localhost:8000/v1#my-model")
    assert isinstance(e, EndpointSource) and e.model == "my-model"
    h = parse_source("smollm2+lora:/tmp/ad")
    assert isinstance(h, HFSource) and h.adapter == "/tmp/ad" and h.model_name == "smollm2"
    with pytest.raises(InputError, match="must name the model after '#'"):
        parse_source("http://localhost:8000/v1")
    with pytest.raises(InputError, match="is not one of"):
        parse_source("gpt-5")
    with pytest.raises(InputError, match="not a PEFT adapter folder"):
        HFSource(str(tmp_path), tmp_path, GEN).load()


def test_greedy_sampling_equals_transformers_generate(tiny):
    """Oracle: the batched, left-padded sampling loop at temperature 0 equals ``generate`` run one prompt at a time."""
    from gradtrace.lm.sample import chat_prompt

    model, tok = tiny
    prompts = ["a", "a much longer prompt here", "mid prompt"]
    config = GenerationConfig(max_new_tokens=10, temperature=0.0, batch_size=3)
    got = sample_batch(model, tok, prompts, config, torch.Generator().manual_seed(0))
    for prompt, text in zip(prompts, got):
        enc = tok(chat_prompt(tok, prompt), return_tensors="pt", add_special_tokens=False)
        ref = model.generate(**enc, max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        new = ref[0, enc["input_ids"].shape[1]:].tolist()
        cut = new.index(tok.eos_token_id) if tok.eos_token_id in new else len(new)
        assert text == tok.decode(new[:cut], skip_special_tokens=True).strip()
