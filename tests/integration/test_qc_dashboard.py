"""`sthelar dashboard` builds the QC site for a slide taken through every stage and serves it on
localhost; Debian's chromium loads every page with no console error and with its plots drawn."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from _browser import chromium, console_errors, free_port, screenshot, wait_for_http
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from sthelar_platform.ingest.manifest import SlideCatalog

pytestmark = pytest.mark.slow  # chromium on the QC site of a trained home
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def served(trained_home, tmp_path_factory):
    home = trained_home[0]
    port = free_port()
    env = {**os.environ, "STHELAR_HOME": str(home)}
    # a log file, not a pipe: a grandchild of the QC refresh that inherits a pipe would hold it open
    log = tmp_path_factory.mktemp("dashboard") / "server.log"
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "sthelar_cli", "--home", str(home), "dashboard", "--port",
                                 str(port)], cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/index.html", 600, proc)
        driver = chromium()
        try:
            yield home, f"http://127.0.0.1:{port}", driver
        finally:
            driver.quit()
    finally:
        proc.terminate()
        code = proc.wait(timeout=30)
        print(log.read_text()[-3000:])
        assert code in (0, -15), f"the dashboard server ended with {code}"


def _rendered_plots(driver) -> int:
    return driver.execute_script("return document.querySelectorAll('.plot[data-rendered=true] .main-svg').length")


def test_cohort_page_loads_without_console_errors_and_draws_its_plots(served):
    home, url, driver = served
    driver.get(f"{url}/index.html")
    WebDriverWait(driver, 30).until(lambda d: _rendered_plots(d) >= 3)
    assert console_errors(driver) == []
    rows = driver.find_elements(By.CSS_SELECTOR, "#slides-table tbody tr")
    assert [r.find_element(By.TAG_NAME, "a").text for r in rows] == [s.slide_id for s in SlideCatalog(home / "catalog.yaml").list()]
    assert "cellvit_detailed:" in driver.find_element(By.ID, "model-table").text
    assert "dbt tests" in driver.find_element(By.ID, "dbt-tests").text
    assert driver.execute_script("return typeof Plotly") == "object"  # served from assets/, not a CDN
    assert not driver.execute_script(
        "return [...document.querySelectorAll('script[src],link[href]')].some(e => /^https?:/.test(e.src || e.href) "
        "&& !(e.src || e.href).startsWith(location.origin))")
    assert screenshot(driver, home / "screenshots" / "dashboard_index.png").stat().st_size > 10_000


def test_slide_page_shows_registration_cell_types_patches_review_and_model(served):
    home, url, driver = served
    driver.get(f"{url}/index.html")
    driver.find_element(By.LINK_TEXT, "tiny").click()
    WebDriverWait(driver, 30).until(lambda d: _rendered_plots(d) >= 4)
    assert driver.current_url.endswith("/slides/tiny.html")
    assert console_errors(driver) == []
    overlay = driver.find_element(By.CSS_SELECTOR, "img.figure")
    assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay) > 100
    assert len(driver.find_elements(By.CSS_SELECTOR, "#review-table tbody tr")) > 0
    checks = [r.text.split() for r in driver.find_elements(By.CSS_SELECTOR, "#crosscheck-table tbody tr")]
    labels = pd.read_parquet(home / "warehouse" / "cell_types" / "tiny" / "cell_labels.parquet")
    assert {r[0] for r in checks} == set(labels.loc[labels["category"] != "Less10", "category"])
    assert all(r[1].endswith("%") and r[2].endswith("%") for r in checks)  # both checks report every category
    assert len(driver.find_elements(By.CSS_SELECTOR, "#prediction-table tbody tr")) == 9
    flags = {r.text.split()[0]: [int(v.replace(",", "")) for v in r.text.split()[1:]]
             for r in driver.find_elements(By.CSS_SELECTOR, "#patch-flags-table tbody tr")}
    agreement = pd.read_parquet(home / "warehouse" / "segmentation_agreement" / "tiny" / "agreement.parquet")
    for mag, g in agreement.groupby("magnification"):  # patches, flagged, then one count per reason
        reasons = g["flag_reasons"].str.split(",")
        assert flags[mag] == [len(g), int(g["flagged"].sum()),
                              *(int(reasons.apply(lambda names, r=r: r in names).sum())
                                for r in ("low_jaccard", "out_of_focus", "ink"))]
    cells = driver.execute_script(
        "return document.getElementById('plot-patch-map').data[0].z.flat().filter(v => v !== null).length")
    assert cells == len(pd.read_parquet(home / "warehouse" / "patches_40x" / "tiny" / "patches.parquet")) > 0
    assert screenshot(driver, home / "screenshots" / "dashboard_slide_tiny.png").stat().st_size > 10_000
