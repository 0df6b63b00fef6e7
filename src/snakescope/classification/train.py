"""Training a classifier on labelled patches, through the shared training harness.

:func:`train_classifier` trains :func:`snakescope.classification.model.build_classifier`
with class weights or balanced sampling against class imbalance (:func:`class_weights`),
on-the-fly seeded augmentation (flips, 90 degree rotations, noise, out-of-focus blur, small
intensity changes), early stopping on the validation loss and a wall-clock budget
(:class:`snakescope.training.harness.TrainingRun`). The model folder has the harness'
layout (``weights_best.h5``, ``weights_last.h5``, ``training.csv``, ``training.png``,
``training.log``, ``snakescope.json``) plus the classifier's ``config.json`` (class names,
input shape, patch geometry, normalization, architecture: all that prediction needs), the
split (``split.csv``, when no ``split_path`` keeps it elsewhere) and, when the split has a
test part, the evaluation of the best weights on it under ``test/``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from snakescope.classification.metrics import evaluate
from snakescope.classification.model import (DEFAULT_DENSE, DEFAULT_DROPOUT, DEFAULT_FILTERS, build_classifier,
                                             read_classifier_config, transfer_from_classifier)
from snakescope.classification.patches import NORMALIZE_MODES, PERCENTILES, as_patch_array, normalize_patches
from snakescope.classification.predict import predict_probabilities
from snakescope.errors import InputError
from snakescope.io.atomic import write_json
from snakescope.settings import Classification
from snakescope.training.harness import CONFIG, METADATA, Schedule, TrainingRun, seed_everything
from snakescope.training.splits import (STRATIFIED_PARTS, make_or_load_stratified_split, stratified_split,
                                        write_stratified_split)

log = logging.getLogger(__name__)

__all__ = ["AUGMENT_BLUR", "AUGMENT_INTENSITY", "AUGMENT_NOISE", "IMBALANCE_MODES", "check_parent", "class_weights",
           "train_classifier"]

IMBALANCE_MODES = ("weights", "sampling", "none")
AUGMENT_NOISE = 0.05  # largest Gaussian noise sigma (patches are normalized to about [0, 1])
AUGMENT_BLUR = 0.2  # probability of an out-of-focus blur
AUGMENT_INTENSITY = 0.1  # largest gain / offset change
SPLIT = "split.csv"


def class_weights(labels: Sequence[str], class_names: Sequence[str]) -> dict[str, float]:
    """Inverse-frequency class weights normalized so that the mean weight per example is 1:
    ``w_c = N / (K * n_c)`` over the ``K`` classes present (absent classes get 0)."""
    labels = list(labels)
    counts = {c: labels.count(c) for c in class_names}
    present = [c for c in class_names if counts[c] > 0]
    total = len(labels)
    return {c: (total / (len(present) * counts[c]) if counts[c] else 0.0) for c in class_names}


def _augment(x: np.ndarray, rng: np.random.Generator, *, spatial_ndim: int, noise: float, blur: float,
             intensity: float) -> np.ndarray:
    """Augment a float batch (a new array): flips, 90 degree rotations (square YX),
    Gaussian noise, out-of-focus blur and a small gain/offset change, per sample."""
    from scipy import ndimage

    out = np.empty_like(x)
    y_axis, x_axis = spatial_ndim - 2, spatial_ndim - 1  # in a single sample (*spatial, C)
    square = x.shape[-3] == x.shape[-2]
    for i, sample in enumerate(x):
        s = sample
        if rng.random() < 0.5:
            s = np.flip(s, axis=y_axis)
        if rng.random() < 0.5:
            s = np.flip(s, axis=x_axis)
        k = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
        if k:
            s = np.rot90(s, k, axes=(y_axis, x_axis))
        s = np.array(s, dtype=np.float32)
        if blur and rng.random() < blur:
            sigma = [0.0] * s.ndim
            sigma[y_axis] = sigma[x_axis] = float(rng.uniform(0.5, 1.5))
            s = ndimage.gaussian_filter(s, sigma, mode="reflect")
        if intensity:
            s = s * np.float32(1 + rng.uniform(-intensity, intensity)) + np.float32(rng.uniform(-intensity, intensity))
        if noise and rng.random() < 0.5:
            s = s + rng.normal(0, rng.uniform(0, noise), s.shape).astype(np.float32)
        out[i] = s
    return out


def _make_sequence(x, y, weights, batch_size, seed, *, augment, sampling, spatial_ndim, noise, blur, intensity):
    import keras

    class PatchSequence(keras.utils.PyDataset):
        """Batches of (patches, one-hot classes, sample weights), reshuffled each epoch."""

        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.rng = np.random.default_rng(seed)
            self.order = self._order()

        def _order(self):
            n = len(x)
            if sampling:
                p = weights / weights.sum()
                return self.rng.choice(n, size=n, replace=True, p=p)
            return self.rng.permutation(n)

        def __len__(self):
            return max(1, math.ceil(len(x) / batch_size))

        def __getitem__(self, index):
            batch = self.order[index * batch_size:(index + 1) * batch_size]
            xb = x[batch]
            if augment:
                xb = _augment(xb, self.rng, spatial_ndim=spatial_ndim, noise=noise, blur=blur, intensity=intensity)
            w = np.ones(len(batch), np.float32) if sampling else weights[batch]
            return xb, y[batch], w

        def on_epoch_end(self):
            self.order = self._order()

    return PatchSequence()


def check_parent(source, input_shape: Sequence[int], time_window: int, class_names: Sequence[str], *,
                 resize_to=None) -> list[str]:
    """Check that the snakescope classifier ``source`` (its folder, or a weights file beside
    its config.json) can be fine-tuned on patches of ``input_shape`` (spatial shape, then
    channels x frames) with ``time_window`` and ``class_names``; return notes.

    InputError naming the folder when the time window, the channels or (unless either model
    resizes its input) the patch shape differ. Other classes than the parent's are no error:
    the new model gets a new class layer (noted), the rest is transferred.
    """
    source = Path(source)
    folder = source if source.is_dir() else source.parent
    config = read_classifier_config(folder)
    theirs, mine = [int(v) for v in config["input_shape"]], [int(v) for v in input_shape]
    problems = []
    if int(config.get("time_window", 0)) != int(time_window):
        problems.append(f"time window {config.get('time_window', 0)} (classification.time_window here: {time_window})")
    if theirs[-1] != mine[-1]:
        problems.append(f"{theirs[-1]} input channels (channels x frames; here {mine[-1]})")
    resized = resize_to or config.get("architecture", {}).get("resize_to")
    if theirs[:-1] != mine[:-1] and not resized:
        problems.append(f"patches of {theirs[:-1]} pixels (here {mine[:-1]}: set classification.patch_size to match)")
    if problems:
        raise InputError(folder, f"cannot be fine-tuned on these patches: it was trained on {'; '.join(problems)}")
    parent_classes = list(config["class_names"])
    if parent_classes == list(class_names):
        return []
    new = [c for c in class_names if c not in parent_classes]
    return [f"fine-tuning {folder}: its classes are {', '.join(parent_classes)}; "
            + (f"{', '.join(new)} {'is' if len(new) == 1 else 'are'} new, so " if new else "")
            + "a new class layer is trained on top of the transferred ones"]


def _check_labels(labels, n, class_names, sources) -> list[str]:
    labels = [str(c) for c in labels]
    if len(labels) != n:
        raise InputError("labels", f"{len(labels)} labels for {n} patches")
    unknown = [i for i, c in enumerate(labels) if c not in class_names]
    if unknown:
        i = unknown[0]
        where = sources[i] if sources is not None else "labels"
        row = f"row {i + 1}: " if sources is None else ""
        raise InputError(where, f"{row}unknown class {labels[i]!r}; the classes are {', '.join(class_names)}")
    if len(class_names) < 2:
        raise InputError("labels", f"need at least 2 classes to train a classifier, got {class_names}")
    return labels


def train_classifier(
    patches,
    labels: Sequence[str],
    out_dir,
    settings: Classification,
    *,
    seed: int,
    split_path=None,
    ids: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    pretrained_weights=None,
    freeze_pretrained: bool = False,
    filters: Sequence[int] = DEFAULT_FILTERS,
    dense: Sequence[int] = DEFAULT_DENSE,
    dropout: float = DEFAULT_DROPOUT,
    batch_norm: bool = False,
    global_pool: bool = False,
    convs_per_block: int = 1,
    resize_to=None,
    backbone: str | None = None,
    backbone_kwargs: dict | None = None,
    normalize: str = "percentile",
    percentiles: tuple[float, float] = PERCENTILES,
    noise: float = AUGMENT_NOISE,
    blur: float = AUGMENT_BLUR,
    intensity: float = AUGMENT_INTENSITY,
    lr_schedule: str = "constant",
    tta: bool = False,
) -> dict:
    """Train a classifier on labelled patches and write its model folder ``out_dir``.

    ``patches``: ``(N, Y, X[, C])`` or ``(N, Z, Y, X, C)`` raw patches (see
    :mod:`snakescope.classification.patches`; normalized here as ``normalize`` says), with
    ``2 * settings.time_window + 1`` frames per image channel; their spatial shape is the
    patch size recorded for prediction. ``labels``: one class name per patch;
    ``class_names`` fixes the class order (default sorted).

    From ``settings``: ``epochs``, ``batch_size``, ``learning_rate``, ``patience`` (early
    stopping after that many epochs without a better validation loss; 0: off),
    ``time_limit`` (wall-clock seconds), ``split_fractions``, ``time_window``, ``augment``
    (flips, 90 degree rotations, Gaussian noise up to sigma ``noise``, out-of-focus blur
    with probability ``blur``, gain/offset changes up to ``intensity``, seeded by ``seed``)
    and ``imbalance``: ``"weights"`` (inverse-frequency class weights, see
    :func:`class_weights`, on the training loss and on the validation loss early stopping
    watches), ``"sampling"`` (every training batch drawn with equal class probabilities;
    validation weighted alike) or ``"none"``. The loss and accuracy in ``training.csv`` are
    weighted as the training is: with ``"weights"`` or ``"sampling"`` the validation
    accuracy is a class-balanced accuracy, and early stopping and the best weights follow
    the class-balanced validation loss.

    The split is :func:`snakescope.training.splits.make_or_load_stratified_split` of
    ``split_path`` (reused when it exists; items matched by ``ids``, ``sources`` named
    when a class has too few examples) or, without ``split_path``, a new one saved in the
    model folder. ``lr_schedule``: ``constant`` or ``plateau`` (halve the learning rate when
    the validation loss stalls; see :class:`snakescope.training.harness.Schedule`).
    ``pretrained_weights``, ``freeze_pretrained``, ``backbone``: see
    :mod:`snakescope.classification.model`. ``tta`` averages the test predictions over
    flips and rotations.

    Returns the model's metadata (``snakescope.json``): the harness' record of the training
    plus ``classifier`` (class names and weights, augmentation, transfer) and ``test`` (the
    :func:`snakescope.classification.metrics.evaluate` metrics of the best weights on the
    test part, or None).
    """
    import keras

    if settings.imbalance not in IMBALANCE_MODES:
        raise InputError("imbalance", f"{settings.imbalance!r} is not one of {', '.join(IMBALANCE_MODES)}")
    if normalize not in NORMALIZE_MODES:
        raise InputError("normalize", f"{normalize!r} is not one of {', '.join(NORMALIZE_MODES)}")
    raw = as_patch_array(patches)
    all_labels = [str(c) for c in labels]
    class_names = [str(c) for c in (class_names if class_names is not None else sorted(set(all_labels)))]
    labels = _check_labels(all_labels, len(raw), class_names, sources)

    fractions = settings.split_fractions
    if split_path is not None:
        split = make_or_load_stratified_split(labels, split_path, fractions, seed, ids=ids, sources=sources)
    else:
        split = stratified_split(labels, fractions, seed, sources=sources)
    split = np.asarray(split).astype(str)
    parts = {name: np.flatnonzero(split == name) for name in STRATIFIED_PARTS}
    if not len(parts["train"]) or not len(parts["val"]):
        raise InputError("split", "training needs a non-empty train and validation part")

    time_window = int(settings.time_window)
    n_frames = 2 * time_window + 1
    if raw.shape[-1] % n_frames:
        raise InputError("time_window", f"{raw.shape[-1]} patch channels are not a multiple of {n_frames} frames")
    n_channels = raw.shape[-1] // n_frames
    x = normalize_patches(raw, method=normalize, low=percentiles[0], high=percentiles[1], n_channels=n_channels)
    index_of = {c: i for i, c in enumerate(class_names)}
    y = np.eye(len(class_names), dtype=np.float32)[np.array([index_of[c] for c in labels], dtype=np.int64)]
    weights_by_class = class_weights([labels[i] for i in parts["train"]], class_names)
    missing = [c for c in class_names if weights_by_class[c] == 0]
    if missing:
        raise InputError("labels", f"class(es) {', '.join(missing)} have no training example")
    if settings.imbalance == "none":
        weights_by_class = {c: 1.0 for c in class_names}
    sample_weights = np.array([weights_by_class[c] for c in labels], dtype=np.float32)

    tr, va, te = parts["train"], parts["val"], parts["test"]
    batch_size = int(settings.batch_size)
    schedule = Schedule(epochs=int(settings.epochs), steps_per_epoch=max(1, math.ceil(len(tr) / batch_size)),
                        learning_rate=float(settings.learning_rate), lr_schedule=lr_schedule,
                        patience=int(settings.patience), time_limit=settings.time_limit)
    from_classifier = pretrained_weights is not None and backbone is None
    spatial_ndim = x.ndim - 2
    transfer_notes = check_parent(pretrained_weights, x.shape[1:], time_window, class_names,
                                  resize_to=resize_to) if from_classifier else []
    with TrainingRun(out_dir, kind="classifier", ndim=spatial_ndim, seed=seed, schedule=schedule,
                     parent=pretrained_weights if from_classifier else None) as run:
        if split_path is None:
            write_stratified_split(run.folder / SPLIT, labels, split, fractions, seed, ids=ids)
        seed_everything(int(seed))
        architecture = {
            "filters": [int(f) for f in filters], "dense": [int(d) for d in dense], "dropout": float(dropout),
            "batch_norm": bool(batch_norm), "global_pool": bool(global_pool), "convs_per_block": int(convs_per_block),
            "resize_to": resize_to, "backbone": backbone, "backbone_kwargs": backbone_kwargs or {},
        }
        input_shape = tuple(int(s) for s in x.shape[1:])
        model = build_classifier(input_shape, len(class_names),
                                 backbone_weights=pretrained_weights if backbone is not None else None, **architecture)
        for note in transfer_notes:
            log.warning("%s", note)
        copied = transfer_from_classifier(model, Path(pretrained_weights), class_names) if from_classifier else []
        frozen = []
        if pretrained_weights is not None and freeze_pretrained:
            frozen = copied + (["backbone"] if backbone is not None else [])
        for name in frozen:
            model.get_layer(name).trainable = False
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=float(settings.learning_rate)),
                      loss="categorical_crossentropy", weighted_metrics=["accuracy"])
        write_json(run.folder / CONFIG, {
            "format": "snakescope-classifier",
            "version": 2,
            "class_names": class_names,
            "input_shape": list(input_shape),
            "patch_size": [int(s) for s in x.shape[1:-1]],
            "time_window": time_window,
            "n_channels": int(n_channels),
            "normalize": {"method": normalize, "low": float(percentiles[0]), "high": float(percentiles[1])},
            "architecture": architecture,
            "frozen_layers": frozen,
        })
        sequence = _make_sequence(x[tr], y[tr], sample_weights[tr], batch_size, int(seed), augment=settings.augment,
                                  sampling=settings.imbalance == "sampling", spatial_ndim=spatial_ndim, noise=noise,
                                  blur=blur, intensity=intensity)
        model.fit(sequence, validation_data=(x[va], y[va], sample_weights[va]), epochs=schedule.epochs,
                  callbacks=run.callbacks(), verbose=0)
        metadata = run.finish(
            model, title=f"classifier ({', '.join(class_names)})"[:120],
            settings=settings.to_dict(),
            data={"n_patches": len(labels), "n_train": len(tr), "n_val": len(va), "n_test": len(te),
                  "class_counts": {c: labels.count(c) for c in class_names},
                  "split": str(split_path) if split_path is not None else SPLIT},
            extra={"classifier": {"class_names": class_names, "class_weights": weights_by_class,
                                  "augmentation": {"noise": noise, "blur": blur, "intensity": intensity},
                                  "pretrained_weights": str(pretrained_weights) if pretrained_weights is not None else None,
                                  "pretrained_layers": len(copied), "frozen_layers": frozen,
                                  **({"transfer_notes": transfer_notes} if transfer_notes else {})},
                   "test": None})
        if len(te):  # finish() left the best weights in the model
            probabilities = predict_probabilities(model, x[te], tta=tta)
            predicted = [class_names[i] for i in probabilities.argmax(axis=1)]
            metadata["test"] = evaluate([labels[i] for i in te], predicted, class_names, run.folder / "test")
            write_json(run.folder / METADATA, metadata)
    return metadata
