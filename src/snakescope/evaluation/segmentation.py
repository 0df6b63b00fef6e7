"""One sample's segmentation scored against its ground-truth label file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from snakescope.evaluation.instances import instance_metrics, summarize
from snakescope.errors import InputError
from snakescope.io.labels import class_map_names, read_class_map, read_labels, read_labels_image, read_types

__all__ = ["segmentation_scores"]


def segmentation_scores(labels_path: str | Path, truth: str, *, sample: str, classes: bool = False,
                        types: str | None = None) -> tuple[pd.DataFrame, np.ndarray | None]:
    """(instance metrics per IoU threshold, summed over time points; the U-Net's pixel-class
    confusion counts when ``classes``, in the order of the class map's names,
    :func:`snakescope.io.labels.class_map_names`) of the labels at ``labels_path`` against
    the ground-truth TIFF (or glob) ``truth``. A typed U-Net's classes need the objects'
    ``types`` (a type image or a ``label,type`` CSV, :func:`snakescope.io.labels.read_types`).
    Shape, type and negative-label problems name ``truth`` (or ``types``)."""
    pred = read_labels_image(labels_path)
    where = f"sample {sample} ({labels_path})"
    gt = read_labels(truth, pred.shape, where)
    counts = None
    if classes:
        from snakescope.segmentation.unet import class_confusion

        class_map = read_class_map(labels_path)
        class_names, type_names = class_map_names(labels_path)
        if type_names and not types:
            raise InputError(labels_path, f"the typed U-Net's classes ({', '.join(type_names)}) are scored against "
                                          "the objects' types: give the sample's types (column types)")
        type_truth = read_types(types, pred.shape, type_names, where) if type_names else None
        counts = class_confusion(gt, class_map.data, time_axis=0 if "t" in class_map.axes else None,
                                 where=truth, pred_where=str(labels_path), types=type_truth, types_where=str(types),
                                 class_names=class_names)
    if "t" in pred.axes:
        table = summarize({f"t{t}": instance_metrics(gt[t], pred.data[t], where=truth) for t in range(pred.shape[0])})
    else:
        table = instance_metrics(gt, pred.data[...], where=truth)
    table.insert(0, "sample", sample)
    return table, counts
