"""One sample's detector boxes scored against its true boxes (the sheet's ``boxes``), and
the pooled score of many samples.

The detector writes only the boxes that reach its score threshold, so the mAP here is that
of the boxes a user gets (the threshold's precision-recall point ends each curve); the
model's own validation mAP over all scores is in its ``snakescope.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from snakescope.io.boxes import Boxes, read_boxes_csv, read_boxes_file, write_boxes_csv

__all__ = ["box_scores", "class_names_of", "detection_scores", "pool_detection_scores"]


def box_scores(truths: Sequence[Boxes], predictions: Sequence[Boxes], class_names: Sequence[str]) -> dict:
    """mAP at IoU 0.5 and 0.5:0.95, and TP / FP / FN, precision, recall and F1 at IoU 0.5
    of every prediction, over images (``truths[i]``, ``predictions[i]``: one sample)."""
    from snakescope.detection.metrics import detection_counts, mean_average_precision

    scores = mean_average_precision(truths, predictions, class_names=class_names)
    counts = detection_counts(truths, predictions, [-np.inf])[0]
    return {"n_true": int(scores["n_true"]), "n_predicted": int(scores["n_pred"]), "map50": scores["map50"],
            "map50_95": scores["map50_95"], **{k: counts[k] for k in ("tp", "fp", "fn", "precision", "recall", "f1")}}


def detection_scores(truth_path, image_path, predicted_csv, truth_csv, class_names: Sequence[str],
                     sample: str) -> pd.DataFrame:
    """One row of scores for a sample: its true boxes (``truth_path``, any format of
    :func:`snakescope.io.boxes.read_boxes_file`, checked against the image's shape) against
    the detector's (``predicted_csv``); in a time-lapse only the frames with true boxes
    count (an unannotated frame cannot be told from an empty one). The true boxes are also written as a plain CSV
    (``truth_csv``, pixels) for pooling; both paths are columns of the row."""
    from snakescope.io import ngff

    image = ngff.read_image(image_path)
    shape = dict(zip(image.axes, image.shape))
    truth = read_boxes_file(truth_path, (shape["y"], shape["x"]), class_names=class_names,
                            n_frames=shape.get("t", 1))
    predicted = _scored(read_boxes_csv(predicted_csv, class_names=class_names), truth, "t" in shape)
    write_boxes_csv(truth_csv, truth, class_names=class_names, time_lapse=True)
    return pd.DataFrame([{"sample": sample, **box_scores([truth], [predicted], class_names),
                          "time_lapse": "t" in shape, "truth_boxes": str(truth_csv),
                          "predicted_boxes": str(predicted_csv)}])


def _scored(predicted: Boxes, truth: Boxes, time_lapse: bool) -> Boxes:
    """The predictions scored: in a time-lapse those of the frames with true boxes."""
    return predicted.take(np.isin(predicted.frames, truth.frames)) if time_lapse else predicted


def pool_detection_scores(tables: Sequence[pd.DataFrame], class_names: Sequence[str]) -> pd.DataFrame:
    """The samples' rows and an ``ALL`` row scored over all their boxes together (AP pools
    the detections of every sample before ranking them; it is not a mean of the samples')."""
    rows = pd.concat(list(tables), ignore_index=True)
    truths = [read_boxes_csv(p, class_names=class_names) for p in rows["truth_boxes"]]
    predictions = [_scored(read_boxes_csv(p, class_names=class_names), truth, bool(lapse))
                   for p, truth, lapse in zip(rows["predicted_boxes"], truths, rows["time_lapse"])]
    total = {"sample": "ALL", **box_scores(truths, predictions, class_names), "time_lapse": "", "truth_boxes": "",
             "predicted_boxes": ""}
    return pd.concat([rows, pd.DataFrame([total])], ignore_index=True)


def class_names_of(predicted_csv) -> list[str]:
    """The detector's class names, from the ``summary.json`` beside its boxes."""
    import json

    return json.loads((Path(predicted_csv).parent / "summary.json").read_text())["class_names"]
