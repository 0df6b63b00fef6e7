"""Stage planning: from the config and the samples sheet, which samples go through which
stage, how they are batched, and what every job of the workflow reads and writes.

The Snakefile only wires what this module says (``workflow/rules/*.smk``), so the planning
is plain Python with unit tests (tests/test_plan.py).

Per-image work runs in **batches**: one job processes a list of samples in one process
(imports once, models loaded once). The samples sheet is cut into batches in its own
order, closing a batch at ``batching.max_samples`` samples or ``batching.max_gb`` of image
files, an image larger than that alone; so appending rows changes only the last batch
and adds new ones. Every per-image stage uses the same batches, restricted to the samples
that go through it; a batch with none of them plans no job.

Stages, in order (each one job per batch):

* ``prepare``: ingest and normalize the image, and the clean target when the sheet has one;
* ``restore``: N2V or CARE restoration (samples with a model for their dimensionality);
* ``segment``: segmentation, then measurements and, where a classifier exists, classes;
* ``finish``: QC figures, evaluations against ground truth, tracking, provenance.

Between them sit the training jobs (one per model) and, at the end, the gathered metrics,
the summary and the check that no sample failed.

Every job that does real work reads a **task** (``results/jobs/<job>.plan.json``): per
sample, its steps with their inputs, outputs and options, and the config sections the
stage reads. A job reruns when its task changes (its digest is the plan rule's parameter)
or a file it reads changes (raw images, ground truth, models); upstream stage outputs are
waited for but do not by themselves rerun it, since the task's digest already includes
the upstream stages' recipes. Inside a job, each sample's step is skipped when its outputs
exist and its stamp (inputs, options, settings) is unchanged (snakescope.pipeline.runner).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from snakescope.io.tiff import expand_image_path
from snakescope.settings import Config, Sample
from snakescope.training.sweep import apply_combination, combination_name, combinations

__all__ = ["STAGES", "Batch", "Job", "Plan", "digest_of", "manifest_path", "plan_path"]

STAGES = ("prepare", "restore", "segment", "finish")
RESULTS = "results"
JOBS = f"{RESULTS}/jobs"
#: Where the container image (envs/snakescope.def) holds the repository and its venvs.
IMAGE_ROOT = "/opt/snakescope"
#: A sample's segmentation: the NGFF labels group of its image (snakescope.io.labels).
LABELS = "image.ome.zarr/labels"
#: A sample's detector boxes (snakescope.detection.detect).
DETECTIONS = "detections"

#: Segmentation keys that change a trained model (a change retrains); the others only
#: change prediction.
SEGMENTATION_TRAINING_KEYS = ("method", "train_samples", "split_dir", "validation_fraction")
SEGMENTATION_PREDICTION_KEYS = ("method", "prob_thresh", "nms_thresh", "block_size", "min_overlap", "context",
                                "rescale")
#: Detection keys that only change prediction; the others (but the export switch) train.
DETECTION_PREDICTION_KEYS = ("score_thresh", "nms_iou", "block_size")
DETECTION_NOT_TRAINING = (*DETECTION_PREDICTION_KEYS, "export_boxes", "enabled", "model_2d")
#: Classification keys that only change prediction (none today) are left out of nothing:
#: every classification key but ``enabled`` and the model folders trains.
CLASSIFICATION_NOT_TRAINING = ("enabled", "model_2d", "model_3d")
#: Config sections that change how the work is run, not its results: provenance leaves
#: them out, so tuning them reruns nothing.
NOT_RESULTS = ("batching", "local_envs", "container", "resources")
#: Jobs whose first output is a model folder of results/models (a sweep's candidates are not).
MODEL_KINDS = ("train", "select")


def digest_of(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan_path(job: str) -> str:
    return f"{JOBS}/{job}.plan.json"


def manifest_path(stage: str, batch: str) -> str:
    return f"{JOBS}/{stage}-{batch}.done.json"


def sample_path(sample: str, name: str) -> str:
    return f"{RESULTS}/{sample}/{name}"


def existing_files(pattern: str | None) -> list[str]:
    """The files of a path, glob or folder that exist (a missing one fails its sample's step
    with the file named, not the planning of every sample)."""
    if not pattern:
        return []
    if Path(pattern).is_dir():
        return sorted(str(p) for p in Path(pattern).iterdir() if p.is_file())
    return [str(p) for p in expand_image_path(pattern) if p.is_file()]


def _file_stamp(path: str) -> list[int]:
    """(size, modification time in ns) of a file: what says it changed."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


@dataclass(frozen=True)
class Batch:
    id: str
    samples: tuple[str, ...]


@dataclass
class Job:
    """One job of the workflow: its task (the plan file) and the files it depends on."""

    name: str
    rule: str
    task: dict
    inputs: list[str] = field(default_factory=list)  # a change reruns the job
    after: list[str] = field(default_factory=list)  # waited for only (upstream stage manifests)
    outputs: list[str] = field(default_factory=list)
    digest: str = ""


class Plan:
    """The plan of one run: ``Plan(config, samples)`` with the validated config and the
    samples of the sheet in sheet order."""

    def __init__(self, config: Config, samples: dict[str, Sample]):
        self.config = config
        self.samples = samples
        self._ndim = {sid: s.spatial_ndim() for sid, s in samples.items()}
        # plain dicts and file lists, made once: planning 100,000 samples must stay fast
        fields = [f.name for f in dataclasses.fields(Sample)]
        self._rows = {sid: {f: getattr(s, f) for f in fields} for sid, s in samples.items()}
        self._existing: dict[str, list[str]] = {}
        self._checked: set[str] = set()

    def existing(self, pattern: str | None) -> list[str]:
        """:func:`existing_files`, remembered per pattern."""
        if pattern not in self._existing:
            self._existing[pattern] = existing_files(pattern)
        return self._existing[pattern]

    def raw_files(self, spec: dict) -> list[str]:
        """The user's files a step reads (images, ground truth, annotations)."""
        return [f for key in spec["raw"] for f in self.existing(spec["inputs"][key])]

    def external_files(self, spec: dict) -> list[str]:
        """The user's files and model folders a step reads: a change reruns its job."""
        return self.raw_files(spec) + [spec["inputs"][key] for key in spec["models"]]

    # ---- what happens to each sample ------------------------------------------------

    def ndim(self, sid: str) -> int:
        return self._ndim[sid]

    def of_ndim(self, ndim: int) -> list[Sample]:
        return [s for s in self.samples.values() if self._ndim[s.sample_id] == ndim]

    def _chosen(self, chosen, sid: str) -> bool:
        return chosen == "all" or sid in chosen

    @functools.cache
    def restoration_training_samples(self, ndim: int) -> tuple[str, ...]:
        r = self.config.restoration
        return tuple(s.sample_id for s in self.of_ndim(ndim)
                     if self._chosen(r.train_samples, s.sample_id) and (r.method != "care" or s.target))

    @functools.cache  # asked for every sample: 100,000 times a run
    def learner(self, kind: str, ndim: int) -> tuple[str | None, str | None]:
        """(the model a stage uses, the model it is trained from or None) for ``kind``
        (restoration, segmentation, classification) and a dimensionality.

        A model given in the config is fine-tuned on the samples with annotations (its
        ``fine_tune`` section) into results/models, or used as it is without them; with none
        given, one is trained from scratch where there are annotations; else there is none.
        """
        section = getattr(self.config, kind)
        method = {"classification": "classifier", "detection": "detector"}.get(kind) or section.method
        if method == "none" or (kind in ("classification", "detection") and not section.enabled):
            return None, None
        if kind == "detection" and ndim != 2:  # the detector takes 2D frames
            return None, None
        given = getattr(section, f"model_{ndim}d")
        data = {"restoration": self.restoration_training_samples, "segmentation": self.segmentation_training_samples,
                "classification": self.classifier_training_samples,
                "detection": self.detector_training_samples}[kind](ndim)
        if kind == "classification":
            data = data or getattr(section, f"patch_folder_{ndim}d")
        trained = f"{RESULTS}/models/{method}_{ndim}d"
        if given:  # the detector has no fine-tuning: a given one is used as it is
            tunes = data and kind != "detection" and section.fine_tune.enabled
            return (trained, given) if tunes else (given, None)
        return (trained, None) if data else (None, None)

    def restoration_model(self, ndim: int) -> str | None:
        return self.learner("restoration", ndim)[0]

    def restored(self, sid: str) -> bool:
        return (self._chosen(self.config.restoration.samples, sid)
                and self.restoration_model(self._ndim[sid]) is not None)

    def analysis_image(self, sid: str) -> str:
        """What segmentation, classification and tracking read: restored when restoration is on."""
        return sample_path(sid, "restored.ome.zarr" if self.restored(sid) else "normalized.ome.zarr")

    @functools.cache
    def segmentation_training_samples(self, ndim: int) -> tuple[str, ...]:
        """The labelled samples chosen for training (a typed U-Net's: those with types too)."""
        seg = self.config.segmentation
        typed = self.typed_unet(ndim)
        return tuple(s.sample_id for s in self.of_ndim(ndim)
                     if s.labels and (s.types or not typed) and self._chosen(seg.train_samples, s.sample_id))

    def typed_unet(self, ndim: int) -> bool:
        """Whether the U-Net of that dimensionality has cell types (segmentation.unet.types)."""
        seg = self.config.segmentation
        return seg.method == "unet" and len(seg.unet_for(ndim).types) > 1

    def pixel_classes_evaluated(self, sid: str) -> bool:
        """Whether the finish stage scores the sample's U-Net pixel classes: it has labels and,
        for a typed U-Net, the types of its objects."""
        s = self.samples[sid]
        return (self.config.segmentation.method == "unet" and bool(s.labels)
                and (bool(s.types) or not self.typed_unet(self._ndim[sid])))

    def segmentation_model(self, ndim: int) -> str | None:
        return self.learner("segmentation", ndim)[0]

    def segmented(self, sid: str) -> bool:
        return self.segmentation_model(self._ndim[sid]) is not None

    @functools.cache
    def classifier_training_samples(self, ndim: int) -> tuple[str, ...]:
        return tuple(s.sample_id for s in self.of_ndim(ndim) if s.points)

    def classifier_model(self, ndim: int) -> str | None:
        return self.learner("classification", ndim)[0]

    def classified(self, sid: str) -> bool:
        return self.segmented(sid) and self.classifier_model(self._ndim[sid]) is not None

    @functools.cache
    def detector_training_samples(self, ndim: int) -> tuple[str, ...]:
        return tuple(s.sample_id for s in self.of_ndim(ndim) if s.boxes) if ndim == 2 else ()

    def detector_model(self, ndim: int) -> str | None:
        return self.learner("detection", ndim)[0]

    def detected(self, sid: str) -> bool:
        return self.detector_model(self._ndim[sid]) is not None

    def time_lapse(self, sid: str) -> bool:
        axes = self.samples[sid].axes
        return axes is None or "T" in axes.upper()

    def tracked(self, sid: str) -> bool:
        return self.config.tracking.enabled and self.time_lapse(sid) and self.segmented(sid)

    def stage_samples(self, stage: str) -> list[str]:
        keep = {"prepare": lambda sid: True, "restore": self.restored,
                "segment": lambda sid: self.segmented(sid) or self.detected(sid), "finish": lambda sid: True}[stage]
        return [sid for sid in self.samples if keep(sid)]

    def warnings(self) -> list[str]:
        """Samples a configured stage cannot process, said once at planning time."""
        notes = []
        method = self.config.restoration.method
        for sid in self.samples:
            nd = self._ndim[sid]
            chosen = self._chosen(self.config.restoration.samples, sid)  # else left out on purpose: no note
            if method != "none" and chosen and not self.restored(sid):
                notes.append(f"sample {sid}: no {nd}D {method.upper()} model (no restoration.model_{nd}d and no training "
                             f"sample of that dimensionality{' with a target' if method == 'care' else ''}): analysed unrestored")
            if self.config.segmentation.method != "none" and not self.segmented(sid):
                notes.append(f"sample {sid}: no {nd}D segmentation model (no segmentation.model_{nd}d and no sample of "
                             "that dimensionality with labels): ingested and normalized only")
            if self.config.detection.enabled and not self.detected(sid):
                notes.append(f"sample {sid}: not run through the box detector (" + (
                    "it takes 2D images" if nd != 2 else "no detection.model_2d and no 2D sample with boxes") + ")")
            if self.typed_unet(nd) and self.samples[sid].labels and not self.samples[sid].types:
                notes.append(f"sample {sid}: labels but no types (column types) for the typed U-Net: left out of its "
                             "training, and its pixel classes are not scored")
        for model in sorted(set(self.config.sweep.models) - set(self.swept_models())):
            notes.append(f"sweep.models.{model}: no {model} model is trained in this run (no training data for it, "
                         "or a given model used as it is): nothing to sweep")
        return notes

    # ---- batches ----------------------------------------------------------------------

    @functools.cached_property
    def batches(self) -> list[Batch]:
        """The sheet cut in order at max_samples samples or max_gb of image files."""
        limit_n, limit_bytes = self.config.batching.max_samples, self.config.batching.max_gb * 1e9
        batches, current, size = [], [], 0.0
        for sid, sample in self.samples.items():
            cost = float(sum(_size(p) for p in expand_image_path(sample.image)))
            if current and (len(current) >= limit_n or size + cost > limit_bytes):
                batches.append(current)
                current, size = [], 0.0
            current.append(sid)
            size += cost
        if current:
            batches.append(current)
        return [Batch(f"b{i:04d}", tuple(members)) for i, members in enumerate(batches)]

    @functools.cached_property
    def batch_of(self) -> dict[str, str]:
        return {sid: b.id for b in self.batches for sid in b.samples}

    def stage_batches(self, stage: str) -> list[Batch]:
        members = set(self.stage_samples(stage))
        out = [Batch(b.id, tuple(s for s in b.samples if s in members)) for b in self.batches]
        return [b for b in out if b.samples]

    # ---- jobs -------------------------------------------------------------------------

    @functools.cached_property
    def jobs(self) -> dict[str, Job]:
        jobs: dict[str, Job] = {}
        for stage in STAGES:
            for batch in self.stage_batches(stage):
                job = self._stage_job(stage, batch, jobs)
                jobs[job.name] = job
        for job in self._training_jobs() + self._part_jobs():
            jobs[job.name] = job
        for job in self._export_jobs(jobs):
            jobs[job.name] = job
        jobs["summary-all"] = self._summary_job(jobs)
        for job in jobs.values():
            recipe = {**job.task, "config": self._recipe(job)}
            job.digest = digest_of({"task": recipe, "upstream": [jobs[u].digest for u in job.task.get("upstream", [])
                                                                 if u in jobs]})
        return jobs

    def _recipe(self, job: Job) -> dict:
        """The config a job's results depend on (its digest): for segmentation, only the
        prediction keys; the training keys reach it through the model folder, an input."""
        config = job.task.get("config", {})
        if job.rule in ("segment", "segment_part"):
            recipe = {k: config["segmentation"][k] for k in SEGMENTATION_PREDICTION_KEYS}
            if "detection" in config:
                recipe["detection"] = {k: config["detection"][k] for k in DETECTION_PREDICTION_KEYS}
            return recipe
        return config

    def job(self, name: str) -> Job:
        return self.jobs[name]

    def stage_jobs(self, stage: str) -> list[Job]:
        return [self.jobs[f"{stage}-{b.id}"] for b in self.stage_batches(stage)]

    def task_file(self, name: str) -> str:
        """The path of a job's task file, (re)written first when its digest changed.

        The workflow writes them all before Snakemake builds the DAG (common.smk), so a task
        file is written exactly when what its job must do changed, and its new modification
        time (it is an input of its job) is what reruns the job; an unchanged plan touches
        nothing. The digest leads the file, so checking 600 task files reads 600 short headers.
        """
        from snakescope.io.atomic import write_text

        path = plan_path(name)
        if name not in self._checked:
            job = self.jobs[name]
            if _task_digest(Path(path)) != job.digest:
                # no indent: json's C encoder only serves compact output (10x faster at 100,000 samples)
                write_text(path, json.dumps({"digest": job.digest, **job.task}, default=str) + "\n")
            self._checked.add(name)
        return path

    def write_tasks(self) -> None:
        """Every job's task file, where its digest changed."""
        for name in self.jobs:
            self.task_file(name)

    # ---- per-stage sample work -----------------------------------------------------------

    def _config_sections(self, *names: str) -> dict:
        return {n: dataclasses.asdict(getattr(self.config, n)) for n in names}

    def _stage_job(self, stage: str, batch: Batch, jobs: dict) -> Job:
        builder = getattr(self, f"_{stage}_work")
        work = [builder(sid) for sid in batch.samples]
        upstream = [f"{s}-{batch.id}" for s in STAGES[:STAGES.index(stage)] if f"{s}-{batch.id}" in jobs]
        task = {"kind": "stage", "stage": stage, "batch": batch.id, "job": f"{stage}-{batch.id}",
                "manifest": manifest_path(stage, batch.id),
                "config": self._stage_config(stage), "upstream": upstream,
                "upstream_manifests": {u.split("-")[0]: manifest_path(u.split("-")[0], batch.id) for u in upstream},
                "samples": work}
        # The user's files go into the task as (size, modification time), not into the DAG:
        # a changed image changes the digest, which reruns the job (and, through the
        # upstream digests, the later stages), and Snakemake is spared matching 100,000 raw
        # files against every rule's outputs.
        task["sources"] = {f: _file_stamp(f) for f in sorted({f for w in work for spec in w["steps"]
                                                                for f in self.raw_files(spec)})}
        # Also the models upstream stages of the batch read: a retrained model reruns every
        # later stage, which waits for the earlier ones without rerunning when they merely
        # run again.
        inherited = {f for u in upstream for f in jobs[u].inputs if not f.endswith(".zarr")}
        inputs = sorted({spec["inputs"][k] for w in work for spec in w["steps"] for k in spec["models"]} | inherited
                        | {p for sid in batch.samples for p in (self.scatter_parts(sid) if stage == "segment" else [])})
        return Job(name=task["job"], rule=stage, task=task, inputs=inputs,
                   after=[manifest_path(u.split("-")[0], batch.id) for u in upstream],
                   outputs=[manifest_path(stage, batch.id)])

    def _stage_config(self, stage: str) -> dict:
        c = self.config
        if stage == "prepare":
            return self._config_sections("ingest", "normalize")
        if stage == "restore":
            return self._config_sections("ingest", "restoration")
        if stage == "segment":
            return self._config_sections("segmentation", "detection")
        return {k: v for k, v in c.to_dict().items() if k not in NOT_RESULTS}  # provenance records it

    def _work(self, sid: str, steps: dict) -> dict:
        return {"sample": sid, "row": self._rows[sid], "ndim": self._ndim[sid],
                "steps": [{"step": name, **spec} for name, spec in steps.items()]}  # a list: run in order

    def _prepare_work(self, sid: str) -> dict:
        s = self.samples[sid]
        steps = {"ingest": step({"image": s.image},
                                {"image": sample_path(sid, "image.ome.zarr"),
                                 "normalized": sample_path(sid, "normalized.ome.zarr"),
                                 "stats": sample_path(sid, "normalization.json")},
                                raw=("image",))}
        if s.target:
            steps["target"] = step({"target": s.target, "image": sample_path(sid, "image.ome.zarr")},
                                   {"image": sample_path(sid, "target.ome.zarr"),
                                    "stats": sample_path(sid, "target_normalization.json")},
                                   raw=("target",))
        return self._work(sid, steps)

    def _restore_work(self, sid: str) -> dict:
        s = self.samples[sid]
        model = self.restoration_model(self._ndim[sid])
        return self._work(sid, {"restore": step(
            {"image": sample_path(sid, "normalized.ome.zarr"), "model": model},
            {"restored": sample_path(sid, "restored.ome.zarr")},
            {"method": self.config.restoration.method, "channel": s.channel}, models=("model",))})

    def _segment_work(self, sid: str) -> dict:
        s, nd = self.samples[sid], self._ndim[sid]
        parts = self.scatter_parts(sid)
        steps = {}
        if self.segmented(sid):
            steps["segment"] = step({"image": self.analysis_image(sid), "model": self.segmentation_model(nd),
                                     **{f"part{k}": p for k, p in enumerate(parts)}},
                                    {"labels": sample_path(sid, LABELS)},
                                    {"channel": s.channel, "n_parts": len(parts)}, models=("model",))
            steps["measure"] = step({"labels": sample_path(sid, LABELS), "image": sample_path(sid, "image.ome.zarr"),
                                     "analysis": self.analysis_image(sid), "classifier": self.classifier_model(nd)},
                                    {"objects": sample_path(sid, "objects.parquet")},
                                    {"channel": s.channel}, models=("classifier",))
        if self.detected(sid):
            steps["detect"] = step({"image": self.analysis_image(sid), "detector": self.detector_model(nd)},
                                   {"detections": sample_path(sid, DETECTIONS)}, {"channel": s.channel},
                                   models=("detector",))
        return self._work(sid, steps)

    def _finish_work(self, sid: str) -> dict:
        s, nd = self.samples[sid], self._ndim[sid]
        restored, segmented = self.restored(sid), self.segmented(sid)
        image, labels = self.analysis_image(sid), sample_path(sid, LABELS)
        steps = {}
        if restored:
            steps["qc_restoration"] = step(
                {"image": sample_path(sid, "normalized.ome.zarr"), "restored": image,
                 "target": sample_path(sid, "target.ome.zarr") if s.target else None},
                {"figure": sample_path(sid, "qc/restoration.png")}, {"channel": s.channel})
            if s.target:
                steps["evaluate_restoration"] = step(
                    {"image": sample_path(sid, "normalized.ome.zarr"), "restored": image,
                     "target": sample_path(sid, "target.ome.zarr")},
                    {"metrics": sample_path(sid, "restoration_metrics.csv")}, {"channel": s.channel})
        if segmented:
            steps["qc_segmentation"] = step({"image": image, "labels": labels},
                                            {"figure": sample_path(sid, "qc/segmentation.png")}, {"channel": s.channel})
            if nd == 2 and self.config.detection.export_boxes:
                types = self.config.segmentation.unet_for(2).types if self.typed_unet(2) else []
                steps["export_boxes"] = step({"labels": labels, "objects": sample_path(sid, "objects.parquet")},
                                             {"napari": sample_path(sid, "boxes.csv"),
                                              "yolo": sample_path(sid, "boxes_yolo")}, {"types": types})
            if s.labels:
                outputs = {"metrics": sample_path(sid, "segmentation_metrics.csv")}
                if self.pixel_classes_evaluated(sid):
                    outputs |= {"class_confusion": sample_path(sid, "class_confusion.csv"),
                                "class_percent": sample_path(sid, "class_confusion_percent.csv"),
                                "class_metrics": sample_path(sid, "class_metrics.csv"),
                                "class_plot": sample_path(sid, "qc/class_confusion.png")}
                types = s.types if self.typed_unet(nd) else None
                steps["evaluate_segmentation"] = step({"labels": labels, "truth": s.labels, "types": types}, outputs,
                                                      raw=("truth", "types"))
            if s.class_truth and self.classified(sid):
                steps["evaluate_classification"] = step(
                    {"labels": labels, "objects": sample_path(sid, "objects.parquet"), "truth": s.class_truth,
                     "classifier": self.classifier_model(nd)},
                    {"metrics": sample_path(sid, "classification_metrics.csv"),
                     "figure": sample_path(sid, "qc/confusion.png")}, raw=("truth",), models=("classifier",))
        if self.detected(sid) and s.boxes:
            steps["evaluate_detection"] = step(
                {"truth": s.boxes, "image": image, "predicted": f"{sample_path(sid, DETECTIONS)}/boxes.csv"},
                {"metrics": sample_path(sid, "detection_metrics.csv"), "truth": sample_path(sid, "boxes_truth.csv")},
                raw=("truth",))
        if self.tracked(sid):
            steps["track"] = step({"labels": labels, "image": image},
                                  {"ctc": sample_path(sid, "tracks"), "table": sample_path(sid, "tracks.csv"),
                                   "stats": sample_path(sid, "track_stats.csv"),
                                   "figure": sample_path(sid, "qc/tracks.png"),
                                   "napari": sample_path(sid, "tracks_napari.csv"),
                                   "geff": sample_path(sid, "tracks.geff")}, {"channel": s.channel})
            if s.tracks:
                steps["evaluate_tracking"] = step({"result": sample_path(sid, "tracks"), "truth": s.tracks},
                                                  {"metrics": sample_path(sid, "tracking_metrics.json")},
                                                  raw=("truth",))
        files = [f for pattern in (s.image, s.labels, s.types, s.boxes, s.points, s.target, s.class_truth, s.tracks)
                 for f in self.existing(pattern)]
        steps["provenance"] = step({f"file{k}": f for k, f in enumerate(files)},
                                   {"record": sample_path(sid, "provenance.json")},
                                   raw=tuple(f"file{k}" for k in range(len(files))))
        return self._work(sid, steps)

    # ---- scatter parts ------------------------------------------------------------------

    def scatter_parts(self, sid: str) -> list[str]:
        n = self.config.segmentation.scatter.get(sid, 1)
        return [sample_path(sid, f"labels_parts/part{k}.zarr") for k in range(n)] if n > 1 else []

    def _part_jobs(self) -> list[Job]:
        jobs = []
        for sid in self.samples:
            parts = self.scatter_parts(sid)
            if not parts or not self.segmented(sid):
                continue
            s, nd = self.samples[sid], self._ndim[sid]
            upstream = "restore" if self.restored(sid) else "prepare"
            for k, part in enumerate(parts):
                name = f"segment_part-{sid}-{k}"
                task = {"kind": "part", "job": name, "sample": sid,
                        "config": self._stage_config("segment"),
                        "upstream": [f"{upstream}-{self.batch_of[sid]}"],
                        "step": step({"image": self.analysis_image(sid), "model": self.segmentation_model(nd)},
                                     {"part": part}, {"channel": s.channel, "part": k, "n_parts": len(parts)},
                                     models=("model",))}
                jobs.append(Job(name, "segment_part", task, inputs=self.external_files(task["step"]),
                                after=[manifest_path(upstream, self.batch_of[sid])], outputs=[part]))
        return jobs

    # ---- training -----------------------------------------------------------------------

    def _training_jobs(self) -> list[Job]:
        """One job per model trained here, from scratch or fine-tuned from a given one."""
        jobs = []
        c = self.config
        for nd in (2, 3):
            r = c.restoration
            model, parent = self.learner("restoration", nd)
            if model and model.startswith(RESULTS):
                ids = self.restoration_training_samples(nd)
                sources = [{"sample": sid, "image": sample_path(sid, "normalized.ome.zarr"),
                            "target": sample_path(sid, "target.ome.zarr") if r.method == "care" else None,
                            "channel": self.samples[sid].channel} for sid in ids]
                settings = {"restoration": {"method": r.method, r.method: self._tuned(r.training(), r.fine_tune, parent)},
                            "normalize": dataclasses.asdict(c.normalize)}
                jobs.append(self._train_job("train_restoration", model, nd, sources, settings, ids, parent=parent))
            seg = c.segmentation
            model, parent = self.learner("segmentation", nd)
            if model and model.startswith(RESULTS):
                ids = self.segmentation_training_samples(nd)
                sources = [{"sample": sid, "image": self.analysis_image(sid), "labels": self.samples[sid].labels,
                            "channel": self.samples[sid].channel,
                            **({"types": self.samples[sid].types} if self.typed_unet(nd) else {})} for sid in ids]
                training = seg.stardist_for(nd) if seg.method == "stardist" else seg.unet_for(nd)
                settings = {"segmentation": {**{k: getattr(seg, k) for k in SEGMENTATION_TRAINING_KEYS},
                                             seg.method: self._tuned(training, seg.fine_tune, parent)},
                            "upstream": self._image_recipe(ids)}
                jobs.append(self._train_job("train_segmentation", model, nd, sources, settings, ids, parent=parent,
                                            split=f"{seg.split_dir}/{seg.method}_{nd}d.json"))
            cl = c.classification
            model, parent = self.learner("classification", nd)
            segmented = any(self.segmented(s.sample_id) for s in self.of_ndim(nd))
            if model and model.startswith(RESULTS) and segmented:
                ids = self.classifier_training_samples(nd)
                sources = [{"sample": sid, "image": self.analysis_image(sid), "points": self.samples[sid].points,
                            "channel": self.samples[sid].channel} for sid in ids]
                tuned = self._tuned(cl, cl.fine_tune, parent)
                settings = {"classification": {k: v for k, v in tuned.items() if k not in CLASSIFICATION_NOT_TRAINING},
                            "upstream": self._image_recipe(ids)}
                jobs.append(self._train_job("train_classifier", model, nd, sources, settings, ids, parent=parent,
                                            split=f"{c.segmentation.split_dir}/classifier_{nd}d.csv",
                                            patch_folder=getattr(cl, f"patch_folder_{nd}d")))
        model, parent = self.learner("detection", 2)
        if model and model.startswith(RESULTS):
            ids = self.detector_training_samples(2)
            sources = [{"sample": sid, "image": self.analysis_image(sid), "boxes": self.samples[sid].boxes,
                        "channel": self.samples[sid].channel} for sid in ids]
            settings = {"detection": {k: v for k, v in dataclasses.asdict(c.detection).items()
                                      if k not in DETECTION_NOT_TRAINING},
                        "validation_fraction": c.segmentation.validation_fraction, "upstream": self._image_recipe(ids)}
            jobs.append(self._train_job("train_detector", model, 2, sources, settings, ids,
                                        split=f"{c.segmentation.split_dir}/detector_2d.json"))
        return [j for job in jobs for j in self._swept(job)]

    # ---- sweeps -------------------------------------------------------------------------

    def _swept(self, job: Job) -> list[Job]:
        """A training job as it is, or, for a model named in ``sweep.models``, one candidate
        job per combination (the same task with the combination's settings, into
        results/models/sweeps/<model>/<combination>) and the job that selects the best into
        the model's folder (snakescope.training.sweep)."""
        model = Path(job.task["outputs"]["model"]).name
        values = self.config.sweep.models.get(model)
        if not values:
            return [job]
        candidates, entries = [], []
        for combination in combinations(values):
            name = combination_name(combination)
            folder = f"{RESULTS}/models/sweeps/{model}/{name}"
            task = json.loads(json.dumps(job.task))
            learner = job.task["learner"]
            section = task["config"]["classification" if learner == "classifier" else
                                     "restoration" if job.rule == "train_restoration" else "segmentation"]
            if learner != "classifier":
                section[learner] = apply_combination(section[learner], combination)
            else:
                task["config"]["classification"] = apply_combination(section, combination)
            task.update(kind="candidate", job=f"train_candidate-{model}-{name}", outputs={"model": folder},
                        sweep={"model": model, "name": name, "settings": combination})
            candidates.append(Job(task["job"], "train_candidate", task, inputs=job.inputs, after=job.after,
                                  outputs=[folder]))
            entries.append({"name": name, "settings": combination, "folder": folder})
        out = job.task["outputs"]["model"]
        outputs = {"model": out, "curve": f"{out}_training.png", "table": f"{out}_sweep.csv",
                   "figure": f"{out}_sweep.png"}
        task = {"kind": "select", "job": f"select_model-{model}", "learner": job.task["learner"],
                "ndim": job.task["ndim"], "sources": job.task["sources"], "metric": self.config.sweep.metric,
                "candidates": entries, "upstream": [c.name for c in candidates], "outputs": outputs}
        select = Job(task["job"], "select_model", task, inputs=[c.outputs[0] for c in candidates], after=job.after,
                     outputs=list(outputs.values()))
        return [*candidates, select]

    def swept_models(self) -> list[str]:
        """The models chosen by a sweep in this run (their folder's name)."""
        return [Path(j.outputs[0]).name for j in self.jobs.values() if j.task["kind"] == "select"]

    def _export_jobs(self, jobs: dict) -> list[Job]:
        """A bioimage.io package of every model trained here (its own job: changing the
        publication details re-exports, it never retrains); its test input is a crop of the
        first training sample's raw image."""
        exports = []
        # bioimage.io has no format for a box detector's output: its folder is the model
        for train in [j for j in jobs.values() if j.task["kind"] in MODEL_KINDS and j.task["learner"] != "detector"]:
            model = train.task["outputs"]["model"]
            first = train.task["sources"][0] if train.task["sources"] else None
            task = {"kind": "export", "job": f"export-{Path(model).name}", "model": model,
                    "learner": train.task["learner"], "ndim": train.task["ndim"],
                    "package": f"{model}.bioimage.io.zip", "publication": dataclasses.asdict(self.config.publication),
                    "normalize": dataclasses.asdict(self.config.normalize),
                    "test_image": sample_path(first["sample"], "image.ome.zarr") if first else None,
                    "channel": first["channel"] if first else 0}
            exports.append(Job(task["job"], "export_model", task, inputs=[model], after=train.after,
                               outputs=[task["package"]]))
        return exports

    def packages(self) -> list[str]:
        return [j.outputs[0] for j in self.jobs.values() if j.task["kind"] == "export"]

    @staticmethod
    def _tuned(training, fine_tune, parent) -> dict:
        """A learner's training settings; fine-tuning a given model replaces the budget, the
        learning rate and (where the learner has one) the time limit by ``fine_tune``'s."""
        settings = dataclasses.asdict(training)
        if parent:
            for key in ("epochs", "steps_per_epoch", "learning_rate", "time_limit"):
                if key in settings:
                    settings[key] = getattr(fine_tune, key)
        return settings

    def _image_recipe(self, ids) -> dict:
        """What the training images of ``ids`` depend on besides their files: normalization,
        and the restoration model they went through."""
        restored = sorted({self.restoration_model(self._ndim[sid]) for sid in ids if self.restored(sid)})
        return {"normalize": dataclasses.asdict(self.config.normalize), "restoration_models": restored}

    def _train_job(self, rule, out, nd, sources, settings, ids, *, parent=None, split=None,
                   patch_folder=None) -> Job:
        """A training job; it waits for the stage that wrote its images: prepare for the
        restoration models (they learn from normalized images), else the analysis images.
        ``parent``: the given model it fine-tunes (a change to its files retrains)."""
        model = Path(out).name
        name = f"{rule}-{model}"
        restored = (lambda sid: False) if rule == "train_restoration" else self.restored
        after = sorted({manifest_path("restore" if restored(sid) else "prepare", self.batch_of[sid]) for sid in ids})
        outputs = {"model": out, "curve": f"{out}_training.png"}
        if rule == "train_classifier":
            outputs["confusion"] = f"{out}_confusion.png"
        section = getattr(self.config, {"train_restoration": "restoration", "train_segmentation": "segmentation",
                                        "train_classifier": "classification", "train_detector": "detection"}[rule])
        fine_tune = getattr(section, "fine_tune", None)
        task = {"kind": "train", "job": name, "learner": model.rsplit("_", 1)[0], "ndim": nd,
                "seed": self.config.seed, "config": settings, "sources": sources, "split": split,
                "patch_folder": patch_folder, "upstream_manifests": after, "outputs": outputs,
                "parent": parent, "freeze_encoder": bool(parent and getattr(fine_tune, "freeze_encoder", False))}
        inputs = [f for src in sources for key in ("labels", "types", "points", "boxes")
                  for f in self.existing(src.get(key))]
        inputs += [f for sid in ids for f in self.existing(self.samples[sid].image)]
        inputs += [f for sid in ids for f in self.existing(self.samples[sid].target)]
        inputs += sorted(set(settings.get("upstream", {}).get("restoration_models", [])))
        if patch_folder:
            inputs += existing_files_recursive(patch_folder)
        if parent:
            inputs += existing_files_recursive(parent)
        return Job(name, rule, task, inputs=sorted(set(inputs)), after=after, outputs=list(outputs.values()))

    # ---- outputs gathered over samples ------------------------------------------------------

    def evaluated(self, kind: str) -> list[str]:
        """Samples whose finish stage writes ``kind`` metrics."""
        pick = {"restoration": lambda sid: self.restored(sid) and self.samples[sid].target,
                "segmentation": lambda sid: self.segmented(sid) and self.samples[sid].labels,
                "classification": lambda sid: self.classified(sid) and self.samples[sid].class_truth,
                "tracking": lambda sid: self.tracked(sid) and self.samples[sid].tracks,
                "detection": lambda sid: self.detected(sid) and self.samples[sid].boxes}[kind]
        return [sid for sid in self.samples if pick(sid)]

    def gathered_outputs(self) -> list[str]:
        """The metrics gathered over samples: one table per kind evaluated somewhere, and for
        the U-Net the summed pixel-class confusion and scores."""
        kinds = [k for k in ("restoration", "segmentation", "classification", "tracking", "detection")
                 if self.evaluated(k)]
        outputs = [f"{RESULTS}/metrics/{k}.csv" for k in kinds]
        if "segmentation" in kinds and any(self.pixel_classes_evaluated(sid) for sid in self.evaluated("segmentation")):
            outputs += [f"{RESULTS}/metrics/{n}" for n in ("class_confusion.csv", "class_metrics.csv",
                                                           "class_confusion.png", "class_confusion_percent.csv")]
        return outputs

    def _summary_job(self, jobs: dict) -> Job:
        """The summary, failure list and report over every job's results."""
        manifests = [j.outputs[0] for j in jobs.values() if j.task["kind"] == "stage"]
        models = [j.outputs[0] for j in jobs.values() if j.task["kind"] in MODEL_KINDS]
        outputs = {"summary": f"{RESULTS}/summary.md", "failures": f"{RESULTS}/failed_samples.tsv",
                   "report": f"{RESULTS}/report.html"}
        packages = [j.outputs[0] for j in jobs.values() if j.task["kind"] == "export"]
        sweeps = [{k: j.task["outputs"][k] for k in ("model", "table", "figure")}
                  for j in jobs.values() if j.task["kind"] == "select"]
        task = {"kind": "summary", "job": "summary-all", "config": self._stage_config("finish"),
                "manifests": manifests, "models": models, "packages": packages, "metrics": self.gathered_outputs(),
                "sweeps": sweeps, "outputs": outputs}
        return Job("summary-all", "summary", task, after=manifests + models + packages + self.gathered_outputs()
                   + [s[k] for s in sweeps for k in ("table", "figure")], outputs=list(outputs.values()))

    def all_manifests(self) -> list[str]:
        return [j.outputs[0] for j in self.jobs.values() if j.task["kind"] == "stage"]

    def models(self) -> list[str]:
        return [j.outputs[0] for j in self.jobs.values() if j.task["kind"] in MODEL_KINDS]


def _task_digest(path: Path) -> str | None:
    """The digest at the head of a task file (None when there is none)."""
    import re

    try:
        with open(path) as fh:
            found = re.search(r'"digest": "(\w+)"', fh.read(256))
    except OSError:
        return None
    return found.group(1) if found else None


def step(inputs: dict, outputs: dict, options: dict | None = None, *, raw=(), models=()) -> dict:
    """One step of one sample: ``inputs`` and ``outputs`` ({name: path}), ``options``;
    ``raw`` names the inputs that are the user's files (paths or globs) and ``models`` the
    model folders: both are files the job depends on (a change reruns it)."""
    return {"inputs": {k: v for k, v in inputs.items() if v is not None}, "outputs": outputs,
            "options": options or {}, "raw": [k for k in raw if inputs.get(k)],
            "models": [k for k in models if inputs.get(k)]}


def existing_files_recursive(folder: str) -> list[str]:
    return sorted(str(p) for p in Path(folder).rglob("*") if p.is_file())


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
