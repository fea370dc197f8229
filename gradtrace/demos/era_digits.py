"""ERA vs unlearning baselines on digits: forget classes 5-9.

The training set is scikit-learn's digits (no flipped labels); the forget
set is every training image of classes 5-9, of which ``label_fraction`` is
labelled (ERA routes, and filtering removes, only the labelled ones). The
held-out test images of classes 5-9 are split in two halves: the relearning
pool (the attacker's data) and the rest, itself halved into a validation set
(to choose each method's settings) and the forget evaluation set; the test
images of classes 0-4 are halved into retain validation and evaluation sets.

Metrics: forget is the mean cross-entropy (nats) on the forget evaluation
images (higher is better forgotten; the attacker minimises it), as the
gradient-routing paper measures relearning by the forget *loss*: accuracy
saturates (a model that never saw classes 5-9 reaches 0.84 forget accuracy
after 16 examples) and hides how far an attacker still is from the base
model. Forget accuracy is also recorded (``extra``). Retain is the
accuracy on classes 0-4. Every method's settings are chosen by one rule
(:data:`DIGITS_RULE`): the highest validation forget loss whose validation
retain accuracy is at most 2 points below the base model's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..task import ClassificationTask
from ..unlearn.compare import CompareConfig, UnlearnSpec
from ..unlearn.methods import UnlearnConfig
from ..unlearn.relearn import RelearnConfig
from ..unlearn.routing import RoutingConfig
from ..unlearn.select import SelectionGrid, SelectionRule
from ..unlearn.train import TrainConfig
from .digits import DigitsConfig, accuracy, load_digits_data, make_mlp

FORGET_CLASSES = (5, 6, 7, 8, 9)
#: retain accuracy (validation) at most 2 points below the base model's
DIGITS_RULE = SelectionRule(retain_tolerance=0.02, relative=False, retain_higher_is_better=True)
#: lr x steps for every fine-tuning baseline; coherence steps for ERA (widened
#: downwards, like the LM grid, after a first run chose its smallest lr)
DIGITS_GRID = SelectionGrid(lrs=(1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2), steps=(10, 25, 50, 100, 200))
#: ERA's coherence grid was widened upwards (it stopped at 200) after one seed
#: with 50% labels had no admissible point
DIGITS_ERA_GRID = SelectionGrid(steps=(25, 50, 100, 200, 400))


def cross_entropy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean cross-entropy (nats) of ``model`` on ``(x, y)``."""
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(model(x), y))


def digits_forget_spec(label_fraction: float = 1.0, seed: int = 0, steps: int = 1500) -> UnlearnSpec:
    """The digits forget-classes task as an :class:`UnlearnSpec`."""
    d = load_digits_data(DigitsConfig(flip_fraction=0.0))
    x, y = d.x_train, d.y_train
    forget = torch.isin(y, torch.tensor(FORGET_CLASSES))
    rng = np.random.default_rng(seed)
    f_idx = np.nonzero(forget.numpy())[0]
    labelled = rng.choice(f_idx, int(round(label_fraction * len(f_idx))), replace=False)
    weights = torch.zeros(len(y))
    weights[torch.as_tensor(labelled)] = 1.0
    test_forget = torch.nonzero(torch.isin(d.y_test, torch.tensor(FORGET_CLASSES))).flatten()
    perm = torch.randperm(len(test_forget), generator=torch.Generator().manual_seed(0))
    half = len(perm) // 2
    pool, rest = test_forget[perm[:half]], test_forget[perm[half:]]
    val_f, eval_f = rest[: len(rest) // 2], rest[len(rest) // 2 :]
    retain_test = torch.nonzero(~torch.isin(d.y_test, torch.tensor(FORGET_CLASSES))).flatten()
    retain_test = retain_test[torch.randperm(len(retain_test), generator=torch.Generator().manual_seed(1))]
    val_r, eval_r = retain_test[: len(retain_test) // 2], retain_test[len(retain_test) // 2 :]
    xt, yt = d.x_test, d.y_test
    return UnlearnSpec(
        init=lambda s: make_mlp(128, s), task=ClassificationTask(), train_data=(x, y), forget_weights=weights,
        relearn_pool=(xt[pool], yt[pool]),
        forget_metric=lambda m: cross_entropy(m, xt[eval_f], yt[eval_f]), retain_metric=lambda m: accuracy(m, xt[eval_r], yt[eval_r]),
        train_config=TrainConfig(steps=steps, lr=0.1, batch_size=32, optimizer="sgd", seed=seed),
        attacker_maximises=False, name="digits MLP (forget classes 5-9)",
        select_forget_metric=lambda m: cross_entropy(m, xt[val_f], yt[val_f]),
        select_retain_metric=lambda m: accuracy(m, xt[val_r], yt[val_r]),
        extra_metrics={"forget_accuracy": lambda m: accuracy(m, xt[eval_f], yt[eval_f])},
    )


def digits_compare_config(seed: int = 0) -> CompareConfig:
    """The settings of the benchmark (fixed before the final runs; see docs/unlearn.md)."""
    return CompareConfig(
        unlearn={
            "ga": UnlearnConfig("ga", lr=1e-3, steps=20, batch_size=32, seed=seed),
            "graddiff": UnlearnConfig("graddiff", lr=1e-3, steps=100, batch_size=32, seed=seed),
            "npo": UnlearnConfig("npo", lr=1e-3, steps=100, batch_size=32, seed=seed),
            "rmu": UnlearnConfig("rmu", lr=1e-3, steps=100, batch_size=32, seed=seed, rmu_layer="2",
                                 rmu_params=("0.*", "2.*"), rmu_steering=100.0, rmu_alpha=10.0),
        },
        routing=RoutingConfig(layers=("0:2", "2:4"), expand=64, forget_original=-1.0, l1_coef=1e-3, seed=seed),
        coherence=TrainConfig(steps=100, lr=1e-3, batch_size=32, optimizer="adam", seed=seed),
        relearn=RelearnConfig(ks=(4, 16, 64), lrs=(1e-3, 3e-3, 1e-2), steps=50, eval_every=10, batch_size=16, seed=seed),
        seed=seed,
        select={**{m: DIGITS_GRID for m in ("ga", "graddiff", "npo", "rmu")}, "era": DIGITS_ERA_GRID},
        rule=DIGITS_RULE,
    )
