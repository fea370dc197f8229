"""A `--task` file for the CLI: the bundled digits MLP with 20% flipped labels.

`make_task()` trains the model once (checkpoints go to ./digits_run) and
returns a TaskSpec: model factory, task, checkpoints, training set, queries.
Copy this file as a template for your own model.
"""

from gradtrace.demos.digits import make_task as digits_task
from gradtrace.spec import TaskSpec


def make_task() -> TaskSpec:
    return digits_task("digits_run")
