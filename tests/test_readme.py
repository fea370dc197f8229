"""README's Python quickstart runs as written and does what it says."""

from __future__ import annotations

import os
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_quickstart_runs(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == 1
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        namespace: dict = {}
        exec(compile(blocks[0], "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert namespace["scores"].shape == (4, 200)
    assert namespace["per_checkpoint"].shape == (3, 4, 5)
    assert namespace["proponents"].indices.shape == (4, 5)
    assert (tmp_path / "my_store" / "manifest.json").is_file()
    assert namespace["store"].complete


def test_readme_make_targets_exist() -> None:
    makefile = (README.parent / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (README.parent / ".ci" / "run").read_text()
