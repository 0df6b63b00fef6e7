"""Per-track statistics of linked tracks (lengths, speeds, divisions) and their summary.

:func:`track_statistics` gives one row per track of a :class:`snakescope.tracking.linking.Tracks`,
:func:`summarize_tracks` pools them for a sample, :func:`write_track_statistics` writes
the table as CSV for the report.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from snakescope.errors import InputError
from snakescope.io.atomic import atomic_path
from snakescope.tracking.linking import Tracks

__all__ = ["summarize_tracks", "track_statistics", "write_track_statistics"]


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


def write_track_statistics(tracks: Tracks, csv_path: str | Path, *, time_interval: float | None) -> pd.DataFrame:
    """Write :func:`track_statistics` as CSV (atomically) and return the table.

    ``time_interval``: seconds per frame (the sample's ``time_interval``), None for speeds
    per frame.
    """
    stats = track_statistics(tracks, time_interval=time_interval)
    with atomic_path(csv_path) as tmp:
        stats.to_csv(tmp, index=False)
    return stats
