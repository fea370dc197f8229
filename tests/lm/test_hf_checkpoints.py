"""Reading real Trainer runs: checkpoint-N folders, learning rates from
trainer_state.json, strict adapter loading, and Adam's moments from
optimizer.pt (checked against the AdamW update between two checkpoints)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gradtrace.errors import CheckpointError, InputError
from gradtrace.models.hf_checkpoints import adam_transform, load_hf_checkpoint, read_adam_state, trainer_checkpoints
from gradtrace.lm.lora import LoraTrainConfig, add_lora, train_lora
from gradtrace.models import zoo

CONFIG = LoraTrainConfig(epochs=1, lr=5e-3, batch_size=4, rank=2, target_modules=("c_attn",), n_checkpoints=5, seed=0)


def _examples(n: int = 20) -> list[dict[str, str]]:
    return [{"prompt": f"Q{i}: what is {i} + 1?", "completion": f" {i + 1}"} for i in range(n)]


def _fresh():
    return add_lora(zoo.tiny_gpt2(seed=0, n_layer=1, n_embd=32, n_head=2, n_positions=64), CONFIG)


@pytest.fixture(scope="module")
def run(tmp_path_factory, lm):
    from gradtrace.models.hf import CausalLMTask

    out = tmp_path_factory.mktemp("run")
    task = CausalLMTask(lm.tok, max_length=48)
    refs = train_lora(_fresh(), task, _examples(), out, CONFIG, progress=False)
    return out, refs, task


def test_trainer_run_gives_checkpoints_with_logged_learning_rates(run) -> None:
    out, refs, task = run
    assert [r.step for r in refs] == [1, 2, 3, 4, 5]
    assert [Path(r.path).name for r in refs] == [f"checkpoint-{s}" for s in range(1, 6)]
    history = json.loads((out / "checkpoint-5" / "trainer_state.json").read_text())["log_history"]
    logged = {e["step"]: e["learning_rate"] for e in history if "learning_rate" in e}
    assert [r.lr for r in refs] == [logged[s] for s in range(1, 6)] == [CONFIG.lr] * 5
    assert trainer_checkpoints(out) == refs
    assert train_lora(_fresh(), task, _examples(), out, CONFIG) == refs  # done.json: reused, not retrained
    # where it trains is not part of the settings: the finished run is reused on any device
    assert train_lora(_fresh(), task, _examples(), out, CONFIG, device="cpu") == refs


def test_training_device_is_checked_before_training(tmp_path, lm) -> None:
    from gradtrace.models.hf import CausalLMTask

    task = CausalLMTask(lm.tok, max_length=48)
    with pytest.raises(InputError, match="device must be one of"):
        train_lora(_fresh(), task, _examples(), tmp_path / "a", CONFIG, progress=False, device="gpu")
    # a GPU this machine does not have; the Trainer takes cuda:0 only
    missing = "cuda:1" if torch.cuda.device_count() > 1 else ("cuda:9" if torch.cuda.is_available() else "cuda")
    with pytest.raises(InputError, match="cuda"):
        train_lora(_fresh(), task, _examples(), tmp_path / "b", CONFIG, progress=False, device=missing)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_learning_rate_is_the_last_logged_at_or_before_the_step(tmp_path) -> None:
    for step in (10, 20, 30):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        save_file({"x": torch.zeros(1)}, str(d / "adapter_model.safetensors"))
    history = [{"step": 5, "learning_rate": 0.5}, {"step": 10, "learning_rate": 0.4, "loss": 1.0},
               {"step": 15, "learning_rate": 0.3}, {"step": 25, "learning_rate": 0.1}, {"step": 30, "train_loss": 1.0}]
    (tmp_path / "checkpoint-30" / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    refs = trainer_checkpoints(tmp_path)  # the run folder's last state file serves checkpoints without their own
    assert [(r.step, r.lr) for r in refs] == [(10, 0.4), (20, 0.3), (30, 0.1)]
    assert [r.lr for r in trainer_checkpoints(tmp_path, lr=0.01)] == [0.01] * 3


def test_checkpoint_folders_without_learning_rates_raise(tmp_path) -> None:
    d = tmp_path / "checkpoint-3"
    d.mkdir()
    save_file({"x": torch.zeros(1)}, str(d / "adapter_model.safetensors"))
    with pytest.raises(InputError, match="no trainer_state.json"):
        trainer_checkpoints(tmp_path)
    (d / "trainer_state.json").write_text(json.dumps({"log_history": [{"step": 3, "loss": 1.0}]}))
    with pytest.raises(InputError, match="logs no learning_rate"):
        trainer_checkpoints(tmp_path)
    with pytest.raises(InputError, match="no checkpoint-N folders and no weights"):
        trainer_checkpoints(tmp_path / "checkpoint-3" / ".." / "..")


def test_adapter_loads_exactly_and_other_adapters_are_refused(run, tmp_path) -> None:
    out, refs, task = run
    model = _fresh()
    load_hf_checkpoint(model, refs[2])
    saved = load_file(str(Path(refs[2].path) / "adapter_model.safetensors"))
    params = dict(model.named_parameters())
    for key, value in saved.items():
        assert torch.equal(params[key.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default.")], value)
    # an adapter of another rank: shapes differ
    other = add_lora(zoo.tiny_gpt2(seed=0, n_layer=1, n_embd=32, n_head=2, n_positions=64),
                     LoraTrainConfig(rank=4, target_modules=("c_attn",)))
    with pytest.raises(CheckpointError, match="does not match the model's shapes"):
        load_hf_checkpoint(other, refs[0])
    # an adapter on other modules: keys differ
    wrong = add_lora(zoo.tiny_gpt2(seed=0, n_layer=1, n_embd=32, n_head=2, n_positions=64),
                     LoraTrainConfig(rank=2, target_modules=("c_fc",)))
    with pytest.raises(CheckpointError, match="does not match the model's LoRA parameters: missing keys"):
        load_hf_checkpoint(wrong, refs[0])
    # an adapter loaded into a model without LoRA
    with pytest.raises(CheckpointError, match="no LoRA parameters"):
        load_hf_checkpoint(zoo.tiny_gpt2(seed=0, n_layer=1, n_embd=32, n_head=2, n_positions=64), refs[0])


def test_full_model_checkpoint_of_another_model_is_refused(tmp_path) -> None:
    small = zoo.tiny_gpt2(seed=0, n_layer=1, n_embd=32, n_head=2, n_positions=64)
    small.save_pretrained(tmp_path / "small")
    same = zoo.tiny_gpt2(seed=5, n_layer=1, n_embd=32, n_head=2, n_positions=64)
    load_hf_checkpoint(same, tmp_path / "small")  # tied lm_head saved once: still loads
    assert torch.equal(same.transformer.wte.weight, small.transformer.wte.weight)
    deeper = zoo.tiny_gpt2(seed=0, n_layer=2, n_embd=32, n_head=2, n_positions=64)
    with pytest.raises(CheckpointError, match="is not a checkpoint of this model: missing keys"):
        load_hf_checkpoint(deeper, tmp_path / "small")
    wider = zoo.tiny_gpt2(seed=0, n_layer=1, n_embd=64, n_head=2, n_positions=64)
    with pytest.raises(CheckpointError, match="does not match the model's shapes"):
        load_hf_checkpoint(wider, tmp_path / "small")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_hf_checkpoint(same, tmp_path / "nowhere")


def test_adam_moments_reproduce_the_adamw_step_between_checkpoints(run) -> None:
    """p_5 = p_4 - lr * m_hat / (sqrt(v_hat) + eps) with the moments of
    checkpoint-5 (no weight decay): the moments are mapped to the right names."""
    out, refs, task = run
    model = _fresh()
    state = read_adam_state(refs[4].path, model)
    p4 = {n: p.detach().clone() for n, p in load_hf_checkpoint(_fresh(), refs[3]).named_parameters() if "lora_" in n}
    p5 = {n: p.detach().clone() for n, p in load_hf_checkpoint(_fresh(), refs[4]).named_parameters() if "lora_" in n}
    step = 5
    for name in p4:
        m_hat = state.exp_avg[name] / (1 - state.beta1**step)
        v_hat = state.exp_avg_sq[name] / (1 - state.beta2**step)
        torch.testing.assert_close(p5[name], p4[name] - CONFIG.lr * m_hat / (v_hat.sqrt() + state.eps), rtol=1e-4, atol=1e-7)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert adam_transform(model, refs[4], names).exp_avg.keys() == set(names)


def test_optimizer_state_of_another_model_is_refused(run, tmp_path) -> None:
    out, refs, task = run
    bigger = add_lora(zoo.tiny_gpt2(seed=0, n_layer=2, n_embd=32, n_head=2, n_positions=64), CONFIG)
    with pytest.raises(CheckpointError, match="holds 2 parameters; the model has 4 trainable ones"):
        read_adam_state(refs[0].path, bigger)
    bare = tmp_path / "checkpoint-1"
    shutil.copytree(refs[0].path, bare)
    (bare / "optimizer.pt").unlink()
    with pytest.raises(CheckpointError, match="has no optimizer.pt"):
        read_adam_state(bare, _fresh())


def test_an_interrupted_run_resumes_to_the_same_checkpoints(run, tmp_path) -> None:
    """A run killed after its second checkpoint (simulated: the later
    checkpoints and done.json removed) resumes from checkpoint-2 and ends with
    the weights and optimizer state of the uninterrupted run."""
    out, refs, task = run
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    (resumed / "done.json").unlink()
    for step in (3, 4, 5):
        shutil.rmtree(resumed / f"checkpoint-{step}")
    (resumed / "checkpoint-3").mkdir()  # a checkpoint the kill left half-written: no trainer_state.json
    (resumed / "checkpoint-3" / "adapter_model.safetensors").write_bytes(b"partial")
    kept = resumed / "checkpoint-1" / "adapter_model.safetensors"
    kept.write_bytes(b"not rewritten by a resumed run")  # a run started afresh would save checkpoint-1 again
    new = train_lora(_fresh(), task, _examples(), resumed, CONFIG, progress=False)
    assert [r.step for r in new] == [1, 2, 3, 4, 5]
    assert kept.read_bytes() == b"not rewritten by a resumed run"
    for step in (3, 4, 5):
        a = load_file(str(out / f"checkpoint-{step}" / "adapter_model.safetensors"))
        b = load_file(str(resumed / f"checkpoint-{step}" / "adapter_model.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-7)
    state_a = torch.load(out / "checkpoint-5" / "optimizer.pt", weights_only=True)["state"]
    state_b = torch.load(resumed / "checkpoint-5" / "optimizer.pt", weights_only=True)["state"]
    for i in state_a:
        torch.testing.assert_close(state_b[i]["exp_avg_sq"], state_a[i]["exp_avg_sq"], rtol=1e-5, atol=1e-12)


def test_checkpoints_of_a_run_with_other_settings_are_refused(run, tmp_path) -> None:
    out, refs, task = run
    other = tmp_path / "other"
    shutil.copytree(out, other)
    (other / "done.json").unlink()
    changed = LoraTrainConfig(**{**CONFIG.to_dict(), "lr": CONFIG.lr * 2})
    with pytest.raises(InputError, match="other settings"):
        train_lora(_fresh(), task, _examples(), other, changed, progress=False)
