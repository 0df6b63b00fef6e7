"""One sample's segmentation scored against its ground-truth label file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from snakescope.evaluation.instances import instance_metrics, summarize
from snakescope.io.labels import read_class_map, read_labels, read_labels_image

__all__ = ["segmentation_scores"]


def segmentation_scores(labels_path: str | Path, truth: str, *, sample: str,
                        classes: bool = False) -> tuple[pd.DataFrame, np.ndarray | None]:
    """(instance metrics per IoU threshold, summed over time points; the U-Net's pixel-class
    confusion counts when ``classes``) of the labels at ``labels_path`` against the
    ground-truth TIFF (or glob) ``truth``. Shape, type and negative-label problems name
    ``truth``."""
    pred = read_labels_image(labels_path)
    gt = read_labels(truth, pred.shape, f"sample {sample} ({labels_path})")
    counts = None
    if classes:
        from snakescope.segmentation.unet import class_confusion

        class_map = read_class_map(labels_path)
        counts = class_confusion(gt, class_map.data, time_axis=0 if "t" in class_map.axes else None,
                                 where=truth, pred_where=str(labels_path))
    if "t" in pred.axes:
        table = summarize({f"t{t}": instance_metrics(gt[t], pred.data[t], where=truth) for t in range(pred.shape[0])})
    else:
        table = instance_metrics(gt, pred.data[...], where=truth)
    table.insert(0, "sample", sample)
    return table, counts
