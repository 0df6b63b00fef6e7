"""StarDist segmentation: the model's configuration, training, thresholds, loading, and
prediction of NGFF images into NGFF labels.

The model-facing parts follow the StarDist example notebooks (fill label holes, random
flips/rotations and intensity augmentation, optimize_thresholds on the validation set);
training runs StarDist's own loop inside the shared harness
(:class:`snakescope.training.harness.TrainingRun`: seeding, time budget, early stopping,
curves, the atomic model folder and its ``snakescope.json``). Frames of any size are
segmented by the instance engine (:mod:`snakescope.blockwise.instances`: block by block
straight into the Zarr array, each object kept by exactly one block, scattered parts).

A loaded model (:func:`load_model`) segments any number of images
(:func:`predict_stardist`, :func:`predict_stardist_part`).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np

from snakescope.blockwise import instances
from snakescope.errors import InputError
from snakescope.io import ngff
from snakescope.io.atomic import write_json
from snakescope.io.frames import spatial_axes
from snakescope.io.labels import write_label_image
from snakescope.segmentation.rescale import plan_rescale
from snakescope.segmentation.training_data import train_validation_keys
from snakescope.settings import Segmentation, StarDistTraining, defaults
from snakescope.training.harness import (METADATA, WEIGHTS_BEST, WEIGHTS_LAST, Schedule, TrainingRun,
                                         freeze_encoder as freeze_down_path, seed_everything)

log = logging.getLogger(__name__)

__all__ = ["augmenter", "check_parent", "check_thresholds", "load_model", "predict_stardist", "predict_stardist_part",
           "qc_field_of_view", "train_stardist"]


# ---------------------------------------------------------------------------------------
# Training


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
    notes = []
    if np.any(median > fov):
        factor = float(np.min(fov / np.maximum(median, 1)))
        notes.append(
            f"median object size {median.tolist()} px exceeds the network's field of view {fov.tolist()} px: "
            f"downscale the images by about {factor:.2f} (or use a larger grid / deeper U-Net)")
    return notes


def train_stardist(pairs: dict, out_dir: str | Path, settings: StarDistTraining, *, split: Mapping, seed: int,
                   parent: str | Path | None = None, freeze_encoder: bool = False, deterministic: bool = True,
                   reduce_lr_patience: int | None = None) -> dict:
    """Train a 2D or 3D StarDist model on ``pairs`` (key -> (image, labels)); write its folder.

    ``settings``: ``segmentation.stardist`` (3D: ``Segmentation.stardist_for(3)``).
    ``split``: {'train': [...], 'validation': [...]} over the keys of ``pairs``. ``parent``:
    a StarDist model folder to fine-tune (its architecture and weights; ``n_rays``, ``grid``
    and ``unet_n_depth`` are then the parent's; a parent of the other dimensionality or with
    several input channels, or settings asking for another network, is an InputError, see
    :func:`check_parent`). ``freeze_encoder``: keep the parent's down path (grid pooling and
    ``down_level_*`` layers) fixed and train the rest. ``deterministic``: TensorFlow's
    deterministic kernels (slower; same seed, same weights). ``reduce_lr_patience``: halve
    the learning rate after that many epochs without a better validation loss (down to
    1e-5) instead of StarDist's own schedule.

    The folder is the harness's (config.json, weights_best.h5 from StarDist's checkpoint,
    weights_last.h5, training.csv/.png/.log, snakescope.json with the split's keys, patch
    size, thresholds and QC notes) plus StarDist's thresholds.json, so it loads like a
    published StarDist model. Returns the metadata (snakescope.json).
    """
    from csbdeep.utils import normalize  # noqa: F401  (imports csbdeep's TF set-up)
    from stardist import fill_label_holes

    seed_everything(seed, deterministic)
    train_keys, val_keys, notes = train_validation_keys(split, pairs, out_dir)
    X = [pairs[k][0] for k in train_keys]
    Y = [fill_label_holes(pairs[k][1].astype(np.int32)) for k in train_keys]
    Xv = [pairs[k][0] for k in val_keys]
    Yv = [fill_label_holes(pairs[k][1].astype(np.int32)) for k in val_keys]
    ndim = X[0].ndim
    if any(x.ndim != ndim for x in X + Xv):
        raise InputError(out_dir, "training images mix 2D and 3D frames; train one model per dimensionality")
    if freeze_encoder and not parent:
        raise InputError("freeze_encoder", "freezes the down path of a parent model: name the model to fine-tune")
    parent_model = None
    if parent:
        parent_model, parent_notes = check_parent(parent, ndim, settings, Y)
        notes += parent_notes

    wanted = settings.patch_size
    patch = _patch_size([x.shape for x in X + Xv], wanted[-ndim:] if len(wanted) >= ndim else (wanted[0],) * ndim)
    schedule = Schedule(epochs=settings.epochs, steps_per_epoch=settings.steps_per_epoch,
                        learning_rate=settings.learning_rate, patience=settings.patience,
                        time_limit=settings.time_limit)
    with TrainingRun(out_dir, kind="stardist", ndim=ndim, seed=seed, schedule=schedule, parent=parent) as run:
        model = _build(ndim, run.folder, settings, patch, Y, parent_model)
        frozen = freeze_down_path(model.keras_model) if freeze_encoder else []
        notes += qc_field_of_view(model, Y)
        for note in notes:
            log.warning("%s", note)
        model.prepare_for_training()
        model.callbacks += run.callbacks(checkpoint=False)  # StarDist checkpoints weights_best.h5 itself
        if reduce_lr_patience:
            import keras

            model.callbacks = [c for c in model.callbacks if not isinstance(c, keras.callbacks.ReduceLROnPlateau)]
            model.callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                                                     patience=reduce_lr_patience, min_lr=1e-5))
        model.train(X, Y, validation_data=(Xv, Yv), augmenter=augmenter(seed, ndim) if settings.augment else None,
                    epochs=settings.epochs, steps_per_epoch=settings.steps_per_epoch, seed=seed)
        metadata = run.finish(model.keras_model, settings=settings.to_dict(),
                              data={"n_train": len(X), "n_validation": len(Xv), "train_keys": train_keys,
                                    "validation_keys": val_keys},
                              extra={"patch_size": list(patch), "notes": notes,
                                     **({"fine_tuning": {"freeze_encoder": bool(freeze_encoder),
                                                         "frozen_layers": frozen}} if parent else {})},
                              title="StarDist training")
        # thresholds of the best weights (finish() loaded them), saved as thresholds.json too
        metadata["thresholds"] = model.optimize_thresholds(Xv, Yv, predict_kwargs={"show_tile_progress": False},
                                                           optimize_kwargs={"verbose": 0})
        write_json(run.folder / METADATA, metadata)
    return metadata


def check_parent(folder: str | Path, ndim: int, settings: StarDistTraining, labels=()) -> tuple:
    """The StarDist model in ``folder`` to fine-tune on ``ndim``-D frames, and notes.

    What must match raises InputError naming the folder and both values: the
    dimensionality, one input channel, and the network (``n_rays``, ``grid``,
    ``unet_n_depth``) where ``settings`` ask for another one than the schema's default. The
    parent's network is kept: where ``settings`` hold a default that differs from it, one
    note says so (the shipped models need no change of settings). In 3D, a note also says
    when the objects of ``labels`` are much more or less anisotropic than the parent's rays
    were made for.
    """
    folder = Path(folder)
    try:  # what must match, read before the weights load (a 3-channel model's would not)
        theirs = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        theirs = {}
    if theirs.get("n_dim", ndim) != ndim:
        raise InputError(folder, f"is a {theirs['n_dim']}D StarDist model; it cannot be fine-tuned on {ndim}D frames "
                                 f"(use segmentation.model_{ndim}d for {ndim}D samples)")
    if theirs.get("n_channel_in", 1) != 1:
        raise InputError(folder, f"takes {theirs['n_channel_in']} input channels, the samples give 1 (snakescope "
                                 f"segments one channel): fine-tune a one-channel model")
    model = load_model(folder)
    config = model.config
    default = defaults().segmentation.stardist_for(ndim)
    asked, ignored = [], []
    for key, mine, parents in (("n_rays", settings.n_rays, config.n_rays),
                               ("grid", list(settings.grid) if settings.grid else None, list(config.grid)),
                               ("unet_n_depth", settings.unet_n_depth, config.unet_n_depth)):
        if mine is None or mine == parents:
            continue
        default_value = getattr(default, key)
        is_default = mine == (list(default_value) if key == "grid" and default_value else default_value)
        (ignored if is_default else asked).append((key, mine, parents))
    section = "segmentation.stardist" + (" (stardist_3d)" if ndim == 3 else "")
    if asked:
        differ = "; ".join(f"{k} {m} here, {p} in the parent" for k, m, p in asked)
        raise InputError(folder, f"its network differs from the one {section} asks for ({differ}): set "
                                 f"them to the parent's values (or leave them out) to fine-tune it, or set "
                                 f"segmentation.model_{ndim}d: null to train from scratch")
    kept = "; ".join(f"{k} {m} (the parent's: {p})" for k, m, p in ignored)
    notes = [f"fine-tuning {folder}: its network is kept, so the settings' {kept} do not apply"] if ignored else []
    if ndim == 3 and len(labels) and getattr(config, "anisotropy", None):
        from stardist import calculate_extents

        extents = np.array(calculate_extents(list(labels)), float)
        anisotropy = np.max(extents) / np.maximum(extents, 1e-9)
        ratio = anisotropy / np.array(config.anisotropy, float)
        if np.any(ratio > 1.5) or np.any(ratio < 1 / 1.5):
            notes.append(f"fine-tuning {folder}: the objects' anisotropy {tuple(np.round(anisotropy, 2).tolist())} "
                         f"differs from the parent's {tuple(np.round(config.anisotropy, 2).tolist())} its rays were "
                         f"made for; resample the stacks or expect coarser shapes")
    return model, notes


def _build(ndim, folder: Path, settings: StarDistTraining, patch, labels, parent=None):
    """A new StarDist model in ``folder``: configured from ``settings``, or from ``parent``'s
    configuration (training settings from ``settings``) with its weights."""
    from stardist.models import Config2D, Config3D, StarDist2D, StarDist3D

    cls, config_cls = (StarDist3D, Config3D) if ndim == 3 else (StarDist2D, Config2D)
    training = dict(train_patch_size=patch, train_batch_size=settings.batch_size, train_epochs=settings.epochs,
                    train_steps_per_epoch=settings.steps_per_epoch, train_learning_rate=settings.learning_rate,
                    train_tensorboard=False)
    with warnings.catch_warnings():  # the harness made the (empty) folder
        warnings.filterwarnings("ignore", message="output path for model already exists")
        if parent is not None:
            config = config_cls(**{**vars(parent.config), **training, "use_gpu": False})
            model = cls(config, name=folder.name, basedir=str(folder.parent))
            model.keras_model.set_weights(parent.keras_model.get_weights())
            return model
        common = dict(n_channel_in=1, **training, unet_n_depth=settings.unet_n_depth, use_gpu=False)
        if ndim == 2:
            config = config_cls(n_rays=settings.n_rays, grid=tuple(settings.grid or (2, 2)), **common)
            return cls(config, name=folder.name, basedir=str(folder.parent))
        from stardist import Rays_GoldenSpiral, calculate_extents

        extents = np.array(calculate_extents(list(labels)))
        anisotropy = tuple(float(np.max(extents) / e) for e in extents)
        grid = tuple(settings.grid or tuple(1 if a > 1.5 else 2 for a in anisotropy))
        config = config_cls(rays=Rays_GoldenSpiral(settings.n_rays, anisotropy=anisotropy), grid=grid,
                          anisotropy=anisotropy, **common)
        return cls(config, name=folder.name, basedir=str(folder.parent))


# ---------------------------------------------------------------------------------------
# Prediction


def load_model(model_dir: str | Path):
    """A StarDist model folder (trained here, or a published one such as 2D_versatile_fluo),
    loaded once to segment any number of images; InputError naming the folder when it is
    not a loadable StarDist model."""
    from stardist.models import StarDist2D, StarDist3D

    model_dir = Path(model_dir)
    config_file = model_dir / "config.json"
    if not config_file.exists():
        raise InputError(model_dir, "not a StarDist model folder (config.json missing)")
    weights = [w for w in (WEIGHTS_BEST, WEIGHTS_LAST) if (model_dir / w).exists()]
    if not weights:
        raise InputError(model_dir, f"no weights in the model folder ({WEIGHTS_BEST} or {WEIGHTS_LAST})")
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


def predict_stardist(model, image_path, out_path, settings: Segmentation, *, channel: int,
                     name: str = "segmentation") -> dict:
    """StarDist instances for every frame of an NGFF image, into NGFF labels at ``out_path``.

    ``model``: from :func:`load_model`. ``settings``: the ``segmentation`` section
    (``prob_thresh``/``nms_thresh``, None: the model's; ``block_size``, ``min_overlap``,
    ``context``). Frames larger than ``block_size`` are segmented block by block
    (:func:`snakescope.blockwise.instances.segment_frame`): blocks overlap by ``min_overlap``
    (at least the largest object) and see ``context`` extra pixels, each object is kept by
    the one block responsible for it, so none is cut or duplicated, and the labels are
    written straight into the Zarr array (memory bounded by the block size).
    """
    segment_frame, summary = _frame_segmenter(model, image_path, settings)
    return write_label_image(image_path, out_path, segment_frame, channel=channel, name=name, summary=summary)


def predict_stardist_part(model, image_path, out_path, settings: Segmentation, *, part: int, n_parts: int,
                          channel: int) -> dict:
    """One job of a scattered segmentation: the ``part``-th of ``n_parts`` contiguous shares of
    every frame's blocks (the blocks and ownership of :func:`predict_stardist`) into a part
    array at ``out_path`` (:func:`snakescope.blockwise.instances.write_part`);
    :func:`snakescope.blockwise.instances.join_parts` joins the parts."""
    instances.check_part(part, n_parts)
    segment_frame, summary = _frame_segmenter(model, image_path, settings, part=(part, n_parts))
    return instances.write_part(image_path, out_path, segment_frame, part=part, n_parts=n_parts, channel=channel,
                                summary=summary)


def _frame_segmenter(model, image_path, settings: Segmentation, part=None):
    """A ``segment_frame(frame, out)`` for the frames of ``image_path`` (only the share ``part``
    of their blocks when given), and the summary of the segmentation (method, model,
    thresholds used, rescaling). With ``settings.rescale`` auto the frames are segmented on
    the model's pixel grid (:mod:`snakescope.segmentation.rescale`)."""
    check_thresholds(settings.prob_thresh, settings.nms_thresh)
    image = ngff.read_image(image_path)
    spatial = spatial_axes(image.axes).upper()
    if len(spatial) != model.config.n_dim:
        raise InputError(image_path, f"a {model.config.n_dim}D model cannot segment {len(spatial)}D frames (axes {image.axes})")
    thresholds = dict(model.thresholds._asdict()) if getattr(model, "thresholds", None) else {}
    kwargs = {"prob_thresh": settings.prob_thresh if settings.prob_thresh is not None else thresholds.get("prob"),
              "nms_thresh": settings.nms_thresh if settings.nms_thresh is not None else thresholds.get("nms")}
    grid = model._axes_div_by(spatial)
    rescaling = plan_rescale(model.logdir, image_path, settings.rescale)

    def predict(block):
        labels, _ = model.predict_instances(block, axes=spatial, show_tile_progress=False, **kwargs)
        return labels

    def segment_frame(frame, out):
        with _single_openmp_thread():
            return instances.segment_frame(frame, out, predict, axes=spatial, settings=settings, grid=grid,
                                           field_of_view=lambda: model._axes_tile_overlap(spatial), part=part,
                                           where=str(image_path))

    return rescaling.wrap(segment_frame), {"method": "stardist", "model": str(model.logdir), "thresholds": kwargs,
                                           "rescale": rescaling.record()}


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
