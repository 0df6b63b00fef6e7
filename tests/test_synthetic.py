"""Tests of the synthetic time-lapse generator and its writer."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage
from skimage.measure import regionprops

from snakescope.synthetic import CAMERA_OFFSET, make_timelapse, write_timelapse


@pytest.fixture(scope="module")
def sample_2d():
    return make_timelapse(seed=0)


@pytest.fixture(scope="module")
def dividing_2d():
    return make_timelapse(division_probability=0.3, seed=1)


@pytest.fixture(scope="module")
def dividing_3d():
    return make_timelapse(ndim=3, n_frames=8, division_probability=0.3, seed=2)


@pytest.fixture(scope="module")
def sample_3d_2ch():
    return make_timelapse(ndim=3, n_frames=4, n_channels=2, seed=5)


def _frames_of(labels):
    """label -> sorted list of frames in which it has pixels."""
    frames: dict[int, list[int]] = {}
    for t, frame in enumerate(labels):
        for label in np.unique(frame):
            if label:
                frames.setdefault(int(label), []).append(t)
    return frames


def _nuclear_channel(sample):
    return sample.image[:, 0] if "C" in sample.axes else sample.image


# -- determinism, shapes -----------------------------------------------------------------


def test_same_seed_gives_identical_output_and_other_seed_differs():
    kwargs = dict(n_frames=4, n_channels=2, division_probability=0.2)
    a, b = make_timelapse(seed=7, **kwargs), make_timelapse(seed=7, **kwargs)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    for name in ("tracks", "classes", "points"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    c = make_timelapse(seed=8, **kwargs)
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.labels, c.labels)


@pytest.mark.parametrize(
    "kwargs, image_shape, axes, voxel",
    [
        (dict(), (10, 128, 128), "TYX", (0.5, 0.5)),
        (dict(ndim=3, n_frames=3), (3, 16, 96, 96), "TZYX", (2.0, 0.5, 0.5)),
        (dict(n_channels=2, n_frames=3), (3, 2, 128, 128), "TCYX", (0.5, 0.5)),
        (dict(ndim=3, n_channels=2, n_frames=2, shape=(12, 80, 90)), (2, 2, 12, 80, 90), "TCZYX", (2.0, 0.5, 0.5)),
        (dict(n_frames=2, shape=(100, 140)), (2, 100, 140), "TYX", (0.5, 0.5)),
    ],
)
def test_dtype_shape_axes(kwargs, image_shape, axes, voxel):
    sample = make_timelapse(**kwargs)
    assert sample.image.dtype == np.uint16 and sample.labels.dtype == np.uint16
    assert sample.image.shape == image_shape
    assert sample.axes == axes and len(axes) == sample.image.ndim
    spatial = tuple(s for s, a in zip(image_shape, axes) if a != "C")
    assert sample.labels.shape == spatial
    assert sample.voxel_size == voxel
    assert sample.class_names == ("round", "elongated")
    assert list(sample.points.columns) == ["t", *(["z"] if "Z" in axes else []), "y", "x", "label", "class_name"]


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError):
        make_timelapse(ndim=4)
    with pytest.raises(ValueError):
        make_timelapse(shape=(16, 64, 64))  # 3 dims for ndim=2
    with pytest.raises(ValueError):
        make_timelapse(n_cells=400, n_frames=1)  # cannot fit without overlap


def test_default_2d_is_fast():
    start = time.perf_counter()
    make_timelapse()
    assert time.perf_counter() - start < 1.0


# -- ground truth ------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["sample_2d", "dividing_2d", "dividing_3d"])
def test_tracks_match_label_images(fixture, request):
    sample = request.getfixturevalue(fixture)
    tracks = sample.tracks
    assert list(tracks.columns) == ["label", "begin", "end", "parent"]
    assert tracks["label"].tolist() == list(range(1, len(tracks) + 1))  # consecutive ids from 1
    frames = _frames_of(sample.labels)
    assert set(frames) == set(tracks["label"])
    for row in tracks.itertuples(index=False):
        assert frames[row.label] == list(range(row.begin, row.end + 1)), row
    # Objects per frame == tracks alive (a label image cannot overlap, but could lose objects).
    for t, frame in enumerate(sample.labels):
        alive = ((tracks["begin"] <= t) & (tracks["end"] >= t)).sum()
        assert len(np.unique(frame[frame > 0])) == alive
        full_connectivity = ndimage.generate_binary_structure(frame.ndim, frame.ndim)
        _, n_components = ndimage.label(frame > 0, structure=full_connectivity)
        assert n_components == alive  # no two objects touch


@pytest.mark.parametrize("fixture", ["dividing_2d", "dividing_3d"])
def test_divisions_are_consistent(fixture, request):
    sample = request.getfixturevalue(fixture)
    tracks = sample.tracks.set_index("label")
    daughters = tracks[tracks["parent"] > 0]
    assert len(daughters) >= 2  # at least one division at this rate and seed
    class_of = sample.classes.set_index("label")["class_name"]
    for parent, group in daughters.groupby("parent"):
        assert parent in tracks.index
        assert len(group) == 2
        assert (group["begin"] == tracks.loc[parent, "end"] + 1).all()
        assert tracks.loc[parent, "end"] - tracks.loc[parent, "begin"] + 1 >= 3
        assert (class_of[group.index] == class_of[parent]).all()  # daughters inherit the class
    assert (tracks.loc[tracks["parent"] == 0, "begin"] == 0).all()  # no cell appears from nowhere


def test_no_divisions_when_probability_is_zero():
    sample = make_timelapse(division_probability=0.0, n_frames=6, seed=3)
    assert (sample.tracks["parent"] == 0).all()
    assert len(sample.tracks) == 12


@pytest.mark.parametrize("fixture", ["dividing_2d", "dividing_3d"])
def test_points_are_label_centroids(fixture, request):
    sample = request.getfixturevalue(fixture)
    spatial = ["y", "x"] if sample.labels.ndim == 3 else ["z", "y", "x"]
    alive = sum(len(np.unique(f)) - 1 for f in sample.labels)
    assert len(sample.points) == alive
    class_of = sample.classes.set_index("label")["class_name"]
    for row in sample.points.itertuples(index=False):
        frame = sample.labels[row.t]
        expected = ndimage.center_of_mass(frame == row.label)
        np.testing.assert_allclose([getattr(row, n) for n in spatial], expected, atol=1e-6)
        assert row.class_name == class_of[row.label]


def test_motion_is_small_and_linkable(dividing_2d):
    points = dividing_2d.points
    for t in range(dividing_2d.n_frames - 1):
        now = points[points["t"] == t].set_index("label")
        later = points[points["t"] == t + 1].set_index("label")
        for label in now.index.intersection(later.index):
            step = np.hypot(*(later.loc[label, ["y", "x"]] - now.loc[label, ["y", "x"]]))
            assert step < 3.5
            others = later.drop(index=label)[["y", "x"]].to_numpy()
            nearest_other = np.hypot(*(others - now.loc[label, ["y", "x"]].to_numpy()).T).min()
            assert step < nearest_other  # nearest-neighbour linking gets it right


# -- image formation ---------------------------------------------------------------------


def test_blank_band_is_exact_zero(sample_3d_2ch):
    sample = make_timelapse(n_channels=2, n_frames=3, blank_fraction=0.15, seed=4)
    zero = sample.image == 0
    blank = zero[0, 0]
    assert np.all(zero == blank)  # same pixels in every frame and channel
    assert abs(blank.mean() - 0.15) < 0.02
    assert not sample.labels[:, blank].any()  # nuclei kept off the blanked band
    # The band touches an image edge.
    rows, cols = np.nonzero(blank)
    assert 0 in rows or 127 in rows or 0 in cols or 127 in cols
    # 3D: the band spans all z slices.
    zero3d = sample_3d_2ch.image == 0
    assert np.all(zero3d == zero3d[0, 0, 0]) and 0.07 < zero3d[0, 0, 0].mean() < 0.13


def test_no_blank_without_blank_fraction():
    sample = make_timelapse(n_frames=2, blank_fraction=0.0)
    assert sample.image.min() > 0


@pytest.mark.parametrize("fixture", ["sample_2d", "dividing_3d"])
def test_nuclei_are_brighter_than_background(fixture, request):
    sample = request.getfixturevalue(fixture)
    image = _nuclear_channel(sample).astype(float)
    inside = sample.labels > 0
    outside = ~inside & (image > 0)
    assert image[inside].mean() > image[outside].mean() + 0.5 * 60


def test_photon_scaling():
    dim = make_timelapse(n_frames=3, photons=30.0, seed=6)
    bright = make_timelapse(n_frames=3, photons=300.0, seed=6)
    contrasts = []
    for sample in (dim, bright):
        image = sample.image.astype(float)
        background = image[(sample.labels == 0) & (image > 0)].mean()
        contrasts.append(image[sample.labels > 0].mean() - background)
    # Nuclear signal above background ~ photons (soft edges lower it a little).
    assert 0.6 * 30 < contrasts[0] < 1.2 * 30
    assert 0.6 * 300 < contrasts[1] < 1.2 * 300


@pytest.mark.parametrize("photons, read_noise", [(60.0, 3.0), (200.0, 10.0)])
def test_background_noise_is_poisson_plus_read_noise(photons, read_noise):
    sample = make_timelapse(n_frames=12, photons=photons, read_noise=read_noise, seed=9)
    image = sample.image.astype(float)
    # Pixels far from every nucleus in every frame, and not blanked: flat background.
    near = ndimage.binary_dilation(sample.labels.any(axis=0), iterations=8)
    flat = ~near & (image[0] > 0)
    assert flat.sum() > 1000
    series = image[:, flat]  # (T, pixels); temporal statistics remove the illumination gradient
    variance = series.var(axis=0, ddof=1).mean()
    expected = (series.mean() - CAMERA_OFFSET) + read_noise**2 + 1 / 12  # photons + read + rounding
    assert variance == pytest.approx(expected, rel=0.12)


def test_second_channel_is_a_ring_around_nuclei():
    sample = make_timelapse(n_frames=2, n_channels=2, seed=1)
    nucleus = sample.labels[0] > 0
    ring = ndimage.binary_dilation(nucleus, iterations=3) & ~ndimage.binary_dilation(nucleus, iterations=1)
    channel1 = sample.image[0, 1].astype(float)
    channel0 = sample.image[0, 0].astype(float)
    assert channel1[ring].mean() > channel1[nucleus].mean() + 5  # cytoplasm, not nucleus
    assert channel0[nucleus].mean() > channel1[nucleus].mean()


def test_classes_differ_in_shape(dividing_2d):
    class_of = dividing_2d.classes.set_index("label")["class_name"]
    props = {"round": [], "elongated": []}
    for frame in dividing_2d.labels:
        for region in regionprops(frame):
            props[class_of[region.label]].append((region.area, region.eccentricity))
    round_, elongated = np.array(props["round"]), np.array(props["elongated"])
    assert len(round_) > 10 and len(elongated) > 10
    assert elongated[:, 0].mean() > 1.2 * round_[:, 0].mean()  # larger
    assert elongated[:, 1].mean() > round_[:, 1].mean() + 0.3  # more elongated
    assert elongated[:, 1].min() > round_[:, 1].max()  # separable by eccentricity alone


def test_3d_nuclei_are_flatter_in_pixels(dividing_3d):
    for region in regionprops(dividing_3d.labels[0]):
        z0, y0, x0, z1, y1, x1 = region.bbox
        assert z1 - z0 < min(y1 - y0, x1 - x0)


def test_each_class_name_is_used():
    sample = make_timelapse(n_frames=2, class_names=("a", "b", "c"), n_cells=9)
    assert sample.classes["class_name"].value_counts().to_dict() == {"a": 3, "b": 3, "c": 3}


# -- writing -----------------------------------------------------------------------------


def _check_written(sample, paths):
    with tifffile.TiffFile(paths["image"]) as tif:
        axes = tif.series[0].axes
        image = tif.asarray()
        spacing = tif.imagej_metadata.get("spacing")
        resolution = tif.pages[0].resolution
    assert axes == paths["image_axes"]
    expected = sample.image.transpose([sample.axes.index(a) for a in axes])
    np.testing.assert_array_equal(image, expected)
    assert resolution == pytest.approx((1 / sample.voxel_size[-1], 1 / sample.voxel_size[-2]))
    if sample.ndim == 3:
        assert spacing == pytest.approx(sample.voxel_size[0])

    with tifffile.TiffFile(paths["labels"]) as tif:
        assert tif.series[0].axes == ("TYX" if sample.ndim == 2 else "TZYX")
        np.testing.assert_array_equal(tif.asarray(), sample.labels)

    man_track = pd.read_csv(paths["man_track"], sep=" ", header=None, names=["label", "begin", "end", "parent"])
    pd.testing.assert_frame_equal(man_track, sample.tracks, check_dtype=False)
    assert paths["man_track"].parent == paths["tracks_dir"]
    masks = sorted(paths["tracks_dir"].glob("man_track*.tif"))
    assert [m.name for m in masks] == [f"man_track{t:03d}.tif" for t in range(sample.n_frames)]
    for t, mask in enumerate(masks):
        np.testing.assert_array_equal(tifffile.imread(mask), sample.labels[t])

    pd.testing.assert_frame_equal(pd.read_csv(paths["classes"]), sample.classes, check_dtype=False)

    n_axes = sample.ndim + 1
    header = ",".join(["index"] + [f"axis-{i}" for i in range(n_axes)])
    coordinates = ["t", "y", "x"] if sample.ndim == 2 else ["t", "z", "y", "x"]
    assert set(paths["points"]) == set(paths["points_sparse"]) == set(sample.class_names)
    for class_name in sample.class_names:
        full_path, sparse_path = paths["points"][class_name], paths["points_sparse"][class_name]
        assert full_path.name == f"points_{class_name}.csv"
        assert sparse_path.name == f"points_sparse_{class_name}.csv"
        for path in (full_path, sparse_path):
            assert path.read_text().splitlines()[0] == header
        full, sparse = pd.read_csv(full_path), pd.read_csv(sparse_path)
        truth = sample.points[sample.points["class_name"] == class_name][coordinates].to_numpy()
        assert full["index"].tolist() == list(range(len(full)))
        assert sparse["index"].tolist() == list(range(len(sparse)))
        np.testing.assert_allclose(full.iloc[:, 1:].to_numpy(), truth)
        assert 0 < len(sparse) < len(full)
        assert len(sparse) == pytest.approx(0.3 * len(full), abs=1)
        assert sparse["axis-0"].nunique() > 1  # several time points annotated
        full_rows = {tuple(r) for r in full.iloc[:, 1:].to_numpy()}
        assert all(tuple(r) in full_rows for r in sparse.iloc[:, 1:].to_numpy())


def test_write_2d_round_trip(sample_2d, tmp_path):
    paths = write_timelapse(sample_2d, tmp_path / "new" / "sample")
    assert paths["image_axes"] == "TYX"
    _check_written(sample_2d, paths)


def test_write_3d_two_channels_round_trip(sample_3d_2ch, tmp_path):
    paths = write_timelapse(sample_3d_2ch, tmp_path)
    assert paths["image_axes"] == "TZCYX"  # ImageJ order
    _check_written(sample_3d_2ch, paths)


def test_sparse_points_are_seeded(sample_2d, tmp_path):
    first = write_timelapse(sample_2d, tmp_path / "a")
    second = write_timelapse(sample_2d, tmp_path / "b")
    for class_name in sample_2d.class_names:
        assert first["points_sparse"][class_name].read_text() == second["points_sparse"][class_name].read_text()
