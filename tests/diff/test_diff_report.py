"""The HTML report: escaped text, self-contained, and what a reader sees in headless Chromium."""

from __future__ import annotations

import re

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


def test_report_escapes_and_is_self_contained(report, h):
    result, path = report
    html = path.read_text()
    markup = h.without_scripts(html)  # the page without plotly's inlined bundle
    assert "<script" not in markup and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in markup
    assert html.count("<script") == 2  # plotly's bundle and the figure loader, inlined once
    assert "&lt;b&gt;praise&lt;/b&gt;" in markup
    assert not re.search(r"""(src|href)=["']?https?:""", markup)
    (fig,) = h.page_figures(html)
    by_model = [t for t in fig["data"] if t.get("visible") is not False]
    assert [t["name"] for t in by_model] == ["model A", "model B"]
    assert [len(t["x"]) for t in by_model] == [sum(p["model"] == m for p in result.points) for m in "AB"]
    assert len(result.points) == result.n_a + result.n_b
    assert all("<script" not in text for t in fig["data"] for text in t["text"])  # hover text escaped for plotly


@pytest.mark.slow
def test_reader_sees_ranked_clusters_in_headless_chromium(report, headless_chrome):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    result, path = report
    driver = headless_chrome()
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
        # the map is drawn offline: one visible dot per text, both colours present
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "div.plot path.point"))
        dots = driver.find_elements(By.CSS_SELECTOR, "div.plot g.trace.scatter path.point")
        assert len(dots) == len(result.points)
        assert {d.value_of_css_property("fill") for d in dots} == {"rgb(31, 119, 180)", "rgb(230, 97, 1)"}
        assert dots[0].size["width"] > 0
        assert driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)") == []
        # untrusted text ran nothing: no dialog, no element made from it
        with pytest.raises(NoAlertPresentException):
            driver.switch_to.alert.text
        assert driver.execute_script("return document.querySelectorAll('body script').length") == 2
    finally:
        driver.quit()
