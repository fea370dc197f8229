"""docs/diff.md: every shell command and the Python example run as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "diff.md"


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(), re.S)


@pytest.mark.slow
def test_shell_commands_in_docs_run(tmp_path):
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""), HF_HUB_OFFLINE="1")
    blocks = [b for b in _blocks("bash") if not b.lstrip().startswith("pip install")]
    assert len(blocks) == 2
    for block in blocks:
        script = block.replace("python - <<", f"{sys.executable} - <<")
        res = subprocess.run(["bash", "-euo", "pipefail", "-c", script],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    quick = json.loads((tmp_path / "diff_out" / "diff.json").read_text())
    top = [c for c in quick["clusters"] if c["q_value"] <= 0.05][0]
    assert top["level"] == "sentence" and top["log_odds"] > 0 and any("professional" in m for m in top["medoids"])
    same = json.loads((tmp_path / "diff_same" / "diff.json").read_text())
    assert same["n_a"] == same["n_b"] == 10 and same["source_a"]["kind"] == "hf"


def test_python_example_in_docs_runs(capsys):
    (block,) = _blocks("python")
    namespace: dict = {}
    exec(compile(block, str(DOC), "exec"), namespace)
    flagged = namespace["result"].significant(0.05)
    assert flagged and flagged[0].log_odds > 0 and "geese" in flagged[0].keywords
    assert "q=" in capsys.readouterr().out
