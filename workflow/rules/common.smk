import functools
import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

from snakemake_interface_executor_plugins.settings import DeploymentMethod

REPO = Path(workflow.basedir).parent
sys.path.insert(0, str(REPO / "src"))

from snakescope.settings import load  # noqa: E402

_validated, SAMPLES, _warnings = load(config, "config")
config.update(_validated)
for _warning in _warnings:
    logger.warning(_warning)


# The schema restricts sample ids to these characters (and reserves "models", "metrics"):
# a character class matches in constant time, an alternation of every id would not.
wildcard_constraints:
    sample="[A-Za-z0-9][A-Za-z0-9_.-]*",


def use_conda():
    return DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method


def python_for(env):
    """The interpreter of a rule family's environment.

    With --sdm conda, Snakemake activates the rule's env, so plain ``python`` is right.
    Otherwise the local venvs built by ``make setup`` serve; the main one is the driver's.
    """
    if use_conda():
        return "python"
    local = REPO / config["local_envs"][env]
    if local.exists():
        return str(local)
    if env == "main":
        return sys.executable
    raise WorkflowError(
        f"no interpreter for the {env} environment at {local}: run `make setup` or use --sdm conda"
    )


def script(name):
    return str(REPO / "scripts" / name)


def sample_json(wildcards):
    return json.dumps(asdict(SAMPLES[wildcards.sample]), sort_keys=True)


def section_json(name):
    return json.dumps(config[name], sort_keys=True)


def existing_files(pattern):
    """The files of a TIFF path or glob that exist: a missing one fails that sample's job,
    not the DAG."""
    from snakescope.io.tiff import expand_image_path

    return [str(p) for p in expand_image_path(pattern) if p.exists()]


def image_files(wildcards):
    return existing_files(SAMPLES[wildcards.sample].image)


def sample_files(wildcards):
    """Every file the sample reads that exists (image, labels, points, target, tracks...):
    its provenance records their checksums and is rewritten when one changes."""
    return [f for f in SAMPLES[wildcards.sample].input_files() if Path(f).is_file()]


def target_files(wildcards):
    """The clean target's files (for prepare_target)."""
    return existing_files(SAMPLES[wildcards.sample].target)


def target_image(wildcards):
    """The sample's normalized clean target, when the sheet names one."""
    if SAMPLES[wildcards.sample].target:
        return f"results/{wildcards.sample}/target.ome.zarr"
    return []


def mem_mb(base_factor=1.0):
    """Memory that grows with each retry (attempt 1, 2, ...)."""

    def scaled(wildcards, attempt):
        return int(config["resources"]["mem_mb"] * base_factor * attempt)

    return scaled


def runtime(base_factor=1.0):
    def scaled(wildcards, attempt):
        return int(config["resources"]["runtime"] * base_factor * attempt)

    return scaled


RESTORATION = config["restoration"]["method"]


@functools.cache
def samples_of_ndim(ndim):
    return [s for s in SAMPLES.values() if s.spatial_ndim() == int(ndim[0])]


def restoration_env():
    """N2V needs its own environment (TF 2.15, Keras 2); CARE runs in the main one."""
    return "n2v" if RESTORATION == "n2v" else "main"


def restoration_conda():
    return f"../../envs/{'n2v' if RESTORATION == 'n2v' else 'tensorflow'}.yaml"


@functools.cache
def restoration_training_samples(ndim):
    """Samples that train the {ndim} restoration model (CARE: those with a clean target)."""
    chosen = config["restoration"]["train_samples"]
    return [
        s
        for s in samples_of_ndim(ndim)
        if (chosen == "all" or s.sample_id in chosen)
        and (RESTORATION != "care" or s.target)
    ]


def restoration_sources(ndim):
    return json.dumps(
        [
            {
                "sample": s.sample_id,
                "image": f"results/{s.sample_id}/normalized.ome.zarr",
                "channel": s.channel,
                "target": (
                    f"results/{s.sample_id}/target.ome.zarr" if s.target else None
                ),
            }
            for s in restoration_training_samples(ndim)
        ],
        sort_keys=True,
    )


def restoration_model(wildcards):
    """A pretrained model folder from the config, or the one this workflow trains."""
    ndim = f"{SAMPLES[wildcards.sample].spatial_ndim()}d"
    return (
        config["restoration"][f"model_{ndim}"] or f"results/models/{RESTORATION}_{ndim}"
    )


@functools.cache
def restored_samples():
    """Ids of the samples restored: a model exists for their dimensionality."""
    if RESTORATION == "none":
        return frozenset()
    return frozenset(
        s.sample_id
        for s in SAMPLES.values()
        if config["restoration"][f"model_{s.spatial_ndim()}d"]
        or restoration_training_samples(f"{s.spatial_ndim()}d")
    )


def analysis_path(sample_id):
    """The image the analysis stages read: restored when restoration is on."""
    if sample_id in restored_samples():
        return f"results/{sample_id}/restored.ome.zarr"
    return f"results/{sample_id}/normalized.ome.zarr"


def analysis_image(wildcards):
    return analysis_path(wildcards.sample)


def restoration_outputs():
    restored = sorted(restored_samples())
    outputs = expand(
        "results/{sample}/{name}",
        sample=restored,
        name=["restored.ome.zarr", "qc/restoration.png"],
    )
    if [s for s in samples_with("target") if s in restored]:
        outputs.append("results/metrics/restoration.csv")
    return outputs


@functools.cache
def training_samples(ndim):
    """Samples with labels that train the {ndim} model (2d or 3d)."""
    chosen = config["segmentation"]["train_samples"]
    return [
        s
        for s in samples_of_ndim(ndim)
        if s.labels and (chosen == "all" or s.sample_id in chosen)
    ]


def training_sources(ndim):
    return json.dumps(
        [
            {
                "sample": s.sample_id,
                "image": analysis_path(s.sample_id),
                "labels": s.labels,
                "channel": s.channel,
            }
            for s in training_samples(ndim)
        ],
        sort_keys=True,
    )


def segmentation_model(wildcards):
    """A pretrained model folder from the config, or the one this workflow trains."""
    ndim = f"{SAMPLES[wildcards.sample].spatial_ndim()}d"
    pretrained = config["segmentation"][f"model_{ndim}"]
    return pretrained or f"results/models/{config['segmentation']['method']}_{ndim}"


def scattered_parts(wildcards):
    """The part arrays a sample's segmentation is scattered into (segmentation.scatter)."""
    n_parts = config["segmentation"]["scatter"].get(wildcards.sample, 1)
    if n_parts <= 1:
        return []
    return [
        f"results/{wildcards.sample}/labels_parts/part{k}.zarr" for k in range(n_parts)
    ]


def samples_with(column):
    """Sample ids whose sheet row fills ``column`` (labels, tracks, points, target)."""
    return [s.sample_id for s in SAMPLES.values() if getattr(s, column)]


def time_lapse_samples():
    return [
        s.sample_id for s in SAMPLES.values() if s.axes is None or "T" in s.axes.upper()
    ]


def can_segment(sample):
    """A model exists for the sample's dimensionality: pretrained, or trainable from labels."""
    ndim = f"{sample.spatial_ndim()}d"
    return bool(config["segmentation"][f"model_{ndim}"] or training_samples(ndim))


def segmented_samples():
    if config["segmentation"]["method"] == "none":
        return []
    return [s.sample_id for s in SAMPLES.values() if can_segment(s)]


def segmentation_outputs():
    outputs = expand(
        "results/{sample}/{name}",
        sample=segmented_samples(),
        name=["objects.parquet", "qc/segmentation.png"],
    )
    if [s for s in samples_with("labels") if s in segmented_samples()]:
        outputs.append("results/metrics/segmentation.csv")
    return outputs


def tracked_samples():
    if not config["tracking"]["enabled"]:
        return []
    return [s for s in time_lapse_samples() if s in segmented_samples()]


def tracking_outputs():
    outputs = expand(
        "results/{sample}/{name}",
        sample=tracked_samples(),
        name=["tracks.csv", "qc/tracks.png"],
    )
    if [s for s in samples_with("tracks") if s in tracked_samples()]:
        outputs.append("results/metrics/tracking.csv")
    return outputs


def classifier_training_samples(ndim):
    return [s for s in samples_of_ndim(ndim) if s.points]


def classifier_sources(ndim):
    return json.dumps(
        [
            {
                "sample": s.sample_id,
                "image": analysis_path(s.sample_id),
                "points": s.points,
                "channel": s.channel,
            }
            for s in classifier_training_samples(ndim)
        ],
        sort_keys=True,
    )


def classifier_patch_folder(ndim):
    """The folder of ready {ndim} training patches (one subfolder per class), or None."""
    return config["classification"][f"patch_folder_{ndim}"]


def classifier_patch_inputs(ndim):
    """The patch folder and its patch files, so that an added, changed or removed patch
    retrains the classifier (a folder's own mtime misses changes inside its subfolders).
    """
    from snakescope.classification.classify import PATCH_EXTENSIONS

    folder = classifier_patch_folder(ndim)
    if not folder:
        return []
    return [folder] + sorted(
        str(p)
        for p in Path(folder).glob("*/*")
        if p.is_file() and p.suffix.lower() in PATCH_EXTENSIONS
    )


def annotation_files(spec):
    """The CSV files a points / class_truth entry names (a file, a glob or a folder) that exist."""
    from snakescope.io.tiff import expand_image_path

    if not spec:
        return []
    if Path(spec).is_dir():
        return sorted(str(p) for p in Path(spec).glob("*.csv"))
    return [str(p) for p in expand_image_path(spec) if p.exists()]


def classifier_point_files(ndim):
    return [
        f for s in classifier_training_samples(ndim) for f in annotation_files(s.points)
    ]


def classifier_for(sample):
    """The classifier for a sample's dimensionality: pretrained, trained here, or none."""
    cfg = config["classification"]
    ndim = f"{sample.spatial_ndim()}d"
    if not cfg["enabled"]:
        return []
    if cfg[f"model_{ndim}"]:
        return cfg[f"model_{ndim}"]
    if classifier_training_samples(ndim) or classifier_patch_folder(ndim):
        return f"results/models/classifier_{ndim}"
    return []


def classifier_model(wildcards):
    return classifier_for(SAMPLES[wildcards.sample])


def class_truth_files(wildcards):
    """The sample's class ground-truth CSVs that exist: a missing one fails that job only."""
    return annotation_files(SAMPLES[wildcards.sample].class_truth)


def classification_evaluated_samples():
    """Segmented samples with class ground truth and a classifier for their dimensionality."""
    return [
        s
        for s in samples_with("class_truth")
        if s in segmented_samples() and classifier_for(SAMPLES[s])
    ]


def classification_outputs():
    outputs = expand(
        "results/{sample}/{name}",
        sample=classification_evaluated_samples(),
        name=["classification_metrics.csv", "qc/confusion.png"],
    )
    if outputs:
        outputs.append("results/metrics/classification.csv")
    return outputs


for _sample in SAMPLES.values():
    if RESTORATION != "none" and _sample.sample_id not in restored_samples():
        logger.warning(
            f"sample {_sample.sample_id}: no {_sample.spatial_ndim()}D {RESTORATION.upper()} model "
            "(no pretrained restoration.model_*d and no training sample of that dimensionality"
            f"{' with a target' if RESTORATION == 'care' else ''}): it is analysed unrestored"
        )
    if config["segmentation"]["method"] != "none" and not can_segment(_sample):
        logger.warning(
            f"sample {_sample.sample_id}: no {_sample.spatial_ndim()}D segmentation model "
            "(no pretrained model_*d in the config and no sample of that dimensionality "
            "with labels): it is ingested and normalized only"
        )

# U-Net runs also score the network's pixel classes (background / contour / body, kept in
# labels.ome.zarr) against the classes of the ground-truth labels: extra outputs of the
# evaluation and gather rules. StarDist runs keep exactly their jobs and outputs.
PIXEL_CLASSES = config["segmentation"]["method"] == "unet"


def evaluated_samples():
    """Segmented samples with ground-truth labels."""
    return [s for s in samples_with("labels") if s in segmented_samples()]


def pixel_class_outputs(folder, plot, captions, **category):
    """The U-Net's pixel-class outputs (confusion counts, per-class scores, plot), those named
    in ``captions`` ({output: caption}) shown in the report; none for other methods."""
    if not PIXEL_CLASSES:
        return {}
    outputs = {
        "class_confusion": f"{folder}/class_confusion.csv",
        "class_metrics": f"{folder}/class_metrics.csv",
        "class_plot": plot,
    }
    for key, caption in captions.items():
        outputs[key] = report(outputs[key], caption=caption, **category)
    return outputs


def pixel_class_args(output, input=None):
    """The pixel-class arguments of the evaluation and gather steps ("" for StarDist)."""
    if not PIXEL_CLASSES:
        return ""
    inputs = ["--class-inputs", *input.classes] if input is not None else []
    outputs = ["--class-confusion", output.class_confusion, "--class-metrics"]
    outputs += [output.class_metrics, "--class-plot", output.class_plot]
    return f" {shlex.join([*inputs, *outputs])}"
