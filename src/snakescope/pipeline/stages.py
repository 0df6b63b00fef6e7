"""What each stage does for one sample: the steps the batch runner calls.

A step gets the sample's work (:class:`snakescope.pipeline.runner.SampleWork`), its spec
from the task (``inputs``, ``outputs``, ``options``: paths and values chosen by
:mod:`snakescope.pipeline.plan`) and the job's :class:`~snakescope.pipeline.runner.Context`
(typed config sections, threads, models loaded once). Each step is one call into the
package; :data:`STEPS` lists them with the config they read (part of their stamp).

Imports stay inside the steps: the restore stage runs in the n2v environment too (numpy
1.26, TensorFlow 2.15), where only the restoration modules are importable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from snakescope.errors import InputError

log = logging.getLogger("snakescope.stages")

__all__ = ["STEPS", "Step", "segment_part", "train"]


@dataclass(frozen=True)
class Step:
    """A step: its function and the config it reads (``section`` or ``section:key,key``;
    ``*`` for the whole config)."""

    name: str
    run: Callable
    reads: tuple[str, ...] = ()

    def settings_of(self, config: dict) -> dict:
        if "*" in self.reads:
            return config
        out = {}
        for spec in self.reads:
            section, _, keys = spec.partition(":")
            value = config.get(section, {})
            out[section] = {k: value.get(k) for k in keys.split(",")} if keys else value
        return out


# ---- prepare -------------------------------------------------------------------------------


def ingest(work, spec, ctx) -> None:
    """The sample's image (TIFF, CZI, ND2, LIF) -> exact OME-Zarr -> normalized OME-Zarr + statistics."""
    from snakescope.ingest.convert import ingest as convert
    from snakescope.ingest.normalize import normalize

    row, out = work.row, spec["outputs"]
    _check_channel(row, work)
    storage = ctx.section("ingest")
    convert(row["image"], row.get("axes"), out["image"], name=work.sample, voxel_size=row.get("voxel_size"),
            settings=storage, threads=ctx.threads, scene=row.get("scene"))
    normalize(out["image"], out["normalized"], out["stats"], settings=ctx.section("normalize"), storage=storage,
              threads=ctx.threads)


def _check_channel(row: dict, work) -> None:
    """The sheet's channel exists in the file (checked before anything is written)."""
    from snakescope.io.formats import open_image

    source = open_image(row["image"], row.get("axes"), row.get("scene"))
    n = source.shape[source.axes.upper().index("C")] if "C" in source.axes.upper() else 1
    if not 0 <= work.channel < n:
        raise InputError(source.where, f"channel {work.channel} of sample {work.sample} does not exist: the image has "
                                       f"{n} channel(s), numbered from 0")


def target(work, spec, ctx) -> None:
    """Ingest and normalize the sample's clean target like its image; the shapes must match."""
    import tempfile

    from snakescope.ingest.convert import ingest as convert
    from snakescope.ingest.normalize import normalize
    from snakescope.io import ngff

    row, out = work.row, spec["outputs"]
    storage = ctx.section("ingest")
    Path(out["image"]).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=Path(out["image"]).parent, prefix=".target-") as tmp:
        raw = Path(tmp) / "target.ome.zarr"
        axes = row.get("axes")
        try:
            convert(row["target"], axes, raw, name=f"{work.sample} target", voxel_size=row.get("voxel_size"),
                    settings=storage, threads=ctx.threads)
        except InputError:
            if not axes or "C" not in axes:
                raise
            convert(row["target"], axes.replace("C", ""), raw, name=f"{work.sample} target",  # one-channel target
                    voxel_size=row.get("voxel_size"), settings=storage, threads=ctx.threads)
        image, clean = ngff.read_image(spec["inputs"]["image"]), ngff.read_image(raw)
        strip = lambda im: {a: n for a, n in zip(im.axes, im.shape) if a != "c"}  # noqa: E731
        if strip(image) != strip(clean):
            raise InputError(row["target"], f"the clean target of sample {work.sample} has shape {strip(clean)}, its "
                                            f"image {row['image']} has {strip(image)}: they must match (channels aside)")
        normalize(raw, out["image"], out["stats"], settings=ctx.section("normalize"), storage=storage,
                  threads=ctx.threads)


# ---- restore -------------------------------------------------------------------------------


def restore(work, spec, ctx) -> None:
    from snakescope import restoration

    inputs, options = spec["inputs"], spec["options"]
    model = ctx.model(inputs["model"], lambda: restoration.load_model(model_folder(inputs["model"]), options["method"]))
    settings = ctx.section("restoration")
    restoration.predict(model, inputs["image"], spec["outputs"]["restored"], channel=work.channel,
                        block_shape=settings.block_shape, storage=ctx.section("ingest"), threads=ctx.threads,
                        tta=settings.tta)


# ---- segment -------------------------------------------------------------------------------


def model_folder(path: str) -> str:
    """A model folder, or a bioimage.io package (zip, or a folder with rdf.yaml) imported once
    into results/models/imported/ (under a name that changes with the package's bytes)."""
    from snakescope.exchange.bioimageio import RDF_NAMES

    source = Path(path)
    if not (source.suffix == ".zip" or any((source / name).is_file() for name in RDF_NAMES)):
        return path
    import hashlib

    from snakescope.exchange.bioimageio import import_package

    digest = hashlib.sha256(source.read_bytes() if source.is_file() else
                            b"".join(p.read_bytes() for p in sorted(source.rglob("*")) if p.is_file())).hexdigest()[:12]
    folder = Path("results/models/imported") / f"{source.stem}-{digest}"
    if not folder.is_dir():
        import_package(source, folder)
    return str(folder)


def _segmentation_model(ctx, folder: str):
    from snakescope import segmentation

    return ctx.model(folder, lambda: segmentation.load_model(model_folder(folder)))


def segment(work, spec, ctx) -> None:
    """Instance labels (labels.ome.zarr), predicted here or joined from scattered parts."""
    from snakescope import segmentation

    inputs, out = spec["inputs"], spec["outputs"]["labels"]
    settings = ctx.section("segmentation")
    if spec["options"]["n_parts"]:
        parts = [inputs[f"part{k}"] for k in range(spec["options"]["n_parts"])]
        segmentation.join_parts(parts, inputs["image"], out, channel=work.channel)
        return
    model = _segmentation_model(ctx, inputs["model"])
    segmentation.segment(model, inputs["image"], out, settings, channel=work.channel)


def measure(work, spec, ctx) -> None:
    """Per-object measurements and, where a classifier exists, each object's class."""
    from snakescope.segmentation.measure import measure_objects

    inputs = spec["inputs"]
    objects = measure_objects(inputs["labels"], inputs["image"], channel=work.channel)
    if inputs.get("classifier") and len(objects):
        from snakescope import classification
        from snakescope.io import ngff

        model = ctx.model(inputs["classifier"],
                          lambda: classification.load_classifier(model_folder(inputs["classifier"])))
        image = ngff.read_image(inputs["analysis"])
        channels = [work.channel] if "c" in image.axes else None
        objects = classification.classify_objects(model, image.data, image.axes, objects, channels=channels)
    _write_table(objects, spec["outputs"]["objects"])


def segment_part(task: dict, ctx) -> None:
    """One scatter part of a huge sample's segmentation (its own job)."""
    from snakescope import segmentation

    spec, options = task["step"], task["step"]["options"]
    model = _segmentation_model(ctx, spec["inputs"]["model"])
    segmentation.segment_part(model, spec["inputs"]["image"], spec["outputs"]["part"], ctx.section("segmentation"),
                              part=options["part"], n_parts=options["n_parts"], channel=options["channel"])


# ---- finish --------------------------------------------------------------------------------


def qc_restoration(work, spec, ctx) -> None:
    from snakescope.report.qc import restoration_before_after

    inputs = spec["inputs"]
    restoration_before_after(inputs["image"], inputs["restored"], spec["outputs"]["figure"],
                             target_path=inputs.get("target"), channel=work.channel, title=work.sample)


def evaluate_restoration(work, spec, ctx) -> None:
    import pandas as pd

    from snakescope.restoration import restoration_metrics

    inputs = spec["inputs"]
    metrics = restoration_metrics(inputs["image"], inputs["restored"], inputs["target"], channel=work.channel)
    _write_table(pd.DataFrame([{"sample": work.sample, **metrics}]), spec["outputs"]["metrics"], index=False)


def qc_segmentation(work, spec, ctx) -> None:
    from snakescope.report.qc import segmentation_overlay

    segmentation_overlay(spec["inputs"]["image"], spec["inputs"]["labels"], spec["outputs"]["figure"],
                         channel=work.channel, title=work.sample)


def export_boxes(work, spec, ctx) -> None:
    """The box of every segmented object as napari shapes and YOLO files (to train detectors),
    with the object's class (classifier) or cell type (typed U-Net) and its probability."""
    import pandas as pd

    from snakescope.io.boxes import export_label_boxes

    inputs = spec["inputs"]
    export_label_boxes(inputs["labels"], spec["outputs"]["napari"], spec["outputs"]["yolo"],
                       objects=pd.read_parquet(inputs["objects"]), type_names=spec["options"]["types"])


def detect(work, spec, ctx) -> None:
    """The box detector's boxes of every frame (results/<sample>/detections/)."""
    from snakescope.detection import detect as detect_boxes, load_detector

    inputs = spec["inputs"]
    model = ctx.model(inputs["detector"], lambda: load_detector(inputs["detector"]))
    detect_boxes(model, inputs["image"], spec["outputs"]["detections"], ctx.section("detection"), channel=work.channel)


def evaluate_detection(work, spec, ctx) -> None:
    """The detector's boxes against the sample's true boxes (mAP, precision, recall)."""
    from snakescope.evaluation.boxes import class_names_of, detection_scores

    inputs, out = spec["inputs"], spec["outputs"]
    table = detection_scores(inputs["truth"], inputs["image"], inputs["predicted"], out["truth"],
                             class_names_of(inputs["predicted"]), work.sample)
    _write_table(table, out["metrics"])


def evaluate_segmentation(work, spec, ctx) -> None:
    """Instance metrics against the ground truth; with the U-Net also its pixel classes (per
    cell type for a typed U-Net, against the sample's types)."""
    from snakescope.evaluation import segmentation_scores

    inputs, out = spec["inputs"], spec["outputs"]
    table, class_counts = segmentation_scores(inputs["labels"], inputs["truth"], sample=work.sample,
                                              classes="class_confusion" in out, types=inputs.get("types"))
    _write_table(table, out["metrics"], index=False)
    if class_counts is not None:
        from snakescope.evaluation.classes import write_class_scores
        from snakescope.io.labels import class_map_names

        write_class_scores({work.sample: class_counts}, class_map_names(inputs["labels"])[0], out["class_confusion"],
                           out["class_metrics"], out["class_plot"], title=f"U-Net pixel classes: {work.sample}",
                           total_name=None, percent_csv=out.get("class_percent"))


def evaluate_classification(work, spec, ctx) -> None:
    from snakescope import classification

    inputs, out = spec["inputs"], spec["outputs"]
    table, matrix, class_names = classification.evaluate_sample(inputs["truth"], inputs["labels"], inputs["objects"],
                                                                inputs["classifier"])
    table.insert(0, "sample", work.sample)
    _write_table(table, out["metrics"], index=False)
    classification.plot_object_confusion(matrix, class_names, table, out["figure"], title=work.sample)


def track(work, spec, ctx) -> None:
    from snakescope import tracking

    inputs, out = spec["inputs"], spec["outputs"]
    tracking.track_sample(inputs["labels"], inputs["image"], ctx.section("tracking"), channel=work.channel,
                          sample=work.sample, ctc=out["ctc"], table=out["table"], stats=out["stats"],
                          figure=out["figure"], napari=out["napari"], geff=out["geff"])


def evaluate_tracking(work, spec, ctx) -> None:
    from snakescope.io.atomic import write_json
    from snakescope.tracking.ctc import evaluate_ctc

    write_json(spec["outputs"]["metrics"], evaluate_ctc(spec["inputs"]["result"], spec["inputs"]["truth"]))


def provenance(work, spec, ctx) -> None:
    from snakescope.io.atomic import write_json
    from snakescope.report.provenance import record

    from snakescope.pipeline.plan import LABELS
    from snakescope.segmentation.rescale import applied_rescale

    repo = Path(__file__).resolve().parents[3]
    result = record(work.row, ctx.config, list(spec["inputs"].values()), repo)
    rescale = applied_rescale(Path(spec["outputs"]["record"]).parent / LABELS)  # what segment did, if it ran
    write_json(spec["outputs"]["record"], {**result, **({"segmentation_rescale": rescale} if rescale else {})})


def export_model(task: dict, ctx) -> None:
    """A trained model as a bioimage.io package; its test input is a crop of a training
    sample's raw image (first frame, its channel)."""
    import numpy as np

    from snakescope.exchange.bioimageio import export_package
    from snakescope.io import ngff
    from snakescope.io.frames import frames
    from snakescope.settings import Normalize

    test_input = None
    if task["test_image"] and task["learner"] != "classifier":  # the classifier's: a synthetic patch
        image = ngff.read_image(task["test_image"])
        _, index = next(iter(frames(image.axes, image.shape, task["channel"])))
        frame = image.data[index]
        crop = tuple(slice(max(0, (n - m) // 2), max(0, (n - m) // 2) + m)
                     for n, m in zip(frame.shape, (32, 256, 256)[-frame.ndim:]))
        test_input = np.asarray(frame[crop])
    pub = task["publication"]
    export_package(task["model"], task["package"], authors=pub["authors"], citation=pub["citation"],
                   license=pub["license"], description=pub["description"],
                   data={"description": pub["training_data"]} if pub["training_data"] else None,
                   test_input=test_input, normalize=Normalize.from_dict(task["normalize"]))


# ---- training ------------------------------------------------------------------------------


def train(task: dict, ctx) -> None:
    """A training job: the learner's model folder (and its curve, copied for the report)."""
    from snakescope.pipeline.training import train_model

    train_model(task, ctx)


def _write_table(table, path: str, index: bool = False) -> None:
    from snakescope.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        if str(path).endswith(".parquet"):
            table.to_parquet(tmp, index=index)
        else:
            table.to_csv(tmp, index=index)


PREDICTION = "segmentation:method,prob_thresh,nms_thresh,block_size,min_overlap,context,rescale"
DETECTION = "detection:score_thresh,nms_iou,block_size"

STEPS = {step.name: step for step in (
    Step("ingest", ingest, ("ingest", "normalize")),
    Step("target", target, ("ingest", "normalize")),
    Step("restore", restore, ("restoration:method,block_shape,tta", "ingest")),
    Step("segment", segment, (PREDICTION,)),
    Step("measure", measure),
    Step("qc_restoration", qc_restoration),
    Step("evaluate_restoration", evaluate_restoration),
    Step("qc_segmentation", qc_segmentation),
    Step("detect", detect, (DETECTION,)),
    Step("export_boxes", export_boxes),
    Step("evaluate_detection", evaluate_detection),
    Step("evaluate_segmentation", evaluate_segmentation),
    Step("evaluate_classification", evaluate_classification),
    Step("track", track, ("tracking",)),
    Step("evaluate_tracking", evaluate_tracking),
    Step("provenance", provenance, ("*",)),
)}
