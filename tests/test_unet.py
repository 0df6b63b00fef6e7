"""3-class U-Net: targets, training on real nuclei, blockwise prediction, class map, fine-tuning, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage
from stardist import data as stardist_data

from snakescope.errors import InputError
from snakescope.settings import defaults
from snakescope.io import labels as labels_io
from snakescope.evaluation.instances import instance_metrics
from snakescope.segmentation.unet import (CLASS_NAMES, UNet, architecture_for, build_keras_model, class_confusion,
                                         labels_to_classes, load_unet, normalize_percentile, patch_batches,
                                         predict_instances, predict_probabilities, predict_unet,
                                         probabilities_to_classes, probabilities_to_instances, read_pairs, train_unet)

# Keras 3.15 converts its own variables with np.array(copy=False) semantics numpy 2 warns about
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

def arch(**changes) -> dict:
    """The schema's U-Net architecture with some settings changed."""
    return {**defaults().segmentation.unet.architecture, **changes}


TINY = arch(n_depth=2, n_filter_base=8)
SPLIT = {"train": ["q00", "q01", "q10"], "validation": ["q11"]}


def quadrants():
    image, labels = stardist_data.test_image_nuclei_2d(return_mask=True)
    image = normalize_percentile(image)
    return {f"q{i}{j}": (image[256 * i:256 * (i + 1), 256 * j:256 * (j + 1)],
                         labels[256 * i:256 * (i + 1), 256 * j:256 * (j + 1)]) for i in range(2) for j in range(2)}


@pytest.fixture(scope="module")
def nuclei_pairs():
    return quadrants()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, nuclei_pairs):
    """A tiny U-Net trained for seconds on three quadrants of StarDist's real nuclei image;
    the fourth quadrant (q11) is held out for validation and scoring."""
    out = tmp_path_factory.mktemp("unet") / "model"
    settings = defaults().segmentation.unet.replace(architecture=TINY, patch_size=[64, 64], batch_size=8, epochs=10,
                                                    steps_per_epoch=12, learning_rate=3e-3, patience=5)
    metadata = train_unet(nuclei_pairs, out, settings, split=SPLIT, seed=7)
    return out, metadata


def tiny_frames(n=4, seed=0):
    from snakescope.synthetic import make_timelapse

    tl = make_timelapse(ndim=2, n_frames=n, shape=(64, 64), n_cells=6, seed=seed)
    image = tl.image.reshape((n,) + tl.image.shape[-2:])
    return {f"t{t}": (normalize_percentile(image[t]), tl.labels[t].reshape(image.shape[-2:])) for t in range(n)}


def quick_train(pairs, out, split, *, seed=0, parent=None, freeze_encoder=False, **settings):
    settings = defaults().segmentation.unet.replace(**{"architecture": arch(n_depth=1, n_filter_base=4),
                                                       "patch_size": [32, 32], "batch_size": 2, "epochs": 1,
                                                       "steps_per_epoch": 1, **settings})
    return train_unet(pairs, out, settings, split=split, seed=seed, parent=parent, freeze_encoder=freeze_encoder,
                      optimize_thresholds=False)


# ---------------------------------------------------------------------------------------
# Targets and post-processing


def test_touching_squares_get_a_contour_line_between_them():
    labels = np.zeros((20, 34), np.uint16)
    labels[4:14, 4:14] = 5
    labels[4:14, 14:24] = 9  # touches the first square along a column
    classes = labels_to_classes(labels)
    expected = np.zeros_like(classes)
    for sl in ((slice(4, 14), slice(4, 14)), (slice(4, 14), slice(14, 24))):
        expected[sl] = 1
        expected[sl[0].start + 1:sl[0].stop - 1, sl[1].start + 1:sl[1].stop - 1] = 2
    assert classes.dtype == np.uint8
    assert np.array_equal(classes, expected)
    assert (classes[4:14, 13] == 1).all() and (classes[4:14, 14] == 1).all()  # the line between them
    _, n_bodies = ndimage.label(classes == 2)
    assert n_bodies == 2  # the bodies stay apart, so they seed two instances


def test_classes_in_3d_and_for_thin_objects():
    labels = np.zeros((6, 12, 20), np.int32)
    labels[1:5, 2:8, 2:10] = 1
    labels[1:5, 2:8, 10:18] = 2
    labels[0, 10, 2:12] = 3  # a one-voxel-thin line: all boundary
    classes = labels_to_classes(labels)
    assert set(np.unique(classes[labels == 1])) == {1, 2}
    assert (classes[2:4, 3:7, 9] == 1).all() and (classes[2:4, 3:7, 10] == 1).all()
    _, n_bodies = ndimage.label(classes == 2)
    assert n_bodies == 3  # the thin object keeps one body voxel as its seed
    assert np.count_nonzero(classes[labels == 3] == 2) == 1
    assert (classes[labels == 0] == 0).all()


def test_probabilities_to_instances_splits_touching_objects():
    yy, xx = np.mgrid[:40, :60]
    prob = np.zeros((40, 60, 3), np.float32)
    prob[..., 0] = 1
    for cx in (20, 36):  # two discs that touch around x = 28
        d = np.hypot(yy - 20, xx - cx)
        prob[d < 8] = (0, 1, 0)
        prob[d < 6] = (0, 0, 1)
    prob[30:34, 50:54] = (0, 1, 0)  # contour without body: no seed, no object
    labels = probabilities_to_instances(prob, 0.5, 0.5, min_size=5)
    assert labels.dtype == np.int32 and labels.max() == 2
    assert labels[20, 20] != labels[20, 36] and labels[20, 20] > 0 and labels[20, 36] > 0
    assert labels[32, 52] == 0
    assert np.count_nonzero(labels) == np.count_nonzero(prob[..., 0] < 0.5) - 16


def test_patch_batches_are_seeded_and_augmented(nuclei_pairs):
    images = [x for x, _ in nuclei_pairs.values()]
    classes = [labels_to_classes(y) for _, y in nuclei_pairs.values()]
    aug = {"flip": True, "rot90": True, "intensity_scale": [0.8, 1.2], "intensity_shift": [-0.1, 0.1], "noise_std": 0.05}
    a = next(patch_batches(images, classes, (32, 32), 4, seed=3, augment=aug))
    b = next(patch_batches(images, classes, (32, 32), 4, seed=3, augment=aug))
    c = next(patch_batches(images, classes, (32, 32), 4, seed=4, augment=aug))
    assert a[0].shape == (4, 32, 32, 1) and a[1].dtype == np.uint8
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert set(np.unique(a[1])) <= {0, 1, 2}


# ---------------------------------------------------------------------------------------
# Training on real nuclei


@pytest.mark.slow
def test_trained_model_folder(trained):
    out, metadata = trained
    for name in ("weights_best.h5", "weights_last.h5", "config.json", "split.json", "training.csv", "training.png",
                 "training.log", "snakescope.json", "validation_metrics.csv", "confusion.csv", "confusion.png"):
        assert (out / name).stat().st_size > 0, name
    for old in ("best.weights.h5", "last.weights.h5", "history.csv", "history.png"):
        assert not (out / old).exists(), old
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "snakescope-unet/2" and config["classes"] == list(CLASS_NAMES)
    assert config["architecture"]["n_filter_base"] == 8 and config["architecture"]["ndim"] == 2
    assert config["postprocessing"] == metadata["postprocessing"]
    saved = json.loads((out / "snakescope.json").read_text())
    assert saved["kind"] == "unet" and saved["seed"] == 7 and saved["validation"] == metadata["validation"]
    assert saved["data"]["validation_keys"] == ["q11"] and saved["data"]["train_keys"] == ["q00", "q01", "q10"]
    assert json.loads((out / "split.json").read_text()) == {"train": ["q00", "q01", "q10"], "validation": ["q11"]}
    weights = saved["class_weights"]
    assert weights[1] > weights[2] > weights[0]  # the thin contour class is the rarest
    history = pd.read_csv(out / "training.csv")
    assert {"loss", "val_loss", "lr"} <= set(history.columns)
    assert len(history) == saved["training"]["epochs_run"] >= 2
    assert history["val_loss"].iloc[-1] < history["val_loss"].iloc[0]  # it learned something
    assert not list(out.parent.glob("*.partial-*"))
    cm = pd.read_csv(out / "confusion.csv", index_col=0)
    assert list(cm.columns) == ["background", "contour", "body"]
    assert cm.to_numpy().sum() == 256 * 256


@pytest.mark.slow
def test_trained_model_segments_held_out_nuclei(trained, nuclei_pairs):
    from skimage.filters import threshold_otsu

    out, config = trained
    image, gt = nuclei_pairs["q11"]
    labels = predict_instances(out, image)
    f1 = float(instance_metrics(gt, labels, (0.5,))["f1"].iloc[0])
    baseline, _ = ndimage.label(image > threshold_otsu(image))  # threshold + connected components
    f1_baseline = float(instance_metrics(gt, baseline, (0.5,))["f1"].iloc[0])
    print(f"U-Net F1@0.5 on the held-out quadrant: {f1:.3f} (Otsu baseline {f1_baseline:.3f})")
    assert f1 > 0.5
    assert f1 > f1_baseline + 0.2
    assert config["validation"]["f1@0.5"] == pytest.approx(f1, abs=1e-6)  # same tuned thresholds
    assert config["validation"]["class_iou"]["body"] > 0.5
    # a time-lapse (leading T axis) gives one label image per frame
    stack = predict_instances(out, np.stack([image, image]))
    assert stack.shape == (2,) + image.shape and np.array_equal(stack[0], labels)


@pytest.mark.slow
def test_blockwise_prediction_equals_whole_image(trained, nuclei_pairs):
    zarr = pytest.importorskip("zarr")
    out, _ = trained
    model = load_unet(out)
    image = nuclei_pairs["q00"][0][:250, :237]  # not a multiple of the pooling grid
    whole = predict_probabilities(model, image, block_shape=None)
    assert whole.shape == image.shape + (3,) and np.allclose(whole.sum(-1), 1, atol=1e-5)
    blocks = predict_probabilities(model, image, block_shape=(64, 80))
    assert np.allclose(blocks, whole, atol=1e-5)
    # without a halo the block borders show, so the halo is what makes them equal
    assert np.abs(predict_probabilities(model, image, block_shape=(64, 80), halo=0) - whole).max() > 1e-3
    # image and output as Zarr arrays: written block by block
    z_in = zarr.create_array(store={}, shape=image.shape, chunks=(64, 64), dtype="float32")
    z_in[...] = image
    z_out = zarr.create_array(store={}, shape=image.shape + (3,), chunks=(64, 64, 3), dtype="float32")
    predict_probabilities(model, z_in, block_shape=(96, 96), out=z_out)
    assert np.allclose(z_out[...], whole, atol=1e-5)
    # last weights load from the same config
    assert load_unet(out, weights="last").keras_model.count_params() == model.keras_model.count_params()


@pytest.mark.slow
def test_3d_training_and_timelapse_prediction(tmp_path):
    from snakescope.synthetic import make_timelapse

    tl = make_timelapse(ndim=3, n_frames=3, shape=(12, 64, 64), n_cells=3, seed=2)
    pairs = {f"t{t}": (normalize_percentile(tl.image[t]), tl.labels[t]) for t in range(3)}
    metadata = quick_train(pairs, tmp_path / "m3d", {"train": ["t0", "t1"], "validation": ["t2"]},
                           architecture=arch(n_depth=1, n_filter_base=4, pool_size=[1, 2, 2]), patch_size=[4, 32, 32])
    assert metadata["ndim"] == 3 and metadata["patch_size"] == [4, 32, 32]
    model = load_unet(tmp_path / "m3d")
    assert model.architecture["ndim"] == 3 and model.architecture["kernel_size"] == [3, 3, 3]
    stack = np.stack([pairs["t0"][0], pairs["t1"][0]])  # T, Z, Y, X
    labels = predict_instances(model, stack, block_shape=(8, 32, 32))
    assert labels.shape == stack.shape and labels.dtype == np.int32


# ---------------------------------------------------------------------------------------
# Class map


def random_unet(seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    network = architecture_for(2, arch(n_depth=1, n_filter_base=4))
    return UNet({"architecture": network}, build_keras_model(network))


def test_class_map_is_the_argmax_of_the_same_probabilities():
    import zarr

    model = random_unet()
    image = np.random.default_rng(2).random((2, 50, 60)).astype(np.float32)
    prob = predict_probabilities(model, image[0], block_shape=(32, 32))
    classes = probabilities_to_classes(prob, band_pixels=100)  # bands of one row
    assert classes.dtype == np.uint8 and np.array_equal(classes, prob.argmax(-1))
    tie = probabilities_to_classes(np.full((2, 3, 3), 1 / 3, np.float32))
    assert not tie.any()  # a tie goes to the lower class (background)
    # predict_instances fills a class map from the probabilities it segments, per time point too
    out = np.full((50, 60), 9, np.uint8)
    labels = predict_instances(model, image[0], block_shape=(32, 32), classes_out=out)
    assert np.array_equal(out, classes)
    assert np.array_equal(labels, predict_instances(model, image[0], block_shape=(32, 32)))
    stack_out = zarr.zeros((2, 50, 60), dtype="u1", chunks=(1, 16, 16))
    predict_instances(model, image, block_shape=(32, 32), classes_out=stack_out)
    for t in range(2):
        expected = predict_probabilities(model, image[t], block_shape=(32, 32)).argmax(-1)
        assert np.array_equal(stack_out[t], expected)
    with pytest.raises(InputError, match="class map shape"):
        predict_instances(model, image[0], classes_out=np.zeros((50, 61), np.uint8))


def test_class_confusion_against_the_training_targets():
    labels = np.zeros((20, 34), np.uint16)
    labels[4:14, 4:14] = 5
    labels[4:14, 14:24] = 9
    truth = labels_to_classes(labels)
    counts = np.bincount(truth.ravel(), minlength=3)
    # a perfect class map: every pixel on the diagonal
    assert np.array_equal(class_confusion(labels, truth), np.diag(counts))
    # every contour pixel called body: the contour row moves to the body column
    pred = np.where(truth == 1, 2, truth).astype(np.uint8)
    cm = class_confusion(labels, pred)
    assert cm[1].tolist() == [0, 0, counts[1]] and cm[2, 2] == counts[2] and cm.sum() == labels.size
    # time-lapse: frame by frame (contours never span time points), added up; lazy maps too
    stack = np.stack([labels, np.zeros_like(labels)])
    maps = np.stack([truth, np.zeros_like(truth)])
    total = class_confusion(stack, maps, time_axis=0)
    assert np.array_equal(total, np.diag(counts) + np.diag([labels.size, 0, 0]))
    assert total[1:].sum() == np.count_nonzero(stack)
    assert list(CLASS_NAMES) == ["background", "contour", "body"]
    with pytest.raises(InputError, match="differs from ground-truth shape") as err:
        class_confusion(stack, maps[:, :, :30], time_axis=0, where="truth.tif", pred_where="s/labels.ome.zarr")
    assert "s/labels.ome.zarr" in str(err.value)
    with pytest.raises(InputError, match="dtype float") as err:
        class_confusion(labels.astype(np.float32), truth, where="sample_x/labels.tif")
    assert "sample_x/labels.tif" in str(err.value)
    with pytest.raises(InputError, match="outside 0..2"):
        class_confusion(labels, np.full(labels.shape, 3, np.uint8))


def test_predict_unet_keeps_the_class_map_next_to_the_labels(trained, nuclei_pairs, tmp_path):
    """segment's U-Net output: instances as before plus the class map, per time point; StarDist's unchanged."""
    from snakescope.ingest.convert import ingest

    out, _ = trained
    frames = np.stack([nuclei_pairs["q11"][0], nuclei_pairs["q01"][0]])  # T, Y, X (normalized)
    tifffile.imwrite(tmp_path / "image.tif", frames)
    ingest(tmp_path / "image.tif", "TYX", tmp_path / "image.ome.zarr", name="n", voxel_size={"y": 0.5, "x": 0.5},
           settings=defaults().ingest.replace(chunks={"z": 16, "y": 128, "x": 128}))
    from snakescope import segmentation

    model = segmentation.load_model(out)  # told apart from StarDist by its config.json
    assert isinstance(model, UNet)
    settings = defaults().segmentation.replace(method="unet", block_size=192)
    summary = segmentation.segment(model, tmp_path / "image.ome.zarr", tmp_path / "labels.ome.zarr", settings, channel=0)
    assert summary == predict_unet(model, tmp_path / "image.ome.zarr", tmp_path / "again.ome.zarr", settings, channel=0)
    with pytest.raises(InputError, match="only StarDist predictions can be scattered"):
        segmentation.segment_part(model, tmp_path / "image.ome.zarr", tmp_path / "part.zarr", settings, part=0,
                                  n_parts=2, channel=0)
    labels = labels_io.read_labels_image(tmp_path / "labels.ome.zarr")
    classes = labels_io.read_class_map(tmp_path / "labels.ome.zarr")
    assert labels.data.dtype == np.uint32 and classes.data.dtype == np.uint8
    assert classes.axes == labels.axes == "tyx" and classes.shape == labels.shape == frames.shape
    assert classes.data.chunks == labels.data.chunks == (1, 128, 128)
    assert classes.attrs["image-label"]["properties"][2] == {"label-value": 2, "class": "body"}
    for t in range(2):
        prob = predict_probabilities(model, frames[t], block_shape=(192, 192))
        assert np.array_equal(classes.data[t], prob.argmax(-1))
        assert np.array_equal(labels.data[t], probabilities_to_instances(prob, **model.postprocessing))
        assert {1, 2} <= set(np.unique(classes.data[t]))  # a trained net finds contours and bodies
    # without class names (StarDist): one labels image, and asking for a class map names the folder
    labels_io.write_label_image(tmp_path / "image.ome.zarr", tmp_path / "plain.ome.zarr", lambda frame, out: 0)
    from snakescope.io import ngff
    assert ngff.open_group(tmp_path / "plain.ome.zarr").attrs["labels"] == ["segmentation"]
    assert not (tmp_path / "plain.ome.zarr" / "labels" / "classes").exists()
    with pytest.raises(InputError, match="no U-Net class map") as err:
        labels_io.read_class_map(tmp_path / "plain.ome.zarr")
    assert "plain.ome.zarr" in str(err.value)


# ---------------------------------------------------------------------------------------
# Fine-tuning


@pytest.mark.slow
def test_fine_tuning_starts_from_the_parents_network(tmp_path):
    pairs = tiny_frames()
    split = {"train": ["t0", "t1", "t2"], "validation": ["t3"]}
    quick_train(pairs, tmp_path / "parent", split, seed=1)
    parent = load_unet(tmp_path / "parent")
    # the architecture in the settings is ignored: the parent's network goes on training
    metadata = quick_train(pairs, tmp_path / "child", split, seed=2, parent=tmp_path / "parent",
                           architecture=arch(n_depth=2, n_filter_base=8), learning_rate=1e-9)
    child = load_unet(tmp_path / "child")
    assert metadata["parent"] == str(tmp_path / "parent") and child.architecture == parent.architecture
    assert any("architecture is kept, so the settings' n_depth 2 (the parent's: 1); n_filter_base 8 (the parent's: 4)"
               in note for note in metadata["notes"])
    for a, b in zip(child.keras_model.get_weights(), parent.keras_model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)  # one step at a tiny learning rate: the parent's weights
    volumes = {"v": (np.stack([pairs["t0"][0]] * 4), np.stack([pairs["t0"][1]] * 4))}
    with pytest.raises(InputError, match="parent: is a 2D U-Net; it cannot be fine-tuned on 3D frames"):
        quick_train(volumes, tmp_path / "never", {"train": ["v"], "validation": []}, parent=tmp_path / "parent")
    assert not (tmp_path / "never").exists()
    # freeze_encoder: the down path keeps the parent's weights, the rest trains
    metadata = quick_train(pairs, tmp_path / "frozen", split, seed=3, parent=tmp_path / "parent", freeze_encoder=True,
                           learning_rate=1e-2, steps_per_epoch=3)
    assert metadata["fine_tuning"] == {"freeze_encoder": True, "frozen_layers": ["down_level_0_no_0", "down_level_0_no_1"]}
    frozen = load_unet(tmp_path / "frozen").keras_model
    for layer, tuned in zip(parent.keras_model.layers, frozen.layers, strict=True):  # auto-named layers differ
        if layer.weights:
            same = all(np.array_equal(a, b) for a, b in zip(layer.get_weights(), tuned.get_weights()))
            assert same == layer.name.startswith("down_level"), layer.name
    with pytest.raises(InputError, match="freeze_encoder: freezes the down path"):
        quick_train(pairs, tmp_path / "never", split, freeze_encoder=True)
    # another class set: InputError naming the parent
    config = json.loads((tmp_path / "parent" / "config.json").read_text())
    (tmp_path / "parent" / "config.json").write_text(json.dumps({**config, "classes": ["background", "cell"]}))
    with pytest.raises(InputError, match=r"parent: predicts the classes \['background', 'cell'\], not"):
        quick_train(pairs, tmp_path / "never", split, parent=tmp_path / "parent")


# ---------------------------------------------------------------------------------------
# Bad input


def test_bad_training_pairs_name_the_sample(tmp_path):
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    labels = np.zeros((32, 32), np.uint16)
    labels[5:15, 5:15] = 1
    good = {"good": (image, labels)}
    settings = defaults().segmentation.unet

    def train(pairs):
        train_unet(pairs, tmp_path / "m", settings, split={"train": sorted(pairs), "validation": []}, seed=0)

    with pytest.raises(InputError, match=r"sample_B.*\(32, 30\).*\(32, 32\)"):
        train({**good, "sample_B": (image, labels[:, :30])})
    with pytest.raises(InputError, match=r"sample_C.*float64.*integer"):
        train({**good, "sample_C": (image, labels.astype(np.float64))})
    with pytest.raises(InputError, match=r"sample_D.*no objects"):
        train({**good, "sample_D": (image, np.zeros_like(labels))})
    with pytest.raises(InputError, match="2D and 3D"):
        train({**good, "vol": (np.stack([image] * 4), np.stack([labels] * 4))})
    with pytest.raises(InputError, match="neither the training nor the validation set"):
        train_unet(good, tmp_path / "m", settings, split={"train": ["other"], "validation": []}, seed=0)
    assert not (tmp_path / "m").exists()  # nothing written for bad input
    with pytest.raises(InputError, match="not a U-Net model folder"):
        load_unet(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "snakescope-unet/1"}))
    with pytest.raises(InputError, match=f"{tmp_path}: was trained by an older snakescope"):
        load_unet(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"n_dim": 2, "n_rays": 32}))  # a StarDist folder
    with pytest.raises(InputError, match=f"{tmp_path}: not a snakescope U-Net model folder"):
        load_unet(tmp_path)
    with pytest.raises(InputError, match=r"image.*2D U-Net.*\(4, 32, 32, 2\)"):
        predict_probabilities(UNet({"architecture": architecture_for(2, TINY)}, None), np.zeros((4, 32, 32, 2)))


def test_bad_label_files_are_named(tmp_path):
    image = (np.random.default_rng(0).random((40, 50)) * 255).astype(np.uint8)
    labels = np.zeros((40, 50), np.uint16)
    labels[10:20, 10:30] = 4
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "ok_labels.tif", labels)
    tifffile.imwrite(tmp_path / "cropped_labels.tif", labels[:, :45])
    tifffile.imwrite(tmp_path / "float_labels.tif", labels.astype(np.float32))
    pairs = read_pairs([tmp_path / "img.tif"], [tmp_path / "ok_labels.tif"])
    x, y = pairs["img"]
    assert x.dtype == np.float32 and np.array_equal(y, labels)
    with pytest.raises(InputError, match=r"cropped_labels\.tif.*\(40, 45\).*\(40, 50\)"):
        read_pairs([tmp_path / "img.tif"], [tmp_path / "cropped_labels.tif"])
    with pytest.raises(InputError, match=r"float_labels\.tif.*float32"):
        read_pairs([tmp_path / "img.tif"], [tmp_path / "float_labels.tif"])


def test_real_dsb_pairs_load():
    from conftest import shared_dataset

    folder = shared_dataset("dsb2018-fluo")
    masks = sorted((folder / "masks").glob("*.tif"))[:3]
    pairs = read_pairs([folder / "images" / m.name for m in masks], masks)
    assert sorted(pairs) == sorted(m.stem for m in masks)
    for x, y in pairs.values():
        assert x.shape == y.shape and x.dtype == np.float32 and y.max() > 0
        classes = labels_to_classes(y)
        assert np.count_nonzero(classes == 1) > 0 and np.count_nonzero(classes == 2) > 0
