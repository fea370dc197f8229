"""Devices and model dtypes: batches moved whatever their structure, the
model given back as it came, ``--device cpu`` byte-identical to the default,
CUDA asked for without CUDA refused naming the option, bfloat16 scores within
a stated tolerance of float32, the device memory estimate, and the exact
top-k of the device path (candidates cut per block) against the host merge."""

from __future__ import annotations

import collections
import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import gradtrace as gt
from gradtrace.cli import app
from gradtrace.devices import Placement, placed, resolve_device, resolve_model_dtype, to_device
from gradtrace.errors import InputError
from gradtrace.featurize import device_memory, estimate_resources
from gradtrace.grads.per_example import GradientFeaturizer
from gradtrace.models import zoo
from gradtrace.models.hf import CausalLMTask
from gradtrace.scoring import attributor as attributor_module
from gradtrace.scoring.attributor import merge_top_k, block_candidates, merge_candidates

META = torch.device("meta")  # a device other than the host that every machine has: moving to it is visible
Pair = collections.namedtuple("Pair", "x y")


@dataclasses.dataclass(frozen=True)
class Frozen:
    ids: torch.Tensor
    name: str


def test_to_device_walks_every_structure_and_keeps_types() -> None:
    from transformers import BatchEncoding

    x = torch.ones(2, 3)
    enc = BatchEncoding({"input_ids": torch.tensor([[1, 2]]), "mask": torch.ones(1, 2)})
    batch = {"a": [x, (x, "text")], "pair": Pair(x, torch.tensor([1])), "frozen": Frozen(torch.tensor([3]), "n"),
             "enc": enc, "n": 3}
    moved = to_device(batch, META)
    assert moved["a"][0].device == META and moved["a"][1][0].device == META and moved["a"][1][1] == "text"
    assert isinstance(moved["a"][1], tuple) and isinstance(moved["pair"], Pair) and moved["pair"].y.device == META
    assert isinstance(moved["frozen"], Frozen) and moved["frozen"].ids.device == META and moved["frozen"].name == "n"
    assert type(moved["enc"]) is BatchEncoding and moved["enc"]["input_ids"].device == META and moved["n"] == 3
    assert batch["a"][0].device.type == "cpu" and enc["input_ids"].device.type == "cpu"  # the input is untouched
    cast = to_device(batch, None, torch.bfloat16)  # the model dtype reaches floating tensors only
    assert cast["a"][0].dtype == torch.bfloat16 and cast["enc"]["input_ids"].dtype == torch.int64
    assert cast["pair"].y.dtype == torch.int64 and cast["enc"]["mask"].dtype == torch.bfloat16
    assert to_device(batch, None) is batch


def test_device_names_and_missing_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("CPU") == torch.device("cpu")
    assert resolve_device(None) is None
    for name in ("cuda", "cuda:1"):
        with pytest.raises(InputError, match=r"--device .*CUDA is not available.*--device cpu"):
            resolve_device(name, "--device")
    for bad in ("gpu", "cuda:x", 3):
        with pytest.raises(InputError, match="device must be one of auto"):
            resolve_device(bad)
    assert resolve_model_dtype("bfloat16") == torch.bfloat16 and resolve_model_dtype(None) is None
    with pytest.raises(InputError, match="--model-dtype must be one of float32 | bfloat16 | float16 | float64; got 'int8'"):
        resolve_model_dtype("int8", "--model-dtype")


def test_placed_gives_the_model_back_as_it_came(h) -> None:
    model = h.make_mlp().float()
    model.register_buffer("steps", torch.tensor([7]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weight = model[0].weight
    with placed(model, torch.device("cpu"), torch.bfloat16):  # (a meta device could not give the values back)
        assert model[0].weight.dtype == torch.bfloat16 and model[0].weight is weight  # the same Parameter: ties survive
        assert model.steps.dtype == torch.int64
    for k, v in model.state_dict().items():
        assert v.device.type == "cpu" and v.dtype == before[k].dtype
    assert not torch.equal(model[0].weight, before["0.weight"])  # rounded to bfloat16 and back
    model.load_state_dict(before)
    with gt.grads.compute.restored(model), placed(model, None, torch.bfloat16):  # the two together: weights exact too
        pass
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# -- CPU path: byte-identical ------------------------------------------------------

@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory, h):
    root = tmp_path_factory.mktemp("devices")
    xy = h.classification_data(19, seed=1)
    ckpts = h.write_checkpoints(lambda s: h.make_mlp(seed=s), root / "ckpt", [0.1, 0.05])
    return root, xy, ckpts


@pytest.mark.parametrize("projection", [gt.ProjectionConfig("none"), gt.ProjectionConfig("kronecker", 4, seed=2)])
def test_device_cpu_writes_the_bytes_of_the_default(mlp_run, h, projection) -> None:
    root, xy, ckpts = mlp_run
    config = gt.FeaturizeConfig(projection=projection, batch_size=4, shard_size=7)
    name = projection.kind
    default = gt.featurize(h.make_mlp(), gt.ClassificationTask(), ckpts, xy, root / f"default-{name}", config, progress=False)
    model = h.make_mlp()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    cpu = gt.featurize(model, gt.ClassificationTask(), ckpts, xy, root / f"cpu-{name}", config, progress=False,
                       device="cpu", model_dtype="float64")  # the model's own dtype: nothing recorded, nothing cast
    assert h.store_files(cpu.root) == h.store_files(default.root)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


TASK = '''
from gradtrace.demos.digits import DigitsConfig, make_task as digits_task

def make_task():
    return digits_task(r"{work}", DigitsConfig(hidden=8, epochs=2, n_checkpoints=2))
'''


def test_cli_device_cpu_equals_default_and_cuda_without_cuda_is_exit_2(tmp_path: Path, h, monkeypatch) -> None:
    runner = CliRunner()
    task = tmp_path / "task.py"
    task.write_text(TASK.format(work=tmp_path / "run"))
    target = f"{task}:make_task"
    common = ["--task", target, "--projection", "kronecker", "--dim", "16", "--shard-size", "500", "--no-progress"]
    r = runner.invoke(app, ["featurize", "--out", str(tmp_path / "default"), *common])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["featurize", "--out", str(tmp_path / "cpu"), "--device", "cpu", "--model-dtype", "float32", *common])
    assert r.exit_code == 0, r.output
    assert h.store_files(tmp_path / "cpu") == h.store_files(tmp_path / "default")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for args in (["featurize", "--out", str(tmp_path / "gpu"), "--device", "cuda", *common],
                 ["query", str(tmp_path / "cpu"), "--task", target, "--device", "cuda:0"],
                 ["self-influence", str(tmp_path / "cpu"), "--device", "cuda"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, r.output
        assert "--device" in r.output and "CUDA is not available" in r.output
    assert not (tmp_path / "gpu").exists()
    r = runner.invoke(app, ["featurize", "--out", str(tmp_path / "x"), "--model-dtype", "half", *common])
    assert r.exit_code == 2 and "--model-dtype must be one of" in r.output


# -- bfloat16 ----------------------------------------------------------------------

BF16_REL_TOL = 0.03  # docs/scale.md states it: |score_bf16 - score_fp32| <= 3% of the largest |score_fp32| of the query


def test_bfloat16_scores_are_within_the_stated_tolerance_of_float32(tmp_path: Path) -> None:
    tok = zoo.byte_tokenizer()
    task = CausalLMTask(tok, max_length=40)
    make = lambda: zoo.tiny_gpt2(seed=0, n_layer=1, n_embd=32, n_head=2, n_positions=64)  # noqa: E731
    ckpts = []
    for i, lr in enumerate((0.1, 0.05)):
        path = tmp_path / f"c{i}.pt"
        torch.save(zoo.tiny_gpt2(seed=10 + i, n_layer=1, n_embd=32, n_head=2, n_positions=64).state_dict(), path)
        ckpts.append((str(path), lr))
    train = [{"prompt": f"Q{i}: {i} plus {i}?", "completion": f" {2 * i}"} for i in range(10)]
    queries = [{"prompt": "Q3: 3 plus 3?", "completion": " 6"}, {"prompt": "Name it.", "completion": " blue"}]
    config = gt.FeaturizeConfig(params=("transformer.h.0.mlp.*",), projection=gt.ProjectionConfig("dense", 64, seed=1),
                                batch_size=4, shard_size=6)
    scores = {}
    for dtype in ("float32", "bfloat16"):
        model = make()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # vmap falls back to a loop on GPT-2
            store = gt.featurize(model, task, ckpts, train, tmp_path / dtype, config, progress=False, model_dtype=dtype)
            att = gt.Attributor(store, make(), task, model_dtype=dtype)
            scores[dtype] = att.score(queries)
        assert model.transformer.h[0].mlp.c_fc.weight.dtype == torch.float32  # given back as it came
        assert store.manifest["model"].get("dtype") == (None if dtype == "float32" else "bfloat16")
    ref, low = scores["float32"], scores["bfloat16"]
    err = np.abs(low - ref).max(axis=1) / np.abs(ref).max(axis=1)
    assert (err > 0).all(), "bfloat16 gave float32's scores exactly: the model was not run in bfloat16"
    assert (err <= BF16_REL_TOL).all(), err


def test_a_store_is_resumed_only_with_its_model_dtype(mlp_run, h) -> None:
    root, xy, ckpts = mlp_run
    config = gt.FeaturizeConfig(batch_size=4, shard_size=7)
    gt.featurize(h.make_mlp().float(), gt.ClassificationTask(), ckpts, (xy[0].float(), xy[1]), root / "bf",
                 config, progress=False, model_dtype="bfloat16")
    with pytest.raises(gt.errors.ConfigMismatchError, match="model.dtype"):
        gt.featurize(h.make_mlp().float(), gt.ClassificationTask(), ckpts, (xy[0].float(), xy[1]), root / "bf", config,
                     progress=False)


# -- the up-front estimate ---------------------------------------------------------

def test_estimate_covers_device_memory(mlp_run, h) -> None:
    root, xy, ckpts = mlp_run
    model = h.make_mlp(d_in=5, hidden=4, n_out=3)  # float64 weights: 5*4+4 + 4*3+3 = 39 numbers
    store = gt.featurize(model, gt.ClassificationTask(), ckpts, xy, root / "est", gt.FeaturizeConfig(
        projection=gt.ProjectionConfig("kronecker", 4, seed=0), batch_size=8), progress=False)
    featurizer = GradientFeaturizer(store.param_names, store.config.projection)
    on_gpu = Placement(torch.device("cuda", 0), torch.bfloat16)  # nothing moves: the estimate only reads sizes
    # weights 39 x 2 bytes; kronecker side 2: layer 1 (6 in with bias, 4 out) -> 6*2 + 4*2, layer 2 (5, 3) -> 5*2 + 3*2;
    # features k = 2*2 + 2*2 = 8 float32, two copies of a batch of 8
    expected = 39 * 2 + (6 * 2 + 4 * 2 + 5 * 2 + 3 * 2) * 4 + 8 * 8 * 4 * 2
    assert device_memory(featurizer, model, 8, on_gpu) == expected
    est = estimate_resources(store, featurizer, model, 19, placement=on_gpu)
    assert est.device == "cuda:0" and est.device_memory_bytes == expected
    assert "on cuda:0 ~" in est.describe() and "activations" in est.describe()
    host = estimate_resources(store, featurizer, model, 19, placement=Placement(torch.device("cpu"), None))
    assert host.device is None and "on cuda" not in host.describe()
    dense = GradientFeaturizer(store.param_names, gt.ProjectionConfig("dense", 5, seed=0))
    # dense: the 39 x 5 matrix, three batches of exact gradients and two of features, float64 like the model
    assert device_memory(dense, model, 8, Placement(torch.device("cuda"), None)) == 39 * 8 + 39 * 5 * 8 + 8 * 39 * 8 * 3 + 8 * 5 * 8 * 2


# -- exact top-k on the device ---------------------------------------------------

def brute_top_k(scores: np.ndarray, k: int, largest: bool) -> tuple[np.ndarray, np.ndarray]:
    order = np.stack([np.lexsort((np.arange(row.size), -row if largest else row))[:k] for row in scores])
    return np.take_along_axis(scores, order, 1), order


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("k", [1, 4, 13])
def test_device_candidates_merge_to_the_exact_top_k_with_ties(largest: bool, k: int) -> None:
    gen = np.random.default_rng(k)
    scores = gen.integers(-3, 4, size=(5, 40)).astype(np.float32)  # many ties
    widths = [3, 9, 1, 17, 10]
    starts = np.cumsum([0] + widths[:-1])
    host_s, host_i = np.empty((5, 0)), np.empty((5, 0), dtype=np.int64)
    for at, w in zip(starts, widths):
        host_s, host_i = merge_top_k(host_s, host_i, scores[:, at : at + w], int(at), k, largest)
    want_s, want_i = brute_top_k(scores.astype(np.float64), k, largest)
    np.testing.assert_array_equal(host_i, want_i)
    for order in (list(range(len(widths))), [3, 0, 4, 2, 1]):  # blocks in order, and in any order
        dev_s, dev_i = np.empty((5, 0)), np.empty((5, 0), dtype=np.int64)
        for j in order:
            at, w = int(starts[j]), widths[j]
            block = scores[:, at : at + w]
            rows, cols, vals = block_candidates(torch.from_numpy(block), dev_s, k, largest)
            assert rows.size <= block.size
            dev_s, dev_i = merge_candidates(dev_s, dev_i, rows, cols, vals, at, w, k, largest)
        np.testing.assert_array_equal(dev_i, want_i)
        np.testing.assert_array_equal(dev_s, want_s)


def test_attributor_device_path_equals_the_host_path(mlp_run, h, monkeypatch) -> None:
    root, xy, ckpts = mlp_run
    store = gt.featurize(h.make_mlp(), gt.ClassificationTask(), ckpts, xy, root / "scan",
                         gt.FeaturizeConfig(batch_size=4, shard_size=5), progress=False)
    att = gt.Attributor(store, h.make_mlp(), gt.ClassificationTask())
    qf = att.query_features(h.classification_data(3, seed=9))
    plain = {largest: att.top_k(qf, k=6, largest=largest) for largest in (True, False)}
    # the device branch (candidates cut where the block is) run on the host tensors
    monkeypatch.setattr(attributor_module.Attributor, "_on_device", property(lambda self: True))
    for largest, want in plain.items():
        got = att.top_k(qf, k=6, largest=largest)
        np.testing.assert_array_equal(got.indices, want.indices)
        np.testing.assert_array_equal(got.scores, want.scores)
