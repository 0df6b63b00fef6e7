"""TIFF -> OME-Zarr: exact values, axes, pyramid, NGFF readers, and every kind of bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from snakescope.io import ngff
from snakescope.errors import InputError
from snakescope.ingest.convert import ingest
from snakescope.settings import defaults


def read_level0(path):
    return ngff.read_image(path).data[...]


def test_tzyx_values_exact_and_metadata(tzyx_stack, tmp_path):
    path, data = tzyx_stack
    out = tmp_path / "img.ome.zarr"
    summary = ingest(path, "TZYX", out, name="s", voxel_size={"z": 2.0, "y": 0.5, "x": 0.25, "t": 60},
                     settings=defaults().ingest.replace(chunks={"z": 2, "y": 32, "x": 32}, pyramid_levels=2))
    image = ngff.read_image(out)
    assert image.axes == "tzyx"
    np.testing.assert_array_equal(image.data[...], data)
    assert image.data.dtype == np.uint16
    assert image.data.chunks == (1, 2, 32, 32)
    assert image.scale == [60.0, 2.0, 0.5, 0.25]
    assert [lvl.shape for lvl in image.levels] == [(3, 5, 70, 90), (3, 5, 35, 45), (3, 5, 18, 23)]
    # nearest pyramid: every second pixel of the level above
    np.testing.assert_array_equal(image.levels[1][...], data[:, :, ::2, ::2])
    ms = image.attrs["multiscales"][0]
    assert ms["version"] == "0.4"
    assert ms["datasets"][2]["coordinateTransformations"][0]["scale"] == [60.0, 2.0, 2.0, 1.0]
    assert {a["name"]: a.get("unit") for a in ms["axes"]} == {"t": "second", "z": "micrometer", "y": "micrometer", "x": "micrometer"}
    assert summary["min"] == data.min() and summary["max"] == data.max()


def test_axes_are_reordered_to_ngff_order(tmp_path, rng):
    data = rng.integers(0, 255, size=(4, 2, 40, 50), dtype=np.uint8)  # Z C Y X (ImageJ order)
    path = tmp_path / "zcyx.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZCYX"})
    out = tmp_path / "o.ome.zarr"
    ingest(path, "ZCYX", out, name="s", settings=defaults().ingest.replace(pyramid_levels=0))
    image = ngff.read_image(out)
    assert image.axes == "czyx"
    np.testing.assert_array_equal(image.data[...], np.transpose(data, (1, 0, 2, 3)))


def test_axes_from_file_metadata_when_not_given(tzyx_stack, tmp_path):
    path, data = tzyx_stack
    ingest(path, None, tmp_path / "o.ome.zarr", name="s")
    assert ngff.read_image(tmp_path / "o.ome.zarr").axes == "tzyx"


def test_file_sequence_glob(tmp_path, rng):
    data = rng.integers(0, 1000, size=(4, 30, 40), dtype=np.uint16)
    for t in range(4):
        tifffile.imwrite(tmp_path / f"frame_t{t}.tif", data[t])
    # natural order: t10 must come after t2 when there are many; check with t0..t3
    ingest(str(tmp_path / "frame_t*.tif"), "TYX", tmp_path / "o.ome.zarr", name="s")
    np.testing.assert_array_equal(read_level0(tmp_path / "o.ome.zarr"), data)


def test_compressed_and_tiled_tiff(tmp_path, rng):
    data = rng.integers(0, 60000, size=(3, 256, 200), dtype=np.uint16)
    path = tmp_path / "tiled.ome.tif"
    tifffile.imwrite(path, data, tile=(64, 64), compression="zlib", metadata={"axes": "ZYX"})
    ingest(path, "ZYX", tmp_path / "o.ome.zarr", name="s", settings=defaults().ingest.replace(chunks={"z": 2, "y": 64, "x": 64}))
    np.testing.assert_array_equal(read_level0(tmp_path / "o.ome.zarr"), data)


def test_float_data_kept_exactly(tmp_path, rng):
    data = rng.normal(10, 3, size=(50, 60)).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", data)
    ingest(tmp_path / "f.tif", "YX", tmp_path / "o.ome.zarr", name="s")
    np.testing.assert_array_equal(read_level0(tmp_path / "o.ome.zarr"), data)


def test_readable_by_ome_zarr_py(tzyx_stack, tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    path, data = tzyx_stack
    out = tmp_path / "o.ome.zarr"
    ingest(path, "TZYX", out, name="s", voxel_size={"z": 1, "y": 0.5, "x": 0.5}, settings=defaults().ingest.replace(chunks={"z": 16, "y": 32, "x": 32}, pyramid_levels=1))
    nodes = list(Reader(parse_url(str(out)))())
    assert nodes and nodes[0].load(Multiscales)
    arrays = nodes[0].data
    assert [a.shape for a in arrays] == [(3, 5, 70, 90), (3, 5, 35, 45)]
    np.testing.assert_array_equal(np.asarray(arrays[0]), data)
    assert [a["name"] for a in nodes[0].metadata["axes"]] == ["t", "z", "y", "x"]


def test_peak_memory_is_a_few_slabs(tmp_path):
    """Slabs cut large planes into bands, so a plane bigger than the budget is never whole."""
    regions = list(ngff.slabs("yx", (4096, 4096), (512, 512), itemsize=2, max_bytes=4 * 2**20))
    assert max((r[0].stop - r[0].start) * 4096 * 2 for r in regions) <= 4 * 2**20
    covered = np.zeros((4096,), bool)
    for r in regions:
        covered[r[0]] = True
    assert covered.all()


# ---- bad input -------------------------------------------------------------------------


def expect_error(path, axes, tmp_path, *fragments):
    out = tmp_path / "bad.ome.zarr"
    with pytest.raises(InputError) as err:
        ingest(path, axes, out, name="bad")
    message = str(err.value)
    assert str(path) in message or str(path.parent) in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert not out.exists()
    assert not list(tmp_path.glob("bad.ome.zarr.partial-*")), "a partial output was left behind"
    return message


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.tif", "YX", tmp_path, "file not found")


def test_not_a_tiff(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("this is not an image\n" * 10)
    expect_error(path, "YX", tmp_path, "not a readable TIFF")


def test_truncated_tiff(tzyx_stack, tmp_path):
    path, _ = tzyx_stack
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    expect_error(path, "TZYX", tmp_path, "truncated")


def test_truncated_compressed_tiff(tmp_path, rng):
    data = rng.integers(0, 60000, size=(6, 128, 128), dtype=np.uint16)
    path = tmp_path / "c.tif"
    tifffile.imwrite(path, data, compression="zlib", metadata={"axes": "ZYX"})
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * 0.6)])
    expect_error(path, "ZYX", tmp_path)


def test_axes_do_not_match_dimensions(tzyx_stack, tmp_path):
    path, _ = tzyx_stack
    msg = expect_error(path, "ZYX", tmp_path, "3 dimensions", "has 4", "TZYX")
    assert "(3, 5, 70, 90)" in msg


def test_invalid_axes_letters(tzyx_stack, tmp_path):
    path, _ = tzyx_stack
    expect_error(path, "TQYX", tmp_path, "letters must come from")


def test_constant_image(tmp_path):
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, np.full((20, 20), 7, np.uint16))
    expect_error(path, "YX", tmp_path, "constant image", "7")


def test_nan_in_float_image(tmp_path, rng):
    data = rng.normal(size=(30, 30)).astype(np.float32)
    data[3, 4] = np.nan
    path = tmp_path / "nan.tif"
    tifffile.imwrite(path, data)
    expect_error(path, "YX", tmp_path, "1 NaN")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.tif"
    path.write_bytes(b"")
    expect_error(path, "YX", tmp_path, "empty")


def test_sequence_with_differing_frames(tmp_path, rng):
    tifffile.imwrite(tmp_path / "f0.tif", rng.integers(0, 9, (20, 20), dtype=np.uint16))
    tifffile.imwrite(tmp_path / "f1.tif", rng.integers(0, 9, (20, 21), dtype=np.uint16))
    with pytest.raises(InputError, match=r"f1.tif: shape \(20, 21\)"):
        ingest(str(tmp_path / "f*.tif"), "TYX", tmp_path / "o.ome.zarr", name="s")


def test_failure_keeps_previous_results_untouched(tzyx_stack, tmp_path):
    """A failed ingest into a fresh folder leaves no output and no partial folder."""
    path, _ = tzyx_stack
    good = tmp_path / "good.ome.zarr"
    ingest(path, "TZYX", good, name="s")
    before = sorted(p.name for p in tmp_path.iterdir())
    bad = tmp_path / "flat.tif"
    tifffile.imwrite(bad, np.zeros((8, 8), np.uint8))
    with pytest.raises(InputError):
        ingest(bad, "YX", tmp_path / "bad.ome.zarr", name="b")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before + ["flat.tif"])
    np.testing.assert_array_equal(read_level0(good), tifffile.imread(path))


def test_real_dsb2018_image_round_trip(tmp_path):
    from conftest import shared_dataset

    folder = shared_dataset("dsb2018-fluo")
    index = json.loads((folder / "index.json").read_text())
    first = index[0]["id"] if isinstance(index, list) else next(iter(index))
    path = folder / "images" / f"{first}.tif"
    ingest(path, "YX", tmp_path / "o.ome.zarr", name="real")
    np.testing.assert_array_equal(read_level0(tmp_path / "o.ome.zarr"), tifffile.imread(path))


def test_written_image_equals_what_ome_zarr_py_writes(tmp_path):
    """Our streaming writer against ome-zarr-py's write_image (NGFF 0.4) on the same data:
    the same axes, the same levels with the same scale transforms, the same full-resolution
    values. The pyramid's downsampled levels both keep one pixel of each 2 x 2 block
    (nearest neighbour): ours the first, theirs the last. Ours adds units, omero display
    metadata and the provenance block; level names differ (ours "0", "1": theirs "s0", "s1")."""
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    data = np.random.default_rng(0).integers(0, 4000, (2, 3, 64, 80), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "t.tif", data, imagej=True, metadata={"axes": "TZYX"})
    ingest(tmp_path / "t.tif", "TZYX", tmp_path / "ours.ome.zarr", name="s",
           voxel_size={"z": 2.0, "y": 0.5, "x": 0.5, "t": 60}, settings=defaults().ingest.replace(pyramid_levels=1))
    theirs = zarr.open_group(str(tmp_path / "theirs.ome.zarr"), mode="w", zarr_format=2)
    write_image(data, theirs, scale_factors=[2], method="nearest", fmt=FormatV04(), axes="tzyx",
                coordinate_transformations=[[{"type": "scale", "scale": [60.0, 2.0, 0.5, 0.5]}],
                                            [{"type": "scale", "scale": [60.0, 2.0, 1.0, 1.0]}]])
    ours = zarr.open_group(str(tmp_path / "ours.ome.zarr"), mode="r")
    ms_ours, ms_theirs = ours.attrs["multiscales"][0], theirs.attrs["multiscales"][0]
    assert [(a["name"], a["type"]) for a in ms_ours["axes"]] == [(a["name"], a["type"]) for a in ms_theirs["axes"]]
    assert len(ms_ours["datasets"]) == len(ms_theirs["datasets"]) == 2
    for mine, other in zip(ms_ours["datasets"], ms_theirs["datasets"]):
        assert mine["coordinateTransformations"] == other["coordinateTransformations"]
    (mine0, mine1), (other0, other1) = ([group[d["path"]][...] for d in ms["datasets"]]
                                        for group, ms in ((ours, ms_ours), (theirs, ms_theirs)))
    np.testing.assert_array_equal(mine0, data)
    np.testing.assert_array_equal(other0, data)
    np.testing.assert_array_equal(mine1, data[..., ::2, ::2])
    np.testing.assert_array_equal(other1, data[..., 1::2, 1::2])
    assert ms_ours["version"] == ms_theirs["version"] == "0.4"
