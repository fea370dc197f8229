"""Inputs that gave a traceback or a silent wrong answer are InputErrors
naming the input, the rule and the value.

Seen cases: a classification label of -100 gave self-influence 0 without a
word (cross_entropy's ignore_index) and label 7 of a 3-class model
``IndexError: Target 7 is out of bounds``; float64 inputs for a float32
model, inputs or queries of the wrong width and an unbatched example
``(x[0], y[0])`` gave torch tracebacks; a tuple of numpy arrays was read as
two examples; ``top_k(k=np.int64(3))`` was refused.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gradtrace as gt
from gradtrace.errors import InputError


def _relabel(data, index, value):
    x, y = data
    y = y.clone()
    y[index] = value
    return x, y


# -- labels -------------------------------------------------------------------------------------

@pytest.mark.parametrize("label", [-100, -1, 3, 7])
@pytest.mark.parametrize("method", ["auto", "loop"])
def test_a_label_outside_the_classes_is_refused_naming_example_value_and_range(run, label, method):
    with pytest.raises(InputError, match=rf"^data: example 5 has label {label}, outside the class indices \[0, 3\) of this 3-class model"):
        run.featurize(_relabel(run.train, 5, label), config=run.config(method=method))


def test_a_masked_label_says_why_it_is_refused(run):
    with pytest.raises(InputError, match="-100 masks a label in cross_entropy.*gradtrace does not mask classification labels"):
        run.featurize(_relabel(run.train, 0, -100))


def test_a_masked_label_under_vmap_is_a_non_finite_loss_naming_the_example(run):
    """vmap cannot read label values while it traces: the example's loss is NaN instead of 0."""
    with pytest.raises(InputError, match=r"training example 5 of data .* non-finite loss \(nan\) at checkpoint 0"):
        run.featurize(_relabel(run.train, 5, -100), config=run.config(method="vmap"))
    store = run.featurize(_relabel(run.train, 5, -100), "skip", config=run.config(method="vmap"), on_nonfinite="skip")
    assert store.skipped_indices.tolist() == [5]


def test_a_label_outside_the_classes_is_refused_in_queries_and_direct_self_influence(run):
    store = run.featurize()
    attributor = gt.Attributor(store, run.model, run.task)
    with pytest.raises(InputError, match=r"^queries: example 2 has label 7, outside the class indices \[0, 3\)"):
        attributor.top_k(_relabel(run.queries, 2, 7), k=2)
    with pytest.raises(InputError, match=r"^queries: example 1 has label -100"):
        attributor.score(_relabel(run.queries, 1, -100), behaviour=gt.LogitMarginBehaviour())
    with pytest.raises(InputError, match=r"^data: example 4 has label -100"):
        gt.self_influence_from_checkpoints(run.model, run.task, run.ckpts, _relabel(run.train, 4, -100), progress=False)


def test_float_labels_that_are_not_probabilities_are_refused(run):
    x, y = run.train
    with pytest.raises(InputError, match="labels: classification labels must be an integer tensor of class indices; got a torch.float64 tensor"):
        run.featurize((x, y.double()))


def test_soft_labels_shaped_like_the_logits_still_work(run):
    x, y = run.train
    hard = run.featurize(out="hard")
    soft = run.featurize((x, torch.nn.functional.one_hot(y, 3).double()), out="soft")
    np.testing.assert_allclose(gt.self_influence(soft), gt.self_influence(hard), rtol=1e-12)


# -- inputs the model cannot take -------------------------------------------------------------

def test_float64_inputs_for_a_float32_model_name_both_dtypes(run, h):
    model = h.make_mlp(seed=0).float()
    ckpts = h.write_checkpoints(lambda s: h.make_mlp(seed=s).float(), run.dir / "ck32", [0.1])
    with pytest.raises(InputError, match=r"^data: examples 0-2 hold torch.float64 tensors but the model's parameters are torch.float32"):
        run.featurize(model=model, ckpts=ckpts)
    x, y = run.train
    store = run.featurize((x.float(), y), model=model, ckpts=ckpts, out="ok")
    with pytest.raises(InputError, match=r"^queries: examples 0-2 hold torch.float64 tensors but the model's parameters are torch.float32"):
        gt.Attributor(store, model, run.task).top_k(run.queries, k=2)


def test_inputs_of_the_wrong_width_name_the_examples_and_torchs_message(run):
    x, y = run.train
    with pytest.raises(InputError, match=r"^data: the model failed on examples 0-2 \(RuntimeError: mat1 and mat2 shapes cannot be multiplied"):
        run.featurize((torch.cat([x, x[:, :1]], dim=1), y))
    store = run.featurize()
    xq, yq = run.queries
    with pytest.raises(InputError, match=r"^queries: the model failed on examples 0-2 \(RuntimeError: mat1 and mat2 shapes"):
        gt.Attributor(store, run.model, run.task).top_k((xq[:, :4], yq), k=2)


def test_an_unbatched_example_is_refused_with_the_fix(run):
    x, y = run.train
    with pytest.raises(InputError, match=r"^data: member 1 of the tuple is 0-d.*\(x\[0:1\], y\[0:1\]\)"):
        run.featurize((x[0], y[0]))
    store = run.featurize()
    xq, yq = run.queries
    with pytest.raises(InputError, match=r"^queries: member 1 of the tuple is 0-d"):
        gt.Attributor(store, run.model, run.task).score((xq[0], yq[0]))
    one = gt.Attributor(store, run.model, run.task).score((xq[0:1], yq[0:1]))
    assert one.shape == (1, 10)


def test_a_tuple_of_numpy_arrays_is_read_as_columns(run, h):
    x, y = run.train
    as_numpy = run.featurize((x.numpy(), y.numpy()), out="numpy")
    as_tensors = run.featurize(out="tensors")
    assert as_numpy.n_examples == 10
    assert h.store_files(as_numpy.root) == h.store_files(as_tensors.root)


def test_a_list_of_arrays_of_different_shapes_is_refused(run):
    x, y = run.train
    with pytest.raises(InputError, match=r"^data: a list is read as a sequence of examples.*different shapes.*pass a tuple, \(X, y\)"):
        run.featurize([x.numpy(), y.numpy()])


def test_a_single_value_is_refused(run):
    with pytest.raises(InputError, match="data: got a 0-d Tensor"):
        run.featurize(torch.tensor(1.0))


# -- top_k's k ------------------------------------------------------------------------------------

def test_top_k_accepts_any_integer_and_refuses_the_rest(run):
    attributor = gt.Attributor(run.featurize(), run.model, run.task)
    want = attributor.top_k(run.queries, k=3)
    got = attributor.top_k(run.queries, k=np.int64(3))
    np.testing.assert_array_equal(got.indices, want.indices)
    for k in (True, np.bool_(True), 2.0, 0, -1, "3"):
        with pytest.raises(InputError, match=r"k must be a positive integer; got"):
            attributor.top_k(run.queries, k=k)
