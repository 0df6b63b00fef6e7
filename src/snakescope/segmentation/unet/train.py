"""U-Net training: random augmented patches, a class-weighted cross-entropy (the thin
contour class is rare), Keras ``fit`` inside the shared harness
(:class:`snakescope.training.harness.TrainingRun`), then post-processing thresholds tuned
and scores measured on the validation images.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from snakescope.errors import InputError
from snakescope.io.atomic import write_json
from snakescope.segmentation.training_data import train_validation_keys
from snakescope.segmentation.unet.network import (DEFAULT_POSTPROCESSING, FORMAT, UNet, architecture_for,
                                                  build_keras_model, divisor, load_unet, per_axis,
                                                  receptive_field_radius, round_up)
from snakescope.segmentation.unet.predict import predict_probabilities, probabilities_to_instances
from snakescope.segmentation.unet.targets import check_pair, class_weights_from_frequencies, labels_to_classes
from snakescope.segmentation.unet.types import class_names_for, object_type_image
from snakescope.settings import UNetTraining
from snakescope.training.harness import (CONFIG, METADATA, Schedule, TrainingRun, freeze_encoder as freeze_down_path,
                                         seed_everything)

log = logging.getLogger(__name__)

__all__ = ["AUGMENT", "check_parent", "patch_batches", "train_unet"]

#: Augmentation of the training patches (``segmentation.unet.augment: true``).
AUGMENT = {
    "flip": True,
    "rot90": True,
    "intensity_scale": [0.8, 1.25],
    "intensity_shift": [-0.1, 0.1],
    "noise_std": 0.05,
}
#: Training patch where ``segmentation.unet.patch_size`` is null, per dimensionality.
#: Grid searched on the validation images for the post-processing thresholds.
THRESHOLD_GRID = (0.3, 0.4, 0.5, 0.6, 0.7)


def _weighted_loss(weights):
    import keras

    w = keras.ops.convert_to_tensor(np.asarray(weights, dtype=np.float32))

    def weighted_categorical_crossentropy(y_true, y_pred):
        y = keras.ops.cast(keras.ops.squeeze(y_true, axis=-1), "int32")
        ce = keras.losses.sparse_categorical_crossentropy(y, y_pred)
        return ce * keras.ops.take(w, y)

    return weighted_categorical_crossentropy



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



def _typed_labels(checked: Mapping, types: Mapping | None, settings: UNetTraining) -> dict:
    """{name: (labels, each object's type on its pixels or None)} of the checked pairs: types
    are required for a typed U-Net (``settings.types``, two or more) and refused without one."""
    n_types = len(settings.types) if len(settings.types) > 1 else 0
    types = {str(k): v for k, v in (types or {}).items()}
    if types and not n_types:
        raise InputError("segmentation.unet.types", "object types were given, but a typed U-Net needs two or more "
                                                    f"type names here (got {list(settings.types)})")
    missing = sorted(set(checked) - set(types)) if n_types else []
    if missing:
        raise InputError(missing[0], f"no object types for {len(missing)} training image(s) of a typed U-Net "
                                     f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})")
    return {k: (y, object_type_image(y, types[k], n_types, where=k) if n_types else None)
            for k, (_, y) in checked.items()}


def check_parent(folder: str | Path, ndim: int, settings: UNetTraining) -> tuple[UNet, list[str]]:
    """The U-Net in ``folder`` to fine-tune on ``ndim``-D frames, and notes.

    What must match raises InputError naming the folder: the dimensionality, the classes
    (background, contour, body; per type for ``settings.types``) and one input channel. The parent's architecture is kept:
    where ``settings.architecture`` asks for another one, one note says so.
    """
    model = load_unet(folder)
    if model.ndim != ndim:
        raise InputError(folder, f"is a {model.ndim}D U-Net; it cannot be fine-tuned on {ndim}D frames "
                                 f"(use segmentation.model_{ndim}d for {ndim}D samples)")
    classes, expected = list(model.config.get("classes", [])), list(class_names_for(settings.types))
    if classes != expected:
        raise InputError(folder, f"predicts the classes {classes}, not {expected}")
    if int(model.architecture.get("n_channel_in", 1)) != 1:
        raise InputError(folder, f"takes {model.architecture['n_channel_in']} input channels; snakescope segments one")
    wanted = architecture_for(ndim, settings.architecture, len(expected))
    ignored = [f"{k} {wanted[k]} (the parent's: {model.architecture.get(k)})" for k in sorted(wanted)
               if wanted[k] != model.architecture.get(k)]
    notes = [f"fine-tuning {folder}: its architecture is kept, so the settings' {'; '.join(ignored)} do not apply"] \
        if ignored else []
    return model, notes


def train_unet(pairs: Mapping, out_dir: str | Path, settings: UNetTraining, *, split: Mapping, seed: int,
               types: Mapping | None = None, parent: str | Path | None = None, freeze_encoder: bool = False,
               class_weights="auto",
               foreground_fraction: float = 0.5, max_validation_patches: int = 64,
               postprocessing: Mapping | None = None,
               optimize_thresholds: bool = True, allow_empty: bool = False, jit_compile: bool | str = "auto",
               verbose: int = 0) -> dict:
    """Train a 2D or 3D U-Net on ``pairs`` and write its model folder: three classes, or
    2K + 1 for the K >= 2 cell types ``settings.types`` (:mod:`.types`).

    ``pairs``: {name: (normalized image, instance labels)}, all 2D or all 3D. ``types``
    (typed U-Net, required then): {name: the pair's type image or {label: type id}}, type
    ids 1..K in the order of ``settings.types`` (each object takes one type, see
    :func:`~snakescope.segmentation.unet.types.object_type_image`). ``settings``:
    ``segmentation.unet`` (3D: ``Segmentation.unet_for(3)``); with ``patience``, early stopping and the learning rate halved after half as many epochs
    without a better validation loss. ``split``: {'train': [...], 'validation': [...]} over
    the names (e.g. from :func:`snakescope.training.splits.make_or_load_split`). ``parent``:
    a U-Net folder to fine-tune (its architecture and weights; checked by
    :func:`check_parent`). ``freeze_encoder``: keep the parent's down path (the
    ``down_level_*`` layers) fixed and train the rest. ``class_weights``: "auto"
    (median-frequency balancing of the training label frequencies) or one number per class
    (background, contour, body; typed: background, then each type's contour and body).

    The folder is the harness's (config.json with what rebuilding the network needs and the
    post-processing thresholds tuned on the validation images, weights_best.h5,
    weights_last.h5, training.csv/.png/.log, snakescope.json with the split's keys, class
    weights, validation scores) plus ``split.json``, ``validation_metrics.csv`` (instance
    matching at IoU 0.5..0.9 per validation image and summed) and ``confusion.csv`` /
    ``confusion.png`` (pixel classes on validation images). Returns the metadata
    (snakescope.json).
    """
    pairs = {str(k): v for k, v in pairs.items()}
    if not pairs:
        raise InputError(out_dir, "no training pairs given")
    checked = {k: check_pair(k, x, y, allow_empty=allow_empty) for k, (x, y) in pairs.items()}
    ndims = {x.ndim for x, _ in checked.values()}
    if len(ndims) > 1:
        raise InputError(out_dir, "training images mix 2D and 3D frames; train one model per dimensionality")
    ndim = ndims.pop()
    if freeze_encoder and not parent:
        raise InputError("freeze_encoder", "freezes the down path of a parent model: name the model to fine-tune")
    parent_model, parent_notes = check_parent(parent, ndim, settings) if parent else (None, [])
    names = class_names_for(settings.types)
    arch = parent_model.architecture if parent_model else architecture_for(ndim, settings.architecture, len(names))
    div = divisor(arch)
    patch_shape = tuple(round_up(p, d) for p, d in zip(per_axis(settings.patch_size, ndim), div))
    augment_settings = dict(AUGMENT) if settings.augment else None
    post = {**DEFAULT_POSTPROCESSING, **(postprocessing or {})}
    classes = {k: labels_to_classes(y, k, t) for k, (y, t) in _typed_labels(checked, types, settings).items()}

    import keras

    from snakescope.evaluation.classes import semantic_metrics, write_confusion
    from snakescope.evaluation.instances import instance_metrics, summarize, write_instance_metrics

    seed_everything(seed)  # same seed, same weights on CPU
    schedule = Schedule(epochs=int(settings.epochs), steps_per_epoch=int(settings.steps_per_epoch),
                        learning_rate=settings.learning_rate,
                        lr_schedule="plateau" if settings.patience else "constant",
                        patience=int(settings.patience), time_limit=settings.time_limit)
    with TrainingRun(out_dir, kind="unet", ndim=ndim, seed=seed, schedule=schedule, parent=parent) as run:
        folder = run.folder
        train_keys, val_keys, notes = train_validation_keys(split, checked, out_dir)
        notes += parent_notes
        write_json(folder / "split.json", {"train": train_keys, "validation": val_keys})
        counts = np.bincount(np.concatenate([classes[k].ravel() for k in train_keys]),
                             minlength=len(names))[:len(names)]
        frequencies = (counts / counts.sum()).tolist()
        if isinstance(class_weights, str):
            if class_weights != "auto":
                raise InputError("unet.class_weights", f"{class_weights!r}: use 'auto' or one number per class")
            weights = class_weights_from_frequencies(frequencies)
        else:
            weights = [float(w) for w in class_weights]
            if len(weights) != len(names) or min(weights) <= 0:
                raise InputError("unet.class_weights", f"{class_weights}: need {len(names)} positive numbers "
                                                       f"({', '.join(names)})")
        for note in notes:
            log.warning("%s", note)

        model = build_keras_model(arch)
        if parent_model is not None:
            model.set_weights(parent_model.keras_model.get_weights())
        frozen = freeze_down_path(model) if freeze_encoder else []
        model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate), loss=_weighted_loss(weights),
                      jit_compile=jit_compile)
        batches = patch_batches([checked[k][0] for k in train_keys], [classes[k] for k in train_keys],
                                patch_shape, settings.batch_size, seed, foreground_fraction=foreground_fraction,
                                augment=augment_settings)
        Xv, Yv = _validation_patches([checked[k][0] for k in val_keys], [classes[k] for k in val_keys],
                                     patch_shape, max_validation_patches, seed)
        model.fit(batches, steps_per_epoch=int(settings.steps_per_epoch), epochs=int(settings.epochs),
                  validation_data=(Xv, Yv), validation_batch_size=settings.batch_size, callbacks=run.callbacks(),
                  verbose=verbose, shuffle=False)
        metadata = run.finish(model, settings=settings.to_dict(),
                              data={"n_train": len(train_keys), "n_validation": len(val_keys),
                                    "train_keys": train_keys, "validation_keys": val_keys},
                              extra={"patch_size": list(patch_shape), "class_frequencies": frequencies,
                                     "class_weights": weights, "augment": augment_settings,
                                     "foreground_fraction": foreground_fraction, "notes": notes,
                                     **({"fine_tuning": {"freeze_encoder": bool(freeze_encoder),
                                                         "frozen_layers": frozen}} if parent else {})},
                              title=f"U-Net ({ndim}D) training")

        # the best weights (finish() loaded them) on the validation images
        typed = {"types": list(settings.types)} if len(settings.types) > 1 else {}
        config = {"format": FORMAT, "classes": list(names), **typed, "architecture": arch, "postprocessing": post,
                  "prediction": {"divisor": list(div), "halo": list(receptive_field_radius(arch))}}
        unet = UNet(config, model, folder)
        probs = [predict_probabilities(unet, checked[k][0], where=k) for k in val_keys]
        gts = [checked[k][1] for k in val_keys]
        if optimize_thresholds:
            post, _ = _optimize_postprocessing(probs, gts, post)
            config["postprocessing"] = post
        per_sample = {k: instance_metrics(gt, probabilities_to_instances(p, **post), where=k)
                      for k, p, gt in zip(val_keys, probs, gts)}
        write_instance_metrics(per_sample, folder / "validation_metrics.csv")
        total = summarize(per_sample)
        cm = semantic_metrics(np.concatenate([classes[k].ravel() for k in val_keys]),
                              np.concatenate([p.argmax(-1).ravel() for p in probs]), names)
        write_confusion(cm["confusion_matrix"], names, folder / "confusion.csv", folder / "confusion.png",
                        title="U-Net pixel classes (validation)", percent_csv=folder / "confusion_percent.csv")
        at = total.set_index("threshold")
        metadata["postprocessing"] = post
        metadata["validation"] = {
            "f1@0.5": float(at.loc[0.5, "f1"]) if 0.5 in at.index else None,
            "accuracy@0.5": float(at.loc[0.5, "accuracy"]) if 0.5 in at.index else None,
            "mean_f1": float(total["f1"].mean()),
            "class_iou": {k: (None if np.isnan(v) else v) for k, v in cm["iou"].items()},
            "mean_class_iou": None if np.isnan(cm["mean_iou"]) else cm["mean_iou"],
        }
        write_json(folder / CONFIG, config)
        write_json(folder / METADATA, metadata)
    log.info("U-Net trained: %d epochs, validation F1@0.5 %.3f", metadata["training"]["epochs_run"],
             metadata["validation"]["f1@0.5"] or float("nan"))
    return metadata
