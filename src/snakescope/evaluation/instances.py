"""Segmentation accuracy: instance matching over IoU thresholds, foreground and class overlap.

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
* :func:`semantic_metrics` / :func:`confusion_metrics` give per-class IoU and the confusion
  matrix of pixel classes (the U-Net's background / contour / body), and
  :func:`write_confusion` writes it as CSV and PNG; :func:`class_metrics_table` scores each
  class, and :func:`write_class_scores` adds samples' confusion matrices up (counts, never
  averages) and writes the matrix and the scores (:func:`read_confusion` reads one back).

Foreground Dice and Jaccard are 1 when both masks are empty (nothing to find, nothing found).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from snakescope.io.atomic import atomic_path
from snakescope.errors import InputError

__all__ = [
    "COUNT_COLUMNS",
    "DEFAULT_THRESHOLDS",
    "class_metrics_table",
    "confusion_metrics",
    "foreground_overlap",
    "instance_metrics",
    "iou_thresholds",
    "read_confusion",
    "semantic_metrics",
    "summarize",
    "timelapse_metrics",
    "write_class_scores",
    "write_confusion",
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


# ---------------------------------------------------------------------------------------
# Pixel classes


def confusion_metrics(cm, class_names: Sequence[str]) -> dict:
    """Per-class IoU, Dice, precision and recall, mean IoU and pixel accuracy from a confusion
    matrix (rows: true class, columns: predicted class). A class absent from both gets NaN
    (precision: never predicted; recall: absent from the truth)."""
    cm = np.asarray(cm, dtype=np.int64)
    k = len(class_names)
    if cm.shape != (k, k):
        raise InputError("confusion matrix", f"shape {cm.shape} does not fit {k} classes")
    tp = np.diag(cm).astype(np.float64)
    true, pred = cm.sum(1), cm.sum(0)
    union = true + pred - tp
    iou = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
    dice = np.where(true + pred > 0, 2 * tp / np.where(true + pred > 0, true + pred, 1), np.nan)
    precision = np.where(pred > 0, tp / np.where(pred > 0, pred, 1), np.nan)
    recall = np.where(true > 0, tp / np.where(true > 0, true, 1), np.nan)
    total = cm.sum()
    return {
        "class_names": list(class_names),
        "confusion_matrix": cm,
        "iou": {n: float(v) for n, v in zip(class_names, iou)},
        "dice": {n: float(v) for n, v in zip(class_names, dice)},
        "precision": {n: float(v) for n, v in zip(class_names, precision)},
        "recall": {n: float(v) for n, v in zip(class_names, recall)},
        "mean_iou": float(np.nanmean(iou)) if np.any(union > 0) else float("nan"),
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "n_pixels": int(total),
    }


def semantic_metrics(gt_classes, pred_classes, class_names: Sequence[str] = ("background", "contour", "body"), *,
                     where="prediction") -> dict:
    """Confusion matrix (rows true, columns predicted) and per-class IoU of two class maps."""
    gt, pred = np.asarray(gt_classes), np.asarray(pred_classes)
    if gt.shape != pred.shape:
        raise InputError(where, f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    k = len(class_names)
    for name, arr in (("ground truth", gt), ("prediction", pred)):
        if arr.dtype.kind not in "uib":
            raise InputError(where, f"{name} classes have dtype {arr.dtype}; expected integer class ids")
        if arr.size and (arr.min() < 0 or arr.max() >= k):
            raise InputError(where, f"{name} has class ids outside 0..{k - 1} ({', '.join(class_names)})")
    cm = np.bincount(gt.ravel().astype(np.int64) * k + pred.ravel().astype(np.int64), minlength=k * k).reshape(k, k)
    return confusion_metrics(cm, class_names)


def write_confusion(cm, class_names: Sequence[str], csv_path: str | Path, png_path: str | Path, title: str = "") -> None:
    """Confusion matrix as CSV (counts; rows true class, columns predicted) and as PNG
    (counts and row-normalised fractions, every cell annotated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, dtype=np.int64)
    names = list(class_names)
    table = pd.DataFrame(cm, index=pd.Index(names, name="true \\ predicted"), columns=names)
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, np.float64), where=rows > 0)
    fig, axes = plt.subplots(1, 2, figsize=(4 + 2.2 * len(names), 1.5 + 1.1 * len(names)))
    for ax, data, label, fmt in ((axes[0], cm, "pixels", "{:d}"), (axes[1], norm, "fraction of true class", "{:.2f}")):
        shown = norm if data is cm else data  # colour by row fraction, so rare classes stay visible
        im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(data):
            ax.text(j, i, fmt.format(int(v)) if data is cm else fmt.format(float(v)), ha="center", va="center",
                    color="white" if shown[i, j] > 0.5 else "black", fontsize=9)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(label)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


CLASS_METRIC_COLUMNS = ("class", "support", "predicted", "tp", "fp", "fn", "iou", "dice", "precision", "recall")


def _nanmean(values) -> float:
    values = np.asarray(list(values), dtype=np.float64)
    return float(np.nanmean(values)) if np.any(~np.isnan(values)) else float("nan")


def class_metrics_table(cm, class_names: Sequence[str]) -> pd.DataFrame:
    """Per-class pixel scores of a confusion matrix (rows true class, columns predicted).

    One row per class: support (its true pixels), predicted (pixels given that class), tp,
    fp, fn, iou = tp / (tp + fp + fn), dice = 2 tp / (2 tp + fp + fn) (the F1 score),
    precision and recall (NaN where undefined: see :func:`confusion_metrics`). A last row
    ``mean`` averages each ratio over the classes where it is defined (its iou is the mean
    IoU) and adds the counts up, so its tp / support is the pixel accuracy.
    """
    scores = confusion_metrics(cm, class_names)
    cm = scores["confusion_matrix"]
    tp, true, pred = np.diag(cm), cm.sum(1), cm.sum(0)
    rows = [{"class": str(name), "support": int(true[i]), "predicted": int(pred[i]), "tp": int(tp[i]),
             "fp": int(pred[i] - tp[i]), "fn": int(true[i] - tp[i]),
             **{m: scores[m][name] for m in ("iou", "dice", "precision", "recall")}}
            for i, name in enumerate(scores["class_names"])]
    table = pd.DataFrame(rows, columns=list(CLASS_METRIC_COLUMNS))
    mean = {"class": "mean", **{c: int(table[c].sum()) for c in ("support", "predicted", "tp", "fp", "fn")},
            **{m: _nanmean(table[m]) for m in ("iou", "dice", "precision", "recall")}}
    return pd.concat([table, pd.DataFrame([mean])], ignore_index=True)


def read_confusion(path: str | Path, class_names: Sequence[str]) -> np.ndarray:
    """A confusion matrix written by :func:`write_confusion`, checked against ``class_names``."""
    names = [str(n) for n in class_names]
    try:
        table = pd.read_csv(path, index_col=0)
    except Exception as exc:  # noqa: BLE001 - name the file that cannot be read
        raise InputError(path, f"cannot read the confusion matrix ({type(exc).__name__}: {exc})") from None
    if [str(i) for i in table.index] != names or [str(c) for c in table.columns] != names:
        raise InputError(path, f"rows and columns must be the classes {names} in that order "
                               f"(got rows {list(table.index)}, columns {list(table.columns)})")
    values = table.to_numpy()
    if values.dtype.kind not in "ui" or (values.size and values.min() < 0):
        raise InputError(path, "confusion matrix entries must be pixel counts (non-negative integers)")
    return values.astype(np.int64)


def write_class_scores(per_sample: Mapping[str, np.ndarray], class_names: Sequence[str], confusion_csv: str | Path,
                       metrics_csv: str | Path, png: str | Path, *, title: str = "",
                       total_name: str | None = "ALL") -> pd.DataFrame:
    """Add samples' pixel-class confusion matrices up and write the result.

    The matrices are summed as counts (so every pixel weighs the same, whichever sample it is
    in) into ``confusion_csv`` / ``png`` (:func:`write_confusion`). ``metrics_csv`` gets the
    :func:`class_metrics_table` of every sample (column ``sample``) and, unless
    ``total_name`` is None, of the summed matrix (sample ``total_name``): its IoU is the
    summed intersection over the summed union, not the mean of the samples' IoUs.
    """
    if not per_sample:
        raise InputError(metrics_csv, "no samples' confusion matrices to add up")
    k = len(class_names)
    matrices = {str(name): np.asarray(cm, dtype=np.int64) for name, cm in per_sample.items()}
    for name, cm in matrices.items():
        if cm.shape != (k, k):
            raise InputError(name, f"confusion matrix of shape {cm.shape} does not fit {k} classes")
    total = np.sum(list(matrices.values()), axis=0)
    parts = [class_metrics_table(cm, class_names).assign(sample=name) for name, cm in matrices.items()]
    if total_name is not None:
        parts.append(class_metrics_table(total, class_names).assign(sample=total_name))
    table = pd.concat(parts, ignore_index=True)
    table = table[["sample", *CLASS_METRIC_COLUMNS]]
    scores = confusion_metrics(total, class_names)
    heading = f"mean IoU {scores['mean_iou']:.3f}, pixel accuracy {scores['pixel_accuracy']:.3f}"
    write_confusion(total, class_names, confusion_csv, png, title=f"{title}\n{heading}" if title else heading)
    with atomic_path(metrics_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    return table
