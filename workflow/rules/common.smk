# Wiring only: what runs for which sample, in which batch, is planned by
# snakescope.pipeline.plan (src/), which has unit tests.
import sys
from pathlib import Path

from snakemake_interface_executor_plugins.settings import DeploymentMethod

REPO = Path(workflow.basedir).parent
sys.path.insert(0, str(REPO / "src"))

from snakescope.pipeline.plan import Plan, manifest_path, plan_path  # noqa: E402
from snakescope.settings import Config, load  # noqa: E402

_validated, SAMPLES, _warnings = load(config, "config")
config.update(_validated)
PLAN = Plan(Config.from_dict(_validated), SAMPLES)
for _warning in _warnings + PLAN.warnings():
    logger.warning(_warning)


wildcard_constraints:
    batch=r"b\d+",
    job=r"[a-z_]+-[A-Za-z0-9_.-]+",


# Every job runs the one entry point on its plan file (or, for the summary rules, on the
# manifests): scripts/snakescope.py --help.
ENTRY = str(REPO / "scripts" / "snakescope.py")
RUN = "{params.snakescope} run {input.task:q} --threads {threads} > {log:q} 2>&1"


def snakescope_for(env):
    """The command that runs the entry point in a rule's environment."""
    return f"{python_for(env)} {ENTRY}"


def python_for(env):
    """The interpreter of a rule's environment: with --sdm conda the rule's env is active;
    otherwise the local venv built by `make setup`."""
    if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
        return "python"
    local = REPO / config["local_envs"][env]
    if local.exists():
        return str(local)
    if env == "main":
        return sys.executable
    raise WorkflowError(
        f"no interpreter for the {env} environment at {local}: run `make setup` or use --sdm conda"
    )


def job_name(rule, wildcards):
    return (
        f"{rule}-{wildcards.batch if 'batch' in wildcards.keys() else wildcards.model}"
    )


def job_files(rule):
    """Files whose change reruns the job: raw images, ground truth, models."""
    return lambda wc: PLAN.job(job_name(rule, wc)).inputs


def job_waits_for(rule):
    """Upstream stage outputs the job waits for; their being rewritten reruns it only
    through its plan (ancient), so a no-op upstream rerun does not cascade."""
    return lambda wc: [ancient(p) for p in PLAN.job(job_name(rule, wc)).after]


def scaled(key, factor=1.0):
    """A resource that grows with each retry (attempt 1, 2, ...)."""

    def value(wildcards, attempt):
        return int(config["resources"][key] * factor * attempt)

    return value
