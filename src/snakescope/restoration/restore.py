"""Image restoration: Noise2Void (self-supervised) and CARE (supervised), trained and applied
blockwise on normalized OME-NGFF images.

Environments
------------
N2V needs the ``n2v`` package, which only works in the n2v environment (TF 2.15, Keras 2,
csbdeep 0.7.4, numpy 1.26); CARE runs in the main environment (TF 2.21, Keras 3, csbdeep
0.8.2). This module imports under both: TensorFlow, csbdeep and n2v are imported inside the
functions that need them. The rules call the CLI with the right interpreter::

    .venv/n2v/bin/python  -m snakescope.restore train-n2v  '{"images": [...], "out_dir": ...}'
    .venv/main/bin/python -m snakescope.restore train-care '{"source": ..., "target": ..., "out_dir": ...}'
    .venv/n2v/bin/python  -m snakescope.restore predict    '{"model_dir": ..., "kind": "n2v", "in_path": ..., "out_path": ...}'

Training data
-------------
Patches are drawn at seeded random positions from the images' level-0 Zarr arrays, reading
only the patch regions (never a whole volume). A model is 3D (patches ``z, y, x``) when the
images have a z axis and 2D otherwise (``ndim=2`` forces 2D on z stacks, whose planes are
then frames); t (and z for 2D) only selects the frame a patch comes from; with a channel
axis, one channel (``channel``) is used. The pool of patches is split into training and
validation patches; training batches are drawn from the pool with random flips/rotations.

N2V masking (vectorized re-implementation of n2v's ``N2V_DataWrapper``): stratified random
blind-spot pixels, ``n2v_perc_pix`` percent of each patch, replaced by the ``manipulator``
(any of n2v's: ``uniform_withCP``, ``uniform_withoutCP``, ``normal_withoutCP``, ``mean``,
``median``, ``normal_additive``, ``normal_fitted``, ``identity``) within
``neighborhood_radius``. The model itself is n2v's (``n2v.models.N2V``, its loss, U-Net,
config and folder layout), so n2v and its tools can load the folders we write.

Model folder (N2V and CARE alike)
---------------------------------
``config.json`` (the n2v/csbdeep configuration), ``weights_best.h5`` (lowest validation
loss), ``weights_last.h5`` (last epoch), ``training.csv`` (Keras CSVLogger: loss,
val_loss and metrics per epoch, learning rate), ``training.png`` (the curves),
``training.log`` and ``snakescope.json`` (kind, channel, halo, settings, data, versions).
The folder appears complete or not at all (written in a temporary sibling, then renamed).

Prediction output
-----------------
A float32 NGFF image with the input's axes, scale and chunks. Where the input has a channel
axis **all channels are kept** and only the restored one is replaced, so channel indices in
the configuration stay valid for later stages (segmentation, measurements); the restored
channel is recorded in ``attrs["snakescope"]["restore"]``. Prediction runs block by block
(:mod:`snakescope.tiling`) with a halo covering the U-Net's receptive field, so the result
equals a whole-image prediction within float rounding, while memory is bounded by the block
size.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from snakescope.io import ngff
from snakescope.io.atomic import atomic_path
from snakescope.errors import InputError
from snakescope.blockwise.dense import predict_blockwise, receptive_halo

log = logging.getLogger(__name__)

__all__ = [
    "N2V_DEFAULTS",
    "CARE_DEFAULTS",
    "MANIPULATORS",
    "sample_patches",
    "n2v_mask",
    "train_n2v",
    "train_care",
    "check_model",
    "load_model",
    "predict",
    "predict_array",
    "restoration_metrics",
    "main",
]

MANIPULATORS = ("uniform_withCP", "uniform_withoutCP", "normal_withoutCP", "mean", "median",
                "normal_additive", "normal_fitted", "identity")

#: Default N2V settings. They differ from the n2v example notebook (patch 64, 0.198 %
#: masked pixels, uniform_withCP, U-Net depth 2 / kernel 5 / 32 filters, batch 128, MAE):
#: on a CPU budget those train too slowly to beat a tuned Gaussian filter. A lighter U-Net
#: with more, smaller steps, a larger masked share (more loss signal per step), a blind spot
#: without the centre pixel, the MSE loss (the mean, which is what removes zero-mean noise:
#: MAE's median biases and compresses contrast) and a cosine learning-rate decay learn
#: faster at an equal budget (see bench/restore.py for the numbers).
N2V_DEFAULTS = {
    "patch_shape": None,  # (64, 64) in 2D, (16, 64, 64) in 3D
    "n2v_perc_pix": 1.5,
    "manipulator": "uniform_withoutCP",
    "neighborhood_radius": 2,
    "epochs": 40,
    "steps_per_epoch": 100,
    "batch_size": 16,
    "learning_rate": 2e-3,
    "lr_schedule": "cosine",
    "patience": 10,
    "validation_fraction": 0.1,
    "n_patches": None,
    "unet_depth": 2,
    "unet_kern_size": 3,
    "unet_n_first": 16,
    "batch_norm": True,
    "blurpool": False,
    "skip_skipone": False,
    "loss": "mse",
    "augment": True,
    "time_limit": None,
    "seed": 0,
}

#: Default CARE settings (csbdeep's defaults except the lighter U-Net and the schedule).
CARE_DEFAULTS = {
    "patch_shape": None,
    "epochs": 40,
    "steps_per_epoch": 100,
    "batch_size": 16,
    "learning_rate": 1e-3,
    "lr_schedule": "cosine",
    "patience": 10,
    "validation_fraction": 0.1,
    "n_patches": None,
    "unet_depth": 2,
    "unet_kern_size": 3,
    "unet_n_first": 32,
    "loss": "mae",
    "augment": True,
    "time_limit": None,
    "seed": 0,
}

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
    Zarr array, a numpy array), its axes letters and the channel used when it has a c axis."""

    name: str
    array: Any
    axes: str
    channel: int | None = None

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
        return block


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


def _spatial_axes(ndim: int) -> str:
    return "zyx" if ndim == 3 else "yx"


def _default_patch(ndim: int) -> tuple[int, ...]:
    return (16, 64, 64) if ndim == 3 else (64, 64)


def _model_ndim(sources: Sequence[Source], ndim: int | None) -> int:
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
    spatial = _spatial_axes(ndim)
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


def _check_enough(sources, patch_shape, ndim, min_patches) -> int:
    n = count_patches(sources, patch_shape, ndim)
    if n < min_patches:
        names = ", ".join(s.name for s in sources)
        sizes = "; ".join(f"{s.name}: {dict(zip(s.model_axes(), s.model_shape()))}" for s in sources)
        raise InputError(names, f"too few patches to train: only {n} non-overlapping patches of shape "
                                f"{tuple(patch_shape)} ({_spatial_axes(ndim)}) fit in the images ({sizes}); "
                                f"at least {min_patches} are needed. Add images or use a smaller patch_shape.")
    return n


def _patch_positions(sources: Sequence[Source], n: int, patch_shape, ndim: int, rng) -> list:
    """Seeded random positions: (source index, model-axes region) per patch."""
    spatial = _spatial_axes(ndim)
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
                   ndim: int | None = None, seed: int = 0, targets=None, target_channel: int | None = None,
                   min_patches: int = MIN_PATCHES, threads: int = 2):
    """Draw ``n_patches`` patches at seeded random positions, reading only those regions.

    ``images``: NGFF paths, NgffImages, ``(array, axes)`` pairs or Sources. Returns a float32
    array ``(n_patches, *patch_shape)``; with ``targets`` (one per image, same shapes) a pair
    ``(X, Y)`` with the target patches at the same positions. Raises InputError when fewer
    than ``min_patches`` non-overlapping patches fit.
    """
    sources = [as_source(im, channel) for im in _as_list(images)]
    ndim = _model_ndim(sources, ndim)
    patch_shape = tuple(int(p) for p in (patch_shape or _default_patch(ndim)))
    if len(patch_shape) != ndim:
        raise InputError("patch_shape", f"{patch_shape} has {len(patch_shape)} axes; the model is {ndim}D ({_spatial_axes(ndim)})")
    target_sources = None
    if targets is not None:
        target_sources = [as_source(t, target_channel) for t in _as_list(targets)]
        _check_pairs(sources, target_sources)
    _check_enough(sources, patch_shape, ndim, min_patches)
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


def _as_list(images) -> list:
    if isinstance(images, (str, Path, Source, ngff.NgffImage, tuple)) or hasattr(images, "shape"):
        return [images]
    return list(images)


def _check_pairs(sources: Sequence[Source], targets: Sequence[Source]) -> None:
    if len(sources) != len(targets):
        raise InputError("targets", f"{len(targets)} target images for {len(sources)} images")
    for s, t in zip(sources, targets):
        if s.model_shape() != t.model_shape() or s.model_axes() != t.model_axes():
            raise InputError(s.name, f"the target {t.name} has shape {t.model_shape()} (axes {t.model_axes()!r}) but the "
                                     f"image has shape {s.model_shape()} (axes {s.model_axes()!r}, channel {s.channel}); "
                                     "paired images must have the same shape")


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


def n2v_mask(x: np.ndarray, perc_pix: float, manipulator: str, radius: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """N2V inputs and targets for a batch of (normalized) patches ``x`` (B, *patch).

    Returns ``(inputs, targets)`` shaped (B, *patch, 1) and (B, *patch, 2): the target
    channel holds the original values and the mask channel 1 at the blind spots, as n2v's
    loss expects.
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
    targets = np.zeros(x.shape + (2,), np.float32)
    targets[idx + (0,)] = orig
    targets[idx + (1,)] = 1.0
    return inputs[..., None], targets


def _augment(rng, *arrays):
    """The same random flip/rotation (in y-x) per patch for every array (B, ..., y, x)."""
    b = arrays[0].shape[0]
    square = arrays[0].shape[-1] == arrays[0].shape[-2]
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


# ---------------------------------------------------------------------------------------
# Training loop shared by N2V and CARE.


def _keras(name: str):
    from csbdeep.utils.tf import keras_import

    return keras_import("callbacks", name)


def _make_schedule_callback(kind: str, lr0: float, total_steps: int, deadline: float | None):
    """Learning-rate schedule and wall-clock budget in one callback.

    Progress is the larger of steps done / planned and the share of the time from the start
    of fitting to ``deadline`` (a ``time.perf_counter()`` value) already spent, so a budget
    cut ends the cosine decay at its end rather than at a high rate. When progress reaches 1
    training stops after the current step (the epoch still validates).
    """
    Callback = _keras("Callback")

    class Schedule(Callback):
        def __init__(self):
            super().__init__()
            self.step = 0
            self.start = None
            self.lr = lr0

        def _set(self, value):
            self.lr = float(value)
            lr_var = self.model.optimizer.learning_rate
            if hasattr(lr_var, "assign"):
                lr_var.assign(self.lr)
            else:
                self.model.optimizer.learning_rate = self.lr

        def on_train_begin(self, logs=None):
            self.start = time.perf_counter()
            self._set(lr0)

        def progress(self):
            p = self.step / max(1, total_steps)
            if deadline is not None:
                now = time.perf_counter()
                p = max(p, 1.0 if now >= deadline else (now - self.start) / (deadline - self.start))
            return p

        def on_train_batch_begin(self, batch, logs=None):
            p = self.progress()
            if p >= 1.0:
                self.model.stop_training = True
            if kind == "cosine":
                warm = 0.02
                f = p / warm if p < warm else 0.5 * (1 + math.cos(math.pi * min(1.0, (p - warm) / (1 - warm))))
                self._set(lr0 * max(f, 0.01))

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            if deadline is not None and self.progress() >= 1.0:
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                lr_var = self.model.optimizer.learning_rate
                logs["lr"] = float(np.asarray(lr_var.numpy() if hasattr(lr_var, "numpy") else lr_var))

    return Schedule()


def _epoch_logger():
    Callback = _keras("Callback")

    class EpochLog(Callback):
        def on_train_begin(self, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            items = " ".join(f"{k}={float(v):.5g}" for k, v in logs.items())
            log.info("epoch %d (%.0f s): %s", epoch + 1, time.perf_counter() - self.t0, items)

    return EpochLog()


@contextlib.contextmanager
def _log_to(path: Path):
    handler = logging.FileHandler(path, mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("snakescope")
    root.addHandler(handler)
    old = root.level
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
        handler.close()


def _check_schedule(kind) -> None:
    if kind not in ("cosine", "plateau", "constant"):
        raise InputError("lr_schedule", f"{kind!r} is not one of cosine, plateau, constant")


def _fit(model, batches, validation, *, epochs, steps_per_epoch, learning_rate, lr_schedule, patience,
         deadline, logdir: Path) -> dict:
    """Fit a prepared csbdeep/n2v model; write weights_best/last.h5, training.csv and .png."""
    from snakescope.training.curves import plot_curves

    callbacks = list(model.callbacks)
    callbacks.append(_make_schedule_callback(lr_schedule, learning_rate, epochs * steps_per_epoch, deadline))
    if lr_schedule == "plateau":
        callbacks.append(_keras("ReduceLROnPlateau")(monitor="val_loss", factor=0.5, patience=max(2, (patience or 10) // 2),
                                                     verbose=0))
    if patience:
        callbacks.append(_keras("EarlyStopping")(monitor="val_loss", mode="min", patience=int(patience), verbose=1))
    callbacks.append(_epoch_logger())
    callbacks.append(_keras("CSVLogger")(str(logdir / "training.csv")))
    start = time.perf_counter()
    history = model.keras_model.fit(batches, validation_data=validation, epochs=int(epochs),
                                    steps_per_epoch=int(steps_per_epoch), callbacks=callbacks, verbose=0)
    seconds = time.perf_counter() - start
    model.keras_model.save_weights(str(logdir / "weights_last.h5"))
    if (logdir / "weights_best.h5").exists():
        model.keras_model.load_weights(str(logdir / "weights_best.h5"))
    else:  # no validation improvement was ever recorded (e.g. NaN): best = last
        model.keras_model.save_weights(str(logdir / "weights_best.h5"))
    with contextlib.suppress(FileNotFoundError):
        (logdir / "weights_now.h5").unlink()
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    val = hist.get("val_loss", [])
    best_epoch = int(np.nanargmin(val)) + 1 if val and np.isfinite(val).any() else None
    plot_curves(logdir / "training.csv", logdir / "training.png", title=f"{model.__class__.__name__} training")
    return {
        "epochs_run": len(hist.get("loss", [])),
        "best_epoch": best_epoch,
        "best_val_loss": float(np.nanmin(val)) if best_epoch else None,
        "final_loss": hist["loss"][-1] if hist.get("loss") else None,
        "train_seconds": round(seconds, 2),
    }


@contextlib.contextmanager
def _quiet_existing_folder():
    """csbdeep warns that the model folder exists: we created it (for the log) on purpose."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="output path for model already exists")
        yield


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("numpy", "tensorflow", "tensorflow-cpu", "keras", "csbdeep", "n2v", "zarr"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def _pool_size(n_patches, sources, patch_shape, ndim) -> int:
    if n_patches:
        return int(n_patches)
    voxels = 0
    for src in sources:
        frames, sizes = _frames_and_spatial(src, ndim)
        voxels += int(np.prod(sizes)) * int(np.prod([f for _, f in frames]) if frames else 1)
    per = int(np.prod(patch_shape))
    cap = min(MAX_POOL_PATCHES, MAX_POOL_BYTES // (4 * per))
    return int(max(64, min(cap, math.ceil(2 * voxels / per))))


def _split(n: int, fraction: float, rng) -> tuple[np.ndarray, np.ndarray]:
    n_val = max(1, int(round(n * float(fraction))))
    if n - n_val < 1:
        raise InputError("validation_fraction", f"{fraction} leaves no training patches out of {n}")
    perm = rng.permutation(n)
    return perm[n_val:], perm[:n_val]


def _seed_everything(seed: int) -> None:
    import tensorflow as tf

    np.random.seed(seed)
    try:
        tf.keras.utils.set_random_seed(seed)
    except Exception:  # pragma: no cover - older APIs
        tf.random.set_seed(seed)


def _import_n2v():
    try:
        from n2v.models import N2V, N2VConfig
    except ImportError as exc:
        raise RuntimeError(
            "N2V needs the n2v package, which lives in the n2v environment: run this step with "
            f".venv/n2v/bin/python (python -m snakescope.restore ...) [{exc}]") from None
    return N2V, N2VConfig


def _adam(learning_rate: float):
    Adam = __import__("csbdeep.utils.tf", fromlist=["keras_import"]).keras_import("optimizers", "Adam")
    return Adam(learning_rate=float(learning_rate))


def train_n2v(images, out_dir: str | Path, *, channel: int | None = None, ndim: int | None = None,
              patch_shape=None, n2v_perc_pix: float | None = None, manipulator: str | None = None,
              neighborhood_radius: int | None = None, epochs: int | None = None, steps_per_epoch: int | None = None,
              batch_size: int | None = None, learning_rate: float | None = None, lr_schedule: str | None = None,
              patience: int | None = None, seed: int | None = None, n_patches: int | None = None,
              validation_fraction: float | None = None, unet_depth: int | None = None,
              unet_kern_size: int | None = None, unet_n_first: int | None = None, batch_norm: bool | None = None,
              blurpool: bool | None = None, skip_skipone: bool | None = None, loss: str | None = None,
              augment: bool | None = None, time_limit: float | None = None, min_patches: int = MIN_PATCHES,
              threads: int = 2) -> dict:
    """Train Noise2Void on the images themselves (self-supervised); write the model folder.

    ``images``: normalized NGFF image paths (or NgffImages / ``(array, axes)`` pairs); all
    are read patch by patch. Settings left ``None`` take :data:`N2V_DEFAULTS`. ``patience``:
    early stopping on the validation loss (0 or None: off); ``time_limit``: wall-clock
    seconds for the whole call (imports and patch sampling included; the cosine schedule then
    decays within what is left, and the weights, curves and files come a few seconds after). Returns a summary
    (also stored in ``snakescope.json`` in the folder).
    """
    t_start = time.perf_counter()
    s = dict(N2V_DEFAULTS)
    given = dict(patch_shape=patch_shape, n2v_perc_pix=n2v_perc_pix, manipulator=manipulator,
                 neighborhood_radius=neighborhood_radius, epochs=epochs, steps_per_epoch=steps_per_epoch,
                 batch_size=batch_size, learning_rate=learning_rate, lr_schedule=lr_schedule, patience=patience,
                 seed=seed, n_patches=n_patches, validation_fraction=validation_fraction, unet_depth=unet_depth,
                 unet_kern_size=unet_kern_size, unet_n_first=unet_n_first, batch_norm=batch_norm, blurpool=blurpool,
                 skip_skipone=skip_skipone, loss=loss, augment=augment, time_limit=time_limit)
    s.update({k: v for k, v in given.items() if v is not None})
    _check_schedule(s["lr_schedule"])
    if s["manipulator"] not in MANIPULATORS:
        raise InputError("n2v.manipulator", f"{s['manipulator']!r} is not one of {', '.join(MANIPULATORS)}")
    if s["loss"] not in ("mse", "mae"):
        raise InputError("n2v.loss", f"{s['loss']!r} is not mse or mae")
    if not 0 < float(s["n2v_perc_pix"]) <= 100:
        raise InputError("n2v.n2v_perc_pix", f"must be in (0, 100] percent (got {s['n2v_perc_pix']})")
    sources = [as_source(im, channel) for im in _as_list(images)]
    if not sources:
        raise InputError("n2v.images", "no training images given")
    nd = _model_ndim(sources, ndim)
    patch = tuple(int(p) for p in (s["patch_shape"] or _default_patch(nd)))
    div = 2 ** int(s["unet_depth"])
    if len(patch) != nd or any(p % div for p in patch):
        raise InputError("n2v.patch_shape", f"{patch} must have {nd} sizes ({_spatial_axes(nd)}), each a multiple of "
                                            f"2**unet_depth = {div}")
    n_fit = _check_enough(sources, patch, nd, min_patches)
    seed_ = int(s["seed"])
    rng = np.random.default_rng(seed_)
    pool = _pool_size(s["n_patches"], sources, patch, nd)
    t0 = time.perf_counter()
    X = sample_patches(sources, pool, patch, ndim=nd, seed=seed_, min_patches=min_patches, threads=threads)
    sample_seconds = time.perf_counter() - t0
    train_idx, val_idx = _split(len(X), s["validation_fraction"], rng)
    N2V, N2VConfig = _import_n2v()
    _seed_everything(seed_)
    out_dir = Path(out_dir)
    mean, std = float(X[train_idx].mean()), float(X[train_idx].std())
    if not std > 0:
        raise InputError(", ".join(src.name for src in sources), "the training patches are constant; nothing to learn")
    config = N2VConfig(
        X[train_idx[:1]][..., None], unet_n_depth=int(s["unet_depth"]), unet_kern_size=int(s["unet_kern_size"]),
        unet_n_first=int(s["unet_n_first"]), batch_norm=bool(s["batch_norm"]), blurpool=bool(s["blurpool"]),
        skip_skipone=bool(s["skip_skipone"]), train_loss=s["loss"], train_epochs=int(s["epochs"]),
        train_steps_per_epoch=int(s["steps_per_epoch"]), train_batch_size=int(s["batch_size"]),
        train_learning_rate=float(s["learning_rate"]), train_tensorboard=False, train_reduce_lr=None,
        n2v_perc_pix=float(s["n2v_perc_pix"]), n2v_patch_shape=patch, n2v_manipulator=s["manipulator"],
        n2v_neighborhood_radius=int(s["neighborhood_radius"]), means=[str(mean)], stds=[str(std)])
    Xn = (X - np.float32(mean)) / np.float32(std)
    del X
    Xtr = Xn[train_idx]
    Xv_in, Yv = n2v_mask(Xn[val_idx], float(s["n2v_perc_pix"]), s["manipulator"], int(s["neighborhood_radius"]), rng)
    del Xn

    def batches():
        bs = int(s["batch_size"])
        while True:
            xb = Xtr[rng.integers(0, len(Xtr), bs)]
            if s["augment"]:
                xb = _augment(rng, xb)
            yield n2v_mask(xb, float(s["n2v_perc_pix"]), s["manipulator"], int(s["neighborhood_radius"]), rng)

    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        with _log_to(tmp / "training.log"):
            log.info("N2V training on %d image(s): %s", len(sources), ", ".join(src.name for src in sources))
            log.info("%dD model, patches %s, %d drawn in %.1f s (%d train, %d validation; %d non-overlapping fit)",
                     nd, patch, pool, sample_seconds, len(train_idx), len(val_idx), n_fit)
            log.info("settings: %s", json.dumps({k: s[k] for k in sorted(s)}, default=str))
            with _quiet_existing_folder():
                model = N2V(config, name=tmp.name, basedir=str(tmp.parent))
            model.prepare_for_training(optimizer=_adam(s["learning_rate"]))
            summary = _fit(model, batches(), (Xv_in, Yv), epochs=int(s["epochs"]),
                           steps_per_epoch=int(s["steps_per_epoch"]), learning_rate=float(s["learning_rate"]),
                           lr_schedule=s["lr_schedule"], patience=s["patience"], logdir=tmp,
                           deadline=None if not s["time_limit"] else t_start + float(s["time_limit"]))
            log.info("done: %s", json.dumps(summary))
        meta = _model_meta("n2v", sources, nd, patch, s, int(s["unet_depth"]), int(s["unet_kern_size"]),
                           bool(s["blurpool"]), summary, len(train_idx), len(val_idx))
        (tmp / "snakescope.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    return {**summary, "model_dir": str(out_dir), "kind": "n2v", "ndim": nd, "patch_shape": list(patch),
            "n_train_patches": int(len(train_idx)), "n_val_patches": int(len(val_idx))}


def _model_meta(kind, sources, nd, patch, settings, depth, kern, blurpool, summary, n_train, n_val) -> dict:
    return {
        "kind": kind,
        "ndim": nd,
        "axes": _spatial_axes(nd),
        "channel": sources[0].channel,
        "patch_shape": list(patch),
        "halo": receptive_halo(depth, kern, blurpool=blurpool),
        "align": 2**depth,
        "settings": settings,
        "images": [src.name for src in sources],
        "n_train_patches": int(n_train),
        "n_val_patches": int(n_val),
        "training": summary,
        "versions": _versions(),
    }


def train_care(source, target, out_dir: str | Path, *, channel: int | None = None, target_channel: int | None = None,
               name: str | None = None, ndim: int | None = None, patch_shape=None, epochs: int | None = None,
               steps_per_epoch: int | None = None, batch_size: int | None = None, learning_rate: float | None = None,
               lr_schedule: str | None = None, patience: int | None = None, seed: int | None = None,
               n_patches: int | None = None, validation_fraction: float | None = None, unet_depth: int | None = None,
               unet_kern_size: int | None = None, unet_n_first: int | None = None, loss: str | None = None,
               augment: bool | None = None, time_limit: float | None = None, min_patches: int = MIN_PATCHES,
               threads: int = 2) -> dict:
    """Train CARE (csbdeep) on paired low/high quality images; write the model folder.

    ``source`` and ``target``: one image each (NGFF path, NgffImage, ``(array, axes)`` or a
    2D array) or lists of pairs. Shapes must match (after selecting ``channel`` of the
    source and ``target_channel`` of the target, default: the same index when the target has
    a channel axis), else InputError naming the sample (``name``) and both shapes.
    """
    t_start = time.perf_counter()
    s = dict(CARE_DEFAULTS)
    given = dict(patch_shape=patch_shape, epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size,
                 learning_rate=learning_rate, lr_schedule=lr_schedule, patience=patience, seed=seed,
                 n_patches=n_patches, validation_fraction=validation_fraction, unet_depth=unet_depth,
                 unet_kern_size=unet_kern_size, unet_n_first=unet_n_first, loss=loss, augment=augment,
                 time_limit=time_limit)
    s.update({k: v for k, v in given.items() if v is not None})
    _check_schedule(s["lr_schedule"])
    if s["loss"] not in ("mse", "mae"):
        raise InputError("care.loss", f"{s['loss']!r} is not mse or mae")
    src_list, tgt_list = _as_list(source), _as_list(target)
    names = [name] * len(src_list) if isinstance(name, str) or name is None else list(name)
    sources = [as_source(im, channel, nm) for im, nm in zip(src_list, names)]
    targets = []
    for im, src in zip(tgt_list, sources):
        t = as_source(im, None, f"{src.name} (target)")
        if "c" in t.axes:
            t = as_source(t, target_channel if target_channel is not None else src.channel)
        targets.append(t)
    _check_pairs(sources, targets)
    nd = _model_ndim(sources, ndim)
    patch = tuple(int(p) for p in (s["patch_shape"] or _default_patch(nd)))
    div = 2 ** int(s["unet_depth"])
    if len(patch) != nd or any(p % div for p in patch):
        raise InputError("care.patch_shape", f"{patch} must have {nd} sizes ({_spatial_axes(nd)}), each a multiple of "
                                             f"2**unet_depth = {div}")
    n_fit = _check_enough(sources, patch, nd, min_patches)
    seed_ = int(s["seed"])
    rng = np.random.default_rng(seed_)
    pool = _pool_size(s["n_patches"], sources, patch, nd)
    X, Y = sample_patches(sources, pool, patch, ndim=nd, seed=seed_, targets=targets, min_patches=min_patches,
                          threads=threads)
    train_idx, val_idx = _split(len(X), s["validation_fraction"], rng)
    from csbdeep.models import CARE, Config

    _seed_everything(seed_)
    out_dir = Path(out_dir)
    config = Config(_spatial_axes(nd).upper(), n_channel_in=1, n_channel_out=1, probabilistic=False,
                    unet_n_depth=int(s["unet_depth"]), unet_kern_size=int(s["unet_kern_size"]),
                    unet_n_first=int(s["unet_n_first"]), train_loss=s["loss"], train_epochs=int(s["epochs"]),
                    train_steps_per_epoch=int(s["steps_per_epoch"]), train_batch_size=int(s["batch_size"]),
                    train_learning_rate=float(s["learning_rate"]), train_tensorboard=False, train_reduce_lr=None)
    Xtr, Ytr = X[train_idx], Y[train_idx]
    validation = (X[val_idx][..., None], Y[val_idx][..., None])
    del X, Y

    def batches():
        bs = int(s["batch_size"])
        while True:
            pick = rng.integers(0, len(Xtr), bs)
            xb, yb = Xtr[pick], Ytr[pick]
            if s["augment"]:
                xb, yb = _augment(rng, xb, yb)
            yield xb[..., None], yb[..., None]

    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        with _log_to(tmp / "training.log"):
            log.info("CARE training on %d pair(s): %s", len(sources), ", ".join(f"{a.name} -> {b.name}" for a, b in zip(sources, targets)))
            log.info("%dD model, patches %s, %d drawn (%d train, %d validation; %d non-overlapping fit)",
                     nd, patch, pool, len(train_idx), len(val_idx), n_fit)
            log.info("settings: %s", json.dumps({k: s[k] for k in sorted(s)}, default=str))
            with _quiet_existing_folder():
                model = CARE(config, name=tmp.name, basedir=str(tmp.parent))
            model.prepare_for_training(optimizer=_adam(s["learning_rate"]))
            summary = _fit(model, batches(), validation, epochs=int(s["epochs"]),
                           steps_per_epoch=int(s["steps_per_epoch"]), learning_rate=float(s["learning_rate"]),
                           lr_schedule=s["lr_schedule"], patience=s["patience"], logdir=tmp,
                           deadline=None if not s["time_limit"] else t_start + float(s["time_limit"]))
            log.info("done: %s", json.dumps(summary))
        meta = _model_meta("care", sources, nd, patch, s, int(s["unet_depth"]), int(s["unet_kern_size"]), False,
                           summary, len(train_idx), len(val_idx))
        meta["targets"] = [t.name for t in targets]
        (tmp / "snakescope.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    return {**summary, "model_dir": str(out_dir), "kind": "care", "ndim": nd, "patch_shape": list(patch),
            "n_train_patches": int(len(train_idx)), "n_val_patches": int(len(val_idx))}


# ---------------------------------------------------------------------------------------
# Models: validation (no TensorFlow needed), loading, prediction.


def check_model(model_dir: str | Path, kind: str | None = None) -> dict:
    """Validate a model folder without loading TensorFlow; return its description.

    InputError (naming the folder) when it is missing, has no readable ``config.json`` or
    no weights, is of the other kind (N2V vs CARE), or does not map one channel to one.
    """
    folder = Path(model_dir)
    if not folder.is_dir():
        raise InputError(folder, "model folder does not exist" if not folder.exists() else "is not a folder (a model folder was expected)")
    cfg_path = folder / "config.json"
    try:
        config = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise InputError(folder, "has no config.json: not a CSBDeep/N2V model folder") from None
    except (OSError, ValueError) as exc:
        raise InputError(cfg_path, f"is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise InputError(cfg_path, "does not hold a model configuration")
    found = "n2v" if any(k.startswith("n2v_") for k in config) else "care"
    if kind not in (None, "auto") and kind != found:
        raise InputError(folder, f"is a {found.upper()} model folder, not a {str(kind).upper()} one")
    missing = [k for k in ("n_dim", "unet_n_depth", "unet_kern_size", "n_channel_in", "n_channel_out", "axes") if k not in config]
    if missing:
        raise InputError(cfg_path, f"lacks {', '.join(missing)}: not a CSBDeep/N2V U-Net model configuration")
    if config["n_dim"] not in (2, 3):
        raise InputError(cfg_path, f"n_dim {config['n_dim']} is not 2 or 3")
    if config["n_channel_in"] != 1 or config["n_channel_out"] != 1:
        raise InputError(folder, f"maps {config['n_channel_in']} channel(s) to {config['n_channel_out']}; "
                                 "snakescope restores one channel at a time (1 -> 1)")
    if found == "n2v" and not all(k in config for k in ("means", "stds")):
        raise InputError(cfg_path, "lacks the means/stds of an N2V model")
    weights = sorted(p.name for p in folder.iterdir() if p.suffix in (".h5", ".hdf5"))
    if not weights:
        raise InputError(folder, "has no weights (weights_best.h5 / weights_last.h5)")
    meta = {}
    with contextlib.suppress(OSError, ValueError):
        meta = json.loads((folder / "snakescope.json").read_text())
    depth, kern = int(config["unet_n_depth"]), int(config["unet_kern_size"])
    blur = bool(config.get("blurpool", False))
    return {"kind": found, "ndim": int(config["n_dim"]), "unet_depth": depth, "unet_kern_size": kern,
            "halo": receptive_halo(depth, kern, blurpool=blur), "align": 2**depth, "weights": weights,
            "config": config, "meta": meta, "path": str(folder)}


@dataclass
class LoadedModel:
    kind: str
    model: Any
    info: dict

    @property
    def ndim(self) -> int:
        return self.info["ndim"]

    def _graph(self):
        """The network as one TensorFlow graph for any block shape: traced once (edge blocks
        differ in shape), and graph mode fuses convolution, batch norm and ReLU, which a
        plain eager call does not (measured 1.5x faster on CPU). Same kernels as the
        ``keras_model.predict`` that csbdeep and n2v use."""
        if getattr(self, "_graph_fn", None) is None:
            import tensorflow as tf

            keras_model = self.model.keras_model
            spec = tf.TensorSpec([None] * (self.ndim + 1) + [1], tf.float32)
            self._graph_fn = tf.function(lambda t: keras_model(t, training=False), input_signature=[spec])
        return self._graph_fn

    def predict_fn(self):
        """block -> prediction; the spatial axes are the last ``ndim``, any axes before them a batch."""
        keras_model = self.model.keras_model
        if self.kind == "n2v":
            cfg = self.model.config
            mean, std = np.float32(float(cfg.means[0])), np.float32(float(cfg.stds[0]))
        else:
            mean, std = np.float32(0), np.float32(1)
        nd = self.ndim

        graph = self._graph()

        def fn(block: np.ndarray) -> np.ndarray:
            shape = block.shape
            x = block.reshape((-1,) + shape[len(shape) - nd:]).astype(np.float32, copy=False)
            if self.kind == "n2v":
                x = (x - mean) / std
            y = graph(x[..., None]).numpy()[..., 0]  # a probabilistic CARE model: channel 0 is the mean
            if self.kind == "n2v":
                y = y * std + mean
            return y.reshape(shape).astype(np.float32, copy=False)

        return fn


def load_model(model_dir: str | Path, kind: str | None = None) -> LoadedModel:
    """Validate (:func:`check_model`) and load a model folder with its best weights."""
    info = check_model(model_dir, kind)
    folder = Path(model_dir).resolve()
    if info["kind"] == "n2v":
        N2V, _ = _import_n2v()
        cls = N2V
    else:
        from csbdeep.models import CARE

        cls = CARE
    try:
        with contextlib.redirect_stdout(sys.stderr):
            model = cls(None, name=folder.name, basedir=str(folder.parent))
            best = folder / "weights_best.h5"
            if best.exists():
                model.keras_model.load_weights(str(best))
    except Exception as exc:
        raise InputError(model_dir, f"cannot be loaded as a {info['kind'].upper()} model ({type(exc).__name__}: {exc})") from None
    return LoadedModel(info["kind"], model, info)


def _frame_axes(axes: str, ndim: int) -> str:
    spatial = _spatial_axes(ndim)
    return "".join(a for a in axes if a not in spatial)


def default_block_shape(axes: str, shape, ndim: int, *, halo: int, n_first: int = 16, chunks=None) -> dict:
    """Blocks whose outer region (core + halo) has at most ``2**25 / n_first`` voxels in 2D
    (2 M for 16 first-level filters: about 0.4 GiB of activations, measured peak RSS of a
    prediction 1 GiB with TensorFlow) and twice that in 3D, where the halo costs more.

    2D: y-x cores of up to 1024 x 1024; 3D: up to 32 z planes and the largest square y-x core
    that fits. Cores are rounded down to whole chunks where chunks are smaller. Where one
    y-x tile leaves room, the innermost frame axis (t, or z for a 2D model) is batched.
    """
    spatial = _spatial_axes(ndim)
    size = dict(zip(axes, shape))
    chunk = dict(zip(axes, chunks)) if chunks is not None else {}
    budget = max(2**16, (2**25 if ndim == 2 else 2**26) // max(1, int(n_first)))
    block = {a: 1 for a in axes}
    z_outer = 1
    if ndim == 3:
        block["z"] = min(32, size["z"])
        z_outer = min(size["z"] + 16, block["z"] + 2 * halo)  # the padding adds < 2**depth
    side = int(math.sqrt(budget / z_outer)) - 2 * halo
    side = max(64, min(1024, side))
    for a in "yx":
        b = min(side, size[a])
        c = chunk.get(a)
        if c and c < b:
            b = max(c, b // c * c)
        block[a] = b
    if ndim == 3 and chunk.get("z") and chunk["z"] < block["z"]:
        block["z"] = max(chunk["z"], block["z"] // chunk["z"] * chunk["z"])
    frames = [a for a in axes if a not in spatial]
    if frames:
        outer = z_outer * min(size["y"] + 16, block["y"] + 2 * halo) * min(size["x"] + 16, block["x"] + 2 * halo)
        block[frames[-1]] = int(max(1, min(size[frames[-1]], budget // max(1, outer))))
    return block


def predict_array(model: LoadedModel, read_region, write_region, shape, axes: str, *, block_shape=None, halo=None,
                  chunks=None, prefetch: int = 1) -> dict:
    """Blockwise prediction of an array with model axes ``axes`` (no c) through a loaded model."""
    nd = model.ndim
    spatial = _spatial_axes(nd)
    if not set(spatial) <= set(axes):
        raise InputError("image", f"a {nd}D model needs axes {spatial!r}; the image has {axes!r}")
    h = model.info["halo"] if halo is None else int(halo)
    block = default_block_shape(axes, shape, nd, halo=h, n_first=int(model.info["config"].get("unet_n_first", 32)),
                                chunks=chunks)
    if block_shape:
        block.update({a: int(v) for a, v in dict(block_shape).items() if a in axes})
    halo_d = {a: (h if a in spatial else 0) for a in axes}
    align = {a: (model.info["align"] if a in spatial else 1) for a in axes}
    stats = predict_blockwise(read_region, write_region, shape, axes, block, halo_d, model.predict_fn(),
                              align=align, pad="auto", prefetch=prefetch)
    return {**stats, "halo": h, "block_shape": block}


def predict(model_dir: str | Path, kind: str | None, in_path: str | Path, out_path: str | Path, *,
            channel: int | None = None, block_shape: dict | None = None, halo: int | None = None,
            compression: str = "lz4", pyramid_levels="auto", pyramid_method: str | None = None,
            threads: int = 2) -> dict:
    """Restore one channel of a normalized NGFF image block by block; write a float32 NGFF.

    The output has the input's axes, scale and chunks; other channels are copied unchanged
    (the restored one replaced). ``block_shape`` (per axis, e.g. ``{"y": 512, "x": 512}``)
    bounds memory; ``halo`` defaults to the U-Net's receptive field (seamless). The output
    appears atomically. Returns a summary (timings, blocks, halo).
    """
    in_path, out_path = Path(in_path), Path(out_path)
    if not in_path.exists():
        raise InputError(in_path, "image does not exist")
    try:
        image = ngff.read_image(in_path)
    except Exception as exc:
        raise InputError(in_path, f"is not a readable OME-NGFF image ({type(exc).__name__}: {exc})") from None
    src = as_source(image, channel, str(in_path))
    info = check_model(model_dir, kind)
    axes, shape = src.model_axes(), src.model_shape()
    if info["ndim"] == 3 and "z" not in axes:
        raise InputError(model_dir, f"is a 3D model; {in_path} has no z axis (axes {image.axes!r})")
    model = load_model(model_dir, kind)
    data = image.data
    chunks = tuple(c for a, c in zip(image.axes, data.chunks) if a != "c")
    method = pyramid_method or image.attrs["multiscales"][0].get("type", "mean")
    if method not in ("mean", "nearest"):
        method = "mean"
    start = time.perf_counter()
    with atomic_path(out_path) as tmp:
        group = ngff.open_group(tmp, "w")
        shapes = ngff.pyramid_shapes(image.axes, data.shape, pyramid_levels)
        levels = ngff.create_levels(group, shapes, data.chunks, np.float32, compression)
        if "c" in image.axes and data.shape[image.axes.index("c")] > 1:
            ci = image.axes.index("c")

            def copy(region):
                if region[ci].start != src.channel:
                    levels[0][region] = np.asarray(data[region], dtype=np.float32)

            for _ in ngff.map_blocks_bounded(copy, ngff.slabs(image.axes, data.shape, data.chunks, 4), threads):
                pass

        def write(region, block):
            levels[0][src.region(region)] = _expand(block, image.axes)

        stats = predict_array(model, src.read, write, shape, axes, block_shape=block_shape, halo=halo, chunks=chunks)
        ngff.write_pyramid(group, image.axes, shapes, data.chunks, np.float32, compression, threads, method, first=1)
        ms = ngff.multiscales_metadata(image.axes, image.scale, len(shapes), image.attrs["multiscales"][0].get("name", ""),
                                       method=method)
        attrs = {"multiscales": [ms]}
        if "omero" in image.attrs:
            attrs["omero"] = image.attrs["omero"]
        prior = dict(image.attrs.get("snakescope", {}))
        summary = {"kind": model.kind, "model_dir": str(model_dir), "channel": src.channel, "ndim": model.ndim,
                   "halo": stats["halo"], "block_shape": stats["block_shape"], "n_blocks": stats["n_blocks"], "seconds": round(time.perf_counter() - start, 3),
                   "predict_seconds": round(stats["predict_s"], 3),
                   "channels_kept": "all (the restored channel replaced)" if "c" in image.axes else "no channel axis"}
        prior["restore"] = summary
        attrs["snakescope"] = prior
        group.attrs.update(attrs)
    log.info("restored %s -> %s with %s (%d blocks, %.1f s)", in_path, out_path, model_dir, stats["n_blocks"],
             summary["seconds"])
    return summary


def _expand(block: np.ndarray, axes: str) -> np.ndarray:
    """Put the channel axis (length 1) back into a block of the model axes."""
    return np.expand_dims(block, axes.index("c")) if "c" in axes else block


# ---------------------------------------------------------------------------------------
# Metrics.


def restoration_metrics(source, restored, target, *, channel: int | None = None, data_range: float | None = None) -> dict:
    """PSNR and SSIM of the input and of the restored image against a clean target.

    ``psnr_*_affine``: PSNR after the least-squares affine fit ``a * image + b`` of each image
    to the target (``affine_slope_*`` = a), which is insensitive to the contrast and offset
    differences that separate normalization of noisy and clean images leaves (and to N2V's
    contrast compression); the plain PSNR is reported too.

    ``data_range`` defaults to the target's ``max - min`` (over the whole target), used for
    both PSNR and SSIM and returned. PSNR is computed over all voxels; SSIM
    (``skimage.metrics.structural_similarity``, 7x7 Gaussian-free window, float64) per y-x
    plane and averaged over planes (t, z), so memory stays at one plane. Images: NGFF paths,
    NgffImages, ``(array, axes)`` pairs or 2D arrays; all must have the same shape after the
    channel is selected (the target may lack the channel axis).
    """
    from skimage.metrics import structural_similarity

    src = as_source(source, channel, None if not isinstance(source, (str, Path)) else str(source))
    res = as_source(restored, channel, None if not isinstance(restored, (str, Path)) else str(restored))
    tgt = as_source(target, None, None if not isinstance(target, (str, Path)) else str(target))
    if "c" in tgt.axes:
        tgt = as_source(tgt, src.channel)
    _check_pairs([src, res], [tgt, tgt])
    axes, shape = tgt.model_axes(), tgt.model_shape()
    frame_axes = [i for i, a in enumerate(axes) if a not in "yx"]
    planes = list(np.ndindex(*[shape[i] for i in frame_axes])) if frame_axes else [()]

    def region(idx):
        it = iter(idx)
        return tuple(slice(None) if a in "yx" else (lambda k: slice(k, k + 1))(next(it)) for a in axes)

    rule = "given"
    if data_range is None:
        rule = "target max - min"
        lo, hi = np.inf, -np.inf
        for idx in planes:
            t = tgt.read(region(idx))
            lo, hi = min(lo, float(t.min())), max(hi, float(t.max()))
        data_range = hi - lo
    data_range = float(data_range)
    if not data_range > 0:
        raise InputError(tgt.name, "the target is constant: PSNR/SSIM are undefined")
    sq = {"input": 0.0, "restored": 0.0}
    ssim = {"input": [], "restored": []}
    # sums for the least-squares affine fit a * image + b of each image to the target
    sums = {key: np.zeros(3) for key in sq}  # sum p, sum p^2, sum p*t
    t_sum = t_sq = 0.0
    n = 0
    for idx in planes:
        t = tgt.read(region(idx)).astype(np.float64).reshape(shape[-2:])
        t_sum, t_sq = t_sum + float(t.sum()), t_sq + float(np.square(t).sum())
        for key, s in (("input", src), ("restored", res)):
            p = s.read(region(idx)).astype(np.float64).reshape(shape[-2:])
            sq[key] += float(np.square(p - t).sum())
            sums[key] += (float(p.sum()), float(np.square(p).sum()), float((p * t).sum()))
            ssim[key].append(structural_similarity(t, p, data_range=data_range))
        n += t.size
    out = {"data_range": data_range, "data_range_rule": rule,
           "n_voxels": n}

    def psnr(mse):
        return float("inf") if mse <= 0 else float(10 * np.log10(data_range**2 / mse))

    t_mean, t_var = t_sum / n, t_sq / n - (t_sum / n) ** 2
    for key in ("input", "restored"):
        mse = sq[key] / n
        out[f"psnr_{key}"] = psnr(mse)
        out[f"ssim_{key}"] = float(np.mean(ssim[key]))
        out[f"mse_{key}"] = float(mse)
        p_sum, p_sq, pt = sums[key]
        p_var, cov = p_sq / n - (p_sum / n) ** 2, pt / n - (p_sum / n) * t_mean
        slope = cov / p_var if p_var > 0 else 0.0
        out[f"psnr_{key}_affine"] = psnr(max(0.0, t_var - slope * cov))
        out[f"affine_slope_{key}"] = float(slope)
    out["psnr_gain"] = out["psnr_restored"] - out["psnr_input"]
    out["psnr_gain_affine"] = out["psnr_restored_affine"] - out["psnr_input_affine"]
    return out


# ---------------------------------------------------------------------------------------
# Command line.


COMMANDS = {"train-n2v": "train_n2v", "train-care": "train_care", "predict": "predict", "metrics": "metrics",
            "check-model": "check_model"}


def _run(command: str, args: dict) -> dict:
    args = dict(args)
    if command == "train-n2v":
        return train_n2v(args.pop("images"), args.pop("out_dir"), **args)
    if command == "train-care":
        return train_care(args.pop("source"), args.pop("target"), args.pop("out_dir"), **args)
    if command == "predict":
        return predict(args.pop("model_dir"), args.pop("kind", None), args.pop("in_path"), args.pop("out_path"), **args)
    if command == "metrics":
        out = args.pop("out", None)
        result = restoration_metrics(args.pop("source"), args.pop("restored"), args.pop("target"), **args)
        if out:
            from snakescope.io.atomic import write_json

            write_json(out, result)
        return result
    if command == "check-model":
        info = check_model(args.pop("model_dir"), args.pop("kind", None))
        return {k: v for k, v in info.items() if k != "config"}
    raise ValueError(command)


def main(argv=None) -> int:
    """``python -m snakescope.restore COMMAND JSON`` (JSON text, or ``@file.json``).

    Commands: train-n2v, train-care, predict, metrics, check-model. The JSON object holds the
    function's arguments (see :func:`train_n2v`, :func:`train_care`, :func:`predict`,
    :func:`restoration_metrics`). Prints the result as one JSON line; a problem with the
    user's input exits 1 with one line naming the file and the problem.
    """
    import argparse

    from snakescope.pipeline.cli import setup_logging

    p = argparse.ArgumentParser(prog="python -m snakescope.restore", description=main.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=sorted(COMMANDS))
    p.add_argument("args", help="JSON object of arguments, or @path to a JSON file")
    p.add_argument("--log", help="log file (also echoed to stderr)")
    a = p.parse_args(argv)
    setup_logging(a.log)
    text = Path(a.args[1:]).read_text() if a.args.startswith("@") else a.args
    try:
        args = json.loads(text)
    except ValueError as exc:
        print(f"arguments: not valid JSON ({exc})", file=sys.stderr)
        return 2
    try:
        result = _run(a.command, args)
    except InputError as exc:
        logging.getLogger("snakescope").error("%s", exc)
        return 1
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
