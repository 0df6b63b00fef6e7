"""U-Net prediction: class probabilities block by block (the dense engine,
:mod:`snakescope.blockwise.dense`), instances by seeded watershed, the class map, and the
segmentation of NGFF images into NGFF labels with the class map beside them.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from snakescope.blockwise.dense import frame_block_shape, predict_blockwise
from snakescope.errors import InputError
from snakescope.io import ngff
from snakescope.io.frames import spatial_axes
from snakescope.io.labels import CLASS_MAP, write_label_image
from snakescope.segmentation.rescale import plan_rescale
from snakescope.segmentation.unet.network import UNet, as_unet, divisor, per_axis, receptive_field_radius, round_up
from snakescope.segmentation.unet.targets import CLASS_NAMES
from snakescope.settings import Segmentation

__all__ = ["MAX_BLOCK", "predict_instances", "predict_probabilities", "predict_unet", "probabilities_to_classes",
           "probabilities_to_instances"]

#: Blocks of :func:`predict_probabilities` with ``block_shape="auto"``.
DEFAULT_BLOCK = {2: (1024, 1024), 3: (64, 256, 256)}
#: The largest y/x block of :func:`predict_unet`, whatever ``segmentation.block_size`` says:
#: it bounds the U-Net's activations (a StarDist block may be larger).
MAX_BLOCK = 1024


def _to_numpy(tensor) -> np.ndarray:
    import keras

    return np.asarray(keras.ops.convert_to_numpy(tensor), dtype=np.float32)



def predict_probabilities(model, image, block_shape="auto", halo=None, *, out=None, where="image") -> np.ndarray:
    """Class probabilities (``image.shape + (3,)``, float32), computed block by block.

    ``block_shape``: core size per block ("auto": up to 1024 px in 2D, 64x256x256 in 3D;
    None: the whole image at once), rounded up to a multiple of pool**depth. ``halo``:
    context added on each side (default: the receptive field radius), rounded up the same
    way. Blocks start on the pooling grid and the image is zero-padded to that grid at its
    end, virtually (:func:`snakescope.blockwise.dense.predict_blockwise`), so each block
    sees exactly what whole-image prediction sees within the receptive field, and stitching
    the cores reproduces it. ``image`` and ``out`` may be Zarr arrays or frame views: only a
    few blocks (plus halo) are in memory at a time.
    """
    unet = as_unet(model)
    arch = unet.architecture
    ndim = unet.ndim
    shape = tuple(int(s) for s in image.shape)
    if len(shape) != ndim:
        raise InputError(where, f"a {ndim}D U-Net needs a {ndim}D frame, got shape {shape}")
    div = divisor(arch)
    if block_shape is None:
        block = tuple(round_up(n, d) for n, d in zip(shape, div))
    else:
        wanted = DEFAULT_BLOCK[ndim] if isinstance(block_shape, str) and block_shape == "auto" else per_axis(block_shape, ndim)
        block = tuple(max(d, round_up(min(int(b), n), d)) for b, n, d in zip(wanted, shape, div))
    halo = receptive_field_radius(arch) if halo is None else per_axis(halo, ndim)
    halo = tuple(round_up(h, d) for h, d in zip(halo, div))
    n_classes = int(arch["n_classes"])
    if out is None:
        out = np.zeros(shape + (n_classes,), np.float32)
    elif tuple(out.shape) != shape + (n_classes,):
        raise InputError(where, f"output shape {tuple(out.shape)} does not fit image shape {shape} + ({n_classes},)")

    def read(region):
        return np.asarray(image[region], dtype=np.float32)

    def predict(tile):
        return _to_numpy(unet.keras_model(tile[None, ..., None], training=False))[0]

    def write(core, prob):
        out[core] = prob

    predict_blockwise(read, write, shape, "zyx"[-ndim:], block, halo, predict, align=div, pad="end",
                      pad_mode="constant")
    return out


def _check_probabilities(prob) -> None:
    """Class probabilities of a 2D/3D frame: 3 classes, or 2K + 1 for K cell types."""
    n = prob.shape[-1] if prob.ndim else 0
    if prob.ndim not in (3, 4) or n < len(CLASS_NAMES) or n % 2 != 1:
        raise InputError("probabilities", f"expected shape (..., {len(CLASS_NAMES)}) (or (..., 2K + 1) for K cell "
                                          f"types) for a 2D/3D frame, got {prob.shape}")


def probabilities_to_instances(prob, body_threshold: float = 0.5, foreground_threshold: float = 0.5, *,
                               min_seed_size: int = 3, min_size: int = 8, seed_erosion: int = 0,
                               connectivity: int = 1) -> np.ndarray:
    """Instance labels (int32) from class probabilities ``(..., 3)`` by seeded watershed.

    Seeds are the connected components of ``body > body_threshold`` (eroded
    ``seed_erosion`` times, smaller than ``min_seed_size`` dropped); they grow by watershed
    on ``-body`` within the foreground ``1 - background > foreground_threshold``; objects
    smaller than ``min_size`` are removed and ids renumbered 1..n. For a typed U-Net
    (``(..., 2K + 1)``) the body is the sum of the types' bodies: instances do not depend on
    which type a pixel is given.
    """
    from skimage.segmentation import relabel_sequential, watershed

    prob = np.asarray(prob, dtype=np.float32)
    _check_probabilities(prob)
    for name, value in (("body_threshold", body_threshold), ("foreground_threshold", foreground_threshold)):
        if not 0 <= float(value) <= 1:
            raise InputError(f"unet.{name}", f"{value} is out of range [0, 1]")
    body = prob[..., 2] if prob.shape[-1] == len(CLASS_NAMES) else prob[..., 2::2].sum(-1)
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
    """The class map (uint8: 0 background, 1 contour, 2 body; per type for a typed U-Net) of
    probabilities ``(..., n_classes)``: the most probable class of each pixel (a tie goes to
    the lower class, as ``argmax``).

    Computed in bands along the first axis, so the temporaries stay small next to the
    probabilities themselves (12 bytes per pixel against the map's 1).
    """
    prob = np.asarray(prob)
    _check_probabilities(prob)
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
    unet = as_unet(model)
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




def predict_unet(model: UNet, image_path, out_path, settings: Segmentation, *, channel: int,
                 name: str = "segmentation") -> dict:
    """U-Net + seeded watershed instances for every frame, into NGFF labels.

    ``model``: from :func:`load_unet`. ``settings``: the ``segmentation`` section (its
    ``block_size``, at most :data:`MAX_BLOCK`). The network's class map (the most probable
    class per pixel, uint8: 0 background, 1 contour, 2 body; a typed U-Net's per type, the
    types named in the group's summary) goes with them, as the labels image ``classes`` of
    the same folder (:func:`snakescope.io.labels.read_class_map`), from the same
    probabilities (one frame at a time, computed block by block). With
    ``settings.rescale`` auto the frames are segmented on the model's pixel grid and both
    label images put back on the image's (:mod:`snakescope.segmentation.rescale`).
    """
    image = ngff.read_image(image_path)
    if len(spatial_axes(image.axes)) != model.ndim:
        raise InputError(image_path, f"a {model.ndim}D model cannot segment frames with axes {image.axes}")
    block = frame_block_shape(min(settings.block_size, MAX_BLOCK), model.ndim)
    rescaling = plan_rescale(model.model_dir, image_path, settings.rescale)

    def segment_frame(frame, out, classes_out):
        labels = model.predict_instances(frame, block_shape=block, where=str(image_path), classes_out=classes_out)
        out[...] = labels.astype(np.uint32)
        return labels.max()

    return write_label_image(image_path, out_path, rescaling.wrap(segment_frame), channel=channel, name=name,
                             class_names=model.class_names,
                             summary={"method": "unet", "model": str(model.model_dir),
                                      "postprocessing": model.postprocessing, "class_map": CLASS_MAP,
                                      "classes": list(model.class_names),
                                      **({"types": model.types} if model.types else {}),
                                      "rescale": rescaling.record()})
