"""docs/allocate.md: its Python block runs as written, and the defaults and
options it states are the code's."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradtrace.allocate import RULES, default_points
from gradtrace.cli import app

DOC = Path(__file__).resolve().parents[1] / "docs" / "allocate.md"


@pytest.mark.slow
def test_docs_python_block_runs(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        namespace: dict = {}
        exec(compile(blocks[0], "docs/allocate.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    run = namespace["run"]
    assert [iv.label() for iv in run.intervals] == ["initial -> step 4", "step 4 -> step 8", "step 8 -> step 12"]
    assert set(run.total("layer")) == {"layer 0", "layer 2", "layer 4"}
    assert run.max_relative_error < 0.01


def test_docs_state_the_code_defaults() -> None:
    text = DOC.read_text()
    table = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)`[^|]*\| [^|]*\(default (\d+)\)", text, re.M)}
    assert set(table) == set(RULES)
    assert {rule: int(n) for rule, n in table.items()} == {rule: default_points(rule) for rule in RULES}
    assert f"({default_points('gauss')} Gauss points)" in text


@pytest.mark.parametrize("command", ["allocate", "influence-over-time", "compare-runs"])
def test_docs_options_exist(command: str) -> None:
    text = DOC.read_text()
    lines = [line for line in re.findall(r"^gradtrace .*$", text, re.M) if line.startswith(f"gradtrace {command} ")]
    assert lines
    help_text = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200", "TERM": "dumb"}).output
    for line in lines:
        for option in re.findall(r"(--[a-z][a-z-]*)", line):
            assert option in help_text, (command, option)
