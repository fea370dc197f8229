"""Shared helpers of the test suite: tiny float64 models, checkpoints written
with ``torch.save``, and oracles written independently of the library
(single-example ``loss.backward()`` passes, brute-force double loops).

Helpers are exposed as fixtures so that test files never import this module.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import types
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import nn


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG inside the block only (parameter init), then restore it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def make_mlp(d_in: int = 5, hidden: int = 4, n_out: int = 3, seed: int = 0) -> nn.Module:
    with seeded(seed):
        model = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out))
    return model.double().eval()


def classification_data(n: int, d_in: int = 5, n_out: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=gen, dtype=torch.float64)
    y = torch.randint(0, n_out, (n,), generator=gen)
    return x, y


def write_checkpoints(
    factory: Callable[[int], nn.Module], directory: Path, lrs: Sequence[float], seed: int = 100,
) -> list[tuple[str, float]]:
    """One state dict per lr, from differently seeded models, saved with torch.save."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for i, lr in enumerate(lrs):
        path = directory / f"ckpt_{i}.pt"
        torch.save(factory(seed + i).state_dict(), path)
        out.append((str(path), float(lr)))
    return out


def ce_per_example(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


def oracle_grads(
    model: nn.Module, fn: Callable[[nn.Module, Any], torch.Tensor], examples: Sequence[Any], names: Sequence[str],
) -> torch.Tensor:
    """Per-example gradients by one ``backward()`` per example; rows laid out
    as the concatenation of ``names`` (each flattened row-major)."""
    params = dict(model.named_parameters())
    rows = []
    for example in examples:
        model.zero_grad(set_to_none=True)
        value = fn(model, example)
        value.reshape(()).backward()
        rows.append(
            torch.cat([
                (params[n].grad if params[n].grad is not None else torch.zeros_like(params[n])).detach().reshape(-1).clone()
                for n in names
            ])
        )
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


def singles(batch: tuple[torch.Tensor, ...]) -> list[tuple[torch.Tensor, ...]]:
    """A tuple-of-tensors batch as a list of one-example batches."""
    n = batch[0].shape[0]
    return [tuple(t[i : i + 1] for t in batch) for i in range(n)]


def brute_force_scores(
    model: nn.Module,
    checkpoints: Sequence[tuple[str, float]],
    train_fn: Callable[[nn.Module, Any], torch.Tensor],
    train: tuple[torch.Tensor, ...],
    query_fn: Callable[[nn.Module, Any], torch.Tensor],
    queries: tuple[torch.Tensor, ...],
    names: Sequence[str] | None = None,
    cosine: bool = False,
) -> torch.Tensor:
    """``sum_c lr_c <g_c(z), g_c(q)>`` by a double loop over (query, train)
    pairs, each gradient from its own backward pass. Restores the model."""
    original = {k: v.clone() for k, v in model.state_dict().items()}
    names = list(names) if names is not None else [n for n, _ in model.named_parameters()]
    tr, qs = singles(train), singles(queries)
    out = torch.zeros(len(qs), len(tr), dtype=torch.float64)
    try:
        for path, lr in checkpoints:
            model.load_state_dict(torch.load(path, weights_only=True))
            g_train = [oracle_grads(model, train_fn, [z], names)[0] for z in tr]
            g_query = [oracle_grads(model, query_fn, [q], names)[0] for q in qs]
            for i, gq in enumerate(g_query):
                for j, gz in enumerate(g_train):
                    dot = torch.dot(gq, gz)
                    if cosine:
                        dot = dot / (gq.norm() * gz.norm())
                    out[i, j] += lr * dot
    finally:
        model.load_state_dict(original)
    return out


def store_files(root: Path) -> dict[str, bytes]:
    """Every file of a store directory, by relative path, with its bytes
    (lock files, which hold no data, left out)."""
    from gradtrace.store.lock import LOCK_FILES

    root = Path(root)
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name not in LOCK_FILES
    }


def page_figures(html_text: str) -> list[dict[str, Any]]:
    """The plotly figures placed on a page by ``gradtrace.report.figures.embed``, decoded."""
    import html
    import json
    import re

    return [json.loads(html.unescape(m)) for m in re.findall(r'<div class="plot" data-figure="([^"]*)"', html_text)]


def without_scripts(html_text: str) -> str:
    """A page without its ``<script>`` elements (plotly's inlined bundle): the markup made from data."""
    import re

    return re.sub(r"<script[^>]*>.*?</script>", "", html_text, flags=re.S)


@pytest.fixture(scope="session")
def h() -> types.SimpleNamespace:
    """The helpers above, as one namespace."""
    return types.SimpleNamespace(
        seeded=seeded,
        make_mlp=make_mlp,
        classification_data=classification_data,
        write_checkpoints=write_checkpoints,
        ce_per_example=ce_per_example,
        oracle_grads=oracle_grads,
        singles=singles,
        brute_force_scores=brute_force_scores,
        store_files=store_files,
        page_figures=page_figures,
        without_scripts=without_scripts,
    )


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of Debian's chromium; installed with apt-get when absent."""
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"], check=True, env=env, capture_output=True)
    path = shutil.which("chromium")
    assert path is not None, "chromium is not installed and apt-get could not install it"
    return path


@pytest.fixture(scope="session")
def headless_chrome(chromium, tmp_path_factory) -> Callable[[], Any]:
    """Starts a headless Chromium WebDriver (1280x900, its own profile); the caller quits it."""

    def start() -> Any:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        profile = tmp_path_factory.mktemp("chrome-profile")
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--window-size=1280,900", f"--user-data-dir={profile}"):
            options.add_argument(flag)
        return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)

    return start
