"""Segmentation accuracy: instance matching over IoU thresholds and foreground overlap
(pixel classes: :mod:`snakescope.evaluation.classes`).

Instance scores come from ``stardist.matching.matching`` (the DSB 2018 / StarDist
definitions): a predicted object matches a true one when their IoU reaches the threshold
(optimal one-to-one assignment), giving TP, FP, FN and from them precision, recall, F1, the
DSB "accuracy" TP / (TP + FP + FN), panoptic quality and the mean IoU of matched pairs.

* :func:`instance_metrics` scores one image (2D) or volume (3D): one row per threshold,
  with the counts needed to add images up, plus foreground Dice and Jaccard.
* :func:`timelapse_metrics` scores every time point of a stack (column ``t``).
* :func:`summarize` adds samples (or time points) up the way
  ``stardist.matching.matching_dataset`` does (``by_image=False``): counts and matched IoU
  are summed and the ratios recomputed, never averaged over images.
* :func:`write_instance_metrics` writes every sample's rows and the summed rows as one CSV.

Foreground Dice and Jaccard are 1 when both masks are empty (nothing to find, nothing found).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from snakescope.errors import InputError
from snakescope.io.atomic import atomic_path

__all__ = [
    "COUNT_COLUMNS",
    "DEFAULT_THRESHOLDS",
    "foreground_overlap",
    "instance_metrics",
    "iou_thresholds",
    "summarize",
    "timelapse_metrics",
    "write_instance_metrics",
]


def iou_thresholds(start: float = 0.5, stop: float = 0.9, step: float = 0.05) -> tuple[float, ...]:
    """IoU thresholds from ``start`` to ``stop`` inclusive (rounded, so 0.55 is 0.55)."""
    if not (0 < start <= stop <= 1 and step > 0):
        raise InputError("evaluation.thresholds", f"need 0 < start <= stop <= 1 and step > 0 (got {start}, {stop}, {step})")
    n = int(np.floor((stop - start) / step + 1e-9)) + 1
    return tuple(float(round(start + i * step, 10)) for i in range(n))


DEFAULT_THRESHOLDS = iou_thresholds(0.5, 0.9, 0.05)

#: Columns that add up over images; every ratio is recomputed from them.
COUNT_COLUMNS = ("tp", "fp", "fn", "n_true", "n_pred", "sum_matched_score",
                 "fg_intersection", "fg_true", "fg_pred")
RATIO_COLUMNS = ("precision", "recall", "accuracy", "f1", "panoptic_quality",
                 "mean_true_score", "mean_matched_score", "dice", "jaccard")


def _check_pair(gt, pred, where) -> tuple[np.ndarray, np.ndarray]:
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise InputError(where, f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    for name, arr in (("ground truth", gt), ("prediction", pred)):
        if arr.dtype.kind not in "uib":
            raise InputError(where, f"{name} has dtype {arr.dtype}; expected integer labels")
        if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
            raise InputError(where, f"{name} has negative labels")
    return gt, pred


def _safe(num, den):
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)


def _recompute(df: pd.DataFrame) -> pd.DataFrame:
    """Ratios from counts, with stardist.matching's definitions (0 where undefined)."""
    tp, fp, fn = df["tp"], df["fp"], df["fn"]
    s = df["sum_matched_score"]
    df["precision"] = _safe(tp, tp + fp)
    df["recall"] = _safe(tp, tp + fn)
    df["accuracy"] = _safe(tp, tp + fp + fn)
    df["f1"] = _safe(2 * tp, 2 * tp + fp + fn)
    df["panoptic_quality"] = _safe(s, tp + fp / 2 + fn / 2)
    df["mean_true_score"] = _safe(s, df["n_true"])
    df["mean_matched_score"] = _safe(s, tp)
    inter, a, b = df["fg_intersection"], df["fg_true"], df["fg_pred"]
    union = a + b - inter
    df["dice"] = np.where(a + b > 0, _safe(2 * inter, a + b), 1.0)
    df["jaccard"] = np.where(union > 0, _safe(inter, union), 1.0)
    return df


def foreground_overlap(gt, pred, where="prediction") -> dict:
    """Dice and Jaccard of the foreground masks (label > 0), with their pixel counts."""
    gt, pred = _check_pair(gt, pred, where)
    a, b = gt > 0, pred > 0
    inter, na, nb = int(np.count_nonzero(a & b)), int(np.count_nonzero(a)), int(np.count_nonzero(b))
    union = na + nb - inter
    return {"fg_intersection": inter, "fg_true": na, "fg_pred": nb,
            "dice": 2 * inter / (na + nb) if na + nb else 1.0,
            "jaccard": inter / union if union else 1.0}


def instance_metrics(gt, pred, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, *, where="prediction") -> pd.DataFrame:
    """Instance matching of one 2D image or 3D volume; one row per IoU threshold.

    Columns: threshold, tp, fp, fn, n_true, n_pred, precision, recall, accuracy
    (TP/(TP+FP+FN)), f1, panoptic_quality, mean_true_score, mean_matched_score (mean IoU of
    matched pairs), sum_matched_score, and the foreground dice, jaccard and their counts.
    """
    from stardist.matching import matching

    gt, pred = _check_pair(gt, pred, where)
    thresholds = [float(t) for t in np.atleast_1d(thresholds)]
    if not thresholds or not all(0 <= t <= 1 for t in thresholds):
        raise InputError("evaluation.thresholds", f"{thresholds}: IoU thresholds lie in [0, 1]")
    stats = matching(gt.astype(np.int64, copy=False), pred.astype(np.int64, copy=False), thresh=thresholds)
    if len(thresholds) == 1 and not isinstance(stats, (list, tuple)):
        stats = [stats]
    fg = foreground_overlap(gt, pred, where)
    rows = []
    for thr, s in zip(thresholds, stats):
        rows.append({"threshold": thr, "tp": int(s.tp), "fp": int(s.fp), "fn": int(s.fn),
                     "n_true": int(s.n_true), "n_pred": int(s.n_pred),
                     "sum_matched_score": float(s.mean_true_score) * int(s.n_true),
                     **{k: fg[k] for k in ("fg_intersection", "fg_true", "fg_pred")}})
    df = _recompute(pd.DataFrame(rows))
    return df[_column_order(df)]


def _column_order(df):
    first = [c for c in ("sample", "t", "threshold") if c in df.columns]
    return first + ["tp", "fp", "fn", "n_true", "n_pred", *RATIO_COLUMNS, "sum_matched_score",
                    "fg_intersection", "fg_true", "fg_pred"]


def timelapse_metrics(gt, pred, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, *, time_axis: int = 0,
                      where="prediction") -> pd.DataFrame:
    """:func:`instance_metrics` for every time point (column ``t``) of a 2D+t / 3D+t stack."""
    gt, pred = _check_pair(gt, pred, where)
    gt, pred = np.moveaxis(gt, time_axis, 0), np.moveaxis(pred, time_axis, 0)
    frames = [instance_metrics(g, p, thresholds, where=f"{where} (time point {t})").assign(t=t)
              for t, (g, p) in enumerate(zip(gt, pred))]
    df = pd.concat(frames, ignore_index=True)
    return df[_column_order(df)]


def summarize(per_sample: Mapping[str, pd.DataFrame] | Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Add samples (or time points) up per threshold: counts summed, ratios recomputed.

    Equals ``stardist.matching.matching_dataset(..., by_image=False)`` on the same images.
    Frames from :func:`timelapse_metrics` (several rows per threshold) are added up too.
    """
    frames = list(per_sample.values()) if isinstance(per_sample, Mapping) else list(per_sample)
    if not frames:
        raise InputError("evaluation", "no samples to summarize")
    thresholds = [tuple(sorted(set(f["threshold"]))) for f in frames]
    if len(set(thresholds)) > 1:
        raise InputError("evaluation", "samples were scored at different IoU thresholds; cannot add them up")
    df = pd.concat(frames, ignore_index=True)
    total = df.groupby("threshold", as_index=False)[list(COUNT_COLUMNS)].sum()
    total = _recompute(total)
    return total[_column_order(total)].reset_index(drop=True)


def write_instance_metrics(per_sample: Mapping[str, pd.DataFrame], csv_path: str | Path,
                           total_name: str = "ALL") -> pd.DataFrame:
    """One CSV: every sample's rows (column ``sample``) and the summed rows (``total_name``)."""
    parts = [df.assign(sample=name) for name, df in per_sample.items()]
    parts.append(summarize(per_sample).assign(sample=total_name))
    table = pd.concat(parts, ignore_index=True)
    table = table[[c for c in _column_order(table) if c in table.columns]]
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    return table
