"""The classifier network: the conv/pool stack or a ``keras.applications`` backbone, its
``config.json`` (all that rebuilds it), and transfer of weights from another classifier.

Transfer learning
-----------------
``pretrained_weights`` (a local file; nothing is ever downloaded) is either

* a previous snakescope classifier: its folder, or an ``.h5`` weights file next to its
  ``config.json``. Every layer of the new model whose name and weight shapes match is
  initialised from it (the final class layer only when the class names are identical), so
  a model trained on one data set can be fine-tuned on a few annotations of another
  (:func:`transfer_from_classifier`);
* with ``backbone="<name>"`` (any ``keras.applications`` model, e.g. ``"MobileNetV2"``,
  with ``backbone_kwargs`` such as ``{"alpha": 0.35}``): the weights of that backbone, built
  with ``weights=None, include_top=False`` and then ``load_weights(path)`` (e.g. the
  ``*_no_top.h5`` file of Keras' applications, copied to the cluster beforehand). One-channel
  patches are repeated to three channels, others mapped by a 1x1 convolution, and scaled to
  ``[-1, 1]``.

Layers frozen in training are listed in ``config.json`` (``frozen_layers``) and frozen again
when the model is rebuilt (:func:`rebuild_classifier`): the HDF5 weights file stores a
layer's trainable weights before its non-trainable ones, so a frozen backbone's weights are
in another order than an unfrozen one's.

Keras is imported inside the functions, so this module imports in every rule environment.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from snakescope.errors import InputError
from snakescope.training.harness import CONFIG, WEIGHTS_BEST, WEIGHTS_LAST, load_weights

__all__ = ["ARCHITECTURE_KEYS", "DEFAULT_DENSE", "DEFAULT_DROPOUT", "DEFAULT_FILTERS", "build_classifier",
           "classifier_class_names", "read_classifier_config", "rebuild_classifier", "transfer_from_classifier",
           "weights_file"]

DEFAULT_FILTERS = (32, 64, 128, 128)
DEFAULT_DENSE = (256, 128)
DEFAULT_DROPOUT = 0.5
ARCHITECTURE_KEYS = ("filters", "dense", "dropout", "batch_norm", "global_pool", "convs_per_block", "resize_to",
                     "backbone", "backbone_kwargs")


def build_classifier(
    input_shape: Sequence[int],
    n_classes: int,
    filters: Sequence[int] = DEFAULT_FILTERS,
    dense: Sequence[int] = DEFAULT_DENSE,
    dropout: float = DEFAULT_DROPOUT,
    *,
    batch_norm: bool = False,
    global_pool: bool = False,
    convs_per_block: int = 1,
    resize_to: int | Sequence[int] | None = None,
    backbone: str | None = None,
    backbone_kwargs: dict | None = None,
    backbone_weights: str | os.PathLike | None = None,
):
    """A Keras CNN classifier for patches ``input_shape`` = ``(Y, X, C)`` or ``(Z, Y, X, C)``.

    Default: the classic conv/pool stack, one 3x3 convolution (ReLU) and a 2x max pooling
    per block with ``filters`` = (32, 64, 128, 128) (depth = number of blocks), flatten,
    dense 256 and 128 (ReLU) each followed by dropout 0.5, then softmax. ZYX patches use 3D
    convolutions; an axis is pooled only while it is at least 2 long. Options:
    ``batch_norm`` (after each convolution), ``global_pool`` (global average pooling instead
    of flatten), ``convs_per_block``, ``resize_to`` (2D only: resize the input first, e.g. 64
    -> 48 for speed). ``backbone``: a ``keras.applications`` name replacing the conv stack
    (2D only), built with ``weights=None`` and loaded from ``backbone_weights`` if given.
    Layer names are fixed (``block{i}_conv{j}``, ``dense{i}``, ``classes``) so that weights
    transfer between models by name.
    """
    import keras
    from keras import layers

    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) not in (3, 4):
        raise InputError("input_shape", f"{input_shape}: expected (Y, X, C) or (Z, Y, X, C)")
    is3d = len(input_shape) == 4
    inputs = keras.Input(shape=input_shape, name="patch")
    x = inputs
    if resize_to is not None:
        if is3d:
            raise InputError("resize_to", "resizing is for 2D patches only")
        size = (int(resize_to),) * 2 if np.isscalar(resize_to) else tuple(int(s) for s in resize_to)
        x = layers.Resizing(*size, interpolation="bilinear", name="resize")(x)
    if backbone is not None:
        if is3d:
            raise InputError("backbone", "keras.applications backbones are 2D; 3D patches use the default stack")
        x = _backbone_features(x, backbone, backbone_kwargs or {}, backbone_weights)
    else:
        Conv = layers.Conv3D if is3d else layers.Conv2D
        Pool = layers.MaxPooling3D if is3d else layers.MaxPooling2D
        spatial = list(x.shape[1:-1])
        for i, f in enumerate(filters, start=1):
            for j in range(1, int(convs_per_block) + 1):
                x = Conv(int(f), 3, padding="same", use_bias=not batch_norm, name=f"block{i}_conv{j}")(x)
                if batch_norm:
                    x = layers.BatchNormalization(name=f"block{i}_bn{j}")(x)
                x = layers.Activation("relu", name=f"block{i}_relu{j}")(x)
            pool = tuple(2 if s >= 2 else 1 for s in spatial)
            if any(p > 1 for p in pool):
                x = Pool(pool_size=pool, padding="same", name=f"block{i}_pool")(x)
                spatial = [math.ceil(s / p) for s, p in zip(spatial, pool)]
        if global_pool:
            x = (layers.GlobalAveragePooling3D if is3d else layers.GlobalAveragePooling2D)(name="global_pool")(x)
        else:
            x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate(dense, start=1):
        x = layers.Dense(int(units), activation="relu", name=f"dense{i}")(x)
        if dropout:
            x = layers.Dropout(float(dropout), name=f"dropout{i}")(x)
    if not dense and dropout:
        x = layers.Dropout(float(dropout), name="dropout")(x)
    outputs = layers.Dense(int(n_classes), activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs, name="snakescope_classifier")


def _backbone_features(x, name: str, kwargs: dict, weights_path):
    import keras
    from keras import layers

    constructor = getattr(keras.applications, name, None)
    if constructor is None or not callable(constructor):
        raise InputError("backbone", f"{name!r} is not a keras.applications model")
    channels = int(x.shape[-1])
    if channels == 1:
        x = layers.Concatenate(name="to_rgb")([x, x, x])
    elif channels != 3:
        x = layers.Conv2D(3, 1, name="to_rgb")(x)
    x = layers.Rescaling(2.0, offset=-1.0, name="to_signed")(x)
    base = constructor(include_top=False, weights=None, input_shape=tuple(int(s) for s in x.shape[1:]),
                       pooling="avg", **kwargs)
    base.name = "backbone"
    if weights_path is not None:
        weights_path = Path(weights_path)
        if not weights_path.is_file():
            raise InputError(weights_path, "backbone weights file not found")
        try:
            base.load_weights(str(weights_path))
        except (ValueError, OSError, KeyError) as exc:
            raise InputError(weights_path, f"cannot load these weights into {name}({kwargs}) without top: {exc}") from None
    return base(x)


# ---------------------------------------------------------------------------------------
# A trained classifier's folder


def read_classifier_config(folder) -> dict:
    """A classifier folder's ``config.json`` (no Keras)."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise InputError(folder, f"not a classifier folder: {CONFIG} is missing")
    try:
        config = json.loads(path.read_text())
        config["class_names"] = [str(c) for c in config["class_names"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(path, f"not a snakescope classifier config ({exc})") from None
    return config


def classifier_class_names(folder) -> list[str]:
    """The class names of a trained classifier folder, from its ``config.json`` (no Keras)."""
    return read_classifier_config(folder)["class_names"]


def weights_file(folder, weights: str = "best") -> Path:
    """``weights_best.h5`` (``"best"``), ``weights_last.h5`` (``"last"``) or the file
    ``weights`` names; an :class:`InputError` when it is missing."""
    path = {"best": Path(folder) / WEIGHTS_BEST, "last": Path(folder) / WEIGHTS_LAST}.get(weights, Path(weights))
    if not path.is_file():
        raise InputError(path, "classifier weights not found")
    return path


def rebuild_classifier(config: dict, weights_path=None):
    """The Keras model ``config`` (a classifier's ``config.json``) describes, its frozen
    layers frozen again, with the weights of ``weights_path`` if given."""
    architecture = {k: config["architecture"][k] for k in ARCHITECTURE_KEYS if k in config["architecture"]}
    model = build_classifier(config["input_shape"], len(config["class_names"]), **architecture)
    for name in config.get("frozen_layers", []):
        model.get_layer(name).trainable = False
    if weights_path is not None:
        load_weights(model, weights_path)
    return model


def transfer_from_classifier(model, source, class_names: Sequence[str]) -> list[str]:
    """Copy the weights of same-named, same-shaped layers from a saved snakescope classifier
    (its folder: the best weights; or a weights file next to its ``config.json``) into
    ``model``; the class layer only when the class names are the same. Returns the names of
    the layers copied."""
    source = Path(source)
    folder, weights = (source, source / WEIGHTS_BEST) if source.is_dir() else (source.parent, source)
    if not (folder / CONFIG).is_file() or not weights.is_file():
        raise InputError(source, f"not a snakescope classifier: needs {CONFIG} and an .h5 weights file")
    config = read_classifier_config(folder)
    donor_layers = {layer.name: layer for layer in rebuild_classifier(config, weights).layers}
    copied = []
    for layer in model.layers:
        other = donor_layers.get(layer.name)
        if other is None or not layer.weights:
            continue
        if layer.name == "classes" and config["class_names"] != [str(c) for c in class_names]:
            continue
        values = other.get_weights()
        if [w.shape for w in values] != [tuple(w.shape) for w in layer.weights]:
            continue
        layer.set_weights(values)
        copied.append(layer.name)
    if not copied:
        raise InputError(source, "no layer of this classifier matches the new model (different architecture or input)")
    return copied
