"""Every command of docs/lm.md, run as written (through the CLI runner, in a
fresh folder), asserting what a user would see."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradtrace.cli import app

DOC = Path(__file__).resolve().parents[2] / "docs" / "lm.md"


def commands() -> list[list[str]]:
    lines = [line.strip() for line in DOC.read_text().splitlines() if line.strip().startswith(".venv/bin/gradtrace ")]
    return [shlex.split(line)[1:] for line in lines]


@pytest.mark.slow
def test_every_command_in_the_lm_doc_works(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GRADTRACE_CACHE", str(tmp_path / "cache"))
    cmds = commands()
    assert [c[0] for c in cmds] == ["demo", "featurize", "query", "query", "self-influence"]
    runner = CliRunner()
    outputs = []
    for cmd in cmds:
        result = runner.invoke(app, cmd)
        assert result.exit_code == 0, (cmd, result.output)
        outputs.append(result.output)
    assert "planted examples found" in outputs[0] and "baseline/bm25" in outputs[0]
    assert (tmp_path / "lm_demo" / "report.html").is_file()
    assert "324 examples, 3 checkpoints" in outputs[1]
    rows = [json.loads(line) for line in (tmp_path / "lm_proponents.jsonl").read_text().splitlines()]
    assert len(rows) == 6 * 10 and rows[0]["query"] == "trigger-0" and rows[0]["variant"] == "raw"
    assert "Opponents" in (tmp_path / "lm_report.html").read_text()
    assert "opponent" in outputs[3] and "highest self-influence" in outputs[4]
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1
    namespace: dict = {}
    exec(compile(blocks[0], "docs/lm.md", "exec"), namespace)
    assert namespace["top"].indices.shape == (6, 20)
    assert namespace["store"].n_examples == 324 and len(namespace["refs"]) == 3
