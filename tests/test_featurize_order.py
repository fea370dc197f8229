"""Featurize's batch order (``batch_order``), its exact-norms setting
(``exact_norms``), logits only where the loss reads them, and a checkpoint the
model already holds not being read again.

Oracles: each example featurized alone (a batch of one: no padding, no
neighbours) for the rows of both batch orders; brute-force padding counts for
the batches the model saw; the full-logits loss for the shortened one.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from gradtrace import FeaturizeConfig, ProjectionConfig, featurize
from gradtrace.checkpoints import CheckpointRef, holds_weights_of
from gradtrace.errors import ConfigMismatchError, InputError, StoreError
from gradtrace.grads.compute import batch_plan
from gradtrace.lm.tasks import CausalLMTask, next_token_nll
from gradtrace.models import zoo
from gradtrace.scoring import Attributor, self_influence, self_influence_by_checkpoint
from gradtrace.store import GradientStore

TOL = 1e-6  # float32: largest difference of a unit-norm row entry between batch orders (measured 6e-8 on this model)

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


def _examples(n: int = 13) -> list[dict[str, str]]:
    """Prompt/completion pairs of very different lengths, in no order of length."""
    gen = np.random.default_rng(0)
    out = []
    for i in range(n):
        words = gen.choice(WORDS, size=int(gen.integers(1, 12)))
        out.append({"prompt": f"Q{i}: " + " ".join(words[: len(words) // 2 + 1]), "completion": " " + " ".join(words)})
    return out


@dataclasses.dataclass(frozen=True)
class ShapeSpy:
    """A causal-LM task that records the shape of every batch the model sees."""

    inner: Any
    shapes: list = dataclasses.field(default_factory=list, compare=False, repr=False)

    def collate(self, examples):  # type: ignore[no-untyped-def]
        return self.inner.collate(examples)

    def example_length(self, example):  # type: ignore[no-untyped-def]
        return self.inner.example_length(example)

    def per_example_loss(self, model, batch):  # type: ignore[no-untyped-def]
        self.shapes.append(tuple(batch["input_ids"].shape))
        return self.inner.per_example_loss(model, batch)


def tiny_llama(seed: int = 3) -> Any:
    """A two-layer Llama (SmolLM2's architecture: ``*_proj`` linear layers, tied embeddings) from a config."""
    import transformers

    config = transformers.LlamaConfig(vocab_size=len(zoo.byte_tokenizer()), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(config)
    return model.eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("order")
    model = tiny_llama()
    torch.save(model.state_dict(), root / "ckpt.pt")
    task = CausalLMTask(zoo.byte_tokenizer(), max_length=96)
    return model, task, [CheckpointRef(str(root / "ckpt.pt"), 0.5)]


def _config(**kw: Any) -> FeaturizeConfig:
    base = dict(params="*_proj.weight", projection=ProjectionConfig("kronecker", 64, seed=1),
                batch_size=4, shard_size=8)
    return FeaturizeConfig(**(base | kw))


def _rows(store: GradientStore) -> tuple[np.ndarray, np.ndarray]:
    feats = np.concatenate([store.features(0, a, b) for a, b in store.shard_ranges()])
    norms = np.concatenate([store.norms(0, a, b) for a, b in store.shard_ranges()])
    return feats, norms


def test_length_order_batches_longest_first_and_stores_rows_in_data_order(setup, tmp_path) -> None:
    model, task, refs = setup
    data = _examples()
    lengths = [task.example_length(e) for e in data]
    spies = {}
    stores = {}
    for order in ("file", "length"):
        spy = ShapeSpy(task)
        stores[order] = featurize(model, spy, refs, data, tmp_path / order, _config(batch_order=order), progress=False)
        spies[order] = spy.shapes
    # brute force: the batches each order must form (shards of 8 examples, batches of 4)
    for order, shapes in spies.items():
        want = []
        for a in range(0, len(data), 8):
            shard = list(range(a, min(a + 8, len(data))))
            if order == "length":
                shard = sorted(shard, key=lambda i: (-lengths[i], i))
            want += [(len(shard[k : k + 4]), max(lengths[i] for i in shard[k : k + 4])) for k in range(0, len(shard), 4)]
        assert shapes == want
    padded = {order: sum(b * t for b, t in shapes) for order, shapes in spies.items()}
    assert padded["length"] < padded["file"]
    # the oracle: each example alone (no padding, no neighbours)
    alone, _ = _rows(featurize(model, task, refs, data, tmp_path / "alone", _config(batch_size=1, batch_order="file"), progress=False))
    file_rows, file_norms = _rows(stores["file"])
    length_rows, length_norms = _rows(stores["length"])
    for rows in (file_rows, length_rows):
        np.testing.assert_allclose(rows, alone, rtol=0, atol=TOL)
    np.testing.assert_allclose(length_rows, file_rows, rtol=0, atol=TOL)
    np.testing.assert_allclose(length_norms, file_norms, rtol=1e-6, atol=0)
    assert stores["length"].manifest["config"]["batch_order"] == "length"
    assert stores["length"].config.batch_order == "length" and stores["file"].config.batch_order == "file"


def test_length_order_resumes_to_the_same_bytes(setup, tmp_path) -> None:
    model, task, refs = setup
    data = _examples()
    whole = featurize(model, task, refs, data, tmp_path / "whole", _config(batch_order="length"), progress=False)
    part = featurize(model, task, refs, data, tmp_path / "part", _config(batch_order="length"), progress=False)
    first = part.shard_ranges()[0]
    for p in (tmp_path / "part").rglob(f"rows_{first[0]:09d}_{first[1]:09d}.*"):
        if p.suffix == ".json":
            p.unlink()  # the shard's record is gone: it counts as missing
    resumed = featurize(model, task, refs, data, tmp_path / "part", _config(), progress=False)  # undecided: the store's own
    for a, b in whole.shard_ranges():
        assert whole.features(0, a, b).tobytes() == resumed.features(0, a, b).tobytes()
        assert whole.norms(0, a, b).tobytes() == resumed.norms(0, a, b).tobytes()


def test_undecided_order_keeps_an_old_store_s_and_new_stores_sort(setup, tmp_path) -> None:
    model, task, refs = setup
    data = _examples(6)
    new = featurize(model, task, refs, data, tmp_path / "new", _config(), progress=False)
    assert _config().batch_order is None and new.manifest["config"]["batch_order"] == "length"
    old = featurize(model, task, refs, data, tmp_path / "old", _config(batch_order="file"), progress=False)
    manifest = json.loads((tmp_path / "old" / "manifest.json").read_text())
    del manifest["config"]["batch_order"]  # as a store written before the setting existed
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(manifest))
    reopened = GradientStore.open(tmp_path / "old")
    assert reopened.settings.batch_order == "file" and reopened.config.batch_order == "file"
    again = featurize(model, task, refs, data, tmp_path / "old", _config(), progress=False)  # resumes it as it was written
    assert again.manifest["config"].get("batch_order") is None and again.complete
    assert _rows(again)[0].tobytes() == _rows(old)[0].tobytes()
    with pytest.raises(ConfigMismatchError, match=r"config\.batch_order: 'file' -> 'length'"):
        featurize(model, task, refs, data, tmp_path / "old", _config(batch_order="length"), progress=False)


def test_a_task_without_lengths_batches_in_data_order(setup, tmp_path) -> None:
    model, task, refs = setup
    data = _examples(9)

    class NoLengths:
        def collate(self, examples):  # type: ignore[no-untyped-def]
            return task.collate(examples)

        def per_example_loss(self, model, batch):  # type: ignore[no-untyped-def]
            return task.per_example_loss(model, batch)

    a = featurize(model, NoLengths(), refs, data, tmp_path / "a", _config(batch_order="length"), progress=False)
    b = featurize(model, NoLengths(), refs, data, tmp_path / "b", _config(batch_order="file"), progress=False)
    assert _rows(a)[0].tobytes() == _rows(b)[0].tobytes()


def test_batch_plan_is_a_stable_sort_by_length() -> None:
    assert batch_plan(3, 8, 2) == [range(3, 5), range(5, 7), range(7, 8)]
    assert batch_plan(3, 8, 2, [5, 9, 5, 1, 9]) == [[4, 7], [3, 5], [6]]
    with pytest.raises(InputError, match="one per example"):
        batch_plan(0, 3, 2, [1, 2])


def test_errors_name_the_example_in_the_data_whatever_the_order(setup, tmp_path) -> None:
    model, task, refs = setup
    data = _examples(6)
    data[4] = {"prompt": "only a prompt"}
    with pytest.raises(InputError, match=r"data: example 4: .*missing 'completion'"):
        featurize(model, task, refs, data, tmp_path / "bad", _config(batch_order="length"), progress=False)


# -- exact norms ---------------------------------------------------------------------------------------------------

def test_exact_norms_off_keeps_the_rows_and_says_so(setup, tmp_path) -> None:
    model, task, refs = setup
    data = _examples(10)
    on = featurize(model, task, refs, data, tmp_path / "on", _config(batch_order="length"), progress=False)
    off = featurize(model, task, refs, data, tmp_path / "off", _config(batch_order="length", exact_norms=False), progress=False)
    rows_on, norms_on = _rows(on)
    rows_off, norms_off = _rows(off)
    assert rows_on.tobytes() == rows_off.tobytes()  # the features do not depend on the norms being computed
    assert norms_on[:, 0].tobytes() == norms_off[:, 0].tobytes()
    assert (norms_off[:, 1] == 0).all() and (norms_on[:, 1] > 0).all()
    assert off.manifest["config"]["exact_norms"] is False and "exact_norms" not in on.manifest["config"]
    reopened = GradientStore.open(tmp_path / "off")
    assert not reopened.has_exact_norms and reopened.config.exact_norms is False and on.has_exact_norms
    assert FeaturizeConfig.from_dict(off.manifest["config"]) == _config(batch_order="length", exact_norms=False)
    for call in (lambda: self_influence(reopened), lambda: self_influence_by_checkpoint(reopened),
                 lambda: Attributor(reopened, model, task).self_influence("raw"),
                 lambda: reopened.exact_sqnorms(0, 0, 8)):
        with pytest.raises(InputError, match=r"exact squared gradient norms.*exact_norms=False.*--no-exact-norms"):
            call()
    # what does not read them works as before: the same scores from both stores
    att_on, att_off = Attributor(on, model, task), Attributor(off, model, task)
    np.testing.assert_array_equal(att_off.score(data[:3]), att_on.score(data[:3]))
    np.testing.assert_array_equal(att_off.score(data[:3], variant="cosine"), att_on.score(data[:3], variant="cosine"))
    with pytest.raises(ConfigMismatchError, match=r"config\.exact_norms: True -> False"):
        featurize(model, task, refs, data, tmp_path / "on", _config(batch_order="length", exact_norms=False), progress=False)


def test_exact_norms_of_a_kronecker_store_are_the_exact_gradient_norms(setup, tmp_path) -> None:
    model, task, refs = setup
    data = _examples(5)
    store = featurize(model, task, refs, data, tmp_path / "k", _config(batch_order="length"), progress=False)
    exact = featurize(model, task, refs, data, tmp_path / "x", _config(projection=ProjectionConfig("none"), batch_order="length"),
                      progress=False)
    np.testing.assert_allclose(_rows(store)[1][:, 1], _rows(exact)[1][:, 1], rtol=1e-4)
    np.testing.assert_allclose(_rows(exact)[1][:, 1], _rows(exact)[1][:, 0] ** 2, rtol=1e-4)


def test_exact_norms_setting_is_checked(tmp_path) -> None:
    with pytest.raises(InputError, match="exact_norms must be true or false; got 1"):
        FeaturizeConfig(exact_norms=1)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="batch_order must be one of \\('file', 'length'\\); got 'sorted'"):
        FeaturizeConfig(batch_order="sorted")
    with pytest.raises(InputError, match="exact_norms=False does not apply to projection.kind='factored'"):
        FeaturizeConfig(projection=ProjectionConfig("factored"), exact_norms=False)
    assert "exact_norms" not in FeaturizeConfig().to_dict() and "batch_order" not in FeaturizeConfig().to_dict()


def test_a_manifest_with_a_bad_batch_order_or_exact_norms_is_refused(setup, tmp_path) -> None:
    model, task, refs = setup
    featurize(model, task, refs, _examples(3), tmp_path / "s", _config(batch_order="length"), progress=False)
    path = tmp_path / "s" / "manifest.json"
    good = json.loads(path.read_text())
    for key, value, rule in (("batch_order", "random", "one of"), ("exact_norms", "no", "true or false")):
        bad = json.loads(json.dumps(good))
        bad["config"][key] = value
        path.write_text(json.dumps(bad))
        with pytest.raises(StoreError, match=rf"config\.{key}.*{rule}"):
            GradientStore.open(tmp_path / "s")


# -- logits only where the loss reads them -------------------------------------------------------------------------

def test_completion_loss_equals_the_full_logits_loss(setup) -> None:
    model, task, _ = setup
    batch = task.collate(_examples(7))
    full = next_token_nll(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"]).sum(1)
    short = task.per_example_loss(model, batch)
    torch.testing.assert_close(short, full, rtol=1e-6, atol=1e-5)
    seen = []
    handle = model.lm_head.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[1]))
    try:
        task.per_example_loss(model, batch)
    finally:
        handle.remove()
    first = int((batch["labels"][:, 1:] != -100).any(0).nonzero()[0, 0])
    assert seen == [batch["input_ids"].shape[1] - first] and first > 0  # the prompt before every completion got no logits


def test_a_model_without_logits_to_keep_gets_the_full_logits(setup) -> None:
    model, task, _ = setup
    batch = task.collate(_examples(4))

    class Plain(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids, attention_mask):  # type: ignore[no-untyped-def]
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    torch.testing.assert_close(task.per_example_loss(Plain(), batch), task.per_example_loss(model, batch), rtol=1e-6, atol=1e-5)


# -- a checkpoint the model already holds -----------------------------------------------------------------------------

def test_a_checkpoint_the_model_was_loaded_from_is_not_read_again(tmp_path, monkeypatch) -> None:
    from gradtrace.lm.load import load_model
    from gradtrace.models import hf_checkpoints

    folder = tmp_path / "m"
    zoo.tiny_gpt2(seed=5, n_layer=1, n_embd=16, n_head=2, n_positions=64).save_pretrained(folder)
    zoo.byte_tokenizer().save_pretrained(folder)
    model, _ = load_model(str(folder))
    weights = folder / "model.safetensors"
    assert holds_weights_of(model, weights)
    reads = []
    real = hf_checkpoints._read_weights
    monkeypatch.setattr(hf_checkpoints, "_read_weights", lambda path: reads.append(path) or real(path))
    hf_checkpoints.load_hf_checkpoint(model, CheckpointRef(str(folder), 1.0))
    assert reads == []
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # changed in place: the file must be read again
    assert not holds_weights_of(model, weights)
    hf_checkpoints.load_hf_checkpoint(model, CheckpointRef(str(folder), 1.0))
    assert reads == [weights] and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert holds_weights_of(model, weights)
    hf_checkpoints.load_hf_checkpoint(model, CheckpointRef(str(folder), 1.0))
    assert reads == [weights]
    other = tmp_path / "other"
    zoo.tiny_gpt2(seed=6, n_layer=1, n_embd=16, n_head=2, n_positions=64).save_pretrained(other)
    hf_checkpoints.load_hf_checkpoint(model, CheckpointRef(str(other), 1.0))
    assert reads == [weights, other / "model.safetensors"] and not holds_weights_of(model, weights)
    # a file rewritten since it was loaded is read again
    hf_checkpoints.load_hf_checkpoint(model, CheckpointRef(str(folder), 1.0))
    zoo.tiny_gpt2(seed=7, n_layer=1, n_embd=16, n_head=2, n_positions=64).save_pretrained(folder)
    assert not holds_weights_of(model, weights)


def test_the_explorer_ranks_a_store_without_exact_norms_by_its_projected_norms(setup, tmp_path) -> None:
    from gradtrace.explore.artefacts import ServeOptions
    from gradtrace.explore.kinds.store import StoreArtefact

    model, task, refs = setup
    featurize(model, task, refs, _examples(6), tmp_path / "off", _config(batch_order="length", exact_norms=False), progress=False)
    art = StoreArtefact("store-0", tmp_path / "off", ServeOptions())
    total, by = art.self_influence()
    store = GradientStore.open(tmp_path / "off")
    expected = np.stack([lr * store.norms(c, 0, store.n_examples)[:, 0] ** 2 for c, lr in enumerate(store.learning_rates)])
    np.testing.assert_allclose(by, expected, rtol=1e-12)
    np.testing.assert_allclose(total, expected.sum(axis=0), rtol=1e-12)
    assert "projected gradients" in art.summary()
