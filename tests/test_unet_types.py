"""Typed U-Net (segmentation.unet.types): K cell types' targets, the types readers, typed
training and prediction (objects with a type), and the confusion matrix in row percentages."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile

from snakescope.errors import InputError
from snakescope.evaluation.classes import confusion_percent, write_class_scores
from snakescope.io import labels as labels_io
from snakescope.segmentation.unet import (CLASS_NAMES, class_confusion, class_names_for, class_types,
                                         labels_to_classes, normalize_percentile, object_type_image, object_types,
                                         probabilities_to_instances)
from snakescope.settings import defaults

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

TYPES = ("round", "elongated")


def two_type_frames(n_images=3, shape=(96, 96), n_cells=8):
    """{name: (normalized image, labels, {label: type id})} of single-frame synthetic fields
    whose nuclei are of the generator's two morphological classes."""
    from snakescope.synthetic import make_timelapse

    out = {}
    for seed in range(n_images):
        sim = make_timelapse(ndim=2, n_frames=1, shape=shape, n_cells=n_cells, class_names=TYPES,
                             division_probability=0.0, blank_fraction=0.0, seed=seed)
        type_of = {int(r.label): TYPES.index(r.class_name) + 1 for r in sim.classes.itertuples()}
        out[f"s{seed}"] = (normalize_percentile(sim.image[0]), sim.labels[0].astype(np.int32), type_of)
    return out


@pytest.fixture(scope="module")
def frames():
    return two_type_frames()


def one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------
# Classes and targets


def test_class_names_of_k_types_and_the_three_class_case():
    assert class_names_for([]) == class_names_for(["cells"]) == CLASS_NAMES
    assert class_names_for(TYPES) == ("background", "round_contour", "round_body", "elongated_contour",
                                      "elongated_body")
    assert len(class_names_for(["a", "b", "c"])) == 7
    with pytest.raises(InputError, match="segmentation.unet.types"):
        class_names_for(["a", "a"])
    assert class_types(np.arange(5, dtype=np.uint8)).tolist() == [0, 1, 1, 2, 2]


def test_typed_targets_have_2k_plus_1_classes(frames):
    _, labels, type_of = frames["s0"]
    types = object_type_image(labels, type_of, len(TYPES))
    typed = labels_to_classes(labels, "s0", types)
    plain = labels_to_classes(labels, "s0")
    assert set(np.unique(typed)) == set(range(5))
    # the same contour / body split as the three-class targets, shifted to each object's type
    assert np.array_equal(typed > 0, plain > 0)
    assert np.array_equal(np.where(typed == 0, 0, 2 - typed % 2), plain)  # odd: contour (1), even: body (2)
    for label, type_id in type_of.items():
        assert set(np.unique(typed[labels == label])) <= {2 * type_id - 1, 2 * type_id}
    # one type for every object is the three-class U-Net (K = 1)
    assert np.array_equal(labels_to_classes(labels, "s0", (labels > 0).astype(np.uint8)), plain)


def test_typed_probabilities_give_the_instances_of_the_summed_bodies(frames):
    _, labels, type_of = frames["s1"]
    typed = labels_to_classes(labels, "s1", object_type_image(labels, type_of, 2))
    prob5 = np.eye(5, dtype=np.float32)[typed]
    prob3 = np.stack([prob5[..., 0], prob5[..., 1] + prob5[..., 3], prob5[..., 2] + prob5[..., 4]], -1)
    instances = probabilities_to_instances(prob5, min_size=1, min_seed_size=1)
    assert np.array_equal(instances, probabilities_to_instances(prob3, min_size=1, min_seed_size=1))
    assert instances.max() == len(np.unique(labels)) - 1
    # each predicted object takes its pixels' type: here every one is right
    found = object_types(instances, typed, 2)
    for label, (type_id, fraction) in found.items():
        truth = np.bincount(labels[instances == label]).argmax()
        assert type_id == type_of[int(truth)] and fraction == 1.0
    with pytest.raises(InputError, match="2K"):
        probabilities_to_instances(prob5[..., :4])


def test_class_confusion_of_typed_classes(frames):
    _, labels, type_of = frames["s0"]
    names = class_names_for(TYPES)
    truth = labels_to_classes(labels, "s0", object_type_image(labels, type_of, 2))
    cm = class_confusion(labels, truth, types=type_of, class_names=names)
    assert cm.shape == (5, 5) and np.array_equal(cm, np.diag(np.bincount(truth.ravel(), minlength=5)))
    swapped = np.where(truth > 0, (truth + 1) % 4 + 1, 0)  # every object given the other type
    assert np.trace(class_confusion(labels, swapped, types=type_of, class_names=names)) == cm[0, 0]
    with pytest.raises(InputError, match="type"):
        class_confusion(labels, truth, class_names=names)  # typed classes need the objects' types
    # time points: frame by frame, a type image moved with them
    stack, typed_stack = np.stack([labels, labels]), np.stack([truth, truth])
    types = np.stack([object_type_image(labels, type_of, 2)] * 2)
    assert np.array_equal(class_confusion(stack, typed_stack, time_axis=0, types=types, class_names=names), 2 * cm)


# ---------------------------------------------------------------------------------------
# Readers of a sample's types


def test_types_csv_by_name_or_id_and_the_generators_classes_table(tmp_path):
    table = tmp_path / "types.csv"
    table.write_text("label,type\n1,round\n2, elongated\n3,2\n")
    assert labels_io.read_types(str(table), (8, 8), TYPES, "sample a") == {1: 1, 2: 2, 3: 2}
    from snakescope.synthetic import make_timelapse, write_timelapse

    sim = make_timelapse(ndim=2, n_frames=2, shape=(96, 96), n_cells=6, class_names=TYPES, seed=3)
    paths = write_timelapse(sim, tmp_path / "sim")
    types = labels_io.read_types(str(paths["classes"]), sim.labels.shape, TYPES, "sample sim")
    assert types == {int(r.label): TYPES.index(r.class_name) + 1 for r in sim.classes.itertuples()}


BAD_CSV = {
    "label,kind\n1,round\n": "needs the columns label and type",
    "label,type\n1,square\n": "unknown type",
    "label,type\n1,round\n1,elongated\n": "label 1 is given two types",
    "label,type\nx,round\n": "object ids",
    "label,type\n1,3\n": "unknown type",
}


@pytest.mark.parametrize("text,problem", BAD_CSV.items(), ids=range(len(BAD_CSV)))
def test_bad_types_csv_is_named_in_one_line(tmp_path, text, problem):
    table = tmp_path / "types.csv"
    table.write_text(text)
    with pytest.raises(InputError, match=problem) as err:
        labels_io.read_types(str(table), (8, 8), TYPES, "sample a")
    assert one_line(err).startswith(str(table))


def test_missing_types_file_is_named(tmp_path):
    for name in ("gone.csv", "gone.tif"):
        with pytest.raises(InputError, match="not found") as err:
            labels_io.read_types(str(tmp_path / name), (8, 8), TYPES, "sample a")
        assert one_line(err).startswith(str(tmp_path / name))


def test_type_image_gives_each_object_its_majority_type(tmp_path, frames):
    _, labels, type_of = frames["s2"]
    exact = object_type_image(labels, type_of, 2)
    drawn = np.roll(exact, 1, axis=1)  # a type mask drawn a pixel off still types every object
    tifffile.imwrite(tmp_path / "types.tif", drawn)
    image = labels_io.read_types(str(tmp_path / "types.tif"), labels.shape, TYPES, "sample s2")
    assert np.array_equal(object_type_image(labels, image, 2, where="types.tif"), exact)
    # problems: an untyped object, an id beyond K, another shape, a float image
    untyped = np.where(labels == labels.max(), 0, exact)
    with pytest.raises(InputError, match=r"1 object\(s\) have no type \(labels %d\)" % labels.max()) as err:
        object_type_image(labels, untyped, 2, where="types.tif")
    assert one_line(err).startswith("types.tif")
    with pytest.raises(InputError, match=r"outside 0..2"):
        object_type_image(labels, exact * 2, 2, where="types.tif")
    with pytest.raises(InputError, match="differs"):
        object_type_image(labels, exact[:-1], 2, where="types.tif")
    with pytest.raises(InputError, match="dtype"):
        object_type_image(labels, exact.astype(np.float32), 2, where="types.tif")
    with pytest.raises(InputError, match=r"outside 1..2"):
        object_type_image(labels, {k: 3 for k in type_of}, 2, where="types.csv")
    tifffile.imwrite(tmp_path / "wrong.tif", exact[:-1])
    with pytest.raises(InputError, match="differs") as err:
        labels_io.read_types(str(tmp_path / "wrong.tif"), labels.shape, TYPES, "sample s2")
    assert one_line(err).startswith(str(tmp_path / "wrong.tif"))


# ---------------------------------------------------------------------------------------
# Confusion in percent


def test_percent_confusion_rows_sum_to_100(tmp_path):
    names = class_names_for(TYPES)
    cm = np.array([[90, 5, 3, 1, 1], [2, 6, 1, 1, 0], [0, 2, 30, 0, 1], [0, 0, 0, 0, 0], [1, 0, 1, 2, 40]])
    percent = confusion_percent(cm, names)
    assert list(percent.columns) == list(names) and list(percent.index) == list(names)
    sums = percent.sum(axis=1, min_count=1)
    assert np.allclose(sums.drop("elongated_contour"), 100.0)
    assert percent.loc["elongated_contour"].isna().all()  # no true pixels: no percentages
    assert percent.loc["background", "background"] == pytest.approx(90.0)
    write_class_scores({"a": cm, "b": cm}, names, tmp_path / "c.csv", tmp_path / "m.csv", tmp_path / "c.png",
                       percent_csv=tmp_path / "p.csv")
    written = pd.read_csv(tmp_path / "p.csv", index_col=0)
    assert list(written.columns) == list(names)
    assert np.allclose(written.dropna().sum(axis=1), 100.0, atol=0.05)
    scores = pd.read_csv(tmp_path / "m.csv")
    assert set(scores["sample"]) == {"a", "b", "ALL"} and {"iou", "dice"} <= set(scores.columns)


# ---------------------------------------------------------------------------------------
# Training, prediction, measurements


def test_measured_objects_take_their_type_from_the_class_map(tmp_path, frames):
    """objects.parquet's type and type_fraction from a typed class map; none for three classes."""
    from snakescope.ingest.convert import ingest
    from snakescope.segmentation.measure import measure_objects

    image, labels, type_of = frames["s0"]
    tifffile.imwrite(tmp_path / "image.tif", image)
    ingest(tmp_path / "image.tif", "YX", tmp_path / "image.ome.zarr", name="n", voxel_size={"y": 0.5, "x": 0.5},
           settings=defaults().ingest)
    typed = labels_to_classes(labels, "s0", object_type_image(labels, type_of, 2))

    def segment_frame(frame, out, classes_out):
        out[...] = labels.astype(np.uint32)
        classes_out[...] = typed
        return int(labels.max())

    names = class_names_for(TYPES)
    labels_io.write_label_image(tmp_path / "image.ome.zarr", tmp_path / "typed.ome.zarr", segment_frame,
                                class_names=names, summary={"classes": list(names), "types": list(TYPES)})
    assert labels_io.class_map_names(tmp_path / "typed.ome.zarr") == (list(names), list(TYPES))
    table = measure_objects(tmp_path / "typed.ome.zarr", tmp_path / "image.ome.zarr")
    assert table["type"].tolist() == [TYPES[type_of[int(k)] - 1] for k in table["label"]]
    assert (table["type_fraction"] == 1.0).all()
    plain = labels_to_classes(labels, "s0")

    def segment_plain(frame, out, classes_out):
        out[...] = labels.astype(np.uint32)
        classes_out[...] = plain
        return int(labels.max())

    labels_io.write_label_image(tmp_path / "image.ome.zarr", tmp_path / "plain.ome.zarr", segment_plain,
                                class_names=CLASS_NAMES, summary={"classes": list(CLASS_NAMES)})
    assert "type" not in measure_objects(tmp_path / "plain.ome.zarr", tmp_path / "image.ome.zarr").columns
    from snakescope.report.qc import segmentation_overlay

    segmentation_overlay(tmp_path / "image.ome.zarr", tmp_path / "typed.ome.zarr", tmp_path / "qc.png")
    assert (tmp_path / "qc.png").stat().st_size > 0


@pytest.fixture(scope="module")
def timelapse_sample(tmp_path_factory):
    """A 2D+t synthetic sample of two types written as the workflow reads it: image NGFF,
    labels TIFF, classes.csv (label,class_name) and a type image TIFF."""
    from snakescope.ingest.convert import ingest
    from snakescope.synthetic import make_timelapse, write_timelapse

    folder = tmp_path_factory.mktemp("typed_sample")
    sim = make_timelapse(ndim=2, n_frames=3, shape=(96, 96), n_cells=6, class_names=TYPES, seed=5)
    paths = write_timelapse(sim, folder / "data")
    ingest(paths["image"], paths["image_axes"], folder / "image.ome.zarr", name="cells",
           voxel_size={"y": 0.5, "x": 0.5}, settings=defaults().ingest)
    type_of = {int(r.label): TYPES.index(r.class_name) + 1 for r in sim.classes.itertuples()}
    type_image = np.stack([object_type_image(frame, type_of, 2) for frame in sim.labels])
    tifffile.imwrite(folder / "types.tif", type_image, photometric="minisblack")
    return {"folder": folder, "image": folder / "image.ome.zarr", "labels": paths["labels"],
            "classes": paths["classes"], "type_image": folder / "types.tif", "sim": sim, "type_of": type_of}


def test_training_sources_load_types_per_frame(timelapse_sample):
    from snakescope.segmentation.training_data import TrainingSource, load_pairs, load_types

    s = timelapse_sample
    table = TrainingSource("cells", str(s["image"]), str(s["labels"]), 0, str(s["classes"]))
    pairs = load_pairs(table)
    from_table = load_types(table, TYPES)
    assert list(from_table) == list(pairs) == ["cells:t0", "cells:t1", "cells:t2"]
    assert all(types == s["type_of"] for types in from_table.values())
    image = TrainingSource("cells", str(s["image"]), str(s["labels"]), 0, str(s["type_image"]))
    from_image = load_types(image, TYPES)
    for key, (_, labels) in pairs.items():
        assert np.array_equal(object_type_image(labels, from_image[key], 2),
                              object_type_image(labels, from_table[key], 2))
    with pytest.raises(InputError, match="no types") as err:
        load_types(TrainingSource("cells", str(s["image"]), str(s["labels"]), 0), TYPES)
    assert one_line(err).startswith(str(s["labels"]))


def test_typed_segmentation_scores_against_the_samples_types(timelapse_sample, tmp_path):
    """evaluate_segmentation's scores: the typed class map against the objects' types."""
    from snakescope.evaluation import segmentation_scores

    s = timelapse_sample
    truth = s["sim"].labels
    typed = np.stack([labels_to_classes(f, "t", object_type_image(f, s["type_of"], 2)) for f in truth])
    frames_iter = iter(range(truth.shape[0]))

    def segment_frame(frame, out, classes_out):
        t = next(frames_iter)
        out[...] = truth[t].astype(np.uint32)
        classes_out[...] = typed[t]
        return int(truth[t].max())

    names = class_names_for(TYPES)
    labels_io.write_label_image(s["image"], tmp_path / "labels.ome.zarr", segment_frame, class_names=names,
                                summary={"classes": list(names), "types": list(TYPES)})
    for types in (s["classes"], s["type_image"]):
        table, counts = segmentation_scores(tmp_path / "labels.ome.zarr", str(s["labels"]), sample="cells",
                                            classes=True, types=str(types))
        assert np.array_equal(counts, np.diag(np.bincount(typed.ravel(), minlength=5)))
        assert table.set_index("threshold").loc[0.5, "f1"] == 1.0
    with pytest.raises(InputError, match="column types") as err:
        segmentation_scores(tmp_path / "labels.ome.zarr", str(s["labels"]), sample="cells", classes=True)
    assert one_line(err).startswith(str(tmp_path / "labels.ome.zarr"))


@pytest.mark.slow
def test_typed_training_and_prediction_give_objects_with_a_type(tmp_path, frames):
    from snakescope.ingest.convert import ingest
    from snakescope.segmentation.measure import measure_objects
    from snakescope.segmentation.unet import load_unet, predict_probabilities, predict_unet, train_unet

    pairs = {k: v[:2] for k, v in frames.items()}
    types = {k: v[2] for k, v in frames.items()}
    split = {"train": ["s0", "s1"], "validation": ["s2"]}
    unet = defaults().segmentation.unet
    settings = unet.replace(architecture={**unet.architecture, "n_depth": 2, "n_filter_base": 8}, patch_size=[64, 64],
                            batch_size=4, epochs=4, steps_per_epoch=10, learning_rate=5e-3, types=list(TYPES))
    with pytest.raises(InputError, match="no object types"):
        train_unet(pairs, tmp_path / "untyped", settings, split=split, seed=1)
    with pytest.raises(InputError, match="two or more"):
        train_unet(pairs, tmp_path / "plain", settings.replace(types=[]), split=split, seed=1, types=types)
    train_unet(pairs, tmp_path / "model", settings, split=split, seed=1, types=types, optimize_thresholds=False)
    model = load_unet(tmp_path / "model")
    assert model.class_names == class_names_for(TYPES) and model.types == list(TYPES)
    assert pd.read_csv(tmp_path / "model" / "confusion.csv", index_col=0).shape == (5, 5)
    image = pairs["s2"][0]
    assert predict_probabilities(model, image).shape == image.shape + (5,)

    tifffile.imwrite(tmp_path / "image.tif", image)
    ingest(tmp_path / "image.tif", "YX", tmp_path / "image.ome.zarr", name="n", voxel_size={"y": 0.5, "x": 0.5},
           settings=defaults().ingest)
    seg = defaults().segmentation.replace(method="unet")
    summary = predict_unet(model, tmp_path / "image.ome.zarr", tmp_path / "labels.ome.zarr", seg, channel=0)
    assert summary["types"] == list(TYPES) and summary["classes"] == list(class_names_for(TYPES))
    classes = labels_io.read_class_map(tmp_path / "labels.ome.zarr")
    assert int(np.asarray(classes.data).max()) <= 4
    table = measure_objects(tmp_path / "labels.ome.zarr", tmp_path / "image.ome.zarr")
    assert len(table) > 0 and {"type", "type_fraction"} <= set(table.columns)
    assert set(table["type"].dropna()) <= set(TYPES) and table["type"].notna().any()
    # its bioimage.io package names the five output channels and validates
    import zipfile

    import yaml

    from snakescope.exchange.bioimageio import export_package
    from interop import check_bioimageio

    package = export_package(tmp_path / "model", tmp_path / "typed.zip", authors=["Ada Lovelace"], test_input=image)
    rdf = yaml.safe_load(zipfile.ZipFile(package).read("rdf.yaml"))
    channel_axis = next(a for a in rdf["outputs"][0]["axes"] if a.get("type") == "channel")
    assert channel_axis["channel_names"] == list(class_names_for(TYPES)) and "typed U-Net" in rdf["name"]
    report = check_bioimageio([package])[str(package)]
    assert report["status"] == "valid-format" and not report["errors"], report


# ---------------------------------------------------------------------------------------
# Planning (no TensorFlow)


def typed_project(tmp_path, types=TYPES):
    """A plan of samples a, b (labels and a types table) and c (labels only) for a U-Net
    with cell types ``types``."""
    from snakescope.pipeline.plan import Plan
    from snakescope.settings import Config, load

    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    rows = []
    for i, sid in enumerate(("a", "b", "c")):
        tifffile.imwrite(data / f"{sid}.tif", np.random.default_rng(i).integers(0, 200, (32, 32), dtype=np.uint8))
        tifffile.imwrite(data / f"{sid}_labels.tif", np.ones((32, 32), np.uint16))
        (data / f"{sid}_types.csv").write_text("label,type\n1,round\n")
        types_file = data / f"{sid}_types.csv" if sid != "c" else ""
        rows.append(f"{sid}\t{data / f'{sid}.tif'}\tYX\t0.5\t{data / f'{sid}_labels.tif'}\t{types_file}")
    sheet = tmp_path / "samples.tsv"
    sheet.write_text("sample_id\timage\taxes\tvoxel_size\tlabels\ttypes\n" + "\n".join(rows) + "\n")
    validated, samples, _ = load({"samples": str(sheet), "classification": {"enabled": False},
                                  "segmentation": {"method": "unet", "unet": {"types": list(types)}}})
    return Plan(Config.from_dict(validated), samples)


def test_a_typed_unet_plans_its_types_and_typed_outputs(tmp_path):
    plan = typed_project(tmp_path)
    assert plan.typed_unet(2)
    # training: the samples with types, each source carrying its types file; its settings the types
    job = plan.job("train_segmentation-unet_2d")
    assert [s["sample"] for s in job.task["sources"]] == ["a", "b"]
    assert all(s["types"].endswith(f"{s['sample']}_types.csv") for s in job.task["sources"])
    assert job.task["config"]["segmentation"]["unet"]["types"] == list(TYPES)
    assert str(tmp_path / "data" / "a_types.csv") in job.inputs
    # evaluation: pixel classes (counts and percent) against the types; c only its instances
    finish = {w["sample"]: {s["step"]: s for s in w["steps"]} for w in plan.job("finish-b0000").task["samples"]}
    scored = finish["a"]["evaluate_segmentation"]
    assert scored["inputs"]["types"].endswith("a_types.csv")
    assert {"class_confusion", "class_percent", "class_metrics", "class_plot"} <= set(scored["outputs"])
    assert set(finish["c"]["evaluate_segmentation"]["outputs"]) == {"metrics"}
    assert any("sample c: labels but no types" in n for n in plan.warnings())
    assert "results/metrics/class_confusion_percent.csv" in plan.gathered_outputs()
    # another set of types is another model
    assert typed_project(tmp_path, ("round", "rod")).job("train_segmentation-unet_2d").digest != job.digest


def test_the_three_class_unet_plans_as_before(tmp_path):
    plan = typed_project(tmp_path, ())
    assert not plan.typed_unet(2)
    job = plan.job("train_segmentation-unet_2d")
    assert [s["sample"] for s in job.task["sources"]] == ["a", "b", "c"]
    assert not any("types" in s for s in job.task["sources"])
    finish = {w["sample"]: {s["step"]: s for s in w["steps"]} for w in plan.job("finish-b0000").task["samples"]}
    assert "types" not in finish["c"]["evaluate_segmentation"]["inputs"]
    assert {"class_confusion", "class_percent"} <= set(finish["c"]["evaluate_segmentation"]["outputs"])


def test_one_label_file_per_type_is_merged_into_labels_and_a_types_table(tmp_path):
    import tifffile

    from snakescope.io.labels import read_types
    from snakescope.pipeline.cli import main

    round_ = np.zeros((2, 20, 30), np.uint16)
    round_[:, 2:6, 2:6] = 7
    round_[1, 10:14, 2:6] = 3
    elongated = np.zeros((2, 20, 30), np.uint8)
    elongated[0, 10:12, 10:25] = 1
    tifffile.imwrite(tmp_path / "round.tif", round_)
    tifffile.imwrite(tmp_path / "elongated.tif", elongated)
    main(["merge-types", "--labels", str(tmp_path / "labels.tif"), "--types", str(tmp_path / "types.csv"),
          f"round={tmp_path / 'round.tif'}", f"elongated={tmp_path / 'elongated.tif'}"])
    labels = tifffile.imread(tmp_path / "labels.tif")
    table = pd.read_csv(tmp_path / "types.csv")
    assert table.to_dict("list") == {"label": [1, 2, 3], "type": ["round", "round", "elongated"]}
    # the objects keep their pixels, with new ids; the table gives each its file's type
    assert set(np.unique(labels[round_ > 0])) == {1, 2} and set(np.unique(labels[elongated > 0])) == {3}
    np.testing.assert_array_equal(labels > 0, (round_ > 0) | (elongated > 0))
    assert read_types(tmp_path / "types.csv", labels.shape, TYPES, "merged") == {1: 1, 2: 1, 3: 2}

    elongated[1, 3, 3] = 2  # a pixel of a round object
    tifffile.imwrite(tmp_path / "elongated.tif", elongated)
    with pytest.raises(InputError, match=r"elongated.tif.*1 pixel\(s\) of its objects also belong to objects of"):
        from snakescope.segmentation.unet.types import merge_type_labels

        merge_type_labels({"round": tmp_path / "round.tif", "elongated": tmp_path / "elongated.tif"},
                          tmp_path / "l.tif", tmp_path / "t.csv")
