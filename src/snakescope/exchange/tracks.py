"""Tracks for napari and other trackers, besides the CTC folder (:mod:`snakescope.tracking.ctc`).

napari (:func:`write_napari_tracks`): ``<name>.csv`` with the columns napari's tracks layer
takes as ``data`` (``track_id, t, (z,) y, x``; coordinates in micrometres, t in frames) and
``<name>_graph.json`` with its ``graph`` (``{track id: [parent track id]}`` for every track
that has a parent: divisions and closed gaps), so that::

    data, graph = read_napari_tracks("tracks_napari.csv")
    viewer.add_tracks(data, graph=graph)   # with image layers scaled in micrometres

GEFF, the Graph Exchange File Format of Trackastra, Ultrack and motile (:func:`write_geff`,
geff-spec 1.3, a Zarr v2 group written with zarr): one node per detection (``t`` in
frames, ``(z,) y, x`` in micrometres, the segmentation ``label`` and CTC ``track_id``) and
one directed edge per link, frame to frame within a track and from a track's last detection
to the first of each child track (a division: two children; a closed gap: one). The nodes
also carry ``tracklet_id`` (GEFF's maximal unbranched paths: a track with its closed gaps)
and ``lineage_id`` (the root track of its lineage), declared as ``track_node_props``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from snakescope.errors import InputError
from snakescope.io.atomic import atomic_path
from snakescope.tracking.detections import voxel_tuple
from snakescope.tracking.linking import Tracks

__all__ = ["GEFF_VERSION", "graph_path", "read_napari_tracks", "track_edges", "write_geff", "write_napari_tracks"]

GEFF_VERSION = "1.3"


def _voxel(tracks: Tracks, voxel_size, source: str) -> tuple[float, ...] | None:
    size = voxel_size if voxel_size is not None else tracks.voxel_size
    return voxel_tuple(size, len(tracks.spatial), source) if size is not None else None


def _micrometres(tracks: Tracks, voxel) -> np.ndarray:
    coordinates = tracks.table[list(tracks.spatial)].to_numpy(dtype=np.float64)
    return coordinates * np.asarray(voxel, dtype=np.float64) if voxel is not None else coordinates


def graph_path(csv_path: str | Path) -> Path:
    """Where :func:`write_napari_tracks` puts the graph of ``csv_path``: ``<stem>_graph.json``."""
    csv_path = Path(csv_path)
    return csv_path.with_name(f"{csv_path.stem}_graph.json")


def write_napari_tracks(tracks: Tracks, path: str | Path, voxel_size: Sequence[float] | float | None = None
                        ) -> tuple[Path, Path]:
    """napari's tracks layer ``data`` as CSV at ``path`` (``track_id, t, (z,) y, x``, in
    micrometres with ``voxel_size`` ``([z,] y, x)``, default the tracks' own; pixels when
    neither is known) and its ``graph`` as JSON beside it (:func:`graph_path`); both
    written atomically. Returns the two paths."""
    path = Path(path)
    voxel = _voxel(tracks, voxel_size, str(path))
    data, graph = tracks.napari()
    data[:, 2:] = _micrometres(tracks, voxel)
    frame = pd.DataFrame(data, columns=["track_id", "t", *tracks.spatial])
    frame[["track_id", "t"]] = frame[["track_id", "t"]].astype(np.int64)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    graph_file = graph_path(path)
    with atomic_path(graph_file) as tmp:
        tmp.write_text(json.dumps({str(k): v for k, v in sorted(graph.items())}, indent=1) + "\n")
    return path, graph_file


def read_napari_tracks(path: str | Path) -> tuple[np.ndarray, dict[int, list[int]]]:
    """``(data, graph)`` for ``napari.layers.Tracks(data, graph=graph)`` from the files of
    :func:`write_napari_tracks`."""
    path = Path(path)
    try:
        data = pd.read_csv(path).to_numpy(dtype=np.float64)
        graph = {int(k): [int(p) for p in v] for k, v in json.loads(graph_path(path).read_text()).items()}
    except (OSError, ValueError) as exc:
        raise InputError(path, f"not napari tracks written by snakescope ({exc})") from None
    return data, graph


def track_edges(tracks: Tracks) -> tuple[np.ndarray, np.ndarray]:
    """The links between detections, as row positions of ``tracks.table``: consecutive rows
    of a track, and each child track's first row from its parent's last row."""
    table = tracks.table
    track = table["track_id"].to_numpy(np.int64)
    same = np.flatnonzero(track[1:] == track[:-1])  # the table is sorted by track_id, t
    sources, targets = [same], [same + 1]
    if len(table):
        first = {int(k): int(i) for k, i in zip(*np.unique(track, return_index=True))}
        last = {k: int(i) for k, i in zip(np.unique(track), np.r_[np.flatnonzero(np.diff(track)), len(track) - 1])}
        children = tracks.lineage[tracks.lineage["parent"] > 0]
        sources.append(np.array([last[int(p)] for p in children["parent"]], np.int64))
        targets.append(np.array([first[int(c)] for c in children["label"]], np.int64))
    return np.concatenate(sources).astype(np.int64), np.concatenate(targets).astype(np.int64)


def _tracklets_and_lineages(tracks: Tracks) -> tuple[dict[int, int], dict[int, int]]:
    """GEFF tracklet (a track joined to its single child across closed gaps) and lineage
    (root track) of every track id."""
    lineage = tracks.lineage
    parent = dict(zip(lineage["label"].astype(int), lineage["parent"].astype(int)))
    n_children = lineage.loc[lineage["parent"] > 0, "parent"].value_counts().to_dict()

    def root(track: int, joined: bool) -> int:
        while parent.get(track, 0) > 0 and (not joined or n_children.get(parent[track], 0) == 1):
            track = parent[track]
        return track

    return ({int(k): root(int(k), True) for k in parent}, {int(k): root(int(k), False) for k in parent})


def write_geff(tracks: Tracks, path: str | Path, voxel_size: Sequence[float] | float | None = None,
               time_interval: float | None = None) -> Path:
    """Write the tracks as a GEFF graph (a Zarr v2 group at ``path``, e.g. ``tracks.geff``).

    Coordinates in micrometres with ``voxel_size`` (default the tracks' own; pixels when
    neither is known); ``t`` in frames, with ``time_interval`` (seconds per frame) as the
    time axis' scale. See the module docstring for nodes, edges and properties. Written
    atomically. Returns ``path``.
    """
    import zarr

    path = Path(path)
    voxel = _voxel(tracks, voxel_size, str(path))
    table = tracks.table
    coordinates = _micrometres(tracks, voxel)
    node_ids = table["detection"].to_numpy(np.uint64)
    sources, targets = track_edges(tracks)
    tracklet_of, lineage_of = _tracklets_and_lineages(tracks)
    track = table["track_id"].to_numpy(np.int64)
    props = {"t": table["t"].to_numpy(np.int64)}
    props.update({axis: coordinates[:, i] for i, axis in enumerate(tracks.spatial)})
    props["track_id"] = track
    props["tracklet_id"] = np.array([tracklet_of[int(k)] for k in track], np.int64)
    props["lineage_id"] = np.array([lineage_of[int(k)] for k in track], np.int64)
    if "label" in table.columns:
        props["label"] = table["label"].to_numpy(np.int64)
    space_unit = "micrometer" if voxel is not None else None
    axes = [{"name": "t", "type": "time", "unit": "frame"}]
    if time_interval:
        axes[0].update(scale=float(time_interval), scaled_unit="second")
    axes += [{"name": a, "type": "space", "unit": space_unit} for a in tracks.spatial]
    for axis in axes:
        values = props[axis["name"]]
        if len(values):
            axis.update(min=float(values.min()), max=float(values.max()))
    descriptions = {"track_id": "Cell Tracking Challenge track id (a gap-free run of frames)",
                    "tracklet_id": "track without divisions, closed gaps included",
                    "lineage_id": "root track of the lineage", "label": "segmentation label in its frame"}
    node_meta = {name: {"identifier": name, "dtype": str(values.dtype), "varlength": False,
                        "unit": next((a["unit"] for a in axes if a["name"] == name), None),
                        "description": descriptions.get(name)} for name, values in props.items()}
    display = {"display_horizontal": "x", "display_vertical": "y", "display_time": "t"}
    if "z" in tracks.spatial:
        display["display_depth"] = "z"
    metadata = {"geff_version": GEFF_VERSION, "directed": True, "axes": axes, "node_props_metadata": node_meta,
                "edge_props_metadata": {}, "track_node_props": {"tracklet": "tracklet_id", "lineage": "lineage_id"},
                "display_hints": display,
                "extra": {"snakescope": {"n_tracks": int(tracks.n_tracks), "n_divisions": int(tracks.n_divisions),
                                         "voxel_size": list(voxel) if voxel is not None else None,
                                         "time_interval": time_interval}}}
    with atomic_path(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        root.attrs["geff"] = metadata
        nodes = root.create_group("nodes")
        _array(nodes, "ids", node_ids)
        node_props = nodes.create_group("props")
        for name, values in props.items():
            _array(node_props.create_group(name), "values", values)
        edges = root.create_group("edges")
        _array(edges, "ids", np.stack([node_ids[sources], node_ids[targets]], axis=1).reshape(-1, 2))
        edges.create_group("props")
    return path


def _array(group, name: str, values: np.ndarray) -> None:
    values = np.ascontiguousarray(values)
    chunks = tuple(max(1, min(n, 1 << 16)) for n in values.shape) or None
    array = group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=chunks)
    if values.size:
        array[...] = values
