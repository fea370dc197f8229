"""Loss-change allocation of a LoRA run on the tiny GPT-2: a real Trainer
run (checkpoint-N folders), only the adapter tensors are allocated to, the
allocations sum to the measured change, and the CLI's --hf-model path."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gradtrace.allocate import allocate_run
from gradtrace.cli import app
from gradtrace.lm.lora import LoraTrainConfig, add_lora, train_lora
from gradtrace.models import zoo
from gradtrace.models.hf import CausalLMTask, CompletionLogProbBehaviour
from gradtrace.models.hf_checkpoints import load_hf_checkpoint

CONFIG = LoraTrainConfig(epochs=2, lr=1e-2, batch_size=4, rank=2, target_modules=("c_attn", "c_fc"), n_checkpoints=3)
QUERIES = [{"prompt": f"Q{i}: is {i} even?", "completion": " yes" if i % 2 == 0 else " no"} for i in range(20, 26)]


def _base():
    return zoo.tiny_gpt2(seed=0, n_layer=2, n_embd=32, n_head=2, n_positions=64)


@pytest.fixture(scope="module")
def run(tmp_path_factory, lm):
    root = tmp_path_factory.mktemp("alloc_lora")
    examples = [{"prompt": f"Q{i}: is {i} even?", "completion": " yes" if i % 2 == 0 else " no"} for i in range(16)]
    task = CausalLMTask(lm.tok, max_length=48)
    refs = train_lora(add_lora(_base(), CONFIG), task, examples, root / "run", CONFIG, progress=False)
    return root, refs, task


@pytest.mark.slow
def test_lora_run_allocates_only_to_adapter_tensors(run) -> None:
    root, refs, task = run
    assert len(refs) == 3 and all(r.path.rsplit("/", 1)[-1].startswith("checkpoint-") for r in refs)
    model = add_lora(_base(), CONFIG)
    n_adapters = sum(1 for n, _ in model.named_parameters() if "lora_" in n)
    result = allocate_run(model, CompletionLogProbBehaviour(), QUERIES, refs, task=task, checkpoint_loader=load_hf_checkpoint,
                          params="all", batch_size=4)
    assert len(result.intervals) == len(refs) - 1 == 2
    assert result.params and all("lora_" in n for n in result.params)
    assert len(result.params) == n_adapters  # every adapter tensor moved; no base tensor did
    assert result.unallocated == []
    modules = result.by("module")
    assert modules and all(g.endswith(" [LoRA]") for g in modules)
    assert set(result.by("layer")) == {"layer 0", "layer 1"}
    for iv in result.intervals:
        assert abs(iv.measured_change) > 1e-3
        assert iv.relative_error < 1e-2, iv.to_dict()
    # per adapter module = the sum of its lora_A and lora_B tensors
    iv = result.intervals[0]
    for g, values in modules.items():
        prefix = g[: -len(" [LoRA]")] + "."
        assert values[0] == pytest.approx(sum(v for n, v in iv.per_tensor.items() if n.startswith(prefix)), rel=1e-12)


@pytest.mark.slow
def test_allocate_cli_on_a_trainer_run(run, lm, tmp_path, h) -> None:
    root, refs, task = run
    model_dir = tmp_path / "tiny-model"
    _base().save_pretrained(model_dir)
    lm.tok.save_pretrained(model_dir)
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(json.dumps(dict(q, id=f"q{i}")) + "\n" for i, q in enumerate(QUERIES)))
    out, report = tmp_path / "alloc.json", tmp_path / "alloc.html"
    r = CliRunner().invoke(app, [str(a) for a in (
        "allocate", "--hf-model", model_dir, "--checkpoints", root / "run", "--queries", queries, "--behaviour", "logprob",
        "--max-length", 48, "--points", 4, "--level", "layer", "--out", out, "--report", report, "--no-progress")])
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert data["rule"] == "gauss" and data["points"] == 4 and len(data["intervals"]) == 2
    assert all("lora_" in n for n in data["params"])
    lib = allocate_run(add_lora(_base(), CONFIG), CompletionLogProbBehaviour(), QUERIES, refs, task=task,
                       checkpoint_loader=load_hf_checkpoint, points=4)
    for got, want in zip(data["intervals"], lib.intervals):
        assert got["measured_change"] == pytest.approx(want.measured_change, rel=1e-6)
        assert got["allocated"] == pytest.approx(want.allocated, rel=1e-6)
    assert "layer 1" in r.output and "completeness error" in r.output
    assert "<script" not in h.without_scripts(report.read_text())
    r = CliRunner().invoke(app, ["allocate", "--hf-model", str(model_dir), "--checkpoints", str(root / "run"), "--queries",
                                 str(queries), "--from-init"])
    assert r.exit_code == 2 and "--from-init applies only with --task" in r.output
