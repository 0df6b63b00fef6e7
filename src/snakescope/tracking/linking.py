"""Tracking: detections per frame, LAP linking with gap closing and divisions, statistics.

Formats
-------
*Detections* are a DataFrame with one row per object per frame and the columns ``t``
(integer frame index), ``z`` (3D only), ``y``, ``x`` (pixel coordinates, floats), and
optionally ``label`` (the object's value in its frame's label image) and ``area`` (voxels).
:func:`detections_from_labels` makes them from a label time-lapse, :func:`read_points` from a
napari points CSV (``index,axis-0,...`` with axis 0 = t) or any CSV with those column names.

*Tracks* (:class:`Tracks`) hold

* ``table``: napari tracks-layer columns ``track_id, t, (z,) y, x`` plus ``parent`` (the
  parent track id, 0 for none), ``detection`` (row position in the input detections) and
  ``label`` when the detections had one; sorted by ``track_id, t``;
* ``lineage``: the Cell Tracking Challenge (CTC) table ``label, begin, end, parent``;
* ``detection_track``: the track id of every input detection row (every detection belongs
  to a track; an unlinked one is a one-frame track).

One id space serves napari, CTC and the masks written by :mod:`snakescope.ctc`, so a track id
is always a gap-free run of frames (CTC requires this): a track that skips frames (closed
gap) continues under a new id whose ``parent`` is the interrupted track, a parent with a
single child. A division is a parent with two children.

Linking (Jaqaman et al. 2008, as laptrack implements it)
-------------------------------------------------------
Coordinates are scaled to micrometres by ``voxel_size`` first; costs are squared distances.

1. Frame to frame: for each pair of consecutive frames, candidate links within
   ``max_distance``; birth and death cost ``b = d = 1.05 * max(candidate cost)`` of that frame
   pair and the Jaqaman lower-right block at the minimal cost: exactly laptrack's
   ``build_frame_cost_matrix``.
2. Segments (chains from step 1) are joined in one global LAP: gap closing (segment end at
   ``t`` to segment start at ``t + 1 ... t + max_gap + 1`` within ``gap_max_distance``) and
   divisions (segment start at ``t`` to any detection at ``t - 1`` within
   ``division_max_distance``: the mother splits there). Laptrack's
   ``build_segment_cost_matrix`` (without merging) sets every alternative cost to
   ``A = 1.05 * 90th percentile`` of all candidate costs, so the costliest tenth of the
   candidates can never be chosen. We keep that for divisions but give gap closing the
   alternative cost ``1.05 * gap_max_distance**2`` (Jaqaman's 1.05 x maximum rule, the
   maximum being the user's cutoff), so every gap within the distance is admissible: with
   the percentile rule a sample with ten gaps loses the longest one however unambiguous it
   is, and on bench/track.py this choice gives a higher TRA and division precision than
   laptrack (recall equal). ``laptrack_compatible=True`` restores laptrack's rule and then
   reproduces its links exactly (tests/test_tracking.py compares them).

Why our own implementation instead of calling laptrack: the optimum of each of those LAPs is
a maximum-weight bipartite matching (weight = alternative costs minus link cost), which
splits into independent connected components of the candidate graph. We collect the
candidates of all frames with KD-trees (scipy cKDTree), take one-edge components directly,
solve the components of up to 3 x 3 nodes by vectorised enumeration and the few larger ones
in ONE sparse LAPJV call (scipy ``min_weight_full_bipartite_matching``), and build the
tables with vectorised numpy. Same optimum as laptrack's per-frame and global LAPs, without
its per-frame dense distance matrices, pandas row loops and networkx tree conversion: on 100
frames / 100,000 detections (bench/track.py) it links in a fraction of a second where
laptrack 0.17 needs tens of seconds and trackpy (no divisions) seconds. The result is
deterministic: it depends only on the detections and their order (exactly equal costs, the
only source of ties, are resolved by that order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from snakescope.errors import InputError

__all__ = [
    "REFINE_MODES",
    "Tracks",
    "detections_from_labels",
    "link",
    "read_points",
    "spatial_columns",
    "summarize_tracks",
    "track_statistics",
    "tracks_from_links",
]

#: Jaqaman's factor on the alternative (birth / death / no-split) costs, as in laptrack.
ALTERNATIVE_COST_FACTOR = 1.05
#: Percentile of the segment-step candidate costs that sets its alternative costs.
ALTERNATIVE_COST_PERCENTILE = 90
_EPSILON = 1e-6  # laptrack's alternative cost when all candidate costs are 0
REFINE_MODES = ("none", "weighted", "gaussian")


# -- detections ---------------------------------------------------------------------------


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
    voxel_size: Sequence[float] | None = None,
    refine: str = "none",
    axes: str | None = None,
    source: str = "labels",
) -> pd.DataFrame:
    """One detection per object per frame of a label time-lapse.

    Parameters
    ----------
    labels : integer array ``(T, Y, X)`` or ``(T, Z, Y, X)`` (numpy, zarr, ... indexed one
        frame at a time) or a list of per-frame arrays of equal shape; 0 is background.
    intensity : optional image of the same shape (same indexing) for sub-pixel refinement.
    voxel_size : ``([z,] y, x)`` micrometres per voxel; adds ``area_um`` (um^2 or um^3) and
        is kept in ``.attrs["voxel_size"]`` for :func:`link`.
    refine : ``"none"`` (centroid of the mask), ``"weighted"`` (intensity-weighted centroid
        over the mask, weights = intensity minus the object's minimum, so that a constant
        background or camera offset does not pull the position to the mask centre) or
        ``"gaussian"`` (bead-tracking style: after a sigma = 1 px Gaussian smoothing, the
        peak voxel of each object is refined per axis by the three-point Gaussian estimator,
        i.e. the exact vertex of a Gaussian through the peak and its two neighbours; meant
        for spot-like objects; axes where it is undefined keep the mask centroid).
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
                _voxel_tuple(voxel_size, len(names), source)  # fail before reading everything
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
        voxel = _voxel_tuple(voxel_size, len(names), source)
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


# -- tracks -------------------------------------------------------------------------------


@dataclass
class Tracks:
    """Linked tracks: napari table, CTC lineage and the detection -> track mapping.

    See the module docstring for the columns. ``voxel_size`` is the per-axis scale
    ``([z,] y, x)`` used for distances (``None``: pixel units).
    """

    table: pd.DataFrame
    lineage: pd.DataFrame
    detection_track: np.ndarray
    spatial: tuple[str, ...]
    voxel_size: tuple[float, ...] | None = None
    stats: dict = field(default_factory=dict)  # counts from the linker (candidates, links)

    @property
    def n_tracks(self) -> int:
        return len(self.lineage)

    @property
    def n_divisions(self) -> int:
        """Parents with two or more children (a single child is a closed gap)."""
        parents = self.lineage["parent"].to_numpy()
        parents = parents[parents > 0]
        if parents.size == 0:
            return 0
        return int(np.sum(np.unique(parents, return_counts=True)[1] >= 2))

    def napari(self) -> tuple[np.ndarray, dict[int, list[int]]]:
        """``(data, graph)`` for ``viewer.add_tracks(data, graph=graph)``.

        ``data`` is ``(N, 2 + ndim)``: track_id, t, (z,) y, x; ``graph`` maps a track id to
        its parent's id (a one-element list), for tracks that have a parent.
        """
        data = self.table[["track_id", "t", *self.spatial]].to_numpy(dtype=float)
        with_parent = self.lineage[self.lineage["parent"] > 0]
        graph = {int(k): [int(p)] for k, p in zip(with_parent["label"], with_parent["parent"])}
        return data, graph


def _voxel_tuple(voxel_size, ndim: int, source: str = "voxel_size") -> tuple[float, ...]:
    values = np.atleast_1d(np.asarray(voxel_size, dtype=float))
    if values.size == 1:
        values = np.repeat(values, ndim)
    if values.size != ndim or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise InputError(
            source,
            f"voxel_size {tuple(np.atleast_1d(voxel_size).tolist())} must be {ndim} positive numbers ([z,] y, x)",
        )
    return tuple(float(v) for v in values)


def _validated_points(detections: pd.DataFrame, voxel_size, source: str):
    """(t, scaled coordinates, spatial names, voxel) after checking the table."""
    if not isinstance(detections, pd.DataFrame):
        raise InputError(source, f"detections must be a DataFrame, got {type(detections).__name__}")
    if "t" not in detections.columns:
        raise InputError(source, "detections have no time column 't'; tracking needs a time axis")
    names = spatial_columns(detections)
    missing = [n for n in names if n not in detections.columns]
    if missing:
        raise InputError(source, f"detections lack the coordinate column(s) {missing}")
    t_float = detections["t"].to_numpy(dtype=float)
    if not np.all(np.isfinite(t_float)) or np.any(t_float != np.round(t_float)) or np.any(t_float < 0):
        raise InputError(source, "column 't' must hold non-negative whole frame numbers")
    coordinates = detections[names].to_numpy(dtype=float)
    if not np.all(np.isfinite(coordinates)):
        bad = int(np.flatnonzero(~np.all(np.isfinite(coordinates), axis=1))[0])
        raise InputError(source, f"detection row {bad} has a missing or infinite coordinate")
    if voxel_size is None:
        voxel_size = detections.attrs.get("voxel_size")
    voxel = _voxel_tuple(voxel_size, len(names), source) if voxel_size is not None else None
    scaled = coordinates * np.asarray(voxel) if voxel is not None else coordinates
    return t_float.astype(np.int64), scaled, names, voxel


def link(
    detections: pd.DataFrame,
    *,
    max_distance: float,
    max_gap: int = 2,
    gap_max_distance: float | None = None,
    divisions: bool = True,
    division_max_distance: float | None = None,
    voxel_size: Sequence[float] | float | None = None,
    laptrack_compatible: bool = False,
    source: str = "detections",
) -> Tracks:
    """Link detections into tracks with gap closing and divisions (see the module docstring).

    Parameters
    ----------
    detections : DataFrame ``t, (z,) y, x`` (pixels) [+ ``label``], any row order.
    max_distance : largest frame-to-frame displacement, in micrometres when a voxel size is
        known, else in pixels.
    max_gap : most missing frames a track may skip (0: only re-link neighbouring frames in
        the segment step; negative: no gap closing).
    gap_max_distance : largest displacement across a gap (default ``max_distance``).
    divisions : detect divisions (one object at ``t - 1`` -> two at ``t``).
    division_max_distance : largest mother-daughter distance (default ``max_distance``).
    voxel_size : ``([z,] y, x)`` micrometres per pixel, or one number for all axes; default
        ``detections.attrs["voxel_size"]`` if set, else distances are in pixels.
    laptrack_compatible : give gap closing laptrack's alternative cost too (see the module
        docstring); then the links are exactly laptrack 0.17's with ``cutoff =
        max_distance**2``, ``gap_closing_cutoff = gap_max_distance**2``,
        ``gap_closing_max_frame_count = max_gap + 1``, ``splitting_cutoff =
        division_max_distance**2`` (ties aside).
    source : sample or file name for error messages.
    """
    t, points, names, voxel = _validated_points(detections, voxel_size, source)
    distances = {
        "max_distance": max_distance,
        "gap_max_distance": gap_max_distance,
        "division_max_distance": division_max_distance,
    }
    for name, value in distances.items():
        if (value is not None or name == "max_distance") and not _positive(value):
            raise InputError(source, f"{name} must be a positive number, got {value!r}")
    gap_max_distance = max_distance if gap_max_distance is None else gap_max_distance
    division_max_distance = max_distance if division_max_distance is None else division_max_distance

    n = len(t)
    order = np.argsort(t, kind="stable")  # work in time order; ties keep the input order
    t_sorted = t[order]
    p_sorted = points[order]
    frames = _Frames(t_sorted, p_sorted)

    # Step 1: frame-to-frame LAP.
    src, dst, cost, pair_of_edge = frames.consecutive_candidates(max_distance)
    weight = _frame_link_weights(cost, pair_of_edge)
    chosen = _max_weight_matching(src, dst, weight)
    pred = np.full(n, -1, dtype=np.int64)
    pred[dst[chosen]] = src[chosen]
    stats = {"frame_candidates": int(src.size), "frame_links": int(chosen.sum())}

    # Step 2: segment LAP (gap closing + divisions).
    has_succ = np.zeros(n, dtype=bool)
    has_succ[pred[pred >= 0]] = True
    starts = np.flatnonzero(pred < 0)
    ends = np.flatnonzero(~has_succ)
    gap_src, gap_dst, gap_cost = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0))
    if max_gap is not None and max_gap >= 0:
        gap_src, gap_dst, gap_cost = frames.subset_candidates(
            ends, starts, range(1, int(max_gap) + 2), gap_max_distance
        )
    split_src, split_dst, split_cost = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0))
    if divisions:
        split_src, split_dst, split_cost = frames.mother_candidates(starts, division_max_distance)
    all_cost = np.concatenate([gap_cost, split_cost])
    stats.update(
        gap_candidates=int(gap_src.size), division_candidates=int(split_src.size), gap_links=0, division_links=0
    )
    if all_cost.size:
        # Laptrack's segment matrix: alternative costs (segment start/end, no split) and the
        # lower-right block all equal ``A = 1.05 * 90th percentile`` of the candidate costs,
        # so a link is worth ``A - cost`` and only cheaper links can be chosen.
        alternative = ALTERNATIVE_COST_FACTOR * float(
            np.percentile(all_cost, ALTERNATIVE_COST_PERCENTILE, method="lower")
        )
        alternative = alternative if alternative > 0 else _EPSILON
        if laptrack_compatible:
            gap_alternative = alternative
        else:
            # A closed gap instead is always admissible within its distance: the
            # percentile rule drops the costliest tenth of the candidates whatever they
            # are, which on a small sample is a plain, unambiguous gap. Being cheaper than
            # a division, a gap also wins when a start could be either (the bench measures
            # fewer false divisions and a higher TRA for this).
            gap_alternative = ALTERNATIVE_COST_FACTOR * float(gap_max_distance) ** 2
        # Ends (gap closing) and mothers (splits) are distinct source nodes even when one
        # detection is both: a segment end may then get a gap link and a split, two children.
        src2 = np.concatenate([gap_src, split_src + n])
        dst2 = np.concatenate([gap_dst, split_dst])
        weight2 = np.concatenate([gap_alternative - gap_cost, alternative - split_cost])
        keep = weight2 > 0
        chosen2 = np.zeros(src2.size, dtype=bool)
        chosen2[keep] = _max_weight_matching(src2[keep], dst2[keep], weight2[keep])
        is_split = src2 >= n
        stats.update(gap_links=int((chosen2 & ~is_split).sum()), division_links=int((chosen2 & is_split).sum()))
        pred[dst2[chosen2]] = src2[chosen2] % n

    # Back to input row order.
    pred_input = np.full(n, -1, dtype=np.int64)
    linked = pred >= 0
    pred_input[order[linked]] = order[pred[linked]]
    tracks = _build_tracks(detections, t, names, voxel, pred_input)
    tracks.stats.update(stats)
    return tracks


def _positive(value) -> bool:
    try:
        return bool(np.isfinite(value) and value > 0)
    except TypeError:
        return False


def _frame_link_weights(cost: np.ndarray, pair_of_edge: np.ndarray) -> np.ndarray:
    """Matching weights of laptrack's frame cost matrix, per frame pair.

    With birth = death = ``b = 1.05 * max`` and the lower-right block at ``min`` of the pair's
    candidate costs, a solution costs ``sum over links (c + min) + b * unlinked``, i.e. each
    link is worth ``2 b - min - c``.
    """
    if cost.size == 0:
        return cost
    n_pairs = int(pair_of_edge.max()) + 1
    maximum = np.full(n_pairs, -np.inf)
    minimum = np.full(n_pairs, np.inf)
    np.maximum.at(maximum, pair_of_edge, cost)
    np.minimum.at(minimum, pair_of_edge, cost)
    birth = np.where(maximum > 0, ALTERNATIVE_COST_FACTOR * maximum, _EPSILON)
    return 2 * birth[pair_of_edge] - minimum[pair_of_edge] - cost


class _Frames:
    """Detections sorted by time, with a lazily built KD-tree per frame."""

    def __init__(self, t_sorted: np.ndarray, points: np.ndarray):
        self.t = t_sorted
        self.points = points
        self.times, first = np.unique(t_sorted, return_index=True)
        self.bounds = np.append(first, len(t_sorted)).astype(np.int64)
        self.index_of_time = {int(v): k for k, v in enumerate(self.times)}
        self._trees: dict[int, object] = {}

    def tree(self, k: int):
        tree = self._trees.get(k)
        if tree is None:
            from scipy.spatial import cKDTree

            tree = cKDTree(self.points[self.bounds[k] : self.bounds[k + 1]])
            self._trees[k] = tree
        return tree

    def consecutive_candidates(self, radius: float):
        """All pairs (t, t + 1) within ``radius``: sources, targets, squared distances, pair id."""
        sources, targets, costs, pairs = [], [], [], []
        for k in range(len(self.times) - 1):
            if self.times[k + 1] != self.times[k] + 1:
                continue  # an empty frame in between: only gap closing can bridge it
            found = self.tree(k).sparse_distance_matrix(self.tree(k + 1), radius, output_type="ndarray")
            if found.size == 0:
                continue
            sources.append(found["i"].astype(np.int64) + self.bounds[k])
            targets.append(found["j"].astype(np.int64) + self.bounds[k + 1])
            costs.append(found["v"] ** 2)
            pairs.append(np.full(found.size, k, dtype=np.int64))
        return _concat_edges(sources, targets, costs, pairs)

    def _groups(self, members: np.ndarray) -> dict[int, np.ndarray]:
        """Sorted member indices grouped by frame index k."""
        if members.size == 0:
            return {}
        k_of = np.searchsorted(self.bounds, members, side="right") - 1
        cut = np.flatnonzero(np.diff(k_of)) + 1
        return {int(k[0]): g for k, g in zip(np.split(k_of, cut), np.split(members, cut))}

    def subset_candidates(self, sources: np.ndarray, targets: np.ndarray, deltas: Iterable[int], radius: float):
        """Pairs source (at t) -> target (at t + delta, for each delta) within ``radius``."""
        from scipy.spatial import cKDTree

        deltas = list(deltas)
        by_frame_src, by_frame_dst = self._groups(sources), self._groups(targets)
        dst_trees = {k: cKDTree(self.points[m]) for k, m in by_frame_dst.items()}
        out_s, out_d, out_c = [], [], []
        for k, members in by_frame_src.items():
            src_tree = cKDTree(self.points[members])
            for delta in deltas:
                k2 = self.index_of_time.get(int(self.times[k]) + delta)
                if k2 is None or k2 not in dst_trees:
                    continue
                found = src_tree.sparse_distance_matrix(dst_trees[k2], radius, output_type="ndarray")
                if found.size:
                    out_s.append(members[found["i"]])
                    out_d.append(by_frame_dst[k2][found["j"]])
                    out_c.append(found["v"] ** 2)
        return _concat_edges(out_s, out_d, out_c)[:3]

    def mother_candidates(self, starts: np.ndarray, radius: float):
        """Pairs (any detection at t - 1) -> (segment start at t) within ``radius``."""
        from scipy.spatial import cKDTree

        out_s, out_d, out_c = [], [], []
        for k, members in self._groups(starts).items():
            k_prev = self.index_of_time.get(int(self.times[k]) - 1)
            if k_prev is None:
                continue
            found = cKDTree(self.points[members]).sparse_distance_matrix(
                self.tree(k_prev), radius, output_type="ndarray"
            )
            if found.size:
                out_s.append(found["j"].astype(np.int64) + self.bounds[k_prev])
                out_d.append(members[found["i"]])
                out_c.append(found["v"] ** 2)
        return _concat_edges(out_s, out_d, out_c)[:3]


def _concat_edges(sources, targets, costs, pairs=None):
    if not sources:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty.copy(), np.empty(0), empty.copy()
    pairs = pairs if pairs is not None else [np.zeros(len(s), np.int64) for s in sources]
    return (
        np.concatenate(sources).astype(np.int64),
        np.concatenate(targets).astype(np.int64),
        np.concatenate(costs).astype(np.float64),
        np.concatenate(pairs),
    )


#: Components with at most this many sources and targets are solved by enumeration.
_SMALL = 3
_PERMUTATIONS = np.array(list(__import__("itertools").permutations(range(_SMALL))), dtype=np.int64)


def _max_weight_matching(sources: np.ndarray, targets: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Maximum-weight bipartite matching on positive-weight edges; a mask of chosen edges.

    Source and target ids are separate name spaces (non-negative integers). The candidate
    graph falls apart into small connected components (local neighbourhoods of one frame
    pair), and the optimum of the whole is the optimum of each: an edge whose two ends have
    no other edge is taken directly; components of at most 3 x 3 nodes (almost all others)
    are solved at once, vectorised, by trying the 6 assignments of their zero-padded 3 x 3
    weight matrices; the rest go to one sparse LAPJV call (:func:`_sparse_lap_matching`).
    """
    n_edges = sources.size
    chosen = np.zeros(n_edges, dtype=bool)
    if n_edges == 0:
        return chosen
    src_degree = np.bincount(sources)
    dst_degree = np.bincount(targets)
    lonely = (src_degree[sources] == 1) & (dst_degree[targets] == 1)
    chosen[lonely] = True
    rest = np.flatnonzero(~lonely)
    if rest.size == 0:
        return chosen
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    _, s = np.unique(sources[rest], return_inverse=True)
    _, d = np.unique(targets[rest], return_inverse=True)
    w = weight[rest].astype(np.float64)
    ns, nd = int(s.max()) + 1, int(d.max()) + 1
    graph = coo_matrix((np.ones(s.size, np.int8), (s, ns + d)), shape=(ns + nd, ns + nd))
    n_comp, node_comp = connected_components(graph, directed=False)
    src_local, src_count = _local_ranks(node_comp[:ns], n_comp)
    dst_local, dst_count = _local_ranks(node_comp[ns:], n_comp)
    edge_comp = node_comp[s]
    small_comp = (src_count <= _SMALL) & (dst_count <= _SMALL)
    small = small_comp[edge_comp]
    picked = np.zeros(rest.size, dtype=bool)
    if small.any():
        # Dense (component, 3, 3) weights, 0 where there is no edge; the best of the 6
        # permutations, minus its zero entries, is the component's maximum-weight matching.
        small_ids = np.flatnonzero(small_comp)
        slot = np.full(n_comp, -1, dtype=np.int64)
        slot[small_ids] = np.arange(small_ids.size)
        edges = np.flatnonzero(small)
        c, r, q = slot[edge_comp[edges]], src_local[s[edges]], dst_local[d[edges]]
        dense = np.zeros((small_ids.size, _SMALL, _SMALL))
        index = np.full((small_ids.size, _SMALL, _SMALL), -1, dtype=np.int64)
        dense[c, r, q] = w[edges]
        index[c, r, q] = edges
        rows = np.arange(_SMALL)
        totals = dense[:, rows[None, :], _PERMUTATIONS].sum(axis=2)  # (components, 6)
        best = _PERMUTATIONS[np.argmax(totals, axis=1)]  # first best: deterministic ties
        assigned = index[np.arange(small_ids.size)[:, None], rows[None, :], best].ravel()
        picked[assigned[assigned >= 0]] = True
    if (~small).any():
        large = np.flatnonzero(~small)
        picked[large] = _sparse_lap_matching(s[large], d[large], w[large])
    chosen[rest] = picked
    return chosen


def _local_ranks(component: np.ndarray, n_comp: int):
    """Rank of each node within its component (stable), and the component sizes."""
    order = np.argsort(component, kind="stable")
    count = np.bincount(component, minlength=n_comp)
    start = np.cumsum(count) - count
    local = np.empty(component.size, dtype=np.int64)
    local[order] = np.arange(component.size) - start[component[order]]
    return local, count


def _sparse_lap_matching(s: np.ndarray, d: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Max-weight matching by one sparse LAPJV call on Jaqaman's augmented matrix.

    Link ``(i, j)`` costs ``K - w``, every node may stay unmatched at ``K`` (its own dummy),
    and the lower-right block repeats the candidate pattern (transposed) at ``K``; every full
    matching then has ``n_sources + n_targets`` entries, so the minimum is
    ``K (n_s + n_t) - max sum of w``. ``K = max w + 1`` keeps all entries non-zero, which
    scipy requires.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    _, s = np.unique(s, return_inverse=True)
    _, d = np.unique(d, return_inverse=True)
    ns, nd = int(s.max()) + 1, int(d.max()) + 1
    big = float(w.max()) + 1.0
    size = ns + nd
    rows = np.concatenate([s, np.arange(ns), ns + np.arange(nd), ns + d])
    cols = np.concatenate([d, nd + np.arange(ns), np.arange(nd), nd + s])
    values = np.concatenate([big - w, np.full(ns + nd, big), np.full(s.size, big)])
    matrix = coo_matrix((values, (rows, cols)), shape=(size, size)).tocsr()
    row_ind, col_ind = min_weight_full_bipartite_matching(matrix)
    partner = np.full(size, -1, dtype=np.int64)
    partner[row_ind] = col_ind
    return partner[s] == d


def tracks_from_links(
    detections: pd.DataFrame,
    children: np.ndarray,
    parents: np.ndarray,
    *,
    voxel_size=None,
    source: str = "detections",
) -> Tracks:
    """Tracks from links between detection rows (positions): ``parents[k] -> children[k]``.

    Every detection has at most one incoming link and a link goes forward in time; a
    detection with two outgoing links is a division, an outgoing link that skips frames a
    closed gap. Both start new tracks whose ``parent`` is the track of the link's source
    (the CTC convention). Track ids count from 1 in the order of (first frame, first row).
    Used by :func:`link` and to bring other linkers' results (laptrack, trackpy) into the
    same format.
    """
    t, _, names, voxel = _validated_points(detections, voxel_size, source)
    n = len(t)
    children = np.asarray(children, dtype=np.int64)
    parents = np.asarray(parents, dtype=np.int64)
    pred = np.full(n, -1, dtype=np.int64)
    if children.size:
        if np.any((children < 0) | (children >= n) | (parents < 0) | (parents >= n)):
            raise InputError(source, "a link refers to a detection row that does not exist")
        if np.unique(children).size != children.size:
            raise InputError(source, "a detection has more than one incoming link (merges are not supported)")
        if np.any(t[parents] >= t[children]):
            raise InputError(source, "a link does not go forward in time")
        pred[children] = parents
    return _build_tracks(detections, t, names, voxel, pred)


def _build_tracks(detections: pd.DataFrame, t: np.ndarray, names: list[str], voxel, pred: np.ndarray) -> Tracks:
    """Tracks from checked inputs: each row's predecessor row (-1: none)."""
    n = len(t)
    track, lineage = _lineage(t, pred)

    coordinates = detections[names].to_numpy(dtype=float)
    parent_of_track = np.zeros(len(lineage) + 1, dtype=np.int64)
    parent_of_track[lineage["label"].to_numpy()] = lineage["parent"].to_numpy()
    table = {"track_id": track, "t": t}
    table.update({name: coordinates[:, axis] for axis, name in enumerate(names)})
    table["parent"] = parent_of_track[track]
    table["detection"] = np.arange(n, dtype=np.int64)
    if "label" in detections.columns:
        table["label"] = detections["label"].to_numpy()
    frame = pd.DataFrame(table)
    sort = np.lexsort((t, track)) if n else np.arange(0)
    frame = frame.iloc[sort].reset_index(drop=True)
    return Tracks(
        table=frame,
        lineage=lineage,
        detection_track=track,
        spatial=tuple(names),
        voxel_size=voxel,
    )


def _lineage(t: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, pd.DataFrame]:
    """Track id per detection and the CTC table from each detection's predecessor (-1: none)."""
    n = t.size
    if n == 0:
        return np.zeros(0, np.int64), pd.DataFrame(
            {k: np.array([], np.int64) for k in ("label", "begin", "end", "parent")}
        )
    has_pred = pred >= 0
    n_succ = np.bincount(pred[has_pred], minlength=n)
    safe_pred = np.where(has_pred, pred, 0)
    starts_track = ~has_pred | (n_succ[safe_pred] >= 2) | (t - t[safe_pred] > 1)
    first_rows = np.flatnonzero(starts_track)
    first_rows = first_rows[np.lexsort((first_rows, t[first_rows]))]  # order: frame, then row
    track = np.zeros(n, dtype=np.int64)
    track[first_rows] = np.arange(1, first_rows.size + 1)
    # Pointer jumping: every detection points to the first detection of its track.
    root = np.where(starts_track, np.arange(n), safe_pred)
    while True:
        nxt = root[root]
        if np.array_equal(nxt, root):
            break
        root = nxt
    track = track[root]
    begin = t[first_rows]
    end = np.full(first_rows.size + 1, -1, dtype=np.int64)
    np.maximum.at(end, track, t)
    parent = np.where(has_pred[first_rows], track[safe_pred[first_rows]], 0)
    lineage = pd.DataFrame(
        {
            "label": np.arange(1, first_rows.size + 1, dtype=np.int64),
            "begin": begin.astype(np.int64),
            "end": end[1:],
            "parent": parent.astype(np.int64),
        }
    )
    return track, lineage


# -- statistics ---------------------------------------------------------------------------


def track_statistics(tracks: Tracks, *, time_interval: float | None = None) -> pd.DataFrame:
    """Per-track statistics.

    Columns: ``track_id, parent, begin, end, n_frames`` (end - begin + 1), ``n_detections``,
    ``path_length`` (sum of steps between the track's consecutive detections; micrometres if
    the tracks have a voxel size, else pixels), ``mean_speed`` (path length per frame, or per
    second when ``time_interval`` (seconds per frame) is given; NaN for one-frame tracks),
    ``n_children``, ``divides`` (two or more children), ``n_divisions`` (divisions of this
    track and all its descendants), ``lineage`` (id of the root track). Units in
    ``.attrs["units"]``.
    """
    lineage = tracks.lineage
    table = tracks.table
    n_tracks = len(lineage)
    ids = lineage["label"].to_numpy()
    parent = lineage["parent"].to_numpy()
    coordinates = table[list(tracks.spatial)].to_numpy(dtype=float)
    if tracks.voxel_size is not None:
        coordinates = coordinates * np.asarray(tracks.voxel_size)
    track_of_row = table["track_id"].to_numpy()
    path = np.zeros(n_tracks + 1)
    if len(table) > 1:
        same = track_of_row[1:] == track_of_row[:-1]  # table is sorted by track_id, t
        steps = np.linalg.norm(np.diff(coordinates, axis=0), axis=1)
        np.add.at(path, track_of_row[1:][same], steps[same])
    n_detections = np.bincount(track_of_row, minlength=n_tracks + 1)
    n_children = np.bincount(parent[parent > 0], minlength=n_tracks + 1)
    divides = n_children >= 2
    # Subtree division counts and roots: children have larger ids than parents (they begin
    # later), so one pass from the last id to the first accumulates bottom-up.
    subtree = divides.astype(np.int64).copy()
    for label in ids[::-1]:
        p = parent[label - 1]
        if p > 0:
            subtree[p] += subtree[label]
    root = np.arange(n_tracks + 1)
    for label in ids:
        p = parent[label - 1]
        if p > 0:
            root[label] = root[p]
    begin, end = lineage["begin"].to_numpy(), lineage["end"].to_numpy()
    frames = end - begin
    with np.errstate(invalid="ignore", divide="ignore"):
        speed = np.where(frames > 0, path[ids] / np.maximum(frames, 1), np.nan)
    if time_interval is not None:
        if not (np.isfinite(time_interval) and time_interval > 0):
            raise InputError("time_interval", f"must be a positive number of seconds, got {time_interval!r}")
        speed = speed / time_interval
    unit = "um" if tracks.voxel_size is not None else "px"
    stats = pd.DataFrame(
        {
            "track_id": ids,
            "parent": parent,
            "begin": begin,
            "end": end,
            "n_frames": frames + 1,
            "n_detections": n_detections[ids],
            "path_length": path[ids],
            "mean_speed": speed,
            "n_children": n_children[ids],
            "divides": divides[ids],
            "n_divisions": subtree[ids],
            "lineage": root[ids],
        }
    )
    stats.attrs["units"] = {"path_length": unit, "mean_speed": f"{unit}/{'s' if time_interval else 'frame'}"}
    stats.attrs["time_interval"] = time_interval
    return stats


def summarize_tracks(stats: pd.DataFrame) -> dict:
    """Summary of :func:`track_statistics`: counts, lengths and the pooled mean speed.

    ``mean_speed`` is total path length over total elapsed frames (or seconds) of all
    multi-frame tracks, so long tracks weigh in proportion to their duration.
    """
    units = dict(stats.attrs.get("units", {}))
    n_children = stats["n_children"].to_numpy()
    elapsed = float((stats["n_frames"].to_numpy() - 1).sum()) * (stats.attrs.get("time_interval") or 1.0)
    total_path = float(stats["path_length"].sum())
    summary = {
        "n_tracks": int(len(stats)),
        "n_lineages": int((stats["parent"] == 0).sum()),
        "n_divisions": int((n_children >= 2).sum()),
        "n_gap_closings": int((n_children == 1).sum()),
        "n_detections": int(stats["n_detections"].sum()),
        "mean_track_frames": float(stats["n_frames"].mean()) if len(stats) else math.nan,
        "median_track_frames": float(stats["n_frames"].median()) if len(stats) else math.nan,
        "mean_speed": total_path / elapsed if elapsed > 0 else math.nan,
        "speed_unit": units.get("mean_speed", ""),
        "length_unit": units.get("path_length", ""),
    }
    return summary
