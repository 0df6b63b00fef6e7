"""The box detector and the typed U-Net through the real workflow: boxes columns in three
formats train the detector (its own job), every 2D sample gets its boxes, scored against the
true ones per sample and pooled; the typed U-Net's cell types become the exported boxes'
classes; napari's own reader opens both box files; a prediction key reruns no training."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

from conftest import REPO, run_snakemake
from interop import check_interop
from snakescope.io.boxes import boxes_from_labels, read_boxes_csv, read_napari_shapes, read_yolo
from snakescope.io.boxes import write_boxes_csv, write_napari_shapes, write_yolo
from snakescope.synthetic import make_timelapse, write_timelapse

pytestmark = pytest.mark.slow

TYPES = ["round", "elongated"]
# a two-step U-Net: the test is about the jobs and their outputs, not its accuracy
TINY_UNET = {"architecture": {"n_depth": 1, "n_filter_base": 4}, "patch_size": [32, 32], "batch_size": 2,
             "epochs": 1, "steps_per_epoch": 2, "patience": 0, "types": TYPES}
# the detector: 300 steps (half a minute), enough to find these nuclei, so the scores mean something
TINY_DETECTOR = {"enabled": True, "class_names": TYPES, "architecture": {"n_depth": 2, "n_filter_base": 16},
                 "patch_size": [64, 64], "batch_size": 4, "epochs": 10, "steps_per_epoch": 30}


def typed(sim) -> dict[int, int]:
    """label id -> type index of a synthetic sample."""
    return {int(r.label): TYPES.index(r.class_name) for r in sim.classes.itertuples()}


@pytest.fixture(scope="module")
def detect_run(tmp_path_factory):
    """A 2D+t sample (napari boxes, 2 of 3 frames annotated), a 2D one (YOLO boxes), a 2D one
    with plain CSV boxes, and one without boxes or labels; U-Net with two cell types."""
    wd = tmp_path_factory.mktemp("detect_workflow") / "wd"
    data = wd / "data"
    kw = dict(ndim=2, class_names=TYPES, division_probability=0.0, blank_fraction=0.0)
    movie = make_timelapse(n_frames=3, shape=(64, 64), n_cells=5, seed=3, **kw)
    cells = write_timelapse(movie, data / "cells")
    movie_boxes = boxes_from_labels(movie.labels, classes=typed(movie))
    write_napari_shapes(data / "cells_boxes.csv", movie_boxes.take(movie_boxes.frames != 1), class_names=TYPES,
                        time_lapse=True)
    movie.classes.rename(columns={"class_name": "type"})[["label", "type"]].to_csv(data / "cells_types.csv",
                                                                                  index=False)
    sheet = ["sample_id\timage\taxes\tvoxel_size\ttime_interval\tlabels\ttypes\tboxes",
             f"cells\t{cells['image'].relative_to(wd)}\t{cells['image_axes']}\t0.5\t60\t"
             f"{cells['labels'].relative_to(wd)}\tdata/cells_types.csv\tdata/cells_boxes.csv"]
    truth = {"cells": movie_boxes.take(movie_boxes.frames != 1)}
    for sid, seed, fmt in (("still", 8, "txt"), ("plain", 9, "csv"), ("bare", 10, None)):
        sim = make_timelapse(n_frames=1, shape=(64, 72), n_cells=4, seed=seed, **kw)
        tifffile.imwrite(data / f"{sid}.tif", sim.image.reshape(64, 72))
        tifffile.imwrite(data / f"{sid}_labels.tif", sim.labels.reshape(64, 72).astype(np.uint16))
        sim.classes.rename(columns={"class_name": "type"})[["label", "type"]].to_csv(data / f"{sid}_types.csv",
                                                                                    index=False)
        boxes = boxes_from_labels(sim.labels[0], classes=typed(sim))
        if fmt == "txt":
            write_yolo(data / f"{sid}_boxes.txt", boxes, (64, 72))
        elif fmt == "csv":
            write_boxes_csv(data / f"{sid}_boxes.csv", boxes, class_names=TYPES)
        truth[sid] = boxes
        extra = (f"data/{sid}_labels.tif\tdata/{sid}_types.csv\tdata/{sid}_boxes.{fmt}" if fmt else "\t\t")
        sheet.append(f"{sid}\tdata/{sid}.tif\tYX\t0.5\t\t{extra}")
    (wd / "config").mkdir()
    (wd / "config" / "samples.tsv").write_text("\n".join(sheet) + "\n")
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(samples="config/samples.tsv", segmentation={"method": "unet", "unet": TINY_UNET},
                  detection=TINY_DETECTOR, classification={"enabled": False}, tracking={"enabled": False},
                  resources={"threads": 1, "retries": 0})
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    run_snakemake(wd, "--cores", "2")
    return wd, truth


def test_detector_trains_as_a_job_and_boxes_are_written_for_every_2d_sample(detect_run):
    wd, truth = detect_run
    model = wd / "results/models/detector_2d"
    meta = json.loads((model / "snakescope.json").read_text())
    assert meta["kind"] == "detector" and sorted(meta["training_samples"]) == ["cells", "plain", "still"]
    # only annotated frames train: frame 1 of the time-lapse has no boxes in its file
    split = json.loads((model / "split.json").read_text())
    assert sorted(split["train"] + split["validation"]) == ["cells:t0", "cells:t2", "plain", "still"]
    assert (wd / "results/models/detector_2d_training.png").stat().st_size > 0
    assert not (wd / "results/models/detector_2d.bioimage.io.zip").exists()  # bioimage.io has no box output
    assert (wd / "results/models/unet_2d.bioimage.io.zip").is_file()
    for sid, n_frames in (("cells", 3), ("still", 1), ("plain", 1), ("bare", 1)):
        folder = wd / "results" / sid / "detections"
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["class_names"] == TYPES and len(summary["per_frame"]) == n_frames
        boxes = read_boxes_csv(folder / "boxes.csv", class_names=TYPES)
        assert 0 < len(boxes) == summary["n_boxes"] and set(boxes.frames) <= set(range(n_frames))
        assert sorted(p.name for p in (folder / "yolo").iterdir()) == [f"t{t:04d}.txt" for t in range(n_frames)]


def test_detections_are_scored_per_sample_and_pooled(detect_run):
    wd, truth = detect_run
    rows = {}
    for sid in ("cells", "still", "plain"):
        table = pd.read_csv(wd / "results" / sid / "detection_metrics.csv")
        row = table.iloc[0]
        assert row["sample"] == sid and row["n_true"] == len(truth[sid]) and row["n_predicted"] > 0
        assert row["tp"] + row["fn"] == row["n_true"] and row["tp"] + row["fp"] == row["n_predicted"]
        assert 0 <= row["map50"] <= 1 and 0 <= row["map50_95"] <= row["map50"] + 1e-9 and row["tp"] > 0
        # the true boxes as read from the sheet's file, in pixels
        np.testing.assert_allclose(read_boxes_csv(wd / row["truth_boxes"], class_names=TYPES).yxyx, truth[sid].yxyx, atol=1e-4)
        rows[sid] = row
    assert not (wd / "results/bare/detection_metrics.csv").exists()  # no true boxes, nothing to score
    pooled = pd.read_csv(wd / "results/metrics/detection.csv").set_index("sample")
    assert list(pooled.index) == ["cells", "still", "plain", "ALL"]
    for key in ("n_true", "n_predicted", "tp", "fp", "fn"):
        assert pooled.loc["ALL", key] == sum(r[key] for r in rows.values())
    assert "detection" in (wd / "results/summary.md").read_text()


def test_typed_unet_runs_and_its_types_are_the_exported_boxes_classes(detect_run):
    wd, truth = detect_run
    for sid in ("cells", "still"):
        objects = pd.read_parquet(wd / "results" / sid / "objects.parquet")
        assert "type" in objects and set(objects["type"].dropna()) <= set(TYPES)
        folder = wd / "results" / sid
        names = (folder / "boxes_yolo" / "classes.txt").read_text().split()
        assert names[:2] == TYPES and set(names[2:]) <= {"untyped"}
        exported = read_napari_shapes(folder / "boxes.csv", class_names=names)
        n_frames = 3 if sid == "cells" else 1
        assert len(exported) == len(objects) and set(exported.frames) <= set(range(n_frames))
        # each object's box carries its type (objects and boxes both run by frame, then label)
        objects = objects.sort_values(["t", "label"])
        expected = [names.index(t if isinstance(t, str) else "untyped") for t in objects["type"]]
        assert exported.classes.tolist() == expected
        np.testing.assert_allclose(exported.scores, objects["type_fraction"].fillna(1.0), atol=1e-5)
        yolo = read_yolo(folder / "boxes_yolo" / "t0000.txt", (64, 64 if sid == "cells" else 72))
        assert set(yolo.classes) <= set(range(len(names)))
    percent = pd.read_csv(wd / "results/metrics/class_confusion_percent.csv", index_col=0)
    assert len(percent) == 5 and np.allclose(percent.sum(axis=1), 100, atol=0.01)


def test_napari_opens_the_box_files(detect_run):
    wd, _ = detect_run
    files = {wd / "results/still/boxes.csv": wd / "results/still/boxes.csv",
             wd / "results/cells/detections/shapes.csv": wd / "results/cells/detections/boxes.csv"}
    report = check_interop({"--napari-shapes": list(files)})
    for shapes, plain in files.items():
        result = report[str(shapes)]
        assert "error" not in result, result
        names = TYPES + ["untyped"]
        ours = read_napari_shapes(shapes, class_names=names) if shapes == plain else read_boxes_csv(plain,
                                                                                                  class_names=names)
        assert result["layer_type"] == "shapes" and result["shape_types"] == ["rectangle"]
        assert result["n_shapes"] == len(ours)
        # napari's rectangle corners are the box edges minus half a pixel (pixel centres on integers)
        corners = np.array([lo[-2:] + hi[-2:] for lo, hi in result["corners"]])
        np.testing.assert_allclose(corners, ours.yxyx - 0.5, atol=1e-3)


def test_a_prediction_key_reruns_detection_only(detect_run):
    wd, _ = detect_run
    config = yaml.safe_load((wd / "config" / "config.yaml").read_text())
    config["detection"]["score_thresh"] = 0.5
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    dry = run_snakemake(wd, "--cores", "2", "-n", "--quiet", "rules").stdout
    assert "segment" in dry and "train_detector" not in dry and "train_segmentation" not in dry
