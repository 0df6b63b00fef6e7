"""Blockwise instance segmentation: frames of any size segmented block by block straight into
a Zarr array, every object kept by exactly one block, and the blocks shared out to parts.

The blocks and the rule that keeps each object in exactly one block are StarDist's own
(``stardist.big``, as in ``predict_instances_big``); what this module adds:

* :func:`block_layout`: the fewest equal blocks under the configured size (StarDist's cover
  keeps the block size and shrinks the stride, which can add a whole row of blocks);
* :func:`segment_blocks`: labels numbered without a table that grows with the object count,
  written block by block into the output (memory bounded by a block); an object too large
  for the overlap (``predict_instances_big`` raises and the whole job is lost) is kept, cut
  at the block's edge, and counted in a warning;
* :func:`segment_frame`: a frame that fits in one block is segmented whole;
* scattering (``segmentation.scatter``): :func:`write_part` segments a contiguous share of
  every frame's blocks (:func:`part_share`) into a part array, and :func:`join_parts` joins
  the parts into labels equal to one job's.

The segmenter is a callable ``predict(image) -> labels`` (the StarDist model in
:mod:`snakescope.segmentation.stardist`), with its grid and field of view.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np

from snakescope.blockwise.dense import frame_block_shape
from snakescope.errors import InputError
from snakescope.io import ngff
from snakescope.io.atomic import atomic_path
from snakescope.io.frames import FrameView, spatial_axes
from snakescope.io.labels import label_layout, segment_frames, write_label_image

log = logging.getLogger(__name__)

__all__ = ["block_layout", "check_part", "frame_blocks", "join_parts", "part_share", "segment_blocks",
           "segment_frame", "write_part"]

#: The attribute of a part array that describes it.
PART_ATTRIBUTE = "segmentation_part"


def block_layout(shape, max_block, min_overlap, context, grid):
    """Per-axis (block, overlap, context) that cover ``shape`` with as few, equal blocks as possible.

    ``predict_instances_big``'s cover keeps the block size and shrinks the stride, so a frame
    slightly larger than a multiple of the stride gets a whole extra row of blocks (16384 px
    with 1024-px blocks: 21 blocks per axis, 72 % more pixels through the network). Here the
    number of blocks per axis is the fewest whose size stays within ``max_block``, and the
    block is the smallest (grid-aligned) that covers the axis with that many; an axis that
    fits in one block gets no overlap and no context.
    """
    blocks, overlaps, contexts = [], [], []
    for size, most, overlap, ctx, g in zip(shape, max_block, min_overlap, context, grid):
        overlap, ctx = -(-int(overlap) // g) * g, -(-int(ctx) // g) * g
        if size <= most:
            blocks.append(int(size)), overlaps.append(0), contexts.append(0)
            continue
        lost = overlap + 2 * ctx  # pixels each pair of neighbouring blocks shares
        if most - lost < g:
            raise InputError("segmentation.block_size", f"{most} px blocks leave nothing to predict with min_overlap "
                             f"{overlap} and context {ctx} on each side: use blocks larger than {lost + g} px")
        n = -(-(size - lost) // (most - lost))
        block = -(-(size + (n - 1) * lost) // n)
        blocks.append(-(-block // g) * g), overlaps.append(overlap), contexts.append(ctx)
    return tuple(blocks), tuple(overlaps), tuple(contexts)


def _per_axis(value, n: int) -> tuple[int, ...]:
    return (int(value),) * n if np.isscalar(value) else tuple(int(v) for v in value)


def frame_blocks(shape, axes: str, max_block, min_overlap, context, grid) -> tuple[list, tuple]:
    """StarDist's blocks (``stardist.big.BlockND``, in C order) covering a frame of ``shape``
    laid out by :func:`block_layout`, and the (block, overlap, context) used."""
    from stardist.big import BlockND

    n = len(axes)
    layout = block_layout(shape, _per_axis(max_block, n), _per_axis(min_overlap, n), _per_axis(context, n), grid)
    return list(BlockND.cover(shape, axes, *layout, grid)), layout


def part_share(blocks: Sequence, part: tuple[int, int] | None) -> Sequence:
    """The ``k``-th of ``n`` contiguous shares of ``blocks`` (``part=(k, n)``; all for None):
    joining the parts in order keeps the block order, hence the owner and number of every object."""
    if part is None:
        return blocks
    k, n_parts = part
    return blocks[k * len(blocks) // n_parts:(k + 1) * len(blocks) // n_parts]


def segment_blocks(frame, out, predict: Callable, axes: str, max_block, min_overlap, context, grid, *,
                   part: tuple[int, int] | None = None, where: str = "") -> int:
    """Segment a large ``frame`` block by block into ``out`` (a Zarr array view); return the
    number of objects kept. ``predict(image)`` gives a block's labels; each object is kept by
    the one block responsible for it and numbered on from the objects before it."""
    from scipy.ndimage import find_objects
    from stardist.big import NotFullyVisible

    blocks, (block_size, min_overlap, context) = frame_blocks(frame.shape, axes, max_block, min_overlap, context, grid)
    blocks = part_share(blocks, part)
    log.info("%d blocks of %s px (min_overlap %s, context %s)", len(blocks), block_size, min_overlap, context)
    count = cut = 0
    for block in blocks:
        labels = block.crop_context(predict(block.read(frame, axes=axes)), axes=axes)
        lut = np.zeros(int(labels.max()) + 1, dtype=np.uint32)
        for label, slices in enumerate(find_objects(labels), start=1):
            if slices is None:
                continue
            try:
                keep = block.is_responsible(slices, axes)
            except NotFullyVisible:
                keep = True
                cut += 1
            if keep:
                count += 1
                lut[label] = count
        block.write(out, lut[labels], axes=axes)
    if cut:
        log.warning("%s: %d objects were larger than the blocks' overlap (min_overlap %s) and are cut at a block "
                    "edge; raise segmentation.min_overlap above the largest object", where, cut, min_overlap)
    return count


def segment_frame(frame, out, predict: Callable, *, axes: str, settings, grid, field_of_view: Callable,
                  part: tuple[int, int] | None = None, where: str = "") -> int:
    """Segment one frame into ``out``; return its object count.

    ``settings``: the ``segmentation`` section (``block_size``, ``min_overlap``, ``context``).
    A frame whose y and x fit in ``block_size`` is segmented whole (by part 0 alone when
    scattered); a larger one block by block (:func:`segment_blocks`), each block seeing
    ``context`` extra pixels (None: ``field_of_view()``, the network's, computed only then).
    """
    if max(frame.shape[-2:]) <= settings.block_size:
        if part is not None and part[0] != 0:
            return 0
        labels = predict(frame[...])
        out[...] = labels.astype(np.uint32)
        return labels.max()
    context = settings.context if settings.context is not None else field_of_view()
    return segment_blocks(frame, out, predict, axes, frame_block_shape(settings.block_size, len(axes)),
                          settings.min_overlap, context, grid, part=part, where=where)


def write_part(image_path, out_path, segment_frame, *, part: int, n_parts: int, channel: int, summary: dict) -> dict:
    """One job of a scattered segmentation: ``segment_frame(frame, out)`` (which segments the
    ``part``-th of ``n_parts`` shares of the frame's blocks) for every frame, into a uint32
    array at ``out_path`` (labels numbered from 1 in each frame; objects per frame and the
    ``summary`` of the segmentation in its attributes), written atomically."""
    check_part(part, n_parts)
    image = ngff.read_image(image_path)
    _, label_shape, label_chunks = label_layout(image)
    with atomic_path(out_path) as tmp:
        group = ngff.open_group(tmp, "w")
        labels = ngff.create_levels(group, [label_shape], label_chunks, np.uint32, "lz4")[0]
        counts = segment_frames(image, channel, segment_frame, labels)
        result = {"part": part, "n_parts": n_parts, "objects_per_frame": counts, "summary": summary}
        group.attrs["snakescope"] = {PART_ATTRIBUTE: result}
    log.info("part %d of %d: %s objects per frame", part, n_parts, counts)
    return result


def check_part(part: int, n_parts: int) -> None:
    if not 0 <= part < n_parts:
        raise InputError("segmentation.scatter", f"part {part} does not exist in {n_parts} parts")


def join_parts(part_paths, image_path, out_path, *, channel: int, name: str = "segmentation") -> dict:
    """Join the parts of a scattered segmentation into NGFF labels equal to one job's output.

    Parts are applied in order, each label shifted by the objects of the earlier parts in
    that frame, and only positive labels written (as the blocks write), so the result is the
    single-job one: same blocks, same owner of every object, same numbering.
    Memory: one slab of whole chunks at a time (``ngff.slabs``).
    """
    parts = []
    for path in part_paths:
        try:
            group = ngff.open_group(path, "r")
            info = group.attrs["snakescope"][PART_ATTRIBUTE]
            parts.append((info, group["0"]))
        except Exception as exc:
            raise InputError(path, f"is not a segmentation part written by write_part ({type(exc).__name__}: {exc})") from None
    parts.sort(key=lambda item: item[0]["part"])
    found, n_parts = [info["part"] for info, _ in parts], {info["n_parts"] for info, _ in parts}
    if len(n_parts) != 1 or found != list(range(n_parts.pop())):
        raise InputError(", ".join(map(str, part_paths)), f"parts {found} are not one complete set")
    spatial = spatial_axes(ngff.read_image(image_path).axes)

    def join_frame(frame, out):
        key = str(out.index[0]) if out.index else "0"  # out: the labels of one time point
        offset = 0
        for info, array in parts:
            source = FrameView(array, out.index)
            for region in ngff.slabs(spatial, out.shape, array.chunks[-len(out.shape):]):
                block = np.asarray(source[region])
                mask = block > 0
                if mask.any():
                    target = np.asarray(out[region])
                    target[mask] = block[mask] + offset
                    out[region] = target
            offset += int(info["objects_per_frame"][key])
        return offset

    return write_label_image(image_path, out_path, join_frame, channel=channel, name=name,
                             summary={**parts[0][0]["summary"], "scattered_parts": len(parts)})
