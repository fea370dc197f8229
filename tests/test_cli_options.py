"""The CLI's shared structure and option rules: one registration style, no
import circle, and count options (--limit, --show, --top) that must be
positive integers on every path."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gradtrace.cli import app
from gradtrace.data import head
from gradtrace.errors import InputError

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_every_verb_is_registered():
    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert {"featurize", "query", "self-influence", "inspect", "demo", "unlearn", "validate", "loop", "diff", "allocate",
            "influence-over-time", "compare-runs", "serve", "audit"} <= names


@pytest.mark.parametrize("module", ["gradtrace.diff.cli", "gradtrace.loop.cli", "gradtrace.unlearn.cli", "gradtrace.allocate.cli",
                                    "gradtrace.explore.cli",
                                    "gradtrace.audit.cli"])
def test_sub_clis_register_alike_and_do_not_import_the_main_cli(module):
    mod = importlib.import_module(module)
    assert callable(getattr(mod, "register", None))
    tree = ast.parse(Path(mod.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "cli" not in imported and "gradtrace.cli" not in imported  # `from ..cli import ...` has module "cli"


@pytest.mark.parametrize("bad", ["0", "-1"])
@pytest.mark.parametrize("argv", [
    ["query", "STORE", "--task", "TASK", "--limit", "{bad}"],
    ["query", "STORE", "--queries", "Q", "--limit", "{bad}"],
    ["query", "STORE", "--task", "TASK", "--show", "{bad}"],
    ["self-influence", "STORE", "--top", "{bad}"],
    ["validate", "--store", "STORE", "--task", "TASK", "--train-fn", "T", "--limit", "{bad}"],
    ["allocate", "--task", "TASK", "--limit", "{bad}"],
    ["allocate", "--task", "TASK", "--top", "{bad}"],
    ["influence-over-time", "STORE", "--task", "TASK", "--k", "{bad}"],
    ["influence-over-time", "STORE", "--task", "TASK", "--limit", "{bad}"],
    ["compare-runs", "STORE", "STORE", "--k", "{bad}"],
    ["compare-runs", "STORE", "STORE", "--task", "TASK", "--limit", "{bad}"],
])
def test_count_options_must_be_positive_on_every_path(tmp_path, argv, bad):
    # the check comes before any file is read: the other arguments may name nothing
    subst = {"STORE": tmp_path / "store", "TASK": f"{tmp_path / 'task.py'}:make", "Q": tmp_path / "q.jsonl"}
    r = invoke(*[subst.get(a, a.format(bad=bad)) for a in argv])
    option = argv[-2]
    assert r.exit_code == 2, r.output
    assert f"{option} must be a positive integer; got {bad}" in " ".join(r.output.split())
    assert "Traceback" not in r.output


def test_head_means_the_first_n_queries_for_every_form_of_data():
    x, y = torch.arange(5.0), torch.arange(5)
    assert torch.equal(head(x, 2), x[:2])
    hx, hy = head((x, y), 3)
    assert torch.equal(hx, x[:3]) and torch.equal(hy, y[:3])
    assert head([{"a": 1}, {"a": 2}, {"a": 3}], 2) == [{"a": 1}, {"a": 2}]
    assert head(["a", "b"], 5) == ["a", "b"] and head(["a"], None) == ["a"]
    for n in (-1, 0, 1.5, True):
        with pytest.raises(InputError, match=r"--limit must be a positive integer; got "):
            head([1, 2, 3], n, "--limit")


def test_no_module_imports_a_private_name_of_another():
    mine = [p for p in (ROOT / "gradtrace").rglob("*.py")
            if not {"scoring", "grads", "store"} & set(p.relative_to(ROOT / "gradtrace").parts)
            and p.name not in ("variants.py", "featurize.py", "config.py", "checkpoints.py", "lm_pipeline.py")]
    bad = []
    for path in mine:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and any(a.name.startswith("_") and not a.name.startswith("__") for a in node.names):
                bad.append(f"{path.relative_to(ROOT)}: from {node.module} import {[a.name for a in node.names]}")
    assert not bad, bad
