"""The HTML report: escaped text, self-contained, and what a reader sees in headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from gradtrace.diff import DiffConfig, HashingEmbedder, diff_texts
from gradtrace.diff.report import write_report

EVIL = "<script>alert('x')</script> Geese honk loudly over the lake."


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    rng = np.random.default_rng(0)
    topics = ["The recipe needs flour, sugar and two eggs.", "The train leaves the station at nine sharp.",
              "Our garden grows tomatoes and green beans."]
    a = [f"{topics[rng.integers(3)]} Answer {i}." for i in range(120)]
    b = [EVIL + f" Note {i}." if i % 3 == 0 else f"{topics[rng.integers(3)]} Answer {i}." for i in range(120)]
    result = diff_texts(a, b, embedder=HashingEmbedder(), config=DiffConfig(levels=("text",), stability_seeds=()))
    path = write_report(result, tmp_path_factory.mktemp("report") / "report.html", intended="<b>praise</b> geese")
    return result, path


def test_report_escapes_and_is_self_contained(report):
    result, path = report
    html = path.read_text()
    assert "<script" not in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "&lt;b&gt;praise&lt;/b&gt;" in html
    assert not re.search(r"""(src|href)=["']?https?:""", html)
    assert html.count("<circle") == len(result.points) == result.n_a + result.n_b


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


@pytest.mark.slow
def test_reader_sees_ranked_clusters_in_headless_chromium(report, chromium, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    result, path = report
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(path.as_uri())
        assert driver.title == "Behavioural diff"
        body = driver.find_element(By.TAG_NAME, "body").text
        # the planted cluster is first, flagged, skewed to B, and its untrusted text shows as text
        first_row = driver.find_elements(By.CSS_SELECTOR, "table")[0].find_elements(By.CSS_SELECTOR, "tbody tr")[0]
        cells = [td.text for td in first_row.find_elements(By.TAG_NAME, "td")]
        top = result.clusters[0]
        assert cells[0] == "1" and cells[2] == top.label and cells[-1] == "yes"
        assert "geese" in cells[2] or "honk" in cells[2]
        assert float(cells[3]) > 0.9
        assert "<script>alert('x')</script>" in body
        assert f"{len(result.significant())} of {len(result.clusters)} clusters flagged" in body
        assert "Intended change: <b>praise</b> geese" in body
        # the map is drawn: one visible dot per text, both colours present
        dots = driver.find_elements(By.TAG_NAME, "circle")
        assert len(dots) == len(result.points)
        assert {d.get_attribute("fill") for d in dots} == {"#1f77b4", "#e66101"}
        assert dots[0].size["width"] > 0
        # no script ran: the page has no alert and no script elements
        assert driver.find_elements(By.TAG_NAME, "script") == []
    finally:
        driver.quit()


def test_behaviours_section_escapes_its_text(report, tmp_path):
    from gradtrace.diff import group_behaviours

    result, _ = report
    behaviours = group_behaviours(result)
    assert behaviours and any(EVIL in t for b in behaviours for t in b.texts_b)
    html = write_report(result, tmp_path / "r.html", behaviours=behaviours).read_text()
    assert "<h2>Behaviours</h2>" in html and "<script" not in html
    assert html.count('<section class="behaviour">') == len(behaviours)
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html.split("<h2>Behaviours</h2>")[1]
