"""StarDist segmentation: training from dense labels, thresholds, blockwise prediction.

The model-facing parts follow the StarDist example notebooks (fill label holes, random
flips/rotations and intensity augmentation, optimize_thresholds on the validation set);
what this module adds is reading training pairs from the workflow's NGFF images, a split
saved once, early stopping, curves, atomic model folders, and prediction into NGFF labels
for frames of any size, block by block straight into the Zarr array (``predict_blocks``:
StarDist's block cover and object ownership with equal blocks; bench/segment_big.py).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from snakescope.io import ngff
from snakescope.io.atomic import atomic_path, write_json
from snakescope.errors import InputError
from snakescope.io.frames import FrameView, frames, spatial_axes
from snakescope.io.labels import CLASS_MAP, label_layout, read_labels, segment_frames, write_label_image

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# Training data


@dataclass
class TrainingSource:
    """One sample's image (normalized or restored NGFF) and its ground-truth labels file."""

    sample: str
    image: str
    labels: str
    channel: int = 0


def load_pairs(source: TrainingSource) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'sample:tN' or 'sample': (image frame float32, labels frame)} for one sample."""
    image = ngff.read_image(source.image)
    label_axes, label_shape, _ = label_layout(image)
    labels = read_labels(source.labels, label_shape, f"sample {source.sample} ({source.image})")
    pairs = {}
    for t, index in frames(image.axes, image.shape, source.channel):
        x = np.asarray(image.data[index], dtype=np.float32)
        y = labels[t] if "t" in label_axes else labels
        key = f"{source.sample}:t{t}" if t is not None else source.sample
        pairs[key] = (x, y)
    if not any(np.any(y > 0) for _, y in pairs.values()):
        raise InputError(source.labels, f"no objects in the training labels of sample {source.sample}")
    return pairs


def augmenter(seed: int, ndim: int):
    """Flips, 90-degree rotations (in the YX plane), intensity scale/shift and noise."""
    rng = np.random.default_rng(seed)

    def augment(x, y):
        yx = (x.ndim - 2, x.ndim - 1)
        k = int(rng.integers(4))
        x, y = np.rot90(x, k, axes=yx), np.rot90(y, k, axes=yx)
        for axis in range(x.ndim):
            if rng.random() < 0.5:
                x, y = np.flip(x, axis), np.flip(y, axis)
        x = x * rng.uniform(0.6, 1.6) + rng.uniform(-0.2, 0.2)
        x = x + rng.normal(0, rng.uniform(0, 0.05), x.shape)
        return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y)

    return augment


# ---------------------------------------------------------------------------------------
# Training


def _deterministic(seed: int, strict: bool = True) -> None:
    """Same seed, same weights on CPU: seeded RNGs and (strict) TensorFlow's deterministic kernels."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    np.random.seed(seed)
    if strict:
        tf.config.experimental.enable_op_determinism()


def _patch_size(shapes, wanted, multiple: int = 16):
    smallest = np.min(np.array(shapes), axis=0)
    patch = []
    for want, have in zip(wanted, smallest):
        size = min(int(want), int(have))
        patch.append(max(multiple, size // multiple * multiple) if size >= multiple else int(have))
    return tuple(patch)


def qc_field_of_view(model, labels_list) -> list[str]:
    """Warn when objects are bigger than what the network sees (then rescale the images)."""
    from stardist import calculate_extents

    median = np.array(calculate_extents(list(labels_list), np.median))
    axes = "ZYX"[-len(median):]
    fov = np.array(model._axes_tile_overlap(axes))
    warnings = []
    if np.any(median > fov):
        factor = float(np.min(fov / np.maximum(median, 1)))
        warnings.append(
            f"median object size {median.tolist()} px exceeds the network's field of view {fov.tolist()} px: "
            f"downscale the images by about {factor:.2f} (or use a larger grid / deeper U-Net)")
    return warnings


def TimeBudget(seconds: float):
    """A Keras callback that ends training after ``seconds`` of wall-clock time (at an epoch end)."""
    import keras

    class _TimeBudget(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            if time.perf_counter() - self.start > seconds:
                log.info("time budget of %.0f s spent after epoch %d", seconds, epoch + 1)
                self.model.stop_training = True

    return _TimeBudget()


def train_stardist(pairs: dict, out_dir: str | Path, *, split: dict, voxel_size=None, n_rays: int = 32,
                   grid=None, patch_size=(256, 256), epochs: int = 100, steps_per_epoch: int = 100,
                   batch_size: int = 4, learning_rate: float = 3e-4, patience: int = 20,
                   unet_n_depth: int = 3, augment: bool = True, seed: int = 42,
                   time_budget_s: float | None = None, reduce_lr_patience: int | None = None,
                   deterministic: bool = True) -> dict:
    """Train a 2D or 3D StarDist model on ``pairs`` (key -> (image, labels)); write its folder.

    The folder holds config.json, weights_best.h5, weights_last.h5 and thresholds.json (the
    StarDist layout, so pretrained models load the same way), plus history.csv, history.png
    and training.json (split sizes, thresholds, QC warnings, seconds).
    """
    import keras
    from csbdeep.utils import normalize  # noqa: F401  (imports csbdeep's TF set-up)
    from stardist import fill_label_holes

    from snakescope.training.curves import plot_curves

    _deterministic(seed, deterministic)
    train_keys = [k for k in split["train"] if k in pairs]
    val_keys = [k for k in split["validation"] if k in pairs]
    if not train_keys:
        raise InputError(out_dir, "no training images: give samples with labels in the samples sheet")
    notes = []
    if not val_keys:
        val_keys = train_keys
        notes.append("only one labelled image: validation and thresholds use the training image")
    X = [pairs[k][0] for k in train_keys]
    Y = [fill_label_holes(pairs[k][1].astype(np.int32)) for k in train_keys]
    Xv = [pairs[k][0] for k in val_keys]
    Yv = [fill_label_holes(pairs[k][1].astype(np.int32)) for k in val_keys]
    ndim = X[0].ndim
    if any(x.ndim != ndim for x in X + Xv):
        raise InputError(out_dir, "training images mix 2D and 3D frames; train one model per dimensionality")

    patch = _patch_size([x.shape for x in X + Xv], patch_size[-ndim:] if len(patch_size) >= ndim else (patch_size[0],) * ndim)
    final = Path(out_dir)
    with atomic_path(final) as tmp:
        model = _build(ndim, tmp, n_rays=n_rays, grid=grid, voxel_size=voxel_size, patch=patch,
                       epochs=epochs, steps=steps_per_epoch, batch=batch_size, lr=learning_rate,
                       depth=unet_n_depth, labels=Y)
        notes += qc_field_of_view(model, Y)
        for note in notes:
            log.warning("%s", note)
        model.prepare_for_training()
        model.callbacks.append(keras.callbacks.CSVLogger(str(tmp / "history.csv")))
        if patience:
            model.callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience))
        if reduce_lr_patience:
            model.callbacks = [c for c in model.callbacks if not isinstance(c, keras.callbacks.ReduceLROnPlateau)]
            model.callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                                                     patience=reduce_lr_patience, min_lr=1e-5))
        if time_budget_s:
            model.callbacks.append(TimeBudget(time_budget_s))
        start = time.perf_counter()
        model.train(X, Y, validation_data=(Xv, Yv), augmenter=augmenter(seed, ndim) if augment else None,
                    epochs=epochs, steps_per_epoch=steps_per_epoch, seed=seed)
        seconds = time.perf_counter() - start
        model.keras_model.save_weights(str(tmp / "weights_last.h5"))
        model.load_weights("weights_best.h5")
        thresholds = model.optimize_thresholds(Xv, Yv, predict_kwargs={"show_tile_progress": False},
                                               optimize_kwargs={"verbose": 0})
        plot_curves(tmp / "history.csv", tmp / "history.png", title="StarDist training")
        summary = {
            "kind": "stardist", "ndim": ndim, "n_train": len(X), "n_validation": len(Xv),
            "train_keys": train_keys, "validation_keys": val_keys, "patch_size": list(patch),
            "thresholds": thresholds, "train_seconds": seconds, "notes": notes, "seed": seed,
        }
        write_json(tmp / "training.json", summary)
    return summary


def _build(ndim, folder: Path, *, n_rays, grid, voxel_size, patch, epochs, steps, batch, lr, depth, labels):
    from stardist.models import Config2D, Config3D, StarDist2D, StarDist3D

    common = dict(n_channel_in=1, train_patch_size=patch, train_batch_size=batch, train_epochs=epochs,
                  train_steps_per_epoch=steps, train_learning_rate=lr, train_tensorboard=False,
                  unet_n_depth=depth, use_gpu=False)
    if ndim == 2:
        config = Config2D(n_rays=n_rays, grid=tuple(grid or (2, 2)), **common)
        return StarDist2D(config, name=folder.name, basedir=str(folder.parent))
    from stardist import Rays_GoldenSpiral, calculate_extents

    extents = np.array(calculate_extents(list(labels)))
    anisotropy = tuple(float(np.max(extents) / e) for e in extents)
    grid = tuple(grid or tuple(1 if a > 1.5 else 2 for a in anisotropy))
    config = Config3D(rays=Rays_GoldenSpiral(n_rays, anisotropy=anisotropy), grid=grid, anisotropy=anisotropy, **common)
    return StarDist3D(config, name=folder.name, basedir=str(folder.parent))


# ---------------------------------------------------------------------------------------
# Prediction


def load_model(model_dir: str | Path):
    """A StarDist model folder (trained here, or a published one such as 2D_versatile_fluo)."""
    from stardist.models import StarDist2D, StarDist3D

    model_dir = Path(model_dir)
    config_file = model_dir / "config.json"
    if not config_file.exists():
        raise InputError(model_dir, "not a StarDist model folder (config.json missing)")
    weights = [w for w in ("weights_best.h5", "weights_last.h5") if (model_dir / w).exists()]
    if not weights:
        raise InputError(model_dir, "no weights in the model folder (weights_best.h5 or weights_last.h5)")
    n_dim = json.loads(config_file.read_text()).get("n_dim", 2)
    cls = StarDist3D if n_dim == 3 else StarDist2D
    try:
        model = cls(None, name=model_dir.name, basedir=str(model_dir.parent))
        model.load_weights(weights[0])
    except Exception as exc:
        raise InputError(model_dir, f"incompatible StarDist model ({type(exc).__name__}: {exc})") from None
    return model


def check_thresholds(prob_thresh, nms_thresh) -> None:
    for name, value in (("prob_thresh", prob_thresh), ("nms_thresh", nms_thresh)):
        if value is not None and not 0 < float(value) < 1:
            raise InputError(f"segmentation.{name}", f"{value} is out of range: thresholds lie strictly between 0 and 1")


def predict_stardist(model_dir, image_path, out_path, *, channel: int = 0, prob_thresh=None, nms_thresh=None,
                     block_size: int = 1024, min_overlap: int = 64, context: int | None = None,
                     name: str = "segmentation") -> dict:
    """StarDist instances for every frame of an NGFF image, into NGFF labels at ``out_path``.

    Frames larger than ``block_size`` are segmented block by block (``predict_blocks``):
    blocks overlap by ``min_overlap`` (at least the largest object) and see ``context``
    extra pixels, each object is kept by the one block responsible for it, so none is cut
    or duplicated, and the labels are written straight into the Zarr array (memory bounded
    by the block size).
    """
    _, segment_frame, kwargs = _stardist_frames(model_dir, image_path, prob_thresh, nms_thresh,
                                                block_size, min_overlap, context)
    return write_label_image(image_path, out_path, segment_frame, channel=channel, name=name,
                             summary={"method": "stardist", "model": str(model_dir), "thresholds": kwargs})


def _stardist_frames(model_dir, image_path, prob_thresh, nms_thresh, block_size, min_overlap, context, part=None):
    """The image, a ``segment_frame(frame, out)`` for ``write_label_image`` and the
    thresholds used. With ``part=(k, n)``, only the k-th of n contiguous shares of every
    frame's blocks is segmented (frames that fit in one block: by part 0 alone)."""
    check_thresholds(prob_thresh, nms_thresh)
    model = load_model(model_dir)
    image = ngff.read_image(image_path)
    spatial = spatial_axes(image.axes).upper()
    if len(spatial) != model.config.n_dim:
        raise InputError(image_path, f"a {model.config.n_dim}D model cannot segment {len(spatial)}D frames (axes {image.axes})")
    thresholds = dict(model.thresholds._asdict()) if getattr(model, "thresholds", None) else {}
    kwargs = {"prob_thresh": prob_thresh if prob_thresh is not None else thresholds.get("prob"),
              "nms_thresh": nms_thresh if nms_thresh is not None else thresholds.get("nms")}

    def segment_frame(frame, out):
        with _single_openmp_thread():
            if max(frame.shape[-2:]) <= block_size:
                if part is not None and part[0] != 0:
                    return 0
                labels, _ = model.predict_instances(frame[...], axes=spatial, show_tile_progress=False, **kwargs)
                out[...] = labels.astype(np.uint32)
                return labels.max()
            return predict_blocks(model, frame, out, spatial, _block(block_size, spatial), min_overlap, context,
                                  where=str(image_path), part=part, **kwargs)

    return image, segment_frame, kwargs


def predict_stardist_part(model_dir, image_path, out_path, *, part: int, n_parts: int, channel: int = 0,
                          prob_thresh=None, nms_thresh=None, block_size: int = 2048, min_overlap: int = 64,
                          context: int | None = None) -> dict:
    """One job of a scattered segmentation: the ``part``-th of ``n_parts`` contiguous shares of
    every frame's blocks (the same blocks and ownership rule as ``predict_stardist``), into a
    uint32 array at ``out_path`` (labels numbered from 1 in each frame; objects per frame in
    its attributes), written atomically. ``gather_stardist_parts`` joins the parts."""
    if not 0 <= part < n_parts:
        raise InputError("segmentation.scatter", f"part {part} does not exist in {n_parts} parts")
    image, segment_frame, kwargs = _stardist_frames(model_dir, image_path, prob_thresh, nms_thresh, block_size,
                                                    min_overlap, context, part=(part, n_parts))
    _, label_shape, label_chunks = label_layout(image)
    with atomic_path(out_path) as tmp:
        group = ngff.open_group(tmp, "w")
        labels = ngff.create_levels(group, [label_shape], label_chunks, np.uint32, "lz4")[0]
        counts = segment_frames(image, channel, segment_frame, labels)
        result = {"part": part, "n_parts": n_parts, "objects_per_frame": counts, "thresholds": kwargs,
                  "model": str(model_dir)}
        group.attrs["snakescope"] = {"segmentation_part": result}
    log.info("part %d of %d: %s objects per frame", part, n_parts, counts)
    return result


def gather_stardist_parts(part_paths, image_path, out_path, *, channel: int = 0, name: str = "segmentation") -> dict:
    """Join the parts of a scattered segmentation into NGFF labels equal to one job's output.

    Parts are applied in order, each label shifted by the objects of the earlier parts in
    that frame, and only positive labels written (as StarDist's blocks write), so the
    result is the single-job one: same blocks, same owner of every object, same numbering.
    Memory: one slab of whole chunks at a time (``ngff.slabs``).
    """
    parts = []
    for path in part_paths:
        try:
            group = ngff.open_group(path, "r")
            info = group.attrs["snakescope"]["segmentation_part"]
            parts.append((info, group["0"]))
        except Exception as exc:
            raise InputError(path, f"is not a segmentation part written by segment_part ({type(exc).__name__}: {exc})") from None
    parts.sort(key=lambda item: item[0]["part"])
    found, n_parts = [info["part"] for info, _ in parts], {info["n_parts"] for info, _ in parts}
    if len(n_parts) != 1 or found != list(range(n_parts.pop())):
        raise InputError(", ".join(map(str, part_paths)), f"parts {found} are not one complete set")

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

    info = parts[0][0]
    spatial = spatial_axes(ngff.read_image(image_path).axes)
    return write_label_image(image_path, out_path, join_frame, channel=channel, name=name,
                             summary={"method": "stardist", "model": info["model"], "thresholds": info["thresholds"],
                                      "scattered_parts": len(parts)})


def _single_openmp_thread():
    """StarDist's NMS in one OpenMP thread (TensorFlow keeps its own thread pool).

    The NMS opens an OpenMP parallel region per kept object; where the cores are shared
    (other jobs, TensorFlow's threads) each region waits for a descheduled thread: measured
    0.07 s with one thread against 1.1 s with two for a 1024 x 1024 block on a loaded
    2-core machine, i.e. the NMS of every block cost about as much as its network pass.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        from contextlib import nullcontext

        return nullcontext()
    return threadpool_limits(limits=1, user_api="openmp")


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


def predict_blocks(model, frame, out, axes: str, block_size, min_overlap, context=None, where: str = "",
                   part=None, **kwargs) -> int:
    """Segment a large ``frame`` block by block into ``out`` (a Zarr array view); return the object count.

    The blocks and the rule that keeps each object in exactly one block are StarDist's own
    (``stardist.big``, as in ``predict_instances_big``); what differs: equal blocks laid out
    by ``block_layout``, labels numbered without a table that grows with the object count,
    and an object too large for the overlap (``predict_instances_big`` raises and the whole
    job is lost) is kept, cut at the block's edge, and counted in a warning.
    """
    from stardist.big import BlockND, NotFullyVisible

    n = len(axes)
    grid = model._axes_div_by(axes)
    if context is None:
        context = model._axes_tile_overlap(axes)
    as_tuple = (lambda v: tuple(int(x) for x in v) if not np.isscalar(v) else (int(v),) * n)
    block_size, min_overlap, context = block_layout(frame.shape, as_tuple(block_size), as_tuple(min_overlap),
                                                    as_tuple(context), grid)
    blocks = list(BlockND.cover(frame.shape, axes, block_size, min_overlap, context, grid))
    if part is not None:  # a contiguous share: joining the parts in order keeps the block order
        k, n_parts = part
        blocks = blocks[k * len(blocks) // n_parts:(k + 1) * len(blocks) // n_parts]
    log.info("%d blocks of %s px (min_overlap %s, context %s)", len(blocks), block_size, min_overlap, context)
    from scipy.ndimage import find_objects

    count = cut = 0
    for block in blocks:
        labels, _ = model.predict_instances(block.read(frame, axes=axes), axes=axes, show_tile_progress=False,
                                            overlap_label=None, return_labels=True, return_predict=False, **kwargs)
        labels = block.crop_context(labels, axes=axes)
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


def predict_unet(model_dir, image_path, out_path, *, channel: int = 0, block_size: int = 1024,
                 name: str = "segmentation") -> dict:
    """Three-class U-Net + seeded watershed instances for every frame, into NGFF labels.

    The network's class map (the most probable class per pixel, uint8: 0 background,
    1 contour, 2 body) goes with them, as the labels image ``classes`` of the same folder
    (:func:`read_class_map`), from the same probabilities (one frame at a time, computed
    block by block).
    """
    from snakescope.segmentation import unet
    try:
        model = unet.load_unet(model_dir)
    except FileNotFoundError as exc:
        raise InputError(model_dir, f"not a U-Net model folder ({exc})") from None
    image = ngff.read_image(image_path)
    if len(spatial_axes(image.axes)) != model.ndim:
        raise InputError(image_path, f"a {model.ndim}D model cannot segment frames with axes {image.axes}")
    block = tuple(min(block_size, 64) if a == "z" else block_size for a in spatial_axes(image.axes))

    def segment_frame(frame, out, classes_out):
        labels = model.predict_instances(frame, block_shape=block, where=str(image_path), classes_out=classes_out)
        out[...] = labels.astype(np.uint32)
        return labels.max()

    return write_label_image(image_path, out_path, segment_frame, channel=channel, name=name,
                             class_names=unet.CLASS_NAMES,
                             summary={"method": "unet", "model": str(model_dir), "postprocessing": model.postprocessing,
                                      "class_map": CLASS_MAP, "classes": list(unet.CLASS_NAMES)})


def _block(block_size: int, spatial: str):
    if len(spatial) == 3:
        return (min(block_size, 64), block_size, block_size)
    return block_size


