"""benchmarks/scale_gpu.py (the script for a lent GPU) runs end to end with
--tiny on the CPU, so that it is known to run before a GPU is lent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_scale_gpu_script_runs_tiny_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    r = subprocess.run(
        [sys.executable, "-W", "ignore", str(ROOT / "benchmarks" / "scale_gpu.py"), "--tiny", "--out", str(out),
         "--parts", "smollm2_lora,llama1b,query"],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                                                                   "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(out.read_text())
    assert set(result["tokens_per_s"]) == {"smollm2_lora_bf16", "llama1b_full_bf16"}
    for name, rate in result["tokens_per_s"].items():
        feat = result["featurize"][name]
        assert rate == feat["tokens"] / feat["seconds"] and feat["tokens"] == 4 * (8 if "llama" in name else 16) * 32
        assert result["featurize_over_train_step"][name] > 0
    assert result["query"]["same_top_k"] is True and result["query"]["rows"] == 5000
