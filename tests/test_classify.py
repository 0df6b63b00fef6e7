"""Classification: patches, the stratified split, training through the harness (real Keras),
prediction with the model loaded once, transfer learning, metrics on held-out patches and on
segmented objects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from snakescope import classification
from snakescope.classification import model as model_module, patches as patch_module, train as train_module
from snakescope.errors import InputError
from snakescope.io import labels as labels_io
from snakescope.settings import defaults
from snakescope.synthetic import make_timelapse, write_timelapse
from snakescope.training.splits import make_or_load_stratified_split

# Keras' TF backend calls np.array(x) on its own tensors (NumPy 2 deprecation): not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

TINY = dict(filters=(8, 16, 16), dense=(32,), dropout=0.2)


def settings(**changes):
    """Classification settings of the schema, with a small batch and a higher learning rate."""
    return defaults().classification.replace(**{"batch_size": 16, "learning_rate": 3e-3, **changes})


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def sample():
    return make_timelapse(n_frames=10, n_cells=16, seed=1)


@pytest.fixture(scope="module")
def written(sample, tmp_path_factory):
    return write_timelapse(sample, tmp_path_factory.mktemp("synthetic"))


# -- patches ----------------------------------------------------------------------------


def test_patch_centred_on_bright_pixel():
    image = np.zeros((4, 40, 50), np.uint16)
    image[2, 13, 27] = 1000
    for size in (7, 8):
        patch = classification.extract_patches(image, "tyx", pd.DataFrame({"t": [2], "y": [13.3], "x": [26.6]}), size)
        assert patch.shape == (1, size, size, 1)
        assert patch[0, size // 2, size // 2, 0] == 1000
        assert patch.sum() == 1000


def test_patch_reflection_at_borders_and_3d_channels():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 1000, (30, 40)).astype(np.uint16)
    patch = classification.extract_patches(image, "yx", np.array([[0, 39]]), 9)[0, ..., 0]
    expected = np.pad(image, 4, mode="reflect")[0:9, 39:48]
    np.testing.assert_array_equal(patch, expected)
    # ZYX with two channels (axes tczyx): patch (z, y, x) per channel, anisotropic size.
    volume = rng.integers(0, 1000, (2, 2, 6, 20, 20)).astype(np.uint16)
    points = pd.DataFrame({"t": [1], "z": [0], "y": [10], "x": [19]})
    out = classification.extract_patches(volume, "tczyx", points, (3, 5, 5))
    assert out.shape == (1, 3, 5, 5, 2)
    for c in range(2):
        ref = np.pad(volume[1, c], ((1, 1), (2, 2), (2, 2)), mode="reflect")[0:3, 10:15, 19:24]
        np.testing.assert_array_equal(out[0, ..., c], ref)


def test_patch_time_window_frames_as_channels():
    image = np.zeros((5, 16, 16), np.float32)
    for t in range(5):
        image[t] = t + 1
    out = classification.extract_patches(image, "tyx", pd.DataFrame({"t": [2, 0], "y": [8, 8], "x": [8, 8]}), 4,
                                         time_window=1)
    assert out.shape == (2, 4, 4, 3)
    assert out[0, 0, 0].tolist() == [2, 3, 4]  # frames t-1, t, t+1
    assert out[1, 0, 0].tolist() == [2, 1, 2]  # reflected at the first frame
    with pytest.raises(InputError, match="needs a t axis"):
        classification.extract_patches(image[0], "yx", np.array([[1, 1]]), 4, time_window=1)


def test_point_outside_image_when_cutting_names_file_and_row(tmp_path):
    from snakescope.io.annotations import read_point_annotations

    f = write_csv(tmp_path / "points_round.csv", "index,axis-0,axis-1,axis-2\n0,1,5,5\n1,2,6,6\n2,3,64.7,10\n")
    table = read_point_annotations(f, "tyx")
    with pytest.raises(InputError, match=r"points_round.csv: row 3: point \(t=3, y=64.7, x=10\) lies outside"):
        classification.extract_patches(np.zeros((10, 64, 64), np.uint16), "tyx", table, 8)


def test_patches_from_zarr_and_small_reads_match_numpy(tmp_path):
    import zarr

    rng = np.random.default_rng(3)
    image = rng.integers(0, 60000, (3, 50, 60)).astype(np.uint16)
    z = zarr.create_array(str(tmp_path / "a.zarr"), shape=image.shape, chunks=(1, 16, 16), dtype=image.dtype)
    z[:] = image
    points = pd.DataFrame({"t": rng.integers(0, 3, 40), "y": rng.uniform(0, 49, 40), "x": rng.uniform(0, 59, 40)})
    reference = classification.extract_patches(image, "tyx", points, 11, time_window=1)
    np.testing.assert_array_equal(classification.extract_patches(z, "tyx", points, 11, time_window=1), reference)
    # A read limit smaller than one frame splits the points into several small reads.
    np.testing.assert_array_equal(
        classification.extract_patches(z, "tyx", points, 11, time_window=1, max_read_bytes=2000), reference)


class CountingArray:
    """An array that records the size of every region read from it (like a zarr array)."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.reads = data, data.shape, data.dtype, []

    def __getitem__(self, box):
        block = self.data[box]
        self.reads.append(block.nbytes)
        return block


def test_patches_read_only_needed_regions():
    data = np.zeros((4, 1024, 1024), np.uint16)  # 8 MiB
    data[3, 1000, 20] = 7
    image = CountingArray(data)
    corners = pd.DataFrame({"t": [0, 1, 2, 3], "y": [5, 1000, 5, 1000], "x": [5, 5, 1000, 20]})
    out = classification.extract_patches(image, "tyx", corners, 16, time_window=1)
    assert out[3, 8, 8, 1] == 7 and out.shape == (4, 16, 16, 3)
    assert sum(image.reads) < data.nbytes / 20  # never whole frames
    # Dense points: reads shared, none above the limit.
    image.reads.clear()
    rng = np.random.default_rng(0)
    dense = pd.DataFrame({"t": rng.integers(0, 4, 500), "y": rng.uniform(0, 1023, 500), "x": rng.uniform(0, 1023, 500)})
    classification.extract_patches(image, "tyx", dense, 16, max_read_bytes=2**20)
    assert max(image.reads) <= 2**20 and len(image.reads) < 100


def test_normalize_patches_percentiles():
    rng = np.random.default_rng(0)
    patches = rng.uniform(100, 200, (3, 10, 10, 1)).astype(np.float32)
    patches[2] = 7.0  # constant patch
    out = patch_module.normalize_patches(patches)
    lo, hi = np.percentile(patches[0], [1, 99.8])
    np.testing.assert_allclose(out[0], (patches[0] - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
    assert np.all(out[2] == 0)
    assert out.dtype == np.float32


def test_training_patches_from_points_use_the_settings(written, sample):
    files = [written["points"][c] for c in sample.class_names]
    data = classification.training_patches_from_points(sample.image, "tyx", files, settings(patch_size=[16, 24], time_window=1),
                                                       sample="s1")
    assert data.patches.shape == (len(sample.points), 16, 24, 3)
    assert data.ids[0] == f"s1:{files[0]}:1" and data.sources[0] == str(files[0])
    assert sorted(set(data.labels)) == ["elongated", "round"]
    assert classification.patch_size_for(settings(patch_size_z=5), 3) == (5, 32, 32)
    both = classification.concatenate_patches([data, data._replace(ids=[f"x{i}" for i in data.ids])])
    assert len(both.patches) == len(both.labels) == len(both.ids) == len(both.sources) == 2 * len(data.labels)
    with pytest.raises(InputError, match="no training data"):
        classification.concatenate_patches([])


# -- split and imbalance -----------------------------------------------------------------


def test_split_stratified_saved_and_reused(tmp_path):
    labels = ["a"] * 40 + ["b"] * 20 + ["c"] * 7
    path = tmp_path / "split.csv"
    split = make_or_load_stratified_split(labels, path, (0.7, 0.15, 0.15), seed=1)
    assert path.is_file()
    table = pd.DataFrame({"label": labels, "split": split})
    counts = table.groupby(["label", "split"]).size().unstack(fill_value=0)
    assert counts.loc["a"].to_dict() == {"test": 6, "train": 28, "val": 6}
    assert counts.loc["b"].to_dict() == {"test": 3, "train": 14, "val": 3}
    assert counts.loc["c"].to_dict() == {"test": 1, "train": 5, "val": 1}
    saved = pd.read_csv(path)
    assert list(saved.columns) == ["id", "class_name", "split"] and saved["split"].tolist() == list(split)
    # A second run, even with another seed, reuses the saved split unchanged.
    again = make_or_load_stratified_split(labels, path, (0.5, 0.25, 0.25), seed=99)
    np.testing.assert_array_equal(again, split)
    assert pd.read_csv(path).equals(saved)
    # Without a saved file, another seed gives another split (so reuse is not a coincidence).
    other = make_or_load_stratified_split(labels, tmp_path / "other.json", (0.7, 0.15, 0.15), seed=99)
    assert (other != split).any()
    assert json.loads((tmp_path / "other.json").read_text())["seed"] == 99
    # Annotations that changed since: an error, never a silent re-split.
    with pytest.raises(InputError, match="not in the saved split"):
        make_or_load_stratified_split(labels + ["a"], path, (0.7, 0.15, 0.15), seed=1)
    with pytest.raises(InputError, match="was saved as class 'a' but is now 'b'"):
        make_or_load_stratified_split(["b"] + labels[1:], path, (0.7, 0.15, 0.15), seed=1)


def test_too_few_examples_to_split(tmp_path):
    labels = ["a"] * 10 + ["rare"] * 2
    sources = ["points_a.csv"] * 10 + ["points_rare.csv"] * 2
    with pytest.raises(InputError) as info:
        make_or_load_stratified_split(labels, tmp_path / "s.csv", (0.7, 0.15, 0.15), 0, sources=sources)
    message = str(info.value)
    assert message.startswith("points_rare.csv:")
    assert "'rare' has 2 example(s)" in message and "at least 3" in message
    assert not (tmp_path / "s.csv").exists()
    with pytest.raises(InputError, match="summing to 1"):
        make_or_load_stratified_split(labels, tmp_path / "s.csv", (0.7, 0.2, 0.2), 0)


def test_class_weights_inverse_frequency():
    labels = ["a"] * 10 + ["b"] * 30 + ["c"] * 60
    weights = train_module.class_weights(labels, ["a", "b", "c", "absent"])
    assert weights["a"] == pytest.approx(100 / (3 * 10))
    assert weights["b"] == pytest.approx(100 / (3 * 30))
    assert weights["c"] == pytest.approx(100 / (3 * 60))
    assert weights["absent"] == 0.0
    # Normalized: the mean weight per example is 1, and every class carries the same total.
    assert np.mean([weights[c] for c in labels]) == pytest.approx(1.0)
    assert 10 * weights["a"] == pytest.approx(60 * weights["c"])


def test_balanced_sampling_and_seeded_augmentation():
    x = np.random.default_rng(0).uniform(size=(100, 8, 8, 1)).astype(np.float32)
    y_index = np.array([0] * 90 + [1] * 10)
    y = np.eye(2, dtype=np.float32)[y_index]
    w = np.where(y_index == 0, 100 / 180, 100 / 20).astype(np.float32)
    kwargs = dict(augment=True, spatial_ndim=2, noise=0.05, blur=0.2, intensity=0.1)
    seq = train_module._make_sequence(x, y, w, 50, 7, sampling=True, **kwargs)
    drawn = []
    for _ in range(20):
        drawn.extend(y_index[seq.order])
        seq.on_epoch_end()
    assert 0.45 < np.mean(drawn) < 0.55  # classes drawn equally often
    a = train_module._make_sequence(x, y, w, 50, 7, sampling=False, **kwargs)[0]
    b = train_module._make_sequence(x, y, w, 50, 7, sampling=False, **kwargs)[0]
    np.testing.assert_array_equal(a[0], b[0])  # same seed, same augmented batch
    assert a[0].shape == (50, 8, 8, 1)
    plain = train_module._make_sequence(x, y, w, 50, 7, sampling=False, augment=False, spatial_ndim=2, noise=0, blur=0,
                                        intensity=0)
    np.testing.assert_array_equal(a[2], w[plain.order[:50]])


# -- training, prediction, evaluation ------------------------------------------------------


@pytest.fixture(scope="module")
def trained(sample, written, tmp_path_factory):
    """A tiny classifier trained for a few seconds on round vs elongated synthetic nuclei."""
    out = tmp_path_factory.mktemp("model")
    files = [written["points"][c] for c in sample.class_names]
    config = settings(epochs=12, patience=6)
    data = classification.training_patches_from_points(sample.image, "tyx", files, config)
    metadata = classification.train_classifier(data.patches, data.labels, out / "model", config, seed=0,
                                               split_path=out / "split.csv", ids=data.ids, sources=data.sources, **TINY)
    return out / "model", metadata


def test_training_beats_chance_and_writes_one_model_layout(trained):
    model_dir, metadata = trained
    assert metadata["test"]["balanced_accuracy"] > 0.7
    data, training = metadata["data"], metadata["training"]
    assert data["n_test"] >= 20 and data["n_train"] > data["n_val"]
    for name in ("config.json", "weights_best.h5", "weights_last.h5", "training.csv", "training.png", "training.log",
                 "snakescope.json", "test/confusion_matrix.csv", "test/confusion_matrix.png"):
        assert (model_dir / name).is_file(), name
    for name in ("best.weights.h5", "last.weights.h5", "training_log.csv", "training_curves.png", "summary.json",
                 "split.csv"):  # the split is kept at split_path
        assert not (model_dir / name).exists(), name
    assert not list(model_dir.parent.glob("*.partial-*"))
    log = pd.read_csv(model_dir / "training.csv")
    assert {"epoch", "loss", "val_loss", "accuracy", "val_accuracy"} <= set(log.columns)
    assert len(log) == training["epochs_run"] >= 1 and 1 <= training["best_epoch"] <= training["epochs_run"]
    assert (model_dir / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((model_dir / "snakescope.json").read_text())
    assert saved["kind"] == "classifier" and saved["ndim"] == 2 and saved["seed"] == 0
    assert saved["test"]["confusion_matrix"] == metadata["test"]["confusion_matrix"]
    assert saved["classifier"]["class_names"] == ["elongated", "round"] and saved["settings"]["patience"] == 6
    config = json.loads((model_dir / "config.json").read_text())
    assert config["class_names"] == ["elongated", "round"] and config["frozen_layers"] == []
    assert config["patch_size"] == [32, 32] and config["normalize"]["method"] == "percentile"
    assert classification.classifier_class_names(model_dir) == ["elongated", "round"]


def test_classify_objects_of_many_images_with_one_loaded_model(trained):
    model_dir, _ = trained
    loaded = classification.load_classifier(model_dir)
    other = make_timelapse(n_frames=4, n_cells=16, seed=7)  # an image the model never saw
    objects = other.points[["t", "y", "x"]]
    result = classification.classify_objects(loaded, other.image, "TYX", objects, batch_size=9)
    assert list(result.columns) == ["t", "y", "x", "class_name", "p_elongated", "p_round"]
    np.testing.assert_allclose(result[["p_elongated", "p_round"]].sum(axis=1), 1.0, atol=1e-5)
    assert set(result["class_name"]) <= {"round", "elongated"}
    scores = classification.evaluate(other.points["class_name"], result["class_name"], ["elongated", "round"])
    assert scores["balanced_accuracy"] > 0.7
    predict_function = loaded.model.predict_function
    # Batching does not change the answer.
    whole = classification.classify_objects(loaded, other.image, "tyx", objects, batch_size=10_000)
    np.testing.assert_allclose(whole["p_round"], result["p_round"], atol=1e-5)
    # Another image with the same model: nothing rebuilt, nothing traced again.
    third = make_timelapse(n_frames=2, n_cells=5, seed=9)
    again = classification.classify_objects(loaded, third.image, "tyx", third.points[["t", "y", "x"]])
    assert len(again) == len(third.points) and loaded.model.predict_function is predict_function
    # Test-time augmentation keeps probabilities normalized; ready patches give the same classes.
    tta = classification.classify_objects(loaded, other.image, "tyx", objects.iloc[:5], tta=True)
    np.testing.assert_allclose(tta[["p_elongated", "p_round"]].sum(axis=1), 1.0, atol=1e-5)
    patches = classification.extract_patches(other.image, "tyx", objects, loaded.patch_size)
    names, probabilities = classification.predict_patches(loaded, patches, batch_size=7)
    assert names == result["class_name"].tolist()
    np.testing.assert_allclose(probabilities[:, 1], result["p_round"], atol=1e-5)


def test_evaluate_annotations_unknown_class(trained, sample, tmp_path):
    model_dir, _ = trained
    loaded = classification.load_classifier(model_dir)
    f = write_csv(tmp_path / "truth.csv", "index,axis-0,axis-1,axis-2,class_name\n0,0,20,20,round\n1,1,30,30,mitotic\n")
    with pytest.raises(InputError) as info:
        classification.evaluate_annotations(loaded, sample.image, "tyx", f)
    assert str(f) in str(info.value) and "row 2" in str(info.value) and "'mitotic'" in str(info.value)
    points = sample.points.iloc[::3]
    good = write_csv(tmp_path / "good.csv", points[["t", "y", "x", "class_name"]].to_csv(index=False))
    scores = classification.evaluate_annotations(loaded, sample.image, "tyx", good, tmp_path / "eval")
    assert scores["n"] == len(points) and (tmp_path / "eval" / "per_class.csv").is_file()


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # sklearn, about class "d"
def test_evaluate_matches_sklearn(tmp_path):
    from sklearn import metrics as skm

    rng = np.random.default_rng(5)
    names = ["a", "b", "c", "d"]
    y_true = rng.choice(names[:3], 200, p=[0.6, 0.3, 0.1])
    y_pred = np.where(rng.uniform(size=200) < 0.7, y_true, rng.choice(names, 200))
    result = classification.evaluate(y_true, y_pred, names, tmp_path)
    expected = skm.confusion_matrix(y_true, y_pred, labels=names)
    np.testing.assert_array_equal(result["confusion_matrix"], expected)
    saved = pd.read_csv(tmp_path / "confusion_matrix.csv", index_col=0)
    np.testing.assert_array_equal(saved.to_numpy(), expected)
    assert list(saved.columns) == names
    assert result["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert result["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    per_class = pd.read_csv(tmp_path / "per_class.csv").set_index("class_name")
    np.testing.assert_allclose(per_class.loc[names, "recall"], skm.recall_score(y_true, y_pred, labels=names, average=None, zero_division=0))
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "metrics.json").read_text())["n"] == 200
    with pytest.raises(InputError, match="labels: row 3: true class 'zz'"):
        classification.evaluate(["a", "b", "zz"], ["a", "b", "c"], names)


def test_fine_tune_a_previous_classifier(trained, sample, written, tmp_path):
    model_dir, _ = trained
    config = json.loads((model_dir / "config.json").read_text())
    old = classification.load_classifier(model_dir).model
    architecture = {k: config["architecture"][k] for k in model_module.ARCHITECTURE_KEYS}
    new = classification.build_classifier(config["input_shape"], 3, **architecture)
    copied = model_module.transfer_from_classifier(new, model_dir, ["x", "y", "z"])
    assert copied == ["block1_conv1", "block2_conv1", "block3_conv1", "dense1"]  # not the new class layer
    np.testing.assert_array_equal(new.get_layer("block2_conv1").get_weights()[0], old.get_layer("block2_conv1").get_weights()[0])
    assert new.get_layer("classes").get_weights()[0].shape == (32, 3)
    # Fine-tuning through train_classifier: the copied layers frozen, the parent recorded.
    files = [written["points_sparse"][c] for c in sample.class_names]
    tune = settings(epochs=1)
    data = classification.training_patches_from_points(sample.image, "tyx", files, tune)
    renamed = [f"{c}_cell" for c in data.labels]  # other class names: a new class layer
    metadata = classification.train_classifier(data.patches, renamed, tmp_path / "tuned", tune, seed=1, ids=data.ids,
                                               sources=data.sources, pretrained_weights=model_dir, freeze_pretrained=True,
                                               **TINY)
    assert metadata["parent"] == str(model_dir) and metadata["classifier"]["pretrained_layers"] == 4
    assert "elongated_cell, round_cell are new, so a new class layer is trained" in metadata["classifier"]["transfer_notes"][0]
    tuned = classification.load_classifier(tmp_path / "tuned").model
    for name in ("block1_conv1", "dense1"):
        for a, b in zip(tuned.get_layer(name).get_weights(), old.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(tuned.get_layer("classes").get_weights()[0], old.get_layer("classes").get_weights()[0])
    assert (tmp_path / "tuned" / "split.csv").is_file()  # no split_path: the split is kept with the model
    with pytest.raises(InputError, match="not a snakescope classifier"):
        model_module.transfer_from_classifier(new, tmp_path, ["x", "y", "z"])
    # what must match is checked first, and named: time window, channels, patch size
    shape = config["input_shape"]
    assert train_module.check_parent(model_dir, shape, config["time_window"], config["class_names"]) == []
    with pytest.raises(InputError, match=f"{model_dir}: cannot be fine-tuned on these patches: it was trained on "
                                         f"time window {config['time_window']} .classification.time_window here: 2."):
        train_module.check_parent(model_dir, shape, 2, config["class_names"])
    with pytest.raises(InputError, match=rf"{shape[-1]} input channels .channels x frames; here {shape[-1] + 1}."):
        train_module.check_parent(model_dir, shape[:-1] + [shape[-1] + 1], config["time_window"], ["x"])
    with pytest.raises(InputError, match=r"patches of \[\d+, \d+\] pixels .here \[8, 8\]"):
        train_module.check_parent(model_dir / "weights_best.h5", [8, 8, shape[-1]], config["time_window"], ["x"])


def test_frozen_backbone_survives_saving_and_loading(tmp_path):
    """A keras.applications backbone from a local weights file, frozen: the weights file
    keeps a frozen layer's weights in another order, so loading must freeze it again."""
    import keras

    keras.utils.set_random_seed(1)
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.35, pooling="avg")
    weights = tmp_path / "mobilenet.weights.h5"
    base.save_weights(weights)
    built = classification.build_classifier((32, 32, 1), 2, dense=(8,), backbone="MobileNetV2",
                                            backbone_kwargs={"alpha": 0.35}, backbone_weights=weights)
    np.testing.assert_array_equal(built.get_layer("backbone").get_layer("Conv1").get_weights()[0],
                                  base.get_layer("Conv1").get_weights()[0])
    assert built.output_shape == (None, 2)
    patches = np.random.default_rng(0).integers(0, 255, (20, 32, 32)).astype(np.uint8)
    metadata = classification.train_classifier(patches, ["a", "b"] * 10, tmp_path / "m",
                                               settings(epochs=1, split_fractions=[0.5, 0.5, 0.0]), seed=0,
                                               backbone="MobileNetV2", backbone_kwargs={"alpha": 0.35}, dense=(8,),
                                               pretrained_weights=weights, freeze_pretrained=True)
    assert metadata["classifier"]["frozen_layers"] == ["backbone"] and metadata["parent"] is None
    loaded = classification.load_classifier(tmp_path / "m").model
    for a, b in zip(loaded.get_layer("backbone").get_weights(), base.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_3d_training_is_deterministic_and_patience_0_is_off(tmp_path):
    model = classification.build_classifier((6, 16, 16, 2), 3, filters=(4, 8, 8), dense=(8,))
    assert model.output_shape == (None, 3)
    assert model.get_layer("block3_pool").output.shape[1:4] == (1, 2, 2)  # z pooled only while >= 2
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 255, (30, 4, 12, 12, 1)).astype(np.uint8)
    labels = ["a", "b", "c"] * 10
    config = settings(epochs=3, patience=0, split_fractions=[0.8, 0.2, 0.0], imbalance="sampling")
    runs = []
    for name in ("one", "two"):
        metadata = classification.train_classifier(patches, labels, tmp_path / name, config, seed=3, filters=(4,),
                                                   dense=(8,), split_path=tmp_path / "split.csv")
        assert metadata["ndim"] == 3 and metadata["test"] is None
        assert metadata["training"]["epochs_run"] == 3 and metadata["training"]["stopped_by"] == "epochs"
        runs.append(classification.load_classifier(tmp_path / name, "last").model.get_weights())
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    classification.write_training_confusion(tmp_path / "one", tmp_path / "confusion.png")  # no test part: a note
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_time_limit_stops_training(tmp_path):
    patches = np.random.default_rng(0).integers(0, 255, (24, 12, 12)).astype(np.uint8)
    metadata = classification.train_classifier(patches, ["a", "b"] * 12, tmp_path / "m",
                                               settings(epochs=50, batch_size=4, time_limit=1e-3,
                                                        split_fractions=[0.5, 0.5, 0.0]),
                                               seed=0, filters=(4,), dense=())
    assert metadata["training"]["stopped_by"] == "time_limit"
    assert metadata["training"]["epochs_run"] == 1 and metadata["training"]["steps_run"] == 1


def test_training_input_errors(tmp_path):
    patches = np.zeros((12, 12, 12), np.uint8)
    with pytest.raises(InputError, match="need at least 2 classes"):
        classification.train_classifier(patches, ["a"] * 12, tmp_path / "m", settings(), seed=0)
    with pytest.raises(InputError, match="11 labels for 12 patches"):
        classification.train_classifier(patches, ["a", "b"] * 5 + ["a"], tmp_path / "m", settings(), seed=0)
    with pytest.raises(InputError, match="imbalance"):
        classification.train_classifier(patches, ["a", "b"] * 6, tmp_path / "m", settings(imbalance="x"), seed=0)
    with pytest.raises(InputError, match="not a multiple of 3 frames"):
        classification.train_classifier(patches, ["a", "b"] * 6, tmp_path / "m", settings(time_window=1), seed=0)
    assert not (tmp_path / "m").exists()


# -- patch folders for training -----------------------------------------------------------


def _write_patch_folder(root: Path, image: np.ndarray, points: pd.DataFrame, size: int, time_window: int = 0) -> Path:
    """Patches cut around synthetic nuclei, saved as TIFFs in one subfolder per class."""
    import tifffile

    patches = classification.extract_patches(image, "tyx", points, size, time_window)
    for i, (patch, name) in enumerate(zip(patches, points["class_name"])):
        (root / name).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(root / name / f"p{i:03d}.tif", patch if time_window else patch[..., 0])
    return root


def test_training_patches_from_folder_checks_geometry(tmp_path):
    from PIL import Image

    for name in ("a", "b"):
        (tmp_path / "grey" / name).mkdir(parents=True)
        for i in range(2):
            value = np.full((12, 12), 40 * i + (name == "b"), np.uint8)
            Image.fromarray(np.stack([value] * 3, axis=-1)).save(tmp_path / "grey" / name / f"{i}.png")  # grey as RGB
    patches, labels, ids, sources = classification.training_patches_from_folder(tmp_path / "grey", settings(), 2,
                                                                               spatial_shape=(12, 12))
    assert patches.shape == (4, 12, 12, 1) and labels == ["a", "a", "b", "b"]
    assert ids[0] == "patch_folder:a/0.png" and sources[0].endswith("0.png")
    with pytest.raises(InputError, match=r"grey: patch size \(12, 12\) differs from the \(16, 16\)"):
        classification.training_patches_from_folder(tmp_path / "grey", settings(), 2, spatial_shape=(16, 16))
    with pytest.raises(InputError, match=r"grey: patches of shape \(12, 12\) \(2D\) but a 3D classifier"):
        classification.training_patches_from_folder(tmp_path / "grey", settings(), 3)
    with pytest.raises(InputError, match=r"patches have 3 channel\(s\) but the classifier expects 5"):
        classification.training_patches_from_folder(tmp_path / "grey", settings(time_window=2), 2)
    # YXC TIFFs of 5 frames (time_window 2), which the reader alone would take for ZYX.
    import tifffile

    for name in ("a", "b"):
        (tmp_path / "frames" / name).mkdir(parents=True)
        tifffile.imwrite(tmp_path / "frames" / name / "0.tif", np.zeros((12, 12, 5), np.uint16))
    data = classification.training_patches_from_folder(tmp_path / "frames", settings(time_window=2), 2)
    assert data.patches.shape == (2, 12, 12, 5)
    colour = np.zeros((12, 12, 3), np.uint8)
    colour[..., 0] = 200
    Image.fromarray(colour).save(tmp_path / "grey" / "a" / "red.png")
    with pytest.raises(InputError, match="colour \\(RGB\\) patches"):
        classification.training_patches_from_folder(tmp_path / "grey", settings(), 2)


def test_train_from_patch_folder_alone_with_time_window(sample, tmp_path):
    """A patch folder only (no sample with points): frames as channels, the model's geometry
    from the patches, the held-out confusion PNG copied for the report, and the model
    classifying a time-lapse with its time window."""
    points = sample.points[sample.points["t"].between(1, 8)].groupby("class_name").head(15)
    folder = _write_patch_folder(tmp_path / "patches", sample.image, points, 16, time_window=1)
    config = settings(epochs=1, batch_size=8, patience=0, time_window=1, patch_size=[24, 24])
    data = classification.concatenate_patches([classification.training_patches_from_folder(folder, config, 2)])
    classification.train_classifier(data.patches, data.labels, tmp_path / "model", config, seed=0,
                                    split_path=tmp_path / "split.csv", ids=data.ids, sources=data.sources, **TINY)
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["time_window"] == 1 and saved["input_shape"] == [16, 16, 3] and saved["patch_size"] == [16, 16]
    split = pd.read_csv(tmp_path / "split.csv")
    assert len(split) == len(points) and split["id"].str.startswith("patch_folder:").all()
    classification.write_training_confusion(tmp_path / "model", tmp_path / "model_confusion.png")
    assert (tmp_path / "model_confusion.png").read_bytes() == (tmp_path / "model" / "test" / "confusion_matrix.png").read_bytes()
    assert not list(tmp_path.glob("*.partial-*"))
    loaded = classification.load_classifier(tmp_path / "model")
    assert loaded.patch_size == [16, 16] and loaded.time_window == 1
    result = classification.classify_objects(loaded, sample.image, "tyx", points[["t", "y", "x"]])
    assert len(result) == len(points)


# -- evaluation on segmented objects (class_truth) -----------------------------------------


def _tiny_labels():
    """Two frames of 6x6 labels and the classified objects table."""
    labels = np.zeros((2, 6, 6), np.uint32)
    labels[0, 0:2, 0:2] = 1
    labels[0, 3:5, 3:5] = 2
    labels[1, 0:2, 0:2] = 1
    labels[1, 3:5, 0:2] = 3
    objects = pd.DataFrame({"t": [0, 0, 1, 1], "label": [1, 2, 1, 3], "y": 0.0, "x": 0.0,
                            "class_name": ["a", "b", "a", "a"]})
    points = pd.DataFrame({
        "class_name": ["a", "b", "b", "a", "a", "b"],
        "t": [0, 0, 1, 1, 0, 1], "y": [1, 4, 4, 0.6, 5, 2.4], "x": [1, 4, 1, 0.4, 0, 2.4],
        "source": "truth.csv", "row": range(1, 7),
    })
    return labels, objects, points


def test_match_points_to_objects_and_metrics(tmp_path):
    import zarr
    from sklearn import metrics as skm

    labels, objects, points = _tiny_labels()
    matched = classification.match_points_to_objects(points, labels, "tyx", objects)
    assert matched["object_label"].tolist() == [1, 2, 3, 1, 0, 0]
    assert matched["predicted"].iloc[:4].tolist() == ["a", "b", "a", "a"] and matched["predicted"].iloc[4:].isna().all()
    # A zarr label image (read point by point) gives the same.
    z = zarr.create_array(str(tmp_path / "l.zarr"), shape=labels.shape, chunks=(1, 4, 4), dtype=labels.dtype)
    z[:] = labels
    pd.testing.assert_frame_equal(classification.match_points_to_objects(points, z, "tyx", objects), matched)

    table, matrix = classification.object_class_metrics(matched, ["a", "b"])
    assert matrix.tolist() == [[2, 0], [1, 1]]
    rows = table.set_index("class_name")
    assert rows.loc["a", ["n_points", "n_matched", "n_unmatched", "tp", "fp", "fn"]].tolist() == [3, 2, 1, 2, 1, 0]
    assert rows.loc["b", ["n_points", "n_matched", "n_unmatched", "tp", "fp", "fn"]].tolist() == [3, 2, 1, 1, 0, 1]
    assert rows.loc["ALL", ["n_points", "n_matched", "n_unmatched", "tp"]].tolist() == [6, 4, 2, 3]
    on_object = matched[matched["predicted"].notna()]
    y_true, y_pred = on_object["class_name"].tolist(), on_object["predicted"].tolist()
    np.testing.assert_allclose(rows.loc[["a", "b"], "precision"], skm.precision_score(y_true, y_pred, average=None))
    np.testing.assert_allclose(rows.loc[["a", "b"], "recall"], skm.recall_score(y_true, y_pred, average=None))
    np.testing.assert_allclose(rows.loc[["a", "b"], "f1"], skm.f1_score(y_true, y_pred, average=None))
    assert rows.loc["ALL", "accuracy"] == pytest.approx(0.75)
    assert rows.loc["ALL", "balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert rows.loc["ALL", "macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    assert np.isnan(rows.loc["a", "balanced_accuracy"]) and np.isnan(rows.loc["ALL", "precision"])
    # A point outside the image names its file and row.
    bad = pd.concat([points, pd.DataFrame({"class_name": ["a"], "t": [2], "y": [1], "x": [1], "source": "truth.csv", "row": [7]})])
    with pytest.raises(InputError, match=r"truth.csv: row 7: point \(t=2, y=1, x=1\) lies outside the image"):
        classification.match_points_to_objects(bad, labels, "tyx", objects)
    # No point on any object: counts, no ratios.
    empty, _ = classification.object_class_metrics(matched.iloc[4:], ["a", "b"])
    overall = empty.set_index("class_name").loc["ALL"]
    assert overall["n_unmatched"] == 2 and overall["n_matched"] == 0 and np.isnan(overall["balanced_accuracy"])


def test_pooled_classification_metrics_equal_metrics_of_all_points():
    labels, objects, points = _tiny_labels()
    matched = classification.match_points_to_objects(points, labels, "tyx", objects)
    first, _ = classification.object_class_metrics(matched.iloc[:3], ["a", "b"])
    second, _ = classification.object_class_metrics(matched.iloc[3:], ["a", "b", "c"])  # another model's classes
    pooled = classification.pool_classification_metrics({"s1": first, "s2": second})
    assert pooled["sample"].tolist() == ["s1"] * 3 + ["s2"] * 4 + ["ALL"] * 4
    everything, _ = classification.object_class_metrics(matched, ["a", "b", "c"])
    result = pooled[pooled["sample"] == "ALL"].drop(columns="sample").reset_index(drop=True)
    pd.testing.assert_frame_equal(result, everything, check_dtype=False)


@pytest.fixture
def segmented(tmp_path):
    """A real labels.ome.zarr and objects table of a synthetic time-lapse (the truth labels
    as segmentation), classes predicted right except for one object, and a model folder."""
    import tifffile

    from snakescope.ingest.convert import ingest
    from snakescope.segmentation.measure import measure

    timelapse = make_timelapse(ndim=2, n_frames=3, shape=(64, 64), n_cells=5, seed=3)
    tifffile.imwrite(tmp_path / "labels.tif", timelapse.labels.astype(np.uint16), imagej=True, metadata={"axes": "TYX"})
    ingest(tmp_path / "labels.tif", "TYX", tmp_path / "as_image.ome.zarr", name="labels")

    def copy(frame, out):
        out[...] = frame[...]
        return len(np.unique(frame[...])) - 1

    labels_io.write_label_image(tmp_path / "as_image.ome.zarr", tmp_path / "labels.ome.zarr", copy)
    measure(tmp_path / "labels.ome.zarr", tmp_path / "as_image.ome.zarr", tmp_path / "measured.parquet")
    objects = pd.read_parquet(tmp_path / "measured.parquet")
    truth_class = dict(zip(timelapse.classes["label"], timelapse.classes["class_name"]))
    objects["class_name"] = [truth_class[label] for label in objects["label"]]
    wrong = objects["label"] == objects["label"].iloc[0]
    objects.loc[wrong, "class_name"] = ["round" if c == "elongated" else "elongated" for c in objects.loc[wrong, "class_name"]]
    objects.to_parquet(tmp_path / "objects.parquet")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps({"class_names": ["elongated", "round"]}))
    points = timelapse.points
    truth = tmp_path / "truth.csv"
    pd.DataFrame({"index": range(len(points)), "axis-0": points["t"], "axis-1": points["y"], "axis-2": points["x"],
                  "class": points["class_name"]}).to_csv(truth, index=False)
    return tmp_path, timelapse, int(wrong.sum())


def _evaluate(folder: Path, truth: Path, sample: str = "s") -> pd.DataFrame:
    """What the stage does: metrics of the sample written as CSV, its confusion PNG."""
    table, matrix, class_names = classification.evaluate_sample(truth, folder / "labels.ome.zarr",
                                                                folder / "objects.parquet", folder / "model")
    table.insert(0, "sample", sample)
    (folder / sample / "qc").mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / sample / "classification_metrics.csv", index=False)
    classification.plot_object_confusion(matrix, class_names, table, folder / sample / "qc" / "confusion.png", title=sample)
    return table


def test_evaluate_sample_and_pool(segmented):
    folder, timelapse, n_wrong = segmented
    for sample in ("s", "NA"):  # "NA" stays a sample name, not a missing value
        _evaluate(folder, folder / "truth.csv", sample)
    tables = {s: classification.read_metrics_table(folder / s / "classification_metrics.csv") for s in ("s", "NA")}
    table = tables["s"]
    assert table["class_name"].tolist() == ["elongated", "round", "ALL"] and set(table["sample"]) == {"s"}
    overall = table.iloc[-1]
    assert overall["n_points"] == overall["n_matched"] == len(timelapse.points)  # centroids lie in their objects
    assert overall["n_unmatched"] == 0 and overall["tp"] == len(timelapse.points) - n_wrong
    assert overall["accuracy"] == pytest.approx(1 - n_wrong / len(timelapse.points))
    assert (folder / "s" / "qc" / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert not list((folder / "s").rglob("*.partial-*"))

    pooled_table = classification.pool_classification_metrics(tables)
    assert set(tables["NA"]["sample"]) == {"NA"}
    pooled = pooled_table[(pooled_table["sample"] == "ALL") & (pooled_table["class_name"] == "ALL")].iloc[0]
    assert pooled["n_points"] == 2 * len(timelapse.points) and pooled["tp"] == 2 * overall["tp"]
    assert pooled["balanced_accuracy"] == pytest.approx(overall["balanced_accuracy"])


def test_class_truth_errors_name_file_and_row(segmented, tmp_path):
    folder, _, _ = segmented
    unknown = write_csv(tmp_path / "unknown.csv", "index,axis-0,axis-1,axis-2,class\n0,0,10,10,round\n1,1,12,12,mitotic\n")
    with pytest.raises(InputError) as info:
        _evaluate(folder, unknown)
    assert str(unknown) in str(info.value) and "row 2" in str(info.value) and "unknown class 'mitotic'" in str(info.value)
    outside = write_csv(tmp_path / "points_round.csv", "index,axis-0,axis-1,axis-2\n0,0,10,10\n1,2,30,64.6\n")
    with pytest.raises(InputError) as info:
        _evaluate(folder, outside)
    assert str(outside) in str(info.value) and "row 2" in str(info.value) and "outside the image" in str(info.value)
    assert not (folder / "s" / "classification_metrics.csv").exists()
    with pytest.raises(InputError, match="config.json is missing"):
        classification.classifier_class_names(tmp_path)


def test_class_truth_sheet_column(tmp_path):
    from snakescope import settings as settings_module
    (tmp_path / "truth_a.csv").write_text("index,axis-0,axis-1\n0,1,1\n")
    sheet = tmp_path / "samples.tsv"
    sheet.write_text(f"sample_id\timage\taxes\tpoints\tclass_truth\ns1\t{tmp_path}/img.tif\tYX\t\t{tmp_path}/truth_*.csv\n")
    _, samples, _ = settings_module.load({"samples": str(sheet)})
    assert samples["s1"].class_truth == f"{tmp_path}/truth_*.csv" and samples["s1"].points is None
    assert str(tmp_path / "truth_a.csv") in samples["s1"].input_files()


# -- the workflow ---------------------------------------------------------------------------


@pytest.mark.slow
def test_workflow_evaluates_classification_and_reports_confusion(tmp_path):
    """The small project with a class_truth column and a patch folder: the classifier trains
    on points and patches, each truth point is matched to a segmented object, metrics are
    gathered, and the training's confusion matrix is a report output."""
    import yaml

    from conftest import make_small_project, run_ok

    wd = make_small_project(tmp_path)
    cells = wd / "data" / "cells"
    truth = pd.concat([pd.read_csv(cells / f"points_{c}.csv").assign(class_name=c) for c in ("round", "elongated")])
    truth.to_csv(wd / "data" / "truth.csv", index=False)
    other = make_timelapse(ndim=2, n_frames=3, shape=(96, 96), n_cells=6, seed=8)
    _write_patch_folder(wd / "data" / "patches", other.image, other.points, 16)
    sheet = (wd / "config" / "samples.tsv").read_text().splitlines()
    header, cells_row = sheet[0], next(line for line in sheet if line.startswith("cells\t"))
    (wd / "config" / "samples.tsv").write_text(f"{header}\tclass_truth\n{cells_row}\tdata/truth.csv\n")
    config = yaml.safe_load((wd / "config" / "config.yaml").read_text())
    config["tracking"] = {"enabled": False}
    config["classification"]["patch_folder_2d"] = "data/patches"
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(config))

    run_ok(wd)
    table = pd.read_csv(wd / "results" / "cells" / "classification_metrics.csv")
    assert table["class_name"].tolist() == ["elongated", "round", "ALL"]
    overall = table.iloc[-1]
    assert overall["n_points"] == len(truth) == overall["n_matched"] + overall["n_unmatched"]
    assert overall["n_matched"] > 0 and 0 <= overall["balanced_accuracy"] <= 1
    assert overall["tp"] + overall["fp"] == overall["n_matched"]
    assert table.iloc[:2][["precision", "recall", "f1"]].apply(lambda c: c.between(0, 1)).all().all()
    gathered = pd.read_csv(wd / "results" / "metrics" / "classification.csv")
    assert gathered["sample"].tolist() == ["cells"] * 3 + ["ALL"] * 3
    pd.testing.assert_frame_equal(gathered.iloc[3:].drop(columns="sample").reset_index(drop=True),
                                  table.drop(columns="sample"), check_dtype=False)
    assert (wd / "results" / "cells" / "qc" / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    model = wd / "results" / "models" / "classifier_2d"
    assert (wd / "results" / "models" / "classifier_2d_confusion.png").read_bytes() == \
        (model / "test" / "confusion_matrix.png").read_bytes()
    split = pd.read_csv(wd / "splits" / "classifier_2d.csv")
    assert split["id"].str.startswith("patch_folder:").sum() == len(other.points)
    assert split["id"].str.startswith("cells:").any()
    # Nothing left to do; an edited patch folder retrains the classifier.
    dry = run_ok(wd, "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr
    (wd / "data" / "patches" / "round" / "p000.tif").unlink()
    dry = run_ok(wd, "-n")
    assert "train_classifier" in dry.stdout + dry.stderr
