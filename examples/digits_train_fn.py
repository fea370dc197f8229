"""A `--train-fn` file for `gradtrace validate`: retrains the digits MLP of
`examples/digits_task.py` on a subset of its training set.

`make_train_fn()` returns `train_fn(train_indices, seed) -> model`; the same
indices and seed give the same parameters. Copy it as a template.
"""

from gradtrace.demos.digits_retrain import digits_train_fn


def make_train_fn():
    return digits_train_fn()
