"""Samples in vendor formats (CZI, ND2, LIF) and OME-TIFF: read through bioio's plugins,
streamed plane by plane into OME-Zarr with the exact values, voxel size and channel names
from the file's metadata, one scene chosen by the sheet, and a damaged file reported in one
line. The files are written here by the formats' own writers (pylibCZIrw for CZI,
bioio-ome-tiff's OmeTiffWriter) or, for LIF, laid out byte by byte as liffile reads it. ND2
has neither a writer in the lock nor a sample file in any wheel, so only its damaged-file
message is tested here (its reading goes through the same open_vendor path as CZI and LIF)."""

from __future__ import annotations

import struct
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest

from snakescope.errors import InputError
from snakescope.ingest.convert import ingest
from snakescope.io import ngff
from snakescope.io.formats import open_image

RNG = np.random.default_rng(16)
CZI_SCENES = {"A1": RNG.integers(1, 4000, (2, 3, 40, 50), dtype=np.uint16),  # C Z Y X
              "B2": RNG.integers(1, 4000, (2, 3, 24, 30), dtype=np.uint16)}


def write_czi(path: Path, scenes: dict[str, np.ndarray], channel_names=("DAPI", "GFP"), voxel_um=(1.0, 0.2, 0.2)):
    """A multi-scene CZI by pylibCZIrw (Zeiss's libCZI), its scenes named as ZEN names them."""
    from pylibCZIrw import czi as pyczi

    with pyczi.create_czi(str(path), exist_ok=True) as czi:
        left = 0
        for index, data in enumerate(scenes.values()):
            for c in range(data.shape[0]):
                for z in range(data.shape[1]):
                    czi.write(data[c, z], plane={"C": c, "Z": z, "T": 0}, scene=index, location=(left, 0))
            left += data.shape[-1] + 100
        # CZI metadata holds metres
        czi.write_metadata(document_name=path.stem, channel_names=dict(enumerate(channel_names)),
                           scale_z=voxel_um[0] * 1e-6, scale_y=voxel_um[1] * 1e-6, scale_x=voxel_um[2] * 1e-6)
    # pylibCZIrw leaves the scene list out of the metadata; ZEN writes it (names included)
    with pyczi.edit_czi(str(path)) as editor:
        root = ElementTree.fromstring(editor.read_metadata_xml())
        listed = ElementTree.SubElement(ElementTree.SubElement(root.find("./Metadata/Information/Image/Dimensions"),
                                                               "S"), "Scenes")
        for index, name in enumerate(scenes):
            ElementTree.SubElement(listed, "Scene", Index=str(index), Name=name)
        with editor.edit_session() as builder:
            builder.set_xml(ElementTree.tostring(root, encoding="unicode"))
    return path


def write_lif(path: Path, data: np.ndarray, channel_names=("DAPI", "GFP"), voxel_um=(2.0, 0.5, 0.25)) -> Path:
    """A LIF file (version 2) of one uint16 image ``data`` (C, Z, Y, X), laid out as LAS X
    stores it (planes of each channel one after the other per z) in the byte structure and
    XML description that liffile reads. No package writes LIF."""
    n_c, n_z, n_y, n_x = data.shape
    plane = n_y * n_x * 2
    channels = "".join(
        f'<ChannelDescription DataType="0" ChannelTag="0" Resolution="16" NameOfMeasuredQuantity="" Min="0" '
        f'Max="65535" Unit="" LUTName="{name}" IsLUTInverted="0" BytesInc="{c * plane}" BitInc="0"/>'
        for c, name in enumerate(channel_names))
    dims = "".join(
        f'<DimensionDescription DimID="{dim_id}" NumberOfElements="{n}" Origin="0" Length="{(n - 1) * um * 1e-6!r}" '
        f'Unit="m" BitInc="0" BytesInc="{inc}"/>'
        for dim_id, n, um, inc in ((1, n_x, voxel_um[2], 2), (2, n_y, voxel_um[1], n_x * 2),
                                   (3, n_z, voxel_um[0], n_c * plane)))
    xml = ('<LMSDataContainerHeader Version="2"><Element Name="experiment" UniqueID="1">'
           '<Data><Experiment/></Data><Memory Size="0" MemoryBlockID="MemBlock_0"/><Children>'
           '<Element Name="Position 1" UniqueID="2"><Data><Image><ImageDescription>'
           f'<Channels>{channels}</Channels><Dimensions>{dims}</Dimensions>'
           f'</ImageDescription></Image></Data><Memory Size="{data.nbytes}" MemoryBlockID="MemBlock_1"/>'
           '<Children/></Element></Children></Element></LMSDataContainerHeader>')

    def block(memory_id: str, payload: bytes) -> bytes:
        name = memory_id.encode("utf-16-le")
        return struct.pack("<IIBQBI", 0x70, 0, 0x2A, len(payload), 0x2A, len(memory_id)) + name + payload

    header = xml.encode("utf-16-le")
    pixels = np.ascontiguousarray(data.transpose(1, 0, 2, 3)).astype("<u2").tobytes()  # z, c, y, x
    path.write_bytes(struct.pack("<IIBI", 0x70, len(header) + 5, 0x2A, len(xml)) + header
                     + block("MemBlock_0", b"") + block("MemBlock_1", pixels))
    return path


@pytest.fixture
def czi(tmp_path):
    return write_czi(tmp_path / "plate.czi", CZI_SCENES)


def channel_labels(image: ngff.NgffImage) -> list[str]:
    return [c["label"] for c in image.attrs["omero"]["channels"]]


def test_czi_is_ingested_exactly_with_its_metadata(czi, tmp_path):
    summary = ingest(czi, None, tmp_path / "a.ome.zarr", name="a")
    image = ngff.read_image(tmp_path / "a.ome.zarr")
    assert image.axes == "czyx" and summary["source_axes"] == "CZYX" and summary["scene"] == "A1"
    np.testing.assert_array_equal(image.data[...], CZI_SCENES["A1"])
    assert image.scale == pytest.approx([1.0, 1.0, 0.2, 0.2])  # c, then z, y, x in µm from the CZI
    assert channel_labels(image) == ["DAPI", "GFP"]


def test_scene_by_name_or_index_and_the_sheet_voxel_size_wins(czi, tmp_path):
    ingest(czi, None, tmp_path / "b.ome.zarr", name="b", scene="B2")
    np.testing.assert_array_equal(ngff.read_image(tmp_path / "b.ome.zarr").data[...], CZI_SCENES["B2"])
    ingest(czi, "CZYX", tmp_path / "b1.ome.zarr", name="b", scene="1", voxel_size={"z": 3.0, "y": 0.5, "x": 0.5})
    image = ngff.read_image(tmp_path / "b1.ome.zarr")
    np.testing.assert_array_equal(image.data[...], CZI_SCENES["B2"])
    assert image.scale == pytest.approx([1.0, 3.0, 0.5, 0.5])
    with pytest.raises(InputError, match=r"plate\.czi: no scene 'C3': the file has 2 scene\(s\).*'A1', 'B2'"):
        open_image(czi, None, "C3")


def test_vendor_pixels_are_read_plane_by_plane(czi):
    """Each dask chunk is one Y-X plane, so a slab read touches only its planes."""
    source = open_image(czi, None)
    assert source.array.data.chunks == ((1, 1), (1, 1, 1), (40,), (50,))
    np.testing.assert_array_equal(source.array[1, 2:3, 10:20], CZI_SCENES["A1"][1, 2:3, 10:20])


def test_sheet_axes_keep_length_one_dimensions_and_must_name_the_others(czi, tmp_path):
    source = open_image(czi, "TCZYX")
    assert source.axes == "TCZYX" and source.shape == (1, 2, 3, 40, 50)
    with pytest.raises(InputError, match="axes 'ZYX' leave out C of length 2"):
        open_image(czi, "ZYX")


def test_rgb_czi_gives_three_channels(tmp_path):
    from pylibCZIrw import czi as pyczi

    rgb = RNG.integers(1, 255, (20, 30, 3), dtype=np.uint8)
    with pyczi.create_czi(str(tmp_path / "rgb.czi"), exist_ok=True) as out:
        out.write(rgb, plane={"C": 0, "Z": 0, "T": 0})
        out.write_metadata(document_name="rgb", scale_x=0.5e-6, scale_y=0.5e-6)
    source = open_image(tmp_path / "rgb.czi", None)
    assert source.axes == "CYX" and source.shape == (3, 20, 30)
    np.testing.assert_array_equal(source.array[:, :, :], np.moveaxis(rgb, -1, 0))  # samples in stored order


def test_lif_is_ingested_exactly_with_its_metadata(tmp_path):
    data = RNG.integers(1, 60000, (2, 4, 32, 36), dtype=np.uint16)
    lif = write_lif(tmp_path / "stack.lif", data)
    ingest(lif, None, tmp_path / "l.ome.zarr", name="l")
    image = ngff.read_image(tmp_path / "l.ome.zarr")
    assert image.axes == "czyx"
    np.testing.assert_array_equal(image.data[...], data)
    assert image.scale == pytest.approx([1.0, 2.0, 0.5, 0.25])
    assert channel_labels(image) == ["DAPI", "GFP"]


def test_ome_tiff_by_bioio_writer_gives_voxel_size_and_channel_names(tmp_path):
    """OME-TIFF stays on the TIFF path (memory-mapped planes, globs); its OME-XML gives the
    physical sizes, the time increment and the channel names."""
    from bioio_base.types import PhysicalPixelSizes
    from bioio_ome_tiff.writers import OmeTiffWriter

    data = RNG.integers(1, 4000, (3, 2, 5, 24, 20), dtype=np.uint16)  # T C Z Y X
    path = tmp_path / "cells.ome.tif"
    OmeTiffWriter.save(data, path, dim_order="TCZYX", channel_names=["nuclei", "membrane"],
                       physical_pixel_sizes=PhysicalPixelSizes(1.5, 0.25, 0.25))
    ingest(path, None, tmp_path / "o.ome.zarr", name="o")
    image = ngff.read_image(tmp_path / "o.ome.zarr")
    assert image.axes == "tczyx"
    np.testing.assert_array_equal(image.data[...], data)
    assert image.scale[2:] == pytest.approx([1.5, 0.25, 0.25])
    assert channel_labels(image) == ["nuclei", "membrane"]


@pytest.mark.parametrize("name, damage, expected", [
    ("truncated.czi", lambda good: good[:3000], r"not a readable CZI file: Not enough data read"),
    ("cut_short.czi", lambda good: good[:-3000], r"not a readable CZI file: Not enough data read"),
    ("text.czi", lambda good: b"not a microscope file", r"not a readable CZI file"),
    ("text.nd2", lambda good: b"not a microscope file", r"not a readable ND2 file: File is not supported by ND2"),
    ("text.lif", lambda good: b"not a microscope file", r"not a readable LIF file: .*not a Leica image file"),
    ("empty.lif", lambda good: b"", r"file is empty \(0 bytes\)"),
    ("cut_short.lif", lambda good: good[:-5000], r"cannot read pixel data \(OSError: .*\); the file is truncated"),
])
def test_damaged_vendor_file_is_one_clear_line(czi, tmp_path, name, damage, expected):
    good = czi if name.endswith(".czi") else write_lif(tmp_path / "good.lif", RNG.integers(1, 9, (2, 4, 32, 36), dtype=np.uint16))
    bad = tmp_path / name
    bad.write_bytes(damage(good.read_bytes()))
    with pytest.raises(InputError) as caught:
        ingest(bad, None, tmp_path / "bad.ome.zarr", name="bad")
    message = str(caught.value)
    assert message.startswith(f"{bad}: ") and "\n" not in message and len(message) < 400, message
    assert __import__("re").search(expected, message), message
    assert not (tmp_path / "bad.ome.zarr").exists()


def test_sheet_takes_vendor_files_and_scenes(tmp_path, czi):
    from snakescope.settings import ConfigError, load

    sheet = tmp_path / "samples.tsv"
    sheet.write_text("sample_id\timage\tscene\n" f"plate_b2\t{czi}\tB2\n" f"plate\t{czi}\t\n")
    _, samples, warnings = load({"samples": str(sheet)})
    assert samples["plate_b2"].scene == "B2" and samples["plate"].scene is None and not warnings
    assert samples["plate"].voxel_size == {}  # from the file's metadata at ingest
    assert samples["plate_b2"].spatial_ndim() == 3
    sheet.write_text("sample_id\timage\tscene\n" "plain\tdata/plain.tif\t1\n")
    with pytest.raises(ConfigError, match="scene '1': only CZI, ND2 and LIF images have scenes"):
        load({"samples": str(sheet)})


@pytest.mark.slow
def test_czi_sample_goes_through_prepare(tmp_path):
    """A CZI in the sheet (no axes, no voxel size) through the workflow's prepare stage."""
    import yaml

    from conftest import REPO, run_snakemake

    wd = tmp_path / "wd"
    (wd / "data").mkdir(parents=True)
    write_czi(wd / "data" / "plate.czi", CZI_SCENES)
    (wd / "config").mkdir()
    (wd / "config" / "samples.tsv").write_text("sample_id\timage\tchannel\tscene\nwell_b2\tdata/plate.czi\t1\tB2\n")
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(samples="config/samples.tsv", segmentation={"method": "none"})
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    run_snakemake(wd, "--cores", "2", "results/jobs/prepare-b0000.done.json")
    image = ngff.read_image(wd / "results" / "well_b2" / "image.ome.zarr")
    np.testing.assert_array_equal(image.data[...], CZI_SCENES["B2"])
    assert image.scale == pytest.approx([1.0, 1.0, 0.2, 0.2]) and channel_labels(image) == ["DAPI", "GFP"]
    assert (wd / "results" / "well_b2" / "normalized.ome.zarr").is_dir()
