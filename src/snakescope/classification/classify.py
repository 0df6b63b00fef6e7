"""Object classification: sparse point annotations -> patches -> a Keras CNN -> classes.

The classification stage of the workflow, in the order a facility uses it:

1. **Annotations.** :func:`read_point_annotations` reads the CSV files napari's points layer
   saves: one file per class (class from the file name, ``points_<class>.csv`` or
   ``<class>.csv``; ``points_sparse_<class>.csv`` also gives ``<class>``), or one file with a
   class column (``class_name``, ``class`` or ``label``). Coordinates are in the image's axes
   without the channel axis (``t, (z,) y, x`` for a time-lapse), pixel units, as napari
   writes them (``index,axis-0,axis-1,...``; columns named ``t, z, y, x`` are accepted too).
   Only some cells of each class need to be marked. A folder of ready patches (one subfolder
   per class, PNG or TIFF) is read by :func:`load_patch_folder` (checked against the
   classifier's input by :func:`training_patches_from_folder`).
2. **Patches.** :func:`extract_patches` cuts a patch centred on each point (the centre
   pixel is at index ``size // 2``), in space (YX or ZYX) or in space and time (``2 *
   time_window + 1`` frames around the point, stacked as channels, for events such as
   divisions). Borders are padded by reflection (``numpy.pad(mode="reflect")``, also along
   time). Only the region around the points is read from the (zarr) array, in blocks of at
   most ``max_read_bytes``; whole volumes are never loaded.
3. **Split.** :func:`make_or_load_split` makes one stratified, seeded train / validation /
   test split and saves it (CSV, or JSON for a ``.json`` path); once saved it is reused as
   it is (a new seed does not re-split: re-splitting on every run leaks test data into
   training). Delete the file to make a new split.
4. **Training.** :func:`train_classifier` trains :func:`build_classifier` (the classic
   conv/pool stack: 32, 64, 128, 128 filters, then dense 256 and 128 with dropout 0.5; depth,
   filters, dense sizes and dropout configurable), with class weights or balanced sampling
   against class imbalance, on-the-fly seeded augmentation (flips, 90 degree rotations,
   noise, out-of-focus blur, small intensity changes) and early stopping on the validation
   loss. It writes into ``out_dir``: ``best.weights.h5`` (lowest validation loss),
   ``last.weights.h5``, ``config.json`` (architecture, class names, patch geometry and
   normalization: all that prediction needs to rebuild the model), ``training_log.csv``
   (Keras CSVLogger, one row per epoch), ``training_curves.png``, ``summary.json`` and,
   when the split has a test part, the evaluation of the best weights on it under ``test/``.
5. **Application.** :func:`classify_objects` adds ``class_name`` and one probability column
   ``p_<class>`` per class to a table of object centroids, in batches (memory is bounded
   by ``batch_size`` patches whatever the number of objects). :func:`evaluate` writes the
   confusion matrix (CSV + PNG), per-class precision / recall / F1, balanced accuracy and
   macro F1; :func:`evaluate_annotations` does it for any labelled point set.
6. **Evaluation on segmented objects.** :func:`match_points_to_objects` finds the object
   under each ground-truth point in the label image and its predicted class;
   :func:`object_class_metrics` counts per class (matched points only; points on
   background are counted apart) and :func:`pool_classification_metrics` sums the counts
   over samples.

Normalization
-------------
Patches are normalized *per patch* by percentiles (``low=1``, ``high=99.8``, as in the rest
of the pipeline): ``(x - p_low) / (p_high - p_low)`` per image channel, jointly over the
pixels and the frames of the patch (so intensity changes over the time window are kept);
no clipping; constant patches become 0. With ``normalize="none"`` the patches are taken as
already normalized (e.g. cut from the pipeline's normalized OME-Zarr) and only cast to
float32. The choice is stored in ``config.json`` and applied again at prediction.

Transfer learning
-----------------
``pretrained_weights`` (a local file; nothing is ever downloaded) is either

* a previous snakescope classifier: its folder, or a ``*.weights.h5`` file next to its
  ``config.json``. Every layer of the new model whose name and weight shapes match is
  initialised from it (the final class layer only when the class names are identical), so
  a model trained on one data set can be fine-tuned on a few annotations of another;
* with ``backbone="<name>"`` (any ``keras.applications`` model, e.g. ``"MobileNetV2"``,
  with ``backbone_kwargs`` such as ``{"alpha": 0.35}``): the weights of that backbone, built
  with ``weights=None, include_top=False`` and then ``load_weights(path)`` (e.g. the
  ``*_no_top.h5`` file of Keras' applications, copied to the cluster beforehand). One-channel
  patches are repeated to three channels, others mapped by a 1x1 convolution, and scaled to
  ``[-1, 1]``. ``freeze_pretrained=True`` trains only the new layers.

Keras and TensorFlow are imported inside the functions, so this module imports in every
rule environment.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from snakescope.io.atomic import atomic_path, write_json
from snakescope.errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DENSE",
    "DEFAULT_FILTERS",
    "build_classifier",
    "class_weights",
    "classifier_class_names",
    "classify_objects",
    "confusion_counts",
    "evaluate",
    "evaluate_annotations",
    "extract_patches",
    "load_classifier",
    "load_patch_folder",
    "make_or_load_split",
    "match_points_to_objects",
    "metrics_from_counts",
    "normalize_patches",
    "object_class_metrics",
    "patches_from_annotations",
    "plot_object_confusion",
    "pool_classification_metrics",
    "predict_patches",
    "read_point_annotations",
    "train_classifier",
    "training_patches_from_folder",
    "write_training_confusion",
]

DEFAULT_FILTERS = (32, 64, 128, 128)
DEFAULT_DENSE = (256, 128)
CLASS_COLUMNS = ("class_name", "class", "label")
IMBALANCE_MODES = ("weights", "sampling", "none")
NORMALIZE_MODES = ("percentile", "none")
SPLITS = ("train", "val", "test")
CONFIG_NAME = "config.json"
BEST_WEIGHTS = "best.weights.h5"
LAST_WEIGHTS = "last.weights.h5"
LOG_NAME = "training_log.csv"
CURVES_NAME = "training_curves.png"
PATCH_EXTENSIONS = (".png", ".tif", ".tiff")
_DEFAULT_READ_BYTES = 64 * 2**20
_SPARSE_READ_BYTES = 4 * 2**20  # above this, a read at most 8x the patches' size (sparse points)


# ---------------------------------------------------------------------------------------
# Axes


def _parse_axes(axes, where="axes") -> str:
    """Lower-case axes string; an int is a number of axes without channel (2: yx, 3: tyx,
    4: tzyx)."""
    if isinstance(axes, (int, np.integer)):
        defaults = {2: "yx", 3: "tyx", 4: "tzyx"}
        if int(axes) not in defaults:
            raise InputError(where, f"{axes} axes: give 2 (yx), 3 (tyx), 4 (tzyx) or an axes string")
        return defaults[int(axes)]
    text = str(axes).lower()
    bad = sorted(set(text) - set("tczyx"))
    if bad:
        raise InputError(where, f"axes {axes!r}: letters must come from t, c, z, y, x (got {''.join(bad)})")
    if len(set(text)) != len(text):
        raise InputError(where, f"axes {axes!r}: a letter appears twice")
    if "y" not in text or "x" not in text:
        raise InputError(where, f"axes {axes!r}: y and x are required")
    return text


def _point_axes(axes: str) -> str:
    """The axes points carry: the image axes without the channel."""
    return axes.replace("c", "")


def _spatial_axes(axes: str) -> str:
    return "".join(a for a in axes if a in "zyx")


def _unwrap_image(image, axes):
    """(array, axes) from an array, a zarr array or a :class:`snakescope.ngff.NgffImage`."""
    if hasattr(image, "levels") and hasattr(image, "axes"):
        axes = axes or image.axes
        image = image.data
    if axes is None:
        raise InputError("axes", "the image axes are needed (e.g. 'tyx', 'tczyx')")
    axes = _parse_axes(axes)
    if len(axes) != len(image.shape):
        raise InputError("axes", f"axes {axes!r} do not match the image's {len(image.shape)} dimensions {tuple(image.shape)}")
    return image, axes


# ---------------------------------------------------------------------------------------
# Annotations


def _annotation_files(paths) -> list[tuple[Path, str | None]]:
    """[(file, class from a dict key or None)] from a glob, file, folder, list or dict."""
    if isinstance(paths, dict):
        return [(Path(p), str(k)) for k, p in paths.items()]
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[tuple[Path, str | None]] = []
    for item in paths:
        text = str(item)
        if any(ch in text for ch in "*?["):
            matches = sorted(glob.glob(text))
            files.extend((Path(m), None) for m in matches)
        elif Path(text).is_dir():
            files.extend((p, None) for p in sorted(Path(text).glob("*.csv")))
        else:
            files.append((Path(text), None))
    return files


def _class_from_filename(path: Path) -> str:
    stem = path.stem
    for prefix in ("points_sparse_", "points_"):
        if stem.startswith(prefix) and len(stem) > len(prefix):
            return stem[len(prefix):]
    return stem


def _describe_point(names: str, values) -> str:
    return ", ".join(f"{a}={float(v):g}" for a, v in zip(names, values))


def _outside(rounded: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    return np.any((rounded < 0) | (rounded > np.asarray(shape) - 1), axis=1)


def _outside_error(where, row, names, values, shape):
    extent = ", ".join(f"{a} 0..{n - 1}" for a, n in zip(names, shape))
    return InputError(where, f"row {row}: point ({_describe_point(names, values)}) lies outside the image ({extent})")


def read_point_annotations(
    paths,
    axes,
    *,
    class_names: Sequence[str] | None = None,
    image_shape: Sequence[int] | None = None,
    class_column: str | None = None,
) -> pd.DataFrame:
    """Read napari points CSV files into one table of labelled points.

    Parameters
    ----------
    paths : a glob pattern, a file, a folder (all ``*.csv`` in it), a list of those, or a
        dict ``{class_name: file}``.
    axes : the image's axes (``"tyx"``, ``"tczyx"``, ...; the channel axis is dropped, as
        napari drops it from points) or the number of axes without channel (the
        ``ndim_without_channel``: 2 is ``yx``, 3 is ``tyx``, 4 is ``tzyx``).
    class_names : if given, a class outside it is an error (e.g. the model's classes).
    image_shape : if given (shape in ``axes``, channel included when ``axes`` has one),
        points outside the image are an error.
    class_column : name of the class column; default the first of ``class_name``,
        ``class``, ``label`` present. Files without one take the class from their name
        (``points_<class>.csv``, ``points_sparse_<class>.csv`` or ``<class>.csv``), or from
        the dict key, which takes precedence.

    Returns a DataFrame with columns ``class_name``, the point axes (``t``, ``z``, ``y``,
    ``x`` as present; float, pixel units), ``source`` (the file) and ``row`` (1-based data
    row in that file). Problems raise :class:`InputError` naming the file and the row.
    """
    full_axes = _parse_axes(axes)
    names = _point_axes(full_axes)
    shape = None
    if image_shape is not None:
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) == len(full_axes):
            shape = tuple(n for a, n in zip(full_axes, image_shape) if a != "c")
        elif len(image_shape) == len(names):
            shape = image_shape
        else:
            raise InputError("image_shape", f"{image_shape} does not match the axes {full_axes!r}")
    files = _annotation_files(paths)
    if not files:
        raise InputError(str(paths), "no annotation CSV files found")
    allowed = None if class_names is None else [str(c) for c in class_names]
    tables = []
    for path, key in files:
        tables.append(_read_one_csv(path, key, names, class_column, allowed, shape))
    table = pd.concat(tables, ignore_index=True)
    return table


def _read_one_csv(path: Path, key, names: str, class_column, allowed, shape) -> pd.DataFrame:
    if not path.is_file():
        raise InputError(path, "annotation file not found")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise InputError(path, "empty file: expected a header such as 'index,axis-0,axis-1,...'") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not a readable CSV file ({exc})") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    lower = {c.lower(): c for c in raw.columns}
    n = len(names)
    napari = [f"axis-{i}" for i in range(n)]
    axis_columns = sorted((c for c in lower if c.startswith("axis-")), key=lambda c: (len(c), c))
    if axis_columns:
        if axis_columns != napari:
            raise InputError(
                path,
                f"header: {len(axis_columns)} coordinate columns ({', '.join(axis_columns)}) but the image axes "
                f"{names!r} need {n} ({', '.join(napari)}, in the order {', '.join(names)})",
            )
        coordinate_columns = [lower[c] for c in napari]
    elif all(a in lower for a in names):
        coordinate_columns = [lower[a] for a in names]
    else:
        raise InputError(
            path,
            f"header: expected the coordinate columns {', '.join(napari)} (napari points layer, axes "
            f"{', '.join(names)}) or {', '.join(names)}; found {', '.join(raw.columns) or 'none'}",
        )
    if class_column is not None and class_column.lower() not in lower and key is None:
        raise InputError(path, f"header: no class column {class_column!r}; found {', '.join(raw.columns)}")
    column = None
    if key is None:
        candidates = [class_column] if class_column is not None else list(CLASS_COLUMNS)
        column = next((lower[c.lower()] for c in candidates if c.lower() in lower), None)
    rows = np.arange(1, len(raw) + 1)
    if column is not None:
        classes = raw[column].astype(str).str.strip()
        empty = np.flatnonzero(classes.to_numpy() == "")
        if empty.size:
            raise InputError(path, f"row {rows[empty[0]]}: empty class in column {column!r}")
    else:
        name = key if key is not None else _class_from_filename(path)
        classes = pd.Series([name] * len(raw), dtype=object)
    coordinates = np.empty((len(raw), n), dtype=np.float64)
    for j, col in enumerate(coordinate_columns):
        values = pd.to_numeric(raw[col].str.strip(), errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise InputError(path, f"row {rows[bad[0]]}: coordinate {col} ({names[j]}) is not a number: {raw[col].iloc[bad[0]]!r}")
        coordinates[:, j] = values
    if allowed is not None:
        unknown = np.flatnonzero(~classes.isin(allowed).to_numpy())
        if unknown.size:
            i = unknown[0]
            raise InputError(path, f"row {rows[i]}: unknown class {classes.iloc[i]!r}; the known classes are {', '.join(allowed)}")
    if shape is not None and len(raw):
        rounded = np.floor(coordinates + 0.5)
        outside = np.flatnonzero(_outside(rounded, shape))
        if outside.size:
            i = outside[0]
            raise _outside_error(path, rows[i], names, coordinates[i], shape)
    table = pd.DataFrame({"class_name": classes.to_numpy(dtype=object)})
    for j, a in enumerate(names):
        table[a] = coordinates[:, j]
    table["source"] = str(path)
    table["row"] = rows.astype(np.int64)
    return table


# ---------------------------------------------------------------------------------------
# Patches


def _reflect(index: np.ndarray, n: int) -> np.ndarray:
    """Map any integer index into ``[0, n)`` by reflection (``numpy.pad`` "reflect" mode,
    repeated as often as needed)."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    m = np.mod(index, period)
    return np.where(m >= n, period - m, m)


def _patch_shape(axes: str, patch_size) -> tuple[int, ...]:
    spatial = _spatial_axes(axes)
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


def _points_array(points, names: str) -> tuple[np.ndarray, list, list]:
    """(coordinates (N, len(names)), sources, rows) from a DataFrame or an array."""
    if isinstance(points, pd.DataFrame):
        missing = [a for a in names if a not in points.columns]
        if missing:
            raise InputError("points", f"missing coordinate column(s) {', '.join(missing)} (axes {names!r}); found {', '.join(map(str, points.columns))}")
        coordinates = points[list(names)].to_numpy(dtype=np.float64)
        sources = points["source"].tolist() if "source" in points.columns else ["points"] * len(points)
        rows = points["row"].tolist() if "row" in points.columns else list(range(1, len(points) + 1))
    else:
        coordinates = np.asarray(points, dtype=np.float64).reshape(-1, len(names)) if np.size(points) else np.zeros((0, len(names)))
        sources, rows = ["points"] * len(coordinates), list(range(1, len(coordinates) + 1))
    return coordinates, sources, rows


def extract_patches(
    image,
    axes: str | None,
    points,
    patch_size,
    time_window: int = 0,
    *,
    channels: Sequence[int] | None = None,
    max_read_bytes: int = _DEFAULT_READ_BYTES,
) -> np.ndarray:
    """Cut one patch centred on each point.

    Parameters
    ----------
    image : numpy array, zarr array or :class:`snakescope.ngff.NgffImage` (then ``axes``
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
    image, axes = _unwrap_image(image, axes)
    names = _point_axes(axes)
    sizes = _patch_shape(axes, patch_size)
    time_window = int(time_window)
    if time_window < 0:
        raise InputError("time_window", f"must be >= 0, got {time_window}")
    if time_window and "t" not in axes:
        raise InputError("time_window", f"a time window needs a t axis; the image axes are {axes!r}")
    coordinates, sources, rows = _points_array(points, names)
    shape = tuple(int(image.shape[axes.index(a)]) for a in names)
    rounded = np.floor(coordinates + 0.5).astype(np.int64)
    outside = np.flatnonzero(_outside(rounded, shape)) if len(rounded) else np.array([], int)
    if outside.size:
        i = outside[0]
        raise _outside_error(sources[i], rows[i], names, coordinates[i], shape)

    if "c" in axes:
        n_image_channels = int(image.shape[axes.index("c")])
        channel_index = np.arange(n_image_channels) if channels is None else np.asarray(channels, dtype=np.int64)
        if channel_index.size == 0 or channel_index.min() < 0 or channel_index.max() >= n_image_channels:
            raise InputError("channels", f"{list(channel_index)} not within the image's {n_image_channels} channels")
    else:
        if channels is not None and list(channels) not in ([0],):
            raise InputError("channels", f"the image has no channel axis (axes {axes!r})")
        channel_index = np.zeros(1, dtype=np.int64)
    n_frames = 2 * time_window + 1
    n_channels = len(channel_index)
    out = np.empty((len(rounded), *sizes, n_frames * n_channels), dtype=image.dtype)
    if not len(rounded):
        return out

    # Index matrices (N, size) per non-channel axis, reflected into the image.
    offsets = {}
    spatial = _spatial_axes(axes)
    for a, s in zip(spatial, sizes):
        offsets[a] = np.arange(s) - s // 2
    if "t" in axes:
        offsets["t"] = np.arange(-time_window, time_window + 1)
    index = {a: _reflect(rounded[:, names.index(a), None] + offsets[a][None, :], shape[names.index(a)]) for a in names}

    # Output order: spatial axes (image order), then frames, then channels.
    present = [a for a in axes]
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


def normalize_patches(patches: np.ndarray, *, method: str = "percentile", low: float = 1.0,
                      high: float = 99.8, n_channels: int = 1) -> np.ndarray:
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


def patches_from_annotations(image, axes, annotations, patch_size, time_window: int = 0, *,
                             channels=None, class_names=None, class_column=None):
    """Read annotations (see :func:`read_point_annotations`; or an already read table) and cut
    their patches. Returns ``(patches, labels, ids, table)``; ids are ``"<file>:<row>"``, the
    keys of the saved split."""
    array, axes = _unwrap_image(image, axes)
    if isinstance(annotations, pd.DataFrame):
        table = annotations
    else:
        table = read_point_annotations(annotations, axes, class_names=class_names,
                                       image_shape=array.shape, class_column=class_column)
    patches = extract_patches(array, axes, table, patch_size, time_window, channels=channels)
    ids = [f"{s}:{r}" for s, r in zip(table.get("source", ["points"] * len(table)), table.get("row", range(1, len(table) + 1)))]
    return patches, table["class_name"].astype(str).tolist(), ids, table


def load_patch_folder(folder, *, extensions: Sequence[str] = PATCH_EXTENSIONS):
    """Read ready patches, one subfolder per class (PNG or TIFF files).

    2D files give ``(Y, X, 1)``; RGB(A) PNGs ``(Y, X, 3)`` (alpha dropped); TIFFs with 3
    dimensions are ``YXC`` when the last axis has at most 4 entries, ``CYX`` when the first
    has, else ``ZYX``. All patches must have one shape. Returns ``(patches, labels, paths)``
    with patches ``(N, ..., C)`` in the files' dtype. Empty class folders are skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "patch folder not found")
    extensions = tuple(e.lower() for e in extensions)
    arrays, labels, paths = [], [], []
    reference = None
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in extensions)
        if not files:
            log.warning("%s: no %s files; class skipped", class_dir, "/".join(extensions))
            continue
        for path in files:
            array = _read_patch_file(path)
            if reference is None:
                reference = (array.shape, path)
            elif array.shape != reference[0]:
                raise InputError(path, f"patch shape {array.shape} differs from {reference[0]} of {reference[1]}")
            arrays.append(array)
            labels.append(class_dir.name)
            paths.append(str(path))
    if not arrays:
        raise InputError(folder, f"no patches: expected one subfolder per class with {'/'.join(extensions)} files")
    return np.stack(arrays), labels, paths


def _read_patch_file(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            array = np.asarray(tifffile.imread(path))
            if array.ndim == 3:
                if array.shape[-1] <= 4:
                    pass
                elif array.shape[0] <= 4:
                    array = np.moveaxis(array, 0, -1)
                else:
                    array = array[..., None]
            elif array.ndim == 2:
                array = array[..., None]
        else:
            from PIL import Image

            with Image.open(path) as img:
                array = np.asarray(img)
            if array.ndim == 3 and array.shape[-1] == 4:
                array = array[..., :3]
            if array.ndim == 2:
                array = array[..., None]
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read the image ({exc})") from None
    if array.ndim not in (3, 4):
        raise InputError(path, f"unsupported patch dimensions {array.shape}")
    return array


def training_patches_from_folder(folder, spatial_ndim: int, n_channels: int = 1, spatial_shape=None):
    """A patch folder (see :func:`load_patch_folder`) checked against the classifier's input.

    ``spatial_ndim``: 2 (YX patches) or 3 (ZYX). ``n_channels``: channels per patch the
    model sees (the workflow classifies one image channel, so ``2 * time_window + 1``);
    grey images saved as RGB (three equal channels) count as one channel. ``spatial_shape``:
    the patch size the point annotations give, which the folder must match (None: the
    folder's own shape). Returns ``(patches, labels, ids, sources)``; ids are
    ``"patch_folder:<class>/<file>"``, the keys of the saved split, independent of where the
    folder lies.
    """
    folder = Path(folder)
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
    return patches, labels, ids, [str(p) for p in paths]


# ---------------------------------------------------------------------------------------
# Split


def _check_fractions(fractions) -> tuple[float, float, float]:
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6 or fractions[0] <= 0:
        raise InputError("split fractions", f"need (train, validation, test) >= 0 summing to 1 with train > 0, got {fractions}")
    return fractions


def make_or_load_split(
    labels: Sequence[str],
    path,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    *,
    ids: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
) -> np.ndarray:
    """One stratified train / validation / test split, made once and saved, then reused.

    When ``path`` exists it is read back and returned as it is (``fractions`` and ``seed``
    are then ignored): items are matched by ``ids`` (default their position), and an item
    missing from the saved split, or saved with another class, is an error, since
    re-splitting would move earlier test items into training. Otherwise each class is
    shuffled with ``seed`` and cut into ``round(n * fraction)`` items (at least one per part
    with a non-zero fraction, the rest for training), and the split is saved atomically
    (CSV with columns ``id, class_name, split``; JSON for a ``.json`` path).

    ``sources`` (one per label, e.g. the annotation file) names the file of a class that has
    too few examples. Returns an array of ``"train"``/``"val"``/``"test"`` per label.
    """
    labels = [str(c) for c in labels]
    path = Path(path)
    ids = [str(i) for i in ids] if ids is not None else [str(i) for i in range(len(labels))]
    if len(ids) != len(labels):
        raise InputError("split", f"{len(ids)} ids for {len(labels)} labels")
    if len(set(ids)) != len(ids):
        duplicate = pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]
        raise InputError("split", f"duplicate id {duplicate!r}")
    if path.exists():
        return _load_split(path, labels, ids)
    fractions = _check_fractions(fractions)
    needed = sum(1 for f in fractions if f > 0)
    labels_arr = np.asarray(labels, dtype=object)
    split = np.empty(len(labels), dtype=object)
    rng = np.random.default_rng(seed)
    for name in sorted(set(labels)):
        members = np.flatnonzero(labels_arr == name)
        n = len(members)
        if n < needed:
            where = "labels"
            if sources is not None:
                files = sorted({str(sources[i]) for i in members})
                where = ", ".join(files)
            raise InputError(
                where,
                f"class {name!r} has {n} example(s): a train/validation/test split with fractions {fractions} "
                f"needs at least {needed} per class; annotate at least {needed - n} more",
            )
        n_val = max(1, round(n * fractions[1])) if fractions[1] > 0 else 0
        n_test = max(1, round(n * fractions[2])) if fractions[2] > 0 else 0
        while n - n_val - n_test < 1:
            if n_val >= n_test and n_val > 1:
                n_val -= 1
            else:
                n_test -= 1
        order = members[rng.permutation(n)]
        split[order[:n_test]] = "test"
        split[order[n_test:n_test + n_val]] = "val"
        split[order[n_test + n_val:]] = "train"
    table = pd.DataFrame({"id": ids, "class_name": labels, "split": split.astype(str)})
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".json":
            data = {"seed": int(seed), "fractions": list(fractions), "items": table.to_dict("records")}
            tmp.write_text(json.dumps(data, indent=1) + "\n")
        else:
            table.to_csv(tmp, index=False)
    return split.astype(str)


def _load_split(path: Path, labels: list[str], ids: list[str]) -> np.ndarray:
    try:
        if path.suffix.lower() == ".json":
            table = pd.DataFrame(json.loads(path.read_text())["items"], dtype=str)
        else:
            table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, KeyError, pd.errors.ParserError) as exc:
        raise InputError(path, f"cannot read the saved split ({exc}); delete it to make a new one") from None
    missing = {"id", "class_name", "split"} - set(table.columns)
    if missing:
        raise InputError(path, f"saved split lacks column(s) {', '.join(sorted(missing))}; delete it to make a new one")
    bad = np.flatnonzero(~table["split"].isin(SPLITS).to_numpy())
    if bad.size:
        raise InputError(path, f"row {bad[0] + 1}: split {table['split'].iloc[bad[0]]!r} is not one of {', '.join(SPLITS)}")
    saved = dict(zip(table["id"], zip(table["class_name"], table["split"])))
    out = np.empty(len(ids), dtype=object)
    for i, (item, label) in enumerate(zip(ids, labels)):
        if item not in saved:
            raise InputError(
                path,
                f"item {item!r} (class {label!r}) is not in the saved split: the annotations changed since the split "
                "was made; delete the split file to make a new one (earlier test items may then end up in training)",
            )
        saved_label, part = saved[item]
        if saved_label != label:
            raise InputError(path, f"item {item!r} was saved as class {saved_label!r} but is now {label!r}; delete the split file to re-split")
        out[i] = part
    return out.astype(str)


def class_weights(labels: Sequence[str], class_names: Sequence[str]) -> dict[str, float]:
    """Inverse-frequency class weights normalized so that the mean weight per example is 1:
    ``w_c = N / (K * n_c)`` over the ``K`` classes present (absent classes get 0)."""
    labels = list(labels)
    counts = {c: labels.count(c) for c in class_names}
    present = [c for c in class_names if counts[c] > 0]
    total = len(labels)
    return {c: (total / (len(present) * counts[c]) if counts[c] else 0.0) for c in class_names}


# ---------------------------------------------------------------------------------------
# Model


def build_classifier(
    input_shape: Sequence[int],
    n_classes: int,
    filters: Sequence[int] = DEFAULT_FILTERS,
    dense: Sequence[int] = DEFAULT_DENSE,
    dropout: float = 0.5,
    *,
    batch_norm: bool = False,
    global_pool: bool = False,
    convs_per_block: int = 1,
    resize_to: int | Sequence[int] | None = None,
    backbone: str | None = None,
    backbone_kwargs: dict | None = None,
    backbone_weights: str | os.PathLike | None = None,
):
    """A Keras CNN classifier for patches ``input_shape`` = ``(Y, X, C)`` or ``(Z, Y, X, C)``.

    Default: the classic conv/pool stack, one 3x3 convolution (ReLU) and a 2x max pooling
    per block with ``filters`` = (32, 64, 128, 128) (depth = number of blocks), flatten,
    dense 256 and 128 (ReLU) each followed by dropout 0.5, then softmax. ZYX patches use 3D
    convolutions; an axis is pooled only while it is at least 2 long. Options:
    ``batch_norm`` (after each convolution), ``global_pool`` (global average pooling instead
    of flatten), ``convs_per_block``, ``resize_to`` (2D only: resize the input first, e.g. 64
    -> 48 for speed). ``backbone``: a ``keras.applications`` name replacing the conv stack
    (2D only), built with ``weights=None`` and loaded from ``backbone_weights`` if given.
    Layer names are fixed (``block{i}_conv{j}``, ``dense{i}``, ``classes``) so that weights
    transfer between models by name.
    """
    import keras
    from keras import layers

    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) not in (3, 4):
        raise InputError("input_shape", f"{input_shape}: expected (Y, X, C) or (Z, Y, X, C)")
    is3d = len(input_shape) == 4
    inputs = keras.Input(shape=input_shape, name="patch")
    x = inputs
    if resize_to is not None:
        if is3d:
            raise InputError("resize_to", "resizing is for 2D patches only")
        size = (int(resize_to),) * 2 if np.isscalar(resize_to) else tuple(int(s) for s in resize_to)
        x = layers.Resizing(*size, interpolation="bilinear", name="resize")(x)
    if backbone is not None:
        if is3d:
            raise InputError("backbone", "keras.applications backbones are 2D; 3D patches use the default stack")
        x = _backbone_features(x, backbone, backbone_kwargs or {}, backbone_weights)
    else:
        Conv = layers.Conv3D if is3d else layers.Conv2D
        Pool = layers.MaxPooling3D if is3d else layers.MaxPooling2D
        spatial = list(x.shape[1:-1])
        for i, f in enumerate(filters, start=1):
            for j in range(1, int(convs_per_block) + 1):
                x = Conv(int(f), 3, padding="same", use_bias=not batch_norm, name=f"block{i}_conv{j}")(x)
                if batch_norm:
                    x = layers.BatchNormalization(name=f"block{i}_bn{j}")(x)
                x = layers.Activation("relu", name=f"block{i}_relu{j}")(x)
            pool = tuple(2 if s >= 2 else 1 for s in spatial)
            if any(p > 1 for p in pool):
                x = Pool(pool_size=pool, padding="same", name=f"block{i}_pool")(x)
                spatial = [math.ceil(s / p) for s, p in zip(spatial, pool)]
        if global_pool:
            x = (layers.GlobalAveragePooling3D if is3d else layers.GlobalAveragePooling2D)(name="global_pool")(x)
        else:
            x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate(dense, start=1):
        x = layers.Dense(int(units), activation="relu", name=f"dense{i}")(x)
        if dropout:
            x = layers.Dropout(float(dropout), name=f"dropout{i}")(x)
    if not dense and dropout:
        x = layers.Dropout(float(dropout), name="dropout")(x)
    outputs = layers.Dense(int(n_classes), activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs, name="snakescope_classifier")


def _backbone_features(x, name: str, kwargs: dict, weights_path):
    import keras
    from keras import layers

    constructor = getattr(keras.applications, name, None)
    if constructor is None or not callable(constructor):
        raise InputError("backbone", f"{name!r} is not a keras.applications model")
    channels = int(x.shape[-1])
    if channels == 1:
        x = layers.Concatenate(name="to_rgb")([x, x, x])
    elif channels != 3:
        x = layers.Conv2D(3, 1, name="to_rgb")(x)
    x = layers.Rescaling(2.0, offset=-1.0, name="to_signed")(x)
    base = constructor(include_top=False, weights=None, input_shape=tuple(int(s) for s in x.shape[1:]),
                       pooling="avg", **kwargs)
    base.name = "backbone"
    if weights_path is not None:
        weights_path = Path(weights_path)
        if not weights_path.is_file():
            raise InputError(weights_path, "backbone weights file not found")
        try:
            base.load_weights(str(weights_path))
        except (ValueError, OSError, KeyError) as exc:
            raise InputError(weights_path, f"cannot load these weights into {name}({kwargs}) without top: {exc}") from None
    return base(x)


def _architecture_of(config: dict) -> dict:
    keys = ("filters", "dense", "dropout", "batch_norm", "global_pool", "convs_per_block", "resize_to",
            "backbone", "backbone_kwargs")
    return {k: config["architecture"][k] for k in keys if k in config["architecture"]}


def _transfer_from_classifier(model, source: Path, class_names: list[str]) -> int:
    """Copy weights of same-named, same-shaped layers from a saved snakescope classifier."""
    source = Path(source)
    folder, weights = (source, source / BEST_WEIGHTS) if source.is_dir() else (source.parent, source)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file() or not weights.is_file():
        raise InputError(source, f"not a snakescope classifier: needs {CONFIG_NAME} and a *.weights.h5 file")
    config = json.loads(config_path.read_text())
    donor = build_classifier(config["input_shape"], len(config["class_names"]), **_architecture_of(config))
    donor.load_weights(str(weights))
    donor_layers = {layer.name: layer for layer in donor.layers}
    copied = 0
    for layer in model.layers:
        other = donor_layers.get(layer.name)
        if other is None or not layer.weights:
            continue
        if layer.name == "classes" and list(config["class_names"]) != list(class_names):
            continue
        values = other.get_weights()
        if [w.shape for w in values] != [tuple(w.shape) for w in layer.weights]:
            continue
        layer.set_weights(values)
        layer._snakescope_pretrained = True
        copied += 1
    if copied == 0:
        raise InputError(source, "no layer of this classifier matches the new model (different architecture or input)")
    return copied


# ---------------------------------------------------------------------------------------
# Training


def _augment(x: np.ndarray, rng: np.random.Generator, *, spatial_ndim: int, noise: float, blur: float,
             intensity: float) -> np.ndarray:
    """Augment a float batch (a new array): flips, 90 degree rotations (square YX),
    Gaussian noise, out-of-focus blur and a small gain/offset change, per sample."""
    from scipy import ndimage

    out = np.empty_like(x)
    y_axis, x_axis = spatial_ndim - 2, spatial_ndim - 1  # in a single sample (*spatial, C)
    square = x.shape[-3] == x.shape[-2]
    for i, sample in enumerate(x):
        s = sample
        if rng.random() < 0.5:
            s = np.flip(s, axis=y_axis)
        if rng.random() < 0.5:
            s = np.flip(s, axis=x_axis)
        k = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
        if k:
            s = np.rot90(s, k, axes=(y_axis, x_axis))
        s = np.array(s, dtype=np.float32)
        if blur and rng.random() < blur:
            sigma = [0.0] * s.ndim
            sigma[y_axis] = sigma[x_axis] = float(rng.uniform(0.5, 1.5))
            s = ndimage.gaussian_filter(s, sigma, mode="reflect")
        if intensity:
            s = s * np.float32(1 + rng.uniform(-intensity, intensity)) + np.float32(rng.uniform(-intensity, intensity))
        if noise and rng.random() < 0.5:
            s = s + rng.normal(0, rng.uniform(0, noise), s.shape).astype(np.float32)
        out[i] = s
    return out


def _make_sequence(x, y, weights, batch_size, seed, *, augment, sampling, spatial_ndim, noise, blur, intensity):
    import keras

    class PatchSequence(keras.utils.PyDataset):
        """Batches of (patches, one-hot classes, sample weights), reshuffled each epoch."""

        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.rng = np.random.default_rng(seed)
            self.order = self._order()

        def _order(self):
            n = len(x)
            if sampling:
                p = weights / weights.sum()
                return self.rng.choice(n, size=n, replace=True, p=p)
            return self.rng.permutation(n)

        def __len__(self):
            return max(1, math.ceil(len(x) / batch_size))

        def __getitem__(self, index):
            batch = self.order[index * batch_size:(index + 1) * batch_size]
            xb = x[batch]
            if augment:
                xb = _augment(xb, self.rng, spatial_ndim=spatial_ndim, noise=noise, blur=blur, intensity=intensity)
            w = np.ones(len(batch), np.float32) if sampling else weights[batch]
            return xb, y[batch], w

        def on_epoch_end(self):
            self.order = self._order()

    return PatchSequence()


def _callbacks(out_dir: Path, patience: int, time_budget_s, reduce_lr_patience):
    import keras

    class BestCheckpoint(keras.callbacks.Callback):
        """Save the weights with the lowest validation loss (atomically) and remember the epoch."""

        def __init__(self):
            super().__init__()
            self.best = np.inf
            self.best_epoch = -1

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get("val_loss")
            if value is not None and np.isfinite(value) and value < self.best:
                self.best, self.best_epoch = float(value), int(epoch)
                _save_weights(self.model, out_dir / BEST_WEIGHTS)

    class TimeBudget(keras.callbacks.Callback):
        """Stop when the next epoch would overrun the budget (hard stop within an epoch)."""

        def __init__(self, seconds):
            super().__init__()
            self.seconds = seconds
            self.hit = False

        def on_train_begin(self, logs=None):
            self.start = self.epoch_start = time.perf_counter()
            self.longest = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            if time.perf_counter() - self.start > self.seconds:
                self.model.stop_training = self.hit = True

        def on_epoch_end(self, epoch, logs=None):
            now = time.perf_counter()
            self.longest = max(self.longest, now - self.epoch_start)
            if now - self.start + self.longest > self.seconds:
                self.model.stop_training = self.hit = True

    checkpoint = BestCheckpoint()
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=int(patience), restore_best_weights=False)
    callbacks = [checkpoint, stopper]
    if reduce_lr_patience:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                                           patience=int(reduce_lr_patience), min_lr=1e-6))
    budget = TimeBudget(float(time_budget_s)) if time_budget_s else None
    if budget is not None:
        callbacks.append(budget)
    callbacks.append(keras.callbacks.CSVLogger(str(out_dir / LOG_NAME)))
    return callbacks, checkpoint, stopper, budget


def _save_weights(model, path: Path) -> None:
    """Keras needs a ``.weights.h5`` name: save beside under a temporary one, then rename."""
    tmp = path.parent / f".partial-{os.getpid()}-{path.name}"
    try:
        model.save_weights(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _prepare_inputs(patches) -> np.ndarray:
    array = np.asarray(patches)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim not in (4, 5):
        raise InputError("patches", f"shape {array.shape}: expected (N, Y, X[, C]) or (N, Z, Y, X, C)")
    return array


def train_classifier(
    patches,
    labels: Sequence[str],
    out_dir,
    *,
    class_names: Sequence[str] | None = None,
    epochs: int = 100,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    imbalance: str = "weights",
    augment: bool = True,
    patience: int = 10,
    seed: int = 0,
    split_path=None,
    split: Sequence[str] | None = None,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    ids: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
    pretrained_weights=None,
    freeze_pretrained: bool = False,
    filters: Sequence[int] = DEFAULT_FILTERS,
    dense: Sequence[int] = DEFAULT_DENSE,
    dropout: float = 0.5,
    batch_norm: bool = False,
    global_pool: bool = False,
    convs_per_block: int = 1,
    resize_to=None,
    backbone: str | None = None,
    backbone_kwargs: dict | None = None,
    normalize: str = "percentile",
    percentiles: tuple[float, float] = (1.0, 99.8),
    time_window: int = 0,
    patch_size=None,
    noise: float = 0.05,
    blur: float = 0.2,
    intensity: float = 0.1,
    reduce_lr_patience: int | None = None,
    time_budget_s: float | None = None,
    tta: bool = False,
    verbose: int = 0,
) -> dict:
    """Train a classifier on labelled patches and write it to ``out_dir``.

    ``patches``: ``(N, Y, X[, C])`` or ``(N, Z, Y, X, C)`` raw patches (see
    :func:`extract_patches`; normalized here as ``normalize`` says). ``labels``: one class
    name per patch; ``class_names`` fixes the class order (default sorted). The split comes
    from ``split`` (one of train/val/test per patch) or :func:`make_or_load_split` with
    ``split_path`` (default ``out_dir/split.csv``), ``fractions``, ``seed``, ``ids``.

    ``imbalance``: ``"weights"`` (inverse-frequency class weights, see
    :func:`class_weights`, on the training loss and on the validation loss that early
    stopping watches), ``"sampling"`` (every training batch drawn with equal class
    probabilities; validation weighted alike) or ``"none"``. ``augment``: on-the-fly
    flips, 90 degree rotations, Gaussian noise (sigma up to ``noise``), out-of-focus blur
    (probability ``blur``) and gain/offset changes (``intensity``), seeded by ``seed``.
    Training stops early when the validation loss has not improved for ``patience``
    epochs, or when ``time_budget_s`` (wall clock) is spent; ``reduce_lr_patience`` halves
    the learning rate on plateaus. ``pretrained_weights``/``backbone``: see the module
    docstring. ``time_window`` and ``patch_size`` (the patch geometry, recorded for
    :func:`classify_objects`) default to 0 and the input's spatial shape. ``tta`` averages
    the test predictions over flips and rotations.

    The loss and accuracy in ``training_log.csv`` are weighted as the training is: with
    ``"weights"`` or ``"sampling"`` the validation accuracy is a class-balanced accuracy,
    and early stopping and the best weights follow the class-balanced validation loss.

    Returns a summary dict (class names and weights, split sizes, best epoch, epochs run,
    why training stopped, seconds, paths and, with a test part, its :func:`evaluate`
    metrics computed with the best weights); also saved as ``summary.json``.
    """
    import keras

    if imbalance not in IMBALANCE_MODES:
        raise InputError("imbalance", f"{imbalance!r} is not one of {', '.join(IMBALANCE_MODES)}")
    if normalize not in NORMALIZE_MODES:
        raise InputError("normalize", f"{normalize!r} is not one of {', '.join(NORMALIZE_MODES)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = _prepare_inputs(patches)
    labels = [str(c) for c in labels]
    if len(labels) != len(raw):
        raise InputError("labels", f"{len(labels)} labels for {len(raw)} patches")
    if class_names is None:
        class_names = sorted(set(labels))
    class_names = [str(c) for c in class_names]
    unknown = [i for i, c in enumerate(labels) if c not in class_names]
    if unknown:
        i = unknown[0]
        where = sources[i] if sources is not None else "labels"
        row = f"row {i + 1}: " if sources is None else ""
        raise InputError(where, f"{row}unknown class {labels[i]!r}; the classes are {', '.join(class_names)}")
    if len(class_names) < 2:
        raise InputError("labels", f"need at least 2 classes to train a classifier, got {class_names}")

    if split is None:
        split_path = Path(split_path) if split_path is not None else out_dir / "split.csv"
        split = make_or_load_split(labels, split_path, fractions, seed, ids=ids, sources=sources)
    split = np.asarray(split).astype(str)
    if len(split) != len(raw) or not set(split) <= set(SPLITS):
        raise InputError("split", f"need one of {SPLITS} per patch")
    parts = {name: np.flatnonzero(split == name) for name in SPLITS}
    if not len(parts["train"]) or not len(parts["val"]):
        raise InputError("split", "training needs a non-empty train and validation part")

    time_window = int(time_window)
    n_frames = 2 * time_window + 1
    if raw.shape[-1] % n_frames:
        raise InputError("time_window", f"{raw.shape[-1]} patch channels are not a multiple of {n_frames} frames")
    n_channels = raw.shape[-1] // n_frames
    x = normalize_patches(raw, method=normalize, low=percentiles[0], high=percentiles[1], n_channels=n_channels)
    index_of = {c: i for i, c in enumerate(class_names)}
    y_index = np.array([index_of[c] for c in labels], dtype=np.int64)
    y = np.eye(len(class_names), dtype=np.float32)[y_index]
    train_labels = [labels[i] for i in parts["train"]]
    weights_by_class = class_weights(train_labels, class_names)
    missing = [c for c in class_names if weights_by_class[c] == 0]
    if missing:
        raise InputError("labels", f"class(es) {', '.join(missing)} have no training example")
    if imbalance == "none":
        sample_weights = np.ones(len(labels), np.float32)
    else:
        sample_weights = np.array([weights_by_class[c] for c in labels], dtype=np.float32)

    keras.utils.set_random_seed(int(seed))
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()  # same seed, same weights on CPU
    architecture = {
        "filters": [int(f) for f in filters], "dense": [int(d) for d in dense], "dropout": float(dropout),
        "batch_norm": bool(batch_norm), "global_pool": bool(global_pool), "convs_per_block": int(convs_per_block),
        "resize_to": resize_to, "backbone": backbone, "backbone_kwargs": backbone_kwargs or {},
    }
    input_shape = tuple(int(s) for s in x.shape[1:])
    backbone_weights = pretrained_weights if backbone is not None else None
    model = build_classifier(input_shape, len(class_names), backbone_weights=backbone_weights, **architecture)
    pretrained_layers = 0
    if pretrained_weights is not None and backbone is None:
        pretrained_layers = _transfer_from_classifier(model, Path(pretrained_weights), class_names)
    if pretrained_weights is not None and freeze_pretrained:
        for layer in model.layers:
            if getattr(layer, "_snakescope_pretrained", False) or layer.name == "backbone":
                layer.trainable = False
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=float(learning_rate)),
        loss="categorical_crossentropy",
        weighted_metrics=["accuracy"],
    )
    if patch_size is None:
        patch_size = x.shape[1:-1]
    elif np.isscalar(patch_size):
        patch_size = [patch_size] * (x.ndim - 2)
    config = {
        "format": "snakescope-classifier",
        "version": 1,
        "class_names": class_names,
        "input_shape": list(input_shape),
        "patch_size": [int(s) for s in patch_size],
        "time_window": time_window,
        "n_channels": int(n_channels),
        "normalize": {"method": normalize, "low": float(percentiles[0]), "high": float(percentiles[1])},
        "architecture": architecture,
        "training": {
            "epochs": int(epochs), "batch_size": int(batch_size), "learning_rate": float(learning_rate),
            "imbalance": imbalance, "augment": bool(augment), "patience": int(patience), "seed": int(seed),
            "noise": noise, "blur": blur, "intensity": intensity, "reduce_lr_patience": reduce_lr_patience,
            "time_budget_s": time_budget_s, "pretrained_weights": str(pretrained_weights) if pretrained_weights else None,
            "freeze_pretrained": bool(freeze_pretrained), "pretrained_layers": pretrained_layers,
        },
        "class_weights": weights_by_class if imbalance != "none" else {c: 1.0 for c in class_names},
    }
    write_json(out_dir / CONFIG_NAME, config)

    tr, va = parts["train"], parts["val"]
    sequence = _make_sequence(
        x[tr], y[tr], sample_weights[tr], int(batch_size), int(seed), augment=augment, sampling=imbalance == "sampling",
        spatial_ndim=x.ndim - 2, noise=noise, blur=blur, intensity=intensity,
    )
    validation = (x[va], y[va], sample_weights[va])
    callbacks, checkpoint, stopper, budget = _callbacks(out_dir, patience, time_budget_s, reduce_lr_patience)
    start = time.perf_counter()
    history = model.fit(sequence, validation_data=validation, epochs=int(epochs), callbacks=callbacks, verbose=verbose)
    seconds = time.perf_counter() - start
    _save_weights(model, out_dir / LAST_WEIGHTS)
    if checkpoint.best_epoch < 0:  # no finite validation loss: keep the last weights as best
        _save_weights(model, out_dir / BEST_WEIGHTS)
    if (out_dir / LOG_NAME).is_file():
        from snakescope.training.curves import plot_curves

        plot_curves(out_dir / LOG_NAME, out_dir / CURVES_NAME, title=f"classifier ({', '.join(class_names)})"[:120])
    epochs_run = len(history.history.get("loss", []))
    stopped_by = "time_budget" if budget is not None and budget.hit else (
        "early_stopping" if stopper.stopped_epoch > 0 else "epochs")
    summary = {
        "class_names": class_names,
        "class_weights": config["class_weights"],
        "imbalance": imbalance,
        "n_train": int(len(tr)), "n_val": int(len(va)), "n_test": int(len(parts["test"])),
        "best_epoch": int(checkpoint.best_epoch + 1),
        "best_val_loss": float(checkpoint.best),
        "epochs_run": int(epochs_run),
        "stopped_by": stopped_by,
        "train_seconds": float(seconds),
        "paths": {name: str(out_dir / name) for name in (CONFIG_NAME, BEST_WEIGHTS, LAST_WEIGHTS, LOG_NAME, CURVES_NAME)},
        "test": None,
    }
    if len(parts["test"]):
        model.load_weights(str(out_dir / BEST_WEIGHTS))
        probabilities = _predict_normalized(model, x[parts["test"]], tta=tta, square=_is_square(input_shape))
        predicted = [class_names[i] for i in probabilities.argmax(axis=1)]
        truth = [labels[i] for i in parts["test"]]
        summary["test"] = evaluate(truth, predicted, class_names, out_dir / "test")
    write_json(out_dir / "summary.json", summary)
    return summary


# ---------------------------------------------------------------------------------------
# Prediction


def _is_square(input_shape) -> bool:
    return int(input_shape[-3]) == int(input_shape[-2])


def _predict_normalized(model, x: np.ndarray, *, tta: bool, square: bool, batch_size: int = 128) -> np.ndarray:
    """Softmax probabilities; with ``tta`` averaged over flips and (square patches) 90 degree
    rotations of the YX plane."""
    if not len(x):
        return np.zeros((0, model.output_shape[-1]), np.float32)
    y_axis, x_axis = x.ndim - 3, x.ndim - 2
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
    """A trained classifier rebuilt from its folder: config, Keras model, predict helpers."""

    def __init__(self, model_dir, weights: str = "best"):
        self.model_dir = Path(model_dir)
        config_path = self.model_dir / CONFIG_NAME
        if not config_path.is_file():
            raise InputError(self.model_dir, f"not a classifier folder: {CONFIG_NAME} is missing")
        self.config = json.loads(config_path.read_text())
        self.class_names = list(self.config["class_names"])
        weights_path = {"best": self.model_dir / BEST_WEIGHTS, "last": self.model_dir / LAST_WEIGHTS}.get(weights, Path(weights))
        if not weights_path.is_file():
            raise InputError(weights_path, "classifier weights not found")
        self.model = build_classifier(self.config["input_shape"], len(self.class_names), **_architecture_of(self.config))
        self.model.load_weights(str(weights_path))

    def predict_raw(self, patches, *, tta: bool = False) -> np.ndarray:
        """Probabilities ``(N, n_classes)`` for raw patches (normalized as in training)."""
        raw = _prepare_inputs(patches)
        expected = tuple(self.config["input_shape"])
        if tuple(raw.shape[1:]) != expected:
            raise InputError("patches", f"shape {tuple(raw.shape[1:])} differs from the model's input {expected}")
        norm = self.config["normalize"]
        x = normalize_patches(raw, method=norm["method"], low=norm["low"], high=norm["high"],
                              n_channels=int(self.config.get("n_channels", 1)))
        return _predict_normalized(self.model, x, tta=tta, square=_is_square(expected))


def load_classifier(model_dir, weights: str = "best") -> LoadedClassifier:
    """Rebuild a trained classifier (``weights``: ``"best"``, ``"last"`` or a file)."""
    return LoadedClassifier(model_dir, weights)


def predict_patches(model_dir, patches, *, tta: bool = False, batch_size: int = 1024, weights: str = "best"):
    """Class names and probabilities ``(N, n_classes)`` for ready patches (batched)."""
    classifier = model_dir if isinstance(model_dir, LoadedClassifier) else load_classifier(model_dir, weights)
    raw = _prepare_inputs(patches)
    parts = [classifier.predict_raw(raw[i:i + batch_size], tta=tta) for i in range(0, len(raw), batch_size)]
    probabilities = np.concatenate(parts) if parts else np.zeros((0, len(classifier.class_names)), np.float32)
    return [classifier.class_names[i] for i in probabilities.argmax(axis=1)], probabilities


def classify_objects(
    model_dir,
    image,
    axes: str | None,
    objects: pd.DataFrame,
    *,
    batch_size: int = 512,
    tta: bool = False,
    weights: str = "best",
    channels: Sequence[int] | None = None,
    max_read_bytes: int = _DEFAULT_READ_BYTES,
) -> pd.DataFrame:
    """Classify objects from a patch centred on each centroid.

    ``objects``: DataFrame with columns ``t, (z,) y, x`` as the image's axes need (e.g. the
    centroids of segmented nuclei). Patches of the model's geometry (``patch_size``,
    ``time_window``, from ``config.json``) are cut and classified ``batch_size`` objects at a
    time, so memory stays bounded for any number of objects. Returns a copy of ``objects``
    with ``class_name`` (replaced if present) and ``p_<class>`` per class (summing to 1).
    ``tta`` averages predictions over flips and 90 degree rotations.
    """
    classifier = model_dir if isinstance(model_dir, LoadedClassifier) else load_classifier(model_dir, weights)
    array, axes = _unwrap_image(image, axes)
    names = _point_axes(axes)
    missing = [a for a in names if a not in objects.columns]
    if missing:
        raise InputError("objects", f"missing centroid column(s) {', '.join(missing)} for image axes {axes!r}")
    config = classifier.config
    patch_size = config["patch_size"]
    time_window = int(config.get("time_window", 0))
    result = objects.copy()
    n_classes = len(classifier.class_names)
    probabilities = np.zeros((len(objects), n_classes), dtype=np.float32)
    for start in range(0, len(objects), int(batch_size)):
        chunk = objects.iloc[start:start + int(batch_size)]
        patches = extract_patches(array, axes, chunk, patch_size, time_window, channels=channels,
                                  max_read_bytes=max_read_bytes)
        probabilities[start:start + len(chunk)] = classifier.predict_raw(patches, tta=tta)
    result["class_name"] = [classifier.class_names[i] for i in probabilities.argmax(axis=1)] if len(objects) else []
    for j, name in enumerate(classifier.class_names):
        result[f"p_{name}"] = probabilities[:, j]
    return result


# ---------------------------------------------------------------------------------------
# Evaluation


def _check_known(values: Sequence[str], class_names: Sequence[str], what: str, where) -> None:
    known = set(class_names)
    for i, value in enumerate(values):
        if value not in known:
            raise InputError(where, f"row {i + 1}: {what} class {value!r} is not one of the model's classes ({', '.join(class_names)})")


def evaluate(y_true: Sequence[str], y_pred: Sequence[str], class_names: Sequence[str], out_dir=None, *,
             where: str = "labels") -> dict:
    """Confusion matrix and per-class / overall metrics of predicted vs true classes.

    ``class_names`` fixes the order of the confusion matrix (rows: true class, columns:
    predicted). Balanced accuracy is the mean recall over the classes present in
    ``y_true``; macro F1 averages F1 over the classes present in ``y_true`` or ``y_pred``
    (scikit-learn's conventions). With ``out_dir``: ``confusion_matrix.csv``,
    ``confusion_matrix.png`` (row-normalized colours, counts written), ``per_class.csv`` and
    ``metrics.json``. A class outside ``class_names`` is an :class:`InputError` naming the
    row (``where`` names the table).
    """
    from sklearn import metrics as skm

    class_names = [str(c) for c in class_names]
    y_true = [str(c) for c in y_true]
    y_pred = [str(c) for c in y_pred]
    if len(y_true) != len(y_pred):
        raise InputError(where, f"{len(y_true)} true classes but {len(y_pred)} predictions")
    _check_known(y_true, class_names, "true", where)
    _check_known(y_pred, class_names, "predicted", where)
    matrix = skm.confusion_matrix(y_true, y_pred, labels=class_names) if y_true else np.zeros((len(class_names),) * 2, int)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=class_names, zero_division=0) if y_true else ([0.0] * len(class_names),) * 3 + ([0] * len(class_names),)
    present = [i for i, c in enumerate(class_names) if c in set(y_true) or c in set(y_pred)]
    in_truth = [i for i, c in enumerate(class_names) if c in set(y_true)]
    result = {
        "class_names": class_names,
        "n": len(y_true),
        "accuracy": float(np.mean(np.array(y_true) == np.array(y_pred))) if y_true else float("nan"),
        "balanced_accuracy": float(np.mean([recall[i] for i in in_truth])) if in_truth else float("nan"),
        "macro_f1": float(np.mean([f1[i] for i in present])) if present else float("nan"),
        "per_class": {
            c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, c in enumerate(class_names)
        },
        "confusion_matrix": np.asarray(matrix).astype(int).tolist(),
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame(matrix, index=pd.Index(class_names, name="true \\ predicted"), columns=class_names)
        with atomic_path(out_dir / "confusion_matrix.csv") as tmp:
            frame.to_csv(tmp)
        per_class = pd.DataFrame(result["per_class"]).T.rename_axis("class_name").reset_index()
        with atomic_path(out_dir / "per_class.csv") as tmp:
            per_class.to_csv(tmp, index=False)
        write_json(out_dir / "metrics.json", result)
        _plot_confusion(np.asarray(matrix), class_names, out_dir / "confusion_matrix.png",
                        f"balanced accuracy {result['balanced_accuracy']:.3f}, macro F1 {result['macro_f1']:.3f}")
    return result


def _plot_confusion(matrix: np.ndarray, class_names: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(class_names)
    rows = matrix.sum(axis=1, keepdims=True)
    fraction = np.divide(matrix, rows, out=np.zeros(matrix.shape, float), where=rows > 0)
    size = max(4.0, 0.45 * k + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(fraction, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), class_names, rotation=90, fontsize=8)
    ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            if matrix[i, j]:
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if fraction[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of true class")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def evaluate_annotations(model_dir, image, axes, annotations, out_dir=None, *, tta: bool = False,
                         class_column: str | None = None, batch_size: int = 512) -> dict:
    """Evaluate a trained classifier on any labelled point set (annotation files as for
    :func:`read_point_annotations`, or such a table). A class the model does not know is an
    :class:`InputError` naming the file and the row."""
    classifier = model_dir if isinstance(model_dir, LoadedClassifier) else load_classifier(model_dir)
    array, axes = _unwrap_image(image, axes)
    if isinstance(annotations, pd.DataFrame):
        table = annotations
        known = set(classifier.class_names)
        for i, value in enumerate(table["class_name"].astype(str)):
            if value not in known:
                where = table["source"].iloc[i] if "source" in table.columns else "annotations"
                row = table["row"].iloc[i] if "row" in table.columns else i + 1
                raise InputError(where, f"row {row}: unknown class {value!r}; the model's classes are {', '.join(classifier.class_names)}")
    else:
        table = read_point_annotations(annotations, axes, class_names=classifier.class_names,
                                       image_shape=array.shape, class_column=class_column)
    predicted = classify_objects(classifier, array, axes, table, tta=tta, batch_size=batch_size)
    return evaluate(table["class_name"].astype(str).tolist(), predicted["class_name"].tolist(),
                    classifier.class_names, out_dir, where="annotations")


# ---------------------------------------------------------------------------------------
# Evaluation on segmented objects (the workflow's class_truth column)

COUNT_COLUMNS = ("n_points", "n_matched", "n_unmatched", "tp", "fp", "fn")
METRIC_COLUMNS = ("class_name", *COUNT_COLUMNS, "precision", "recall", "f1", "accuracy", "balanced_accuracy", "macro_f1")
OVERALL = "ALL"


def classifier_class_names(model_dir) -> list[str]:
    """The class names of a trained classifier folder, from its ``config.json`` (no Keras)."""
    path = Path(model_dir) / CONFIG_NAME
    if not path.is_file():
        raise InputError(model_dir, f"not a classifier folder: {CONFIG_NAME} is missing")
    try:
        return [str(c) for c in json.loads(path.read_text())["class_names"]]
    except (ValueError, KeyError) as exc:
        raise InputError(path, f"not a snakescope classifier config ({exc})") from None


def match_points_to_objects(points: pd.DataFrame, labels, axes: str | None, objects: pd.DataFrame) -> pd.DataFrame:
    """Match each truth point to the segmented object containing it.

    ``points``: a table as :func:`read_point_annotations` returns (``class_name``, the label
    image's axes ``t, (z,) y, x``, optional ``source``/``row`` naming the annotation in
    errors). ``labels``: the label image (numpy or zarr array, or an NGFF image), axes
    without channel (``yx``, ``zyx``, ``tyx``, ``tzyx``); only the pixels under the points
    are read. ``objects``: the classified objects table (``label``, ``t`` and the predicted
    ``class_name``; one row per object and time point, as ``objects.parquet``).

    Coordinates are rounded to the nearest pixel; a point outside the image is an
    :class:`InputError` naming its file and row. Returns a copy of ``points`` with
    ``object_label`` (0: the point lies on background) and ``predicted`` (the object's
    class; missing (None / NaN) where unmatched).
    """
    array, axes = _unwrap_image(labels, axes)
    if "c" in axes:
        raise InputError("labels", f"a label image has no channel axis (axes {axes!r})")
    if "class_name" not in objects.columns:
        raise InputError("objects", "no class_name column: the objects were not classified")
    coordinates, sources, rows = _points_array(points, axes)
    shape = tuple(int(s) for s in array.shape)
    rounded = np.floor(coordinates + 0.5).astype(np.int64)
    outside = np.flatnonzero(_outside(rounded, shape)) if len(rounded) else np.array([], int)
    if outside.size:
        i = outside[0]
        raise _outside_error(sources[i], rows[i], axes, coordinates[i], shape)
    if len(rounded):
        index = tuple(rounded[:, j] for j in range(len(axes)))
        values = np.asarray(array.vindex[index] if hasattr(array, "vindex") else np.asarray(array)[index])
    else:
        values = np.zeros(0, np.int64)
    times = rounded[:, axes.index("t")] if "t" in axes else np.zeros(len(rounded), np.int64)
    frame = objects["t"].astype(np.int64) if "t" in objects.columns else pd.Series(0, index=objects.index)
    lookup = dict(zip(zip(frame.tolist(), objects["label"].astype(np.int64).tolist()), objects["class_name"].astype(str)))
    result = points.copy()
    result["object_label"] = values.astype(np.int64)
    result["predicted"] = [lookup.get((int(t), int(v))) if v else None for t, v in zip(times, values)]
    return result


def confusion_counts(truth: Sequence[str], predicted: Sequence[str | None], class_names: Sequence[str]):
    """Confusion matrix ``(K, K)`` of the matched points (rows: true class, columns:
    predicted) and the number of unmatched points (``predicted`` missing) per true class."""
    class_names = [str(c) for c in class_names]
    index = {c: i for i, c in enumerate(class_names)}
    matrix = np.zeros((len(class_names),) * 2, np.int64)
    unmatched = np.zeros(len(class_names), np.int64)
    for row, (t, p) in enumerate(zip(truth, predicted), start=1):
        if str(t) not in index:
            raise InputError("class truth", f"row {row}: class {t!r} is not one of {', '.join(class_names)}")
        if p is None or pd.isna(p):
            unmatched[index[str(t)]] += 1
        elif str(p) not in index:
            raise InputError("objects", f"predicted class {p!r} is not one of {', '.join(class_names)}")
        else:
            matrix[index[str(t)], index[str(p)]] += 1
    return matrix, unmatched


def metrics_from_counts(counts: pd.DataFrame) -> pd.DataFrame:
    """Per-class precision, recall and F1 and the overall row from per-class counts.

    ``counts``: ``class_name, n_unmatched, tp, fp, fn`` per class (other columns are
    recomputed). Returns the columns of :data:`METRIC_COLUMNS`: one row per class, then the
    row ``ALL`` with the counts summed, ``accuracy`` (correct / matched points),
    ``balanced_accuracy`` (mean recall over the classes with matched truth points) and
    ``macro_f1`` (mean F1 over the classes in the truth or the predictions), scikit-learn's
    conventions; a ratio with a zero denominator is 0 per class and NaN overall.
    """
    table = pd.DataFrame({"class_name": counts["class_name"].astype(str).to_numpy()})
    for column in ("n_unmatched", "tp", "fp", "fn"):
        table[column] = counts[column].astype(np.int64).to_numpy()
    table["n_matched"] = table["tp"] + table["fn"]
    table["n_points"] = table["n_matched"] + table["n_unmatched"]

    def ratio(a, b):
        a, b = np.asarray(a, float), np.asarray(b, float)
        return np.divide(a, b, out=np.zeros(a.shape), where=b > 0)

    table["precision"] = ratio(table["tp"], table["tp"] + table["fp"])
    table["recall"] = ratio(table["tp"], table["tp"] + table["fn"])
    table["f1"] = ratio(2 * table["tp"], 2 * table["tp"] + table["fp"] + table["fn"])
    in_truth = table["n_matched"] > 0
    present = (table["tp"] + table["fp"] + table["fn"]) > 0
    matched = int(table["n_matched"].sum())
    overall = {"class_name": OVERALL, **{c: int(table[c].sum()) for c in COUNT_COLUMNS},
               "precision": np.nan, "recall": np.nan, "f1": np.nan,
               "accuracy": table["tp"].sum() / matched if matched else np.nan,
               "balanced_accuracy": float(table.loc[in_truth, "recall"].mean()) if in_truth.any() else np.nan,
               "macro_f1": float(table.loc[present, "f1"].mean()) if present.any() else np.nan}
    for column in ("accuracy", "balanced_accuracy", "macro_f1"):
        table[column] = np.nan
    table = pd.concat([table, pd.DataFrame([overall])], ignore_index=True)
    return table[list(METRIC_COLUMNS)]


def object_class_metrics(matched: pd.DataFrame, class_names: Sequence[str]):
    """Metrics table (see :func:`metrics_from_counts`) and confusion matrix of points
    matched by :func:`match_points_to_objects` (columns ``class_name`` and ``predicted``)."""
    class_names = [str(c) for c in class_names]
    matrix, unmatched = confusion_counts(matched["class_name"].astype(str).tolist(), matched["predicted"].tolist(), class_names)
    tp = np.diag(matrix)
    counts = pd.DataFrame({"class_name": class_names, "n_unmatched": unmatched, "tp": tp,
                           "fp": matrix.sum(axis=0) - tp, "fn": matrix.sum(axis=1) - tp})
    return metrics_from_counts(counts), matrix


def plot_object_confusion(matrix: np.ndarray, class_names: Sequence[str], table: pd.DataFrame, path, title: str = "") -> None:
    """The confusion matrix PNG of :func:`object_class_metrics` (counts written, colours
    row-normalized), its title giving matched points and balanced accuracy."""
    overall = table[table["class_name"] == OVERALL].iloc[0]
    text = (f"{title}: " if title else "") + (
        f"{int(overall['n_matched'])} of {int(overall['n_points'])} points on an object; "
        f"balanced accuracy {overall['balanced_accuracy']:.3f}, macro F1 {overall['macro_f1']:.3f}")
    _plot_confusion(np.asarray(matrix), [str(c) for c in class_names], Path(path), text)


def pool_classification_metrics(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per-sample metrics tables (with a ``sample`` column) and their pooled rows (sample
    ``ALL``: counts summed per class over samples, ratios recomputed)."""
    per_sample = []
    for sample, table in tables.items():
        table = table.copy()
        if "sample" not in table.columns:
            table.insert(0, "sample", sample)
        per_sample.append(table)
    if not per_sample:
        return pd.DataFrame(columns=["sample", *METRIC_COLUMNS])
    joined = pd.concat(per_sample, ignore_index=True)
    classes = joined[joined["class_name"].astype(str) != OVERALL]
    order = list(dict.fromkeys(classes["class_name"].astype(str)))
    summed = classes.groupby(classes["class_name"].astype(str), sort=False)[["n_unmatched", "tp", "fp", "fn"]].sum()
    pooled = metrics_from_counts(summed.loc[order].reset_index())
    pooled.insert(0, "sample", OVERALL)
    return pd.concat([joined[["sample", *METRIC_COLUMNS]], pooled], ignore_index=True)


def write_training_confusion(model_dir, path) -> None:
    """Copy the held-out confusion matrix PNG of a trained classifier (``test/`` in its
    folder) to ``path`` atomically, for the report; without a test part, a figure saying so."""
    source = Path(model_dir) / "test" / "confusion_matrix.png"
    if source.is_file():
        with atomic_path(path) as tmp:
            tmp.write_bytes(source.read_bytes())
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, "no held-out test set\n(classification.split_fractions gives the test part 0)",
            ha="center", va="center", fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
