"""Linking detections into tracks (LAP with gap closing and divisions) and the Tracks format.

:func:`track_labels` tracks a segmented time-lapse with the ``tracking`` settings (the call
the stage layer makes); :func:`link` links detections (:mod:`snakescope.tracking.detections`)
and :func:`tracks_from_links` brings other linkers' links into the same format. Per-track
statistics are :mod:`snakescope.tracking.statistics`, the CTC result folder and metrics
:mod:`snakescope.tracking.ctc`.

Format
------
*Tracks* (:class:`Tracks`) hold

* ``table``: napari tracks-layer columns ``track_id, t, (z,) y, x`` plus ``parent`` (the
  parent track id, 0 for none), ``detection`` (row position in the input detections) and
  ``label`` when the detections had one; sorted by ``track_id, t``;
* ``lineage``: the Cell Tracking Challenge (CTC) table ``label, begin, end, parent``;
* ``detection_track``: the track id of every input detection row (every detection belongs
  to a track; an unlinked one is a one-frame track).

One id space serves napari, CTC and the masks written by :mod:`snakescope.tracking.ctc`, so
a track id is always a gap-free run of frames (CTC requires this): a track that skips frames
(closed gap) continues under a new id whose ``parent`` is the interrupted track, a parent
with a single child. A division is a parent with two children.

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
in ONE sparse LAPJV call (scipy ``min_weight_full_bipartite_matching``; all this is
:mod:`snakescope.tracking.matching`), and build the
tables with vectorised numpy. Same optimum as laptrack's per-frame and global LAPs, without
its per-frame dense distance matrices, pandas row loops and networkx tree conversion: on 100
frames / 100,000 detections (bench/track.py) it links in a fraction of a second where
laptrack 0.17 needs tens of seconds and trackpy (no divisions) seconds. The result is
deterministic: it depends only on the detections and their order (exactly equal costs, the
only source of ties, are resolved by that order).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from snakescope.errors import InputError
from snakescope.io.atomic import atomic_path
from snakescope.settings import Tracking
from snakescope.tracking.detections import detections_from_labels, spatial_columns, voxel_tuple
from snakescope.tracking.matching import max_weight_matching

__all__ = [
    "Tracks",
    "link",
    "track_labels",
    "tracks_from_links",
    "write_tracks_table",
]

#: Jaqaman's factor on the alternative (birth / death / no-split) costs, as in laptrack.
ALTERNATIVE_COST_FACTOR = 1.05
#: Percentile of the segment-step candidate costs that sets its alternative costs.
ALTERNATIVE_COST_PERCENTILE = 90
_EPSILON = 1e-6  # laptrack's alternative cost when all candidate costs are 0


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
    voxel = voxel_tuple(voxel_size, len(names), source) if voxel_size is not None else None
    scaled = coordinates * np.asarray(voxel) if voxel is not None else coordinates
    return t_float.astype(np.int64), scaled, names, voxel


def link(
    detections: pd.DataFrame,
    settings: Tracking,
    *,
    voxel_size: Sequence[float] | float | None = None,
    laptrack_compatible: bool = False,
    source: str = "detections",
) -> Tracks:
    """Link detections into tracks with gap closing and divisions (see the module docstring).

    Parameters
    ----------
    detections : DataFrame ``t, (z,) y, x`` (pixels) [+ ``label``], any row order.
    settings : the ``tracking`` settings; distances are in micrometres when a voxel size is
        known, else in pixels. ``max_distance``: largest frame-to-frame displacement;
        ``max_gap``: most missing frames a track may skip (0: only re-link neighbouring
        frames in the segment step; negative, outside the schema's range: no gap closing);
        ``gap_max_distance``: largest displacement across a gap (None: ``max_distance``);
        ``divisions``: detect one object at ``t - 1`` becoming two at ``t``;
        ``division_max_distance``: largest mother-daughter distance (None:
        ``max_distance``). ``enabled`` and ``refine`` are not used here.
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
    max_distance, max_gap, divisions = settings.max_distance, settings.max_gap, settings.divisions
    gap_max_distance, division_max_distance = settings.gap_max_distance, settings.division_max_distance
    distances = {
        "max_distance": max_distance,
        "gap_max_distance": gap_max_distance,
        "division_max_distance": division_max_distance,
    }
    for name, value in distances.items():
        if (value is not None or name == "max_distance") and not _positive(value):
            raise InputError(source, f"tracking.{name} must be a positive number, got {value!r}")
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
    chosen = max_weight_matching(src, dst, weight)
    pred = np.full(n, -1, dtype=np.int64)
    pred[dst[chosen]] = src[chosen]
    stats = {"frame_candidates": int(src.size), "frame_links": int(chosen.sum())}

    # Step 2: segment LAP (gap closing + divisions).
    has_succ = np.zeros(n, dtype=bool)
    has_succ[pred[pred >= 0]] = True
    starts = np.flatnonzero(pred < 0)
    ends = np.flatnonzero(~has_succ)
    gap_src, gap_dst, gap_cost = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0))
    if max_gap >= 0:
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
        chosen2[keep] = max_weight_matching(src2[keep], dst2[keep], weight2[keep])
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


def track_labels(labels, settings: Tracking, *, intensity=None, source: str) -> Tracks:
    """Track a segmented time-lapse: one detection per object per frame, linked by :func:`link`.

    Parameters
    ----------
    labels : the label image as an NGFF image (:func:`snakescope.io.labels.read_labels_image`)
        or anything with ``data`` (``(T, [Z,] Y, X)``, read one frame at a time), ``axes``
        (``"tyx"`` or ``"tzyx"``) and ``voxel_size`` (axis -> micrometres per pixel).
    settings : the ``tracking`` settings (``refine`` and the linking distances).
    intensity : the analysed image's channel with the labels' shape (e.g. a
        :class:`snakescope.io.frames.ChannelStack`); read only when ``settings.refine`` is
        not ``"none"``, and then required.
    source : the labels file or sample named in error messages.

    The tracks carry the ``label`` column that :func:`snakescope.tracking.ctc.write_ctc_result`
    needs to relabel ``labels.data``.
    """
    voxel = [labels.voxel_size[a] for a in labels.axes if a in "zyx"]
    detections = detections_from_labels(
        labels.data,
        intensity if settings.refine != "none" else None,
        refine=settings.refine,
        voxel_size=voxel,
        axes=labels.axes.upper(),
        source=source,
    )
    return link(detections, settings, voxel_size=voxel, source=source)


def write_tracks_table(tracks: Tracks, csv_path: str | Path) -> None:
    """Write the napari tracks table (:attr:`Tracks.table`) as CSV, atomically."""
    with atomic_path(csv_path) as tmp:
        tracks.table.to_csv(tmp, index=False)


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

