"""benchmarks/peers.py: its metrics equal brute-force computations, and a
peer that cannot be installed is recorded as ``{"error": ...}``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def peers():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("peers_bench", ROOT / "benchmarks" / "peers.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["peers_bench"] = mod  # dataclasses look their module up while the file runs
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop("peers_bench", None)
        sys.path.remove(str(ROOT / "benchmarks"))


def test_lds_equals_brute_force_spearman(peers) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    n_query, n_train, n_sub = 4, 15, 9
    scores = rng.normal(size=(n_query, n_train))
    scores[0, :5] = 0.0  # ties among scores
    masks = rng.random((n_sub, n_train)) < 0.5
    outputs = rng.normal(size=(n_sub, n_query))
    outputs[:3, 1] = 1.0  # ties among outputs
    per_query = []
    for q in range(n_query):
        predicted = [-sum(scores[q, i] for i in range(n_train) if masks[j, i]) for j in range(n_sub)]
        per_query.append(spearmanr(predicted, outputs[:, q]).correlation)
    assert peers.lds_spearman(scores, masks, outputs) == pytest.approx(np.mean(per_query), abs=1e-12)
    # scores that predict the outputs exactly (higher score = lower loss) give LDS 1
    w = rng.normal(size=(n_query, n_train))
    assert peers.lds_spearman(w, masks, -(masks @ w.T)) == pytest.approx(1.0)
    assert np.isnan(peers.lds_spearman(np.full((n_query, n_train), np.nan), masks, outputs))


def test_share_found_equals_brute_force(peers) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(5)
    n = 40
    s = rng.normal(size=n)
    flipped = rng.random(n) < 0.3
    for checked in (0.1, 0.2, 0.5):
        k = int(round(checked * n))
        top = sorted(range(n), key=lambda i: (-s[i], i))[:k]
        expected = sum(bool(flipped[i]) for i in top) / flipped.sum()
        assert peers.share_found(s, flipped, checked) == pytest.approx(expected)
    assert peers.share_found(np.arange(n, dtype=float), np.arange(n) >= n - 4, 0.1) == 1.0


def test_peer_that_fails_to_install_is_recorded_as_error(peers, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    steps: list[list[str]] = []

    def failing_step(cmd: list[str], log: Path) -> None:
        steps.append(cmd)
        if "--no-deps" in cmd:
            raise peers.PeerInstallError("no matching distribution for kronfluence")

    with pytest.raises(peers.PeerInstallError, match="no matching distribution"):
        peers.install_peer("kronfluence", root=tmp_path, run_step=failing_step)
    assert not list((tmp_path / "kronfluence").glob(".installed-*"))  # no stamp: the next run tries again
    pip_steps = [c for c in steps if "pip" in c]
    assert pip_steps[0][-1] == peers.TORCH_PIN  # the pinned torch first, never an unpinned one
    assert all(any(a.startswith("torch") for a in c) is (c is pip_steps[0]) for c in pip_steps[:2])

    pythons = peers.tool_pythons(["gradtrace", "kronfluence"], installer=lambda name: peers.install_peer(name, tmp_path, failing_step))
    assert pythons["gradtrace"] == Path(sys.executable)
    assert isinstance(pythons["kronfluence"], str) and "no matching distribution" in pythons["kronfluence"]
    job = peers.run_job(pythons["kronfluence"], "kronfluence", "ekfac", tmp_path / "case", timeout_s=5)
    assert set(job) == {"error"} and "no matching distribution" in job["error"]
    entries, chosen = peers.evaluate_lds(tmp_path / "case", {"kronfluence/ekfac": job}, {}, {})
    assert entries == {"kronfluence/ekfac": {"error": job["error"]}} and chosen == {}
    summary = peers.summarise(entries)
    assert summary["peer_best"] is None and summary["gradtrace_best"] is None


FAKE_RUNNER = '''
import json, sys
from pathlib import Path
import numpy as np
case_dir, method, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
if method == "crash":
    sys.exit("ImportError: no module named kronfluence")
scores = np.load(Path(case_dir) / "planted.npy")
np.save(out / "good.npy", scores)
np.save(out / "flipped_sign.npy", -scores)
json.dump({"seconds": {"good": 1.5, "flipped_sign": 2.5}, "cpu_seconds": {"good": 1.0, "flipped_sign": 2.0}, "errors": {}},
          (out / "meta.json").open("w"))
'''


def test_jobs_run_in_subprocesses_and_the_dev_draw_picks_the_variant(peers, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    runners = tmp_path / "runners"
    runners.mkdir()
    (runners / "run_fake.py").write_text(FAKE_RUNNER)
    monkeypatch.setattr(peers, "RUNNERS", runners)
    case = tmp_path / "case"
    case.mkdir()
    rng = np.random.default_rng(0)
    n_query, n_train = 3, 20
    w = rng.normal(size=(n_query, n_train))
    np.save(case / "planted.npy", w)
    draws = {}
    for name, n_sub in (("dev", 8), ("test", 12)):
        masks = rng.random((n_sub, n_train)) < 0.5
        draws[name] = {"masks": masks, "outputs": -(masks @ w.T) + 0.01 * rng.normal(size=(n_sub, n_query))}

    crashed = peers.run_job(Path(sys.executable), "fake", "crash", case, timeout_s=60)
    assert set(crashed) == {"error", "peak_mib", "process_seconds"} and "no module named kronfluence" in crashed["error"]
    assert not (case / "out" / "fake__crash" / "job.json").exists()  # a failure runs again next time

    job = peers.run_job(Path(sys.executable), "fake", "lds", case, timeout_s=60)
    assert job["variants"] == {"good": 1.5, "flipped_sign": 2.5} and job["peak_mib"] > 0
    assert peers.run_job(Path(sys.executable), "fake", "lds", case, timeout_s=60) == job  # kept and reused
    entries, chosen = peers.evaluate_lds(case, {"fake/lds": job, "fake/crash": crashed}, draws["dev"], draws["test"])
    assert chosen == {"fake/lds": "good"}
    e = entries["fake/lds"]
    assert e["score"] == pytest.approx(peers.lds_spearman(w, draws["test"]["masks"], draws["test"]["outputs"]))
    assert e["score"] > 0.9 and e["variants"]["flipped_sign"]["test"] < -0.9
    assert (e["seconds"], e["cpu_seconds"]) == (1.5, 1.0)
    assert entries["fake/crash"] == {"error": crashed["error"]}
