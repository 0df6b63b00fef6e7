"""Blockwise prediction of a convolutional network over images larger than memory: the dense
engine of restoration (N2V, CARE) and of the U-Net's class probabilities.

A block is predicted from its *outer* region (the block's *core* grown by a halo on every
axis that the network convolves over) and only the core of the result is written. When the
halo covers the network's receptive field, a blockwise prediction equals the whole-image
prediction up to float rounding: no seams.

Two details make that hold exactly for a U-Net and not only approximately:

* **Grid alignment.** A U-Net with ``n`` poolings is equivariant only to shifts by
  multiples of ``2**n``. Outer regions therefore start and end on a grid of step ``align``
  (``2**n``) anchored where the network's input starts.
* **Virtual padding.** csbdeep (and n2v) pad the whole image by reflection to a multiple of
  ``2**n`` (split between both ends) before predicting; snakescope's U-Net pads it with
  zeros at the end. :func:`predict_blockwise` pads either way, virtually: blocks that reach
  the image border are padded when read, so the image itself is never padded nor held whole.

Memory is bounded by a few blocks (one being read, one predicted, one written: reading,
prediction and writing overlap on threads), not by the image.
Only numpy is imported here (the module runs under both rule environments).
"""

from __future__ import annotations

import math
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

__all__ = ["MAX_Z_BLOCK", "PAD_MODES", "Block", "end_pad", "frame_block_shape", "iter_blocks",
           "predict_blockwise", "receptive_halo", "split_pad"]

#: How the virtual padding beyond the image is filled (``np.pad`` modes).
PAD_MODES = ("reflect", "constant")
#: The largest z extent of a 3D frame's block (a block's activations grow with every axis).
MAX_Z_BLOCK = 64


@dataclass(frozen=True)
class Block:
    """One block: ``core`` (written, image coordinates), ``outer`` (read: the core plus halo,
    in image coordinates that may reach into the virtual padding, i.e. below 0 or beyond the
    shape), and ``crop`` (the core's position inside the outer region)."""

    core: tuple
    outer: tuple
    crop: tuple


def _per_axis(value, axes: str, default: int, name: str) -> tuple[int, ...]:
    """A per-axis setting given as a mapping {'y': 256}, a sequence (one per axis) or an int."""
    if value is None:
        return (default,) * len(axes)
    if isinstance(value, Mapping):
        unknown = set(value) - set(axes)
        if unknown:
            raise ValueError(f"{name}: axes {sorted(unknown)} are not in {axes!r}")
        return tuple(int(value.get(a, default)) for a in axes)
    if np.isscalar(value):
        return (int(value),) * len(axes)
    value = tuple(int(v) for v in value)
    if len(value) != len(axes):
        raise ValueError(f"{name}: {len(value)} values for {len(axes)} axes {axes!r}")
    return value


def split_pad(shape: Sequence[int], align: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """csbdeep's padding to a multiple of ``align``: ``v = (-n) % d`` split as ``(v//2, v-v//2)``."""
    pads = []
    for n, d in zip(shape, align):
        v = (-int(n)) % int(d)
        pads.append((v // 2, v - v // 2))
    return tuple(pads)


def end_pad(shape: Sequence[int], align: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Padding to a multiple of ``align`` all at the end of each axis (the U-Net's)."""
    return tuple((0, (-int(n)) % int(d)) for n, d in zip(shape, align))


def frame_block_shape(block_size: int, ndim: int) -> tuple[int, ...]:
    """The largest block of a 2D or 3D frame for ``segmentation.block_size``: that size in y
    and x, at most :data:`MAX_Z_BLOCK` in z."""
    return ((min(int(block_size), MAX_Z_BLOCK),) if ndim == 3 else ()) + (int(block_size),) * 2


def receptive_halo(n_depth: int, kern_size: int, n_conv_per_depth: int = 2, pool: int = 2,
                   blurpool: bool = False) -> int:
    """The receptive-field radius of a csbdeep/n2v U-Net, rounded up to a multiple of
    ``pool**n_depth`` (so the halo keeps blocks on the network's grid).

    Each level ``l`` (scale ``pool**l``) has ``n_conv_per_depth`` convolutions of radius
    ``(kern_size-1)/2`` on the way down and again on the way up, the bottom level once;
    every pooling and upsampling adds up to ``pool**l - 1`` more (MaxBlurPool's 3-tap blur
    one more ``pool**l``). For depth 2 and kernel 5 this gives 43 -> 44, csbdeep's own
    tile overlap table says 43.
    """
    r = (int(kern_size) - 1) // 2
    n = int(n_depth)
    conv = sum(2 * n_conv_per_depth * r * pool**level for level in range(n)) + n_conv_per_depth * r * pool**n
    pooling = pool**n - 1
    blur = sum(pool**level for level in range(n)) if blurpool else 0
    total = conv + pooling + blur
    grid = pool**n
    return int(math.ceil(total / grid) * grid)


def iter_blocks(shape: Sequence[int], axes: str, block_shape, halo, *, align=None,
                pad=None) -> Iterator[Block]:
    """The blocks covering an array of ``shape``, in C order.

    ``block_shape``, ``halo`` and ``align`` are per axis: a mapping by axis letter (missing
    axes: block = whole axis, halo 0, align 1), a sequence, or an int. Cores tile
    ``[0, shape)`` exactly once. Outer regions are the cores grown by the halo, widened to the
    grid of step ``align`` that starts at ``-pad[i][0]`` and clipped to the padded extent
    ``[-pad_lo, shape + pad_hi)``; with ``pad=None`` there is no padding.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != len(axes):
        raise ValueError(f"shape {shape} does not match axes {axes!r}")
    if isinstance(block_shape, Mapping):
        block = tuple(int(block_shape.get(a, s)) for a, s in zip(axes, shape))
    else:
        block = _per_axis(block_shape, axes, 0, "block_shape")
    halo = _per_axis(halo, axes, 0, "halo")
    align = _per_axis(align, axes, 1, "align")
    pad = tuple((0, 0) for _ in shape) if pad is None else tuple((int(lo), int(hi)) for lo, hi in pad)
    if any(b < 1 for b in block):
        raise ValueError(f"block_shape must be >= 1 on every axis (got {block})")
    if any(h < 0 for h in halo) or any(d < 1 for d in align):
        raise ValueError(f"halo must be >= 0 and align >= 1 (got {halo}, {align})")

    ranges = []
    for n, b, h, d, (lo, hi) in zip(shape, block, halo, align, pad):
        axis_blocks = []
        for start in range(0, n, b):
            end = min(start + b, n)
            o_start = max(-lo, -lo + (start - h + lo) // d * d)
            o_end = min(n + hi, -lo + -((-(end + h + lo)) // d) * d)
            axis_blocks.append((slice(start, end), slice(o_start, o_end), slice(start - o_start, end - o_start)))
        ranges.append(axis_blocks)

    def rec(i, acc):
        if i == len(ranges):
            yield Block(tuple(a[0] for a in acc), tuple(a[1] for a in acc), tuple(a[2] for a in acc))
            return
        for item in ranges[i]:
            yield from rec(i + 1, acc + [item])

    yield from rec(0, [])


def read_padded(read_region: Callable, shape: Sequence[int], outer: tuple, mode: str = "reflect") -> np.ndarray:
    """Read ``outer`` (which may reach beyond the image) and pad the part outside
    (``mode``: ``reflect``, or ``constant`` for zeros)."""
    inside = tuple(slice(max(s.start, 0), min(s.stop, n)) for s, n in zip(outer, shape))
    block = np.asarray(read_region(inside))
    widths = [(max(0, -s.start), max(0, s.stop - n)) for s, n in zip(outer, shape)]
    if any(lo or hi for lo, hi in widths):
        block = np.pad(block, widths, mode=mode)
    return block


def predict_blockwise(read_region: Callable, write_region: Callable, shape: Sequence[int], axes: str,
                      block_shape, halo, predict_fn: Callable, *, align=None, pad="auto",
                      pad_mode: str = "reflect", prefetch: int = 1, progress: Callable | None = None) -> dict:
    """Predict an image block by block: ``write_region(core, predict_fn(read(outer))[crop])``.

    ``read_region(region)`` returns the array for a tuple of slices inside ``shape``;
    ``write_region(region, array)`` stores a result; ``predict_fn(block)`` returns an array
    of the block's shape, optionally with trailing axes of its own (class probabilities)
    (blocks along axes without halo, such as t, arrive several frames at a time when
    ``block_shape`` says so: treat them as a batch). ``align`` is the network's size divisor
    per axis; ``pad='auto'`` pads virtually like csbdeep (see :func:`split_pad`),
    ``pad='end'`` at the end of each axis (:func:`end_pad`), ``pad=None`` not at all, or
    give the (before, after) widths per axis; ``pad_mode`` fills the padding by reflection
    or with zeros (``constant``).

    Reading the next block and writing the previous one run on two threads beside the
    prediction, with at most ``prefetch`` blocks waiting on each side, so memory stays at a
    few blocks. Writes happen on one thread in block order. Returns timing statistics.
    """
    shape = tuple(int(s) for s in shape)
    align_t = _per_axis(align, axes, 1, "align")
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode {pad_mode!r} is not one of {PAD_MODES}")
    pads = split_pad(shape, align_t) if pad == "auto" else end_pad(shape, align_t) if pad == "end" else pad
    blocks = list(iter_blocks(shape, axes, block_shape, halo, align=align_t, pad=pads))
    stats = {"n_blocks": len(blocks), "read_s": 0.0, "predict_s": 0.0, "write_s": 0.0,
             "voxels_predicted": 0, "voxels_written": 0}
    stop = threading.Event()
    errors: list[BaseException] = []
    read_q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    write_q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    done = object()

    def put(q, item) -> bool:
        """Put, giving up once another thread has failed."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(q):
        """Get, returning the end marker once another thread has failed."""
        while True:
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                if stop.is_set():
                    return done

    def reader():
        try:
            for blk in blocks:
                t0 = time.perf_counter()
                data = read_padded(read_region, shape, blk.outer, pad_mode)
                stats["read_s"] += time.perf_counter() - t0
                if not put(read_q, (blk, data)):
                    return
            put(read_q, done)
        except BaseException as exc:  # handed to the calling thread
            errors.append(exc)
            stop.set()

    def writer():
        try:
            while True:
                item = get(write_q)
                if item is done:
                    return
                blk, out = item
                t0 = time.perf_counter()
                write_region(blk.core, out)
                stats["write_s"] += time.perf_counter() - t0
                stats["voxels_written"] += out.size
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=reader, name="read-blocks", daemon=True),
               threading.Thread(target=writer, name="write-blocks", daemon=True)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    try:
        n_done = 0
        while True:
            item = get(read_q)
            if item is done:
                break
            blk, data = item
            t0 = time.perf_counter()
            pred = np.asarray(predict_fn(data))
            stats["predict_s"] += time.perf_counter() - t0
            if pred.shape[:data.ndim] != data.shape:
                raise ValueError(f"predict_fn returned shape {pred.shape} for a block of shape {data.shape}")
            stats["voxels_predicted"] += data.size
            out = np.ascontiguousarray(pred[blk.crop])
            del pred, data, item
            if not put(write_q, (blk, out)):
                break
            del out
            n_done += 1
            if progress is not None:
                progress(n_done, len(blocks))
        put(write_q, done)
    except BaseException:
        stop.set()
        raise
    finally:
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    stats["seconds"] = time.perf_counter() - start
    return stats
