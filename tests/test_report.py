"""`snakemake --report` builds an HTML report that renders in headless Chromium with its figures."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

from conftest import run_ok

pytestmark = pytest.mark.slow


def chromium() -> str:
    """Debian's Chromium, installed when the tests run as root with apt; else skip (fail in CI)."""
    found = shutil.which("chromium")
    if found:
        return found
    reason = None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        reason = "chromium is not installed and cannot be installed (needs root and apt-get)"
    else:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
        proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=600)
            proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
        found = shutil.which("chromium")
        if not found:
            reason = f"apt-get install chromium failed: {proc.stderr[-500:]}"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must render the report but: {reason}")
        pytest.skip(reason)
    return found


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=15000"]


def test_report_renders_with_figures(full_run, tmp_path):
    """results/report.html: what was run and the key figures first, models with curves,
    metrics as tables, each sample's QC figures and provenance; renders in Chromium."""
    browser = chromium()
    report = full_run / "results" / "report.html"
    assert report.exists() and report.stat().st_size > 10_000
    profile = tmp_path / "chrome-profile"
    dom = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", report.as_uri()],
                         capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    first_screen = html[:html.index("Time per stage")]
    for expected in ("2 samples went through", "segmentation with StarDist", "tracking with divisions",
                     "Key figures", "instances at IoU 0.5", "TRA"):
        assert expected in first_screen, f"{expected!r} missing from the report's first part"
    for expected in ("results/models/stardist_2d/training.png", "held-out confusion matrix",
                     "results/metrics/segmentation.csv", "qc/segmentation.png", "qc/tracks.png", "provenance",
                     "<table"):
        assert expected in html, f"{expected!r} missing from the rendered report"
    assert html.count("data:image/png;base64,") >= 5  # figures are embedded: the file stands alone
    shot = tmp_path / "report.png"
    subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1400,1000",
                    f"--screenshot={shot}", report.as_uri()], capture_output=True, text=True, timeout=180)
    from skimage.io import imread

    pixels = imread(shot)
    assert pixels.shape[0] >= 900 and pixels.std() > 10, "the screenshot is blank"
    assert np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0).shape[0] > 50


def test_snakemake_report_holds_models_and_metrics(full_run, tmp_path):
    """`snakemake --report` still works: training curves, gathered metrics and our report."""
    report = tmp_path / "snakemake_report.html"
    run_ok(full_run, "--report", str(report))
    text = report.read_text()
    for expected in ("stardist_2d_training.png", "classifier_2d_confusion.png", "segmentation.csv", "report.html"):
        assert expected in text, expected
