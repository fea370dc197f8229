"""checkpoints_from_dir reads a step from a file name by a stated rule and
refuses two files naming one step. Seen: ``run3-epoch_2-loss0.5.pt`` was
read as step 5 (the last run of digits), and two files with one step were
both kept."""

from __future__ import annotations

import pytest
import torch

import gradtrace as gt
from gradtrace.checkpoints import step_from_name
from gradtrace.errors import InputError


@pytest.mark.parametrize(
    "stem, step",
    [
        ("run3-epoch_2-loss0.5", 2),
        ("run7_step20", 20),
        ("epoch3_step1200", 1200),  # step before epoch
        ("checkpoint-500", 500),
        ("ckpt_10", 10),
        ("lr1e-3_iter7", 7),
        ("Step_5", 5),
        ("model_0042", 42),  # no step word: the last integer
        ("s_100-loss0.25", 100),  # a float is never the step
        ("final", None),
        ("loss0.5", None),
    ],
)
def test_the_step_rule(stem, step):
    assert step_from_name(stem) == step


def _touch(directory, names):
    directory.mkdir()
    for name in names:
        torch.save({"w": torch.zeros(1)}, directory / name)


def test_a_float_in_the_name_is_not_the_step(tmp_path):
    _touch(tmp_path / "run", ["run3-epoch_2-loss0.5.pt", "run3-epoch_1-loss0.7.pt", "run3-epoch_10-loss0.4.pt"])
    refs = gt.checkpoints_from_dir(tmp_path / "run", lr=0.1)
    assert [(r.step, r.path.rsplit("/", 1)[1]) for r in refs] == [
        (1, "run3-epoch_1-loss0.7.pt"), (2, "run3-epoch_2-loss0.5.pt"), (10, "run3-epoch_10-loss0.4.pt"),
    ]


def test_two_files_naming_one_step_are_refused_naming_both(tmp_path):
    _touch(tmp_path / "run", ["ckpt_5.pt", "model_step5.pt", "ckpt_6.pt"])
    with pytest.raises(InputError, match=r"checkpoint files 'ckpt_5.pt' and 'model_step5.pt' both name step 5"):
        gt.checkpoints_from_dir(tmp_path / "run", lr=0.1)
    assert [r.step for r in gt.checkpoints_from_dir(tmp_path / "run", lr=0.1, pattern="ckpt_*.pt")] == [5, 6]
