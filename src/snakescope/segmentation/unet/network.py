"""The U-Net's network: its architecture (defaults filled in per dimensionality),
the Keras model (csbdeep's ``custom_unet`` with a softmax), the pooling grid and receptive
field that blockwise prediction needs, and the loaded model (:class:`UNet`, :func:`load_unet`).

The model folder is the training harness's (:mod:`snakescope.training.harness`);
``config.json`` holds what rebuilding the network needs (format, classes, the cell types of
a typed U-Net, architecture, post-processing thresholds, prediction grid and halo).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from snakescope.errors import InputError
from snakescope.segmentation.unet.targets import CLASS_NAMES
from snakescope.training.harness import CONFIG, load_network

__all__ = ["ARCHITECTURE_KEYS", "DEFAULT_POSTPROCESSING", "FORMAT", "UNet", "architecture_for",
           "build_keras_model", "divisor", "load_unet", "receptive_field_radius"]

#: The config.json format; /1 (best.weights.h5, Keras 3 weights) folders predate the harness.
FORMAT = "snakescope-unet/2"

#: The architecture settings (``segmentation.unet.architecture``; defaults in the schema).
ARCHITECTURE_KEYS = ("n_depth", "n_filter_base", "kernel_size", "pool_size", "n_conv_per_depth", "batch_norm",
                     "dropout")
#: Post-processing of a model whose config.json leaves them out (training tunes the thresholds).
DEFAULT_POSTPROCESSING = {
    "body_threshold": 0.5,
    "foreground_threshold": 0.5,
    "min_seed_size": 3,
    "min_size": 8,
    "seed_erosion": 0,
}


def per_axis(value, ndim: int) -> tuple[int, ...]:
    """A size given once for every axis, or one per axis, as one per axis."""
    if np.isscalar(value):
        return (int(value),) * ndim
    value = tuple(int(v) for v in value)
    if len(value) != ndim:
        raise InputError("unet", f"{value} has {len(value)} entries for a {ndim}D network")
    return value


def architecture_for(ndim: int, architecture: Mapping, n_classes: int = len(CLASS_NAMES)) -> dict:
    """The full architecture (sizes per axis) of a ``ndim``-D U-Net from the settings', with
    ``n_classes`` outputs (2K + 1 for K cell types)."""
    arch = dict(architecture)
    if set(arch) != set(ARCHITECTURE_KEYS):
        raise InputError("unet.architecture", f"needs exactly {', '.join(ARCHITECTURE_KEYS)} (got {sorted(arch)})")
    arch["kernel_size"] = list(per_axis(arch["kernel_size"], ndim))
    arch["pool_size"] = list(per_axis(arch["pool_size"], ndim))
    if any(k % 2 == 0 for k in arch["kernel_size"]):
        raise InputError("unet.kernel_size", f"{arch['kernel_size']}: kernel sizes must be odd")
    arch["ndim"] = ndim
    arch["n_channel_in"] = 1
    arch["n_classes"] = int(n_classes)
    return arch


def build_keras_model(architecture: Mapping):
    """A csbdeep U-Net with a softmax over its classes; input (None, ..., 1)."""
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


def round_up(value: int, multiple: int) -> int:
    """``value`` rounded up to a multiple of ``multiple`` (the pooling grid)."""
    return int(math.ceil(value / multiple) * multiple)


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
    def class_names(self) -> tuple[str, ...]:
        """Its pixel classes: background, contour, body; or per cell type (typed U-Net)."""
        return tuple(self.config.get("classes", CLASS_NAMES))

    @property
    def types(self) -> list[str]:
        """The cell types of a typed U-Net ([] for the three-class one)."""
        return list(self.config.get("types", []))

    @property
    def postprocessing(self) -> dict:
        return {**DEFAULT_POSTPROCESSING, **self.config.get("postprocessing", {})}

    def predict_probabilities(self, image, block_shape="auto", halo=None, out=None, where="image"):
        from snakescope.segmentation.unet.predict import predict_probabilities

        return predict_probabilities(self, image, block_shape, halo, out=out, where=where)

    def predict_instances(self, image, block_shape="auto", halo=None, where="image", classes_out=None,
                          **postprocessing):
        from snakescope.segmentation.unet.predict import predict_instances

        return predict_instances(self, image, block_shape, halo, where=where, classes_out=classes_out,
                                 **postprocessing)


def load_unet(model_dir: str | Path, weights: str = "best") -> UNet:
    """Rebuild the network from ``config.json`` and load ``best`` (or ``last``) weights, to
    predict any number of images; InputError naming the folder or file that does not fit."""
    model_dir = Path(model_dir)
    config_file = model_dir / CONFIG
    if not config_file.exists():
        raise InputError(model_dir, "not a U-Net model folder (config.json missing)")
    config = json.loads(config_file.read_text())
    if config.get("format") != FORMAT:
        found = config.get("format")
        problem = (f"was trained by an older snakescope (format {found!r}, expected {FORMAT!r}): train it again"
                   if str(found).startswith("snakescope-unet/") else
                   f"not a snakescope U-Net model folder (config.json format {found!r}, expected {FORMAT!r})")
        raise InputError(model_dir, problem)
    model = load_network(model_dir, config, build_keras_model, weights)
    return UNet(config, model, model_dir)


def as_unet(model) -> UNet:
    """A loaded U-Net, or the one in a model folder."""
    if isinstance(model, UNet):
        return model
    if isinstance(model, (str, Path)):
        return load_unet(model)
    raise TypeError(f"expected a UNet or a model folder, got {type(model).__name__}")

