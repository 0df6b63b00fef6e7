"""StarDist: training through the harness, thresholds, prediction into NGFF labels, measurements,
fine-tuning, splits, errors. (The block engine and scattered parts: tests/test_blockwise.py.)"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from snakescope.segmentation import stardist as segment
from snakescope.io import labels as labels_io
from snakescope.errors import InputError
from snakescope.settings import defaults
from snakescope.ingest.convert import ingest
from snakescope.segmentation.measure import measure
from snakescope.ingest.normalize import normalize
from snakescope.segmentation.training_data import TrainingSource, load_pairs, train_validation_keys
from snakescope.training.splits import make_or_load_split

# Keras 3 converts its own variables with np.array(copy=False) semantics numpy 2 warns about
pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")]


@pytest.fixture(scope="module")
def nuclei(tmp_path_factory):
    """The real StarDist nuclei image (ingested + normalized) and its labels."""
    from stardist.data import test_image_nuclei_2d

    folder = tmp_path_factory.mktemp("nuclei")
    image, mask = test_image_nuclei_2d(return_mask=True)
    tifffile.imwrite(folder / "image.tif", image)
    tifffile.imwrite(folder / "labels.tif", mask.astype(np.uint16))
    ingest(folder / "image.tif", "YX", folder / "image.ome.zarr", name="n", voxel_size={"y": 0.5, "x": 0.5},
           settings=defaults().ingest.replace(chunks={"z": 16, "y": 128, "x": 128}))
    normalize(folder / "image.ome.zarr", folder / "normalized.ome.zarr", folder / "norm.json")
    return folder, image, mask


@pytest.fixture(scope="module")
def model(nuclei):
    """A small StarDist model trained for a few hundred steps on quadrants of the real image,
    and its metadata."""
    folder, _, _ = nuclei
    pairs = load_pairs(TrainingSource("n", str(folder / "normalized.ome.zarr"), str(folder / "labels.tif")))
    x, y = pairs["n"]
    quads = {f"q{i}": (x[(i // 2) * 256:(i // 2 + 1) * 256, (i % 2) * 256:(i % 2 + 1) * 256],
                       y[(i // 2) * 256:(i // 2 + 1) * 256, (i % 2) * 256:(i % 2 + 1) * 256]) for i in range(4)}
    split = make_or_load_split(quads, folder / "split.json", 0.25, seed=1)
    settings = defaults().segmentation.stardist.replace(n_rays=16, patch_size=[128, 128], epochs=8, steps_per_epoch=30,
                                                        batch_size=4, unet_n_depth=2, learning_rate=1e-3, patience=0)
    metadata = segment.train_stardist(quads, folder / "model", settings, split=split, seed=1)
    return folder / "model", metadata


@pytest.fixture(scope="module")
def loaded(model):
    return segment.load_model(model[0])


def test_training_writes_the_harness_folder_with_thresholds(model):
    model_dir, metadata = model
    for name in ("config.json", "weights_best.h5", "weights_last.h5", "thresholds.json", "training.csv",
                 "training.png", "training.log", "snakescope.json"):
        assert (model_dir / name).stat().st_size > 0, name
    for old in ("history.csv", "history.png", "training.json"):
        assert not (model_dir / old).exists(), old
    history = pd.read_csv(model_dir / "training.csv")
    assert len(history) == 8 and {"loss", "val_loss"} <= set(history.columns)
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    thresholds = json.loads((model_dir / "thresholds.json").read_text())
    assert 0 < thresholds["prob"] < 1 and 0 < thresholds["nms"] < 1
    saved = json.loads((model_dir / "snakescope.json").read_text())
    assert saved["data"] == metadata["data"] and saved["thresholds"] == pytest.approx(thresholds)
    assert saved["kind"] == "stardist" and saved["ndim"] == 2 and saved["seed"] == 1 and saved["parent"] is None
    data = saved["data"]
    assert data["n_train"] + data["n_validation"] == 4 and data["n_train"] >= 1 and data["n_validation"] >= 1
    assert sorted(data["train_keys"] + data["validation_keys"]) == ["q0", "q1", "q2", "q3"]
    assert saved["patch_size"] == [128, 128] and saved["settings"]["n_rays"] == 16
    assert saved["training"]["epochs_run"] == 8 and saved["training"]["stopped_by"] == "epochs"
    assert saved["training"]["steps_run"] == 240


def test_prediction_finds_the_real_nuclei(model, loaded, nuclei, tmp_path):
    from stardist.matching import matching

    model_dir, _ = model
    folder, _, mask = nuclei
    out = tmp_path / "labels.ome.zarr"
    summary = segment.predict_stardist(loaded, folder / "normalized.ome.zarr", out, defaults().segmentation, channel=0)
    labels = labels_io.read_labels_image(out)
    assert labels.axes == "yx" and labels.data.dtype == np.uint32
    pred = labels.data[...]
    score = matching(mask, pred, thresh=0.5)
    # a few hundred CPU steps: far from converged, but clearly segmenting real nuclei
    assert score.f1 > 0.45, score
    assert summary["thresholds"]["prob_thresh"] == pytest.approx(json.loads((model_dir / "thresholds.json").read_text())["prob"])
    assert summary["model"] == str(model_dir)
    # the stage layer's entry points: the folder loads as StarDist, segments the same, once loaded for many images
    from snakescope import segmentation

    model = segmentation.load_model(model_dir)
    again = segmentation.segment(model, folder / "normalized.ome.zarr", tmp_path / "again.ome.zarr",
                                 defaults().segmentation, channel=0)
    assert again == summary
    np.testing.assert_array_equal(labels_io.read_labels_image(tmp_path / "again.ome.zarr").data[...], pred)
    with pytest.raises(InputError, match=f"{model_dir}: is a StarDist model but segmentation.method is unet"):
        segmentation.segment(model, folder / "normalized.ome.zarr", tmp_path / "never.ome.zarr",
                             defaults().segmentation.replace(method="unet"), channel=0)


def test_prob_thresh_from_config_overrides_and_range_checked(loaded, nuclei, tmp_path):
    folder, _, _ = nuclei
    settings = defaults().segmentation
    image = folder / "normalized.ome.zarr"
    strict = segment.predict_stardist(loaded, image, tmp_path / "a.ome.zarr", settings.replace(prob_thresh=0.95), channel=0)
    loose = segment.predict_stardist(loaded, image, tmp_path / "b.ome.zarr", settings.replace(prob_thresh=0.3), channel=0)
    assert strict["objects_per_frame"]["0"] < loose["objects_per_frame"]["0"]
    with pytest.raises(InputError, match="out of range"):
        segment.predict_stardist(loaded, image, tmp_path / "c.ome.zarr", settings.replace(nms_thresh=1.5), channel=0)
    assert not (tmp_path / "c.ome.zarr").exists()


def test_measurements_table(loaded, nuclei, tmp_path):
    folder, image, _ = nuclei
    labels_path = tmp_path / "labels.ome.zarr"
    segment.predict_stardist(loaded, folder / "normalized.ome.zarr", labels_path, defaults().segmentation, channel=0)
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


def test_fine_tuning_keeps_the_parents_network(model, nuclei, tmp_path):
    """parent: the parent's architecture (16 rays, whatever the settings say) and weights, trained further."""
    model_dir, _ = model
    folder, _, _ = nuclei
    pairs = load_pairs(TrainingSource("n", str(folder / "normalized.ome.zarr"), str(folder / "labels.tif")))
    x, y = pairs["n"]
    crops = {"a": (x[:256], y[:256]), "b": (x[256:], y[256:])}
    settings = defaults().segmentation.stardist.replace(patch_size=[128, 128], epochs=1, steps_per_epoch=2,
                                                        batch_size=2, patience=0)
    metadata = segment.train_stardist(crops, tmp_path / "tuned", settings, split={"train": ["a"], "validation": ["b"]},
                                      seed=2, parent=model_dir)
    assert metadata["parent"] == str(model_dir) and metadata["settings"]["n_rays"] == 32
    saved = json.loads((tmp_path / "tuned" / "snakescope.json").read_text())
    assert saved["parent"] == str(model_dir) and saved["fine_tuning"]["freeze_encoder"] is False
    tuned = segment.load_model(tmp_path / "tuned")
    assert tuned.config.n_rays == 16 and tuned.config.train_epochs == 1
    assert (tmp_path / "tuned" / "thresholds.json").exists()
    with pytest.raises(InputError, match="config.json missing"):
        segment.train_stardist(crops, tmp_path / "never", settings, split={"train": ["a"], "validation": ["b"]},
                               seed=2, parent=tmp_path)
    # a network other than the parent's, asked for (not the schema's default): both values named
    for asked, message in ((dict(n_rays=64), "n_rays 64 here, 16 in the parent"),
                           (dict(grid=[1, 1], unet_n_depth=2), r"grid \[1, 1\] here, \[2, 2\] in the parent\)")):
        with pytest.raises(InputError, match=f"{model_dir}: its network differs from the one segmentation.stardist "
                                             f"asks for .{message}.*set segmentation.model_2d: null"):
            segment.train_stardist(crops, tmp_path / "never", settings.replace(**asked),
                                   split={"train": ["a"], "validation": ["b"]}, seed=2, parent=model_dir)
    # a parent taking several channels: named before its weights load
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    config = json.loads((model_dir / "config.json").read_text())
    (rgb / "config.json").write_text(json.dumps({**config, "n_channel_in": 3}))
    with pytest.raises(InputError, match=f"{rgb}: takes 3 input channels, the samples give 1"):
        segment.train_stardist(crops, tmp_path / "never", settings, split={"train": ["a"], "validation": ["b"]},
                               seed=2, parent=rgb)
    assert not (tmp_path / "never").exists()


def test_fine_tuning_checks_the_parent_and_can_freeze_its_encoder(model, nuclei, tmp_path):
    """Settings the parent's network overrides are noted; freeze_encoder keeps the parent's
    down path (grid pooling and down_level layers) and trains the rest; a parent of the
    other dimensionality is an InputError naming it."""
    model_dir, _ = model
    folder, _, _ = nuclei
    x, y = load_pairs(TrainingSource("n", str(folder / "normalized.ome.zarr"), str(folder / "labels.tif")))["n"]
    crops = {"a": (x[:256], y[:256]), "b": (x[256:], y[256:])}
    split = {"train": ["a"], "validation": ["b"]}
    settings = defaults().segmentation.stardist.replace(patch_size=[128, 128], epochs=1, steps_per_epoch=3,
                                                        batch_size=2, patience=0, learning_rate=1e-2)
    metadata = segment.train_stardist(crops, tmp_path / "frozen", settings, split=split, seed=3, parent=model_dir,
                                      freeze_encoder=True)
    assert any("n_rays 32 (the parent's: 16); unet_n_depth 3 (the parent's: 2) do not apply" in note
               for note in metadata["notes"])  # grid null: nothing asked
    frozen = metadata["fine_tuning"]["frozen_layers"]
    assert metadata["fine_tuning"]["freeze_encoder"] and "down_level_1_no_1" in frozen
    assert not any(name.startswith(("middle", "up_level", "prob", "dist")) for name in frozen)
    parent, tuned = segment.load_model(model_dir).keras_model, segment.load_model(tmp_path / "frozen").keras_model
    weighted = [(a, b) for a, b in zip(parent.layers, tuned.layers) if a.weights]
    assert len(frozen) == 6  # two grid-pooling convolutions, two per down level
    for a, b in weighted[:len(frozen)]:
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(wa, wb)
    assert all(any(not np.array_equal(wa, wb) for wa, wb in zip(a.get_weights(), b.get_weights()))
               for a, b in weighted[len(frozen):])
    with pytest.raises(InputError, match="freeze_encoder: freezes the down path of a parent model"):
        segment.train_stardist(crops, tmp_path / "never", settings, split=split, seed=3, freeze_encoder=True)
    volumes = {"v": (np.stack([x[:64, :64]] * 8), np.stack([y[:64, :64]] * 8))}
    with pytest.raises(InputError, match=f"{model_dir}: is a 2D StarDist model; it cannot be fine-tuned on 3D frames"):
        segment.train_stardist(volumes, tmp_path / "never", settings, split={"train": ["v"], "validation": []},
                               seed=3, parent=model_dir)
    assert not (tmp_path / "never").exists()


def test_pretrained_model_folder_loads_and_bad_folders_fail(loaded, tmp_path):
    assert loaded.config.n_rays == 16
    with pytest.raises(InputError, match="config.json missing"):
        segment.load_model(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InputError, match="no weights"):
        segment.load_model(tmp_path)
    (tmp_path / "weights_best.h5").write_bytes(b"not hdf5")
    with pytest.raises(InputError, match=f"{tmp_path}.*incompatible StarDist model"):
        segment.load_model(tmp_path)


def test_bad_training_labels(nuclei, tmp_path):
    folder, _, mask = nuclei
    norm = str(folder / "normalized.ome.zarr")
    tifffile.imwrite(tmp_path / "small.tif", mask[:100].astype(np.uint16))
    with pytest.raises(InputError, match=r"small.tif: labels shape \(100, 512\) differs from the image shape \(512, 512\)"):
        load_pairs(TrainingSource("n", norm, str(tmp_path / "small.tif")))
    tifffile.imwrite(tmp_path / "float.tif", mask.astype(np.float32))
    with pytest.raises(InputError, match="must be an integer image"):
        load_pairs(TrainingSource("n", norm, str(tmp_path / "float.tif")))
    tifffile.imwrite(tmp_path / "empty.tif", np.zeros_like(mask, dtype=np.uint16))
    with pytest.raises(InputError, match="no objects in the training labels"):
        load_pairs(TrainingSource("n", norm, str(tmp_path / "empty.tif")))


def test_split_saved_once_and_reused(tmp_path):
    keys = [f"s:t{i}" for i in range(20)]
    first = make_or_load_split(keys, tmp_path / "split.json", 0.2, seed=1)
    again = make_or_load_split(keys, tmp_path / "split.json", 0.5, seed=99)
    assert again["train"] == first["train"] and again["validation"] == first["validation"]
    grown = make_or_load_split(keys + ["new:t0"], tmp_path / "split.json", 0.2, seed=1)
    assert set(first["train"]) <= set(grown["train"]) and set(first["validation"]) <= set(grown["validation"])
    assert first["validation"] and first["train"]


def test_training_keys_of_a_split():
    split = {"train": ["b", "a"], "validation": ["c"], "seed": 1}
    assert train_validation_keys(split, ["a", "b", "c"], "m") == (["b", "a"], ["c"], [])
    # one image, placed in validation by its hash: it trains, and validates too
    train, val, notes = train_validation_keys({"train": [], "validation": ["x"]}, ["x"], "m")
    assert train == val == ["x"] and "only one labelled image" in notes[0]
    with pytest.raises(InputError, match=r"m: samples \['d'\] are in neither"):
        train_validation_keys(split, ["a", "d"], "m")
    with pytest.raises(InputError, match="no training images"):
        train_validation_keys(split, [], "m")
