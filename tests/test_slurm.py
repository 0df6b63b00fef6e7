"""The SLURM profile against a real single-node SLURM cluster on this machine, no mocks.

A module fixture starts SLURM with tests/slurm/slurm-localhost.sh (root and apt-get needed:
it installs Debian's munge/slurmctld/slurmd on first use). Where that cannot work (not
root, no apt-get, the install fails) the SLURM tests skip with the reason, except when the
environment variable CI is "true": CI runs `make test` as root on a fresh clone, so there
the fixture fails, and CI never passes with these tests skipped.

Every run goes through `--profile profiles/slurm`, with real sbatch jobs; on the command
line only what this cluster differs in from a production one (see `cluster_args`).
SLURM jobs cost seconds each (a job starts Python and Snakemake twice), so the runs are
few and tiny: one 64x64 two-frame sample, StarDist trained for 2 steps.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
import zarr

from conftest import MAIN_PYTHON, REPO, run_snakemake
from snakescope.synthetic import make_timelapse, write_timelapse

pytestmark = pytest.mark.slow

SCRIPT = REPO / "tests" / "slurm" / "slurm-localhost.sh"
PROFILE = REPO / "profiles" / "slurm"
IN_CI = os.environ.get("CI") == "true"
PARTITION = "debug"  # the one partition of the test cluster
SHEET_HEADER = "sample_id\timage\taxes\tvoxel_size\ttime_interval\tchannel\tlabels\ttracks\tpoints\ttarget\n"
TINY_STARDIST = {"epochs": 1, "steps_per_epoch": 2, "patch_size": [64, 64], "unet_n_depth": 1, "n_rays": 8}
TINY_CLASSIFIER = {"epochs": 1, "batch_size": 8, "patch_size": [16, 16], "patience": 0, "augment": False}
SUBMITTED = re.compile(r"Job (\S+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")
SBATCH_CALL = re.compile(r"^sbatch call: (sbatch .*)$", re.M)


# ---- the cluster ------------------------------------------------------------------------


def _cannot(reason: str):
    if IN_CI:
        pytest.fail(f"CI=true but the SLURM tests cannot run: {reason}", pytrace=False)
    pytest.skip(f"no local SLURM: {reason}")


def _slurmctld_running() -> bool:
    try:
        os.kill(int(Path("/run/slurmctld.pid").read_text()), 0)
        return True
    except (OSError, ValueError):
        return False


def _active_jobs(under: Path | None = None) -> list[str]:
    """Queued or running jobs; with `under`, only those whose working directory lies there."""
    proc = subprocess.run(["squeue", "-h", "-o", "%i %Z"], capture_output=True, text=True, timeout=30)
    jobs = [line.split(maxsplit=1) for line in proc.stdout.splitlines() if line.strip()]
    return [job for job, wd in jobs if under is None or Path(wd.strip()).is_relative_to(under)]


def _cancel_leftovers(under: Path) -> None:
    """Cancel this session's jobs still queued or running (e.g. after a failed test) and wait.

    Only jobs working under this session's temporary folder: the cluster is the machine's,
    and another test session may be using it at the same time (`squeue -h -o %i | xargs -r
    scancel` would cancel its jobs too).
    """
    try:
        jobs = _active_jobs(under)
        if jobs:
            subprocess.run(["scancel", *jobs], timeout=60)
        deadline = time.monotonic() + 30
        while _active_jobs(under) and time.monotonic() < deadline:
            time.sleep(1)
    except (OSError, subprocess.SubprocessError):
        pass


def _cancel_orphans() -> None:
    """Cancel jobs whose working directory is gone: left by a test session that was killed
    (no live session can own them), they would hold the node's only GPU for hours."""
    proc = subprocess.run(["squeue", "-h", "-o", "%i %Z"], capture_output=True, text=True, timeout=30)
    orphans = [job for job, wd in (line.split(maxsplit=1) for line in proc.stdout.splitlines() if line.strip())
               if not Path(wd.strip()).exists()]
    if orphans:
        subprocess.run(["scancel", *orphans], timeout=60)


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A running single-node SLURM (partition `debug`, one fake GPU). Afterwards this
    session's leftover jobs are cancelled, and the daemons stopped if this fixture started
    them and no other session's jobs are in the queue."""
    if os.geteuid() != 0:
        _cannot("starting a local SLURM needs root")
    if not shutil.which("sbatch") and not shutil.which("apt-get"):
        _cannot("SLURM is not installed and there is no apt-get to install it")
    started_here = not _slurmctld_running()
    try:
        proc = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=1500)
    except subprocess.TimeoutExpired:
        _cannot(f"{SCRIPT.name} start did not finish in 25 minutes")
    if proc.returncode != 0:
        _cannot(f"{SCRIPT.name} start failed ({proc.returncode}): {proc.stderr[-3000:]}")
    _cancel_orphans()
    yield
    _cancel_leftovers(tmp_path_factory.getbasetemp())
    if started_here and not _active_jobs():
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, timeout=180)


def _value(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def cluster_args() -> list[str]:
    """The profile plus what this test cluster needs on the command line, nothing else.

    * No slurmdbd, so `sacct` fails: job status comes from `squeue` (finished jobs stay
      visible: MinJobAge in the script), checked 2 s after submission instead of 40.
    * Its partition is `debug`, and it has no accounts: the placeholders of the profile go.
      A command-line `--default-resources`/`--set-resources` replaces the profile's whole
      entry, so the profile's entries are repeated with only that changed (read from the
      profile, so the test follows it). (`--slurm-no-account` exists in plugin 2.8.0 but the
      plugin never reads it, hence dropping slurm_account.)
    * Its node has 2 CPUs: a job may use 2 cores.
    * Successful jobs' SLURM logs are kept as evidence; --verbose prints the sbatch calls.
    """
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    defaults = {k: v for k, v in profile["default-resources"].items() if k != "slurm_account"}
    defaults["slurm_partition"] = PARTITION
    per_rule = [f"{rule}:{key}={_value(value)}"
                for rule, resources in profile.get("set-resources", {}).items()
                for key, value in {**resources, "slurm_partition": PARTITION}.items()]
    return ["--profile", str(PROFILE),
            "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
            "--default-resources", *[f"{k}={_value(v)}" for k, v in defaults.items()],
            *(["--set-resources", *per_rule] if per_rule else []),
            "--cores", "2", "--slurm-keep-successful-logs", "--verbose"]


# ---- projects ---------------------------------------------------------------------------


def write_project(wd: Path, *, config: dict | None = None) -> None:
    """One 2D time-lapse sample (2 frames of 64x64, 5 nuclei) with labels and point
    annotations, and a config that trains StarDist for 2 steps and the classifier for one
    epoch; tracking off (it adds jobs, not SLURM features)."""
    timelapse = make_timelapse(ndim=2, n_frames=2, shape=(64, 64), n_cells=5, seed=3)
    paths = write_timelapse(timelapse, wd / "data" / "cells")
    (wd / "config").mkdir(parents=True, exist_ok=True)
    points = paths["points"]["round"].parent.relative_to(wd) / "points_*.csv"
    row = (f"cells\t{paths['image'].relative_to(wd)}\t{paths['image_axes']}\t0.5\t60\t0\t"
           f"{paths['labels'].relative_to(wd)}\t\t{points}\t")
    (wd / "config" / "samples.tsv").write_text(SHEET_HEADER + row + "\n")
    write_config(wd, config or {})


def write_config(wd: Path, overrides: dict) -> None:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())["properties"]
    config["samples"] = "config/samples.tsv"
    config["segmentation"] = {"method": "stardist", "stardist": dict(TINY_STARDIST)}
    # one thread per job: the test node has 2 CPUs, so two jobs (e.g. both trainings) run at once
    config["resources"]["threads"] = 1
    if "tracking" in schema:
        config["tracking"] = {"enabled": False}
    if "classification" in schema:
        config["classification"] = dict(TINY_CLASSIFIER)
    for key, value in overrides.items():
        if isinstance(value, dict):
            config.setdefault(key, {}).update(value)
        else:
            config[key] = value
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(config))


def snakemake_cmd(wd: Path, *args: str) -> list[str]:
    return [str(MAIN_PYTHON), "-m", "snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile"),
            "--directory", str(wd), *args]


def local_rules() -> set[str]:
    """The Snakefile's `localrules:` (run in the driver, never submitted)."""
    block = re.search(r"^localrules:\n((?:\s+\w+,?\n)+)", (REPO / "workflow" / "Snakefile").read_text(), flags=re.M)
    return set(re.findall(r"\w+", block.group(1))) if block else set()


def plan(text: str) -> dict:
    """SLURM submissions a dry run plans, by rule: every job printed as "rule NAME:" except
    the local rules (a dry run prints those as "rule" too)."""
    planned: dict = {}
    local = local_rules()
    for name in re.findall(r"^rule (\w+):$", text, flags=re.M):
        if name not in local:
            planned[name] = planned.get(name, 0) + 1
    return planned


def submissions(output: str) -> list[tuple[str, str, Path]]:
    """(Snakemake job or group id, SLURM job id, SLURM log) of every sbatch submission."""
    return [(job, slurm_id, Path(log)) for job, slurm_id, log in SUBMITTED.findall(output)]


def sbatch_calls(output: str) -> list[dict]:
    """The sbatch command lines (printed with --verbose): the call, its SLURM log folder, the
    rules of the jobs it runs and whether it asks for a GPU."""
    calls = []
    for call in SBATCH_CALL.findall(output):
        logdir = Path(re.search(r"--output (\S+)/%j\.log ", call).group(1))
        targets = re.search(r"--target-jobs (.*?) --allowed-rules", call).group(1)
        calls.append({"call": call, "logdir": logdir, "rules": set(re.findall(r"'(\w+):", targets)),
                      "gpu": "--gpus=" in call or "--gres=gpu" in call})
    return calls


def gpu_rules() -> set[str]:
    """Rules of the workflow that ask for a GPU (`gpu=` among their resources)."""
    rules = set()
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for rule, body in re.findall(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", smk.read_text(), flags=re.M | re.S):
            if re.search(r"^\s+gpu=", body, flags=re.M):
                rules.add(rule)
    return rules


def scontrol(slurm_id: str) -> str:
    return subprocess.run(["scontrol", "show", "job", slurm_id], capture_output=True, text=True, timeout=30).stdout


# ---- the demo-like run, on SLURM and locally --------------------------------------------


@dataclass
class DemoRuns:
    slurm: Path  # working directory of the SLURM run
    local: Path  # the same project run without SLURM
    output: str  # Snakemake's output of the SLURM run
    planned: tuple  # what the dry run with the profile planned


@pytest.fixture(scope="module")
def demo(slurm_cluster, tmp_path_factory):
    """The workflow on one sample through the SLURM profile, and the same project run locally
    (at the same time, to save wall time: the SLURM run mostly waits)."""
    base = tmp_path_factory.mktemp("slurm-demo")
    slurm_wd, local_wd = base / "slurm", base / "local"
    write_project(slurm_wd)
    write_project(local_wd)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    local = subprocess.Popen(snakemake_cmd(local_wd, "--cores", "2"), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, cwd=local_wd, env=env)
    try:
        dry = run_snakemake(slurm_wd, *cluster_args(), "--dry-run", timeout=300)
        planned = plan(dry.stdout + dry.stderr)
        proc = run_snakemake(slurm_wd, *cluster_args(), timeout=1200)
        local_output, _ = local.communicate(timeout=900)
    finally:
        if local.poll() is None:
            local.kill()
            local.communicate()
    (base / "slurm-run.log").write_text(proc.stdout + proc.stderr)
    (base / "local-run.log").write_text(local_output)
    assert local.returncode == 0, f"local run failed:\n{local_output[-6000:]}"
    return DemoRuns(slurm_wd, local_wd, proc.stdout + proc.stderr, planned)


def test_jobs_went_through_slurm_one_per_batch(demo):
    jobs = submissions(demo.output)
    planned = demo.planned
    # as many sbatch submissions as the dry run planned: one per batch and stage, one per model
    assert len(jobs) == sum(planned.values()), (jobs, planned)
    assert {"prepare": 1, "segment": 1, "finish": 1, "train_segmentation": 1, "train_classifier": 1} == {
        r: planned.get(r) for r in ("prepare", "segment", "finish", "train_segmentation", "train_classifier")}, planned
    logs = demo.slurm / ".snakemake" / "slurm_logs"
    for _, slurm_id, log in jobs:
        assert log.is_file() and log.is_relative_to(logs), log
        assert log.name == f"{slurm_id}.log"
    # each stage job ran its batch through the one entry point
    for rule in ("prepare", "segment", "finish"):
        found = [log for _, _, log in jobs if f"rule_{rule}" in str(log)]
        assert len(found) == 1 and "scripts/snakescope.py run" in found[0].read_text(), (rule, jobs)
    assert (demo.slurm / "results" / "summary.md").is_file()


def test_gpu_rules_were_scheduled_with_a_gpu(demo):
    """Every submission holding a rule that asks for a GPU (training, and the prediction batch)
    requested one from sbatch, and SLURM allocated it; the others did not ask."""
    gpu = gpu_rules()
    calls = sbatch_calls(demo.output)
    assert calls and {"train_segmentation", "segment"} <= set().union(*(c["rules"] for c in calls if c["gpu"]))
    assert not {"prepare", "finish"} & set().union(*(c["rules"] for c in calls if c["gpu"]))
    for c in calls:
        assert c["gpu"] == bool(c["rules"] & gpu), c["call"]
        assert f" -p {PARTITION} " in c["call"], c["call"]
    # SLURM's own record of each job (finished jobs stay known for MinJobAge)
    asked = {c["logdir"]: c["gpu"] for c in calls}
    for _, slurm_id, log in submissions(demo.output):
        record = scontrol(slurm_id)
        assert "JobState=COMPLETED" in record and f"Partition={PARTITION}" in record, record
        assert ("TresPerJob=gres:gpu:1" in record) == asked[log.parent], (log, record)


def _zarr_arrays(store: Path) -> dict:
    group = zarr.open_group(store, mode="r")
    return {name: array[...] for name, array in group.members(max_depth=None) if isinstance(array, zarr.Array)}


def _untimed(record):
    """A JSON record without its timings (keys ending in "seconds")."""
    if isinstance(record, dict):
        return {k: _untimed(v) for k, v in record.items() if not k.endswith("seconds")}
    if isinstance(record, list):
        return [_untimed(v) for v in record]
    return record


def _h5_datasets(path: Path) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


@pytest.mark.filterwarnings("ignore:Object at .snakemake_timestamp")
def test_outputs_equal_a_local_run(demo):
    """What the SLURM jobs wrote equals what a local run of the same project writes.

    Compared exactly: every OME-Zarr array (image, normalized, labels), every table
    (objects, metrics), the normalization statistics, and the trained model (configuration,
    split, thresholds, weights). Weights can be compared bit for bit because the training
    seeds everything and switches on TensorFlow's deterministic kernels
    (snakescope.training.harness.seed_everything) and both runs use the same CPU with the same threads
    (`resources.threads`); TensorFlow guarantees nothing across machines or thread counts,
    where only the configuration and split would be equal. Not compared: timings
    (train_seconds, benchmarks/), plots (PNG metadata), provenance's paths and platform.
    """
    slurm, local = demo.slurm / "results", demo.local / "results"
    stores = sorted(p.relative_to(local) for p in local.rglob("*.ome.zarr"))
    assert stores == sorted(p.relative_to(slurm) for p in slurm.rglob("*.ome.zarr"))
    assert {"cells/image.ome.zarr", "cells/normalized.ome.zarr"} <= {str(s) for s in stores}
    assert "labels/segmentation/0" in _zarr_arrays(local / "cells/image.ome.zarr")
    for store in stores:
        a, b = _zarr_arrays(local / store), _zarr_arrays(slurm / store)
        assert a.keys() == b.keys() and a, store
        for name in a:
            assert a[name].dtype == b[name].dtype, (store, name)
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{store}/{name}")

    tables = sorted(p.relative_to(local) for p in [*local.rglob("*.parquet"), *local.rglob("*metrics*.csv"),
                                                   *local.glob("metrics/*.csv")])
    assert any(t.name == "objects.parquet" for t in tables), tables
    for table in sorted(set(tables)):
        read = pd.read_parquet if table.suffix == ".parquet" else pd.read_csv
        pd.testing.assert_frame_equal(read(local / table), read(slurm / table), obj=str(table))
    objects = pd.read_parquet(local / "cells" / "objects.parquet")
    assert len(objects) > 0

    for stats in local.rglob("normalization.json"):
        assert json.loads(stats.read_text()) == json.loads((slurm / stats.relative_to(local)).read_text())

    models = sorted(p.relative_to(local) for p in (local / "models").rglob("*") if p.is_file())
    assert models == sorted(p.relative_to(slurm) for p in (slurm / "models").rglob("*") if p.is_file())
    assert any(m.suffix == ".h5" for m in models), models
    for item in models:
        a, b = local / item, slurm / item
        if item.suffix == ".h5":
            wa, wb = _h5_datasets(a), _h5_datasets(b)
            assert wa.keys() == wb.keys() and wa, item
            for name in wa:
                np.testing.assert_array_equal(wa[name], wb[name], err_msg=f"{item}:{name}")
        elif item.suffix == ".json":
            assert _untimed(json.loads(a.read_text())) == _untimed(json.loads(b.read_text())), item
        elif item.suffix == ".csv":
            pd.testing.assert_frame_equal(pd.read_csv(a), pd.read_csv(b), obj=str(item))

    for record in local.rglob("provenance.json"):
        a, b = json.loads(record.read_text()), json.loads((slurm / record.relative_to(local)).read_text())
        for key in ("config", "inputs", "sample", "software"):
            assert a.get(key) == b.get(key), key


@pytest.mark.filterwarnings("ignore:Object at .snakemake_timestamp")
def test_job_killed_for_memory_is_retried_with_more_and_completes(demo, tmp_path):
    """SLURM kills a segmentation batch whose first attempt asks for too little memory;
    Snakemake resubmits it with twice as much (the rules scale mem_mb with the attempt) and it
    completes, with the same labels as before.

    The cluster enforces --mem by sampling (jobacct_gather/linux with OverMemoryKill, no
    cgroups here). resources.mem_mb=384 makes the segment job ask for 768 MB on attempt 1,
    less than its peak (about 1.1 GB: TensorFlow, StarDist and the batch's steps), and 1536 MB
    on attempt 2. The project is the
    demo's with its trained model given as a pretrained one; only prepare and segment run.
    """
    wd = tmp_path / "wd"
    shutil.copytree(demo.slurm / "data", wd / "data")
    model = demo.slurm / "results" / "models" / "stardist_2d"
    shutil.copytree(model, wd / "pretrained" / model.name)
    (wd / "config").mkdir()
    shutil.copy(demo.slurm / "config" / "samples.tsv", wd / "config" / "samples.tsv")
    write_config(wd, {"resources": {"mem_mb": 384, "retries": 1},
                      "segmentation": {"model_2d": f"pretrained/{model.name}", "fine_tune": {"enabled": False}},
                      "classification": {"enabled": False}})

    proc = run_snakemake(wd, *cluster_args(), "results/jobs/segment-b0000.done.json", timeout=900)
    output = proc.stdout + proc.stderr
    jobs = [job for job in submissions(output) if "rule_segment" in str(job[2])]
    assert len(jobs) >= 2, "the first attempt was not killed"
    first_log = jobs[0][2].read_text()
    assert "exceeded memory limit" in first_log, first_log[-3000:]
    assert "JobState=FAILED" in scontrol(jobs[0][1])
    assert "JobState=COMPLETED" in scontrol(jobs[-1][1])
    calls = [c for c in SBATCH_CALL.findall(output) if "--comment rule_segment_" in c]
    memory = [int(m) for m in re.findall(r" --mem (\d+) ", " ".join(calls))]
    assert memory[:2] == [768, 1536], memory
    retried, before = (_zarr_arrays(root / "results/cells/image.ome.zarr") for root in (wd, demo.slurm))
    assert retried.keys() == before.keys() and retried
    for name in retried:
        np.testing.assert_array_equal(retried[name], before[name], err_msg=name)


# ---- no cluster needed ------------------------------------------------------------------


def _dry_run_project(wd: Path, n_samples: int) -> None:
    """n tiny 2D samples (no labels) and a pretrained model folder, for dry runs only."""
    (wd / "data").mkdir(parents=True)
    (wd / "pretrained" / "stardist_2d").mkdir(parents=True)
    (wd / "pretrained" / "stardist_2d" / "config.json").write_text("{}")  # dry runs only need the folder
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_samples):
        tifffile.imwrite(wd / "data" / f"s{i}.tif", rng.integers(1, 1000, (16, 16), dtype=np.uint16))
        rows.append(f"s{i}\tdata/s{i}.tif\tYX\t0.5\t\t\t\t\t\t")
    (wd / "config").mkdir()
    (wd / "config" / "samples.tsv").write_text(SHEET_HEADER + "\n".join(rows) + "\n")
    write_config(wd, {"segmentation": {"model_2d": "pretrained/stardist_2d"}})


@pytest.mark.parametrize("batch", [2, 100])
def test_batching_plans_one_submission_per_batch_of_images(tmp_path, batch):
    """5 images with `batching.max_samples` N: the dry run with the profile plans ceil(5/N)
    SLURM jobs per per-image stage, and nothing per image."""
    n_images = 5
    wd = tmp_path / "wd"
    _dry_run_project(wd, n_images)
    write_config(wd, {"segmentation": {"model_2d": "pretrained/stardist_2d"}, "batching": {"max_samples": batch}})
    proc = run_snakemake(wd, "--profile", str(PROFILE), "--dry-run", timeout=300)
    planned = plan(proc.stdout + proc.stderr)
    expected = math.ceil(n_images / batch)
    assert planned == {"prepare": expected, "segment": expected, "finish": expected, "summary": 1}, planned


def test_profile_names_existing_rules():
    """Per-rule resources of the profile name rules the workflow has (Snakemake ignores
    unknown names silently, so a renamed rule would quietly lose its GPU partition); every
    rule asking for a GPU goes to the GPU partition."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    proc = subprocess.run([str(MAIN_PYTHON), "-m", "snakemake", "--list-rules",
                           "--snakefile", str(REPO / "workflow" / "Snakefile"),
                           "--directory", str(REPO / ".test")],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rules = set(proc.stdout.split())
    assert "groups" not in profile  # the workflow batches samples itself
    named = set(profile["set-resources"])
    assert named <= rules, f"the profile names rules the workflow lacks: {sorted(named - rules)}"
    gpu = gpu_rules()
    assert gpu, "no rule asks for a GPU any more?"
    for rule in gpu:
        assert profile["set-resources"].get(rule, {}).get("slurm_partition", "").startswith("CHANGE-ME-gpu"), rule
