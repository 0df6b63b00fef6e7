"""The two blockwise engines, each checked once for seam-free results.

Dense (snakescope.blockwise.dense: restoration and the U-Net): blocks tile the image once
on the network's grid, and blockwise equals whole-image prediction for an aligned
convolutional network when the halo covers its receptive field, with either padding.
Instances (snakescope.blockwise.instances: StarDist): blockwise labels equal whole-frame
labels, and scattered parts joined equal a single job's labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from snakescope.blockwise.dense import end_pad, iter_blocks, predict_blockwise, receptive_halo, split_pad
from snakescope.blockwise.instances import block_layout, frame_blocks, join_parts, part_share
from snakescope.errors import InputError
from snakescope.io import ngff
from snakescope.io import labels as labels_io
from snakescope.settings import defaults

# Keras 3 converts its own variables with np.array(copy=False) semantics numpy 2 warns about
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


# ---------------------------------------------------------------------------------------
# Dense


def test_blocks_tile_the_image_once_with_aligned_halos():
    shape, axes = (3, 37, 50), "tyx"
    pad = split_pad((1, 37, 50), (1, 4, 4))
    blocks = list(iter_blocks(shape, axes, {"t": 1, "y": 16, "x": 16}, {"y": 6, "x": 6}, align={"y": 4, "x": 4}, pad=pad))
    count = np.zeros(shape, int)
    for b in blocks:
        count[b.core] += 1
        for i, a in enumerate(axes):
            core, outer, crop = b.core[i], b.outer[i], b.crop[i]
            assert outer.start <= core.start and outer.stop >= core.stop
            assert crop.start == core.start - outer.start and crop.stop - crop.start == core.stop - core.start
            if a in "yx":
                lo, hi = pad[i]
                # the halo is there unless the (padded) border is reached
                assert outer.start == -lo or core.start - outer.start >= 6
                assert outer.stop == shape[i] + hi or outer.stop - core.stop >= 6
                # outer regions sit on the network's grid: start and size multiples of 4 from -lo
                assert (outer.start + lo) % 4 == 0 and (outer.stop - outer.start) % 4 == 0
            else:
                assert outer == core
    assert (count == 1).all()
    assert len(blocks) == 3 * 3 * 4


def test_blockwise_equals_whole_image_and_reads_bounded_blocks():
    rng = np.random.default_rng(0)
    img = rng.random((2, 75, 90)).astype(np.float32)
    align = (1, 8, 8)
    pads = split_pad(img.shape, align)

    def net(block):  # a local operator of radius 5 that needs sizes divisible by 8
        assert block.shape[1] % 8 == 0 and block.shape[2] % 8 == 0
        return ndimage.uniform_filter(block, size=(1, 11, 11), mode="constant")

    padded = np.pad(img, pads, mode="reflect")
    whole = net(padded)[:, pads[1][0]:pads[1][0] + 75, pads[2][0]:pads[2][0] + 90]
    out = np.full(img.shape, np.nan, np.float32)
    reads = []

    def read(region):
        reads.append(img[region].size)
        return img[region]

    def write(region, block):
        out[region] = block

    stats = predict_blockwise(read, write, img.shape, "tyx", {"t": 1, "y": 32, "x": 32}, {"y": 8, "x": 8}, net,
                              align={"y": 8, "x": 8})
    np.testing.assert_allclose(out, whole, rtol=0, atol=1e-6)
    assert stats["n_blocks"] == 2 * 3 * 3
    # one block with its halo (widened to the grid of 8 at most 7 per side), never the image
    assert max(reads) <= (32 + 2 * (8 + 7)) ** 2 < img[0].size


def test_blockwise_raises_predict_errors_and_stops():
    def bad(block):
        raise RuntimeError("model failed")

    with pytest.raises(RuntimeError, match="model failed"):
        predict_blockwise(lambda r: np.zeros((1, 8, 8))[r], lambda r, b: None, (1, 64, 64), "tyx",
                          {"t": 1, "y": 8, "x": 8}, 0, bad)


def test_receptive_halo_covers_csbdeep_table():
    from_table = {(1, 3): 9, (1, 5): 17, (2, 3): 22, (2, 5): 43, (3, 3): 46, (3, 5): 92}
    for (depth, kern), overlap in from_table.items():
        halo = receptive_halo(depth, kern)
        assert halo >= overlap and halo % 2**depth == 0 and halo - overlap < 2**depth + 6


@pytest.mark.parametrize("ndim,pad,pad_mode", [(2, "auto", "reflect"), (2, "end", "constant"),
                                               (3, "end", "constant")])
def test_conv_net_blockwise_equals_whole_image(ndim, pad, pad_mode):
    """A real (random) U-Net: pooling grid 4 in y/x (1 in z for the anisotropic 3D net), halo =
    its receptive field: the stitched cores equal the network on the whole padded image
    (csbdeep's reflection split over both ends, or the U-Net's zeros at the end)."""
    import keras

    from snakescope.segmentation.unet import architecture_for, build_keras_model, divisor, receptive_field_radius

    keras.utils.set_random_seed(0)
    arch = architecture_for(ndim, {**defaults().segmentation.unet.architecture, "n_filter_base": 4,
                                   "pool_size": (1, 2, 2) if ndim == 3 else 2})
    net = build_keras_model(arch)
    shape = (10, 60, 70) if ndim == 3 else (75, 90)
    image = np.random.default_rng(1).random(shape).astype(np.float32)
    align, halo = divisor(arch), receptive_field_radius(arch)
    pads = split_pad(shape, align) if pad == "auto" else end_pad(shape, align)

    def predict(block):  # blocks arrive with their halo; the classes come back as a trailing axis
        return keras.ops.convert_to_numpy(net(block[None, ..., None], training=False))[0]

    core = tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, shape))
    whole = predict(np.pad(image, pads, mode=pad_mode))[core]
    axes = "zyx"[-ndim:]

    def blockwise(halo):
        out = np.full(shape + (3,), np.nan, np.float32)
        stats = predict_blockwise(lambda r: image[r], lambda r, b: out.__setitem__(r, b), shape, axes,
                                  (6, 24, 24) if ndim == 3 else (24, 32), halo, predict, align=align, pad=pad,
                                  pad_mode=pad_mode)
        assert stats["n_blocks"] > 4
        return out

    np.testing.assert_allclose(blockwise(halo), whole, rtol=0, atol=1e-5)
    # without the halo the block borders show: the halo is what makes them equal
    assert np.abs(blockwise(0) - whole).max() > 1e-3


# ---------------------------------------------------------------------------------------
# Instances


def test_block_layout_takes_the_smallest_equal_blocks():
    # 2000 px in blocks of at most 1024 px sharing 64 + 2 * 32 px: three blocks of 752 px
    # (StarDist's own cover keeps 1024-px blocks: 36 % more pixels through the network)
    layout = block_layout((2000, 500), (1024, 1024), (64, 64), (32, 32), (8, 8))
    assert layout == ((752, 500), (64, 0), (32, 0))  # an axis that fits in one block: no overlap, no context
    blocks, _ = frame_blocks((2000,), "X", 1024, 64, 32, (8,))
    assert len(blocks) == 3 and all(b.blocks[0].size == 752 for b in blocks)
    written = np.zeros(2000, int)
    for b in blocks:
        written[b.slice_write()] += 1
    assert written.min() >= 1  # every pixel written by some block (ownership decides the objects)
    with pytest.raises(InputError, match="segmentation.block_size"):
        block_layout((4096,), (256,), (64,), (96,), (8,))
    # parts: contiguous shares that together are every block once, in order
    items = list(range(10))
    assert [x for k in range(3) for x in part_share(items, (k, 3))] == items
    assert part_share(items, None) == items


def write_ngff(path: Path, data: np.ndarray, axes: str, chunks) -> Path:
    group = ngff.open_group(path, "w")
    shapes = ngff.pyramid_shapes(axes, data.shape, "auto")
    levels = ngff.create_levels(group, shapes, chunks, np.float32, "lz4")
    levels[0][...] = data.astype(np.float32)
    ngff.write_pyramid(group, axes, shapes, chunks, np.float32, "lz4", 1, "mean", first=1)
    group.attrs["multiscales"] = [ngff.multiscales_metadata(axes, [1.0] * len(axes), len(shapes), path.stem)]
    return path


def same_objects(a, b) -> bool:
    """The same objects with possibly other numbers: the label pairs form a bijection."""
    pairs = np.unique(np.stack([np.ravel(a), np.ravel(b)]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


@pytest.fixture(scope="module")
def stardist_model(tmp_path_factory):
    """A StarDist model trained for a few hundred steps on three quadrants of the real nuclei
    image (about a hundred nuclei per frame, up to 26 px across), and a two-frame time-lapse
    of the normalized image as NGFF."""
    from stardist.data import test_image_nuclei_2d

    from snakescope.segmentation.stardist import load_model, train_stardist
    from snakescope.segmentation.unet import normalize_percentile

    folder = tmp_path_factory.mktemp("instances")
    image, mask = test_image_nuclei_2d(return_mask=True)
    x = normalize_percentile(image)
    quads = {f"q{i}": (x[(i // 2) * 256:(i // 2 + 1) * 256, (i % 2) * 256:(i % 2 + 1) * 256],
                       mask[(i // 2) * 256:(i // 2 + 1) * 256, (i % 2) * 256:(i % 2 + 1) * 256]) for i in range(4)}
    settings = defaults().segmentation.stardist.replace(n_rays=16, patch_size=[128, 128], epochs=8, steps_per_epoch=30,
                                                        batch_size=4, unet_n_depth=2, learning_rate=1e-3, patience=0)
    train_stardist(quads, folder / "model", settings, split={"train": ["q0", "q1", "q2"], "validation": ["q3"]},
                   seed=1)
    path = write_ngff(folder / "frames.ome.zarr", np.stack([x, x[:, ::-1]]), "tyx", (1, 128, 128))
    return load_model(folder / "model"), path


@pytest.mark.slow
def test_stardist_blocks_equal_whole_frames_and_parts_join_into_one_job(stardist_model, tmp_path):
    from snakescope.segmentation.stardist import predict_stardist, predict_stardist_part

    model, image = stardist_model
    settings = defaults().segmentation
    whole = predict_stardist(model, image, tmp_path / "whole.ome.zarr", settings.replace(block_size=1024), channel=0)
    blocked = settings.replace(block_size=192, min_overlap=48, context=32)
    single = predict_stardist(model, image, tmp_path / "blocks.ome.zarr", blocked, channel=0)
    a = labels_io.read_labels_image(tmp_path / "whole.ome.zarr").data[...]
    b = labels_io.read_labels_image(tmp_path / "blocks.ome.zarr").data[...]
    assert whole["objects_per_frame"] == single["objects_per_frame"] and min(whole["objects_per_frame"].values()) > 50
    for t in range(2):  # blocks of 192 px (9 per frame): no object cut, duplicated or lost at a block border
        assert same_objects(a[t], b[t]) and b[t].max() == len(np.unique(b[t])) - 1

    # segmentation.scatter: block shares predicted by separate jobs, joined = the single job's output
    parts = [tmp_path / f"part{k}.zarr" for k in range(3)]
    counts = {}
    for k in (2, 0, 1):  # jobs finish in any order
        counts[k] = predict_stardist_part(model, image, parts[k], blocked, part=k, n_parts=3,
                                          channel=0)["objects_per_frame"]
    for t in ("0", "1"):
        assert all(counts[k][t] > 0 for k in range(3)) and sum(counts[k][t] for k in range(3)) == single["objects_per_frame"][t]
    joined = join_parts(parts[::-1], image, tmp_path / "joined.ome.zarr", channel=0)
    assert joined == {**single, "scattered_parts": 3}
    np.testing.assert_array_equal(labels_io.read_labels_image(tmp_path / "joined.ome.zarr").data[...], b)
    with pytest.raises(InputError, match="not one complete set"):
        join_parts(parts[:2], image, tmp_path / "incomplete.ome.zarr", channel=0)
    assert not (tmp_path / "incomplete.ome.zarr").exists()
    with pytest.raises(InputError, match="part 3 does not exist in 3 parts"):
        predict_stardist_part(model, image, tmp_path / "p3.zarr", blocked, part=3, n_parts=3, channel=0)
