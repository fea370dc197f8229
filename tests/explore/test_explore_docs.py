"""docs/explorer.md and the README section: the options they name exist, the
screenshots they show are in the tree, and the demo writes the task file
they use."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from gradtrace.cli import app

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "explorer.md"


def test_options_named_in_the_docs_exist():
    help_text = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    readme = (ROOT / "README.md").read_text().split("## Exploring in the browser")[1].split("\n## ")[0]
    lines = [line for line in (DOC.read_text() + readme).splitlines() if "gradtrace serve" in line or line.startswith("| `--")]
    named = {o for line in lines for o in re.findall(r"(--[a-z][a-z-]+)", line) if o != "--hf-model"}
    assert {"--task", "--queries", "--max-queries", "--host", "--port", "--token"} <= named
    assert all(option in help_text for option in named), sorted(o for o in named if o not in help_text)


def test_screenshots_in_the_docs_are_committed():
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", DOC.read_text())
    assert sorted(images) == sorted(f"explorer/{n}.png" for n in ("training-set", "example", "query", "diff", "loop", "audit", "allocation", "probes"))
    for image in images:
        data = (DOC.parent / image).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    # each is one the browser tests take
    browser = (ROOT / "tests" / "explore" / "test_explore_browser.py").read_text()
    taken = set(re.findall(r'screenshot\(driver, "([a-z-]+)"\)', browser))
    assert {Path(i).stem for i in images} == taken


def test_demo_task_file_reopens_the_demo(explore_data):
    from gradtrace.spec import load_task_spec
    from gradtrace.store import GradientStore

    spec = load_task_spec(f"{explore_data.store.parent / 'task.py'}:make_task")
    store = GradientStore.open(explore_data.store)
    assert [c.path for c in spec.checkpoints] == [c.path for c in store.checkpoints]
    assert spec.train_view(0).caption.startswith("label ") and spec.train_view(0).image.shape == (8, 8)
