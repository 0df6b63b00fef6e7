"""What each learner's model folder becomes in a bioimage.io package: the network as one
Keras model (one channels-last input, one output), its tensors and processing steps in the
bioimage.io model spec 0.5, and the workflow's own prediction that makes the test output.

One :class:`Exportable` per learner, made by :func:`exportable` from a model folder with the
workflow's own loaders, so a package predicts what the workflow predicts:

* ``stardist``: the U-Net's probability and distances concatenated on the network's grid
  (``prob_dist``, as StarDist's own export), turned into instance labels by the spec's
  ``stardist_postprocessing`` (StarDist's NMS with the model's tuned thresholds), and the
  ``config.stardist`` section (configuration, thresholds, weights file) that
  ``stardist.import_bioimageio`` reads;
* ``unet``: the three class probabilities (background, contour, body); the seeded
  watershed that makes instances is the workflow's and is described in the documentation;
* ``care`` and ``n2v``: the restored image; N2V's own mean/deviation normalization and its
  inverse are the fixed ``zero_mean_unit_variance`` and ``scale_linear`` steps, as n2v's
  export writes them;
* ``classifier``: class probabilities of a fixed-size patch, normalized per patch as the
  classifier's training did (``scale_range``).

Images reach the segmentation and restoration networks normalized by the workflow's
``normalize`` stage; :func:`normalization_steps` states that normalization as
preprocessing (``scale_range``/``zero_mean_unit_variance`` per sample) and
:func:`apply_normalization` computes it exactly as bioimage.io runners do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from snakescope.errors import InputError
from snakescope.training.harness import CONFIG, METADATA, WEIGHTS_BEST, read_metadata

__all__ = ["EPSILON", "Exportable", "KINDS", "apply_normalization", "exportable", "normalization_steps"]

#: The learners a package can be written for (``kind`` in snakescope.json).
KINDS = ("stardist", "unet", "care", "n2v", "classifier")
#: The ``eps`` of the spec's normalization steps (bioimage.io's default).
EPSILON = 1e-6
#: StarDist's smallest ray distance in prediction (``StarDistBase._predict_instances``' ``_prep``).
MIN_DISTANCE = 1e-3
SPATIAL = "zyx"

CITATIONS = {
    "stardist2d": {"text": "Schmidt, Weigert, Broaddus, Myers. Cell Detection with Star-Convex Polygons. MICCAI 2018.",
                   "doi": "10.1007/978-3-030-00934-2_30"},
    "stardist3d": {"text": "Weigert, Schmidt, Haase, Sugawara, Myers. Star-convex Polyhedra for 3D Object Detection "
                           "and Segmentation in Microscopy. WACV 2020.", "doi": "10.1109/WACV45572.2020.9093435"},
    "unet": {"text": "Ronneberger, Fischer, Brox. U-Net: Convolutional Networks for Biomedical Image Segmentation. "
                     "MICCAI 2015.", "doi": "10.1007/978-3-319-24574-4_28"},
    "care": {"text": "Weigert et al. Content-aware image restoration: pushing the limits of fluorescence microscopy. "
                     "Nature Methods 15, 1090-1097 (2018).", "doi": "10.1038/s41592-018-0216-7"},
    "n2v": {"text": "Krull, Buchholz, Jug. Noise2Void - Learning Denoising From Single Noisy Images. CVPR 2019.",
            "doi": "10.1109/CVPR.2019.00223"},
    "cnn": {"text": "LeCun, Bottou, Bengio, Haffner. Gradient-based learning applied to document recognition. "
                    "Proceedings of the IEEE 86, 2278-2324 (1998).", "doi": "10.1109/5.726791"},
    "n2v2": {"text": "Hoeck et al. N2V2 - Fixing Noise2Void Checkerboard Artifacts with Modified Sampling Strategies "
                     "and a Tweaked Network Architecture. ECCV Workshops 2022.", "doi": "10.1007/978-3-031-25069-9_33"},
}


@dataclass
class Exportable:
    """A model folder ready to be packaged (see the module docstring).

    ``network``: the Keras model written as weights (input ``(batch, *spatial, channel)``).
    ``sizes``: per spatial axis ``(min, step)`` (step 0: a fixed size). ``halo``: per spatial
    axis, context a tiled prediction should crop from each block's output. ``predict``: the
    workflow's prediction of a batch ``(1, *spatial, channel)``, already normalized unless
    ``own_normalization`` (the classifier normalizes its raw patches itself). ``output``:
    id, description, channel names (None: no spatial axes, one value per channel), dtype,
    value range and postprocessing of the output tensor.
    """

    kind: str
    ndim: int
    network: Any
    sizes: list[tuple[int, int]]
    input_channels: list[str]
    output: dict
    predict: Callable[[np.ndarray], np.ndarray]
    preprocessing: list[dict] = field(default_factory=list)
    halo: list[int] | None = None
    own_normalization: bool = False
    tags: list[str] = field(default_factory=list)
    cite: list[dict] = field(default_factory=list)
    title: str = ""
    usage: str = ""
    config: dict = field(default_factory=dict)
    attachments: list[str] = field(default_factory=list)
    training: dict = field(default_factory=dict)
    halo_reduced: dict = field(default_factory=dict)

    @property
    def spatial(self) -> str:
        return SPATIAL[-self.ndim:]

    def fit_input_shape(self, shape, where) -> tuple[int, ...]:
        """The largest input shape within ``shape`` (spatial) that the network accepts.

        The spec wants the smallest input to exceed twice the halo; where the test input is
        thinner than that (a few z planes and a deep U-Net), the halo declared along that
        axis shrinks to what it allows (``halo_reduced`` records it; whole-image prediction is
        unaffected, only a tiled prediction would then need the larger context).
        """
        out = []
        for i, (axis, n, (low, step)) in enumerate(zip(self.spatial, shape, self.sizes)):
            if step and n < low and self.halo and self.halo[i]:
                halo = max(0, (n - 1) // 2 // step * step)
                self.halo_reduced[axis] = (self.halo[i], halo)
                self.halo[i] = halo
                low = max(step, int(math.ceil((2 * halo + 1) / step) * step))
                self.sizes[i] = (low, step)
            if n < low:
                raise InputError(where, f"the test input is {n} px along {axis}; the network needs at least {low}")
            out.append(low + (n - low) // step * step if step else low)
        return tuple(out)


def exportable(model_dir: str | Path) -> Exportable:
    """The :class:`Exportable` of a model folder the workflow wrote (``kind`` in its
    snakescope.json), or of a published StarDist/N2V/CARE folder (told apart by its config)."""
    folder = Path(model_dir)
    if not (folder / CONFIG).is_file():
        raise InputError(folder, f"not a model folder ({CONFIG} missing)")
    kind = read_metadata(folder).get("kind") or _kind_from_config(folder)
    makers = {"stardist": _stardist, "unet": _unet, "care": _restoration, "n2v": _restoration,
              "classifier": _classifier}
    if kind not in makers:
        raise InputError(folder / METADATA, f"kind {kind!r} cannot be packaged (one of {', '.join(KINDS)})")
    item = makers[kind](folder)
    item.attachments = [name for name in (CONFIG, WEIGHTS_BEST, METADATA, "thresholds.json", "training.csv",
                                          "training.png") if (folder / name).is_file()]
    item.training = _training_details(read_metadata(folder))
    return item


def _kind_from_config(folder: Path) -> str | None:
    import json

    config = json.loads((folder / CONFIG).read_text())
    fmt = str(config.get("format", ""))
    if fmt.startswith("snakescope-unet/"):
        return "unet"
    if fmt.startswith("snakescope-classifier"):
        return "classifier"
    if "n_rays" in config:
        return "stardist"
    if any(k.startswith("n2v_") for k in config):
        return "n2v"
    return "care" if "unet_n_depth" in config else None


def _training_details(meta: dict) -> dict:
    """The spec's ``config.bioimageio.training`` from the harness's metadata."""
    settings, training = meta.get("settings") or {}, meta.get("training") or {}
    details = {"training_epochs": training.get("epochs_run"), "training_batch_size": settings.get("batch_size"),
               "initial_learning_rate": settings.get("learning_rate"),
               "learning_rate_schedule": (training.get("schedule") or {}).get("lr_schedule"),
               "loss_function": settings.get("loss"), "optimizer": "Adam" if settings else None}
    return {k: v for k, v in details.items() if v is not None}


# ---------------------------------------------------------------------------------------
# Normalization


def normalization_steps(normalize, axes: list[str]) -> list[dict]:
    """The workflow's ``normalize`` settings as bioimage.io preprocessing, per sample over
    ``axes`` (None: no step; the input is then the normalized image)."""
    if normalize is None:
        return []
    if normalize.method == "percentile":
        steps = [{"id": "scale_range", "kwargs": {"axes": axes, "min_percentile": float(normalize.low),
                                                  "max_percentile": float(normalize.high), "eps": EPSILON}}]
        if normalize.clip:
            steps.append({"id": "clip", "kwargs": {"min": 0.0, "max": 1.0}})
        return steps
    if normalize.method == "zscore":
        return [{"id": "zero_mean_unit_variance", "kwargs": {"axes": axes, "eps": EPSILON}}]
    raise InputError("normalize.method", f"{normalize.method!r} has no bioimage.io preprocessing")


def apply_normalization(x: np.ndarray, normalize) -> np.ndarray:
    """:func:`normalization_steps` applied to a batch ``(1, ...)`` as bioimage.io runners
    compute them (NumPy's linear percentiles, ``eps`` in the divisor)."""
    x = np.asarray(x, dtype=np.float32)
    if normalize is None:
        return x
    values = x.astype(np.float64)
    if normalize.method == "percentile":
        low, high = np.percentile(values, [normalize.low, normalize.high])
        out = (values - low) / (high - low + EPSILON)
        if normalize.clip:
            out = np.clip(out, 0.0, 1.0)
    else:
        out = (values - values.mean()) / (values.std() + EPSILON)
    return out.astype(np.float32)


# ---------------------------------------------------------------------------------------
# The learners


def _keras_output(tensor) -> np.ndarray:
    return np.asarray(tensor.numpy() if hasattr(tensor, "numpy") else tensor, dtype=np.float32)


def _parameterized(divisor, halo) -> list[tuple[int, int]]:
    """(min, step) per axis: multiples of the pooling grid, large enough for the halo."""
    return [(int(math.ceil((2 * h + 1) / d) * d), int(d)) for d, h in zip(divisor, halo)]


def _stardist(folder: Path) -> Exportable:
    import keras

    from snakescope.segmentation.stardist import load_model

    model = load_model(folder)
    config = model.config
    ndim = int(config.n_dim)
    if len(model.keras_model.outputs) != 2 or int(config.n_channel_in) != 1:
        raise InputError(folder, "only single-class StarDist models of one input channel can be packaged")
    spatial = SPATIAL[-ndim:]
    grid = [int(g) for g in config.grid]
    divisor = model._axes_div_by(spatial.upper())
    prob, dist = model.keras_model.outputs
    # StarDist's prediction uses the distances clamped to at least MIN_DISTANCE; the spec's
    # postprocessing does not clamp, so the network does: max(d, m) = relu(d - m) + m
    shifted = keras.layers.Rescaling(1.0, offset=-MIN_DISTANCE, name="dist_min_sub")(dist)
    clamped = keras.layers.Rescaling(1.0, offset=MIN_DISTANCE, name="dist_min_add")(
        keras.layers.ReLU(name="dist_min_relu")(shifted))
    prob_dist = keras.layers.Concatenate(axis=-1, name="prob_dist")([prob, clamped])
    network = keras.Model(model.keras_model.inputs, prob_dist, name="stardist_prob_dist")
    thresholds = dict(model.thresholds._asdict())
    kwargs = {"grid": grid, "prob_threshold": float(thresholds["prob"]), "nms_threshold": float(thresholds["nms"]),
              "n_rays": int(config.n_rays), "b": 2}
    if ndim == 3:
        kwargs["anisotropy"] = [float(a) for a in (config.anisotropy or (1.0, 1.0, 1.0))]

    def predict(x):
        out = _keras_output(network(x, training=False))[0]
        return stardist_labels(out[..., 0], out[..., 1:], kwargs, tuple(x.shape[1:-1]))[None, ..., None]

    import json

    import stardist

    stardist_config = {"python_version": stardist.__version__, "thresholds": thresholds, "weights": WEIGHTS_BEST,
                       "config": json.loads((folder / CONFIG).read_text())}
    usage = ("The output holds instance labels: StarDist's non-maximum suppression (bioimage.io's "
             "`stardist_postprocessing`, which needs the `stardist` package) turns the network's object "
             f"probability and {config.n_rays} ray distances on the grid {grid} into labels, with the "
             f"thresholds tuned on the validation images (probability {kwargs['prob_threshold']:.3g}, "
             f"NMS {kwargs['nms_threshold']:.3g}). `config.stardist` holds what "
             "`stardist.import_bioimageio` needs to load the model as a StarDist model.")
    return Exportable(
        kind="stardist", ndim=ndim, network=network, sizes=[(int(d), int(d)) for d in divisor],
        input_channels=["intensity"],
        output={"id": "labels", "description": "instance labels (0: background)", "channels": ["instance"],
                "dtype": "int32", "postprocessing": [{"id": "stardist_postprocessing", "kwargs": kwargs}]},
        predict=predict, tags=["stardist", "instance-segmentation", "nuclei"],
        cite=[CITATIONS[f"stardist{ndim}d"]], title=f"StarDist {ndim}D", usage=usage,
        config={"stardist": stardist_config})


def stardist_labels(prob: np.ndarray, dist: np.ndarray, kwargs: dict, shape) -> np.ndarray:
    """Instance labels (int32) from StarDist's probability and distances on the grid, as the
    spec's ``stardist_postprocessing`` computes them (StarDist's dense NMS)."""
    from stardist import non_maximum_suppression, polygons_to_label

    grid = tuple(kwargs["grid"])
    common = {"grid": grid, "prob_thresh": kwargs["prob_threshold"], "nms_thresh": kwargs["nms_threshold"],
              "b": kwargs["b"]}
    if len(grid) == 2:
        points, probi, disti = non_maximum_suppression(dist, prob, **common)
        return polygons_to_label(disti, points, prob=probi, shape=shape).astype(np.int32)
    from stardist import Rays_GoldenSpiral, non_maximum_suppression_3d, polyhedron_to_label
    from stardist.matching import relabel_sequential

    rays = Rays_GoldenSpiral(kwargs["n_rays"], anisotropy=tuple(kwargs["anisotropy"]))
    points, probi, disti = non_maximum_suppression_3d(dist, prob, rays, **common)
    labels = polyhedron_to_label(disti, points, rays=rays, prob=probi, shape=shape, overlap_label=None)
    return relabel_sequential(labels)[0].astype(np.int32)


def _unet(folder: Path) -> Exportable:
    from snakescope.segmentation.unet import load_unet, predict_probabilities
    from snakescope.segmentation.unet.network import divisor, receptive_field_radius, round_up

    unet = load_unet(folder)
    arch = unet.architecture
    div = divisor(arch)
    halo = [round_up(h, d) for h, d in zip(receptive_field_radius(arch), div)]

    def predict(x):
        return predict_probabilities(unet, x[0, ..., 0], block_shape=None)[None]

    post = unet.postprocessing
    usage = ("The output holds, per pixel, the probabilities of background, object contour and object body. "
             "Instances are the connected regions of body probability above "
             f"{post['body_threshold']:g} (seeds of at least {post['min_seed_size']} px), grown by a watershed on "
             f"the body probability within the foreground (1 - background above {post['foreground_threshold']:g}); "
             f"objects under {post['min_size']} px are removed. These thresholds were tuned on the validation "
             "images and are in `config.snakescope.postprocessing`.")
    title = f"three-class U-Net {unet.ndim}D"
    if unet.types:  # a typed U-Net: background, then each type's contour and body
        usage = usage.replace("background, object contour and object body",
                              f"background and each cell type's ({', '.join(unet.types)}) object contour and body "
                              "(channels in that order)").replace("the body probability", "the body probability "
                                                                  "(the types' bodies summed)")
        usage += " Each object's type is the one most of its pixels have."
        title = f"typed U-Net {unet.ndim}D ({', '.join(unet.types)})"
    return Exportable(
        kind="unet", ndim=unet.ndim, network=unet.keras_model, sizes=_parameterized(div, halo), halo=halo,
        input_channels=["intensity"],
        output={"id": "probabilities", "description": "class probabilities per pixel",
                "channels": list(unet.class_names), "dtype": "float32", "range": [0.0, 1.0]},
        predict=predict, tags=["unet", "semantic-segmentation", "instance-segmentation"],
        cite=[CITATIONS["unet"], CITATIONS["care"]], title=title, usage=usage,
        config={"snakescope": {"postprocessing": post}})


def _restoration(folder: Path) -> Exportable:
    from snakescope.restoration.models import load_model

    loaded = load_model(folder)
    info, kind, ndim = loaded.info, loaded.kind, loaded.ndim
    config = info["config"]
    if config.get("probabilistic"):
        raise InputError(folder, "probabilistic CARE models (mean and scale outputs) cannot be packaged")
    fn = loaded.predict_fn()

    def predict(x):
        return fn(x[..., 0])[..., None]

    preprocessing, postprocessing, cite = [], [], [CITATIONS["care"]]
    if kind == "n2v":
        mean, std = float(config["means"][0]), float(config["stds"][0])
        preprocessing = [{"id": "fixed_zero_mean_unit_variance", "kwargs": {"mean": mean, "std": std}}]
        postprocessing = [{"id": "scale_linear", "kwargs": {"gain": std, "offset": mean}}]
        cite = [CITATIONS["n2v"]] + ([CITATIONS["n2v2"]] if config.get("blurpool") else [])
    align, halo = int(info["align"]), int(info["halo"])
    name = "Noise2Void" if kind == "n2v" else "CARE"
    usage = (f"The output is the restored image ({name}), in the intensity units of the normalized input."
             + (" The network sees the input standardized by the training patches' mean and deviation and "
                "its output is scaled back (the fixed pre- and postprocessing steps)." if kind == "n2v" else ""))
    return Exportable(
        kind=kind, ndim=ndim, network=loaded.model.keras_model, sizes=_parameterized([align] * ndim, [halo] * ndim),
        halo=[halo] * ndim, input_channels=["intensity"],
        output={"id": "restored", "description": "restored image", "channels": ["restored"], "dtype": "float32",
                "postprocessing": postprocessing},
        predict=predict, preprocessing=preprocessing,
        tags=["denoising", "restoration", "n2v" if kind == "n2v" else "care", "csbdeep"], cite=cite,
        title=f"{name} {ndim}D", usage=usage)


def _classifier(folder: Path) -> Exportable:
    from snakescope.classification.predict import load_classifier

    clf = load_classifier(folder)
    config = clf.config
    shape = [int(s) for s in config["input_shape"]]
    ndim = len(shape) - 1
    n_channels, frames = int(config.get("n_channels", 1)), 2 * clf.time_window + 1
    channel_names = [f"frame{f - clf.time_window:+d}_channel{c}" for f in range(frames) for c in range(n_channels)]
    norm = config["normalize"]
    spatial = list(SPATIAL[-ndim:])
    preprocessing = []
    if norm["method"] == "percentile":
        if n_channels > 1 and frames > 1:
            raise InputError(folder, "a classifier of several channels with a time window normalizes each channel over "
                                     "its frames, which bioimage.io preprocessing cannot state")
        axes = spatial + (["channel"] if n_channels == 1 else [])
        preprocessing = [{"id": "scale_range", "kwargs": {"axes": axes, "min_percentile": float(norm["low"]),
                                                          "max_percentile": float(norm["high"]), "eps": EPSILON}}]

    def predict(x):
        return clf.predict_raw(x)

    usage = (f"The input is a patch of {' x '.join(map(str, shape[:-1]))} px centred on an object "
             f"({frames} frame(s) of {n_channels} channel(s) as channels); the output holds the probability of "
             f"each class ({', '.join(clf.class_names)}). Patches are normalized one by one (percentiles "
             f"{norm['low']:g} and {norm['high']:g}), as in training.")
    return Exportable(
        kind="classifier", ndim=ndim, network=clf.model, sizes=[(s, 0) for s in shape[:-1]],
        input_channels=channel_names,
        output={"id": "class_probabilities", "description": "probability of each class",
                "channels": None, "classes": list(clf.class_names), "dtype": "float32", "range": [0.0, 1.0]},
        predict=predict, preprocessing=preprocessing, own_normalization=True,
        tags=["classification", "cnn"], cite=[CITATIONS["cnn"]], title=f"object classifier {ndim}D", usage=usage,
        config={"snakescope": {"class_names": list(clf.class_names), "time_window": clf.time_window,
                               "normalize": norm}})
