"""The detector's network and its model folder.

A CenterNet-style head (Zhou et al., "Objects as Points", 2019) on the project's U-Net:
a strided ``grid`` x ``grid`` convolution (the stem) takes the image to the output
resolution, csbdeep's ``unet_block`` (the trunk of :mod:`snakescope.segmentation.unet`)
computes features there, and two 1x1 convolutions predict, per output cell, one heatmap
logit per class (a box centre lies in this cell) and four box numbers: the centre's offset
from the cell centre (in cells) and the log height and width (in pixels). The heatmap bias
starts at a prior of 0.01, as for focal-loss detectors; the box head starts at offset 0 and
the training boxes' mean size (its kernel zero, its bias set by training).

The model folder is the training harness's (:mod:`snakescope.training.harness`);
``config.json`` holds what rebuilding and using the network needs: format, class names,
architecture, score threshold, prediction divisor and halo.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from snakescope.errors import InputError
from snakescope.segmentation.unet.network import receptive_field_radius
from snakescope.training.harness import CONFIG, load_network

__all__ = ["ARCHITECTURE_KEYS", "BOX_CHANNELS", "DEFAULT_SCORE_THRESH", "FORMAT", "HEATMAP_PRIOR", "Detector",
           "architecture_for", "as_detector", "build_keras_model", "divisor", "halo", "load_detector", "make_config"]

FORMAT = "snakescope-detector/1"
#: The architecture settings (``detection.architecture``).
ARCHITECTURE_KEYS = ("grid", "n_depth", "n_filter_base", "kernel_size", "n_conv_per_depth")
#: Box numbers per output cell: centre offset (y, x) in cells, log height, log width (pixels).
BOX_CHANNELS = 4
#: Initial heatmap probability everywhere (focal-loss detectors start near "no object").
HEATMAP_PRIOR = 0.01
#: Score threshold of a model whose config.json has none (training tunes it).
DEFAULT_SCORE_THRESH = 0.3


def architecture_for(architecture: Mapping, class_names) -> dict:
    """The full architecture of a detector of ``class_names`` from the settings'."""
    arch = {k: architecture[k] for k in ARCHITECTURE_KEYS if k in architecture}
    if set(arch) != set(architecture) or len(arch) != len(ARCHITECTURE_KEYS):
        raise InputError("detection.architecture", f"needs exactly {', '.join(ARCHITECTURE_KEYS)} "
                                                   f"(got {sorted(architecture)})")
    arch = {k: int(v) for k, v in arch.items()}
    if arch["kernel_size"] % 2 == 0 or arch["kernel_size"] < 1:
        raise InputError("detection.architecture.kernel_size", f"{arch['kernel_size']}: must be odd")
    if min(arch["grid"], arch["n_depth"], arch["n_filter_base"], arch["n_conv_per_depth"]) < 1:
        raise InputError("detection.architecture", f"{arch}: grid, depth, filters and convolutions must be >= 1")
    names = [str(n) for n in class_names]
    if not names or len(set(names)) != len(names):
        raise InputError("detection.class_names", f"{names}: need at least one class and unique names")
    arch.update(ndim=2, n_channel_in=1, n_classes=len(names))
    return arch


def build_keras_model(architecture: Mapping):
    """Stem, csbdeep U-Net trunk and the heatmap + box heads; input (None, None, 1), output
    (None, None, n_classes + 4) at 1 / grid of the input's size (raw logits and box numbers)."""
    import keras
    from csbdeep.internals.blocks import unet_block

    grid, k = int(architecture["grid"]), int(architecture["kernel_size"])
    inp = keras.Input((None, None, 1), name="input")
    x = keras.layers.Conv2D(int(architecture["n_filter_base"]), grid, strides=grid, activation="relu", name="stem")(inp)
    x = unet_block(int(architecture["n_depth"]), int(architecture["n_filter_base"]), (k, k),
                   n_conv_per_depth=int(architecture["n_conv_per_depth"]), pool=(2, 2))(x)
    prior = -math.log((1 - HEATMAP_PRIOR) / HEATMAP_PRIOR)
    heat = keras.layers.Conv2D(int(architecture["n_classes"]), 1, name="heatmap",
                               bias_initializer=keras.initializers.Constant(prior))(x)
    # zero kernel: every cell starts at the box prior (offset 0, the bias's mean size), since
    # Adam moves a random start only about one learning rate per step
    box = keras.layers.Conv2D(BOX_CHANNELS, 1, name="box", kernel_initializer="zeros")(x)
    out = keras.layers.Concatenate(name="detections")([heat, box])
    return keras.Model(inp, out, name="detector")


def divisor(architecture: Mapping) -> int:
    """Image sizes (and block starts) must be multiples of grid * 2**n_depth."""
    return int(architecture["grid"]) * 2 ** int(architecture["n_depth"])


def halo(architecture: Mapping) -> int:
    """Context (pixels) around a block so that its cells and their neighbours (the peak test
    looks one cell around) see what they would see in the whole image: the trunk's receptive
    field (in cells) times the grid, the stem's extent and one cell, rounded up to the
    divisor."""
    grid = int(architecture["grid"])
    trunk = receptive_field_radius({"n_depth": architecture["n_depth"], "n_conv_per_depth": architecture["n_conv_per_depth"],
                                    "kernel_size": [architecture["kernel_size"]], "pool_size": [2]})[0]
    radius = trunk * grid + (grid - 1) + grid
    d = divisor(architecture)
    return int(math.ceil(radius / d) * d)


class Detector:
    """A loaded detector: its ``config.json`` and the Keras model with weights."""

    def __init__(self, config: dict, keras_model, model_dir: Path | None = None):
        self.config = config
        self.keras_model = keras_model
        self.model_dir = model_dir
        self._forward = None

    def predict(self, tile) -> np.ndarray:
        """The network's output (cells y, cells x, n_classes + 4) for one 2D tile whose sizes
        are multiples of :func:`divisor`: through one TensorFlow graph traced once for every
        tile size (an eager Keras call is several times slower on small images)."""
        if self._forward is None:
            import tensorflow as tf

            model = self.keras_model
            self._forward = tf.function(lambda x: model(x, training=False),
                                        input_signature=[tf.TensorSpec((None, None, None, 1), tf.float32)])
        return self._forward(np.asarray(tile, np.float32)[None, ..., None]).numpy()[0]

    @property
    def architecture(self) -> dict:
        return self.config["architecture"]

    @property
    def class_names(self) -> list[str]:
        return list(self.config["class_names"])

    @property
    def grid(self) -> int:
        return int(self.architecture["grid"])

    @property
    def score_thresh(self) -> float:
        return float(self.config.get("score_thresh") or DEFAULT_SCORE_THRESH)


def make_config(arch: Mapping, class_names, score_thresh: float | None = None) -> dict:
    """What config.json holds for a detector."""
    return {"format": FORMAT, "class_names": [str(n) for n in class_names], "architecture": dict(arch),
            "score_thresh": score_thresh, "prediction": {"divisor": divisor(arch), "halo": halo(arch)}}


def load_detector(model_dir: str | Path, weights: str = "best") -> Detector:
    """Rebuild the network from ``config.json`` and load ``best`` (or ``last``) weights;
    InputError naming the folder or file that does not fit."""
    model_dir = Path(model_dir)
    config_file = model_dir / CONFIG
    if not config_file.exists():
        raise InputError(model_dir, "not a detector model folder (config.json missing)")
    config = json.loads(config_file.read_text())
    if config.get("format") != FORMAT:
        raise InputError(model_dir, f"not a snakescope detector (config.json format {config.get('format')!r}, "
                                    f"expected {FORMAT!r})")
    model = load_network(model_dir, config, build_keras_model, weights)
    return Detector(config, model, model_dir)


def as_detector(model) -> Detector:
    """A loaded detector, or the one in a model folder."""
    if isinstance(model, Detector):
        return model
    if isinstance(model, (str, Path)):
        return load_detector(model)
    raise TypeError(f"expected a Detector or a model folder, got {type(model).__name__}")
