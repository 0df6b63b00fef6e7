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
