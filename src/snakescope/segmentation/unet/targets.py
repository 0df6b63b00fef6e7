"""U-Net targets: background / contour / body classes from instance labels (per cell type
for a typed U-Net), checked training pairs, and the pixel-class confusion of a predicted
class map.

Only numpy, scipy and scikit-image are imported here (no TensorFlow).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from snakescope.errors import InputError

__all__ = ["CLASS_NAMES", "check_labels", "check_pair", "class_confusion", "class_weights_from_frequencies",
           "labels_to_classes", "normalize_percentile", "read_pairs"]

CLASS_NAMES = ("background", "contour", "body")


def check_labels(labels, where: str | Path = "labels") -> np.ndarray:
    """Dense instance labels as an integer array (0 = background), or InputError."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "ui":
        raise InputError(where, f"label image has dtype {labels.dtype}; expected integer instance labels "
                                "(0 = background, one id per object), e.g. a napari Labels layer")
    if labels.ndim not in (2, 3):
        raise InputError(where, f"label image has {labels.ndim} dimensions (shape {labels.shape}); expected a 2D or 3D frame")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise InputError(where, "label image has negative values; expected instance ids >= 0")
    return labels


def check_pair(where: str | Path, image, labels, *, allow_empty: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Check one training pair: same shape, integer labels, finite image, some objects."""
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.dtype.kind not in "uif":
        raise InputError(where, f"image has dtype {image.dtype}; expected a numeric intensity image")
    if tuple(labels.shape) != tuple(image.shape):
        raise InputError(where, f"label image shape {tuple(labels.shape)} differs from image shape {tuple(image.shape)}")
    labels = check_labels(labels, where)
    image = image.astype(np.float32, copy=False)
    if not np.all(np.isfinite(image)):
        raise InputError(where, "image has NaN or infinite values")
    if not allow_empty and not np.any(labels):
        raise InputError(where, "no objects in the training labels (the label image is all 0)")
    return image, labels


def labels_to_classes(labels, where: str | Path = "labels", types=None) -> np.ndarray:
    """Three-class targets (uint8: 0 background, 1 contour, 2 body) from instance labels.

    The contour is the inner boundary of each object (pixels of the object that touch
    another id or the background, 4- / 6-connectivity), so two touching objects are split
    by a two-pixel line; body is the rest of each object. An object too thin to have a
    body keeps its innermost pixel as body, so that every object yields a watershed seed.

    ``types`` (typed U-Net): each object's type id (1..K) on its pixels, as
    :func:`snakescope.segmentation.unet.types.object_type_image` makes it; type k's contour
    is then class 2k - 1 and its body 2k.
    """
    from skimage.segmentation import find_boundaries

    labels = check_labels(labels, where)
    fg = labels > 0
    contour = find_boundaries(labels, connectivity=1, mode="inner") & fg
    classes = np.zeros(labels.shape, np.uint8)
    classes[fg] = 2
    classes[contour] = 1
    missing = np.setdiff1d(np.unique(labels[fg]), np.unique(labels[classes == 2]))
    if missing.size:
        slices = ndimage.find_objects(labels)
        for obj in missing:
            sl = slices[int(obj) - 1]
            mask = labels[sl] == obj
            dist = ndimage.distance_transform_edt(np.pad(mask, 1))[(slice(1, -1),) * mask.ndim]
            idx = np.unravel_index(np.argmax(np.where(mask, dist, -1)), mask.shape)
            classes[sl][idx] = 2
    if types is not None:
        types = np.asarray(types)
        if types.shape != labels.shape:
            raise InputError(where, f"type image shape {types.shape} differs from the labels' {labels.shape}")
        if np.any(types[fg] == 0):
            raise InputError(where, "some labelled pixels have no type")
        classes[fg] += (2 * (types[fg].astype(np.int64) - 1)).astype(np.uint8)
    return classes


def class_weights_from_frequencies(frequencies) -> list[float]:
    """Median-frequency balancing: weight_c = median(f) / f_c (rare contour class weighs more)."""
    f = np.asarray(frequencies, dtype=np.float64)
    present = f > 0
    weights = np.ones_like(f)  # a class absent from training never enters the loss
    weights[present] = np.median(f[present]) / f[present]
    return [float(w) for w in weights]


def normalize_percentile(image, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """(x - p_low) / (p_high - p_low) as float32 (for raw images outside the workflow)."""
    x = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(x, [low, high])
    return ((x - lo) / max(float(hi - lo), 1e-6)).astype(np.float32)


def read_pairs(image_files: Sequence[str | Path], label_files: Sequence[str | Path], *,
               normalize: tuple[float, float] | None = (1.0, 99.8), allow_empty: bool = False
               ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{image file stem: (image float32, labels)} from TIFF files, checked pair by pair.

    ``normalize`` = (low, high) percentiles applied per image (None: images are used as
    they are, e.g. already normalized by the workflow). Errors name the label file.
    """
    import tifffile

    if len(image_files) != len(label_files):
        raise InputError("training files", f"{len(image_files)} images but {len(label_files)} label images")
    pairs = {}
    for image_file, label_file in zip(image_files, label_files):
        for f in (image_file, label_file):
            if not Path(f).exists():
                raise InputError(f, "file not found")
        image, labels = tifffile.imread(image_file), tifffile.imread(label_file)
        image, labels = check_pair(label_file, image, labels, allow_empty=allow_empty)
        if normalize is not None:
            image = normalize_percentile(image, *normalize)
        name = Path(image_file).name.split(".")[0]
        if name in pairs:
            raise InputError(image_file, f"two training images share the name {name!r}")
        pairs[name] = (image, labels)
    return pairs



def class_confusion(labels, class_map, *, time_axis: int | None = None, where: str | Path = "labels",
                    pred_where: str | Path = "class map", types=None, types_where: str | Path = "types",
                    class_names=CLASS_NAMES) -> np.ndarray:
    """Pixel-class confusion matrix (int64 counts; rows true class, columns predicted, in
    ``class_names`` order) of a predicted class map against instance ``labels``.

    The true classes come from :func:`labels_to_classes`, the training targets (same contour
    definition), typed by ``types`` (a typed U-Net's classes: a type image or {label: type
    id}, see :func:`snakescope.segmentation.unet.types.object_type_image`). With
    ``time_axis``, frame by frame (a contour never spans time points) and added up;
    ``class_map`` (and a type image) may then be a Zarr array, read one frame at a time.
    Shape, dtype and class-id problems raise :class:`InputError` naming ``where`` /
    ``pred_where`` / ``types_where``.
    """
    from snakescope.evaluation.classes import semantic_metrics

    if time_axis is not None:
        labels = np.moveaxis(np.asarray(labels), time_axis, 0)
        if time_axis != 0:  # a lazy (Zarr) map is read frame by frame only along its first axis
            class_map = np.moveaxis(np.asarray(class_map), time_axis, 0)
            if types is not None and not isinstance(types, Mapping):
                types = np.moveaxis(np.asarray(types), time_axis, 0)
        if tuple(class_map.shape) != tuple(labels.shape):
            raise InputError(pred_where, f"class map shape {tuple(class_map.shape)} differs from ground-truth shape "
                                         f"{tuple(labels.shape)} of {where}")
        cm = np.zeros((len(class_names),) * 2, np.int64)
        for t in range(labels.shape[0]):
            frame_types = types if types is None or isinstance(types, Mapping) else types[t]
            cm += class_confusion(labels[t], class_map[t], where=f"{where} (time point {t})",
                                  pred_where=f"{pred_where} (time point {t})", types=frame_types,
                                  types_where=f"{types_where} (time point {t})", class_names=class_names)
        return cm
    if len(class_names) > len(CLASS_NAMES):
        from snakescope.segmentation.unet.types import object_type_image

        if types is None:
            raise InputError(where, f"the classes {list(class_names)} need each object's type: give the sample's "
                                    "types (a type image or a label,type table)")
        types = object_type_image(labels, types, (len(class_names) - 1) // 2, where=types_where)
    else:
        types = None
    truth = labels_to_classes(labels, where, types)
    return semantic_metrics(truth, np.asarray(class_map), class_names, where=pred_where)["confusion_matrix"]


