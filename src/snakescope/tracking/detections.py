"""Detections for tracking: one row per object per frame, from label images or points files.

*Detections* are a DataFrame with one row per object per frame and the columns ``t``
(integer frame index), ``z`` (3D only), ``y``, ``x`` (pixel coordinates, floats), and
optionally ``label`` (the object's value in its frame's label image) and ``area`` (voxels).
:func:`detections_from_labels` makes them from a label time-lapse (optionally with
sub-pixel positions from the intensity image), :func:`read_points` from a napari points CSV
(``index,axis-0,...`` with axis 0 = t) or any CSV with those column names. Linking them is
:mod:`snakescope.tracking.linking`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from snakescope.errors import InputError

__all__ = [
    "REFINE_MODES",
    "detections_from_labels",
    "read_points",
    "spatial_columns",
    "voxel_tuple",
]

#: Values of the ``tracking.refine`` setting.
REFINE_MODES = ("none", "weighted", "gaussian")


def spatial_columns(detections: pd.DataFrame) -> list[str]:
    """``["z", "y", "x"]`` for 3D detections (a ``z`` column), else ``["y", "x"]``."""
    return ["z", "y", "x"] if "z" in detections.columns else ["y", "x"]


def _frame_count_and_getter(stack, name: str, source: str):
    """Number of frames and a function returning frame ``t`` as a numpy array.

    ``stack`` is an array-like (numpy, zarr, dask: anything with ``shape`` and ``[t]``
    indexing) with time first, or a sequence of per-frame arrays. Only one frame is ever
    materialised at a time.
    """
    if hasattr(stack, "shape") and hasattr(stack, "__getitem__"):
        return int(stack.shape[0]), lambda t: np.asarray(stack[t])
    if isinstance(stack, Sequence):
        return len(stack), lambda t: np.asarray(stack[t])
    raise InputError(
        source, f"{name} must be an array with a time axis or a list of frames, got {type(stack).__name__}"
    )


def detections_from_labels(
    labels,
    intensity=None,
    *,
    refine: str,
    voxel_size: Sequence[float] | None = None,
    axes: str | None = None,
    source: str = "labels",
) -> pd.DataFrame:
    """One detection per object per frame of a label time-lapse.

    Parameters
    ----------
    labels : integer array ``(T, Y, X)`` or ``(T, Z, Y, X)`` (numpy, zarr, ... indexed one
        frame at a time) or a list of per-frame arrays of equal shape; 0 is background.
    intensity : optional image of the same shape (same indexing) for sub-pixel refinement.
    refine : the ``tracking.refine`` setting: ``"none"`` (centroid of the mask),
        ``"weighted"`` (intensity-weighted centroid over the mask, weights = intensity minus
        the object's minimum, so that a constant background or camera offset does not pull
        the position to the mask centre) or
        ``"gaussian"`` (bead-tracking style: after a sigma = 1 px Gaussian smoothing, the
        peak voxel of each object is refined per axis by the three-point Gaussian estimator,
        i.e. the exact vertex of a Gaussian through the peak and its two neighbours; meant
        for spot-like objects; axes where it is undefined keep the mask centroid).
    voxel_size : ``([z,] y, x)`` micrometres per voxel; adds ``area_um`` (um^2 or um^3) and
        is kept in ``.attrs["voxel_size"]`` for :func:`snakescope.tracking.linking.link`.
    axes : optional axes string of ``labels`` (e.g. ``"TYX"``, ``"TZYX"``); without it a
        3D array is read as ``TYX`` and a 4D one as ``TZYX``.
    source : the file or sample name used in error messages.

    Returns
    -------
    DataFrame with columns ``t, (z,) y, x, label, area`` (+ ``area_um``), sorted by ``t``
    then ``label``; coordinates in pixels (napari convention).
    """
    if refine not in REFINE_MODES:
        raise InputError(source, f"refine must be one of {REFINE_MODES}, got {refine!r}")
    if refine != "none" and intensity is None:
        raise InputError(source, f"refine={refine!r} needs an intensity image")
    n_frames, get_label = _frame_count_and_getter(labels, "labels", source)
    shape = tuple(getattr(labels, "shape", ()))
    if axes is not None:
        axes = axes.upper()
        if "T" not in axes:
            raise InputError(source, f"axes {axes!r} have no time axis T; tracking needs a time-lapse")
        if axes[0] != "T" or axes not in ("TYX", "TZYX"):
            raise InputError(source, f"axes {axes!r} are not supported for tracking; expected TYX or TZYX")
    if shape and len(shape) < 3:
        raise InputError(source, f"labels of shape {shape} have no time axis (expected (T, Y, X) or (T, Z, Y, X))")
    if shape and len(shape) > 4:
        raise InputError(source, f"labels of shape {shape} have too many axes (expected (T, Y, X) or (T, Z, Y, X))")
    if axes is not None and shape and len(axes) != len(shape):
        raise InputError(source, f"axes {axes!r} do not match labels of shape {shape}")
    get_intensity = None
    if intensity is not None:
        n_int, get_intensity = _frame_count_and_getter(intensity, "intensity", source)
        if n_int != n_frames:
            raise InputError(source, f"intensity has {n_int} frames but labels have {n_frames}")

    rows: list[pd.DataFrame] = []
    first_shape = None
    names = None
    for t in range(n_frames):
        frame = get_label(t)
        if first_shape is None:
            first_shape = frame.shape
            if frame.ndim not in (2, 3):
                raise InputError(
                    source,
                    f"frame 0 has shape {frame.shape}; expected 2D (Y, X) or 3D (Z, Y, X) frames after the time axis",
                )
            names = ["y", "x"] if frame.ndim == 2 else ["z", "y", "x"]
            if voxel_size is not None:
                voxel_tuple(voxel_size, len(names), source)  # fail before reading everything
        elif frame.shape != first_shape:
            raise InputError(
                source,
                f"frame {t} has shape {frame.shape} but frame 0 has shape {first_shape};"
                " all frames must have the same shape",
            )
        if frame.dtype.kind not in "iub":
            raise InputError(source, f"labels must be integers, got {frame.dtype} in frame {t}")
        image = None
        if get_intensity is not None:
            image = get_intensity(t)
            if image.shape != frame.shape:
                raise InputError(
                    source, f"intensity frame {t} has shape {image.shape} but the labels frame has {frame.shape}"
                )
        found = _frame_detections(t, frame, image, refine, names)
        if len(found):  # an empty frame adds no row: linking sees it as a gap
            rows.append(found)
    names = names or (["y", "x"] if len(shape) != 4 else ["z", "y", "x"])
    if rows:
        detections = pd.concat(rows, ignore_index=True)
    else:
        detections = _empty_detections(names)
    if voxel_size is not None:
        voxel = voxel_tuple(voxel_size, len(names), source)
        detections["area_um"] = detections["area"] * float(np.prod(voxel))
        detections.attrs["voxel_size"] = voxel
    return detections


def _empty_detections(names: list[str]) -> pd.DataFrame:
    columns = {"t": np.array([], np.int64), **{n: np.array([], float) for n in names}}
    columns.update(label=np.array([], np.int64), area=np.array([], np.int64))
    return pd.DataFrame(columns)


def _frame_detections(t: int, frame: np.ndarray, image, refine: str, names: list[str]) -> pd.DataFrame:
    """Centroids (and refined positions) of the objects of one frame, via bincount."""
    flat = frame.ravel()
    foreground = np.flatnonzero(flat)
    if foreground.size == 0:
        return _empty_detections(names)
    ids = flat[foreground].astype(np.int64)
    present, inverse = np.unique(ids, return_inverse=True)
    counts = np.bincount(inverse)
    coordinates = np.unravel_index(foreground, frame.shape)
    centroid = np.stack([np.bincount(inverse, weights=c) / counts for c in coordinates], axis=1)
    if refine == "weighted":
        values = image.ravel()[foreground].astype(np.float64)
        minimum = np.full(len(present), np.inf)
        np.minimum.at(minimum, inverse, values)
        weights = values - minimum[inverse]
        total = np.bincount(inverse, weights=weights)
        weighted = np.stack([np.bincount(inverse, weights=weights * c) for c in coordinates], axis=1)
        ok = total > 0  # a flat object has no weighted centroid: keep the mask centroid
        centroid[ok] = weighted[ok] / total[ok, None]
    elif refine == "gaussian":
        centroid = _gaussian_peaks(frame, image, present, centroid)
    data = {"t": np.full(len(present), t, dtype=np.int64)}
    data.update({name: centroid[:, axis] for axis, name in enumerate(names)})
    data.update(label=present, area=counts.astype(np.int64))
    return pd.DataFrame(data)


def _gaussian_peaks(frame, image, present, fallback):
    """Peak voxel per object refined by the 3-point Gaussian estimator along each axis."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(image.astype(np.float64), sigma=1.0)
    peaks = np.asarray(ndimage.maximum_position(smooth, frame, present), dtype=np.int64).reshape(
        len(present), frame.ndim
    )
    base = np.asarray(ndimage.minimum(smooth, frame, present), dtype=np.float64)
    positions = fallback.copy()
    for axis in range(frame.ndim):
        low, high = peaks.copy(), peaks.copy()
        low[:, axis] -= 1
        high[:, axis] += 1
        inside = (low[:, axis] >= 0) & (high[:, axis] < frame.shape[axis])
        low[~inside, axis] = peaks[~inside, axis]
        high[~inside, axis] = peaks[~inside, axis]
        # Heights above the object's minimum; a Gaussian through 3 points is a parabola in log.
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.log(smooth[tuple(low.T)] - base + 1e-12)
            b = np.log(smooth[tuple(peaks.T)] - base + 1e-12)
            c = np.log(smooth[tuple(high.T)] - base + 1e-12)
            curvature = a - 2 * b + c
            offset = 0.5 * (a - c) / curvature
        ok = inside & (curvature < 0) & np.isfinite(offset) & (np.abs(offset) <= 1.0)
        positions[ok, axis] = peaks[ok, axis] + offset[ok]
    return positions


def read_points(path: str | Path, *, ndim: int | None = None) -> pd.DataFrame:
    """Detections from a points CSV: napari's (``index,axis-0,...``, axis 0 = t) or named columns.

    A napari CSV with 3 axis columns is ``t, y, x``, with 4 ``t, z, y, x``; ``ndim`` (2 or 3
    spatial dimensions) may be given to check it. A CSV with columns ``t, (z,) y, x`` is read
    as is. Rows are sorted by ``t`` (stable).
    """
    path = Path(path)
    try:
        table = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise InputError(path, f"cannot read the points CSV: {error}") from None
    axis_columns = sorted((c for c in table.columns if str(c).startswith("axis-")), key=lambda c: int(str(c)[5:]))
    if axis_columns:
        if len(axis_columns) not in (3, 4):
            raise InputError(
                path,
                f"napari points need 3 (t, y, x) or 4 (t, z, y, x) axis columns, found {len(axis_columns)};"
                " a points layer without a time axis cannot be tracked",
            )
        names = ["t", "y", "x"] if len(axis_columns) == 3 else ["t", "z", "y", "x"]
        detections = table[axis_columns].set_axis(names, axis=1)
    else:
        if "t" not in table.columns:
            raise InputError(path, "no time column: expected napari columns axis-0 (t), axis-1, ... or a column 't'")
        names = ["t", "z", "y", "x"] if "z" in table.columns else ["t", "y", "x"]
        missing = [n for n in names if n not in table.columns]
        if missing:
            raise InputError(path, f"missing column(s) {missing}")
        extra = [c for c in table.columns if c not in names and c not in ("index",)]
        detections = table[names + extra]
    if ndim is not None and len(names) - 1 != ndim:
        raise InputError(path, f"points have {len(names) - 1} spatial axes but the sample is {ndim}D")
    t = detections["t"].to_numpy(dtype=float)
    if not np.all(np.isfinite(t)) or np.any(t != np.round(t)) or np.any(t < 0):
        raise InputError(path, "the time column must hold non-negative whole frame numbers")
    detections = detections.astype({"t": np.int64})
    return detections.sort_values("t", kind="stable").reset_index(drop=True)


def voxel_tuple(voxel_size, ndim: int, source: str = "voxel_size") -> tuple[float, ...]:
    """``voxel_size`` (one number for all axes, or one per axis) as ``ndim`` positive floats."""
    values = np.atleast_1d(np.asarray(voxel_size, dtype=float))
    if values.size == 1:
        values = np.repeat(values, ndim)
    if values.size != ndim or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise InputError(
            source,
            f"voxel_size {tuple(np.atleast_1d(voxel_size).tolist())} must be {ndim} positive numbers ([z,] y, x)",
        )
    return tuple(float(v) for v in values)

