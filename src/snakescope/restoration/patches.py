"""Training data of the restoration models (numpy only, no TensorFlow): the images patches come
from, how patches are drawn and split, N2V's blind-spot masking and the augmentation.

A :class:`Source` is one image: its level-0 array (a Zarr or numpy array), its axes and the
channel used when it has a c axis. A model is 3D (patches ``z, y, x``) when the images have
a z axis and 2D otherwise (``ndim=2`` forces 2D on z stacks, whose planes are then frames);
t (and z for 2D) only selects the frame a patch comes from.

Patches are drawn at seeded random positions, reading only the patch regions (never a whole
volume); the pool is split into training and validation patches, and training batches are
drawn from the pool with random flips/rotations (:func:`augment`).

N2V masking (:func:`n2v_mask`) is a vectorized re-implementation of n2v's
``N2V_DataWrapper``: stratified random blind-spot pixels, ``n2v_perc_pix`` percent of each
patch, replaced by the ``manipulator`` (any of n2v's, :data:`MANIPULATORS`) within
``neighborhood_radius``, and optionally structN2V's structured blind spots for noise that is
correlated between neighbouring pixels.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from snakescope.errors import InputError
from snakescope.io import ngff

__all__ = ["MANIPULATORS", "MIN_PATCHES", "Source", "as_list", "as_source", "augment", "check_enough", "check_pairs",
           "count_patches", "intensity_fit", "model_ndim", "n2v_mask", "pool_size", "sample_patches", "spatial_axes",
           "split_pool", "struct_offsets"]

MANIPULATORS = ("uniform_withCP", "uniform_withoutCP", "normal_withoutCP", "mean", "median",
                "normal_additive", "normal_fitted", "identity")

#: A training needs at least this many non-overlapping patches in its images (one or more
#: for validation, the rest for training).
MIN_PATCHES = 8
#: The default pool of training patches: twice the data's voxels, capped at this many.
MAX_POOL_PATCHES = 8192
MAX_POOL_BYTES = 512 * 2**20


# ---------------------------------------------------------------------------------------
# Sources: which arrays, axes and channel the patches and predictions come from.


@dataclass
class Source:
    """One image to train on: its level-0 array (anything with ``shape`` and slicing: a
    Zarr array, a numpy array), its axes letters and the channel used when it has a c axis.
    ``intensity``: an affine map ``(slope, offset)`` applied to what is read (None: none),
    e.g. a clean target brought to its image's scale (:func:`intensity_fit`)."""

    name: str
    array: Any
    axes: str
    channel: int | None = None
    intensity: tuple[float, float] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape)

    def model_axes(self) -> str:
        """The axes once the channel is selected (c removed)."""
        return self.axes.replace("c", "")

    def model_shape(self) -> tuple[int, ...]:
        return tuple(s for a, s in zip(self.axes, self.shape) if a != "c")

    def region(self, model_region: Sequence[slice]) -> tuple:
        """A region of the model axes -> the array's region (the channel inserted)."""
        it = iter(model_region)
        return tuple(slice(self.channel, self.channel + 1) if a == "c" else next(it) for a in self.axes)

    def read(self, model_region: Sequence[slice]) -> np.ndarray:
        block = np.asarray(self.array[self.region(model_region)], dtype=np.float32)
        if "c" in self.axes:
            block = np.take(block, 0, axis=self.axes.index("c"))
        if self.intensity is not None:
            slope, offset = self.intensity
            block = block * np.float32(slope) + np.float32(offset)
        return block

    def planes(self):
        """The model-axes regions of the y-x planes, one by one."""
        axes, shape = self.model_axes(), self.model_shape()
        for index in np.ndindex(*[n for a, n in zip(axes, shape) if a not in "yx"]):
            it = iter(index)
            yield tuple(slice(None) if a in "yx" else (lambda k: slice(k, k + 1))(next(it)) for a in axes)


def as_source(image, channel: int | None = None, name: str | None = None) -> Source:
    """A :class:`Source` from an NGFF path, an :class:`ngff.NgffImage`, an ``(array, axes)``
    pair or a 2D numpy array (axes ``yx``). A missing image raises InputError naming it."""
    if isinstance(image, Source):
        src = image
    elif isinstance(image, (str, Path)):
        path = Path(image)
        if not path.exists():
            raise InputError(path, "image does not exist")
        try:
            img = ngff.read_image(path)
        except Exception as exc:
            raise InputError(path, f"is not a readable OME-NGFF image ({type(exc).__name__}: {exc})") from None
        src = Source(name or str(path), img.data, img.axes)
    elif isinstance(image, ngff.NgffImage):
        src = Source(name or str(image.path), image.data, image.axes)
    elif isinstance(image, tuple) and len(image) == 2 and isinstance(image[1], str):
        src = Source(name or "array", image[0], image[1].lower())
    elif hasattr(image, "shape") and len(image.shape) == 2:
        src = Source(name or "array", image, "yx")
    else:
        raise TypeError(f"cannot use {type(image).__name__} as an image: give an NGFF path, an NgffImage or (array, axes)")
    if len(src.axes) != len(src.shape) or not set(src.axes) <= set("tczyx") or "y" not in src.axes or "x" not in src.axes:
        raise InputError(src.name, f"axes {src.axes!r} do not describe an image of shape {src.shape} (letters of tczyx, with y and x)")
    if name:
        src.name = name
    if "c" in src.axes:
        n_c = src.shape[src.axes.index("c")]
        c = 0 if channel is None and src.channel is None else (src.channel if channel is None else int(channel))
        if not 0 <= c < n_c:
            raise InputError(src.name, f"channel {c} does not exist (the image has {n_c} channels: 0..{n_c - 1})")
        src.channel = c
    else:
        if channel not in (None, 0):
            raise InputError(src.name, f"channel {channel} requested but the image has no channel axis (axes {src.axes!r})")
        src.channel = None
    return src


def spatial_axes(ndim: int) -> str:
    return "zyx" if ndim == 3 else "yx"


def model_ndim(sources: Sequence[Source], ndim: int | None) -> int:
    if ndim is None:
        has_z = {("z" in s.axes) for s in sources}
        if len(has_z) > 1:
            raise InputError(", ".join(s.name for s in sources),
                             "training images mix z stacks and 2D images; train on one kind (or set ndim: 2)")
        return 3 if has_z.pop() else 2
    ndim = int(ndim)
    if ndim not in (2, 3):
        raise InputError("ndim", f"must be 2 or 3 (got {ndim})")
    if ndim == 3:
        flat = [s.name for s in sources if "z" not in s.axes]
        if flat:
            raise InputError(flat[0], "a 3D model needs images with a z axis")
    return ndim


def _frames_and_spatial(src: Source, ndim: int):
    """(frame axes sizes, spatial sizes) of a source's model axes."""
    spatial = spatial_axes(ndim)
    axes, shape = src.model_axes(), src.model_shape()
    frames = [(a, n) for a, n in zip(axes, shape) if a not in spatial]
    sizes = [shape[axes.index(a)] for a in spatial]
    return frames, sizes


def count_patches(sources: Sequence[Source], patch_shape: Sequence[int], ndim: int) -> int:
    """How many non-overlapping patches of ``patch_shape`` fit in the sources."""
    total = 0
    for src in sources:
        frames, sizes = _frames_and_spatial(src, ndim)
        n = int(np.prod([s // p for s, p in zip(sizes, patch_shape)]))
        total += n * int(np.prod([f for _, f in frames]) if frames else 1)
    return total


def check_enough(sources, patch_shape, ndim, min_patches) -> int:
    """The number of non-overlapping patches that fit; InputError when below ``min_patches``."""
    n = count_patches(sources, patch_shape, ndim)
    if n < min_patches:
        names = ", ".join(s.name for s in sources)
        sizes = "; ".join(f"{s.name}: {dict(zip(s.model_axes(), s.model_shape()))}" for s in sources)
        raise InputError(names, f"too few patches to train: only {n} non-overlapping patches of shape "
                                f"{tuple(patch_shape)} ({spatial_axes(ndim)}) fit in the images ({sizes}); "
                                f"at least {min_patches} are needed. Add images or use a smaller patch_shape.")
    return n


def _patch_positions(sources: Sequence[Source], n: int, patch_shape, ndim: int, rng) -> list:
    """Seeded random positions: (source index, model-axes region) per patch."""
    spatial = spatial_axes(ndim)
    weights = []
    for src in sources:
        frames, sizes = _frames_and_spatial(src, ndim)
        valid = np.prod([max(0, s - p + 1) for s, p in zip(sizes, patch_shape)]) * (np.prod([f for _, f in frames]) if frames else 1)
        weights.append(float(valid))
    weights = np.asarray(weights)
    if weights.sum() == 0:
        raise InputError(", ".join(s.name for s in sources), f"no patch of shape {tuple(patch_shape)} fits in any image")
    which = rng.choice(len(sources), size=n, p=weights / weights.sum())
    positions = []
    for i in which:
        src = sources[i]
        axes, shape = src.model_axes(), src.model_shape()
        region = []
        for a, size in zip(axes, shape):
            if a in spatial:
                p = patch_shape[spatial.index(a)]
                start = int(rng.integers(0, size - p + 1))
                region.append(slice(start, start + p))
            else:
                f = int(rng.integers(0, size))
                region.append(slice(f, f + 1))
        positions.append((int(i), tuple(region)))
    return positions


def sample_patches(images, n_patches: int, patch_shape: Sequence[int], *, channel: int | None = None,
                   ndim: int | None = None, seed: int, targets=None, target_channel: int | None = None,
                   min_patches: int = MIN_PATCHES, threads: int = 2):
    """Draw ``n_patches`` patches at seeded random positions, reading only those regions.

    ``images``: NGFF paths, NgffImages, ``(array, axes)`` pairs or Sources. Returns a float32
    array ``(n_patches, *patch_shape)``; with ``targets`` (one per image, same shapes) a pair
    ``(X, Y)`` with the target patches at the same positions. Raises InputError when fewer
    than ``min_patches`` non-overlapping patches fit.
    """
    sources = [as_source(im, channel) for im in as_list(images)]
    ndim = model_ndim(sources, ndim)
    patch_shape = tuple(int(p) for p in patch_shape)
    if len(patch_shape) != ndim:
        raise InputError("patch_shape", f"{patch_shape} has {len(patch_shape)} axes; the model is {ndim}D ({spatial_axes(ndim)})")
    target_sources = None
    if targets is not None:
        target_sources = [as_source(t, target_channel) for t in as_list(targets)]
        check_pairs(sources, target_sources)
    check_enough(sources, patch_shape, ndim, min_patches)
    rng = np.random.default_rng(seed)
    positions = _patch_positions(sources, int(n_patches), patch_shape, ndim, rng)
    X = np.empty((len(positions),) + patch_shape, np.float32)
    Y = np.empty_like(X) if target_sources is not None else None

    def read(k):
        i, region = positions[k]
        X[k] = sources[i].read(region).reshape(patch_shape)
        if Y is not None:
            Y[k] = target_sources[i].read(region).reshape(patch_shape)

    with ThreadPoolExecutor(max(1, int(threads))) as pool:
        list(pool.map(read, range(len(positions))))
    return X if Y is None else (X, Y)


def as_list(images) -> list:
    """One image or several, as a list."""
    if isinstance(images, (str, Path, Source, ngff.NgffImage, tuple)) or hasattr(images, "shape"):
        return [images]
    return list(images)


def intensity_fit(image: Source, target: Source) -> tuple[float, float]:
    """``(a, b)`` of the least-squares fit ``image ~ a * target + b`` over the whole image,
    read plane by plane: the affine map that brings a clean target to its noisy image's
    intensity scale. The noise is in the image, so regressing it on the (nearly noise-free)
    target estimates the scale without the attenuation the other direction would have.
    A constant target gives ``(0, mean of the image)``."""
    sums = np.zeros(5)  # n, sum t, sum t^2, sum x, sum x*t
    for region in target.planes():
        t = target.read(region).astype(np.float64)
        x = image.read(region).astype(np.float64)
        sums += (t.size, t.sum(), np.square(t).sum(), x.sum(), (x * t).sum())
    n, st, stt, sx, sxt = sums
    var = stt / n - (st / n) ** 2
    slope = (sxt / n - (st / n) * (sx / n)) / var if var > 0 else 0.0
    return float(slope), float(sx / n - slope * st / n)


def check_pairs(sources: Sequence[Source], targets: Sequence[Source]) -> None:
    """Each image and its target have the same shape and axes (after the channel is selected)."""
    if len(sources) != len(targets):
        raise InputError("targets", f"{len(targets)} target images for {len(sources)} images")
    for s, t in zip(sources, targets):
        if s.model_shape() != t.model_shape() or s.model_axes() != t.model_axes():
            raise InputError(s.name, f"the target {t.name} has shape {t.model_shape()} (axes {t.model_axes()!r}) but the "
                                     f"image has shape {s.model_shape()} (axes {s.model_axes()!r}, channel {s.channel}); "
                                     "paired images must have the same shape")


# ---------------------------------------------------------------------------------------
# The pool of patches a training draws once, and its training/validation split.


def pool_size(n_patches, sources, patch_shape, ndim) -> int:
    """``n_patches``, or by default twice the data's voxels in patches, capped."""
    if n_patches:
        return int(n_patches)
    voxels = 0
    for src in sources:
        frames, sizes = _frames_and_spatial(src, ndim)
        voxels += int(np.prod(sizes)) * int(np.prod([f for _, f in frames]) if frames else 1)
    per = int(np.prod(patch_shape))
    cap = min(MAX_POOL_PATCHES, MAX_POOL_BYTES // (4 * per))
    return int(max(64, min(cap, math.ceil(2 * voxels / per))))


def split_pool(n: int, fraction: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) indices of a pool of ``n`` patches, ``fraction`` for validation."""
    n_val = max(1, int(round(n * float(fraction))))
    if n - n_val < 1:
        raise InputError("validation_fraction", f"{fraction} leaves no training patches out of {n}")
    perm = rng.permutation(n)
    return perm[n_val:], perm[:n_val]


# ---------------------------------------------------------------------------------------
# N2V blind-spot masking, vectorized.


def _stratified_coords(batch: int, shape: Sequence[int], perc_pix: float, rng) -> np.ndarray:
    """One random pixel per box of side ``(100/perc_pix)**(1/ndim)``: (k, 1 + ndim) int array
    of (patch index, coordinates)."""
    nd = len(shape)
    box = max(1, int(round((100.0 / perc_pix) ** (1.0 / nd))))
    grid = np.stack(np.meshgrid(*[np.arange(0, s, box) for s in shape], indexing="ij"), -1).reshape(-1, nd)
    coords = (grid[None] + np.floor(rng.random((batch, len(grid), nd)) * box).astype(np.int64))
    b = np.broadcast_to(np.arange(batch)[:, None, None], (batch, len(grid), 1))
    coords = np.concatenate([b, coords], -1).reshape(-1, nd + 1)
    keep = np.all(coords[:, 1:] < np.asarray(shape), axis=1)
    return coords[keep]


def _neighbours(coords: np.ndarray, shape, radius: int, rng, *, center: bool, normal: bool = False) -> np.ndarray:
    """A random neighbour of each coordinate inside the patch: uniform in the window of
    ``radius`` (or rounded normal with sigma 4 as n2v's normal_withoutCP), with or without
    the centre pixel; positions outside the patch are redrawn."""
    nd = coords.shape[1] - 1
    out = coords.copy()
    todo = np.arange(len(coords))
    hi = np.asarray(shape)
    for _ in range(100):
        if not len(todo):
            break
        if normal:
            offs = np.rint(rng.normal(0, 4, (len(todo), nd))).astype(np.int64)
        else:
            offs = rng.integers(-radius, radius + 1, (len(todo), nd))
        cand = coords[todo, 1:] + offs
        ok = np.all((cand >= 0) & (cand < hi), axis=1)
        if not center:
            ok &= np.any(offs != 0, axis=1)
        out[todo[ok], 1:] = cand[ok]
        todo = todo[~ok]
    if len(todo):  # window entirely degenerate (radius 0 without centre): take a direct neighbour
        shift = np.where(coords[todo, 1:] > 0, -1, 1)
        out[todo, 1:] = coords[todo, 1:] + shift * (np.arange(nd) == 0)
    return out


def _window_values(x: np.ndarray, coords: np.ndarray, radius: int, center: bool) -> np.ma.MaskedArray:
    """All values in the window around each coordinate (masked outside the patch)."""
    nd = coords.shape[1] - 1
    r = np.arange(-radius, radius + 1)
    offs = np.stack(np.meshgrid(*[r] * nd, indexing="ij"), -1).reshape(-1, nd)
    if not center:
        offs = offs[np.any(offs != 0, axis=1)]
    pos = coords[:, None, 1:] + offs[None]
    inside = np.all((pos >= 0) & (pos < np.asarray(x.shape[1:])), axis=-1)
    pos = np.clip(pos, 0, np.asarray(x.shape[1:]) - 1)
    idx = (np.broadcast_to(coords[:, None, 0], pos.shape[:2]),) + tuple(pos[..., i] for i in range(nd))
    return np.ma.masked_array(x[idx], mask=~inside)


def n2v_mask(x: np.ndarray, perc_pix: float, manipulator: str, radius: int, rng,
             struct_mask=None) -> tuple[np.ndarray, np.ndarray]:
    """N2V inputs and targets for a batch of (normalized) patches ``x`` (B, *patch).

    Returns ``(inputs, targets)`` shaped (B, *patch, 1) and (B, *patch, 2): the target
    channel holds the original values and the mask channel 1 at the blind spots, as n2v's
    loss expects. ``struct_mask``: structN2V's structured blind spot (n2v's
    ``structN2Vmask``, an array of 0/1 of odd sizes centred on the blind spot, e.g.
    ``[[1, 1, 1, 1, 1]]`` along x): the pixels it marks around each blind spot are
    replaced by uniform noise in [-2, 2] (normalized units, as n2v does), so that noise
    correlated along those pixels cannot reveal the blind spot's noise.
    """
    if manipulator not in MANIPULATORS:
        raise InputError("manipulator", f"{manipulator!r} is not one of {', '.join(MANIPULATORS)}")
    x = np.asarray(x, np.float32)
    coords = _stratified_coords(x.shape[0], x.shape[1:], perc_pix, rng)
    idx = tuple(coords.T)
    orig = x[idx]
    if manipulator in ("uniform_withCP", "uniform_withoutCP", "normal_withoutCP"):
        nb = _neighbours(coords, x.shape[1:], radius, rng, center=manipulator == "uniform_withCP",
                         normal=manipulator == "normal_withoutCP")
        values = x[tuple(nb.T)]
    elif manipulator == "mean":
        values = _window_values(x, coords, radius, center=False).mean(axis=1).filled(0)
    elif manipulator == "median":
        values = np.ma.median(_window_values(x, coords, radius, center=False), axis=1).filled(0)
    elif manipulator == "normal_additive":
        values = orig + rng.normal(0, radius, orig.shape)
    elif manipulator == "normal_fitted":
        win = _window_values(x, coords, radius, center=True)
        values = rng.normal(win.mean(axis=1).filled(0), win.std(axis=1).filled(0))
    else:  # identity
        values = orig
    inputs = x.copy()
    inputs[idx] = values
    if struct_mask is not None:
        _hide_structure(inputs, coords, struct_mask, rng)
    targets = np.zeros(x.shape + (2,), np.float32)
    targets[idx + (0,)] = orig
    targets[idx + (1,)] = 1.0
    return inputs[..., None], targets


def struct_offsets(struct_mask, ndim: int) -> np.ndarray:
    """The offsets (K, ndim) from the blind spot of the pixels a structN2V mask marks (the
    blind spot itself left out); InputError unless it is an ``ndim``-D array of 0 and 1 of
    odd sizes."""
    try:
        given = np.asarray(struct_mask)
    except ValueError:  # ragged nested lists
        given = np.asarray([])
    if given.ndim != ndim or any(n % 2 == 0 for n in given.shape) or not np.isin(given, (0, 1)).all():
        raise InputError("restoration.n2v.struct_mask", f"must be a {ndim}D array of 0 and 1 of odd sizes (centred on "
                                                        f"the blind spot); got {struct_mask}")
    mask = given.astype(bool)
    offs = np.argwhere(mask) - np.asarray(mask.shape) // 2
    return offs[np.any(offs != 0, axis=1)]  # the blind spot itself keeps its manipulated value


def _hide_structure(inputs: np.ndarray, coords: np.ndarray, struct_mask, rng) -> None:
    """structN2V: noise over the pixels ``struct_mask`` marks around each blind spot
    (positions beyond the patch clipped to its border, as n2v does)."""
    nd = coords.shape[1] - 1
    offs = struct_offsets(struct_mask, nd)
    if not len(offs):
        return
    pos = np.clip(coords[:, None, 1:] + offs[None], 0, np.asarray(inputs.shape[1:]) - 1).reshape(-1, nd)
    batch = np.repeat(coords[:, 0], len(offs))
    inputs[(batch,) + tuple(pos.T)] = rng.uniform(-2, 2, len(batch)).astype(np.float32)


def augment(rng, *arrays, quarter_turns: bool = True):
    """The same random flip/rotation (in y-x) per patch for every array (B, ..., y, x).
    ``quarter_turns`` False: turns by 180 degrees only (with the flips: the 4 mirror images),
    which keep each direction along its axis (structN2V's correlated noise)."""
    b = arrays[0].shape[0]
    square = arrays[0].shape[-1] == arrays[0].shape[-2]
    if not quarter_turns:
        ks = 2 * rng.integers(0, 2, b)
    else:
        ks = rng.integers(0, 4, b) if square else np.zeros(b, int)
    flips = rng.integers(0, 2, b)
    out = [a.copy() for a in arrays]
    for i in range(b):
        for a, o in zip(arrays, out):
            p = a[i]
            if ks[i]:
                p = np.rot90(p, ks[i], axes=(-2, -1))
            if flips[i]:
                p = p[..., ::-1]
            o[i] = p
    return out if len(out) > 1 else out[0]
