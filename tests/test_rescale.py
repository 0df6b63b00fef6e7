"""Pixel-size-aware prediction (snakescope.segmentation.rescale): resampling to the model's grid
and labels back on the image's, blockwise and scattered; what a model records; a real model
at twice the magnification with rescale auto and off; rescale is a prediction-only key."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from snakescope.io import labels as labels_io
from snakescope.io import ngff
from snakescope.segmentation.rescale import (SCALE_KEY, NearestLabels, ResampledFrame, applied_rescale,
                                             equivalent_diameters, model_pixel_size, plan_rescale,
                                             record_training_scale, resample_labels, resample_linear, training_scale)
from snakescope.settings import defaults

REPO = Path(__file__).resolve().parents[1]
SHIPPED_2D = REPO / "models" / "stardist_2d_nuclei"


def write_image(path: Path, data: np.ndarray, axes: str, scale, chunks=None) -> Path:
    """A one-level NGFF image with the given scale (µm per axis)."""
    group = ngff.open_group(path, "w")
    level = ngff.create_levels(group, [data.shape], chunks or data.shape, np.float32, "lz4")[0]
    level[...] = data.astype(np.float32)
    group.attrs["multiscales"] = [ngff.multiscales_metadata(axes, list(scale), 1, path.stem)]
    return path


def model_folder(path: Path, pixel_size: dict | None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    meta = {"kind": "stardist"}
    if pixel_size is not None:
        meta[SCALE_KEY] = {"axes": "".join(pixel_size), "pixel_size": pixel_size}
    (path / "snakescope.json").write_text(json.dumps(meta))
    return path


def disc_labels(shape, centres, radius) -> np.ndarray:
    yy, xx = np.indices(shape)
    labels = np.zeros(shape, np.uint32)
    for k, (y, x) in enumerate(centres, start=1):
        labels[(yy - y) ** 2 + (xx - x) ** 2 <= radius ** 2] = k
    return labels


# ---- resampling --------------------------------------------------------------------------


@pytest.mark.parametrize("zoom", [2.0, 0.5, 1.7, 0.3])
def test_shapes_round_trip_and_linear_ramps_stay_linear(zoom):
    image = np.add.outer(np.arange(41.0), 2 * np.arange(67.0)).astype(np.float32)
    model = resample_linear(image, (zoom, zoom))
    size = lambda n: int(np.floor(n * zoom + 0.5))  # noqa: E731  (half up)
    assert model.shape == (size(41), size(67)) and model.dtype == np.float32
    back = resample_labels(np.rint(model).astype(np.int32), (zoom, zoom), image.shape)
    assert back.shape == image.shape
    # a ramp sampled at pixel centres (clamped at the border) is reproduced exactly
    centre = lambda n, z: np.clip((np.arange(size(n)) + 0.5) / z - 0.5, 0, n - 1)  # noqa: E731
    np.testing.assert_allclose(model, np.add.outer(centre(41, zoom), 2 * centre(67, zoom)), atol=1e-4)


def test_halving_averages_pixel_pairs_and_matches_scipy():
    from scipy import ndimage

    image = np.random.default_rng(0).random((36, 50)).astype(np.float32)
    half = resample_linear(image, (0.5, 0.5))
    np.testing.assert_allclose(half, image.reshape(18, 2, 25, 2).mean(axis=(1, 3)), atol=1e-6)
    np.testing.assert_allclose(resample_linear(image, (2, 3)),
                               ndimage.zoom(image, (2, 3), order=1, mode="nearest", grid_mode=True), atol=1e-5)


@pytest.mark.parametrize("zoom", [(2.0, 2.0), (3.0, 1.0), (0.5, 0.5), (1.3, 0.7)])
def test_labels_go_back_on_the_image_grid(zoom):
    shape = (45, 61)
    image_labels = disc_labels(shape, [(10, 12), (30, 40), (20, 50)], 6)
    # the labels as the model's grid sees them (nearest), then back: the image's grid, exactly
    model_shape = ResampledFrame(np.zeros(shape), zoom).shape
    centre = [np.clip(np.floor((np.arange(m) + 0.5) / z).astype(int), 0, n - 1)
              for m, z, n in zip(model_shape, zoom, shape)]
    on_model = image_labels[np.ix_(*centre)]
    back = resample_labels(on_model, zoom, shape)
    assert back.shape == shape and back.dtype == image_labels.dtype
    if min(zoom) >= 1:  # every image pixel has its own model pixel: nothing lost
        np.testing.assert_array_equal(back, image_labels)
    else:  # coarser model grid: each object keeps most of its pixels, none appears
        for k in range(1, 4):
            assert np.count_nonzero((back == k) & (image_labels == k)) > 0.7 * np.count_nonzero(image_labels == k)
        assert set(np.unique(back)) <= set(np.unique(image_labels))


@pytest.mark.parametrize("zoom", [(2.0, 2.0), (0.5, 0.5), (1.7, 0.6)])
def test_block_reads_and_writes_equal_the_whole_frame(zoom):
    rng = np.random.default_rng(3)
    image = rng.random((37, 53)).astype(np.float32)
    view = ResampledFrame(image, zoom)
    whole = view[...]
    labels = rng.integers(0, 5, view.shape).astype(np.uint32)
    expected = resample_labels(labels, zoom, image.shape)
    out = np.zeros(image.shape, np.uint32)
    target = NearestLabels(out, zoom)
    assert target.shape == view.shape
    for y in range(0, view.shape[0], 7):
        for x in range(0, view.shape[1], 11):
            block = (slice(y, y + 7), slice(x, x + 11))
            np.testing.assert_array_equal(view[block], whole[block])
            region = target[block]  # what StarDist's block writer does: read, set the objects, write
            mask = labels[block] > 0
            region[mask] = labels[block][mask]
            target[block] = region
    np.testing.assert_array_equal(out, expected)


def test_anisotropic_3d_resamples_only_the_axis_that_differs(tmp_path):
    stack = np.random.default_rng(1).random((2, 6, 40, 48)).astype(np.float32)  # t z y x
    image = write_image(tmp_path / "stack.ome.zarr", stack, "tzyx", [60, 2.0, 0.5, 0.5])
    model = model_folder(tmp_path / "model", {"z": 1.0, "y": 0.51, "x": 0.5})  # y within 5 %
    rescaling = plan_rescale(model, image, "auto")
    assert rescaling.zooms == (2.0, 1.0, 1.0) and rescaling.applied
    record = rescaling.record()
    assert record["zoom"] == {"z": 2.0, "y": 1.0, "x": 1.0} and record["mode"] == "auto"
    assert record["image_pixel_size"] == {"z": 2.0, "y": 0.5, "x": 0.5}
    frame = stack[1]
    seen = {}

    def segment_frame(view, out):  # a "segmenter" that labels voxels above the mean of its grid
        seen["shape"] = view.shape
        data = view[...]
        out[...] = (data > 0.5).astype(np.uint32)
        return 1

    out = np.zeros(frame.shape, np.uint32)
    rescaling.wrap(segment_frame)(frame, out)
    assert seen["shape"] == (12, 40, 48) and out.shape == frame.shape
    # z zoomed by 2 with pixel centres aligned: model plane 2k+1 sits at z = k + 0.25
    model_view = ResampledFrame(frame, (2.0, 1.0, 1.0))[...]
    np.testing.assert_allclose(model_view[3], 0.75 * frame[1] + 0.25 * frame[2], atol=1e-6)
    np.testing.assert_array_equal(out, (model_view[1::2] > 0.5).astype(np.uint32))
    assert plan_rescale(model, image, "off").zooms == (1.0, 1.0, 1.0)
    assert not plan_rescale(model, image, False).applied  # YAML's unquoted off


def test_a_model_without_pixel_size_is_used_as_it_is_with_a_warning(tmp_path, caplog):
    image = write_image(tmp_path / "i.ome.zarr", np.zeros((32, 32)), "yx", [0.25, 0.25])
    with caplog.at_level(logging.WARNING, logger="snakescope.segmentation.rescale"):
        rescaling = plan_rescale(model_folder(tmp_path / "published", None), image, "auto")
    assert not rescaling.applied and "records no training pixel size" in caplog.text
    assert rescaling.record()["note"].startswith("model ")
    close = plan_rescale(model_folder(tmp_path / "m", {"y": 0.26, "x": 0.24}), image, "auto")
    assert not close.applied  # within the 5 % tolerance


# ---- what a model records ------------------------------------------------------------------


def test_training_scale_records_pixel_and_object_size(tmp_path, caplog):
    labels = disc_labels((100, 100), [(20, 20), (60, 60), (30, 75)], 8)
    px, um = equivalent_diameters(labels, (0.5, 0.5))
    np.testing.assert_allclose(px, 16, atol=0.5)  # a disc of radius 8 px: about 16 px across
    np.testing.assert_allclose(um, px * 0.5)
    record = training_scale([({"y": 0.5, "x": 0.5}, [labels, labels[:50]]), ((0.5, 0.5), None)], "yx")
    assert record["pixel_size"] == {"y": 0.5, "x": 0.5} and record["unit"] == "micrometer"
    assert record["n_samples"] == 2 and record["n_objects"] == 5 and "note" not in record
    assert record["median_diameter_um"] == pytest.approx(record["median_diameter_px"] * 0.5)
    voxels = equivalent_diameters(np.ones((4, 4, 4), np.uint8), (2.0, 0.5, 0.5))
    assert voxels[0][0] == pytest.approx(np.cbrt(6 * 64 / np.pi))
    assert voxels[1][0] == pytest.approx(np.cbrt(6 * 64 * 0.5 / np.pi))
    with caplog.at_level(logging.WARNING):
        mixed = training_scale([((0.5, 0.5), None), ((1.0, 1.0), None), ((0.5, 0.5), None)], "yx")
    assert mixed["pixel_size"] == {"y": 0.5, "x": 0.5} and "differ" in mixed["note"] and "differ" in caplog.text
    model = model_folder(tmp_path / "m", None)
    record_training_scale(model, [((2.0, 0.5, 0.5), None)], "zyx", note="declared")
    assert model_pixel_size(model) == {"z": 2.0, "y": 0.5, "x": 0.5}
    meta = json.loads((model / "snakescope.json").read_text())
    assert meta["kind"] == "stardist" and meta[SCALE_KEY]["note"] == "declared"
    assert model_pixel_size(tmp_path / "nothing") is None


def test_training_jobs_record_the_samples_pixel_and_object_size(tmp_path):
    from snakescope.pipeline.training import _record_data

    labels = disc_labels((64, 64), [(16, 16), (40, 40)], 6)
    images = [write_image(tmp_path / f"{k}.ome.zarr", np.zeros((2, 64, 64)), "tyx", [60, 0.5, 0.5]) for k in "ab"]
    model = model_folder(tmp_path / "model", None)
    sources = [{"sample": k, "image": str(image)} for k, image in zip("ab", images)]
    _record_data(str(model), sources, [], {"a": [labels, labels], "b": [labels]})
    meta = json.loads((model / "snakescope.json").read_text())
    assert meta["training_samples"] == ["a", "b"] and model_pixel_size(model) == {"y": 0.5, "x": 0.5}
    assert meta[SCALE_KEY]["n_objects"] == 6 and meta[SCALE_KEY]["median_diameter_um"] == pytest.approx(6, abs=0.3)
    _record_data(str(model), sources, [])  # a restoration model: the pixel size only
    assert "n_objects" not in json.loads((model / "snakescope.json").read_text())[SCALE_KEY]


def test_rescale_is_a_prediction_key_that_never_retrains(tmp_path):
    from test_plan import project

    before = project(tmp_path, ["a", "b"])
    after = project(tmp_path, ["a", "b"], segmentation={"rescale": "off"})
    assert before.config.segmentation.rescale == "auto" and after.config.segmentation.rescale == "off"
    trainings = [j for j in before.jobs if j.startswith("train_")]
    assert "train_segmentation-stardist_2d" in trainings
    for name in trainings:
        assert before.job(name).digest == after.job(name).digest, name
    assert before.job("segment-b0000").digest != after.job("segment-b0000").digest  # but segments again
    unquoted = project(tmp_path, ["a", "b"], segmentation={"rescale": False})  # YAML's `rescale: off`
    assert unquoted.job("train_segmentation-stardist_2d").digest == before.job("train_segmentation-stardist_2d").digest


# ---- blockwise and scattered, with the instance engine ---------------------------------


def test_blocks_and_scattered_parts_on_the_model_grid_join_into_the_unsplit_labels(tmp_path):
    from scipy import ndimage

    from snakescope.blockwise import instances

    shape = (150, 170)  # pixel 1 µm; the model's 0.5 µm: its grid is 300 x 340
    centres = [(y, x) for y in range(12, 150, 22) for x in range(12, 170, 24)]
    truth = disc_labels(shape, centres, 6)
    image = write_image(tmp_path / "i.ome.zarr", (truth > 0).astype(np.float32), "yx", [1.0, 1.0], (64, 64))
    model = model_folder(tmp_path / "m", {"y": 0.5, "x": 0.5})
    settings = defaults().segmentation.replace(block_size=128, min_overlap=40, context=16)

    def segmenter(part=None):
        rescaling = plan_rescale(model, image, settings.rescale)

        def predict(block):
            return ndimage.label(np.asarray(block) > 0.5)[0]

        def segment_frame(frame, out):
            return instances.segment_frame(frame, out, predict, axes="YX", settings=settings, grid=(1, 1),
                                           field_of_view=lambda: (16, 16), part=part)

        return rescaling.wrap(segment_frame), {"rescale": rescaling.record()}

    segment_frame, summary = segmenter()
    single = labels_io.write_label_image(image, tmp_path / "single", segment_frame, summary=summary)
    labels = labels_io.read_labels_image(tmp_path / "single").data[...]
    assert labels.shape == shape and single["objects_per_frame"]["0"] == len(centres)
    assert single["rescale"]["zoom"] == {"y": 2.0, "x": 2.0}
    np.testing.assert_array_equal(labels > 0, truth > 0)  # every object whole, on the image's grid
    assert len(np.unique(labels)) == len(centres) + 1
    parts = [tmp_path / f"part{k}.zarr" for k in range(3)]
    for k in range(3):
        instances.write_part(image, parts[k], segmenter((k, 3))[0], part=k, n_parts=3, channel=0, summary=summary)
    joined = instances.join_parts(parts, image, tmp_path / "joined", channel=0)
    assert joined["rescale"] == single["rescale"]
    np.testing.assert_array_equal(labels_io.read_labels_image(tmp_path / "joined").data[...], labels)
    # what the provenance step copies into the sample's record
    assert applied_rescale(tmp_path / "joined") == single["rescale"] and applied_rescale(tmp_path / "none") is None
    from types import SimpleNamespace

    from snakescope.pipeline.plan import LABELS
    from snakescope.pipeline.stages import provenance

    sample = tmp_path / "results" / "s"
    shutil.copytree(tmp_path / "single", sample / LABELS)
    provenance(SimpleNamespace(row={"sample_id": "s"}), {"inputs": {}, "outputs": {"record": str(sample / "p.json")}},
               SimpleNamespace(config={}))
    recorded = json.loads((sample / "p.json").read_text())["segmentation_rescale"]
    assert recorded == json.loads(json.dumps(single["rescale"]))


def test_unet_labels_and_class_map_come_back_on_the_image_grid(tmp_path):
    """predict_unet's wiring, with a stand-in network: the frame it sees is on the model's
    grid, both label images (instances and class map) on the image's, the rescale recorded."""
    from scipy import ndimage

    from snakescope.segmentation.unet.predict import predict_unet
    from snakescope.segmentation.unet.targets import CLASS_NAMES

    shape = (70, 90)
    truth = disc_labels(shape, [(20, 20), (45, 60), (20, 70)], 7)
    image = write_image(tmp_path / "i.ome.zarr", (truth > 0).astype(np.float32), "yx", [0.25, 0.25])
    seen = {}

    class StandIn:  # what predict_unet uses of a UNet
        ndim, class_names, postprocessing, types = 2, CLASS_NAMES, {}, None
        model_dir = model_folder(tmp_path / "unet", {"y": 0.5, "x": 0.5})

        def predict_instances(self, frame, block_shape, where, classes_out):
            seen["shape"] = frame.shape
            labels = ndimage.label(np.asarray(frame[...]) > 0.5)[0]
            classes_out[...] = (labels > 0).astype(np.uint8) * 2
            return labels

    summary = predict_unet(StandIn(), image, tmp_path / "labels", defaults().segmentation, channel=0)
    assert seen["shape"] == (35, 45) and summary["rescale"]["zoom"] == {"y": 0.5, "x": 0.5}
    labels = labels_io.read_labels_image(tmp_path / "labels").data[...]
    classes = labels_io.read_class_map(tmp_path / "labels").data[...]
    assert labels.shape == classes.shape == shape and len(np.unique(labels)) == 4
    np.testing.assert_array_equal(classes == 2, labels > 0)
    assert np.count_nonzero((labels > 0) == (truth > 0)) > 0.97 * truth.size
    assert applied_rescale(tmp_path / "labels")["mode"] == "auto"


# ---- a real model --------------------------------------------------------------------------


def _f1(truth, labels) -> float:
    from snakescope.evaluation.instances import instance_metrics

    return float(instance_metrics(truth, labels, [0.5])["f1"].iloc[0])


@pytest.mark.parametrize("name, axes", [("stardist_2d_nuclei", "yx"), ("stardist_3d_nuclei", "zyx")])
def test_the_shipped_models_record_their_training_scale(name, axes):
    folder = REPO / "models" / name
    if not (folder / "snakescope.json").is_file():
        pytest.skip(f"{folder} is absent (make models)")
    record = json.loads((folder / "snakescope.json").read_text())[SCALE_KEY]
    assert record["axes"] == axes and record["unit"] == "micrometer" and record["n_objects"] > 100
    assert model_pixel_size(folder) == ({"y": 0.5, "x": 0.5} if axes == "yx" else {"z": 2.0, "y": 0.5, "x": 0.5})
    if axes == "yx":  # DSB2018 has no pixel size: a declared one, and the object size it stands for
        assert "declared" in record["note"] and 15 < record["median_diameter_px"] < 25


@pytest.fixture(scope="module")
def real_model():
    """The shipped 2D nuclei model as shipped (recording the 0.5 µm its DSB2018 grid is
    declared), loaded, and StarDist's nuclei test image (not in its training data)."""
    if not (SHIPPED_2D / "weights_best.h5").is_file():
        pytest.skip(f"{SHIPPED_2D} is absent (make models)")
    from stardist.data import test_image_nuclei_2d

    from snakescope import segmentation

    image, mask = test_image_nuclei_2d(return_mask=True)
    lo, hi = np.percentile(image, [1, 99.8])
    x = ((image - lo) / (hi - lo)).astype(np.float32)[:256, :256]
    return segmentation.load_model(SHIPPED_2D), x, mask[:256, :256]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
def test_real_nuclei_at_other_pixel_sizes_keep_their_f1_with_auto_only(real_model, tmp_path):
    from scipy import ndimage

    from snakescope import segmentation

    model, x, truth = real_model  # nuclei about 24 px across at the model's 0.5 µm
    settings = defaults().segmentation
    native_size = model_pixel_size(SHIPPED_2D)["x"]
    native = write_image(tmp_path / "native.ome.zarr", x, "yx", [native_size] * 2)
    segmentation.segment(model, native, tmp_path / "native", settings, channel=0)
    f1_native = _f1(truth, labels_io.read_labels_image(tmp_path / "native").data[...])
    f1, images = {}, {}
    for pixel_size in (2.0, 0.5):  # twice the pixel size (nuclei half as large in pixels), and half of it
        zoom = 1 / pixel_size
        xz = ndimage.zoom(x, zoom, order=1, mode="nearest", grid_mode=True)
        truth_z = ndimage.zoom(truth, zoom, order=0, mode="nearest", grid_mode=True)
        images[pixel_size] = (write_image(tmp_path / f"{pixel_size}.ome.zarr", xz, "yx",
                                          [pixel_size * native_size] * 2), truth_z)
        for mode in ("auto", "off"):
            out = tmp_path / f"{pixel_size}-{mode}"
            summary = segmentation.segment(model, images[pixel_size][0], out, settings.replace(rescale=mode), channel=0)
            labels = labels_io.read_labels_image(out).data[...]
            assert labels.shape == xz.shape
            f1[pixel_size, mode] = _f1(truth_z, labels)
            assert summary["rescale"]["zoom"] == {a: pixel_size if mode == "auto" else 1.0 for a in "yx"}
            attrs = ngff.open_group(out, "r").attrs["snakescope"]["segmentation"]
            assert attrs["rescale"]["mode"] == mode and attrs["rescale"]["model_pixel_size"] == (
                {"y": native_size, "x": native_size} if mode == "auto" else None)
    assert f1_native > 0.75, f1_native
    for pixel_size in (2.0, 0.5):
        assert abs(f1[pixel_size, "auto"] - f1_native) < 0.03, (f1_native, f1)
    assert f1[2.0, "off"] < f1_native - 0.07, (f1_native, f1)  # half-size nuclei: the model misses many

    # blocks and scattered parts on the model's grid (256 x 256 for the 128 x 128 image): the unsplit labels
    image, truth2 = images[2.0]
    blocked = settings.replace(block_size=128, min_overlap=32, context=24)  # 16 blocks (grid 8)
    single = segmentation.segment(model, image, tmp_path / "blocks", blocked, channel=0)
    parts = [tmp_path / f"part{k}.zarr" for k in range(2)]
    for k in range(2):
        segmentation.segment_part(model, image, parts[k], blocked, part=k, n_parts=2, channel=0)
    joined = segmentation.join_parts(parts, image, tmp_path / "joined", channel=0)
    assert joined == {**single, "scattered_parts": 2}
    blocks = labels_io.read_labels_image(tmp_path / "blocks").data[...]
    np.testing.assert_array_equal(labels_io.read_labels_image(tmp_path / "joined").data[...], blocks)
    assert abs(_f1(truth2, blocks) - f1[2.0, "auto"]) < 0.03
