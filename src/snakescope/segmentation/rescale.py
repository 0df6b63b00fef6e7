"""Pixel-size-aware prediction: the pixel size (and object size) a model was trained at, and
images predicted on the model's pixel grid with their labels put back on the image's grid.

A network learns objects at the size, in pixels, they had in its training images; at another
pixel size they are too large or too small for it and it fails quietly. So:

* every model the workflow trains records in its ``snakescope.json`` the pixel size of its
  training images (``training_scale``: µm per spatial axis, the NGFF scale, i.e. the
  sheet's ``voxel_size``) and, for the segmenters, the median equivalent diameter of the
  training objects in pixels and µm (:func:`training_scale`, :func:`record_training_scale`);
  a model whose data had no pixel size records a declared one and a note saying what it
  stands for (the shipped ``models/stardist_2d_nuclei``: DSB2018's grid declared 0.5 µm, so
  that its median nucleus, about 19 px, is a typical 9-10 µm nucleus);
* with ``segmentation.rescale: auto`` an image whose pixel size differs from the model's
  by more than :data:`TOLERANCE` on an axis is resampled to the model's pixel size on that
  axis (linear interpolation; time and channel untouched), segmented there, and the labels
  are mapped back to the image's grid by nearest neighbour (order 0, exactly the image's
  shape), so every output stays on the image's grid (:func:`plan_rescale`,
  :meth:`Rescaling.wrap`). ``off`` (or a model that records no pixel size, with a warning)
  segments the image as it is. What was applied goes into the labels' attributes
  (``snakescope.segmentation.rescale``), which the provenance record copies.

Blockwise and scattered prediction: the image is resampled lazily, not copied. The
segmenters get a view of each frame on the model's grid (:class:`ResampledFrame`) whose
reads interpolate only the source pixels a block needs, and write their labels through a
view of the output on the model's grid (:class:`NearestLabels`) that writes each image
pixel from the model pixel its centre falls in. Both are pointwise functions of the
model-grid position, so a block's values equal the whole frame's (no seams, no halo to
tune), memory stays bounded by a block, and the block engine, its ownership rule and the
scatter parts run unchanged on the model's grid: parts join into the unsplit result.
Block sizes, overlaps and context are then model-grid pixels.

Downsampling interpolates linearly without smoothing first (at a factor of 1/2 that is
exactly 2x2 averaging); an object smaller than an image pixel can vanish when the labels go
back to a coarser image grid. Restoration is not rescaled: N2V/CARE learn the noise of the
raw pixels, which resampling would change; their models record their pixel size only.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from snakescope.io import ngff
from snakescope.io.atomic import write_json
from snakescope.io.frames import spatial_axes
from snakescope.training.harness import METADATA

log = logging.getLogger(__name__)

__all__ = ["SCALE_KEY", "TOLERANCE", "NearestLabels", "ResampledFrame", "Rescaling", "applied_rescale",
           "equivalent_diameters", "image_pixel_size", "model_pixel_size", "plan_rescale", "record_training_scale",
           "resample_labels", "resample_linear", "training_scale"]

#: The key of a model's snakescope.json that records its training pixel and object size.
SCALE_KEY = "training_scale"
#: Relative pixel-size difference below which an axis is not resampled.
TOLERANCE = 0.05
#: The pixel size a sheet without ``voxel_size`` gives (settings.to_sample).
DEFAULT_PIXEL_SIZE = 1.0


# ---------------------------------------------------------------------------------------
# What a model was trained at


def equivalent_diameters(labels, pixel_size) -> tuple[np.ndarray, np.ndarray]:
    """Equivalent diameters of the objects of one label frame, in pixels and in µm: the
    diameter of the disc (2D) or ball (3D) of the object's area/volume (in µm from its
    physical volume, so anisotropic voxels count right)."""
    labels = np.asarray(labels)
    counts = np.bincount(labels.ravel().astype(np.int64))[1:] if labels.size else np.zeros(0, int)
    counts = counts[counts > 0].astype(float)
    voxel = float(np.prod(pixel_size))
    if labels.ndim == 3:
        return np.cbrt(6 * counts / np.pi), np.cbrt(6 * counts * voxel / np.pi)
    return np.sqrt(4 * counts / np.pi), np.sqrt(4 * counts * voxel / np.pi)


def training_scale(samples, axes: str) -> dict | None:
    """The ``training_scale`` record of a model trained on ``samples``: (pixel size per
    spatial axis as a dict or sequence in ``axes`` order, label frames or None) per sample.

    The pixel size is the samples' median per axis (a warning and a note when they differ by
    more than :data:`TOLERANCE`); with labels, the median equivalent diameter of all their
    objects in pixels and µm. None without samples."""
    samples = [(_as_sizes(size, axes), frames) for size, frames in samples]
    if not samples:
        return None
    sizes = np.array([size for size, _ in samples], float)
    median = np.median(sizes, axis=0)
    record = {"axes": axes, "unit": "micrometer", "pixel_size": {a: float(s) for a, s in zip(axes, median)},
              "n_samples": len(samples)}
    if np.any(np.abs(sizes / median - 1) > TOLERANCE):
        record["note"] = (f"the training samples' pixel sizes differ ({sorted({tuple(s) for s in sizes.tolist()})} µm "
                          f"along {axes}): the model records their median")
        log.warning("%s", record["note"])
    diameters_px, diameters_um = [], []
    for size, frames in samples:
        for frame in frames or ():
            px, um = equivalent_diameters(frame, size)
            diameters_px.append(px), diameters_um.append(um)
    if diameters_px:
        px, um = np.concatenate(diameters_px), np.concatenate(diameters_um)
        record.update(n_objects=int(px.size), median_diameter_px=float(np.median(px)) if px.size else None,
                      median_diameter_um=float(np.median(um)) if um.size else None)
    return record


def _as_sizes(size, axes: str) -> list[float]:
    if isinstance(size, dict):
        return [float(size[a]) for a in axes]
    return [float(s) for s in size]


def image_pixel_size(image_path) -> dict:
    """µm per spatial axis of an NGFF image (its scale)."""
    image = ngff.read_image(image_path)
    return {a: float(s) for a, s in zip(image.axes, image.scale) if a in "zyx"}


def record_training_scale(model_dir, samples, axes: str, note: str | None = None) -> dict | None:
    """Add :func:`training_scale` of ``samples`` (as there) to the snakescope.json of the model
    in ``model_dir``, e.g. for a model trained outside the workflow (``note``: where its pixel
    size comes from, when its data did not say it). Returns the record."""
    record = training_scale(samples, axes)
    if record is not None and note:
        record["note"] = f"{record['note']}; {note}" if record.get("note") else note
    path = Path(model_dir) / METADATA
    meta = json.loads(path.read_text()) if path.is_file() else {}
    meta[SCALE_KEY] = record
    write_json(path, meta)
    return record


def model_pixel_size(model_dir) -> dict | None:
    """µm per spatial axis the model in ``model_dir`` was trained at (its snakescope.json),
    or None when it does not say (a published or imported model)."""
    try:
        record = json.loads((Path(model_dir) / METADATA).read_text()).get(SCALE_KEY) or {}
    except (OSError, ValueError, AttributeError):
        return None
    size = record.get("pixel_size")
    return {a: float(v) for a, v in size.items()} if isinstance(size, dict) and size else None


# ---------------------------------------------------------------------------------------
# Resampling


@dataclass(frozen=True)
class _Axis:
    """One axis resampled by ``zoom`` (model-grid pixels per image pixel), pixel centres
    aligned: model pixel ``m`` sits at image coordinate ``(m + 0.5) / zoom - 0.5``."""

    size: int  # image pixels
    zoom: float
    model_size: int = field(init=False)
    lower: np.ndarray = field(init=False, repr=False)   # image pixel left of each model pixel
    upper: np.ndarray = field(init=False, repr=False)   # and right of it
    weight: np.ndarray = field(init=False, repr=False)  # of the upper one
    nearest: np.ndarray = field(init=False, repr=False)  # model pixel of each image pixel's centre

    def __post_init__(self):
        n, z = self.size, self.zoom
        m_size = max(1, math.floor(n * z + 0.5))  # the image's extent, rounded half up
        coordinate = np.clip((np.arange(m_size) + 0.5) / z - 0.5, 0, n - 1)
        lower = np.floor(coordinate).astype(np.int64)
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        set_("model_size", m_size)
        set_("lower", lower)
        set_("upper", np.minimum(lower + 1, n - 1))
        set_("weight", (coordinate - lower).astype(np.float32))
        set_("nearest", np.clip(np.floor((np.arange(n) + 0.5) * z).astype(np.int64), 0, m_size - 1))

    @property
    def identity(self) -> bool:
        return self.zoom == 1.0

    def image_range(self, start: int, stop: int) -> tuple[int, int]:
        """The image pixels whose centre falls in model pixels ``start:stop``."""
        if self.identity:
            return start, stop
        return (int(np.searchsorted(self.nearest, start, "left")), int(np.searchsorted(self.nearest, stop, "left")))


def _slices(region, shape) -> tuple[slice, ...]:
    """``region`` (slices, an Ellipsis, or a shorter tuple) as one step-1 slice per axis."""
    if not isinstance(region, tuple):
        region = (region,)
    if any(r is Ellipsis for r in region):
        k = region.index(Ellipsis)
        region = region[:k] + (slice(None),) * (len(shape) - len(region) + 1) + region[k + 1:]
    region = region + (slice(None),) * (len(shape) - len(region))
    out = []
    for r, n in zip(region, shape):
        if not isinstance(r, slice):
            raise TypeError(f"resampled views take slices, not {r!r}")
        start, stop, step = r.indices(n)
        if step != 1:
            raise TypeError("resampled views take step-1 slices")
        out.append(slice(start, max(start, stop)))
    return tuple(out)


class ResampledFrame:
    """A read-only view of ``frame`` (array, Zarr array or frame view) on the model's grid:
    ``view[region]`` reads only the source pixels the region needs and interpolates them
    linearly (float32), axis after axis, so any block equals that part of the whole."""

    def __init__(self, frame, zooms):
        self.frame = frame
        self.axes = [_Axis(int(n), float(z)) for n, z in zip(frame.shape, zooms)]
        self.shape = tuple(a.model_size for a in self.axes)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, region):
        region = _slices(region, self.shape)
        reads, picks = [], []
        for axis, r in zip(self.axes, region):
            if axis.identity:
                reads.append(r), picks.append(None)
                continue
            lo = int(axis.lower[r].min()) if r.stop > r.start else 0
            hi = int(axis.upper[r].max()) + 1 if r.stop > r.start else 0
            reads.append(slice(lo, hi)), picks.append((axis.lower[r] - lo, axis.upper[r] - lo, axis.weight[r]))
        data = np.asarray(self.frame[tuple(reads)], dtype=np.float32)
        for k, pick in enumerate(picks):
            if pick is None:
                continue
            lower, upper, weight = pick
            shape = [1] * data.ndim
            shape[k] = -1
            weight = weight.reshape(shape)
            data = np.take(data, lower, axis=k) * (1 - weight) + np.take(data, upper, axis=k) * weight
        return data

    def __array__(self, dtype=None, copy=None):
        data = self[...]
        return data if dtype is None else data.astype(dtype)


class NearestLabels:
    """A view of a label output ``out`` (on the image's grid) as if it were on the model's
    grid: writing a model-grid region sets each image pixel whose centre falls in it to the
    value of that model pixel (nearest neighbour); reading gives, per model pixel, the value
    of an image pixel mapped to it (what StarDist's block writer reads back). Model pixels no
    image pixel maps to are read from the nearest one after them and never written back."""

    def __init__(self, out, zooms):
        self.out = out
        self.axes = [_Axis(int(n), float(z)) for n, z in zip(out.shape, zooms)]
        self.shape = tuple(a.model_size for a in self.axes)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(out.dtype)

    def _image_region(self, region):
        region = _slices(region, self.shape)
        return region, tuple(slice(*axis.image_range(r.start, r.stop)) for axis, r in zip(self.axes, region))

    def __setitem__(self, region, value):
        region, target = self._image_region(region)
        if any(t.stop <= t.start for t in target):
            return
        value = np.broadcast_to(np.asarray(value), tuple(r.stop - r.start for r in region))
        for k, (axis, r, t) in enumerate(zip(self.axes, region, target)):
            if not axis.identity:
                value = np.take(value, axis.nearest[t] - r.start, axis=k)
        self.out[target] = np.ascontiguousarray(value, dtype=self.dtype)

    def __getitem__(self, region):
        region = _slices(region, self.shape)
        reads, picks = [], []
        for axis, r in zip(self.axes, region):
            if axis.identity:
                reads.append(r), picks.append(None)
                continue
            # the first image pixel mapped to each model pixel (or to the next one that has one)
            source = np.minimum(np.searchsorted(axis.nearest, np.arange(r.start, r.stop), "left"), axis.size - 1)
            lo = int(source.min()) if source.size else 0
            reads.append(slice(lo, int(source.max()) + 1 if source.size else 0)), picks.append(source - lo)
        data = np.asarray(self.out[tuple(reads)])
        for k, pick in enumerate(picks):
            if pick is not None:
                data = np.take(data, pick, axis=k)
        return data


def resample_linear(image, zooms) -> np.ndarray:
    """``image`` resampled by ``zooms`` (model-grid pixels per image pixel, per axis) with
    linear interpolation, pixel centres aligned: what the segmenters see with ``auto``."""
    return ResampledFrame(image, zooms)[...]


def resample_labels(labels, zooms, shape) -> np.ndarray:
    """``labels`` on the model's grid (an image of ``shape`` zoomed by ``zooms``) put back on
    the image's grid of ``shape`` by nearest neighbour, as :class:`NearestLabels` writes them."""
    out = np.zeros(shape, np.asarray(labels).dtype)
    view = NearestLabels(out, zooms)
    if view.shape != np.shape(labels):
        raise ValueError(f"labels of shape {np.shape(labels)} are not on the grid {view.shape} of {shape} "
                         f"zoomed by {tuple(zooms)}")
    view[...] = labels
    return out


# ---------------------------------------------------------------------------------------
# Prediction


@dataclass(frozen=True)
class Rescaling:
    """How one image is segmented: ``mode`` (auto/off), the zoom per spatial axis (model-grid
    pixels per image pixel; 1: that axis as it is), the pixel sizes compared, and a note."""

    mode: str
    axes: str
    zooms: tuple
    image_pixel_size: dict
    model_pixel_size: dict | None = None
    note: str | None = None

    @property
    def applied(self) -> bool:
        return any(z != 1.0 for z in self.zooms)

    def record(self) -> dict:
        """What the labels' attributes (and the provenance record) keep."""
        return {"mode": self.mode, "applied": self.applied, "axes": self.axes,
                "zoom": {a: z for a, z in zip(self.axes, self.zooms)},
                "image_pixel_size": self.image_pixel_size, "model_pixel_size": self.model_pixel_size,
                "tolerance": TOLERANCE, **({"note": self.note} if self.note else {})}

    def wrap(self, segment_frame):
        """``segment_frame(frame, out, *more_out)`` run on the model's grid: the frame seen
        through :class:`ResampledFrame`, every output through :class:`NearestLabels`."""
        if not self.applied:
            return segment_frame

        def on_model_grid(frame, out, *more):
            return segment_frame(ResampledFrame(frame, self.zooms), NearestLabels(out, self.zooms),
                                 *(NearestLabels(o, self.zooms) for o in more))

        return on_model_grid


def _off(mode: str) -> bool:
    return mode is False or str(mode).lower() == "off"  # YAML reads an unquoted off as false


def plan_rescale(model_dir, image_path, mode) -> Rescaling:
    """How to segment the NGFF image at ``image_path`` with the model in ``model_dir`` under
    ``segmentation.rescale`` = ``mode`` ("auto" or "off"): with auto, each spatial axis whose
    pixel size differs from the model's by more than :data:`TOLERANCE` is zoomed to it; a
    model that records no pixel size is used as it is, with a warning."""
    image = ngff.read_image(image_path)
    axes = spatial_axes(image.axes)
    pixel = {a: float(s) for a, s in zip(image.axes, image.scale) if a in axes}
    identity = (1.0,) * len(axes)
    if _off(mode):
        return Rescaling("off", axes, identity, pixel)
    model = model_pixel_size(model_dir)
    if model is None or any(a not in model for a in axes):
        note = (f"model {model_dir} records no training pixel size ({SCALE_KEY} in snakescope.json), so "
                f"{image_path} is segmented at its own pixel size {pixel} µm (no rescaling)")
        log.warning("%s", note)
        return Rescaling("auto", axes, identity, pixel, model, note)
    zooms = tuple(1.0 if abs(pixel[a] / model[a] - 1) <= TOLERANCE else pixel[a] / model[a] for a in axes)
    note = None
    image_unset = all(math.isclose(pixel[a], DEFAULT_PIXEL_SIZE) for a in axes)
    model_unset = all(math.isclose(model[a], DEFAULT_PIXEL_SIZE) for a in axes)
    if any(z != 1.0 for z in zooms) and (image_unset or model_unset):  # perhaps no voxel_size was given
        note = (f"pixel size {'of the image' if image_unset else 'the model was trained at'} is "
                f"{DEFAULT_PIXEL_SIZE:g} µm, what a samples sheet without voxel_size gives: if it is unknown, give "
                f"the voxel_size in the sheet or set segmentation.rescale: off")
        log.warning("%s: %s", image_path, note)
    if any(z != 1.0 for z in zooms):
        log.info("%s: pixel size %s µm, model's %s µm: segmented zoomed by %s along %s", image_path, pixel, model,
                 tuple(round(z, 4) for z in zooms), axes)
    return Rescaling("auto", axes, zooms, pixel, {a: model[a] for a in axes}, note)


def applied_rescale(labels_path) -> dict | None:
    """The rescaling a segmentation applied (:meth:`Rescaling.record`, kept in the labels'
    attributes), for the sample's provenance record; None without labels or record."""
    if not Path(labels_path).is_dir():  # segmentation off, or it failed
        return None
    try:
        return dict(ngff.open_group(labels_path, "r").attrs["snakescope"]["segmentation"]["rescale"])
    except (KeyError, TypeError):  # written before rescaling existed
        return None
