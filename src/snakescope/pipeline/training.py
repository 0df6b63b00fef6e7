"""Training jobs: gather the training data a plan names, check every pair first, train.

Every training sample is checked before anything trains: a bad label file (wrong shape,
not integer, no object, unreadable), a sample that failed an earlier stage, or a missing
file is reported with its own line, and the model trains on the good ones (all reported
problems are recorded in the model's ``snakescope.json``). Only when no good sample is
left does the job fail.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from snakescope.errors import InputError

log = logging.getLogger("snakescope.training")

__all__ = ["train_model"]


def _failed_upstream(task: dict) -> dict[str, str]:
    failed = {}
    for path in task.get("upstream_manifests", []):
        if Path(path).is_file():
            for sid, entry in json.loads(Path(path).read_text())["samples"].items():
                if entry["status"] != "ok":
                    failed[sid] = entry.get("error") or entry.get("reason", entry["status"])
    return failed


def usable_sources(task: dict, load) -> tuple[list, list[str]]:
    """(loaded data of each usable source, problems): ``load(source)`` reads one training
    source and raises InputError on a bad one; every source is tried."""
    failed = _failed_upstream(task)
    loaded, problems = [], []
    for source in task["sources"]:
        if source["sample"] in failed:
            problems.append(f"sample {source['sample']}: left out of training, it failed earlier "
                            f"({failed[source['sample']]})")
            continue
        try:
            loaded.append(load(source))
        except InputError as exc:
            problems.append(str(exc))
    for problem in problems:
        log.error("training data problem: %s", problem)
    if not loaded:
        raise InputError(task["outputs"]["model"], f"no usable training data ({len(problems)} problem(s)): "
                                                   + "; ".join(problems))
    return loaded, problems


def train_model(task: dict, ctx) -> None:
    learner = task["learner"]
    trainer = {"stardist": _train_segmentation, "unet": _train_segmentation, "n2v": _train_restoration,
               "care": _train_restoration, "classifier": _train_classifier, "detector": _train_detector}[learner]
    trainer(task, ctx)
    if "curve" not in task["outputs"]:  # a sweep's candidate: its curves stay in its folder
        return
    curve = Path(task["outputs"]["model"]) / "training.png"
    from snakescope.io.atomic import atomic_path

    with atomic_path(task["outputs"]["curve"]) as tmp:
        shutil.copyfile(curve, tmp)


def _fine_tuning(task: dict) -> dict:
    """The keyword arguments that make a learner fine-tune the task's parent model."""
    if not task.get("parent"):
        return {}
    return {"parent": task["parent"], **({"freeze_encoder": True} if task["freeze_encoder"] else {})}


def _train_segmentation(task: dict, ctx) -> None:
    """StarDist or the U-Net from the labelled samples; the split is saved once and reused."""
    from snakescope.segmentation.training_data import TrainingSource, load_pairs, load_types
    from snakescope.settings import StarDistTraining, UNetTraining
    from snakescope.training.splits import make_or_load_split

    learner, seg = task["learner"], task["config"]["segmentation"]
    used, objects, types = [], {}, {}
    type_names = seg["unet"]["types"] if learner == "unet" and len(seg["unet"]["types"]) > 1 else []

    def pairs_of(source: dict) -> dict:
        _existing_image(source)
        data = TrainingSource(source["sample"], source["image"], source["labels"], source["channel"],
                              source.get("types"))
        pairs = load_pairs(data)
        if type_names:  # a typed U-Net: every object's type, checked with its sample
            from snakescope.segmentation.unet.types import object_type_image

            typed = load_types(data, type_names)
            for key, (_, labels) in pairs.items():
                object_type_image(labels, typed[key], len(type_names), where=f"{source['types']} ({key})")
            types.update(typed)
        used.append(source)
        objects[source["sample"]] = [y for _, y in pairs.values()]
        return pairs

    loaded, problems = usable_sources(task, pairs_of)
    pairs = {key: pair for part in loaded for key, pair in part.items()}
    split = make_or_load_split(pairs, task["split"], seg["validation_fraction"], task["seed"])
    out = task["outputs"]["model"]
    tuning = _fine_tuning(task)
    if learner == "stardist":
        from snakescope.segmentation.stardist import train_stardist

        train_stardist(pairs, out, StarDistTraining.from_dict(seg["stardist"]), split=split, seed=task["seed"],
                       **tuning)
    else:
        from snakescope.segmentation.unet import train_unet

        train_unet(pairs, out, UNetTraining.from_dict(seg["unet"]), split=split, seed=task["seed"],
                   types=types or None, **tuning)
    _record_data(out, used, problems, objects)
    if task["kind"] == "candidate":  # scored on the validation split for the sweep's choice
        from snakescope.training.sweep import record_validation_f1

        record_validation_f1(learner, out, pairs)


def _record_data(model_dir: str, sources: list[dict], problems: list[str], objects: dict | None = None) -> None:
    """Add the samples the model learnt from, the training-data problems and the pixel size
    of the samples (with ``objects``, {sample: label frames}, their median object size;
    :func:`snakescope.segmentation.rescale.training_scale`) to its snakescope.json."""
    from snakescope.io.atomic import write_json
    from snakescope.segmentation.rescale import SCALE_KEY, image_pixel_size, training_scale

    path = Path(model_dir) / "snakescope.json"
    meta = json.loads(path.read_text())
    meta["training_samples"] = [s["sample"] for s in sources]
    meta["data_problems"] = problems
    if sources:
        sizes = [image_pixel_size(s["image"]) for s in sources]
        meta[SCALE_KEY] = training_scale([(size, (objects or {}).get(s["sample"])) for size, s in zip(sizes, sources)],
                                         "".join(sizes[0]))
    write_json(path, meta)


def _existing_image(source: dict) -> dict:
    if not Path(source["image"]).is_dir():
        raise InputError(source["image"], f"the image of training sample {source['sample']} was not written")
    if source.get("target") and not Path(source["target"]).is_dir():
        raise InputError(source["target"], f"the clean target of training sample {source['sample']} was not written")
    return source


def _train_restoration(task: dict, ctx) -> None:
    """N2V (on the images themselves) or CARE (image -> clean target pairs)."""
    from snakescope import restoration
    from snakescope.settings import CARETraining, N2VTraining

    method, out = task["learner"], task["outputs"]["model"]
    settings = (N2VTraining if method == "n2v" else CARETraining).from_dict(task["config"]["restoration"][method])
    sources, problems = usable_sources(task, _existing_image)
    images = [restoration.as_source(s["image"], s["channel"], s["sample"]) for s in sources]
    common = dict(seed=task["seed"], ndim=task["ndim"], threads=ctx.threads, parent=task.get("parent"))
    if method == "n2v":
        restoration.train_n2v(images, out, settings, **common)
    else:
        restoration.train_care(images, [s["target"] for s in sources], out, settings, **common)
    _record_data(out, sources, problems)


def _train_classifier(task: dict, ctx) -> None:
    """Patches cut around the samples' point annotations and/or a folder of ready patches."""
    from snakescope import classification as cl
    from snakescope.io import ngff
    from snakescope.settings import Classification

    settings = Classification.from_dict({**task["config"]["classification"], "enabled": True, "model_2d": None,
                                         "model_3d": None})
    out = task["outputs"]["model"]

    def points(source: dict):
        image = ngff.read_image(_existing_image(source)["image"])
        channels = [source["channel"]] if "c" in image.axes else None
        return cl.training_patches_from_points(image.data, image.axes, source["points"], settings, channels=channels,
                                               sample=source["sample"])

    used = []

    def points_of(source: dict):
        part = points(source)
        used.append(source)
        return part

    parts, problems = usable_sources(task, points_of) if task["sources"] else ([], [])
    if task["patch_folder"]:
        shape = cl.patch_size_for(settings, task["ndim"]) if parts else None
        parts.append(cl.training_patches_from_folder(task["patch_folder"], settings, task["ndim"], spatial_shape=shape))
    data = cl.concatenate_patches(parts)
    tuning = {}
    if task.get("parent"):  # transfer from the given classifier (its convolutions; a new head if classes differ)
        tuning = {"pretrained_weights": task["parent"], "freeze_pretrained": task["freeze_encoder"]}
    cl.train_classifier(data.patches, data.labels, out, settings, seed=task["seed"], split_path=task["split"],
                        ids=data.ids, sources=data.sources, **tuning)
    if "confusion" in task["outputs"]:  # not for a sweep's candidate (the selection writes it)
        cl.write_training_confusion(out, task["outputs"]["confusion"])
    _record_data(out, used, problems)


def _train_detector(task: dict, ctx) -> None:
    """The box detector from the samples' boxes files, frame by frame; in a time-lapse only
    the frames with boxes train (an unannotated frame cannot be told from an empty one)."""
    import numpy as np

    from snakescope.detection import train_detector
    from snakescope.io import ngff
    from snakescope.io.boxes import read_boxes_file
    from snakescope.io.frames import frames
    from snakescope.settings import defaults
    from snakescope.training.splits import make_or_load_split

    config = task["config"]
    # the task holds only the training keys; the prediction keys, unused here, are the schema's
    settings = defaults().detection.replace(**config["detection"])
    names = settings.class_names

    def frames_of(source: dict) -> dict:
        image = ngff.read_image(_existing_image(source)["image"])
        shape = dict(zip(image.axes, image.shape))
        boxes = read_boxes_file(source["boxes"], (shape["y"], shape["x"]), class_names=names,
                                n_frames=shape.get("t", 1))
        found = {}
        for t, index in frames(image.axes, image.shape, source["channel"]):
            if t is None:
                found[source["sample"]] = (np.asarray(image.data[index], np.float32), boxes)
            elif np.any(boxes.frames == t):
                found[f"{source['sample']}:t{t}"] = (np.asarray(image.data[index], np.float32), boxes.frame(t))
        if not found:
            raise InputError(source["boxes"], f"no frame of sample {source['sample']} has a box to learn from")
        return found

    loaded, problems = usable_sources(task, frames_of)
    data = {key: item for part in loaded for key, item in part.items()}
    split = make_or_load_split(data, task["split"], config["validation_fraction"], task["seed"])
    out = task["outputs"]["model"]
    train_detector(data, out, settings, class_names=names, split=split, seed=task["seed"])
    _record_data(out, [s for s in task["sources"] if any(k.split(":")[0] == s["sample"] for k in data)], problems)
