"""3-class U-Net segmentation (background / contour / body) with seeded-watershed instances.

The classic alternative to StarDist for objects that are not star-convex: a U-Net predicts,
for every pixel, the probability of background, of the inner contour of an object and of
its body; instances are the connected bodies, grown back over the contour by a watershed.
Touching objects are separated because each keeps its own one-pixel inner contour.

* :func:`labels_to_classes` derives the three-class targets from dense instance labels
  (2D or 3D, any integer dtype, as napari saves them).
* :func:`train_unet` trains a small Keras U-Net (csbdeep's ``custom_unet``, 2D or 3D) on
  random augmented patches with a class-weighted cross-entropy (the thin contour class is
  rare), early stopping on the validation loss, and writes a model folder (see
  :func:`train_unet` for its files) from which :func:`load_unet` rebuilds the network.
* :func:`predict_probabilities` runs the network block by block with a halo at least as
  wide as the receptive field on a grid aligned to the pooling, so the stitched result
  equals whole-image prediction (up to float round-off) with bounded memory; image and
  output may be Zarr arrays (or :class:`snakescope.frames.FrameView`).
* :func:`probabilities_to_instances` and :func:`predict_instances` turn probabilities into
  instance labels; :func:`probabilities_to_classes` into the class map (the most probable
  class per pixel), which :func:`class_confusion` scores against ground-truth labels.

TensorFlow/Keras are imported inside functions only, so label and post-processing helpers
stay cheap to import.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from snakescope.io.atomic import atomic_path, write_json
from snakescope.errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "CLASS_NAMES",
    "UNet",
    "architecture_for",
    "build_keras_model",
    "check_pair",
    "class_confusion",
    "class_weights_from_frequencies",
    "labels_to_classes",
    "load_unet",
    "normalize_percentile",
    "predict_instances",
    "predict_probabilities",
    "probabilities_to_classes",
    "probabilities_to_instances",
    "read_pairs",
    "receptive_field_radius",
    "resolve_split",
    "train_unet",
]

CLASS_NAMES = ("background", "contour", "body")
FORMAT = "snakescope-unet/1"
BEST_WEIGHTS = "best.weights.h5"
LAST_WEIGHTS = "last.weights.h5"

DEFAULT_ARCHITECTURE = {
    "n_depth": 2,
    "n_filter_base": 16,
    "kernel_size": 3,
    "pool_size": 2,
    "n_conv_per_depth": 2,
    "batch_norm": False,
    "dropout": 0.0,
}
DEFAULT_POSTPROCESSING = {
    "body_threshold": 0.5,
    "foreground_threshold": 0.5,
    "min_seed_size": 3,
    "min_size": 8,
    "seed_erosion": 0,
}
DEFAULT_AUGMENT = {
    "flip": True,
    "rot90": True,
    "intensity_scale": [0.8, 1.25],
    "intensity_shift": [-0.1, 0.1],
    "noise_std": 0.05,
}
#: Grid searched on the validation images for the post-processing thresholds.
THRESHOLD_GRID = (0.3, 0.4, 0.5, 0.6, 0.7)
DEFAULT_BLOCK = {2: (1024, 1024), 3: (64, 256, 256)}


# ---------------------------------------------------------------------------------------
# Targets


def check_labels(labels, where: str | Path = "labels") -> np.ndarray:
    """Dense instance labels as an integer array (0 = background), or InputError."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "ui":
        raise InputError(where, f"label image has dtype {labels.dtype}; expected integer instance labels "
                                "(0 = background, one id per object), e.g. a napari Labels layer")
    if labels.ndim not in (2, 3):
        raise InputError(where, f"label image has {labels.ndim} dimensions (shape {labels.shape}); expected a 2D or 3D frame")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise InputError(where, "label image has negative values; expected instance ids >= 0")
    return labels


def check_pair(where: str | Path, image, labels, *, allow_empty: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Check one training pair: same shape, integer labels, finite image, some objects."""
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.dtype.kind not in "uif":
        raise InputError(where, f"image has dtype {image.dtype}; expected a numeric intensity image")
    if tuple(labels.shape) != tuple(image.shape):
        raise InputError(where, f"label image shape {tuple(labels.shape)} differs from image shape {tuple(image.shape)}")
    labels = check_labels(labels, where)
    image = image.astype(np.float32, copy=False)
    if not np.all(np.isfinite(image)):
        raise InputError(where, "image has NaN or infinite values")
    if not allow_empty and not np.any(labels):
        raise InputError(where, "no objects in the training labels (the label image is all 0)")
    return image, labels


def labels_to_classes(labels, where: str | Path = "labels") -> np.ndarray:
    """Three-class targets (uint8: 0 background, 1 contour, 2 body) from instance labels.

    The contour is the inner boundary of each object (pixels of the object that touch
    another id or the background, 4- / 6-connectivity), so two touching objects are split
    by a two-pixel line; body is the rest of each object. An object too thin to have a
    body keeps its innermost pixel as body, so that every object yields a watershed seed.
    """
    from skimage.segmentation import find_boundaries

    labels = check_labels(labels, where)
    fg = labels > 0
    contour = find_boundaries(labels, connectivity=1, mode="inner") & fg
    classes = np.zeros(labels.shape, np.uint8)
    classes[fg] = 2
    classes[contour] = 1
    missing = np.setdiff1d(np.unique(labels[fg]), np.unique(labels[classes == 2]))
    if missing.size:
        slices = ndimage.find_objects(labels)
        for obj in missing:
            sl = slices[int(obj) - 1]
            mask = labels[sl] == obj
            dist = ndimage.distance_transform_edt(np.pad(mask, 1))[(slice(1, -1),) * mask.ndim]
            idx = np.unravel_index(np.argmax(np.where(mask, dist, -1)), mask.shape)
            classes[sl][idx] = 2
    return classes


def class_weights_from_frequencies(frequencies) -> list[float]:
    """Median-frequency balancing: weight_c = median(f) / f_c (rare contour class weighs more)."""
    f = np.asarray(frequencies, dtype=np.float64)
    present = f > 0
    weights = np.ones_like(f)  # a class absent from training never enters the loss
    weights[present] = np.median(f[present]) / f[present]
    return [float(w) for w in weights]


def normalize_percentile(image, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """(x - p_low) / (p_high - p_low) as float32 (for raw images outside the workflow)."""
    x = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(x, [low, high])
    return ((x - lo) / max(float(hi - lo), 1e-6)).astype(np.float32)


def read_pairs(image_files: Sequence[str | Path], label_files: Sequence[str | Path], *,
               normalize: tuple[float, float] | None = (1.0, 99.8), allow_empty: bool = False
               ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{image file stem: (image float32, labels)} from TIFF files, checked pair by pair.

    ``normalize`` = (low, high) percentiles applied per image (None: images are used as
    they are, e.g. already normalized by the workflow). Errors name the label file.
    """
    import tifffile

    if len(image_files) != len(label_files):
        raise InputError("training files", f"{len(image_files)} images but {len(label_files)} label images")
    pairs = {}
    for image_file, label_file in zip(image_files, label_files):
        for f in (image_file, label_file):
            if not Path(f).exists():
                raise InputError(f, "file not found")
        image, labels = tifffile.imread(image_file), tifffile.imread(label_file)
        image, labels = check_pair(label_file, image, labels, allow_empty=allow_empty)
        if normalize is not None:
            image = normalize_percentile(image, *normalize)
        name = Path(image_file).name.split(".")[0]
        if name in pairs:
            raise InputError(image_file, f"two training images share the name {name!r}")
        pairs[name] = (image, labels)
    return pairs


# ---------------------------------------------------------------------------------------
# Network


def _per_axis(value, ndim: int) -> tuple[int, ...]:
    if np.isscalar(value):
        return (int(value),) * ndim
    value = tuple(int(v) for v in value)
    if len(value) != ndim:
        raise InputError("unet", f"{value} has {len(value)} entries for a {ndim}D network")
    return value


def architecture_for(ndim: int, architecture: Mapping | None = None) -> dict:
    """The full architecture (defaults filled in, sizes per axis) of a ``ndim``-D U-Net."""
    arch = {**DEFAULT_ARCHITECTURE, **(architecture or {})}
    unknown = set(arch) - set(DEFAULT_ARCHITECTURE)
    if unknown:
        raise InputError("unet", f"unknown architecture settings {sorted(unknown)}")
    arch["kernel_size"] = list(_per_axis(arch["kernel_size"], ndim))
    arch["pool_size"] = list(_per_axis(arch["pool_size"], ndim))
    if any(k % 2 == 0 for k in arch["kernel_size"]):
        raise InputError("unet.kernel_size", f"{arch['kernel_size']}: kernel sizes must be odd")
    arch["ndim"] = ndim
    arch["n_channel_in"] = 1
    arch["n_classes"] = len(CLASS_NAMES)
    return arch


def build_keras_model(architecture: Mapping):
    """A csbdeep U-Net with a softmax over the three classes; input (None, ..., 1)."""
    from csbdeep.internals.nets import custom_unet

    ndim = int(architecture["ndim"])
    return custom_unet((None,) * ndim + (1,), "softmax",
                       n_depth=int(architecture["n_depth"]),
                       n_filter_base=int(architecture["n_filter_base"]),
                       kernel_size=tuple(architecture["kernel_size"]),
                       n_conv_per_depth=int(architecture["n_conv_per_depth"]),
                       batch_norm=bool(architecture["batch_norm"]),
                       dropout=float(architecture["dropout"]),
                       pool_size=tuple(architecture["pool_size"]),
                       n_channel_out=int(architecture["n_classes"]))


def divisor(architecture: Mapping) -> tuple[int, ...]:
    """Sizes must be multiples of pool**depth per axis (and blocks start on that grid)."""
    return tuple(int(p) ** int(architecture["n_depth"]) for p in architecture["pool_size"])


def receptive_field_radius(architecture: Mapping) -> tuple[int, ...]:
    """An upper bound, per axis, on how far (pixels) an output pixel sees into the input.

    Counts every convolution (k // 2 at its level's scale), max pooling (p - 1 at the
    finer scale) and nearest upsampling (one coarse pixel) of csbdeep's ``unet_block``.
    """
    radii = []
    depth, n_conv = int(architecture["n_depth"]), int(architecture["n_conv_per_depth"])
    for k, p in zip(architecture["kernel_size"], architecture["pool_size"]):
        r, scale = 0, 1
        for _ in range(depth):
            r += n_conv * (k // 2) * scale + (p - 1) * scale
            scale *= p
        r += n_conv * (k // 2) * scale
        for _ in range(depth):
            r += scale
            scale //= p
            r += n_conv * (k // 2) * scale
        radii.append(r)
    return tuple(radii)


def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def _weighted_loss(weights):
    import keras

    w = keras.ops.convert_to_tensor(np.asarray(weights, dtype=np.float32))

    def weighted_categorical_crossentropy(y_true, y_pred):
        y = keras.ops.cast(keras.ops.squeeze(y_true, axis=-1), "int32")
        ce = keras.losses.sparse_categorical_crossentropy(y, y_pred)
        return ce * keras.ops.take(w, y)

    return weighted_categorical_crossentropy


class UNet:
    """A loaded U-Net: its ``config.json`` and the Keras model with weights."""

    def __init__(self, config: dict, keras_model, model_dir: Path | None = None):
        self.config = config
        self.keras_model = keras_model
        self.model_dir = model_dir

    @property
    def architecture(self) -> dict:
        return self.config["architecture"]

    @property
    def ndim(self) -> int:
        return int(self.architecture["ndim"])

    @property
    def postprocessing(self) -> dict:
        return {**DEFAULT_POSTPROCESSING, **self.config.get("postprocessing", {})}

    def predict_probabilities(self, image, block_shape="auto", halo=None, out=None, where="image"):
        return predict_probabilities(self, image, block_shape, halo, out=out, where=where)

    def predict_instances(self, image, block_shape="auto", halo=None, where="image", classes_out=None,
                          **postprocessing):
        return predict_instances(self, image, block_shape, halo, where=where, classes_out=classes_out,
                                 **postprocessing)


def load_unet(model_dir: str | Path, weights: str = "best") -> UNet:
    """Rebuild the network from ``config.json`` and load ``best`` (or ``last``) weights."""
    model_dir = Path(model_dir)
    config_file = model_dir / "config.json"
    if not config_file.exists():
        raise InputError(model_dir, "not a U-Net model folder (config.json missing)")
    config = json.loads(config_file.read_text())
    if config.get("format") != FORMAT:
        raise InputError(config_file, f"not a snakescope U-Net config (format {config.get('format')!r}, expected {FORMAT!r})")
    names = {"best": BEST_WEIGHTS, "last": LAST_WEIGHTS}
    if weights not in names:
        raise InputError(model_dir, f"weights must be 'best' or 'last', not {weights!r}")
    weight_file = model_dir / names[weights]
    if not weight_file.exists():
        raise InputError(weight_file, "weights file missing")
    model = build_keras_model(config["architecture"])
    try:
        model.load_weights(str(weight_file))
    except Exception as exc:  # noqa: BLE001 - report which file does not fit
        raise InputError(weight_file, f"weights do not fit the architecture in config.json ({type(exc).__name__}: {exc})") from None
    return UNet(config, model, model_dir)


def _as_unet(model) -> UNet:
    if isinstance(model, UNet):
        return model
    if isinstance(model, (str, Path)):
        return load_unet(model)
    raise TypeError(f"expected a UNet or a model folder, got {type(model).__name__}")


# ---------------------------------------------------------------------------------------
# Prediction


def _to_numpy(tensor) -> np.ndarray:
    import keras

    return np.asarray(keras.ops.convert_to_numpy(tensor), dtype=np.float32)


def _block_grid(shape, block, halo, div):
    """(core slices, tile start, tile end in the zero-padded image) for every block."""
    padded = [_round_up(n, d) for n, d in zip(shape, div)]
    ranges = [range(0, n, b) for n, b in zip(shape, block)]
    for starts in np.ndindex(*[len(r) for r in ranges]):
        core, lo, hi = [], [], []
        for ax, i in enumerate(starts):
            s = ranges[ax][i]
            e = min(s + block[ax], shape[ax])
            core.append(slice(s, e))
            lo.append(max(0, s - halo[ax]))
            hi.append(min(padded[ax], _round_up(e, div[ax]) + halo[ax]))
        yield tuple(core), tuple(lo), tuple(hi)


def predict_probabilities(model, image, block_shape="auto", halo=None, *, out=None, where="image") -> np.ndarray:
    """Class probabilities (``image.shape + (3,)``, float32), computed block by block.

    ``block_shape``: core size per block ("auto": up to 1024 px in 2D, 64x256x256 in 3D;
    None: the whole image at once), rounded up to a multiple of pool**depth. ``halo``:
    context added on each side (default: the receptive field radius), rounded up the same
    way. Blocks start on the pooling grid and the image is zero-padded to that grid as a
    whole, so each block sees exactly what whole-image prediction sees within the
    receptive field, and stitching the cores reproduces it. ``image`` and ``out`` may be
    Zarr arrays or frame views: only one block (plus halo) is in memory at a time.
    """
    unet = _as_unet(model)
    arch = unet.architecture
    ndim = unet.ndim
    shape = tuple(int(s) for s in image.shape)
    if len(shape) != ndim:
        raise InputError(where, f"a {ndim}D U-Net needs a {ndim}D frame, got shape {shape}")
    div = divisor(arch)
    if block_shape is None:
        block = tuple(_round_up(n, d) for n, d in zip(shape, div))
    else:
        wanted = DEFAULT_BLOCK[ndim] if isinstance(block_shape, str) and block_shape == "auto" else _per_axis(block_shape, ndim)
        block = tuple(max(d, _round_up(min(int(b), n), d)) for b, n, d in zip(wanted, shape, div))
    halo = receptive_field_radius(arch) if halo is None else _per_axis(halo, ndim)
    halo = tuple(_round_up(h, d) for h, d in zip(halo, div))
    n_classes = int(arch["n_classes"])
    if out is None:
        out = np.zeros(shape + (n_classes,), np.float32)
    elif tuple(out.shape) != shape + (n_classes,):
        raise InputError(where, f"output shape {tuple(out.shape)} does not fit image shape {shape} + ({n_classes},)")
    for core, lo, hi in _block_grid(shape, block, halo, div):
        read = tuple(slice(a, min(b, n)) for a, b, n in zip(lo, hi, shape))
        data = np.asarray(image[read], dtype=np.float32)
        tile = np.zeros(tuple(b - a for a, b in zip(lo, hi)), np.float32)
        tile[tuple(slice(0, s) for s in data.shape)] = data
        prob = _to_numpy(unet.keras_model(tile[None, ..., None], training=False))[0]
        crop = tuple(slice(c.start - a, c.stop - a) for c, a in zip(core, lo))
        out[core] = prob[crop]
    return out


def probabilities_to_instances(prob, body_threshold: float = 0.5, foreground_threshold: float = 0.5, *,
                               min_seed_size: int = 3, min_size: int = 8, seed_erosion: int = 0,
                               connectivity: int = 1) -> np.ndarray:
    """Instance labels (int32) from class probabilities ``(..., 3)`` by seeded watershed.

    Seeds are the connected components of ``body > body_threshold`` (eroded
    ``seed_erosion`` times, smaller than ``min_seed_size`` dropped); they grow by watershed
    on ``-body`` within the foreground ``1 - background > foreground_threshold``; objects
    smaller than ``min_size`` are removed and ids renumbered 1..n.
    """
    from skimage.segmentation import relabel_sequential, watershed

    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim not in (3, 4) or prob.shape[-1] != len(CLASS_NAMES):
        raise InputError("probabilities", f"expected shape (..., {len(CLASS_NAMES)}) for a 2D/3D frame, got {prob.shape}")
    for name, value in (("body_threshold", body_threshold), ("foreground_threshold", foreground_threshold)):
        if not 0 <= float(value) <= 1:
            raise InputError(f"unet.{name}", f"{value} is out of range [0, 1]")
    body = prob[..., 2]
    structure = ndimage.generate_binary_structure(body.ndim, connectivity)
    seeds_mask = body > body_threshold
    if seed_erosion:
        seeds_mask = ndimage.binary_erosion(seeds_mask, structure, iterations=int(seed_erosion))
    seeds, n = ndimage.label(seeds_mask, structure)
    if n and min_seed_size > 1:
        sizes = np.bincount(seeds.ravel())
        keep = sizes >= min_seed_size
        keep[0] = False
        seeds = np.where(keep[seeds], seeds, 0)
    foreground = ((1.0 - prob[..., 0]) > foreground_threshold) | (seeds > 0)
    labels = watershed(-body, markers=seeds, mask=foreground, connectivity=connectivity)
    if min_size > 1 and labels.max() > 0:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        labels[small[labels]] = 0
    labels, _, _ = relabel_sequential(labels)
    return labels.astype(np.int32)


def probabilities_to_classes(prob, *, band_pixels: int = 1 << 22) -> np.ndarray:
    """The class map (uint8: 0 background, 1 contour, 2 body) of probabilities ``(..., 3)``:
    the most probable class of each pixel (a tie goes to the lower class, as ``argmax``).

    Computed in bands along the first axis, so the temporaries stay small next to the
    probabilities themselves (12 bytes per pixel against the map's 1).
    """
    prob = np.asarray(prob)
    if prob.ndim not in (3, 4) or prob.shape[-1] != len(CLASS_NAMES):
        raise InputError("probabilities", f"expected shape (..., {len(CLASS_NAMES)}) for a 2D/3D frame, got {prob.shape}")
    shape = prob.shape[:-1]
    classes = np.empty(shape, np.uint8)
    rows = max(1, int(band_pixels) // max(1, math.prod(shape[1:])))
    for start in range(0, shape[0], rows):
        classes[start:start + rows] = np.argmax(prob[start:start + rows], axis=-1)
    return classes


def _time_point(array, t: int):
    """A writable view of time point ``t`` of a NumPy array, Zarr array or frame view."""
    from snakescope.io.frames import FrameView

    if isinstance(array, np.ndarray):
        return array[t]
    if isinstance(array, FrameView):
        return FrameView(array.array, array.index + (t,))
    return FrameView(array, (t,))


def predict_instances(model, image, block_shape="auto", halo=None, *, where="image", classes_out=None,
                      **postprocessing) -> np.ndarray:
    """Instance labels (int32) for a 2D/3D frame, or for each frame of a stack with a leading
    time axis (``image.ndim == model ndim + 1``). ``model``: a folder or a :class:`UNet`.
    Post-processing settings default to those tuned on the validation set (config.json).
    ``classes_out`` (an array, Zarr array or frame view of the image's shape), when given,
    receives the class map of the same probabilities (:func:`probabilities_to_classes`)."""
    unet = _as_unet(model)
    settings = {**unet.postprocessing, **postprocessing}
    ndim = unet.ndim
    if image.ndim == ndim + 1:
        return np.stack([predict_instances(unet, image[t], block_shape, halo, where=f"{where} (time point {t})",
                                           classes_out=None if classes_out is None else _time_point(classes_out, t),
                                           **settings)
                         for t in range(image.shape[0])])
    prob = predict_probabilities(unet, image, block_shape, halo, where=where)
    if classes_out is not None:
        if tuple(classes_out.shape) != tuple(prob.shape[:-1]):
            raise InputError(where, f"class map shape {tuple(classes_out.shape)} does not fit the frame shape {prob.shape[:-1]}")
        classes_out[...] = probabilities_to_classes(prob)
    return probabilities_to_instances(prob, **settings)


def class_confusion(labels, class_map, *, time_axis: int | None = None, where: str | Path = "labels",
                    pred_where: str | Path = "class map") -> np.ndarray:
    """Pixel-class confusion matrix (int64 counts; rows true class, columns predicted, in
    :data:`CLASS_NAMES` order) of a predicted class map against instance ``labels``.

    The true classes come from :func:`labels_to_classes`, the training targets (same contour
    definition). With ``time_axis``, frame by frame (a contour never spans time points) and
    added up; ``class_map`` may then be a Zarr array, read one frame at a time. Shape, dtype
    and class-id problems raise :class:`InputError` naming ``where`` / ``pred_where``.
    """
    from snakescope.evaluation.classes import semantic_metrics

    if time_axis is not None:
        labels = np.moveaxis(np.asarray(labels), time_axis, 0)
        if time_axis != 0:  # a lazy (Zarr) map is read frame by frame only along its first axis
            class_map = np.moveaxis(np.asarray(class_map), time_axis, 0)
        if tuple(class_map.shape) != tuple(labels.shape):
            raise InputError(pred_where, f"class map shape {tuple(class_map.shape)} differs from ground-truth shape "
                                         f"{tuple(labels.shape)} of {where}")
        cm = np.zeros((len(CLASS_NAMES),) * 2, np.int64)
        for t in range(labels.shape[0]):
            cm += class_confusion(labels[t], class_map[t], where=f"{where} (time point {t})",
                                  pred_where=f"{pred_where} (time point {t})")
        return cm
    truth = labels_to_classes(labels, where)
    return semantic_metrics(truth, np.asarray(class_map), CLASS_NAMES, where=pred_where)["confusion_matrix"]


# ---------------------------------------------------------------------------------------
# Training


def _pad_to(array, shape):
    pad = [(0, max(0, s - n)) for n, s in zip(array.shape, shape)]
    return np.pad(array, pad) if any(p for _, p in pad) else array


def _augment(x, y, rng, settings):
    ndim = x.ndim
    if settings.get("rot90", True):
        yx = (ndim - 2, ndim - 1)
        k = int(rng.integers(4)) if x.shape[-1] == x.shape[-2] else 2 * int(rng.integers(2))
        x, y = np.rot90(x, k, axes=yx), np.rot90(y, k, axes=yx)
    if settings.get("flip", True):
        for axis in range(ndim):
            if rng.random() < 0.5:
                x, y = np.flip(x, axis), np.flip(y, axis)
    lo, hi = settings.get("intensity_scale") or (1.0, 1.0)
    a, b = settings.get("intensity_shift") or (0.0, 0.0)
    x = x * rng.uniform(lo, hi) + rng.uniform(a, b)
    noise = float(settings.get("noise_std") or 0.0)
    if noise > 0:
        x = x + rng.normal(0.0, rng.uniform(0.0, noise), x.shape)
    return x, y


def patch_batches(images, classes, patch_shape, batch_size, seed, *, foreground_fraction=0.5, augment=None):
    """Endless (X, Y) batches of random patches: X (B, *patch, 1) float32, Y (B, *patch, 1) uint8.

    Patches come from image i with probability proportional to its size; a fraction of them
    is centred on a random object pixel so sparse images still teach the object classes.
    Deterministic for a given seed.
    """
    rng = np.random.default_rng(seed)
    patch_shape = tuple(patch_shape)
    images = [_pad_to(x, patch_shape) for x in images]
    classes = [_pad_to(c, patch_shape) for c in classes]
    sizes = np.array([x.size for x in images], dtype=np.float64)
    p = sizes / sizes.sum()
    fg_index = []
    for c in classes:
        idx = np.flatnonzero(c.ravel())
        if idx.size > 20000:
            idx = np.sort(rng.choice(idx, 20000, replace=False))
        fg_index.append(idx)
    half = np.array(patch_shape) // 2
    while True:
        X = np.empty((batch_size,) + patch_shape + (1,), np.float32)
        Y = np.empty((batch_size,) + patch_shape + (1,), np.uint8)
        for b in range(batch_size):
            i = int(rng.choice(len(images), p=p))
            shape = np.array(images[i].shape)
            if fg_index[i].size and rng.random() < foreground_fraction:
                centre = np.array(np.unravel_index(int(rng.choice(fg_index[i])), shape))
                start = np.clip(centre - half, 0, shape - patch_shape)
            else:
                start = np.array([int(rng.integers(0, n - s + 1)) for n, s in zip(shape, patch_shape)])
            sl = tuple(slice(int(s), int(s) + n) for s, n in zip(start, patch_shape))
            x, y = images[i][sl], classes[i][sl]
            if augment:
                x, y = _augment(x, y, rng, augment)
            X[b, ..., 0] = x
            Y[b, ..., 0] = y
        yield X, Y


def _validation_patches(images, classes, patch_shape, max_patches, seed):
    """Non-overlapping patches covering the validation images (a seeded subset if many)."""
    xs, ys = [], []
    for x, c in zip(images, classes):
        x, c = _pad_to(x, patch_shape), _pad_to(c, patch_shape)
        starts = [sorted(set(list(range(0, n - p + 1, p)) + [n - p])) for n, p in zip(x.shape, patch_shape)]
        for corner in np.ndindex(*[len(s) for s in starts]):
            sl = tuple(slice(starts[a][i], starts[a][i] + patch_shape[a]) for a, i in enumerate(corner))
            xs.append(x[sl])
            ys.append(c[sl])
    if len(xs) > max_patches:
        keep = np.sort(np.random.default_rng(seed + 1).choice(len(xs), max_patches, replace=False))
        xs, ys = [xs[i] for i in keep], [ys[i] for i in keep]
    return np.stack(xs)[..., None].astype(np.float32), np.stack(ys)[..., None].astype(np.uint8)


def _as_pairs(pairs) -> dict:
    if isinstance(pairs, Mapping):
        return {str(k): v for k, v in pairs.items()}
    return {f"pair-{i}": tuple(v) for i, v in enumerate(pairs)}


def resolve_split(keys, out_dir: str | Path, save_dir: str | Path, *, split: Mapping | None = None,
                  split_file: str | Path | None = None, validation_fraction: float = 0.15,
                  seed: int = 42) -> tuple[list[str], list[str], list[str]]:
    """(train keys, validation keys, notes): the split by sample, made once and reused.

    Precedence: ``split`` given explicitly; else the one saved in ``split_file``; else the
    ``split.json`` of a previous training in ``out_dir``; else a new seeded split
    (:func:`snakescope.splits.make_or_load_split`: new samples are placed by a hash of
    their name, known ones never move). The split used is saved as
    ``<save_dir>/split.json`` (and in ``split_file`` when given).
    """
    from snakescope.training.splits import make_or_load_split

    keys = sorted(keys)
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    notes = []
    if split is not None:
        split = dict(split)
        write_json(save_dir / "split.json", split)
    elif split_file is not None:
        split = make_or_load_split(keys, split_file, validation_fraction, seed)
        shutil.copy(split_file, save_dir / "split.json")
    else:
        saved = Path(out_dir) / "split.json"
        if saved.exists() and saved.resolve() != (save_dir / "split.json").resolve():
            shutil.copy(saved, save_dir / "split.json")
        split = make_or_load_split(keys, save_dir / "split.json", validation_fraction, seed)
    train = [k for k in split.get("train", []) if k in keys]
    val = [k for k in split.get("validation", []) if k in keys]
    unknown = sorted(set(keys) - set(train) - set(val))
    if unknown:
        raise InputError(split_file or "split", f"samples {unknown} are in neither the training nor the validation set")
    if not train and val:
        train, val = val, []
    if not val:
        val = list(train)
        notes.append("only one labelled image: validation uses the training image")
    return train, val, notes


def _optimize_postprocessing(probs, labels, base: dict) -> tuple[dict, float]:
    """Body/foreground thresholds maximising the dataset F1 at IoU 0.5 on validation images."""
    from snakescope.evaluation.instances import instance_metrics, summarize

    best, best_f1 = dict(base), -1.0
    for bt in THRESHOLD_GRID:
        for ft in THRESHOLD_GRID:
            settings = {**base, "body_threshold": bt, "foreground_threshold": ft}
            per = {str(i): instance_metrics(gt, probabilities_to_instances(p, **settings), (0.5,))
                   for i, (p, gt) in enumerate(zip(probs, labels))}
            f1 = float(summarize(per)["f1"].iloc[0])
            if f1 > best_f1 + 1e-9:
                best, best_f1 = settings, f1
    return best, best_f1


def train_unet(pairs, out_dir: str | Path, *, split: dict | None = None, split_file: str | Path | None = None,
               validation_fraction: float = 0.15, architecture: Mapping | None = None,
               patch_shape=None, batch_size: int = 8, epochs: int = 50, steps_per_epoch: int = 50,
               learning_rate: float = 3e-4, patience: int = 10, class_weights="auto",
               augment: bool | Mapping = True, foreground_fraction: float = 0.5,
               max_validation_patches: int = 64, postprocessing: Mapping | None = None,
               optimize_thresholds: bool = True, allow_empty: bool = False, seed: int = 42,
               jit_compile: bool | str = "auto", verbose: int = 0) -> dict:
    """Train a 2D or 3D three-class U-Net on ``pairs`` and write its model folder.

    ``pairs``: {name: (normalized image, instance labels)} (or a list of pairs, named
    ``pair-<i>``), all 2D or all 3D. The train/validation split is by pair, made once and
    reused (see :func:`resolve_split`): ``split`` ({'train': [...], 'validation': [...]}) if
    given, else the one saved in ``split_file``, else ``<out_dir>/split.json`` of a previous
    training, else a new seeded one. Pass a ``split_file`` outside ``out_dir`` when a
    workflow manager deletes the folder before retraining. ``class_weights``: "auto"
    (median-frequency balancing of the training label frequencies) or three numbers
    (background, contour, body).

    The folder (written atomically) holds ``config.json`` (architecture, training settings,
    class weights, split, post-processing thresholds tuned on the validation images,
    validation scores), ``best.weights.h5`` (lowest validation loss), ``last.weights.h5``,
    ``split.json``, ``history.csv`` / ``history.png`` (per-epoch losses),
    ``validation_metrics.csv`` (instance matching at IoU 0.5..0.9 per validation image and
    summed) and ``confusion.csv`` / ``confusion.png`` (pixel classes on validation images).
    Returns the training summary that config.json also holds.
    """
    pairs = _as_pairs(pairs)
    if not pairs:
        raise InputError(out_dir, "no training pairs given")
    checked = {k: check_pair(k, x, y, allow_empty=allow_empty) for k, (x, y) in pairs.items()}
    ndims = {x.ndim for x, _ in checked.values()}
    if len(ndims) > 1:
        raise InputError(out_dir, "training images mix 2D and 3D frames; train one model per dimensionality")
    ndim = ndims.pop()
    arch = architecture_for(ndim, architecture)
    div = divisor(arch)
    if patch_shape is None:
        patch_shape = (128, 128) if ndim == 2 else (16, 64, 64)
    patch_shape = tuple(_round_up(p, d) for p, d in zip(_per_axis(patch_shape, ndim), div))
    augment_settings = None
    if augment:
        augment_settings = {**DEFAULT_AUGMENT, **(augment if isinstance(augment, Mapping) else {})}
    post = {**DEFAULT_POSTPROCESSING, **(postprocessing or {})}
    classes = {k: labels_to_classes(y, k) for k, (_, y) in checked.items()}

    import keras

    from snakescope.training.curves import plot_curves
    from snakescope.evaluation.classes import semantic_metrics, write_confusion
    from snakescope.evaluation.instances import instance_metrics, summarize, write_instance_metrics

    out_dir = Path(out_dir)
    keras.utils.set_random_seed(seed)
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()  # same seed, same weights on CPU
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        train_keys, val_keys, notes = resolve_split(checked, out_dir, tmp, split=split, split_file=split_file,
                                                    validation_fraction=validation_fraction, seed=seed)
        counts = np.bincount(np.concatenate([classes[k].ravel() for k in train_keys]), minlength=3)[:3]
        frequencies = (counts / counts.sum()).tolist()
        if isinstance(class_weights, str):
            if class_weights != "auto":
                raise InputError("unet.class_weights", f"{class_weights!r}: use 'auto' or three numbers")
            weights = class_weights_from_frequencies(frequencies)
        else:
            weights = [float(w) for w in class_weights]
            if len(weights) != 3 or min(weights) <= 0:
                raise InputError("unet.class_weights", f"{class_weights}: need three positive numbers (background, contour, body)")
        for note in notes:
            log.warning("%s", note)

        model = build_keras_model(arch)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=_weighted_loss(weights), jit_compile=jit_compile)
        batches = patch_batches([checked[k][0] for k in train_keys], [classes[k] for k in train_keys],
                                patch_shape, batch_size, seed, foreground_fraction=foreground_fraction,
                                augment=augment_settings)
        Xv, Yv = _validation_patches([checked[k][0] for k in val_keys], [classes[k] for k in val_keys],
                                     patch_shape, max_validation_patches, seed)
        callbacks = [
            keras.callbacks.CSVLogger(str(tmp / "history.csv")),
            keras.callbacks.ModelCheckpoint(str(tmp / BEST_WEIGHTS), monitor="val_loss", save_best_only=True,
                                            save_weights_only=True),
        ]
        if patience:
            callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=int(patience)))
            callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                                               patience=max(1, int(patience) // 2), verbose=0))
        start = time.perf_counter()
        model.fit(batches, steps_per_epoch=int(steps_per_epoch), epochs=int(epochs),
                  validation_data=(Xv, Yv), validation_batch_size=batch_size, callbacks=callbacks, verbose=verbose,
                  shuffle=False)
        seconds = time.perf_counter() - start
        model.save_weights(str(tmp / LAST_WEIGHTS))
        if not (tmp / BEST_WEIGHTS).exists():  # validation loss never finite
            shutil.copy(tmp / LAST_WEIGHTS, tmp / BEST_WEIGHTS)
        model.load_weights(str(tmp / BEST_WEIGHTS))
        plot_curves(tmp / "history.csv", tmp / "history.png", title=f"U-Net ({ndim}D) training")

        import pandas as pd

        history = pd.read_csv(tmp / "history.csv")
        best_row = history["val_loss"].idxmin() if history["val_loss"].notna().any() else len(history) - 1
        config = {
            "format": FORMAT,
            "classes": list(CLASS_NAMES),
            "architecture": arch,
            "training": {
                "patch_shape": list(patch_shape), "batch_size": batch_size, "epochs": epochs,
                "steps_per_epoch": steps_per_epoch, "learning_rate": learning_rate, "patience": patience,
                "class_frequencies": frequencies, "class_weights": weights, "augment": augment_settings,
                "foreground_fraction": foreground_fraction, "seed": seed, "train": train_keys,
                "validation": val_keys, "epochs_run": int(len(history)), "best_epoch": int(best_row) + 1,
                "best_val_loss": float(history["val_loss"].iloc[best_row]), "seconds": seconds, "notes": notes,
            },
            "postprocessing": post,
            "prediction": {"divisor": list(div), "halo": list(receptive_field_radius(arch))},
            "versions": _versions(),
        }
        unet = UNet(config, model, tmp)
        probs = [predict_probabilities(unet, checked[k][0], where=k) for k in val_keys]
        gts = [checked[k][1] for k in val_keys]
        if optimize_thresholds:
            post, f1 = _optimize_postprocessing(probs, gts, post)
            config["postprocessing"] = post
        per_sample = {k: instance_metrics(gt, probabilities_to_instances(p, **post), where=k)
                      for k, p, gt in zip(val_keys, probs, gts)}
        write_instance_metrics(per_sample, tmp / "validation_metrics.csv")
        total = summarize(per_sample)
        cm = semantic_metrics(np.concatenate([classes[k].ravel() for k in val_keys]),
                              np.concatenate([p.argmax(-1).ravel() for p in probs]), CLASS_NAMES)
        write_confusion(cm["confusion_matrix"], CLASS_NAMES, tmp / "confusion.csv", tmp / "confusion.png",
                        title="U-Net pixel classes (validation)")
        at = total.set_index("threshold")
        config["validation"] = {
            "f1@0.5": float(at.loc[0.5, "f1"]) if 0.5 in at.index else None,
            "accuracy@0.5": float(at.loc[0.5, "accuracy"]) if 0.5 in at.index else None,
            "mean_f1": float(total["f1"].mean()),
            "class_iou": {k: (None if np.isnan(v) else v) for k, v in cm["iou"].items()},
            "mean_class_iou": None if np.isnan(cm["mean_iou"]) else cm["mean_iou"],
        }
        write_json(tmp / "config.json", config)
    log.info("U-Net trained: %d epochs, validation F1@0.5 %.3f", config["training"]["epochs_run"],
             config["validation"]["f1@0.5"] or float("nan"))
    return config


def _versions() -> dict:
    import importlib.metadata as md

    versions = {}
    for pkg in ("tensorflow", "tensorflow-cpu", "keras", "csbdeep", "numpy", "scikit-image"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return versions
