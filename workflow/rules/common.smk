import json
import re
import sys
from dataclasses import asdict
from pathlib import Path

from snakemake_interface_executor_plugins.settings import DeploymentMethod

REPO = Path(workflow.basedir).parent
sys.path.insert(0, str(REPO / "src"))

from snakescope.config import load  # noqa: E402

_validated, SAMPLES, _warnings = load(config, "config")
config.update(_validated)
for _warning in _warnings:
    logger.warning(_warning)


wildcard_constraints:
    sample="|".join(re.escape(s) for s in SAMPLES) or "no-samples",


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


def image_files(wildcards):
    """The sample's TIFF files that exist: a missing one fails that sample's job, not the DAG."""
    from snakescope.tiff import expand_image_path

    return [
        str(p) for p in expand_image_path(SAMPLES[wildcards.sample].image) if p.exists()
    ]


def mem_mb(base_factor=1.0):
    """Memory that grows with each retry (attempt 1, 2, ...)."""

    def scaled(wildcards, attempt):
        return int(config["resources"]["mem_mb"] * base_factor * attempt)

    return scaled


def runtime(base_factor=1.0):
    def scaled(wildcards, attempt):
        return int(config["resources"]["runtime"] * base_factor * attempt)

    return scaled


def analysis_image(wildcards):
    """The image the analysis stages read: restored when restoration is on."""
    return f"results/{wildcards.sample}/normalized.ome.zarr"


def samples_of_ndim(ndim):
    return [s for s in SAMPLES.values() if s.spatial_ndim() == int(ndim[0])]


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
                "image": f"results/{s.sample_id}/normalized.ome.zarr",
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
                "image": f"results/{s.sample_id}/normalized.ome.zarr",
                "points": s.points,
                "channel": s.channel,
            }
            for s in classifier_training_samples(ndim)
        ],
        sort_keys=True,
    )


def classifier_model(wildcards):
    """The classifier for this sample's dimensionality: pretrained, trained here, or none."""
    cfg = config["classification"]
    ndim = f"{SAMPLES[wildcards.sample].spatial_ndim()}d"
    if not cfg["enabled"]:
        return []
    if cfg[f"model_{ndim}"]:
        return cfg[f"model_{ndim}"]
    if classifier_training_samples(ndim):
        return f"results/models/classifier_{ndim}"
    return []


for _sample in SAMPLES.values():
    if config["segmentation"]["method"] != "none" and not can_segment(_sample):
        logger.warning(
            f"sample {_sample.sample_id}: no {_sample.spatial_ndim()}D segmentation model "
            "(no pretrained model_*d in the config and no sample of that dimensionality "
            "with labels): it is ingested and normalized only"
        )
