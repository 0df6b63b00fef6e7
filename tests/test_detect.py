"""Box detection: box files in and out, boxes of instance labels, NMS and mAP on hand-made
cases, a tiny detector trained on synthetic nuclei, blockwise prediction, detect() on NGFF."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from snakescope.detection import (box_iou, detect, detection_counts, load_detector,
                                  mean_average_precision, nms, predict_boxes, train_detector)
from snakescope.detection.targets import augment_patch, render_targets
from snakescope.errors import InputError
from snakescope.io import ngff
from snakescope.io.boxes import (Boxes, boxes_from_labels, export_label_boxes, object_classes, read_boxes_file,
                                 read_boxes_csv, read_napari_shapes,
                                 read_yolo, write_boxes_csv, write_napari_shapes, write_yolo)
from snakescope.settings import defaults

# Keras 3 converts its own variables with np.array(copy=False) semantics numpy 2 warns about
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

SOME = Boxes.make([[3, 2, 8, 6], [10.5, 20.25, 30, 41], [0, 0, 100, 80]], classes=[0, 2, 1],
                  scores=[0.9, 0.55, 0.125])
NAMES = ["round", "elongated", "mitotic"]


def assert_same_boxes(a: Boxes, b: Boxes, atol=1e-4):
    assert len(a) == len(b)
    np.testing.assert_allclose(a.yxyx, b.yxyx, atol=atol)
    np.testing.assert_array_equal(a.classes, b.classes)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    np.testing.assert_array_equal(a.frames, b.frames)


# ---------------------------------------------------------------------------------------
# Box files


def test_yolo_round_trip_with_and_without_scores(tmp_path):
    path = tmp_path / "image.txt"
    write_yolo(path, SOME, (100, 80), with_scores=True)
    first = path.read_text().splitlines()[0].split()
    # class, x centre, y centre, width, height (normalized by width / height), score
    assert first == ["0", f"{4 / 80:.6f}", f"{5.5 / 100:.6f}", f"{4 / 80:.6f}", f"{5 / 100:.6f}", "0.900000"]
    assert_same_boxes(read_yolo(path, (100, 80)), SOME)
    write_yolo(path, SOME, (100, 80))
    assert len(path.read_text().splitlines()[0].split()) == 5
    assert_same_boxes(read_yolo(path, (100, 80), frame=3), Boxes.make(SOME.yxyx, SOME.classes, None, [3] * len(SOME)))


def test_yolo_empty_file_and_bad_lines(tmp_path):
    path = tmp_path / "none.txt"
    write_yolo(path, Boxes.make(), (10, 10))
    assert path.read_text() == "" and len(read_yolo(path, (10, 10))) == 0
    polygon = tmp_path / "polygon.txt"
    polygon.write_text("0 0.5 0.5 0.2 0.2\n\n0 0.1 0.1 0.2 0.1 0.2 0.2 0.1 0.2\n")
    with pytest.raises(InputError, match="line 3"):
        read_yolo(polygon, (10, 10))
    outside = tmp_path / "outside.txt"
    outside.write_text("0 1.5 0.5 0.2 0.2\n")
    with pytest.raises(InputError, match="normalized"):
        read_yolo(outside, (10, 10))
    with pytest.raises(InputError, match="image shape"):
        write_yolo(path, SOME, (10,))


def test_napari_shapes_round_trip_and_pixel_convention(tmp_path):
    path = tmp_path / "shapes.csv"
    write_napari_shapes(path, SOME, class_names=NAMES)
    table = pd.read_csv(path)
    assert list(table.columns) == ["index", "shape-type", "vertex-index", "axis-0", "axis-1", "class", "score"]
    # napari's pixel centres are integers: the rectangle of pixel rows 3..7 and columns 2..5
    # runs along their outer borders, (2.5, 1.5) to (7.5, 5.5), in napari's vertex order
    first = table[table["index"] == 0]
    assert first[["axis-0", "axis-1"]].to_numpy().tolist() == [[2.5, 1.5], [7.5, 1.5], [7.5, 5.5], [2.5, 5.5]]
    assert set(table["shape-type"]) == {"rectangle"} and table["class"].iloc[4] == "mitotic"
    assert_same_boxes(read_napari_shapes(path, class_names=NAMES), SOME)

    lapse = Boxes.make(SOME.yxyx, SOME.classes, SOME.scores, [0, 4, 4])
    write_napari_shapes(path, lapse, time_lapse=True)
    assert "axis-2" in pd.read_csv(path).columns
    assert_same_boxes(read_napari_shapes(path), lapse)
    with pytest.raises(InputError, match="one file per frame"):
        write_napari_shapes(path, lapse)


def test_napari_shapes_written_by_napari_itself_and_bad_shapes(tmp_path):
    # what napari saves for a rectangle drawn by hand: no class or score columns
    path = tmp_path / "drawn.csv"
    path.write_text("index,shape-type,vertex-index,axis-0,axis-1\n"
                    "0,rectangle,0,9.5,19.5\n0,rectangle,1,19.5,19.5\n0,rectangle,2,19.5,39.5\n0,rectangle,3,9.5,39.5\n")
    assert_same_boxes(read_napari_shapes(path), Boxes.make([[10, 20, 20, 40]]))
    path.write_text("index,shape-type,vertex-index,axis-0,axis-1\n0,ellipse,0,1,1\n0,ellipse,1,1,5\n"
                    "0,ellipse,2,5,5\n0,ellipse,3,5,1\n")
    with pytest.raises(InputError, match="shape 0.*ellipse"):
        read_napari_shapes(path)
    path.write_text("index,shape-type,vertex-index,axis-0,axis-1\n0,rectangle,0,0,2\n0,rectangle,1,2,4\n"
                    "0,rectangle,2,4,2\n0,rectangle,3,2,0\n")
    with pytest.raises(InputError, match="rotated"):
        read_napari_shapes(path)
    write_napari_shapes(path, SOME, class_names=NAMES)
    with pytest.raises(InputError, match="shape 1: class 'mitotic' is not one of round"):
        read_napari_shapes(path, class_names=["round"])


def test_plain_csv_round_trip(tmp_path):
    path = tmp_path / "boxes.csv"
    write_boxes_csv(path, SOME, class_names=NAMES)
    assert list(pd.read_csv(path).columns) == ["class", "score", "y0", "x0", "y1", "x1"]
    assert_same_boxes(read_boxes_csv(path, class_names=NAMES), SOME)
    lapse = Boxes.make(SOME.yxyx, SOME.classes, SOME.scores, [2, 0, 1])
    write_boxes_csv(path, lapse, time_lapse=True)
    assert pd.read_csv(path).columns[0] == "t"
    assert_same_boxes(read_boxes_csv(path), lapse)
    path.write_text("class,y0,x0,y1,x1\n0,5,5,4,9\n")
    with pytest.raises(InputError, match="row 1"):
        read_boxes_csv(path)


def test_boxes_from_labels_image_and_time_lapse():
    labels = np.zeros((12, 10), np.uint16)
    labels[3:8, 2:6] = 1  # rows 3..7, columns 2..5
    labels[9:12, 7:10] = 3  # touches the image's end; label 2 is absent
    labels[0, 0] = 3  # one object in two pieces: one box around both
    boxes = boxes_from_labels(labels, classes={3: 1}, scores={1: 0.5})
    np.testing.assert_array_equal(boxes.yxyx, [[3, 2, 8, 6], [0, 0, 12, 10]])
    np.testing.assert_array_equal(boxes.classes, [0, 1])
    np.testing.assert_array_equal(boxes.scores, [0.5, 1.0])

    lapse = np.stack([labels, np.zeros_like(labels), labels[::-1]])
    boxes = boxes_from_labels(lapse)
    np.testing.assert_array_equal(boxes.frames, [0, 0, 2, 2])
    np.testing.assert_array_equal(boxes.frame(2).yxyx, [[4, 2, 9, 6], [0, 0, 12, 10]])
    assert len(boxes_from_labels(np.zeros((4, 4), np.int32))) == 0
    with pytest.raises(InputError, match="integer"):
        boxes_from_labels(labels.astype(np.float32))


def write_ngff(path, data, axes, scale):
    """A one-level NGFF image."""
    group = ngff.open_group(path, "w")
    level = ngff.create_levels(group, [data.shape], data.shape, np.float32, "lz4")[0]
    level[...] = data.astype(np.float32)
    group.attrs["multiscales"] = [ngff.multiscales_metadata(axes, scale, 1, path.stem)]
    return path


def test_export_label_boxes_of_a_segmented_time_lapse(tmp_path):
    from snakescope.io.labels import write_label_image

    truth = np.zeros((2, 20, 30), np.uint32)
    truth[0, 3:8, 2:6] = 1
    truth[1, 10:20, 25:30] = 4
    truth[1, 0:2, 0:3] = 2
    image = write_ngff(tmp_path / "image.ome.zarr", truth, "tyx", [1.0, 0.5, 0.5])

    def segment_frame(frame, out):
        out[...] = np.asarray(frame[...]).astype(np.uint32)
        return int(np.count_nonzero(np.unique(out[...])))

    write_label_image(image, tmp_path / "image.ome.zarr" / "labels", segment_frame)
    counts = export_label_boxes(tmp_path / "image.ome.zarr" / "labels", tmp_path / "boxes.csv", tmp_path / "yolo")
    assert counts == {"0": 1, "1": 2}
    boxes = read_napari_shapes(tmp_path / "boxes.csv")
    assert_same_boxes(boxes, boxes_from_labels(truth))
    assert sorted(p.name for p in (tmp_path / "yolo").iterdir()) == ["classes.txt", "t0000.txt", "t0001.txt"]
    assert (tmp_path / "yolo" / "classes.txt").read_text() == "object\n"
    assert_same_boxes(read_yolo(tmp_path / "yolo" / "t0001.txt", (20, 30), frame=1), boxes.frame(1))

    # with the classifier's classes in the measurements: each box gets its object's class and probability
    objects = pd.DataFrame({"t": [0, 1, 1], "label": [1, 4, 2], "class_name": ["mitosis", "interphase", "mitosis"],
                            "p_interphase": [0.2, 0.7, 0.4], "p_mitosis": [0.8, 0.3, 0.6]})
    export_label_boxes(tmp_path / "image.ome.zarr" / "labels", tmp_path / "classed.csv", tmp_path / "classed",
                       objects=objects)
    assert (tmp_path / "classed" / "classes.txt").read_text().split() == ["interphase", "mitosis"]
    classed = read_napari_shapes(tmp_path / "classed.csv", class_names=["interphase", "mitosis"])
    assert classed.classes.tolist() == [1, 1, 0] and np.allclose(classed.scores, [0.8, 0.6, 0.7])  # frame, label
    yolo = read_yolo(tmp_path / "classed" / "t0001.txt", (20, 30), frame=1)
    assert yolo.classes.tolist() == [1, 0]


def test_object_classes_of_a_typed_unet():
    objects = pd.DataFrame({"t": [0, 0], "label": [1, 2], "type": ["b", None], "type_fraction": [0.9, np.nan]})
    names, found = object_classes(objects, ["a", "b"])
    assert names == ["a", "b", "untyped"] and found[(0, 1)] == (1, 0.9) and found[(0, 2)][0] == 2
    assert object_classes(objects.drop(columns=["type", "type_fraction"])) == (None, {})


def test_sample_boxes_files_in_three_formats_and_their_errors(tmp_path):
    truth = Boxes.make([[2, 3, 10, 12], [0, 0, 4, 4]], classes=[1, 0])
    write_yolo(tmp_path / "a.txt", truth, (20, 30))
    write_napari_shapes(tmp_path / "a.csv", truth, class_names=["x", "y"])
    write_boxes_csv(tmp_path / "plain.csv", truth, class_names=["x", "y"])
    for name in ("a.txt", "a.csv", "plain.csv"):
        assert_same_boxes(read_boxes_file(tmp_path / name, (20, 30), class_names=["x", "y"]), truth)
    with pytest.raises(InputError, match="beyond the 1 class name"):
        read_boxes_file(tmp_path / "a.txt", (20, 30), class_names=["x"])
    with pytest.raises(InputError, match="lie off the image of 1 frame"):
        read_boxes_file(tmp_path / "plain.csv", (8, 30), class_names=["x", "y"])
    write_boxes_csv(tmp_path / "late.csv", Boxes.make([[1, 1, 3, 3]], frames=[5]), time_lapse=True)
    with pytest.raises(InputError, match=r"late.csv.*frame 5"):
        read_boxes_file(tmp_path / "late.csv", (20, 30), n_frames=3)
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(InputError, match="unknown boxes format"):
        read_boxes_file(tmp_path / "a.json", (20, 30))


def test_box_scores_count_and_pool(tmp_path):
    from snakescope.evaluation.boxes import box_scores, pool_detection_scores

    truth = Boxes.make([[0, 0, 10, 10], [20, 20, 30, 30]])
    found = Boxes.make([[0, 0, 10, 9], [50, 50, 60, 60]], scores=[0.9, 0.8])
    scores = box_scores([truth], [found], ["object"])
    assert (scores["tp"], scores["fp"], scores["fn"], scores["n_true"], scores["n_predicted"]) == (1, 1, 1, 2, 2)
    assert scores["precision"] == scores["recall"] == 0.5 and scores["map50"] == pytest.approx(0.5, abs=0.01)
    rows = []
    for k, (t, p) in enumerate(((truth, found), (truth, truth))):
        write_boxes_csv(tmp_path / f"t{k}.csv", t, time_lapse=True)
        write_boxes_csv(tmp_path / f"p{k}.csv", p, time_lapse=True)
        rows.append(pd.DataFrame([{"sample": f"s{k}", **box_scores([t], [p], ["object"]), "time_lapse": False,
                                   "truth_boxes": str(tmp_path / f"t{k}.csv"),
                                   "predicted_boxes": str(tmp_path / f"p{k}.csv")}]))
    pooled = pool_detection_scores(rows, ["object"]).set_index("sample")
    assert pooled.loc["ALL", "tp"] == 3 and pooled.loc["ALL", "fn"] == 1 and pooled.loc["ALL", "recall"] == 0.75


def test_augmentation_moves_boxes_with_the_pixels():
    image = np.zeros((16, 16), np.float32)
    image[3:8, 2:6] = 1
    boxes = boxes_from_labels(image.astype(np.uint8))
    rng = np.random.default_rng(0)
    for _ in range(12):
        moved, moved_boxes = augment_patch(image, boxes, rng, None)
        np.testing.assert_array_equal(moved_boxes.yxyx, boxes_from_labels((moved > 0).astype(np.uint8)).yxyx)


def test_targets_mark_centres_and_regress_boxes():
    boxes = Boxes.make([[4, 4, 16, 12], [20, 20, 30, 30]], classes=[1, 0])
    target = render_targets(boxes, (32, 32), n_classes=2, grid=2)
    assert target.shape == (16, 16, 2 + 5)
    assert target[5, 4, 1] == 1 and target[12, 12, 0] == 1 and (target[..., :2] == 1).sum() == 2
    # the centre cell's box numbers: centre (10, 8) px = (5, 4) cells, offsets from the cell centre
    np.testing.assert_allclose(target[5, 4, 2:7], [-0.5, -0.5, np.log(12), np.log(8), 1])


# ---------------------------------------------------------------------------------------
# NMS and mAP on hand-made cases


def test_box_iou():
    np.testing.assert_allclose(box_iou([[0, 0, 10, 10]], [[0, 0, 10, 10], [0, 5, 10, 15], [20, 20, 30, 30]]),
                               [[1.0, 50 / 150, 0.0]])


def test_nms_keeps_the_best_of_overlapping_boxes_per_frame():
    boxes = Boxes.make([[0, 0, 10, 10], [0, 1, 10, 11], [0, 5, 10, 15], [0, 1, 10, 11], [50, 50, 60, 60]],
                       classes=[0, 1, 0, 0, 0], scores=[0.9, 0.95, 0.8, 0.7, 0.1], frames=[0, 0, 0, 1, 0])
    # box 1 (IoU 9/11 with box 0) wins across classes; box 2 overlaps box 1 by 5/15 only;
    # box 3 is in another frame; box 4 overlaps nothing
    assert nms(boxes, 0.5).tolist() == [1, 2, 3, 4]
    assert nms(boxes, 0.5, class_agnostic=False).tolist() == [1, 0, 2, 3, 4]
    assert nms(boxes, 0.3).tolist() == [1, 3, 4]
    assert len(nms(Boxes.make(), 0.5)) == 0


def test_map_is_one_for_perfect_predictions():
    truth = [SOME, Boxes.make([[5, 5, 9, 9]])]
    predicted = [Boxes.make(SOME.yxyx, SOME.classes, [0.3, 0.2, 0.1]), Boxes.make([[5, 5, 9, 9]], scores=[0.5])]
    scores = mean_average_precision(truth, predicted, class_names=NAMES)
    assert scores["map50"] == 1.0 and scores["map50_95"] == 1.0
    assert scores["per_class"]["round"] == {"n_true": 2, "n_pred": 2, "ap50": 1.0, "ap50_95": 1.0}


def test_map_of_known_partial_cases():
    truth = [Boxes.make([[0, 0, 10, 10], [20, 20, 30, 30]])]
    # one exact hit, a false positive scoring below it, the second object missed: precision 1
    # up to recall 0.5, so 51 of COCO's 101 recall points
    predicted = [Boxes.make([[0, 0, 10, 10], [50, 50, 60, 60]], scores=[0.9, 0.8])]
    scores = mean_average_precision(truth, predicted)
    assert scores["map50"] == pytest.approx(51 / 101) and scores["map50_95"] == pytest.approx(51 / 101)
    # the false positive scoring first: precision 1/2 at recall 0.5
    predicted = [Boxes.make([[0, 0, 10, 10], [50, 50, 60, 60]], scores=[0.8, 0.9])]
    assert mean_average_precision(truth, predicted)["map50"] == pytest.approx(0.5 * 51 / 101)
    # IoU 0.78 counts at thresholds 0.5 ... 0.75 (6 of 10)
    truth = [Boxes.make([[0, 0, 10, 10]])]
    predicted = [Boxes.make([[0, 0, 10, 7.8]])]
    scores = mean_average_precision(truth, predicted)
    assert scores["map50"] == 1.0 and scores["map50_95"] == pytest.approx(0.6)
    # the right box with the wrong class is a miss, and a class without true boxes is left out
    predicted = [Boxes.make([[0, 0, 10, 10]], classes=[1])]
    scores = mean_average_precision(truth, predicted)
    assert scores["map50"] == 0.0 and scores["per_class"]["1"]["ap50"] is None
    counts = detection_counts([Boxes.make([[0, 0, 10, 10], [20, 20, 30, 30]])],
                              [Boxes.make([[0, 0, 10, 10], [50, 50, 60, 60]], scores=[0.9, 0.4])], [0.3, 0.5])
    assert [(c["tp"], c["fp"], c["fn"]) for c in counts] == [(1, 1, 1), (1, 0, 1)]
    assert counts[1]["f1"] == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------------------
# A tiny detector on synthetic nuclei


TINY = {"grid": 2, "n_depth": 2, "n_filter_base": 16, "kernel_size": 3, "n_conv_per_depth": 2}


def synthetic_frames(n_frames, shape, seed, n_cells):
    from snakescope.segmentation.unet import normalize_percentile
    from snakescope.synthetic import make_timelapse

    lapse = make_timelapse(ndim=2, n_frames=n_frames, shape=shape, n_cells=n_cells, class_names=("round",),
                           blank_fraction=0.0, seed=seed)
    return [(normalize_percentile(lapse.image[t]), lapse.labels[t]) for t in range(n_frames)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A detector trained for about 20 seconds on the boxes of five synthetic frames."""
    frames = synthetic_frames(6, (128, 128), seed=3, n_cells=10)
    data = {f"t{t}": (image, boxes_from_labels(labels)) for t, (image, labels) in enumerate(frames)}
    settings = defaults().detection.replace(architecture=TINY, patch_size=[64, 64], epochs=5, steps_per_epoch=30,
                                           batch_size=4, learning_rate=5e-3)
    out = tmp_path_factory.mktemp("detector") / "model"
    metadata = train_detector(data, out, settings, class_names=["nucleus"],
                              split={"train": ["t0", "t1", "t2", "t3", "t4"], "validation": ["t5"]}, seed=1,
                              deterministic=False)
    return out, metadata


def test_detector_trains_from_boxes_and_finds_new_nuclei(trained):
    out, metadata = trained
    for name in ("config.json", "weights_best.h5", "weights_last.h5", "training.csv", "snakescope.json", "split.json"):
        assert (out / name).exists(), name
    assert metadata["training"]["steps_run"] == 150
    assert metadata["validation"]["map50"] > 0.5
    config = json.loads((out / "config.json").read_text())
    assert config["class_names"] == ["nucleus"] and 0 < config["score_thresh"] < 1

    detector = load_detector(out)
    image, labels = synthetic_frames(1, (128, 128), seed=11, n_cells=10)[0]
    truth = boxes_from_labels(labels)
    found = predict_boxes(detector, image, score_thresh=None, nms_iou=0.5)
    assert mean_average_precision([truth], [found])["map50"] > 0.5
    assert 0.5 * len(truth) <= len(found) <= 2 * len(truth)


def test_blockwise_prediction_equals_one_block(trained):
    detector = load_detector(trained[0])
    image, _ = synthetic_frames(1, (200, 180), seed=5, n_cells=24)[0]
    whole = predict_boxes(detector, image, score_thresh=0.1, nms_iou=0.5, block_shape=None)
    blocks = predict_boxes(detector, image, score_thresh=0.1, nms_iou=0.5, block_shape=64)
    assert len(whole) >= 10
    order_w, order_b = np.lexsort(whole.yxyx.T[::-1]), np.lexsort(blocks.yxyx.T[::-1])
    assert_same_boxes(whole.take(order_w), blocks.take(order_b), atol=1e-3)


def test_detect_writes_box_files_for_every_frame(trained, tmp_path):
    detector = load_detector(trained[0])
    frames = synthetic_frames(2, (96, 96), seed=8, n_cells=6)
    stack = np.stack([image for image, _ in frames])
    path = write_ngff(tmp_path / "lapse.ome.zarr", stack, "tyx", [1.0, 0.5, 0.5])

    summary = detect(detector, path, tmp_path / "boxes", defaults().detection, channel=0)
    boxes = read_boxes_csv(tmp_path / "boxes" / "boxes.csv", class_names=["nucleus"])
    assert summary["n_boxes"] == len(boxes) and summary["per_frame"] == [len(boxes.frame(0)), len(boxes.frame(1))]
    assert len(boxes.frame(0)) >= 3 and len(boxes.frame(1)) >= 3
    assert_same_boxes(read_napari_shapes(tmp_path / "boxes" / "shapes.csv", class_names=["nucleus"]), boxes)
    assert_same_boxes(read_yolo(tmp_path / "boxes" / "yolo" / "t0001.txt", (96, 96), frame=1), boxes.frame(1))


def test_training_input_errors(tmp_path):
    image = np.zeros((32, 32), np.float32)
    settings = defaults().detection.replace(architecture=TINY)
    split = {"train": ["a"], "validation": ["a"]}
    with pytest.raises(InputError, match="class index 2"):
        train_detector({"a": (image, Boxes.make([[1, 1, 5, 5]], classes=[2]))}, tmp_path / "m", settings,
                       class_names=["x", "y"], split=split, seed=0)
    with pytest.raises(InputError, match="no boxes"):
        train_detector({"a": (image, Boxes.make())}, tmp_path / "m", settings, class_names=["x"], split=split, seed=0)
    with pytest.raises(InputError, match="kernel_size"):
        train_detector({"a": (image, Boxes.make([[1, 1, 5, 5]]))}, tmp_path / "m",
                       settings.replace(architecture={**TINY, "kernel_size": 4}), class_names=["x"], split=split, seed=0)
