"""Restoration in the DAG: N2V (n2v environment) and CARE (main environment) trained and
applied by the real workflow, metrics against clean targets, and the analysis stages
reading the restored image."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage

from conftest import N2V_PYTHON, run_snakemake
from snakescope.io import ngff
from snakescope.synthetic import camera_noise, make_timelapse, write_timelapse
from test_workflow import SHEET_HEADER, write_config

pytestmark = pytest.mark.slow

TINY = {"epochs": 2, "steps_per_epoch": 15, "batch_size": 8, "patch_shape": [32, 32], "n_patches": 128,
        "patience": 0}


def clean_and_noisy(seed: int, shape=(128, 128)):
    """A smooth blob image in [0, 1] and a low-light (Poisson-Gaussian) copy as uint16 counts."""
    rng = np.random.default_rng(seed)
    clean = ndimage.gaussian_filter(rng.random(shape), 3.0)
    clean = (clean - clean.min()) / (clean.max() - clean.min())
    noisy = camera_noise(clean, 10.0, 2.0, rng)
    return (clean * 1000).astype(np.uint16), np.clip(np.rint(noisy * 10 + 100), 0, None).astype(np.uint16)


@pytest.fixture
def care_project(tmp_path):
    wd = tmp_path / "wd"
    data = wd / "data"
    data.mkdir(parents=True)
    clean, noisy = clean_and_noisy(0)
    tifffile.imwrite(data / "clean.tif", clean)
    tifffile.imwrite(data / "noisy.tif", noisy)
    clean2, noisy2 = clean_and_noisy(1)
    tifffile.imwrite(data / "noisy2.tif", noisy2)
    tifffile.imwrite(data / "clean2.tif", clean2)
    tifffile.imwrite(data / "clean_cropped.tif", clean2[:, :100])
    rows = ["pair\tdata/noisy.tif\tYX\t0.5\t\t\t\t\t\tdata/clean.tif",
            "heldout\tdata/noisy2.tif\tYX\t0.5\t\t\t\t\t\tdata/clean2.tif",
            "mismatched\tdata/noisy2.tif\tYX\t0.5\t\t\t\t\t\tdata/clean_cropped.tif"]
    write_config(wd, restoration={"method": "care", "train_samples": ["pair"], "care": {**TINY, "epochs": 4}},
                 segmentation={"method": "none"})
    (wd / "config" / "samples.tsv").write_text(SHEET_HEADER + "\n".join(rows) + "\n")
    return wd


def test_care_in_the_dag_trains_restores_and_scores(care_project):
    wd = care_project
    proc = run_snakemake(wd, "--cores", "2", "--keep-going", check=False, timeout=1200)
    out = proc.stdout + proc.stderr
    # the mismatched target fails its own sample, naming it and both shapes; the rest goes on
    assert proc.returncode != 0
    log = (wd / "logs" / "prepare" / "mismatched.log").read_text()
    assert re.search(r"clean_cropped\.tif.*sample mismatched.*'x': 100.*'x': 128", log), log
    failed = json.loads((wd / "results/jobs/prepare-b0000.done.json").read_text())["samples"]["mismatched"]
    assert failed["status"] == "failed" and failed["step"] == "target"
    assert not (wd / "results" / "mismatched" / "target.ome.zarr").exists()
    assert not list((wd / "results" / "mismatched").glob("*.partial-*"))
    model = wd / "results" / "models" / "care_2d"
    assert {"config.json", "weights_best.h5", "weights_last.h5", "training.csv", "snakescope.json"} <= {
        p.name for p in model.iterdir()}, out[-3000:]
    assert (wd / "results" / "models" / "care_2d_training.png").stat().st_size > 1000
    history = pd.read_csv(model / "training.csv")
    assert len(history) == 4 and {"loss", "val_loss"} <= set(history.columns)
    for sample in ("pair", "heldout"):
        restored = ngff.read_image(wd / "results" / sample / "restored.ome.zarr")
        assert restored.axes == "yx" and restored.shape == (128, 128) and restored.data.dtype == np.float32
        assert (wd / "results" / sample / "qc" / "restoration.png").stat().st_size > 1000
    metrics = pd.read_csv(wd / "results" / "heldout" / "restoration_metrics.csv")
    # a sample that did not train the model: CARE must beat the noisy input
    assert metrics.loc[0, "psnr_restored_affine"] > metrics.loc[0, "psnr_input_affine"] + 3, metrics.T
    assert metrics.loc[0, "ssim_restored"] > metrics.loc[0, "ssim_input"], metrics.T
    # the failed sample does not hold back the others' gathered metrics
    table = pd.read_csv(wd / "results" / "metrics" / "restoration.csv")
    assert list(table["sample"]) == ["pair", "heldout", "ALL"]


@pytest.fixture
def n2v_project(tmp_path):
    """A two-channel 2D+t time-lapse with labels: N2V restores channel 0, StarDist reads it."""
    wd = tmp_path / "wd"
    timelapse = make_timelapse(ndim=2, n_frames=3, shape=(96, 96), n_cells=6, n_channels=2, seed=4)
    paths = write_timelapse(timelapse, wd / "data" / "cells")
    clean, noisy = clean_and_noisy(2, (96, 96))
    tifffile.imwrite(wd / "data" / "clean.tif", clean)
    tifffile.imwrite(wd / "data" / "noisy.tif", noisy)
    rel = lambda p: p.relative_to(wd)  # noqa: E731
    rows = [f"cells\t{rel(paths['image'])}\t{paths['image_axes']}\t0.5\t60\t0\t{rel(paths['labels'])}\t\t\t",
            "blobs\tdata/noisy.tif\tYX\t0.5\t\t\t\t\t\tdata/clean.tif"]
    write_config(wd, restoration={"method": "n2v", "n2v": TINY},
                 segmentation={"stardist": {"epochs": 1, "steps_per_epoch": 2, "patch_size": [64, 64], "n_rays": 8,
                                            "unet_n_depth": 1, "batch_size": 2, "patience": 0}},
                 classification={"enabled": False}, tracking={"enabled": False})
    (wd / "config" / "samples.tsv").write_text(SHEET_HEADER + "\n".join(rows) + "\n")
    return wd, timelapse


@pytest.mark.skipif(not N2V_PYTHON.exists(), reason="the n2v environment (.venv/n2v) is not set up: run make setup")
def test_n2v_in_the_dag_feeds_segmentation(n2v_project):
    wd, timelapse = n2v_project
    # N2V trains and predicts in the n2v environment
    plan = run_snakemake(wd, "--cores", "2", "--dry-run", "--printshellcmds").stdout
    for rule in ("train_restoration", "restore"):
        block = plan[plan.index(f"rule {rule}:"):]
        assert re.search(r"\.venv/n2v/bin/python \S+/scripts/snakescope\.py run", block.split("\n\n")[0]), block[:800]
    run_snakemake(wd, "--cores", "2", timeout=1500)
    # segmentation (training and prediction) read the restored image
    segment = json.loads((wd / "results/jobs/segment-b0000.plan.json").read_text())
    cells = next(w for w in segment["samples"] if w["sample"] == "cells")
    assert cells["steps"][0]["inputs"]["image"] == "results/cells/restored.ome.zarr"
    training = json.loads((wd / "results/jobs/train_segmentation-stardist_2d.plan.json").read_text())
    assert [s["image"] for s in training["sources"]] == ["results/cells/restored.ome.zarr"]
    # the report holds both training curves
    run_snakemake(wd, "--report", str(wd / "report.html"))
    html = (wd / "report.html").read_text()
    for name in ("n2v_2d_training.png", "stardist_2d_training.png", "restoration.csv"):
        assert name in html, name
    assert (wd / "results/cells/qc/restoration.png").stat().st_size > 1000
    model = wd / "results" / "models" / "n2v_2d"
    meta = json.loads((model / "snakescope.json").read_text())
    assert meta["kind"] == "n2v" and meta["versions"]["keras"].startswith("2.15") and "n2v" in meta["versions"]
    assert meta["training_samples"] == ["cells", "blobs"]  # both 2D samples fed the self-supervised training
    normalized = ngff.read_image(wd / "results" / "cells" / "normalized.ome.zarr")
    restored = ngff.read_image(wd / "results" / "cells" / "restored.ome.zarr")
    assert restored.axes == normalized.axes == "tcyx" and restored.shape == normalized.shape
    before, after = np.asarray(normalized.data), np.asarray(restored.data)
    np.testing.assert_allclose(after[:, 1], before[:, 1], rtol=0, atol=1e-6)  # channel 1 passes unchanged
    assert not np.allclose(after[:, 0], before[:, 0], atol=1e-3)  # channel 0 was restored
    assert restored.attrs["snakescope"]["restore"]["kind"] == "n2v"
    table = pd.read_csv(wd / "results" / "metrics" / "restoration.csv")
    assert list(table["sample"]) == ["blobs", "ALL"]
    assert np.isfinite(table.loc[0, ["psnr_input", "psnr_restored", "ssim_restored"]].astype(float)).all()
    from snakescope.io.labels import read_labels_image

    assert read_labels_image(wd / "results" / "cells" / "image.ome.zarr" / "labels").shape[0] == timelapse.n_frames
