"""Fixtures of the explorer tests: a small digits demo (store, checkpoints,
task.py) whose training example 0 carries hostile text, a diff.json with
hostile texts, and a loop run folder in the runner's layout."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest

EVIL = "<script>alert('x')</script> \"><img src=x onerror=alert(1)> geese honk"
SMALL = {"hidden": 16, "epochs": 10, "n_checkpoints": 3}

TASK_FILE = '''
from pathlib import Path

from gradtrace.demos.digits import DigitsConfig, make_task as _make_task
from gradtrace.spec import ExampleView

EVIL = {evil!r}


def make_task():
    spec = _make_task(Path({work!r}), DigitsConfig(**{small!r}))
    plain = spec.train_view
    spec.train_view = lambda i: ExampleView(text=EVIL, caption=EVIL) if i == 0 else plain(i)
    return spec
'''


def write_loop_run(root: Path, diff_json: Path) -> Path:
    """A finished 3-round loop run as the runner lays it out; round 2 breached a threshold and has a diff."""
    from gradtrace.loop.stop import StopRule, first_stop

    rule = StopRule(metric="nll.tail_share", kind="threshold", above=0.3)
    rows = [{"round": float(t), "nll.tail_share": 0.1 + 0.15 * t, "diversity.distinct_2": 0.9 - 0.1 * t} for t in range(3)]
    root.mkdir(parents=True)
    (root / "loop.json").write_text(json.dumps({"seed": 0, "stop": [rule.to_dict()]}), encoding="utf-8")
    for t, row in enumerate(rows):
        folder = root / f"round_{t:03d}"
        folder.mkdir()
        (folder / "metrics.json").write_text(json.dumps({"round": t, "row": row, "train_losses": []}), encoding="utf-8")
        records = [{"id": f"r{t}-{j}", "text": (EVIL if j == 0 else f"generated text {j} of round {t}"), "prompt": "Tell me", "round": t,
                    "source": "generated"} for j in range(4)]
        (folder / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        (folder / "DONE").write_text("ok\n")
    (root / "round_002" / "diff.json").write_bytes(diff_json.read_bytes())
    stop = first_stop([rule], rows)
    (root / "stop.json").write_text(json.dumps(stop.to_dict()), encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def explore_data(tmp_path_factory) -> types.SimpleNamespace:
    from gradtrace.demos.digits import DigitsConfig
    from gradtrace.demos.digits_demo import run_digits_demo
    from gradtrace.diff import DiffConfig, HashingEmbedder, diff_texts

    root = tmp_path_factory.mktemp("explore")
    demo = run_digits_demo(root / "demo", DigitsConfig(**SMALL), n_queries=2, k=3, progress=False)
    task_file = root / "evil_task.py"
    task_file.write_text(TASK_FILE.format(evil=EVIL, work=str(root / "demo"), small=SMALL), encoding="utf-8")

    rng = np.random.default_rng(0)
    topics = ["The recipe needs flour, sugar and two eggs.", "The train leaves the station at nine sharp.",
              "Our garden grows tomatoes and green beans."]
    a = [f"{topics[rng.integers(3)]} Answer {i}." for i in range(90)]
    b = [EVIL + f" Note {i}." if i % 3 == 0 else f"{topics[rng.integers(3)]} Answer {i}." for i in range(90)]
    result = diff_texts(a, b, embedder=HashingEmbedder(), config=DiffConfig(levels=("text",), stability_seeds=()))
    diff_dir = root / "diff"
    diff_dir.mkdir()
    result.save(diff_dir / "diff.json")
    loop = write_loop_run(root / "loop", diff_dir / "diff.json")
    return types.SimpleNamespace(root=root, store=demo.store, task=f"{task_file}:make_task", diff=diff_dir, loop=loop,
                                 result=result, evil=EVIL)
