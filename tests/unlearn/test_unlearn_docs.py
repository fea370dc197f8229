"""docs/unlearn.md: its Python block and a built-in CLI command run as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradtrace.cli import app

DOC = Path(__file__).resolve().parents[2] / "docs" / "unlearn.md"


@pytest.mark.slow
def test_docs_python_block_runs():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1
    namespace: dict = {}
    exec(compile(blocks[0], "docs/unlearn.md", "exec"), namespace)
    results = namespace["result"].results
    assert list(results) == ["filter", "graddiff", "era"]
    for m in ("filter", "era"):  # forget classes unlearned: high forget loss, no forget accuracy
        assert results[m].forget > 2.0 and results[m].extra["forget_accuracy"] < 0.05
    assert results["era"].retain > 0.9
    chosen = results["graddiff"].selection["selected"]  # settings chosen by the rule, recorded
    assert chosen["admissible"] and chosen["retain"] >= results["graddiff"].selection["retain_limit"]


@pytest.mark.slow
def test_docs_unlearn_command_runs(tmp_path):
    out = tmp_path / "unlearn_digits_50"
    res = CliRunner().invoke(app, ["unlearn", "--spec", "digits", "--labelled", "0.5", "--method", "filter", "--method", "era",
                                   "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "results.json").read_text())
    assert 0.2 < data["labelled_fraction"] < 0.3  # half of the ~49% forget images
    assert set(data["methods"]) == {"filter", "era"} and "relearn k=16" in res.output
    assert "--spec digits" in DOC.read_text() and "--labelled 0.5 --method filter --method era" in DOC.read_text()
