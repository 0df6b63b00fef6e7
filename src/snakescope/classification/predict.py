"""Applying a trained classifier: load it once (:func:`load_classifier`), then classify the
objects of any number of images (:func:`classify_objects`) or ready patches
(:func:`predict_patches`), optionally with test-time augmentation.

Each image's objects are classified ``batch_size`` at a time from patches of the model's
geometry (``patch_size``, ``time_window`` in its ``config.json``) cut around their
centroids, so memory stays bounded whatever the number of objects; the network is padded to
equal batches, so Keras traces its predict function once per process, not once per image.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from snakescope.classification.model import read_classifier_config, rebuild_classifier, weights_file
from snakescope.classification.patches import (DEFAULT_READ_BYTES, as_patch_array, extract_patches,
                                               normalize_patches, unwrap_image)
from snakescope.errors import InputError
from snakescope.io.annotations import point_axes

__all__ = ["LoadedClassifier", "classify_objects", "load_classifier", "predict_patches", "predict_probabilities"]


def _is_square(input_shape) -> bool:
    return int(input_shape[-3]) == int(input_shape[-2])


def predict_probabilities(model, x: np.ndarray, *, tta: bool, batch_size: int = 128) -> np.ndarray:
    """Softmax probabilities of normalized patches; with ``tta`` averaged over flips and
    (square patches) 90 degree rotations of the YX plane."""
    if not len(x):
        return np.zeros((0, model.output_shape[-1]), np.float32)
    y_axis, x_axis = x.ndim - 3, x.ndim - 2
    square = _is_square(x.shape[1:])
    variants = [(k, f) for k in (range(4) if square else (0, 2)) for f in (False, True)] if tta else [(0, False)]
    n = len(x)
    batch_size = int(batch_size)
    padded = math.ceil(n / batch_size) * batch_size  # equal batches: the predict function is traced once
    if padded > n:
        x = np.concatenate([x, np.zeros((padded - n, *x.shape[1:]), x.dtype)])
    total = None
    for k, flip in variants:
        v = np.flip(x, axis=x_axis) if flip else x
        v = np.ascontiguousarray(np.rot90(v, k, axes=(y_axis, x_axis)) if k else v)
        p = model.predict(v, batch_size=batch_size, verbose=0)[:n]
        total = p if total is None else total + p
    return (total / len(variants)).astype(np.float32)


class LoadedClassifier:
    """A trained classifier rebuilt from its folder: its ``config.json``, the Keras model,
    and the patch geometry objects are classified with."""

    def __init__(self, folder, weights: str = "best"):
        self.folder = Path(folder)
        self.config = read_classifier_config(self.folder)
        self.class_names: list[str] = self.config["class_names"]
        self.patch_size: list[int] = [int(s) for s in self.config["patch_size"]]
        self.time_window = int(self.config.get("time_window", 0))
        self.model = rebuild_classifier(self.config, weights_file(self.folder, weights))

    def predict_raw(self, patches, *, tta: bool = False) -> np.ndarray:
        """Probabilities ``(N, n_classes)`` for raw patches (normalized as in training)."""
        raw = as_patch_array(patches)
        expected = tuple(self.config["input_shape"])
        if tuple(raw.shape[1:]) != expected:
            raise InputError("patches", f"shape {tuple(raw.shape[1:])} differs from the model's input {expected}")
        norm = self.config["normalize"]
        x = normalize_patches(raw, method=norm["method"], low=norm["low"], high=norm["high"],
                              n_channels=int(self.config.get("n_channels", 1)))
        return predict_probabilities(self.model, x, tta=tta)


def load_classifier(folder, weights: str = "best") -> LoadedClassifier:
    """Rebuild a trained classifier once (``weights``: ``"best"``, ``"last"`` or a file)."""
    return LoadedClassifier(folder, weights)


def predict_patches(classifier: LoadedClassifier, patches, *, tta: bool = False, batch_size: int = 1024):
    """Class names and probabilities ``(N, n_classes)`` for ready patches (batched)."""
    raw = as_patch_array(patches)
    parts = [classifier.predict_raw(raw[i:i + batch_size], tta=tta) for i in range(0, len(raw), batch_size)]
    probabilities = np.concatenate(parts) if parts else np.zeros((0, len(classifier.class_names)), np.float32)
    return [classifier.class_names[i] for i in probabilities.argmax(axis=1)], probabilities


def classify_objects(
    classifier: LoadedClassifier,
    image,
    axes: str | None,
    objects: pd.DataFrame,
    *,
    channels: Sequence[int] | None = None,
    batch_size: int = 512,
    tta: bool = False,
    max_read_bytes: int = DEFAULT_READ_BYTES,
) -> pd.DataFrame:
    """Classify objects from a patch centred on each centroid.

    ``image``: numpy or zarr array, or an NGFF image (then ``axes`` may be None).
    ``objects``: DataFrame with columns ``t, (z,) y, x`` as the image's axes need (e.g. the
    centroids of segmented nuclei). ``channels``: the image channel(s) the model was
    trained on (an image with a channel axis). Returns a copy of ``objects`` with
    ``class_name`` (replaced if present) and ``p_<class>`` per class (summing to 1).
    ``tta`` averages predictions over flips and 90 degree rotations.
    """
    array, axes = unwrap_image(image, axes)
    names = point_axes(axes)
    missing = [a for a in names if a not in objects.columns]
    if missing:
        raise InputError("objects", f"missing centroid column(s) {', '.join(missing)} for image axes {axes!r}")
    result = objects.copy()
    probabilities = np.zeros((len(objects), len(classifier.class_names)), dtype=np.float32)
    for start in range(0, len(objects), int(batch_size)):
        chunk = objects.iloc[start:start + int(batch_size)]
        patches = extract_patches(array, axes, chunk, classifier.patch_size, classifier.time_window,
                                  channels=channels, max_read_bytes=max_read_bytes)
        probabilities[start:start + len(chunk)] = classifier.predict_raw(patches, tta=tta)
    result["class_name"] = [classifier.class_names[i] for i in probabilities.argmax(axis=1)] if len(objects) else []
    for j, name in enumerate(classifier.class_names):
        result[f"p_{name}"] = probabilities[:, j]
    return result
