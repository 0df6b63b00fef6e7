"""The U-Net through the real workflow: per-sample pixel-class confusion and its sum over samples."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

from conftest import REPO, run_snakemake
from snakescope.io.labels import read_class_map, read_labels_image
from snakescope.synthetic import make_timelapse, write_timelapse
from snakescope.segmentation.unet import CLASS_NAMES, labels_to_classes

pytestmark = pytest.mark.slow

# a U-Net trained for two steps: the test is about the outputs, not the accuracy
TINY_UNET = {"architecture": {"n_depth": 1, "n_filter_base": 4}, "patch_size": [32, 32], "batch_size": 2,
             "epochs": 1, "steps_per_epoch": 2, "patience": 0}


@pytest.fixture(scope="module")
def unet_run(tmp_path_factory):
    """A 2D+t sample and a 2D sample, both with labels, segmented by a U-Net the workflow trains."""
    wd = tmp_path_factory.mktemp("unet_workflow") / "wd"
    cells = write_timelapse(make_timelapse(ndim=2, n_frames=3, shape=(64, 64), n_cells=5, seed=3), wd / "data" / "cells")
    still = make_timelapse(ndim=2, n_frames=1, shape=(64, 72), n_cells=4, seed=8)
    tifffile.imwrite(wd / "data" / "still.tif", still.image.reshape(64, 72))
    tifffile.imwrite(wd / "data" / "still_labels.tif", still.labels.reshape(64, 72).astype(np.uint16))
    sheet = ("sample_id\timage\taxes\tvoxel_size\ttime_interval\tchannel\tlabels\n"
             f"cells\t{cells['image'].relative_to(wd)}\t{cells['image_axes']}\t0.5\t60\t0\t{cells['labels'].relative_to(wd)}\n"
             "still\tdata/still.tif\tYX\t0.5\t\t\tdata/still_labels.tif\n")
    (wd / "config").mkdir()
    (wd / "config" / "samples.tsv").write_text(sheet)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(samples="config/samples.tsv", segmentation={"method": "unet", "unet": TINY_UNET},
                  classification={"enabled": False}, tracking={"enabled": False},
                  resources={"threads": 1, "retries": 0})
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    run_snakemake(wd, "--cores", "2")
    return wd, {"cells": cells["labels"], "still": wd / "data" / "still_labels.tif"}


def read_counts(path) -> np.ndarray:
    table = pd.read_csv(path, index_col=0)
    assert list(table.index) == list(CLASS_NAMES) and list(table.columns) == list(CLASS_NAMES)
    return table.to_numpy()


def test_per_sample_and_summed_class_outputs(unet_run):
    wd, truth_files = unet_run
    per_sample = {}
    for sample, truth_file in truth_files.items():
        folder = wd / "results" / sample
        for name in ("class_confusion.csv", "class_metrics.csv", "qc/class_confusion.png", "segmentation_metrics.csv"):
            assert (folder / name).stat().st_size > 0, name
        counts = read_counts(folder / "class_confusion.csv")
        # recomputed here: every frame's true classes (training targets) against the stored class map
        truth = tifffile.imread(truth_file).reshape(read_labels_image(folder / "image.ome.zarr/labels").shape)
        classes = read_class_map(folder / "image.ome.zarr/labels").data[...]
        assert classes.dtype == np.uint8 and classes.shape == truth.shape
        frames = [(truth, classes)] if truth.ndim == 2 else list(zip(truth, classes))
        expected = np.zeros((3, 3), np.int64)
        for t_labels, t_classes in frames:
            true_classes = labels_to_classes(t_labels)
            for i in range(3):
                for j in range(3):
                    expected[i, j] += np.count_nonzero((true_classes == i) & (t_classes == j))
        np.testing.assert_array_equal(counts, expected)
        # every pixel of the ground truth is counted once; contour + body rows are its objects' pixels
        assert counts.sum() == truth.size
        assert counts[1:].sum() == np.count_nonzero(truth)
        per_sample[sample] = counts

    summed = read_counts(wd / "results/metrics/class_confusion.csv")
    np.testing.assert_array_equal(summed, per_sample["cells"] + per_sample["still"])
    assert (wd / "results/metrics/class_confusion.png").stat().st_size > 0

    scores = pd.read_csv(wd / "results/metrics/class_metrics.csv")
    assert set(scores["sample"]) == {"cells", "still", "ALL"}
    total = scores[scores["sample"] == "ALL"].set_index("class")
    for i, name in enumerate(CLASS_NAMES):
        tp, fp, fn = summed[i, i], summed[:, i].sum() - summed[i, i], summed[i].sum() - summed[i, i]
        assert total.loc[name, ["tp", "fp", "fn", "support"]].tolist() == [tp, fp, fn, summed[i].sum()]
        if tp + fp + fn:
            assert total.loc[name, "iou"] == pytest.approx(tp / (tp + fp + fn), rel=1e-5)
    assert total.loc["mean", "tp"] / total.loc["mean", "support"] == pytest.approx(np.trace(summed) / summed.sum())
    per_sample_rows = pd.read_csv(wd / "results/still/class_metrics.csv")
    pd.testing.assert_frame_equal(per_sample_rows, scores[scores["sample"] == "still"].reset_index(drop=True))
    # the instance metrics are still gathered as before
    instances = pd.read_csv(wd / "results/metrics/segmentation.csv")
    assert set(instances["sample"]) == {"cells", "still", "ALL"}


def test_unet_run_is_complete(unet_run):
    """A second run of the same target has nothing to do."""
    wd, _ = unet_run
    dry = run_snakemake(wd, "--cores", "1", "--dry-run")
    assert "Nothing to be done" in dry.stdout + dry.stderr
