"""Training data of both segmenters (StarDist and the U-Net): one sample's frames and
ground-truth labels (and object types, for a typed U-Net) from the workflow's NGFF images,
and the keys of a train/validation split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from snakescope.errors import InputError
from snakescope.io import ngff
from snakescope.io.frames import frames
from snakescope.io.labels import label_layout, read_labels, read_types

__all__ = ["ONE_IMAGE_NOTE", "TrainingSource", "load_pairs", "load_types", "train_validation_keys"]

ONE_IMAGE_NOTE = "only one labelled image: validation (and threshold tuning) use the training image"


@dataclass
class TrainingSource:
    """One sample's image (normalized or restored NGFF), its ground-truth labels file and,
    for a typed U-Net, its objects' types (a type image or a ``label,type`` CSV)."""

    sample: str
    image: str
    labels: str
    channel: int = 0
    types: str | None = None


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


def load_types(source: TrainingSource, type_names) -> dict:
    """{key of :func:`load_pairs`: the frame's type image, or {label: type id} from a CSV}
    for a typed U-Net (types ``type_names``); InputError when the sample has none."""
    if not source.types:
        raise InputError(source.labels, f"sample {source.sample} has no types (samples sheet column types), "
                                        f"which the typed U-Net ({', '.join(type_names)}) needs")
    image = ngff.read_image(source.image)
    label_axes, label_shape, _ = label_layout(image)
    types = read_types(source.types, label_shape, type_names, f"sample {source.sample} ({source.image})")
    per_frame = not isinstance(types, dict) and "t" in label_axes
    return {f"{source.sample}:t{t}" if t is not None else source.sample: types[t] if per_frame else types
            for t, _ in frames(image.axes, image.shape, source.channel)}


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
