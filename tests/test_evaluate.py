"""Segmentation accuracy: instance matching, dataset sums, foreground and class overlap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from stardist import data as stardist_data
from stardist.matching import matching, matching_dataset

from snakescope.errors import InputError
from snakescope.evaluation.classes import (class_metrics_table, read_confusion, semantic_metrics, write_class_scores,
                                          write_confusion)
from snakescope.evaluation.instances import (DEFAULT_THRESHOLDS, foreground_overlap, instance_metrics, iou_thresholds,
                                            summarize, timelapse_metrics, write_instance_metrics)

STARDIST_FIELDS = ("tp", "fp", "fn", "n_true", "n_pred", "precision", "recall", "accuracy", "f1",
                   "panoptic_quality", "mean_true_score", "mean_matched_score")
RATIOS = ("precision", "recall", "accuracy", "f1", "panoptic_quality", "mean_true_score", "mean_matched_score",
          "dice", "jaccard")


@pytest.fixture(scope="module")
def nuclei():
    _, labels = stardist_data.test_image_nuclei_2d(return_mask=True)
    return labels


def squares_2d():
    """Two touching 10x10 squares (ids 3 and 7: not sequential) and an isolated one (id 20)."""
    y = np.zeros((40, 50), np.uint16)
    y[5:15, 5:15] = 3
    y[5:15, 15:25] = 7
    y[25:35, 30:40] = 20
    return y


def assert_equal_to_stardist(row, ref):
    for k in STARDIST_FIELDS:  # stardist averages IoUs in float32: equal to 1e-6
        assert row[k] == pytest.approx(getattr(ref, k), rel=1e-6, abs=1e-9), k


def test_thresholds_are_configurable_and_exact():
    assert iou_thresholds(0.5, 0.9, 0.1) == (0.5, 0.6, 0.7, 0.8, 0.9)
    assert DEFAULT_THRESHOLDS[0] == 0.5 and DEFAULT_THRESHOLDS[-1] == 0.9 and len(DEFAULT_THRESHOLDS) == 9
    assert 0.55 in DEFAULT_THRESHOLDS  # not 0.5500000000000001
    with pytest.raises(InputError):
        iou_thresholds(0.9, 0.5, 0.1)


@pytest.mark.parametrize("ndim", [2, 3])
def test_ground_truth_against_itself_scores_one(nuclei, ndim):
    gt = nuclei if ndim == 2 else np.stack([nuclei[:128, :128]] * 4)
    df = instance_metrics(gt, gt)
    assert list(df["threshold"]) == list(DEFAULT_THRESHOLDS)
    for col in RATIOS:
        assert np.allclose(df[col], 1.0), col
    n = len(np.unique(gt)) - 1
    assert (df["tp"] == n).all() and (df["fp"] == 0).all() and (df["fn"] == 0).all()


def test_per_image_metrics_equal_stardist_matching(nuclei):
    pred = np.roll(nuclei, 3, axis=1)
    df = instance_metrics(nuclei, pred)
    refs = matching(nuclei, pred, thresh=list(DEFAULT_THRESHOLDS))
    for (_, row), ref in zip(df.iterrows(), refs):
        assert_equal_to_stardist(row, ref)


def test_shifted_prediction_loses_at_high_iou(nuclei):
    df = instance_metrics(nuclei, np.roll(nuclei, 3, axis=1)).set_index("threshold")
    assert df.loc[0.5, "f1"] > 0.8  # shifted nuclei still overlap by more than half
    assert df.loc[0.9, "f1"] < 0.1  # but not by 90 %
    assert (np.diff(df["f1"].to_numpy()) <= 0).all()  # F1 never rises with the threshold
    assert df.loc[0.5, "mean_matched_score"] < 1


def test_merged_objects_counted_exactly():
    gt = squares_2d()
    pred = gt.copy()
    pred[gt == 7] = 3  # the two touching squares merged: IoU with each is exactly 0.5
    df = instance_metrics(gt, pred, thresholds=(0.5, 0.55)).set_index("threshold")
    assert df.loc[0.5, ["tp", "fp", "fn"]].tolist() == [2, 0, 1]
    assert df.loc[0.55, ["tp", "fp", "fn"]].tolist() == [1, 1, 2]
    assert df.loc[0.5, "f1"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))
    assert df.loc[0.55, "accuracy"] == pytest.approx(1 / 4)
    assert df.loc[0.5, "mean_matched_score"] == pytest.approx((0.5 + 1.0) / 2)
    # the foreground is identical, so pixel overlap cannot see the merge
    assert df.loc[0.5, "dice"] == 1.0 and df.loc[0.5, "jaccard"] == 1.0


def test_dice_and_jaccard_on_known_masks():
    gt = np.zeros((20, 20), np.uint8)
    pred = np.zeros((20, 20), np.int32)
    gt[0:10, 0:10] = 1  # 100 px
    pred[0:10, 5:15] = 4  # 100 px, 50 of them shared
    fg = foreground_overlap(gt, pred)
    assert fg["dice"] == pytest.approx(2 * 50 / 200)
    assert fg["jaccard"] == pytest.approx(50 / 150)
    df = instance_metrics(gt, pred, (0.3, 0.5))
    assert df["dice"].tolist() == pytest.approx([0.5, 0.5])
    assert df["tp"].tolist() == [1, 0]  # IoU 1/3
    empty = np.zeros((5, 5), np.uint8)
    assert foreground_overlap(empty, empty)["dice"] == 1.0
    assert foreground_overlap(gt, np.zeros_like(gt))["jaccard"] == 0.0


def test_summed_result_equals_matching_dataset(nuclei):
    gts = [nuclei[:256, :256], nuclei[:256, 256:], nuclei[256:, :256], nuclei[256:, 256:]]
    preds = [np.roll(gts[0], 2, axis=0), np.roll(gts[1], 5, axis=1),
             np.where(gts[2] % 3 == 0, 0, gts[2]),  # a third of the objects missed
             np.zeros_like(gts[3])]  # nothing found
    per_sample = {f"q{i}": instance_metrics(g, p) for i, (g, p) in enumerate(zip(gts, preds))}
    total = summarize(per_sample)
    refs = matching_dataset(gts, preds, thresh=list(DEFAULT_THRESHOLDS), show_progress=False)
    for (_, row), ref in zip(total.iterrows(), refs):
        assert_equal_to_stardist(row, ref)
    # a sum, not a mean over images: the image with no prediction weighs by its objects
    mean_f1 = np.mean([df["f1"].iloc[0] for df in per_sample.values()])
    assert total["f1"].iloc[0] != pytest.approx(mean_f1)
    # foreground overlap from summed pixel counts
    inter = sum(np.count_nonzero((g > 0) & (p > 0)) for g, p in zip(gts, preds))
    sizes = sum(np.count_nonzero(g) + np.count_nonzero(p) for g, p in zip(gts, preds))
    assert total["dice"].iloc[0] == pytest.approx(2 * inter / sizes)


def test_time_points_scored_and_summed(nuclei):
    gt = np.stack([nuclei[:200, :200], nuclei[200:400, 200:400], nuclei[300:500, :200]])
    pred = np.stack([np.roll(f, k, axis=1) for k, f in enumerate(gt)])
    df = timelapse_metrics(gt, pred, thresholds=(0.5, 0.7))
    assert df["t"].tolist() == [0, 0, 1, 1, 2, 2]
    assert (df[df["t"] == 0]["f1"] == 1.0).all()
    total = summarize([df])
    refs = matching_dataset(list(gt), list(pred), thresh=[0.5, 0.7], show_progress=False)
    for (_, row), ref in zip(total.iterrows(), refs):
        assert_equal_to_stardist(row, ref)


def test_metrics_csv_holds_samples_and_total(tmp_path, nuclei):
    per_sample = {"a": instance_metrics(nuclei[:256], nuclei[:256]),
                  "b": instance_metrics(nuclei[256:], np.roll(nuclei[256:], 4, axis=0))}
    write_instance_metrics(per_sample, tmp_path / "m.csv")
    table = pd.read_csv(tmp_path / "m.csv")
    assert sorted(set(table["sample"])) == ["ALL", "a", "b"]
    total = table[table["sample"] == "ALL"].reset_index(drop=True)
    assert np.allclose(total["f1"], summarize(per_sample)["f1"], atol=1e-5)


def test_confusion_matrix_equals_sklearn(tmp_path):
    from sklearn.metrics import confusion_matrix, jaccard_score

    rng = np.random.default_rng(0)
    gt = rng.integers(0, 3, size=(64, 48)).astype(np.uint8)
    pred = np.where(rng.random(gt.shape) < 0.7, gt, rng.integers(0, 3, size=gt.shape)).astype(np.uint8)
    names = ("background", "contour", "body")
    res = semantic_metrics(gt, pred, names)
    expected = confusion_matrix(gt.ravel(), pred.ravel(), labels=[0, 1, 2])
    assert np.array_equal(res["confusion_matrix"], expected)
    ious = jaccard_score(gt.ravel(), pred.ravel(), labels=[0, 1, 2], average=None)
    assert [res["iou"][n] for n in names] == pytest.approx(list(ious))
    assert res["mean_iou"] == pytest.approx(ious.mean())
    assert res["pixel_accuracy"] == pytest.approx((gt == pred).mean())

    write_confusion(res["confusion_matrix"], names, tmp_path / "cm.csv", tmp_path / "cm.png", title="test")
    table = pd.read_csv(tmp_path / "cm.csv", index_col=0)
    assert list(table.columns) == list(names) and list(table.index) == list(names)
    assert np.array_equal(table.to_numpy(), expected)
    import matplotlib.image

    assert matplotlib.image.imread(tmp_path / "cm.png").ndim == 3


def test_absent_class_gives_nan_iou():
    gt = np.zeros((4, 4), np.uint8)
    gt[1, 1] = 2
    res = semantic_metrics(gt, gt)
    assert np.isnan(res["iou"]["contour"]) and res["iou"]["body"] == 1.0 and res["mean_iou"] == 1.0


CLASSES = ("background", "contour", "body")


def test_per_class_scores_from_counts():
    """Per-class IoU, Dice, precision, recall from the definitions, on a hand-made class map."""
    truth = np.array([[0, 0, 0, 0, 1, 1, 2, 2, 2, 2]], np.uint8)
    pred = np.array([[0, 0, 0, 1, 1, 2, 2, 2, 2, 0]], np.uint8)
    # pixel by pixel: (0,0) x3, (0,1), (1,1), (1,2), (2,2) x3, (2,0)
    cm = semantic_metrics(truth, pred, CLASSES)["confusion_matrix"]
    assert cm.tolist() == [[3, 1, 0], [0, 1, 1], [1, 0, 3]]
    table = class_metrics_table(cm, CLASSES).set_index("class")
    # background: tp 3, fp 1 (the body pixel called background), fn 1 (the one called contour)
    assert table.loc["background", ["support", "predicted", "tp", "fp", "fn"]].tolist() == [4, 4, 3, 1, 1]
    assert table.loc["background", "iou"] == pytest.approx(3 / 5)
    assert table.loc["background", "dice"] == pytest.approx(6 / 8)
    # contour: tp 1, fp 1, fn 1
    assert table.loc["contour", ["iou", "dice", "precision", "recall"]].tolist() == pytest.approx([1 / 3, 1 / 2, 1 / 2, 1 / 2])
    # body: tp 3, fp 1 (the contour pixel called body), fn 1
    assert table.loc["body", ["iou", "precision", "recall"]].tolist() == pytest.approx([3 / 5, 3 / 4, 3 / 4])
    # mean: ratios averaged over classes (mean IoU), counts added (tp / support = pixel accuracy 7/10)
    assert table.loc["mean", "iou"] == pytest.approx((3 / 5 + 1 / 3 + 3 / 5) / 3)
    assert table.loc["mean", ["support", "tp"]].tolist() == [10, 7]
    # a class absent from truth and prediction: undefined (NaN), left out of the mean
    absent = class_metrics_table([[2, 0, 0], [0, 0, 0], [0, 0, 1]], CLASSES).set_index("class")
    assert absent.loc["contour", ["iou", "dice", "precision", "recall"]].isna().all()
    assert absent.loc["mean", "iou"] == 1.0


def test_class_confusions_are_summed_as_counts(tmp_path):
    """Summed: the matrices added, IoU from the sum (not the mean of the samples' IoUs)."""
    # sample a: 4 body pixels, 3 found (one called background) -> body tp 3, fp 0, fn 1: IoU 3/4
    a_truth = np.array([0, 0, 0, 0, 2, 2, 2, 2], np.uint8)
    a_pred = np.array([0, 0, 0, 0, 2, 2, 2, 0], np.uint8)
    # sample b: 1 body pixel missed, a background pixel called body -> body tp 0, fp 1, fn 1: IoU 0
    b_truth = np.array([0, 0, 2], np.uint8)
    b_pred = np.array([2, 0, 0], np.uint8)
    per_sample = {"a": semantic_metrics(a_truth, a_pred, CLASSES)["confusion_matrix"],
                  "b": semantic_metrics(b_truth, b_pred, CLASSES)["confusion_matrix"]}
    table = write_class_scores(per_sample, CLASSES, tmp_path / "cm.csv", tmp_path / "scores.csv", tmp_path / "cm.png",
                               title="two samples")
    summed = read_confusion(tmp_path / "cm.csv", CLASSES)
    assert summed.tolist() == [[5, 0, 1], [0, 0, 0], [2, 0, 3]]
    assert summed.sum() == a_truth.size + b_truth.size
    assert np.array_equal(summed, per_sample["a"] + per_sample["b"])
    scores = pd.read_csv(tmp_path / "scores.csv")
    pd.testing.assert_frame_equal(scores, table, rtol=1e-5)
    body = scores[scores["class"] == "body"].set_index("sample")["iou"]
    assert body["a"] == pytest.approx(3 / 4) and body["b"] == 0
    # summed body: tp 3, fp 1, fn 2 -> 3/6, while the mean of the samples' IoUs is 3/8
    assert body["ALL"] == pytest.approx(3 / 6)
    assert (body["a"] + body["b"]) / 2 == pytest.approx(3 / 8)
    background = scores[(scores["sample"] == "ALL") & (scores["class"] == "background")].iloc[0]
    assert background["iou"] == pytest.approx(5 / 8)  # tp 5, fp 2 (body called background), fn 1
    # one sample alone (the per-sample evaluation): its own rows, no total
    single = write_class_scores({"a": per_sample["a"]}, CLASSES, tmp_path / "a.csv", tmp_path / "a_scores.csv",
                                tmp_path / "a.png", total_name=None)
    assert set(single["sample"]) == {"a"}
    assert np.array_equal(read_confusion(tmp_path / "a.csv", CLASSES), per_sample["a"])


def test_bad_confusion_files_are_named(tmp_path):
    bad = tmp_path / "sample_3" / "class_confusion.csv"
    bad.parent.mkdir()
    bad.write_text("true \\ predicted,background,body\nbackground,1,2\nbody,3,4\n")
    with pytest.raises(InputError, match="rows and columns must be the classes") as err:
        read_confusion(bad, CLASSES)
    assert str(bad) in str(err.value)
    bad.write_text("true \\ predicted,background,contour,body\nbackground,1,2,0.5\ncontour,0,1,0\nbody,3,4,1\n")
    with pytest.raises(InputError, match="non-negative integers"):
        read_confusion(bad, CLASSES)
    with pytest.raises(InputError, match="no samples"):
        write_class_scores({}, CLASSES, tmp_path / "c.csv", tmp_path / "s.csv", tmp_path / "c.png")


def test_bad_inputs_name_the_problem():
    gt = np.zeros((10, 10), np.uint16)
    with pytest.raises(InputError, match=r"\(10, 12\).*\(10, 10\)") as err:
        instance_metrics(gt, np.zeros((10, 12), np.uint16), where="sample_7/labels.tif")
    assert "sample_7/labels.tif" in str(err.value)
    with pytest.raises(InputError, match="float32"):
        instance_metrics(gt, np.zeros((10, 10), np.float32))
    with pytest.raises(InputError, match=r"\(3, 3\).*\(10, 10\)"):
        semantic_metrics(gt, np.zeros((3, 3), np.uint8))
    with pytest.raises(InputError, match="outside 0..2"):
        semantic_metrics(gt, np.full((10, 10), 5, np.uint8))
    with pytest.raises(InputError, match="different IoU thresholds"):
        summarize([instance_metrics(gt, gt, (0.5,)), instance_metrics(gt, gt, (0.5, 0.7))])


def test_real_dsb_masks_sum_like_matching_dataset():
    tifffile = pytest.importorskip("tifffile")
    from conftest import shared_dataset
    from scipy import ndimage

    folder = shared_dataset("dsb2018-fluo")
    files = sorted((folder / "masks").glob("*.tif"))[:6]
    gts = [tifffile.imread(f) for f in files]
    # a plausible imperfect segmentation: every nucleus eroded by one pixel, one in five lost
    preds = [np.where(ndimage.grey_erosion(g, size=3) == g, g, 0) * (g % 5 != 0) for g in gts]
    per_sample = {f.stem: instance_metrics(g, p, where=f) for f, g, p in zip(files, gts, preds)}
    total = summarize(per_sample)
    refs = matching_dataset(gts, preds, thresh=list(DEFAULT_THRESHOLDS), show_progress=False)
    for (_, row), ref in zip(total.iterrows(), refs):
        assert_equal_to_stardist(row, ref)
    assert 0 < total["f1"].iloc[0] < 1
