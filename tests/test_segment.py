"""StarDist stage: training outputs, thresholds, blockwise prediction, measurements, errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from snakescope.segmentation import stardist as segment
from snakescope.io import labels as labels_io
from snakescope.errors import InputError
from snakescope.ingest.convert import ingest
from snakescope.segmentation.measure import measure
from snakescope.ingest.normalize import normalize
from snakescope.training.splits import make_or_load_split

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nuclei(tmp_path_factory):
    """The real StarDist nuclei image (ingested + normalized) and its labels."""
    from stardist.data import test_image_nuclei_2d

    folder = tmp_path_factory.mktemp("nuclei")
    image, mask = test_image_nuclei_2d(return_mask=True)
    tifffile.imwrite(folder / "image.tif", image)
    tifffile.imwrite(folder / "labels.tif", mask.astype(np.uint16))
    ingest(folder / "image.tif", "YX", folder / "image.ome.zarr", name="n", voxel_size={"y": 0.5, "x": 0.5},
           chunks={"y": 128, "x": 128})
    normalize(folder / "image.ome.zarr", folder / "normalized.ome.zarr", folder / "norm.json")
    return folder, image, mask


@pytest.fixture(scope="module")
def model(nuclei):
    """A small StarDist model trained for a few hundred steps on quadrants of the real image."""
    folder, _, _ = nuclei
    pairs = segment.load_pairs(segment.TrainingSource("n", str(folder / "normalized.ome.zarr"), str(folder / "labels.tif")))
    x, y = pairs["n"]
    quads = {f"q{i}": (x[(i // 2) * 256:(i // 2 + 1) * 256, (i % 2) * 256:(i % 2 + 1) * 256],
                       y[(i // 2) * 256:(i // 2 + 1) * 256, (i % 2) * 256:(i % 2 + 1) * 256]) for i in range(4)}
    split = make_or_load_split(quads, folder / "split.json", 0.25, seed=1)
    summary = segment.train_stardist(quads, folder / "model", split=split, n_rays=16, patch_size=(128, 128),
                                     epochs=8, steps_per_epoch=30, batch_size=4, unet_n_depth=2,
                                     learning_rate=1e-3, patience=0, seed=1)
    return folder / "model", summary


def test_training_writes_weights_thresholds_and_curves(model):
    model_dir, summary = model
    for name in ("config.json", "weights_best.h5", "weights_last.h5", "thresholds.json", "history.csv", "history.png", "training.json"):
        assert (model_dir / name).exists(), name
    history = pd.read_csv(model_dir / "history.csv")
    assert len(history) == 8 and {"loss", "val_loss"} <= set(history.columns)
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    thresholds = json.loads((model_dir / "thresholds.json").read_text())
    assert 0 < thresholds["prob"] < 1 and 0 < thresholds["nms"] < 1
    assert summary["n_train"] + summary["n_validation"] == 4 and summary["n_train"] >= 1 and summary["n_validation"] >= 1


def test_prediction_finds_the_real_nuclei(model, nuclei, tmp_path):
    from stardist.matching import matching

    model_dir, _ = model
    folder, _, mask = nuclei
    out = tmp_path / "labels.ome.zarr"
    summary = segment.predict_stardist(model_dir, folder / "normalized.ome.zarr", out)
    labels = labels_io.read_labels_image(out)
    assert labels.axes == "yx" and labels.data.dtype == np.uint32
    pred = labels.data[...]
    score = matching(mask, pred, thresh=0.5)
    # a few hundred CPU steps: far from converged, but clearly segmenting real nuclei
    assert score.f1 > 0.45, score
    assert summary["thresholds"]["prob_thresh"] == pytest.approx(json.loads((model_dir / "thresholds.json").read_text())["prob"])


def test_blockwise_equals_whole_frame(model, nuclei, tmp_path):
    """Blocks of 192 px with overlap: objects on borders are neither cut nor duplicated."""
    from stardist.matching import matching

    model_dir, _ = model
    folder, _, _ = nuclei
    whole = tmp_path / "whole.ome.zarr"
    blocks = tmp_path / "blocks.ome.zarr"
    segment.predict_stardist(model_dir, folder / "normalized.ome.zarr", whole, block_size=1024)
    segment.predict_stardist(model_dir, folder / "normalized.ome.zarr", blocks, block_size=192, min_overlap=48, context=32)
    a = labels_io.read_labels_image(whole).data[...]
    b = labels_io.read_labels_image(blocks).data[...]
    assert len(np.unique(b)) - 1 == len(set(np.unique(b)) - {0})  # labels unique
    score = matching(a, b, thresh=0.5)
    assert score.f1 > 0.97, score
    assert score.mean_matched_score > 0.95


def test_scattered_parts_join_into_the_single_job_labels(model, nuclei, tmp_path):
    """segmentation.scatter: block shares predicted by separate jobs, joined = one job's output."""
    model_dir, _ = model
    folder, _, _ = nuclei
    image = folder / "normalized.ome.zarr"
    settings = dict(block_size=192, min_overlap=48, context=32)
    single = segment.predict_stardist(model_dir, image, tmp_path / "single.ome.zarr", **settings)
    parts = [tmp_path / f"part{k}.zarr" for k in range(3)]
    counts = {}
    for k in (2, 0, 1):  # jobs finish in any order
        counts[k] = segment.predict_stardist_part(model_dir, image, parts[k], part=k, n_parts=3,
                                                  **settings)["objects_per_frame"]["0"]
    assert all(n > 0 for n in counts.values()) and sum(counts.values()) == single["objects_per_frame"]["0"]
    joined = segment.gather_stardist_parts(parts[::-1], image, tmp_path / "joined.ome.zarr")
    assert joined["objects_per_frame"] == single["objects_per_frame"] and joined["scattered_parts"] == 3
    np.testing.assert_array_equal(labels_io.read_labels_image(tmp_path / "joined.ome.zarr").data[...],
                                  labels_io.read_labels_image(tmp_path / "single.ome.zarr").data[...])
    with pytest.raises(InputError, match="not one complete set"):
        segment.gather_stardist_parts(parts[:2], image, tmp_path / "incomplete.ome.zarr")
    assert not (tmp_path / "incomplete.ome.zarr").exists()


def test_prob_thresh_from_config_overrides_and_range_checked(model, nuclei, tmp_path):
    model_dir, _ = model
    folder, _, _ = nuclei
    strict = segment.predict_stardist(model_dir, folder / "normalized.ome.zarr", tmp_path / "a.ome.zarr", prob_thresh=0.95)
    loose = segment.predict_stardist(model_dir, folder / "normalized.ome.zarr", tmp_path / "b.ome.zarr", prob_thresh=0.3)
    assert strict["objects_per_frame"]["0"] < loose["objects_per_frame"]["0"]
    with pytest.raises(InputError, match="out of range"):
        segment.predict_stardist(model_dir, folder / "normalized.ome.zarr", tmp_path / "c.ome.zarr", nms_thresh=1.5)
    assert not (tmp_path / "c.ome.zarr").exists()


def test_measurements_table(model, nuclei, tmp_path):
    model_dir, _ = model
    folder, image, _ = nuclei
    labels_path = tmp_path / "labels.ome.zarr"
    segment.predict_stardist(model_dir, folder / "normalized.ome.zarr", labels_path)
    n = measure(labels_path, folder / "image.ome.zarr", tmp_path / "objects.parquet")
    table = pd.read_parquet(tmp_path / "objects.parquet")
    labels = labels_io.read_labels_image(labels_path).data[...]
    assert n == len(table) == len(np.unique(labels)) - 1
    assert {"t", "label", "y", "x", "area", "size_um", "bbox_min_y", "intensity_mean", "intensity_max", "eccentricity"} <= set(table.columns)
    first = table.iloc[0]
    region = labels == first["label"]
    assert first["area"] == region.sum()
    assert first["size_um"] == pytest.approx(region.sum() * 0.25)
    assert first["intensity_max"] == image[region].max()


def test_pretrained_model_folder_loads_and_bad_folders_fail(model, tmp_path):
    model_dir, _ = model
    loaded = segment.load_model(model_dir)
    assert loaded.config.n_rays == 16
    with pytest.raises(InputError, match="config.json missing"):
        segment.load_model(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InputError, match="no weights"):
        segment.load_model(tmp_path)


def test_bad_training_labels(nuclei, tmp_path):
    folder, _, mask = nuclei
    norm = str(folder / "normalized.ome.zarr")
    tifffile.imwrite(tmp_path / "small.tif", mask[:100].astype(np.uint16))
    with pytest.raises(InputError, match=r"small.tif: labels shape \(100, 512\) differs from the image shape \(512, 512\)"):
        segment.load_pairs(segment.TrainingSource("n", norm, str(tmp_path / "small.tif")))
    tifffile.imwrite(tmp_path / "float.tif", mask.astype(np.float32))
    with pytest.raises(InputError, match="must be an integer image"):
        segment.load_pairs(segment.TrainingSource("n", norm, str(tmp_path / "float.tif")))
    tifffile.imwrite(tmp_path / "empty.tif", np.zeros_like(mask, dtype=np.uint16))
    with pytest.raises(InputError, match="no objects in the training labels"):
        segment.load_pairs(segment.TrainingSource("n", norm, str(tmp_path / "empty.tif")))


def test_split_saved_once_and_reused(tmp_path):
    keys = [f"s:t{i}" for i in range(20)]
    first = make_or_load_split(keys, tmp_path / "split.json", 0.2, seed=1)
    again = make_or_load_split(keys, tmp_path / "split.json", 0.5, seed=99)
    assert again["train"] == first["train"] and again["validation"] == first["validation"]
    grown = make_or_load_split(keys + ["new:t0"], tmp_path / "split.json", 0.2, seed=1)
    assert set(first["train"]) <= set(grown["train"]) and set(first["validation"]) <= set(grown["validation"])
    assert first["validation"] and first["train"]
