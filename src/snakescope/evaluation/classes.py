"""Pixel-class accuracy: confusion matrices of class maps and per-class scores.

:func:`semantic_metrics` / :func:`confusion_metrics` give the confusion matrix of pixel
classes (e.g. the U-Net's background / contour / body, or per cell type) and per-class IoU;
:func:`write_confusion` writes a matrix as CSV (counts, and row percentages:
:func:`confusion_percent`) and PNG; :func:`class_metrics_table` scores
each class; :func:`write_class_scores` adds samples' confusion matrices up (counts, never
averages) and writes the matrix and the scores (:func:`read_confusion` reads one back).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from snakescope.errors import InputError
from snakescope.io.atomic import atomic_path

__all__ = ["CLASS_METRIC_COLUMNS", "class_metrics_table", "confusion_metrics", "confusion_percent", "read_confusion",
           "semantic_metrics", "write_class_scores", "write_confusion"]


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


def confusion_percent(cm, class_names: Sequence[str]) -> pd.DataFrame:
    """The confusion matrix in row percentages: each true class's pixels by predicted class,
    summing to 100 per row (its diagonal is the class's recall; empty where a class has no
    true pixels), as the table of a pixel classifier is usually read."""
    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(1, keepdims=True)
    percent = np.divide(100.0 * cm, rows, out=np.full(cm.shape, np.nan), where=rows > 0)
    names = [str(n) for n in class_names]
    return pd.DataFrame(percent, index=pd.Index(names, name="true \\ predicted (% of true class)"), columns=names)


def write_confusion(cm, class_names: Sequence[str], csv_path: str | Path, png_path: str | Path, title: str = "",
                    percent_csv: str | Path | None = None) -> None:
    """Confusion matrix as CSV (counts; rows true class, columns predicted) and as PNG
    (counts and row-normalised fractions, every cell annotated); with ``percent_csv`` also
    the row percentages (:func:`confusion_percent`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, dtype=np.int64)
    names = list(class_names)
    table = pd.DataFrame(cm, index=pd.Index(names, name="true \\ predicted"), columns=names)
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp)
    if percent_csv is not None:
        with atomic_path(percent_csv) as tmp:
            confusion_percent(cm, names).to_csv(tmp, float_format="%.2f")
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
                       total_name: str | None = "ALL", percent_csv: str | Path | None = None) -> pd.DataFrame:
    """Add samples' pixel-class confusion matrices up and write the result.

    The matrices are summed as counts (so every pixel weighs the same, whichever sample it is
    in) into ``confusion_csv`` / ``png`` and, given, its row percentages into
    ``percent_csv`` (:func:`write_confusion`). ``metrics_csv`` gets the
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
    write_confusion(total, class_names, confusion_csv, png, title=f"{title}\n{heading}" if title else heading,
                    percent_csv=percent_csv)
    with atomic_path(metrics_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    return table
