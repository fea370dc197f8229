"""docs/loop.md works as written: its Python blocks run, its files exist,
and the shipped example config runs from the command line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "loop.md"


def test_docs_python_blocks_run(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 2
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        first: dict = {}
        exec(compile(blocks[0], "docs/loop.md[1]", "exec"), first)
        second: dict = {}
        exec(compile(blocks[1], "docs/loop.md[2]", "exec"), second)
    finally:
        os.chdir(cwd)
    result = first["result"]
    assert [r["round"] for r in result.rows][0] == 0.0 and "attribute.nova_praised.rate" in result.rows[0]
    assert (tmp_path / "py_loop_run" / "dashboard.html").is_file()
    assert len(second["session"].rows) == 2


def test_docs_name_only_files_that_exist():
    text = DOC.read_text()
    for path in re.findall(r"(examples/[\w./]+\.(?:toml|py))", text):
        assert (ROOT / path).is_file(), path
    assert "gradtrace loop --config examples/loop.toml" in text and "gradtrace loop --resume loop_run" in text


@pytest.mark.slow
def test_example_config_runs_from_the_command_line(tmp_path):
    """The documented command, with --out so the test leaves the checkout clean."""
    exe = Path(sys.executable).parent / "gradtrace"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([str(exe), "loop", "--config", str(ROOT / "examples" / "loop.toml"), "--out", str(tmp_path / "run"), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    out = " ".join(done.stdout.split())
    assert "dashboard:" in out and ("stopped at round" in out or "without a stop" in out)
    assert list((tmp_path / "run").glob("round_*/diff_report.html"))
