"""Tests of tracking (detections, LAP linking, statistics), of the CTC format and metrics, and
of the report's track plot."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile

from snakescope.errors import InputError
from snakescope.settings import defaults
from snakescope.synthetic import make_timelapse, write_timelapse
from snakescope.tracking.ctc import (
    evaluate_ctc,
    evaluate_detections,
    mask_name,
    match_frame,
    read_ctc,
    summarize_metrics,
    write_ctc_result,
)
from snakescope.tracking.detections import detections_from_labels, read_points
from snakescope.tracking.linking import Tracks, link, track_labels, tracks_from_links, write_tracks_table
from snakescope.tracking.statistics import summarize_tracks, track_statistics, write_track_statistics

# Synthetic cells move at most ~4.3 um per frame and daughters start up to ~6 um from the
# mother's centre (see synthetic.py): these distances cover both.
MAX_DISTANCE = 6.0
DIVISION_DISTANCE = 8.0


def tracking(**changes):
    """The schema's tracking settings with ``changes``."""
    return defaults().tracking.replace(**changes)


@pytest.fixture(scope="module")
def dividing_2d():
    return make_timelapse(ndim=2, n_frames=25, n_cells=14, division_probability=0.08, seed=11)


@pytest.fixture(scope="module")
def dividing_3d():
    return make_timelapse(ndim=3, n_frames=12, n_cells=8, division_probability=0.1, seed=4)


@pytest.fixture(scope="module")
def steady_2d():
    """No divisions: every ground-truth track spans all frames."""
    return make_timelapse(ndim=2, n_frames=12, n_cells=10, division_probability=0.0, seed=5)


def _edges(tracks: Tracks) -> set[tuple[int, int]]:
    """Links between detection rows implied by tracks: within a track and parent -> child."""
    table = tracks.table
    edges = set()
    rows = table["detection"].to_numpy()
    ids = table["track_id"].to_numpy()
    same = ids[1:] == ids[:-1]
    edges.update(zip(rows[:-1][same].tolist(), rows[1:][same].tolist()))
    first = table.groupby("track_id")["detection"].first()
    last = table.groupby("track_id")["detection"].last()
    for label, parent in zip(tracks.lineage["label"], tracks.lineage["parent"]):
        if parent:
            edges.add((int(last[parent]), int(first[label])))
    return edges


def _truth_edges(detections: pd.DataFrame, lineage: pd.DataFrame) -> set[tuple[int, int]]:
    """True links for detections whose ``label`` is the CTC track id (synthetic data)."""
    key = {(int(t), int(label)): row for row, (t, label) in enumerate(zip(detections["t"], detections["label"]))}
    edges = set()
    for (t, label), row in key.items():
        if (t + 1, label) in key:
            edges.add((row, key[(t + 1, label)]))
    for r in lineage.itertuples(index=False):
        if r.parent and (r.begin - 1, r.parent) in key and (r.begin, r.label) in key:
            edges.add((key[(r.begin - 1, r.parent)], key[(r.begin, r.label)]))
    return edges


# -- detections ---------------------------------------------------------------------------


def test_detections_are_label_centroids_frame_by_frame(dividing_2d):
    class OneFrameAtATime:
        """A zarr-like array that only allows indexing single frames."""

        def __init__(self, array):
            self._array = array
            self.shape = array.shape
            self.dtype = array.dtype
            self.calls = []

        def __getitem__(self, index):
            assert isinstance(index, (int, np.integer)), f"indexed with {index!r}"
            self.calls.append(int(index))
            return self._array[index]

    labels = OneFrameAtATime(dividing_2d.labels)
    detections = detections_from_labels(labels, refine="none", voxel_size=dividing_2d.voxel_size)
    assert labels.calls == list(range(dividing_2d.n_frames))
    expected = dividing_2d.points.sort_values(["t", "label"]).reset_index(drop=True)
    assert list(detections.columns[:4]) == ["t", "y", "x", "label"]
    np.testing.assert_array_equal(detections["label"], expected["label"])
    np.testing.assert_allclose(detections[["y", "x"]], expected[["y", "x"]], atol=1e-9)
    areas = np.bincount(dividing_2d.labels[3].ravel())
    first = detections[detections["t"] == 3]
    np.testing.assert_array_equal(first["area"], areas[first["label"]])
    assert detections.attrs["voxel_size"] == (0.5, 0.5)


def test_subpixel_refinement_finds_spot_centres():
    rng = np.random.default_rng(3)
    shape = (2, 48, 48)
    grid = np.array([(12.0, 12.0), (12.0, 36.0), (36.0, 12.0), (36.0, 36.0)])
    true = grid + rng.uniform(-0.5, 0.5, (2, 4, 2))  # (frame, spot, yx), spots well apart
    yy, xx = np.mgrid[: shape[1], : shape[2]]
    image = np.full(shape, 100.0)
    labels = np.zeros(shape, np.uint16)
    for t in range(shape[0]):
        for k, (y, x) in enumerate(true[t]):
            image[t] += 1000 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.5**2))
            # Masks centred on the rounded position: their centroid is off by up to 0.5 px.
            labels[t][(yy - round(y)) ** 2 + (xx - round(x)) ** 2 <= 16] = k + 1
    errors = {}
    for mode in ("none", "weighted", "gaussian"):
        found = detections_from_labels(labels, image, refine=mode)
        position = found[["y", "x"]].to_numpy().reshape(2, 4, 2)
        errors[mode] = np.abs(position - true).max()
    assert errors["none"] > 0.1
    assert errors["weighted"] < errors["none"]
    assert errors["gaussian"] < 0.02


def test_read_points_napari_csv(tmp_path, dividing_3d):
    paths = write_timelapse(dividing_3d, tmp_path / "sample")
    points = read_points(next(iter(paths["points"].values())), ndim=3)
    assert list(points.columns) == ["t", "z", "y", "x"]
    assert points["t"].is_monotonic_increasing and points["t"].dtype == np.int64
    named = tmp_path / "named.csv"
    pd.DataFrame({"x": [1.0, 2.0], "y": [3.0, 4.0], "t": [1, 0]}).to_csv(named, index=False)
    assert read_points(named)["t"].tolist() == [0, 1]


# -- linking ------------------------------------------------------------------------------


@pytest.mark.parametrize("sample_name", ["dividing_2d", "dividing_3d"])
def test_clean_synthetic_links_perfectly(request, tmp_path, sample_name):
    sample = request.getfixturevalue(sample_name)
    paths = write_timelapse(sample, tmp_path / "gt")
    detections = detections_from_labels(sample.labels, refine="none", voxel_size=sample.voxel_size)
    tracks = link(detections, tracking(max_distance=MAX_DISTANCE, division_max_distance=DIVISION_DISTANCE))
    found, truth = _edges(tracks), _truth_edges(detections, sample.tracks)
    n_true_divisions = int((sample.tracks["parent"] > 0).sum() // 2)
    assert n_true_divisions >= 5
    # Frame-to-frame links are all right; at most one division edge may be lost/wrong.
    assert len(truth - found) <= 1 and len(found - truth) <= 1

    write_ctc_result(sample.labels, tracks, tmp_path / "res")
    metrics = evaluate_ctc(tmp_path / "res", paths["tracks_dir"], seg="TRA")
    assert metrics["valid"] == 1
    assert metrics["DET"] == 1.0 and metrics["SEG"] == 1.0
    assert metrics["TRA"] > 0.995
    assert metrics["division_precision"] == 1.0
    assert metrics["division_recall"] >= (n_true_divisions - 1) / n_true_divisions


def test_divisions_are_parents_with_two_children(dividing_2d):
    detections = detections_from_labels(dividing_2d.labels, refine="none", voxel_size=dividing_2d.voxel_size)
    with_divisions = link(detections, tracking(max_distance=MAX_DISTANCE, division_max_distance=DIVISION_DISTANCE))
    without = link(detections, tracking(max_distance=MAX_DISTANCE, divisions=False))
    assert with_divisions.n_divisions >= 10
    assert without.n_divisions == 0
    children = with_divisions.lineage.groupby("parent").size().drop(0, errors="ignore")
    assert set(children.tolist()) == {2}
    # A daughter begins the frame after its mother ends.
    lineage = with_divisions.lineage.set_index("label")
    for label, row in lineage[lineage["parent"] > 0].iterrows():
        assert row["begin"] == lineage.loc[row["parent"], "end"] + 1


def test_gap_closing_across_a_dropped_detection(steady_2d):
    detections = detections_from_labels(steady_2d.labels, refine="none", voxel_size=steady_2d.voxel_size)
    dropped = (detections["t"] == 5) & (detections["label"] == 3)
    kept = detections[~dropped].reset_index(drop=True)
    before = int(np.flatnonzero((kept["t"] == 4) & (kept["label"] == 3))[0])
    after = int(np.flatnonzero((kept["t"] == 6) & (kept["label"] == 3))[0])

    closed = link(kept, tracking(max_distance=MAX_DISTANCE, max_gap=2))
    track_before, track_after = closed.detection_track[before], closed.detection_track[after]
    assert track_before != track_after  # CTC: a track id never skips frames
    lineage = closed.lineage.set_index("label")
    assert lineage.loc[track_after, "parent"] == track_before
    assert (closed.lineage["parent"] == track_before).sum() == 1  # one child: a gap
    assert closed.n_divisions == 0
    assert len(closed.lineage) == 11  # ten cells, one of them in two pieces

    open_gap = link(kept, tracking(max_distance=MAX_DISTANCE, max_gap=-1))
    assert open_gap.lineage.set_index("label").loc[open_gap.detection_track[after], "parent"] == 0


def test_empty_frame_is_a_gap_not_an_error(tmp_path, steady_2d):
    labels = steady_2d.labels.copy()
    labels[5] = 0
    detections = detections_from_labels(labels, refine="none", voxel_size=steady_2d.voxel_size)
    assert 5 not in set(detections["t"])
    tracks = link(detections, tracking(max_distance=MAX_DISTANCE, max_gap=2))
    # Every one of the ten cells is bridged across frame 5 by a single-child parent link.
    assert len(tracks.lineage) == 20
    assert (tracks.lineage["parent"] > 0).sum() == 10
    assert tracks.lineage.groupby("parent").size().drop(0).eq(1).all()
    assert summarize_tracks(track_statistics(tracks))["n_gap_closings"] == 10
    # Laptrack's percentile rule rejects the costliest of the ten (unambiguous) gaps.
    compatible = link(detections, tracking(max_distance=MAX_DISTANCE, max_gap=2), laptrack_compatible=True)
    assert (compatible.lineage["parent"] > 0).sum() == 9

    paths = write_timelapse(steady_2d, tmp_path / "gt")
    write_ctc_result(labels, tracks, tmp_path / "res")
    assert not tifffile.imread(tmp_path / "res" / "mask005.tif").any()
    metrics = evaluate_ctc(tmp_path / "res", paths["tracks_dir"])
    assert metrics["valid"] == 1
    assert 0.8 < metrics["TRA"] < 1.0  # the lost frame costs, the rest is right


def test_anisotropic_voxels_change_the_nearest_neighbour():
    # Frame 0: one cell. Frame 1: one candidate 1 z-plane (2 um) away, one 3 px in x (1.5 um).
    detections = pd.DataFrame({"t": [0, 1, 1], "z": [5.0, 6.0, 5.0], "y": [20.0, 20.0, 20.0], "x": [20.0, 20.0, 23.0]})
    physical = link(detections, tracking(max_distance=5.0, divisions=False), voxel_size=(2.0, 0.5, 0.5))
    assert physical.detection_track[0] == physical.detection_track[2]
    pixels = link(detections, tracking(max_distance=5.0, divisions=False))
    assert pixels.detection_track[0] == pixels.detection_track[1]
    detections.attrs["voxel_size"] = (2.0, 0.5, 0.5)  # as detections_from_labels sets it
    from_attrs = link(detections, tracking(max_distance=5.0, divisions=False))
    assert from_attrs.detection_track[2] == physical.detection_track[0]


def test_matches_laptrack_links(dividing_2d):
    """With laptrack's alternative costs we reproduce its links, gaps and divisions exactly."""
    from laptrack import LapTrack

    detections = detections_from_labels(dividing_2d.labels, refine="none", voxel_size=dividing_2d.voxel_size)
    rng = np.random.default_rng(0)
    detections = detections[rng.random(len(detections)) > 0.05].reset_index(drop=True)  # gaps
    settings = tracking(max_distance=MAX_DISTANCE, max_gap=2, division_max_distance=DIVISION_DISTANCE)
    ours = link(detections, settings, laptrack_compatible=True)

    um = detections[["y", "x"]].to_numpy() * 0.5
    t = detections["t"].to_numpy()
    rows = [np.flatnonzero(t == k) for k in range(int(t.max()) + 1)]
    tracker = LapTrack(
        cutoff=MAX_DISTANCE**2,
        gap_closing_cutoff=MAX_DISTANCE**2,
        gap_closing_max_frame_count=3,
        splitting_cutoff=DIVISION_DISTANCE**2,
        merging_cutoff=False,
    )
    graph = tracker.predict([um[r] for r in rows])
    theirs = {(int(rows[a[0]][a[1]]), int(rows[b[0]][b[1]])) for a, b in graph.edges()}
    assert _edges(ours) == theirs
    assert ours.stats["gap_links"] > 0 and ours.stats["division_links"] > 0


def test_linking_is_deterministic_and_order_independent(dividing_2d):
    detections = detections_from_labels(dividing_2d.labels, refine="none", voxel_size=dividing_2d.voxel_size)
    first = link(detections, tracking(max_distance=MAX_DISTANCE))
    second = link(detections, tracking(max_distance=MAX_DISTANCE))
    pd.testing.assert_frame_equal(first.table, second.table)
    pd.testing.assert_frame_equal(first.lineage, second.lineage)
    shuffled_order = np.random.default_rng(1).permutation(len(detections))
    shuffled = detections.iloc[shuffled_order].reset_index(drop=True)
    third = link(shuffled, tracking(max_distance=MAX_DISTANCE))
    mapped = {(int(shuffled_order[a]), int(shuffled_order[b])) for a, b in _edges(third)}
    assert mapped == _edges(first)


def test_tracks_table_napari_and_lineage_formats(dividing_3d):
    detections = detections_from_labels(dividing_3d.labels, refine="none", voxel_size=dividing_3d.voxel_size)
    tracks = link(detections, tracking(max_distance=MAX_DISTANCE, division_max_distance=DIVISION_DISTANCE))
    assert list(tracks.table.columns[:5]) == ["track_id", "t", "z", "y", "x"]
    assert {"parent", "detection", "label"} <= set(tracks.table.columns)
    assert tracks.table.equals(tracks.table.sort_values(["track_id", "t"]).reset_index(drop=True))
    data, graph = tracks.napari()
    assert data.shape == (len(detections), 5)
    assert graph and all(len(p) == 1 for p in graph.values())
    # The mapping detection -> track agrees with the table and the lineage spans.
    np.testing.assert_array_equal(tracks.detection_track[tracks.table["detection"]], tracks.table["track_id"])
    spans = tracks.table.groupby("track_id")["t"].agg(["min", "max"])
    np.testing.assert_array_equal(spans["min"], tracks.lineage["begin"])
    np.testing.assert_array_equal(spans["max"], tracks.lineage["end"])


def test_empty_and_single_frame_inputs():
    empty = pd.DataFrame({"t": np.array([], int), "y": [], "x": []})
    tracks = link(empty, tracking(max_distance=3.0))
    assert tracks.n_tracks == 0 and len(tracks.table) == 0
    single = pd.DataFrame({"t": [4, 4], "y": [1.0, 9.0], "x": [1.0, 1.0]})
    tracks = link(single, tracking(max_distance=3.0))
    assert tracks.lineage.to_dict("list") == {"label": [1, 2], "begin": [4, 4], "end": [4, 4], "parent": [0, 0]}


def test_track_statistics():
    # Track A moves 2 px per frame along x for frames 0-4, then divides into B and C.
    rows = [(t, 10.0, 10.0 + 2 * t) for t in range(5)]
    rows += [(t, 14.0, 18.0 + t) for t in range(5, 8)] + [(t, 6.0, 18.0) for t in range(5, 8)]
    detections = pd.DataFrame(rows, columns=["t", "y", "x"])
    tracks = link(detections, tracking(max_distance=5.0, division_max_distance=5.0), voxel_size=0.5)
    assert tracks.n_divisions == 1
    stats = track_statistics(tracks, time_interval=30.0).set_index("track_id")
    mother = int(tracks.detection_track[0])
    assert stats.loc[mother, "n_frames"] == 5 and stats.loc[mother, "divides"]
    assert stats.loc[mother, "path_length"] == pytest.approx(4.0)  # 8 px * 0.5 um
    assert stats.loc[mother, "mean_speed"] == pytest.approx(1.0 / 30.0)  # um/s
    assert stats.loc[mother, "n_divisions"] == 1 and stats.loc[mother, "n_children"] == 2
    moving_daughter = int(tracks.detection_track[5])
    assert stats.loc[moving_daughter, "mean_speed"] == pytest.approx(0.5 / 30.0)
    assert stats.loc[moving_daughter, "lineage"] == mother
    summary = summarize_tracks(stats.reset_index())
    assert summary["n_tracks"] == 3 and summary["n_divisions"] == 1 and summary["n_lineages"] == 1
    assert summary["speed_unit"] == "um/s"
    assert summary["mean_speed"] == pytest.approx((4.0 + 1.0 + 0.0) / (4 + 2 + 2) / 30.0)


def _as_ngff(sample, labels=None):
    """The sample's labels as the stage layer reads them (an NGFF label image, 30 s frames)."""
    from snakescope.io.ngff import NgffImage

    axes = "tyx" if sample.ndim == 2 else "tzyx"
    labels = sample.labels if labels is None else labels
    return NgffImage(path=None, axes=axes, scale=[30.0, *sample.voxel_size], levels=[labels], attrs={})


def test_track_labels_with_settings(tmp_path, dividing_3d):
    class Unreadable:
        """An intensity image that must not be read (refine is 'none')."""

        shape = dividing_3d.labels.shape

        def __getitem__(self, index):
            raise AssertionError("intensity read although refine is 'none'")

    settings = tracking(max_distance=MAX_DISTANCE, division_max_distance=DIVISION_DISTANCE)
    tracks = track_labels(_as_ngff(dividing_3d), settings, intensity=Unreadable(), source="cells3dt")
    detections = detections_from_labels(dividing_3d.labels, refine="none", voxel_size=dividing_3d.voxel_size)
    expected = link(detections, settings)
    pd.testing.assert_frame_equal(tracks.table, expected.table)
    pd.testing.assert_frame_equal(tracks.lineage, expected.lineage)
    assert tracks.voxel_size == dividing_3d.voxel_size and tracks.n_divisions >= 3

    weighted = track_labels(_as_ngff(dividing_3d), settings.replace(refine="weighted"),
                            intensity=dividing_3d.image, source="cells3dt")
    assert not np.allclose(weighted.table[["z", "y", "x"]], tracks.table[["z", "y", "x"]])
    with pytest.raises(InputError, match="needs an intensity") as error:
        track_labels(_as_ngff(dividing_3d), settings.replace(refine="gaussian"), source="cells3dt")
    assert error.value.where == "cells3dt"

    write_tracks_table(tracks, tmp_path / "tracks.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "tracks.csv"), tracks.table, check_dtype=False)
    stats = write_track_statistics(tracks, tmp_path / "track_stats.csv", time_interval=30.0)
    assert stats.attrs["units"]["mean_speed"] == "um/s"
    assert pd.read_csv(tmp_path / "track_stats.csv")["track_id"].tolist() == tracks.lineage["label"].tolist()


def test_track_plot_2d_3d_and_no_tracks(tmp_path, dividing_2d, dividing_3d):
    import matplotlib.image

    from snakescope.report.qc import track_plot

    settings = tracking(max_distance=MAX_DISTANCE, division_max_distance=DIVISION_DISTANCE)
    cases = {
        "2d": _as_ngff(dividing_2d),
        "3d": _as_ngff(dividing_3d),
        "none": _as_ngff(dividing_3d, np.zeros_like(dividing_3d.labels)),
    }
    drawn = {}
    for name, labels in cases.items():
        tracks = track_labels(labels, settings, source=name)
        summary = summarize_tracks(track_statistics(tracks, time_interval=30.0))
        png = tmp_path / "qc" / f"{name}.png"
        track_plot(tracks, png, title=f"{name}: {tracks.n_tracks} tracks", summary=summary,
                   frame_shape=labels.shape[1:])
        drawn[name] = (tracks.n_tracks, matplotlib.image.imread(png)[..., :3])
    assert drawn["2d"][0] > 0 and drawn["3d"][0] > 0 and drawn["none"][0] == 0
    for name, (_, pixels) in drawn.items():
        colourful = (pixels.max(axis=-1) - pixels.min(axis=-1)) > 0.2  # track lines, not grey text
        assert colourful.any() == (name != "none"), name
    track_plot(track_labels(cases["none"], settings, source="none"), tmp_path / "bare.png")  # no frame shape
    assert (tmp_path / "bare.png").stat().st_size > 0


def test_track_sample_writes_every_output(tmp_path, dividing_3d):
    """The tracking stage of one sample, from NGFF files, with sub-pixel refinement."""
    from snakescope.ingest.convert import ingest
    from snakescope.io import labels as labels_io
    from snakescope.tracking import track_sample

    voxel = dict(zip("zyx", dividing_3d.voxel_size), t=30.0)
    tifffile.imwrite(tmp_path / "image.tif", dividing_3d.image, imagej=True, metadata={"axes": "TZYX"})
    tifffile.imwrite(tmp_path / "labels.tif", dividing_3d.labels.astype(np.uint16), imagej=True,
                     metadata={"axes": "TZYX"})
    ingest(tmp_path / "image.tif", "TZYX", tmp_path / "image.ome.zarr", name="image", voxel_size=voxel)
    ingest(tmp_path / "labels.tif", "TZYX", tmp_path / "as_image.ome.zarr", name="labels", voxel_size=voxel)

    def copy(frame, out):
        out[...] = frame[...]
        return len(np.unique(frame[...])) - 1

    labels_io.write_label_image(tmp_path / "as_image.ome.zarr", tmp_path / "labels.ome.zarr", copy)
    settings = tracking(max_distance=MAX_DISTANCE, division_max_distance=DIVISION_DISTANCE, refine="weighted")
    out = {name: tmp_path / "out" / name for name in ("tracks", "tracks.csv", "track_stats.csv", "tracks.png")}
    summary = track_sample(tmp_path / "labels.ome.zarr", tmp_path / "image.ome.zarr", settings, channel=0,
                           sample="cells3dt", ctc=out["tracks"], table=out["tracks.csv"],
                           stats=out["track_stats.csv"], figure=out["tracks.png"])
    assert all(path.exists() for path in out.values())
    expected = link(detections_from_labels(dividing_3d.labels, dividing_3d.image, refine="weighted",
                                           voxel_size=dividing_3d.voxel_size), settings)
    table = pd.read_csv(out["tracks.csv"])
    np.testing.assert_allclose(table[["z", "y", "x"]], expected.table[["z", "y", "x"]])
    assert summary["n_tracks"] == expected.n_tracks and summary["speed_unit"] == "um/s"
    assert read_ctc(out["tracks"], masks=False).tracks.equals(expected.lineage)


# -- CTC format and metrics ---------------------------------------------------------------


def test_ctc_round_trip(tmp_path, dividing_2d):
    detections = detections_from_labels(dividing_2d.labels, refine="none")
    tracks = link(detections, tracking(max_distance=12.0, division_max_distance=16.0))
    frames = (frame for frame in dividing_2d.labels)  # a stream: the frame count is unknown
    folder = write_ctc_result(frames, tracks, tmp_path / "01_RES")
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(["res_track.txt"] + [f"mask{t:03d}.tif" for t in range(dividing_2d.n_frames)])
    assert not list(tmp_path.glob("*.partial-*"))
    back = read_ctc(folder)
    pd.testing.assert_frame_equal(back.tracks, tracks.lineage)
    lut = np.zeros((dividing_2d.n_frames, int(dividing_2d.labels.max()) + 1), np.uint16)
    lut[tracks.table["t"], tracks.table["label"]] = tracks.table["track_id"]
    expected = np.stack([lut[t][frame] for t, frame in enumerate(dividing_2d.labels)])
    assert back.masks.dtype == np.uint16
    np.testing.assert_array_equal(back.masks, expected)


def test_ctc_mask_names_have_four_digits_from_1000_frames(tmp_path):
    assert mask_name(7, 999) == "mask007.tif" and mask_name(7, 1000) == "mask0007.tif"
    labels = np.zeros((1000, 4, 4), np.uint16)
    labels[:, 1, 1] = 1
    tracks = link(detections_from_labels(labels, refine="none"), tracking(max_distance=1.0))
    write_ctc_result(labels, tracks, tmp_path / "res")
    assert (tmp_path / "res" / "mask0999.tif").exists() and not (tmp_path / "res" / "mask999.tif").exists()
    assert (tmp_path / "res" / "res_track.txt").read_text() == "1 0 999 0\n"
    assert read_ctc(tmp_path / "res", masks=False).mask_paths[-1].name == "mask0999.tif"


def _gt_as_result(gt_tra, folder):
    folder.mkdir()
    for path in gt_tra.glob("man_track*.tif"):
        shutil.copy(path, folder / path.name.replace("man_track", "mask"))
    shutil.copy(gt_tra / "man_track.txt", folder / "res_track.txt")
    return folder


def test_metrics_ground_truth_against_itself_and_corrupted(tmp_path, dividing_2d):
    paths = write_timelapse(dividing_2d, tmp_path / "gt")
    perfect = evaluate_ctc(_gt_as_result(paths["tracks_dir"], tmp_path / "same"), paths["tracks_dir"].parent, seg="TRA")
    assert perfect["TRA"] == 1.0 and perfect["DET"] == 1.0 and perfect["SEG"] == 1.0
    assert perfect["division_f1"] == 1.0 and perfect["division_tp"] == int(
        (dividing_2d.tracks["parent"] > 0).sum() // 2
    )
    assert perfect["valid"] == 1

    # Forget every parent: divisions are lost and the mother-daughter edges are missing.
    orphans = _gt_as_result(paths["tracks_dir"], tmp_path / "orphans")
    table = pd.read_csv(orphans / "res_track.txt", sep=" ", header=None)
    table[3] = 0
    table.to_csv(orphans / "res_track.txt", sep=" ", header=False, index=False)
    lost = evaluate_ctc(orphans, paths["tracks_dir"])
    assert lost["division_recall"] == 0.0 and lost["division_tp"] == 0
    assert lost["TRA"] < 1.0 and lost["DET"] == 1.0 and lost["AOGM_EA"] > 0

    # Erase one object in one frame: a false negative vertex, DET and TRA drop.
    erased = _gt_as_result(paths["tracks_dir"], tmp_path / "erased")
    mask = tifffile.imread(erased / "mask000.tif")
    mask[mask == 1] = 0
    tifffile.imwrite(erased / "mask000.tif", mask)
    table = pd.read_csv(erased / "res_track.txt", sep=" ", header=None)
    table.loc[table[0] == 1, 1] = 1
    table.to_csv(erased / "res_track.txt", sep=" ", header=False, index=False)
    missing = evaluate_ctc(erased, paths["tracks_dir"])
    assert missing["AOGM_FN"] == 1 and missing["DET"] < 1.0 and missing["TRA"] < 1.0

    summary = summarize_metrics({"perfect": perfect, "orphans": lost})
    assert summary["n_samples"] == 2
    assert summary["pooled"]["division_tp"] == perfect["division_tp"]
    assert summary["pooled"]["division_recall"] == pytest.approx(0.5)
    assert summary["mean"]["TRA"] == pytest.approx((1.0 + lost["TRA"]) / 2)
    assert lost["TRA"] < summary["pooled"]["TRA"] < 1.0


def test_match_frame_agrees_with_ctc_metrics(tmp_path, dividing_2d):
    from ctc_metrics.utils.representations import match

    reference = dividing_2d.labels[6]
    result = reference.copy()
    result[result == 2] = 0  # one object lost
    result[:, :40][result[:, :40] > 0] += 50  # others relabelled
    shifted = np.roll(dividing_2d.labels[7], 2, axis=1)  # partial overlaps
    for computed in (result, shifted):
        tifffile.imwrite(tmp_path / "ref.tif", reference)
        tifffile.imwrite(tmp_path / "res.tif", computed)
        theirs = match(str(tmp_path / "ref.tif"), str(tmp_path / "res.tif"))
        ours = match_frame(reference, computed)
        assert ours[:4] == tuple(list(map(int, x)) for x in theirs[:4])
        np.testing.assert_allclose(ours[4], theirs[4])


def test_point_metrics_equal_mask_metrics(tmp_path, dividing_2d):
    paths = write_timelapse(dividing_2d, tmp_path / "gt")
    detections = detections_from_labels(dividing_2d.labels, refine="none", voxel_size=dividing_2d.voxel_size)
    tracks = link(detections, tracking(max_distance=MAX_DISTANCE, max_gap=0, division_max_distance=4.0))
    write_ctc_result(dividing_2d.labels, tracks, tmp_path / "res")
    from_masks = evaluate_ctc(tmp_path / "res", paths["tracks_dir"])
    from_points = evaluate_detections(
        detections["t"],
        detections["label"],
        dividing_2d.tracks,
        tracks.detection_track,
        tracks.lineage,
        n_frames=dividing_2d.n_frames,
    )
    assert from_masks["TRA"] < 1.0  # a tight division distance loses divisions
    for key in ("TRA", "DET", "AOGM", "division_tp", "division_fp", "division_fn", "valid"):
        assert from_points[key] == from_masks[key], key


# -- bad input ----------------------------------------------------------------------------


def test_bad_inputs_name_the_problem(tmp_path, steady_2d):
    with pytest.raises(InputError, match="no time axis") as error:
        detections_from_labels(np.zeros((32, 32), np.uint16), refine="none", source="plate1/A01.tif")
    assert error.value.where == "plate1/A01.tif"
    with pytest.raises(InputError, match="no time axis"):
        detections_from_labels(np.zeros((4, 32, 32), np.uint16), refine="none", axes="ZYX")
    with pytest.raises(InputError, match="frame 1 has shape"):
        detections_from_labels([np.zeros((8, 8), np.uint16), np.zeros((8, 9), np.uint16)], refine="none")
    with pytest.raises(InputError, match="needs an intensity"):
        detections_from_labels(np.zeros((2, 8, 8), np.uint16), refine="gaussian")
    with pytest.raises(InputError, match="time column"):
        link(pd.DataFrame({"y": [1.0], "x": [2.0]}), tracking(max_distance=3.0), source="sample7")
    with pytest.raises(InputError, match="voxel_size"):
        link(pd.DataFrame({"t": [0], "y": [1.0], "x": [2.0]}), tracking(max_distance=3.0), voxel_size=(1.0, 1.0, 1.0))
    csv = tmp_path / "points.csv"
    csv.write_text("index,axis-0,axis-1\n0,1.0,2.0\n")
    with pytest.raises(InputError, match="without a time axis"):
        read_points(csv)

    paths = write_timelapse(steady_2d, tmp_path / "gt")
    detections = detections_from_labels(steady_2d.labels[:8], refine="none")
    write_ctc_result(steady_2d.labels[:8], link(detections, tracking(max_distance=12.0)), tmp_path / "short")
    with pytest.raises(InputError, match="8 frames but the ground truth") as error:
        evaluate_ctc(tmp_path / "short", paths["tracks_dir"])
    assert "short" in error.value.where
    with pytest.raises(InputError, match="not a CTC"):
        read_ctc(tmp_path)
    with pytest.raises(InputError, match="forward in time"):
        tracks_from_links(pd.DataFrame({"t": [0, 1], "y": [0.0, 0.0], "x": [0.0, 0.0]}), [0], [1])
