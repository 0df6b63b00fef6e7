"""Training data of both segmenters (StarDist and the U-Net): one sample's frames and
ground-truth labels from the workflow's NGFF images, and the keys of a train/validation split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from snakescope.errors import InputError
from snakescope.io import ngff
from snakescope.io.frames import frames
from snakescope.io.labels import label_layout, read_labels

__all__ = ["ONE_IMAGE_NOTE", "TrainingSource", "load_pairs", "train_validation_keys"]

ONE_IMAGE_NOTE = "only one labelled image: validation (and threshold tuning) use the training image"


@dataclass
class TrainingSource:
    """One sample's image (normalized or restored NGFF) and its ground-truth labels file."""

    sample: str
    image: str
    labels: str
    channel: int = 0


def load_pairs(source: TrainingSource) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'sample:tN' or 'sample': (image frame float32, labels frame)} for one sample."""
    image = ngff.read_image(source.image)
    label_axes, label_shape, _ = label_layout(image)
    labels = read_labels(source.labels, label_shape, f"sample {source.sample} ({source.image})")
    pairs = {}
    for t, index in frames(image.axes, image.shape, source.channel):
        x = np.asarray(image.data[index], dtype=np.float32)
        y = labels[t] if "t" in label_axes else labels
        key = f"{source.sample}:t{t}" if t is not None else source.sample
        pairs[key] = (x, y)
    if not any(np.any(y > 0) for _, y in pairs.values()):
        raise InputError(source.labels, f"no objects in the training labels of sample {source.sample}")
    return pairs


def train_validation_keys(split, keys, where: str | Path) -> tuple[list[str], list[str], list[str]]:
    """(training keys, validation keys, notes) of ``keys`` (the training pairs) in ``split``
    ({'train': [...], 'validation': [...]}, e.g. from
    :func:`snakescope.training.splits.make_or_load_split`), in the split's order.

    A pair in neither set is an error (the split belongs to other data). With no training
    key the validation keys train; with no validation key the training keys validate too
    (noted).
    """
    keys = set(keys)
    train = [k for k in split.get("train", []) if k in keys]
    val = [k for k in split.get("validation", []) if k in keys]
    unknown = sorted(keys - set(train) - set(val))
    if unknown:
        raise InputError(where, f"samples {unknown} are in neither the training nor the validation set of the split")
    if not train:
        train, val = val, []
    if not train:
        raise InputError(where, "no training images: give samples with labels in the samples sheet")
    notes = []
    if not val:
        val = list(train)
        notes.append(ONE_IMAGE_NOTE)
    return train, val, notes
