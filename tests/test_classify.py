"""Classification stage: annotations, patches, split, training (real Keras), prediction, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from snakescope.classification import classify
from snakescope.io import labels as labels_io
from snakescope.errors import InputError
from snakescope.synthetic import make_timelapse, write_timelapse

# Keras' TF backend calls np.array(x) on its own tensors (NumPy 2 deprecation): not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

TINY = dict(filters=(8, 16, 16), dense=(32,), dropout=0.2, batch_size=16, learning_rate=3e-3)


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- annotations ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample():
    return make_timelapse(n_frames=10, n_cells=16, seed=1)


@pytest.fixture(scope="module")
def written(sample, tmp_path_factory):
    return write_timelapse(sample, tmp_path_factory.mktemp("synthetic"))


def test_read_one_file_per_class(written, sample):
    files = [written["points_sparse"][c] for c in sample.class_names]
    table = classify.read_point_annotations(files, "tyx", image_shape=sample.image.shape)
    assert list(table.columns) == ["class_name", "t", "y", "x", "source", "row"]
    assert set(table["class_name"]) == {"round", "elongated"}  # "points_sparse_<class>.csv"
    for name in sample.class_names:
        raw = pd.read_csv(written["points_sparse"][name])
        part = table[table["class_name"] == name]
        assert len(part) == len(raw) > 0
        np.testing.assert_allclose(part[["t", "y", "x"]].to_numpy(), raw[["axis-0", "axis-1", "axis-2"]].to_numpy())
        assert part["row"].tolist() == list(range(1, len(raw) + 1))
        assert set(part["source"]) == {str(written["points_sparse"][name])}
    # A glob over one folder, and the number of axes instead of an axes string.
    by_glob = classify.read_point_annotations(str(Path(written["points"]["round"]).parent / "points_[re]*.csv"), 3)
    assert set(by_glob["class_name"]) == {"round", "elongated"}
    assert len(by_glob) == len(sample.points)


def test_read_class_column_layout_and_named_axes(tmp_path):
    f = write_csv(tmp_path / "annotations.csv",
                  "index,axis-0,axis-1,axis-2,class\n0,1,10.5,20,mitosis\n1,2,30,40.25,interphase\n")
    table = classify.read_point_annotations(f, "tcyx")  # channel axis dropped like napari does
    assert table["class_name"].tolist() == ["mitosis", "interphase"]
    assert table[["t", "y", "x"]].to_numpy().tolist() == [[1, 10.5, 20], [2, 30, 40.25]]
    g = write_csv(tmp_path / "named.csv", "z,y,x,class_name\n1,2,3,a\n4,5,6,b\n")
    assert classify.read_point_annotations(g, "zyx")["class_name"].tolist() == ["a", "b"]
    # A file named <class>.csv without class column.
    h = write_csv(tmp_path / "apoptosis.csv", "index,axis-0,axis-1\n0,5,6\n")
    assert classify.read_point_annotations(h, "yx")["class_name"].tolist() == ["apoptosis"]


def test_read_wrong_columns_names_file(tmp_path):
    f = write_csv(tmp_path / "points_round.csv", "index,axis-0,axis-1\n0,3,4\n")
    with pytest.raises(InputError) as info:
        classify.read_point_annotations(f, "tyx")
    message = str(info.value)
    assert str(f) in message and "axis-2" in message and "header" in message
    g = write_csv(tmp_path / "points_x.csv", "index,row,col\n0,3,4\n")
    with pytest.raises(InputError, match="expected the coordinate columns"):
        classify.read_point_annotations(g, "yx")
    h = write_csv(tmp_path / "points_y.csv", "index,axis-0,axis-1\n0,3,4\n1,abc,5\n")
    with pytest.raises(InputError, match=r"row 2: coordinate axis-0 \(y\) is not a number"):
        classify.read_point_annotations(h, "yx")


def test_point_outside_image_names_file_and_row(tmp_path):
    f = write_csv(tmp_path / "points_round.csv", "index,axis-0,axis-1,axis-2\n0,1,5,5\n1,2,6,6\n2,3,64.7,10\n")
    with pytest.raises(InputError) as info:
        classify.read_point_annotations(f, "tyx", image_shape=(10, 64, 64))
    assert str(f) in str(info.value) and "row 3" in str(info.value) and "outside the image" in str(info.value)
    # The same check when cutting patches from a table that carries source/row.
    table = classify.read_point_annotations(f, "tyx")
    with pytest.raises(InputError, match=r"points_round.csv: row 3: point \(t=3, y=64.7, x=10\) lies outside"):
        classify.extract_patches(np.zeros((10, 64, 64), np.uint16), "tyx", table, 8)


def test_unknown_class_names_file_and_row(tmp_path):
    f = write_csv(tmp_path / "all.csv", "index,axis-0,axis-1,label\n0,1,1,round\n1,2,2,mitotic\n")
    with pytest.raises(InputError) as info:
        classify.read_point_annotations(f, "yx", class_names=["round", "elongated"])
    assert str(f) in str(info.value) and "row 2" in str(info.value) and "'mitotic'" in str(info.value)


# -- patches ----------------------------------------------------------------------------


def test_patch_centred_on_bright_pixel():
    image = np.zeros((4, 40, 50), np.uint16)
    image[2, 13, 27] = 1000
    for size in (7, 8):
        patch = classify.extract_patches(image, "tyx", pd.DataFrame({"t": [2], "y": [13.3], "x": [26.6]}), size)
        assert patch.shape == (1, size, size, 1)
        assert patch[0, size // 2, size // 2, 0] == 1000
        assert patch.sum() == 1000


def test_patch_reflection_at_borders_and_3d_channels():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 1000, (30, 40)).astype(np.uint16)
    patch = classify.extract_patches(image, "yx", np.array([[0, 39]]), 9)[0, ..., 0]
    expected = np.pad(image, 4, mode="reflect")[0:9, 39:48]
    np.testing.assert_array_equal(patch, expected)
    # ZYX with two channels (axes tczyx): patch (z, y, x) per channel, anisotropic size.
    volume = rng.integers(0, 1000, (2, 2, 6, 20, 20)).astype(np.uint16)
    points = pd.DataFrame({"t": [1], "z": [0], "y": [10], "x": [19]})
    out = classify.extract_patches(volume, "tczyx", points, (3, 5, 5))
    assert out.shape == (1, 3, 5, 5, 2)
    for c in range(2):
        ref = np.pad(volume[1, c], ((1, 1), (2, 2), (2, 2)), mode="reflect")[0:3, 10:15, 19:24]
        np.testing.assert_array_equal(out[0, ..., c], ref)


def test_patch_time_window_frames_as_channels():
    image = np.zeros((5, 16, 16), np.float32)
    for t in range(5):
        image[t] = t + 1
    out = classify.extract_patches(image, "tyx", pd.DataFrame({"t": [2, 0], "y": [8, 8], "x": [8, 8]}), 4, time_window=1)
    assert out.shape == (2, 4, 4, 3)
    assert out[0, 0, 0].tolist() == [2, 3, 4]  # frames t-1, t, t+1
    assert out[1, 0, 0].tolist() == [2, 1, 2]  # reflected at the first frame
    with pytest.raises(InputError, match="needs a t axis"):
        classify.extract_patches(image[0], "yx", np.array([[1, 1]]), 4, time_window=1)


def test_patches_from_zarr_and_small_reads_match_numpy(tmp_path):
    import zarr

    rng = np.random.default_rng(3)
    image = rng.integers(0, 60000, (3, 50, 60)).astype(np.uint16)
    z = zarr.create_array(str(tmp_path / "a.zarr"), shape=image.shape, chunks=(1, 16, 16), dtype=image.dtype)
    z[:] = image
    points = pd.DataFrame({"t": rng.integers(0, 3, 40), "y": rng.uniform(0, 49, 40), "x": rng.uniform(0, 59, 40)})
    reference = classify.extract_patches(image, "tyx", points, 11, time_window=1)
    np.testing.assert_array_equal(classify.extract_patches(z, "tyx", points, 11, time_window=1), reference)
    # A read limit smaller than one frame splits the points into several small reads.
    np.testing.assert_array_equal(
        classify.extract_patches(z, "tyx", points, 11, time_window=1, max_read_bytes=2000), reference)


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
    out = classify.extract_patches(image, "tyx", corners, 16, time_window=1)
    assert out[3, 8, 8, 1] == 7 and out.shape == (4, 16, 16, 3)
    assert sum(image.reads) < data.nbytes / 20  # never whole frames
    # Dense points: reads shared, none above the limit.
    image.reads.clear()
    rng = np.random.default_rng(0)
    dense = pd.DataFrame({"t": rng.integers(0, 4, 500), "y": rng.uniform(0, 1023, 500), "x": rng.uniform(0, 1023, 500)})
    classify.extract_patches(image, "tyx", dense, 16, max_read_bytes=2**20)
    assert max(image.reads) <= 2**20 and len(image.reads) < 100


def test_normalize_patches_percentiles():
    rng = np.random.default_rng(0)
    patches = rng.uniform(100, 200, (3, 10, 10, 1)).astype(np.float32)
    patches[2] = 7.0  # constant patch
    out = classify.normalize_patches(patches)
    lo, hi = np.percentile(patches[0], [1, 99.8])
    np.testing.assert_allclose(out[0], (patches[0] - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
    assert np.all(out[2] == 0)
    assert out.dtype == np.float32


def test_load_patch_folder(tmp_path):
    import tifffile
    from PIL import Image

    for name, n in (("a", 3), ("b", 2)):
        (tmp_path / name).mkdir()
        for i in range(n):
            Image.fromarray(np.full((12, 12), 10 * i, np.uint8)).save(tmp_path / name / f"{i}.png")
    tifffile.imwrite(tmp_path / "b" / "x.tif", np.ones((12, 12), np.uint8))
    patches, labels, paths = classify.load_patch_folder(tmp_path)
    assert patches.shape == (6, 12, 12, 1) and labels == ["a"] * 3 + ["b"] * 3
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "b" / "odd.png")
    with pytest.raises(InputError, match="odd.png: patch shape"):
        classify.load_patch_folder(tmp_path)


# -- split and imbalance -----------------------------------------------------------------


def test_split_stratified_saved_and_reused(tmp_path):
    labels = ["a"] * 40 + ["b"] * 20 + ["c"] * 7
    path = tmp_path / "split.csv"
    split = classify.make_or_load_split(labels, path, (0.7, 0.15, 0.15), seed=1)
    assert path.is_file()
    table = pd.DataFrame({"label": labels, "split": split})
    counts = table.groupby(["label", "split"]).size().unstack(fill_value=0)
    assert counts.loc["a"].to_dict() == {"test": 6, "train": 28, "val": 6}
    assert counts.loc["b"].to_dict() == {"test": 3, "train": 14, "val": 3}
    assert counts.loc["c"].to_dict() == {"test": 1, "train": 5, "val": 1}
    saved = pd.read_csv(path)
    assert list(saved.columns) == ["id", "class_name", "split"] and saved["split"].tolist() == list(split)
    # A second run, even with another seed, reuses the saved split unchanged.
    again = classify.make_or_load_split(labels, path, (0.5, 0.25, 0.25), seed=99)
    np.testing.assert_array_equal(again, split)
    assert pd.read_csv(path).equals(saved)
    # Without a saved file, another seed gives another split (so reuse is not a coincidence).
    other = classify.make_or_load_split(labels, tmp_path / "other.json", seed=99)
    assert (other != split).any()
    assert json.loads((tmp_path / "other.json").read_text())["seed"] == 99
    # Annotations that changed since: an error, never a silent re-split.
    with pytest.raises(InputError, match="not in the saved split"):
        classify.make_or_load_split(labels + ["a"], path)


def test_too_few_examples_to_split(tmp_path):
    labels = ["a"] * 10 + ["rare"] * 2
    sources = ["points_a.csv"] * 10 + ["points_rare.csv"] * 2
    with pytest.raises(InputError) as info:
        classify.make_or_load_split(labels, tmp_path / "s.csv", sources=sources)
    message = str(info.value)
    assert message.startswith("points_rare.csv:")
    assert "'rare' has 2 example(s)" in message and "at least 3" in message
    assert not (tmp_path / "s.csv").exists()


def test_class_weights_inverse_frequency():
    labels = ["a"] * 10 + ["b"] * 30 + ["c"] * 60
    weights = classify.class_weights(labels, ["a", "b", "c", "absent"])
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
    seq = classify._make_sequence(x, y, w, 50, 7, sampling=True, **kwargs)
    drawn = []
    for _ in range(20):
        drawn.extend(y_index[seq.order])
        seq.on_epoch_end()
    assert 0.45 < np.mean(drawn) < 0.55  # classes drawn equally often
    a = classify._make_sequence(x, y, w, 50, 7, sampling=False, **kwargs)[0]
    b = classify._make_sequence(x, y, w, 50, 7, sampling=False, **kwargs)[0]
    np.testing.assert_array_equal(a[0], b[0])  # same seed, same augmented batch
    assert a[0].shape == (50, 8, 8, 1)
    np.testing.assert_array_equal(a[2], w[classify._make_sequence(x, y, w, 50, 7, sampling=False, augment=False,
                                                                  spatial_ndim=2, noise=0, blur=0, intensity=0).order[:50]])


# -- training, prediction, evaluation ------------------------------------------------------


@pytest.fixture(scope="module")
def trained(sample, written, tmp_path_factory):
    """A tiny classifier trained for a few seconds on round vs elongated synthetic nuclei."""
    out = tmp_path_factory.mktemp("model")
    files = [written["points"][c] for c in sample.class_names]
    patches, labels, ids, table = classify.patches_from_annotations(sample.image, "tyx", files, 32)
    summary = classify.train_classifier(
        patches, labels, out / "model", epochs=12, patience=6, seed=0, split_path=out / "split.csv", ids=ids,
        sources=table["source"].tolist(), patch_size=32, **TINY)
    return out / "model", summary


def test_training_beats_chance_and_writes_outputs(trained):
    model_dir, summary = trained
    assert summary["test"]["balanced_accuracy"] > 0.7
    assert summary["n_test"] >= 20 and summary["n_train"] > summary["n_val"]
    for name in ("best.weights.h5", "last.weights.h5", "config.json", "training_log.csv",
                 "training_curves.png", "summary.json", "test/confusion_matrix.csv", "test/confusion_matrix.png"):
        assert (model_dir / name).is_file(), name
    log = pd.read_csv(model_dir / "training_log.csv")
    assert {"epoch", "loss", "val_loss", "accuracy", "val_accuracy"} <= set(log.columns)
    assert len(log) == summary["epochs_run"] >= 1
    assert (model_dir / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["class_names"] == ["elongated", "round"]
    assert config["patch_size"] == [32, 32] and config["normalize"]["method"] == "percentile"
    assert 1 <= summary["best_epoch"] <= summary["epochs_run"]


def test_classify_objects_on_new_image(trained):
    model_dir, _ = trained
    other = make_timelapse(n_frames=4, n_cells=16, seed=7)  # an image the model never saw
    objects = other.points[["t", "y", "x"]]
    result = classify.classify_objects(model_dir, other.image, "TYX", objects, batch_size=9)
    assert list(result.columns) == ["t", "y", "x", "class_name", "p_elongated", "p_round"]
    np.testing.assert_allclose(result[["p_elongated", "p_round"]].sum(axis=1), 1.0, atol=1e-5)
    assert set(result["class_name"]) <= {"round", "elongated"}
    metrics = classify.evaluate(other.points["class_name"], result["class_name"], ["elongated", "round"])
    assert metrics["balanced_accuracy"] > 0.7
    # Batching does not change the answer.
    whole = classify.classify_objects(model_dir, other.image, "tyx", objects, batch_size=10_000)
    np.testing.assert_allclose(whole["p_round"], result["p_round"], atol=1e-5)
    # Test-time augmentation keeps probabilities normalized.
    tta = classify.classify_objects(model_dir, other.image, "tyx", objects.iloc[:5], tta=True)
    np.testing.assert_allclose(tta[["p_elongated", "p_round"]].sum(axis=1), 1.0, atol=1e-5)


def test_evaluate_annotations_unknown_class(trained, sample, tmp_path):
    model_dir, _ = trained
    f = write_csv(tmp_path / "truth.csv", "index,axis-0,axis-1,axis-2,class_name\n0,0,20,20,round\n1,1,30,30,mitotic\n")
    with pytest.raises(InputError) as info:
        classify.evaluate_annotations(model_dir, sample.image, "tyx", f)
    assert str(f) in str(info.value) and "row 2" in str(info.value) and "'mitotic'" in str(info.value)
    points = sample.points.iloc[::3]
    good = write_csv(tmp_path / "good.csv", points[["t", "y", "x", "class_name"]].to_csv(index=False))
    metrics = classify.evaluate_annotations(model_dir, sample.image, "tyx", good, tmp_path / "eval")
    assert metrics["n"] == len(points) and (tmp_path / "eval" / "per_class.csv").is_file()


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # sklearn, about class "d"
def test_evaluate_matches_sklearn(tmp_path):
    from sklearn import metrics as skm

    rng = np.random.default_rng(5)
    names = ["a", "b", "c", "d"]
    y_true = rng.choice(names[:3], 200, p=[0.6, 0.3, 0.1])
    y_pred = np.where(rng.uniform(size=200) < 0.7, y_true, rng.choice(names, 200))
    result = classify.evaluate(y_true, y_pred, names, tmp_path)
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
        classify.evaluate(["a", "b", "zz"], ["a", "b", "c"], names)


def test_transfer_from_previous_classifier_and_backbone(trained, tmp_path):
    import keras

    model_dir, _ = trained
    config = json.loads((model_dir / "config.json").read_text())
    old = classify.load_classifier(model_dir).model
    new = classify.build_classifier(config["input_shape"], 3, **classify._architecture_of(config))
    copied = classify._transfer_from_classifier(new, model_dir, ["x", "y", "z"])
    assert copied == 4  # three conv blocks and one dense layer; not the new class layer
    np.testing.assert_array_equal(new.get_layer("block2_conv1").get_weights()[0], old.get_layer("block2_conv1").get_weights()[0])
    assert new.get_layer("classes").get_weights()[0].shape == (32, 3)

    keras.utils.set_random_seed(1)
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.35, pooling="avg")
    weights = tmp_path / "mobilenet.weights.h5"
    base.save_weights(weights)
    model = classify.build_classifier((32, 32, 1), 2, dense=(8,), backbone="MobileNetV2",
                                      backbone_kwargs={"alpha": 0.35}, backbone_weights=weights)
    np.testing.assert_array_equal(model.get_layer("backbone").get_layer("Conv1").get_weights()[0],
                                  base.get_layer("Conv1").get_weights()[0])
    assert model.output_shape == (None, 2)


def test_3d_model_and_training_is_deterministic(tmp_path):
    model = classify.build_classifier((6, 16, 16, 2), 3, filters=(4, 8, 8), dense=(8,))
    assert model.output_shape == (None, 3)
    assert model.get_layer("block3_pool").output.shape[1:4] == (1, 2, 2)  # z pooled only while >= 2
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 255, (30, 12, 12, 1)).astype(np.uint8)
    labels = ["a", "b", "c"] * 10
    runs = []
    for name in ("one", "two"):
        classify.train_classifier(patches, labels, tmp_path / name, epochs=2, seed=3, filters=(4,), dense=(8,),
                                  split_path=tmp_path / "split.csv", fractions=(0.8, 0.2, 0.0), imbalance="sampling")
        runs.append(classify.load_classifier(tmp_path / name, "last").model.get_weights())
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


# -- patch folders for training -----------------------------------------------------------


def _write_patch_folder(root: Path, image: np.ndarray, points: pd.DataFrame, size: int, time_window: int = 0) -> Path:
    """Patches cut around synthetic nuclei, saved as TIFFs in one subfolder per class."""
    import tifffile

    patches = classify.extract_patches(image, "tyx", points, size, time_window)
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
    patches, labels, ids, sources = classify.training_patches_from_folder(tmp_path / "grey", 2, spatial_shape=(12, 12))
    assert patches.shape == (4, 12, 12, 1) and labels == ["a", "a", "b", "b"]
    assert ids[0] == "patch_folder:a/0.png" and sources[0].endswith("0.png")
    with pytest.raises(InputError, match=r"grey: patch size \(12, 12\) differs from the \(16, 16\)"):
        classify.training_patches_from_folder(tmp_path / "grey", 2, spatial_shape=(16, 16))
    with pytest.raises(InputError, match=r"grey: patches of shape \(12, 12\) \(2D\) but a 3D classifier"):
        classify.training_patches_from_folder(tmp_path / "grey", 3)
    with pytest.raises(InputError, match=r"patches have 3 channel\(s\) but the classifier expects 5"):
        classify.training_patches_from_folder(tmp_path / "grey", 2, n_channels=5)
    # YXC TIFFs of 5 frames (time_window 2), which the reader alone would take for ZYX.
    import tifffile

    for name in ("a", "b"):
        (tmp_path / "frames" / name).mkdir(parents=True)
        tifffile.imwrite(tmp_path / "frames" / name / "0.tif", np.zeros((12, 12, 5), np.uint16))
    patches, _, _, _ = classify.training_patches_from_folder(tmp_path / "frames", 2, n_channels=5)
    assert patches.shape == (2, 12, 12, 5)
    colour = np.zeros((12, 12, 3), np.uint8)
    colour[..., 0] = 200
    Image.fromarray(colour).save(tmp_path / "grey" / "a" / "red.png")
    with pytest.raises(InputError, match="colour \\(RGB\\) patches"):
        classify.training_patches_from_folder(tmp_path / "grey", 2)


def test_train_step_from_patch_folder_alone_with_time_window(sample, tmp_path):
    """The rule's training step on a patch folder only (no sample with points): frames as
    channels, the model's geometry from the patches, the confusion PNG copied for the report."""
    from snakescope.pipeline import cli
    from snakescope.pipeline import steps
    points = sample.points[sample.points["t"].between(1, 8)].groupby("class_name").head(15)
    folder = _write_patch_folder(tmp_path / "patches", sample.image, points, 16, time_window=1)
    settings = {"epochs": 1, "batch_size": 8, "patience": 0, "time_window": 1, "patch_size": [16, 16]}
    parser = cli.parser("train")
    steps.train_classifier_arguments(parser)
    args = parser.parse_args(["--sources", "[]", "--settings", json.dumps(settings), "--split", str(tmp_path / "split.csv"),
                              "--ndim", "2d", "--patch-folder", str(folder), "--out", str(tmp_path / "model"),
                              "--confusion", str(tmp_path / "model_confusion.png")])
    steps.train_classifier_step(args)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["time_window"] == 1 and config["input_shape"] == [16, 16, 3] and config["patch_size"] == [16, 16]
    split = pd.read_csv(tmp_path / "split.csv")
    assert len(split) == len(points) and split["id"].str.startswith("patch_folder:").all()
    copied = (tmp_path / "model_confusion.png").read_bytes()
    assert copied == (tmp_path / "model" / "test" / "confusion_matrix.png").read_bytes()
    assert not list(tmp_path.glob("*.partial-*"))
    # Without any training data: one clear line.
    args.patch_folder = "none"
    with pytest.raises(InputError, match="no 2d training data"):
        steps.train_classifier_step(args)


def test_training_confusion_without_test_part(tmp_path):
    (tmp_path / "model").mkdir()
    classify.write_training_confusion(tmp_path / "model", tmp_path / "confusion.png")
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"


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
    matched = classify.match_points_to_objects(points, labels, "tyx", objects)
    assert matched["object_label"].tolist() == [1, 2, 3, 1, 0, 0]
    assert matched["predicted"].iloc[:4].tolist() == ["a", "b", "a", "a"] and matched["predicted"].iloc[4:].isna().all()
    # A zarr label image (read point by point) gives the same.
    z = zarr.create_array(str(tmp_path / "l.zarr"), shape=labels.shape, chunks=(1, 4, 4), dtype=labels.dtype)
    z[:] = labels
    pd.testing.assert_frame_equal(classify.match_points_to_objects(points, z, "tyx", objects), matched)

    table, matrix = classify.object_class_metrics(matched, ["a", "b"])
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
        classify.match_points_to_objects(bad, labels, "tyx", objects)
    # No point on any object: counts, no ratios.
    empty, _ = classify.object_class_metrics(matched.iloc[4:], ["a", "b"])
    overall = empty.set_index("class_name").loc["ALL"]
    assert overall["n_unmatched"] == 2 and overall["n_matched"] == 0 and np.isnan(overall["balanced_accuracy"])


def test_pooled_classification_metrics_equal_metrics_of_all_points():
    labels, objects, points = _tiny_labels()
    matched = classify.match_points_to_objects(points, labels, "tyx", objects)
    first, _ = classify.object_class_metrics(matched.iloc[:3], ["a", "b"])
    second, _ = classify.object_class_metrics(matched.iloc[3:], ["a", "b", "c"])  # another model's classes
    pooled = classify.pool_classification_metrics({"s1": first, "s2": second})
    assert pooled["sample"].tolist() == ["s1"] * 3 + ["s2"] * 4 + ["ALL"] * 4
    everything, _ = classify.object_class_metrics(matched, ["a", "b", "c"])
    result = pooled[pooled["sample"] == "ALL"].drop(columns="sample").reset_index(drop=True)
    pd.testing.assert_frame_equal(result, everything, check_dtype=False)


@pytest.fixture
def segmented(tmp_path):
    """A real labels.ome.zarr and objects table of a synthetic time-lapse (the truth labels
    as segmentation), classes predicted right except for one object, and a model folder."""
    import tifffile

    from snakescope.segmentation import stardist as segment
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


def _evaluation_args(folder: Path, truth: Path, sample: str = "s"):
    from snakescope.pipeline import cli
    from snakescope.pipeline import steps
    parser = cli.parser("evaluate")
    steps.evaluate_classification_arguments(parser)
    return parser.parse_args(["--truth", str(truth), "--labels", str(folder / "labels.ome.zarr"),
                              "--objects", str(folder / "objects.parquet"), "--model", str(folder / "model"),
                              "--sample", sample, "--out", str(folder / sample / "classification_metrics.csv"),
                              "--plot", str(folder / sample / "qc" / "confusion.png")])


def test_evaluate_classification_step_and_gather(segmented):
    from snakescope.pipeline import cli
    from snakescope.pipeline import steps
    folder, timelapse, n_wrong = segmented
    for sample in ("s", "t"):
        steps.evaluate_classification_step(_evaluation_args(folder, folder / "truth.csv", sample))
    table = pd.read_csv(folder / "s" / "classification_metrics.csv")
    assert table["class_name"].tolist() == ["elongated", "round", "ALL"] and set(table["sample"]) == {"s"}
    overall = table.iloc[-1]
    assert overall["n_points"] == overall["n_matched"] == len(timelapse.points)  # centroids lie in their objects
    assert overall["n_unmatched"] == 0 and overall["tp"] == len(timelapse.points) - n_wrong
    assert overall["accuracy"] == pytest.approx(1 - n_wrong / len(timelapse.points))
    assert (folder / "s" / "qc" / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert not list((folder / "s").rglob("*.partial-*"))

    parser = cli.parser("gather")
    steps.gather_metrics_arguments(parser)
    steps.gather_metrics_step(parser.parse_args(["--kind", "classification", "--out", str(folder / "all.csv"), "--inputs",
                                                 str(folder / "s" / "classification_metrics.csv"),
                                                 str(folder / "t" / "classification_metrics.csv")]))
    gathered = pd.read_csv(folder / "all.csv")
    pooled = gathered[(gathered["sample"] == "ALL") & (gathered["class_name"] == "ALL")].iloc[0]
    assert pooled["n_points"] == 2 * len(timelapse.points) and pooled["tp"] == 2 * overall["tp"]
    assert pooled["balanced_accuracy"] == pytest.approx(overall["balanced_accuracy"])


def test_class_truth_errors_name_file_and_row(segmented, tmp_path):
    from snakescope.pipeline import steps
    folder, _, _ = segmented
    unknown = write_csv(tmp_path / "unknown.csv", "index,axis-0,axis-1,axis-2,class\n0,0,10,10,round\n1,1,12,12,mitotic\n")
    with pytest.raises(InputError) as info:
        steps.evaluate_classification_step(_evaluation_args(folder, unknown))
    assert str(unknown) in str(info.value) and "row 2" in str(info.value) and "unknown class 'mitotic'" in str(info.value)
    outside = write_csv(tmp_path / "points_round.csv", "index,axis-0,axis-1,axis-2\n0,0,10,10\n1,2,30,64.6\n")
    with pytest.raises(InputError) as info:
        steps.evaluate_classification_step(_evaluation_args(folder, outside))
    assert str(outside) in str(info.value) and "row 2" in str(info.value) and "outside the image" in str(info.value)
    assert not (folder / "s" / "classification_metrics.csv").exists()


def test_class_truth_sheet_column(tmp_path):
    from snakescope import settings
    (tmp_path / "truth_a.csv").write_text("index,axis-0,axis-1\n0,1,1\n")
    sheet = tmp_path / "samples.tsv"
    sheet.write_text(f"sample_id\timage\taxes\tpoints\tclass_truth\ns1\t{tmp_path}/img.tif\tYX\t\t{tmp_path}/truth_*.csv\n")
    _, samples, _ = settings.load({"samples": str(sheet)})
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
