"""The classifier's input: patches cut around points or object centroids, and their
normalization; the training patches of a sample's point annotations and of a patch folder.

**Cutting.** :func:`extract_patches` cuts a patch centred on each point (the centre pixel is
at index ``size // 2``), in space (YX or ZYX) or in space and time (``2 * time_window + 1``
frames around the point, stacked as channels, for events such as divisions). Borders are
padded by reflection (``numpy.pad(mode="reflect")``, also along time). Only the region
around the points is read from the (zarr) array, in blocks of at most ``max_read_bytes``;
whole volumes are never loaded.

**Normalization.** :func:`normalize_patches` normalizes *per patch* by percentiles
(``low=1``, ``high=99.8``, as in the rest of the pipeline): ``(x - p_low) / (p_high -
p_low)`` per image channel, jointly over the pixels and the frames of the patch (so
intensity changes over the time window are kept); no clipping; constant patches become 0.
With ``method="none"`` the patches are taken as already normalized and only cast to
float32. The trained model's ``config.json`` records the choice, applied again at
prediction.

**Training data.** :func:`training_patches_from_points` (a sample's image and napari
CSVs) and :func:`training_patches_from_folder` (ready patches, checked against the
classifier's input) give :class:`TrainingPatches`; :func:`concatenate_patches` joins them
for :func:`snakescope.classification.train.train_classifier`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import pandas as pd

from snakescope.errors import InputError
from snakescope.io.annotations import (load_patch_folder, parse_axes, point_axes, point_coordinates,
                                       read_point_annotations, rounded_inside)
from snakescope.settings import Classification

__all__ = ["DEFAULT_READ_BYTES", "NORMALIZE_MODES", "PERCENTILES", "TrainingPatches", "as_patch_array",
           "concatenate_patches", "extract_patches", "normalize_patches", "patch_size_for", "spatial_axes",
           "training_patches_from_folder", "training_patches_from_points", "unwrap_image"]

NORMALIZE_MODES = ("percentile", "none")
PERCENTILES = (1.0, 99.8)
DEFAULT_READ_BYTES = 64 * 2**20
_SPARSE_READ_BYTES = 4 * 2**20  # above this, a read at most 8x the patches' size (sparse points)


def spatial_axes(axes: str) -> str:
    return "".join(a for a in axes if a in "zyx")


def unwrap_image(image, axes):
    """(array, axes) from an array, a zarr array or a :class:`snakescope.io.ngff.NgffImage`."""
    if hasattr(image, "levels") and hasattr(image, "axes"):
        axes = axes or image.axes
        image = image.data
    if axes is None:
        raise InputError("axes", "the image axes are needed (e.g. 'tyx', 'tczyx')")
    axes = parse_axes(axes)
    if len(axes) != len(image.shape):
        raise InputError("axes", f"axes {axes!r} do not match the image's {len(image.shape)} dimensions {tuple(image.shape)}")
    return image, axes


def patch_size_for(settings: Classification, spatial_ndim: int) -> tuple[int, ...]:
    """The patch cut around each point of a 2D (``patch_size``) or 3D (``patch_size_z`` and
    ``patch_size``) image."""
    depth = [int(settings.patch_size_z)] if int(spatial_ndim) == 3 else []
    return tuple(depth + [int(s) for s in settings.patch_size])


def as_patch_array(patches) -> np.ndarray:
    """Patches as ``(N, Y, X, C)`` or ``(N, Z, Y, X, C)`` (a channel axis added to
    ``(N, Y, X)``)."""
    array = np.asarray(patches)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim not in (4, 5):
        raise InputError("patches", f"shape {array.shape}: expected (N, Y, X[, C]) or (N, Z, Y, X, C)")
    return array


# ---------------------------------------------------------------------------------------
# Cutting


def _reflect(index: np.ndarray, n: int) -> np.ndarray:
    """Map any integer index into ``[0, n)`` by reflection (``numpy.pad`` "reflect" mode,
    repeated as often as needed)."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    m = np.mod(index, period)
    return np.where(m >= n, period - m, m)


def _patch_shape(axes: str, patch_size) -> tuple[int, ...]:
    spatial = spatial_axes(axes)
    if isinstance(patch_size, (int, np.integer)):
        sizes = (int(patch_size),) * len(spatial)
    else:
        sizes = tuple(int(s) for s in patch_size)
        if len(sizes) == 2 and len(spatial) == 3:
            raise InputError("patch_size", f"{sizes} has 2 sizes but the image has 3 spatial axes ({spatial}); give (z, y, x)")
        if len(sizes) != len(spatial):
            raise InputError("patch_size", f"{sizes} does not match the spatial axes {spatial!r}")
    if any(s < 1 for s in sizes):
        raise InputError("patch_size", f"sizes must be >= 1, got {sizes}")
    return sizes


def _channel_index(image, axes: str, channels) -> np.ndarray:
    if "c" in axes:
        n_image_channels = int(image.shape[axes.index("c")])
        index = np.arange(n_image_channels) if channels is None else np.asarray(channels, dtype=np.int64)
        if index.size == 0 or index.min() < 0 or index.max() >= n_image_channels:
            raise InputError("channels", f"{list(index)} not within the image's {n_image_channels} channels")
        return index
    if channels is not None and list(channels) not in ([0],):
        raise InputError("channels", f"the image has no channel axis (axes {axes!r})")
    return np.zeros(1, dtype=np.int64)


def extract_patches(
    image,
    axes: str | None,
    points,
    patch_size,
    time_window: int = 0,
    *,
    channels: Sequence[int] | None = None,
    max_read_bytes: int = DEFAULT_READ_BYTES,
) -> np.ndarray:
    """Cut one patch centred on each point.

    Parameters
    ----------
    image : numpy array, zarr array or :class:`snakescope.io.ngff.NgffImage` (then ``axes``
        may be None). Only the regions around the points are read.
    axes : the image's axes, e.g. ``"yx"``, ``"tyx"``, ``"tczyx"``.
    points : DataFrame with one column per non-channel axis (``t``, ``z``, ``y``, ``x`` as
        present; optional ``source``/``row`` columns name the annotation in errors), or an
        array ``(N, n_axes)`` in the image's axis order. Coordinates are rounded to the
        nearest pixel.
    patch_size : int (every spatial axis) or one size per spatial axis, e.g. ``(8, 48, 48)``
        for ZYX. The point is at index ``size // 2`` of each axis.
    time_window : frames on each side of the point's frame (needs a ``t`` axis); the
        ``2 * time_window + 1`` frames become channels.
    channels : channel indices to keep (default all).
    max_read_bytes : upper bound of one read from the array. Points are sorted by frame and
        position and read in groups whose bounding box is at most this large and, above 4
        MiB, at most 8 times the size of their patches (so sparse points do not pull in
        whole frames); nearby patches share a read.

    Returns an array ``(N, *patch_size, frames * channels)`` of the image's dtype; channel
    index ``f * n_channels + c`` holds frame ``t - time_window + f``, channel ``c``. Borders
    are padded by reflection, in space and in time.
    """
    image, axes = unwrap_image(image, axes)
    names = point_axes(axes)
    sizes = _patch_shape(axes, patch_size)
    time_window = int(time_window)
    if time_window < 0:
        raise InputError("time_window", f"must be >= 0, got {time_window}")
    if time_window and "t" not in axes:
        raise InputError("time_window", f"a time window needs a t axis; the image axes are {axes!r}")
    coordinates, sources, rows = point_coordinates(points, names)
    shape = tuple(int(image.shape[axes.index(a)]) for a in names)
    rounded = rounded_inside(coordinates, shape, names, sources, rows)
    channel_index = _channel_index(image, axes, channels)
    n_frames = 2 * time_window + 1
    n_channels = len(channel_index)
    out = np.empty((len(rounded), *sizes, n_frames * n_channels), dtype=image.dtype)
    if not len(rounded):
        return out

    # Index matrices (N, size) per non-channel axis, reflected into the image.
    offsets = {}
    spatial = spatial_axes(axes)
    for a, s in zip(spatial, sizes):
        offsets[a] = np.arange(s) - s // 2
    if "t" in axes:
        offsets["t"] = np.arange(-time_window, time_window + 1)
    index = {a: _reflect(rounded[:, names.index(a), None] + offsets[a][None, :], shape[names.index(a)]) for a in names}

    # Output order: spatial axes (image order), then frames, then channels.
    present = list(axes)
    order = [present.index(a) for a in spatial]
    order += [present.index("t")] if "t" in axes else []
    order += [present.index("c")] if "c" in axes else []
    itemsize = np.dtype(image.dtype).itemsize
    c_lo, c_hi = int(channel_index.min()), int(channel_index.max()) + 1
    patch_bytes = itemsize * (c_hi - c_lo) * n_frames * math.prod(sizes)

    def read(selection: np.ndarray) -> None:
        lo = {a: int(index[a][selection].min()) for a in names}
        hi = {a: int(index[a][selection].max()) + 1 for a in names}
        n_bytes = itemsize * (c_hi - c_lo) * math.prod(hi[a] - lo[a] for a in names)
        wasteful = n_bytes > _SPARSE_READ_BYTES and n_bytes > 8 * len(selection) * patch_bytes
        if (n_bytes > max_read_bytes or wasteful) and len(selection) > 1:
            half = len(selection) // 2
            read(selection[:half])
            read(selection[half:])
            return
        box = tuple(slice(c_lo, c_hi) if a == "c" else slice(lo[a], hi[a]) for a in axes)
        block = np.asarray(image[box])
        for i in selection:
            grids = [channel_index - c_lo if a == "c" else index[a][i] - lo[a] for a in axes]
            patch = block[np.ix_(*grids)].transpose(order)
            out[i] = patch.reshape(*sizes, n_frames * n_channels)

    # Sort by frame, then along the axes (so halves of a group are compact regions).
    keys = [rounded[:, names.index(a)] for a in reversed(names)]
    read(np.lexsort(keys))
    return out


def normalize_patches(patches: np.ndarray, *, method: str = "percentile", low: float = PERCENTILES[0],
                      high: float = PERCENTILES[1], n_channels: int = 1) -> np.ndarray:
    """Float32 patches ``(N, *spatial, frames * n_channels)`` normalized per patch.

    ``method="percentile"``: ``(x - p_low) / (p_high - p_low)`` per patch and image channel,
    jointly over pixels and frames; a constant patch becomes 0. ``"none"``: cast only.
    """
    if method not in NORMALIZE_MODES:
        raise InputError("normalize", f"{method!r} is not one of {', '.join(NORMALIZE_MODES)}")
    x = np.asarray(patches, dtype=np.float32)
    if method == "none" or x.shape[0] == 0:
        return x.copy() if x is patches else x
    n = x.shape[0]
    grouped = x.reshape(n, -1, n_channels)
    lo, hi = np.percentile(grouped, [low, high], axis=1)  # (N, C) each
    scale = hi - lo
    scale = np.where(scale > 1e-12, scale, np.inf).astype(np.float32)
    return ((grouped - lo[:, None, :].astype(np.float32)) / scale[:, None, :]).reshape(x.shape)


# ---------------------------------------------------------------------------------------
# Training data


class TrainingPatches(NamedTuple):
    """Labelled raw patches with their split keys (``ids``) and the files they came from
    (``sources``, named in errors about too few examples of a class)."""

    patches: np.ndarray
    labels: list[str]
    ids: list[str]
    sources: list[str]


def concatenate_patches(parts: Sequence[TrainingPatches]) -> TrainingPatches:
    """One :class:`TrainingPatches` of several (e.g. the samples' points and a patch folder)."""
    if not parts:
        raise InputError("classification", "no training data")
    return TrainingPatches(np.concatenate([p.patches for p in parts]), [c for p in parts for c in p.labels],
                           [i for p in parts for i in p.ids], [s for p in parts for s in p.sources])


def training_patches_from_points(image, axes, annotations, settings: Classification, *, channels=None,
                                 sample: str | None = None, class_names=None, class_column=None) -> TrainingPatches:
    """The patches of a sample's point annotations (napari CSVs as
    :func:`snakescope.io.annotations.read_point_annotations` reads them, or such a table),
    cut with the settings' ``patch_size`` (``patch_size_z`` for 3D) and ``time_window``.

    ids are ``"<sample>:<file>:<row>"`` (``"<file>:<row>"`` without ``sample``), the keys
    of the saved split."""
    array, axes = unwrap_image(image, axes)
    if isinstance(annotations, pd.DataFrame):
        table = annotations
    else:
        table = read_point_annotations(annotations, axes, class_names=class_names, image_shape=array.shape,
                                       class_column=class_column)
    size = patch_size_for(settings, len(spatial_axes(axes)))
    patches = extract_patches(array, axes, table, size, int(settings.time_window), channels=channels)
    sources = table["source"].astype(str).tolist() if "source" in table.columns else ["points"] * len(table)
    rows = table["row"].tolist() if "row" in table.columns else list(range(1, len(table) + 1))
    prefix = f"{sample}:" if sample is not None else ""
    ids = [f"{prefix}{s}:{r}" for s, r in zip(sources, rows)]
    return TrainingPatches(patches, table["class_name"].astype(str).tolist(), ids, sources)


def training_patches_from_folder(folder, settings: Classification, spatial_ndim: int, *,
                                 spatial_shape: Sequence[int] | None = None) -> TrainingPatches:
    """A patch folder (see :func:`snakescope.io.annotations.load_patch_folder`) checked
    against the classifier's input.

    ``spatial_ndim``: 2 (YX patches) or 3 (ZYX). Each patch must have one channel per frame
    of ``settings.time_window`` (the workflow classifies one image channel); grey images
    saved as RGB (three equal channels) count as one channel. ``spatial_shape``: the patch
    size the point annotations give (:func:`patch_size_for`), which the folder must match
    when both feed one model (None: the folder's own shape). ids are
    ``"patch_folder:<class>/<file>"``, the keys of the saved split, independent of where
    the folder lies.
    """
    folder = Path(folder)
    n_channels = 2 * int(settings.time_window) + 1
    patches, labels, paths = load_patch_folder(folder)
    if int(spatial_ndim) == 2 and patches.ndim == 5 and patches.shape[-1] == 1 and patches.shape[-2] == n_channels:
        patches = patches[..., 0]  # YXC TIFFs with more than 4 channels (frames) are read as ZYX
    spatial = patches.shape[1:-1]
    if len(spatial) != int(spatial_ndim):
        kind = {2: "YX", 3: "ZYX"}
        raise InputError(folder, f"patches of shape {tuple(spatial)} ({len(spatial)}D) but a {spatial_ndim}D classifier "
                                 f"needs {kind.get(int(spatial_ndim), '?')} patches")
    if patches.shape[-1] == 3 and n_channels == 1:
        if np.array_equal(patches[..., 0], patches[..., 1]) and np.array_equal(patches[..., 0], patches[..., 2]):
            patches = patches[..., :1]
        else:
            raise InputError(folder, "colour (RGB) patches: the classifier sees one image channel; save them as grey images")
    if patches.shape[-1] != n_channels:
        raise InputError(folder, f"patches have {patches.shape[-1]} channel(s) but the classifier expects {n_channels} "
                                 "(one image channel per frame of classification.time_window)")
    if spatial_shape is not None and tuple(spatial) != tuple(int(s) for s in spatial_shape):
        raise InputError(folder, f"patch size {tuple(spatial)} differs from the {tuple(int(s) for s in spatial_shape)} cut "
                                 "around the point annotations (classification.patch_size / patch_size_z)")
    ids = [f"patch_folder:{Path(p).relative_to(folder).as_posix()}" for p in paths]
    return TrainingPatches(patches, labels, ids, [str(p) for p in paths])
