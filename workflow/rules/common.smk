# Wiring only: what runs for which sample, in which batch, is planned by
# snakescope.pipeline.plan (src/), which has unit tests.
import sys
from pathlib import Path

from snakemake_interface_executor_plugins.settings import DeploymentMethod

REPO = Path(workflow.basedir).parent
sys.path.insert(0, str(REPO / "src"))

from snakescope.pipeline.plan import IMAGE_ROOT, Plan, manifest_path  # noqa: E402
from snakescope.settings import Config, load  # noqa: E402

_validated, SAMPLES, _warnings = load(config, "config")
config.update(_validated)
PLAN = Plan(Config.from_dict(_validated), SAMPLES)
for _warning in _warnings + PLAN.warnings():
    logger.warning(_warning)
# Every changed task file is rewritten before the DAG is built: Snakemake caches the
# modification times of a folder's files when it first looks at one of them.
PLAN.write_tasks()


wildcard_constraints:
    batch=r"b\d+",
    job=r"[a-z_]+-[A-Za-z0-9_.-]+",


# Every job runs the one entry point on its plan file (or, for the summary rules, on the
# manifests): scripts/snakescope.py --help.
ENTRY = str(REPO / "scripts" / "snakescope.py")
RUN = "{params.snakescope} run {params.task:q} --threads {threads} > {log:q} 2>&1"


def snakescope_for(env):
    """The command that runs the entry point in the environment of a family of rules."""
    if DeploymentMethod.APPTAINER in workflow.deployment_settings.deployment_method:
        return (
            f"{python_for(env)} {IMAGE_ROOT}/scripts/snakescope.py"  # the image's copy
        )
    return f"{python_for(env)} {ENTRY}"


def python_for(env):
    """The interpreter of a family of rules (imaging, tensorflow or n2v). With --sdm conda
    the env of the job is active; in the container the venvs sit in the image; otherwise
    the local venvs built by `make setup` (config local_envs)."""
    methods = workflow.deployment_settings.deployment_method
    if DeploymentMethod.CONDA in methods:
        return "python"
    if DeploymentMethod.APPTAINER in methods:
        return f"{IMAGE_ROOT}/.venv/{'n2v' if env == 'n2v' else 'main'}/bin/python"
    local = REPO / config["local_envs"][env]
    if not local.exists():
        raise WorkflowError(
            f"no interpreter for the {env} environment at {local}: run `make setup` or use --sdm conda"
        )
    return str(local)


def env_file(env):
    return f"../../envs/{env}.yaml"


def job_name(rule, wildcards):
    return (
        f"{rule}-{wildcards.batch if 'batch' in wildcards.keys() else wildcards.model}"
    )


def job_task(name):
    """The job's task file (results/jobs/<job>.plan.json), written when it changed; the
    job reruns when its digest (a parameter) changes."""
    return lambda wc: PLAN.task_file(name(wc) if callable(name) else job_name(name, wc))


def job_digest(name):
    return lambda wc: PLAN.job(
        name(wc) if callable(name) else job_name(name, wc)
    ).digest


def job_files(rule):
    """Files whose change reruns the job: its task file (rewritten when the job's digest
    changes, e.g. a raw image changed) and the models it reads."""
    return lambda wc: [
        *PLAN.job(job_name(rule, wc)).inputs,
        PLAN.task_file(job_name(rule, wc)),
    ]


def job_follows(rule):
    """Upstream stage manifests of the batch: the stage job runs after them, and again when
    they are rewritten (its samples whose inputs did not change are skipped by their stamps).
    Not ancient: Snakemake skips a job's other rerun checks while an ancient input's producer
    runs, so a changed image would not reach the later stages."""
    return lambda wc: PLAN.job(job_name(rule, wc)).after


def job_waits_for(rule):
    """Upstream stage manifests a training job waits for; their being rewritten reruns it
    only through its plan (ancient): a model is not retrained because a batch ran again.
    """
    return lambda wc: [ancient(p) for p in PLAN.job(job_name(rule, wc)).after]


# N2V needs its own environment (TF 2.15, Keras 2); CARE runs in the TensorFlow one.
RESTORATION_ENV = "n2v" if config["restoration"]["method"] == "n2v" else "tensorflow"


def scaled(key, factor=1.0):
    """A resource that grows with each retry (attempt 1, 2, ...)."""

    def value(wildcards, attempt):
        return int(config["resources"][key] * factor * attempt)

    return value
