"""Detector training: random augmented patches with their heatmap and box targets, the
focal loss of CenterNet on the heatmaps plus an L1 loss on the box numbers, Keras ``fit``
inside the shared harness (:class:`snakescope.training.harness.TrainingRun`), then the score
threshold tuned (best F1 at IoU 0.5) and mAP measured on the validation images.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from snakescope.detection.metrics import detection_counts, mean_average_precision
from snakescope.detection.network import Detector, architecture_for, build_keras_model, divisor, make_config
from snakescope.detection.predict import predict_boxes
from snakescope.detection.targets import patch_batches, validation_patches
from snakescope.errors import InputError
from snakescope.io.atomic import write_json
from snakescope.io.boxes import Boxes
from snakescope.segmentation.training_data import train_validation_keys
from snakescope.settings import Detection
from snakescope.segmentation.unet.train import AUGMENT
from snakescope.training.harness import CONFIG, METADATA, Schedule, TrainingRun, seed_everything

log = logging.getLogger(__name__)

__all__ = ["BOX_WEIGHT", "FOCAL_ALPHA", "FOCAL_BETA", "MIN_SCORE", "SCORE_GRID", "detection_loss", "train_detector"]

#: CenterNet's focal loss exponents: alpha on the prediction, beta on the Gaussian's reduction.
FOCAL_ALPHA, FOCAL_BETA = 2.0, 4.0
#: Weight of the box numbers' L1 loss beside the heatmaps' focal loss.
BOX_WEIGHT = 1.0
#: Score thresholds tried on the validation images (the best F1 at IoU 0.5 is kept).
SCORE_GRID = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7)
#: Boxes scoring below this are not even ranked for the validation mAP.
MIN_SCORE = 0.05


def detection_loss(n_classes: int):
    """Per-sample loss: CenterNet's penalty-reduced focal loss over the heatmaps, divided by
    the number of object centres, plus ``BOX_WEIGHT`` times the mean L1 error of the box
    numbers over the cells that regress a box (targets: :mod:`snakescope.detection.targets`)."""
    import keras
    from keras import ops

    def detection_focal_l1(y_true, y_pred):
        heat_true = y_true[..., :n_classes]
        logits = y_pred[..., :n_classes]
        p = ops.sigmoid(logits)
        centre = ops.cast(heat_true >= 1.0, "float32")
        positive = -ops.power(1.0 - p, FOCAL_ALPHA) * keras.ops.log_sigmoid(logits) * centre
        negative = (-ops.power(1.0 - heat_true, FOCAL_BETA) * ops.power(p, FOCAL_ALPHA)
                    * keras.ops.log_sigmoid(-logits) * (1.0 - centre))
        n_centres = ops.maximum(ops.sum(centre, axis=(1, 2, 3)), 1.0)
        focal = ops.sum(positive + negative, axis=(1, 2, 3)) / n_centres
        weight = y_true[..., n_classes + 4]
        error = ops.sum(ops.abs(y_pred[..., n_classes:n_classes + 4] - y_true[..., n_classes:n_classes + 4]), axis=-1)
        box = ops.sum(error * weight, axis=(1, 2)) / ops.maximum(ops.sum(weight, axis=(1, 2)), 1.0)
        return focal + BOX_WEIGHT * box

    return detection_focal_l1


def _start_at_mean_size(model, boxes) -> None:
    """The box head's bias at the training boxes' mean log height and width, so training
    starts from the typical size rather than from one pixel."""
    yxyx = np.concatenate([b.yxyx for b in boxes])
    sizes = np.log(np.clip(yxyx[:, 2:] - yxyx[:, :2], 1, None))
    layer = model.get_layer("box")
    kernel, bias = layer.get_weights()
    bias[2:] = sizes.mean(axis=0)
    layer.set_weights([kernel, bias])


def _check_item(key, image, boxes, n_classes) -> tuple[np.ndarray, Boxes]:
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype.kind not in "uif":
        raise InputError(key, f"the detector trains on 2D intensity frames, got shape {image.shape} dtype {image.dtype}")
    image = image.astype(np.float32, copy=False)
    if not np.all(np.isfinite(image)):
        raise InputError(key, "image has NaN or infinite values")
    if not isinstance(boxes, Boxes):
        raise InputError(key, f"training boxes must be snakescope.io.boxes.Boxes, got {type(boxes).__name__}")
    if len(boxes) and (boxes.classes.min() < 0 or boxes.classes.max() >= n_classes):
        raise InputError(key, f"class index {int(boxes.classes.max())} is beyond the {n_classes} class names")
    return image, boxes


def train_detector(data: Mapping, out_dir: str | Path, settings: Detection, *, class_names, split: Mapping,
                   seed: int, deterministic: bool = True, max_validation_patches: int = 64,
                   jit_compile: bool | str = "auto", verbose: int = 0) -> dict:
    """Train a detector on ``data`` ({key: (normalized 2D image, Boxes of that image)}) and
    write its model folder.

    ``class_names``: the names of the class indices. ``split``: {'train': [...],
    'validation': [...]} over the keys (e.g. :func:`snakescope.training.splits.make_or_load_split`).
    ``settings``: ``detection`` (architecture, patch size, epochs, steps, batch size,
    learning rate and its schedule, patience, augmentation, time limit).
    ``deterministic``: TensorFlow's deterministic kernels (same seed, same weights; slower).

    The folder is the harness's (config.json with the format, class names, architecture,
    the score threshold tuned on the validation images and the prediction grid and halo;
    weights_best.h5, weights_last.h5, training.csv/.png/.log, snakescope.json with the
    split's keys and the validation scores) plus ``split.json``. Returns the metadata.
    """
    data = {str(k): v for k, v in data.items()}
    if not data:
        raise InputError(out_dir, "no training images given")
    arch = architecture_for(settings.architecture, class_names)
    n_classes = arch["n_classes"]
    checked = {k: _check_item(k, x, b, n_classes) for k, (x, b) in data.items()}
    if not any(len(b) for _, b in checked.values()):
        raise InputError(out_dir, "no boxes in the training data")
    d = divisor(arch)
    patch = tuple(-(-int(p) // d) * d for p in np.broadcast_to(np.asarray(settings.patch_size, int), (2,)))

    import keras

    seed_everything(seed, deterministic)
    schedule = Schedule(epochs=int(settings.epochs), steps_per_epoch=int(settings.steps_per_epoch),
                        learning_rate=float(settings.learning_rate), lr_schedule=settings.lr_schedule,
                        patience=int(settings.patience), time_limit=settings.time_limit)
    with TrainingRun(out_dir, kind="detector", ndim=2, seed=seed, schedule=schedule) as run:
        folder = run.folder
        train_keys, val_keys, notes = train_validation_keys(split, checked, out_dir)
        for note in notes:
            log.warning("%s", note)
        write_json(folder / "split.json", {"train": train_keys, "validation": val_keys})
        intensity = dict(AUGMENT) if settings.augment else None
        batches = patch_batches([checked[k][0] for k in train_keys], [checked[k][1] for k in train_keys], patch,
                                int(settings.batch_size), n_classes, arch["grid"], seed, intensity=intensity,
                                augment=bool(settings.augment))
        Xv, Yv = validation_patches([checked[k][0] for k in val_keys], [checked[k][1] for k in val_keys], patch,
                                    n_classes, arch["grid"], max_validation_patches, seed)
        model = build_keras_model(arch)
        _start_at_mean_size(model, [checked[k][1] for k in train_keys])
        model.compile(optimizer=keras.optimizers.Adam(float(settings.learning_rate)),
                      loss=detection_loss(n_classes), jit_compile=jit_compile)
        model.fit(batches, steps_per_epoch=int(settings.steps_per_epoch), epochs=int(settings.epochs),
                  validation_data=(Xv, Yv), validation_batch_size=int(settings.batch_size), callbacks=run.callbacks(),
                  verbose=verbose, shuffle=False)
        metadata = run.finish(model, settings=settings.to_dict(),
                              data={"n_train": len(train_keys), "n_validation": len(val_keys), "train_keys": train_keys,
                                    "validation_keys": val_keys,
                                    "n_train_boxes": int(sum(len(checked[k][1]) for k in train_keys))},
                              extra={"patch_size": list(patch), "augment": intensity, "notes": notes},
                              title="Detector training")

        # the best weights (finish() loaded them) on the validation images
        detector = Detector(make_config(arch, class_names), model, folder)
        truths = [checked[k][1] for k in val_keys]
        predictions = [predict_boxes(detector, checked[k][0], score_thresh=MIN_SCORE, nms_iou=settings.nms_iou,
                                     where=k) for k in val_keys]
        counts = detection_counts(truths, predictions, SCORE_GRID)
        best = max(counts, key=lambda row: (row["f1"], -abs(row["score_thresh"] - 0.3)))
        scores = mean_average_precision(truths, predictions, class_names=detector.class_names)
        config = make_config(arch, class_names, best["score_thresh"])
        metadata["validation"] = {"map50": scores["map50"], "map50_95": scores["map50_95"],
                                  "per_class": scores["per_class"], "score_thresh": best["score_thresh"],
                                  "f1@0.5": best["f1"], "precision@0.5": best["precision"], "recall@0.5": best["recall"]}
        write_json(folder / CONFIG, config)
        write_json(folder / METADATA, metadata)
    log.info("detector trained: %d epochs, validation mAP@0.5 %.3f", metadata["training"]["epochs_run"],
             metadata["validation"]["map50"])
    return metadata
