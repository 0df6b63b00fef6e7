"""Box geometry and scores: IoU, non-maximum suppression, and COCO-style average precision.

* :func:`box_iou`: pairwise IoU of two sets of boxes (pixel-edge coordinates, see
  :mod:`snakescope.io.boxes`).
* :func:`nms`: greedy non-maximum suppression in score order, only between boxes that can
  overlap (found with a k-d tree on their centres), so large images with many objects stay
  fast; per frame, across classes by default (a cell is one thing).
* :func:`match_detections`: COCO's greedy matching: per image and class, detections in
  descending score take the unmatched true box of highest IoU at or above the threshold.
* :func:`mean_average_precision`: COCO's AP per class (precision made monotone, sampled at
  101 recall points) at IoU 0.5 and averaged over 0.5:0.05:0.95, and their mean over the
  classes that have true boxes. Unlike COCO's default there is no cap of 100 detections
  per image (a field of view easily holds more cells) and no crowd regions.
* :func:`detection_counts`: TP / FP / FN at IoU 0.5 for a series of score thresholds (to
  tune the threshold for the best F1).

Only numpy and scipy are imported here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from snakescope.io.boxes import Boxes

__all__ = ["COCO_THRESHOLDS", "RECALL_POINTS", "box_iou", "detection_counts", "match_detections",
           "mean_average_precision", "nms"]

#: COCO's IoU thresholds 0.5, 0.55, ..., 0.95.
COCO_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
#: COCO's recall points 0, 0.01, ..., 1.
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def box_iou(a, b) -> np.ndarray:
    """IoU of every box of ``a`` (n, 4) with every box of ``b`` (m, 4), (y0, x0, y1, x1)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=-1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _score_order(scores) -> np.ndarray:
    """Indices by descending score; ties keep their order (COCO sorts the same way)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")


def nms(boxes: Boxes, iou_thresh: float, *, class_agnostic: bool = True) -> np.ndarray:
    """Indices of the boxes kept, by descending score: a box is dropped when a higher-scoring
    box of the same frame (and class, unless ``class_agnostic``) overlaps it by IoU > ``iou_thresh``."""
    from scipy.spatial import cKDTree

    n = len(boxes)
    if n == 0:
        return np.zeros(0, np.int64)
    yxyx = boxes.yxyx
    centres = (yxyx[:, :2] + yxyx[:, 2:]) / 2
    half_diagonal = np.hypot(yxyx[:, 2] - yxyx[:, 0], yxyx[:, 3] - yxyx[:, 1]) / 2
    # boxes of other frames / classes are kept apart by a third coordinate far beyond any overlap
    group = boxes.frames * (1 if class_agnostic else int(boxes.classes.max()) + 1) + (0 if class_agnostic else boxes.classes)
    reach = 2 * float(half_diagonal.max()) + 1.0
    points = np.column_stack([centres, group.astype(np.float64) * 4 * reach])
    pairs = cKDTree(points).query_pairs(reach, output_type="ndarray")
    if len(pairs):
        pairs = pairs[_pair_iou(yxyx[pairs[:, 0]], yxyx[pairs[:, 1]]) > iou_thresh]
    neighbours: list[list[int]] = [[] for _ in range(n)]
    for i, j in pairs:
        neighbours[i].append(int(j))
        neighbours[j].append(int(i))
    suppressed = np.zeros(n, bool)
    kept = []
    for i in _score_order(boxes.scores):
        if suppressed[i]:
            continue
        kept.append(i)
        suppressed[neighbours[i]] = True
    return np.asarray(kept, np.int64)


def _pair_iou(a, b) -> np.ndarray:
    """IoU of a[k] with b[k] for each k."""
    lo = np.maximum(a[:, :2], b[:, :2])
    hi = np.minimum(a[:, 2:], b[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    union = np.prod(a[:, 2:] - a[:, :2], axis=-1) + np.prod(b[:, 2:] - b[:, :2], axis=-1) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_detections(truth: Boxes, predicted: Boxes, iou_thresholds: Sequence[float]) -> np.ndarray:
    """COCO's greedy matching of one image (frames are matched separately): a boolean array
    (thresholds, predictions), True where the prediction is a true positive."""
    thresholds = [float(t) for t in iou_thresholds]
    tp = np.zeros((len(thresholds), len(predicted)), bool)
    for t in np.unique(np.concatenate([truth.frames, predicted.frames])):
        for c in np.unique(np.concatenate([truth.classes, predicted.classes])):
            g = np.flatnonzero((truth.frames == t) & (truth.classes == c))
            d = np.flatnonzero((predicted.frames == t) & (predicted.classes == c))
            if not len(g) or not len(d):
                continue
            d = d[_score_order(predicted.scores[d])]
            iou = box_iou(predicted.yxyx[d], truth.yxyx[g])
            for k, thr in enumerate(thresholds):
                taken = np.zeros(len(g), bool)
                for row, index in enumerate(d):
                    candidates = np.where(taken, -1.0, iou[row])
                    best = int(np.argmax(candidates))
                    if candidates[best] >= min(thr, 1 - 1e-10):
                        taken[best] = True
                        tp[k, index] = True
    return tp


def _average_precision(tp: np.ndarray, scores: np.ndarray, n_true: int) -> float:
    """COCO's AP of detections pooled over images: ``tp`` flags and ``scores`` of one class."""
    order = _score_order(scores)
    hits = np.cumsum(tp[order])
    recall = hits / n_true
    precision = hits / np.arange(1, len(order) + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the best precision at this recall or beyond
    at = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.zeros(len(RECALL_POINTS))
    reached = at < len(precision)
    sampled[reached] = precision[at[reached]]
    return float(sampled.mean())


def mean_average_precision(truths: Sequence[Boxes], predictions: Sequence[Boxes], *,
                           class_names: Sequence[str] | None = None,
                           iou_thresholds: Sequence[float] = COCO_THRESHOLDS) -> dict:
    """COCO-style mAP of predictions against true boxes, image by image (``truths[i]`` and
    ``predictions[i]`` are one image or time-lapse; their frames are separate images).

    Returns ``map50`` (mAP at IoU 0.5, or the first threshold), ``map50_95`` (averaged over
    the thresholds), ``per_class`` ({name: {ap50, ap50_95, n_true, n_pred}}), ``n_true`` and
    ``n_pred``. Classes without true boxes are left out of the means (COCO's rule); with
    none at all the means are NaN.
    """
    truths, predictions = list(truths), list(predictions)
    if len(truths) != len(predictions):
        raise ValueError(f"{len(truths)} true images for {len(predictions)} predicted ones")
    thresholds = [float(t) for t in iou_thresholds]
    flags = [match_detections(t, p, thresholds) for t, p in zip(truths, predictions)]
    all_pred_classes = np.concatenate([p.classes for p in predictions] + [np.zeros(0, np.int64)])
    all_true_classes = np.concatenate([t.classes for t in truths] + [np.zeros(0, np.int64)])
    n_classes = max(len(class_names or ()), int(max(all_pred_classes.max(initial=-1), all_true_classes.max(initial=-1))) + 1)
    scores = np.concatenate([p.scores for p in predictions] + [np.zeros(0)])
    tp = np.concatenate(flags + [np.zeros((len(thresholds), 0), bool)], axis=1)
    per_class, ap = {}, []
    for c in range(n_classes):
        name = str(class_names[c]) if class_names is not None and c < len(class_names) else str(c)
        n_true = int(np.count_nonzero(all_true_classes == c))
        mine = all_pred_classes == c
        entry = {"n_true": n_true, "n_pred": int(np.count_nonzero(mine)), "ap50": None, "ap50_95": None}
        if n_true:
            values = [_average_precision(tp[k, mine], scores[mine], n_true) for k in range(len(thresholds))]
            entry["ap50"], entry["ap50_95"] = values[0], float(np.mean(values))
            ap.append(values)
        per_class[name] = entry
    ap = np.asarray(ap, dtype=np.float64).reshape(-1, len(thresholds))
    return {"map50": float(ap[:, 0].mean()) if len(ap) else float("nan"),
            "map50_95": float(ap.mean()) if len(ap) else float("nan"),
            "per_class": per_class, "n_true": int(len(all_true_classes)), "n_pred": int(len(all_pred_classes))}


def detection_counts(truths: Sequence[Boxes], predictions: Sequence[Boxes], score_thresholds: Sequence[float], *,
                     iou_thresh: float = 0.5) -> list[dict]:
    """TP, FP, FN, precision, recall and F1 at IoU ``iou_thresh`` of the predictions scoring
    at least each threshold (greedy matching runs in score order, so one matching serves
    every threshold)."""
    flags = [match_detections(t, p, [iou_thresh])[0] for t, p in zip(truths, predictions)]
    tp_all = np.concatenate(flags + [np.zeros(0, bool)])
    scores = np.concatenate([p.scores for p in predictions] + [np.zeros(0)])
    n_true = sum(len(t) for t in truths)
    rows = []
    for thr in score_thresholds:
        keep = scores >= thr
        tp = int(np.count_nonzero(tp_all & keep))
        fp = int(np.count_nonzero(keep)) - tp
        fn = n_true - tp
        rows.append({"score_thresh": float(thr), "tp": tp, "fp": fp, "fn": fn,
                     "precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / n_true if n_true else 0.0,
                     "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0})
    return rows
