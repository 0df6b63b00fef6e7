"""DAG scale: a dry run of 10,000 small images through the SLURM profile.

Run from the repository root: ``.venv/main/bin/python bench/dag_scale.py`` (no arguments).
Prints one JSON object as its last line:

* ``n_images``: samples in the sheet (10,000 tiny real TIFFs, 16x16 uint16, written to a
  temporary folder: parsing the workflow checks that every sample's image exists, so the
  files must be there; the dry run reads no pixels).
* ``dryrun_seconds``: wall time of ``snakemake --profile profiles/slurm --dry-run`` on that
  sheet, parse + DAG + grouping + printing the plan (target <= 60); ``dryrun_cpu_seconds``:
  its CPU time, and ``load_average_1min`` after it, since on a shared machine the wall time
  depends on what else runs.
* ``planned_submissions``: SLURM jobs the run would submit: one per group job plus one per
  job outside any group (the target rule ``all`` and the local rule ``workflow_config`` run
  in the driver and are not counted).
* ``planned_submissions_per_image_rules``: of those, the ones that run the per-image rules
  (target <= 1 per 100 images with the profile's ``group-components``).
* ``dag_jobs``: the jobs in the DAG by rule; ``slurm_commands_called``: SLURM commands the
  dry run executed (fake ``sbatch``, ``sinfo``, ... first on PATH record every call).

The DAG: the demo config with ``segmentation.method: none``, so per image: ingest (TIFF ->
OME-Zarr -> normalized OME-Zarr) and provenance, the per-image rules, each batched in its own
group (``batch_ingest``, ``batch_provenance``), plus the resolved config and one summary.
Training and prediction are left out: with a pretrained model the prediction jobs would be
batched the same way (``batch_segment``, ...), and training is one job per dimensionality.
No SLURM is needed. Temporary files are removed at the end.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import tifffile
import yaml

ROOT = Path(__file__).resolve().parents[1]
N_IMAGES = 10_000
PER_IMAGE_RULES = ("ingest", "provenance")
SLURM_COMMANDS = ("sbatch", "srun", "sinfo", "squeue", "sacct", "scontrol", "scancel", "sacctmgr", "sshare")
HEADER = "sample_id\timage\taxes\tvoxel_size\ttime_interval\tchannel\tlabels\ttracks\tpoints\ttarget\n"


def write_project(wd: Path, n: int) -> None:
    """n tiny 2D TIFFs, their samples sheet and a config with segmentation off."""
    data = wd / "data"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        name = f"img{i:05d}"
        tifffile.imwrite(data / f"{name}.tif", rng.integers(1, 4000, (16, 16), dtype=np.uint16))
        rows.append(f"{name}\tdata/{name}.tif\tYX\t0.5\t\t\t\t\t\t")
    (wd / "config").mkdir()
    (wd / "config" / "samples.tsv").write_text(HEADER + "\n".join(rows) + "\n")
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["samples"] = "config/samples.tsv"
    config["segmentation"] = {"method": "none"}
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(config))


def fake_slurm(folder: Path, log: Path) -> None:
    """SLURM commands that only record that they were called (and fail)."""
    folder.mkdir()
    for command in SLURM_COMMANDS:
        path = folder / command
        path.write_text(f'#!/bin/sh\necho "{command} $*" >> "{log}"\nexit 1\n')
        path.chmod(0o755)


def count_plan(text: str) -> tuple[Counter, Counter, Counter]:
    """From a dry run's output: group jobs by group, top-level jobs by rule, DAG jobs by rule.

    Jobs inside a group job are printed indented under "Group job NAME"; jobs submitted on
    their own start at column 0 with "rule NAME:" (so do local rules, which the caller drops).
    """
    groups = Counter(re.findall(r"^\[[^\]]*\] Group job (\S+) ", text, flags=re.M))
    single = Counter(re.findall(r"^rule (\w+):$", text, flags=re.M))
    stats = Counter()
    table = re.search(r"^Job stats:\n.*?\n-+\s+-+\n(.*?)\n\n", text, flags=re.M | re.S)
    if table:
        for line in table.group(1).splitlines():
            name, count = line.split()
            if name != "total":
                stats[name] = int(count)
    return groups, single, stats


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="snakescope-dag-scale-"))
    try:
        wd = tmp / "wd"
        start = time.perf_counter()
        write_project(wd, N_IMAGES)
        write_seconds = time.perf_counter() - start
        calls = tmp / "slurm-calls.log"
        fake_slurm(tmp / "bin", calls)
        env = {**os.environ, "PATH": f"{tmp / 'bin'}{os.pathsep}{os.environ['PATH']}", "PYTHONHASHSEED": "0"}
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "workflow" / "Snakefile"),
               "--directory", str(wd), "--profile", str(ROOT / "profiles" / "slurm"), "--dry-run"]
        out_file = tmp / "dryrun.txt"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        with open(out_file, "w") as out:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=wd, env=env)
        dryrun_seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        text = out_file.read_text()
        if proc.returncode != 0:
            sys.stderr.write(text[-5000:])
            raise SystemExit(f"dry run failed ({proc.returncode})")
        groups, single, stats = count_plan(text)
        for local in ("all", "workflow_config"):  # run in the driver, never submitted
            single.pop(local, None)
        group_of = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text()).get("groups", {})
        per_image_groups = {group_of[r] for r in PER_IMAGE_RULES if r in group_of}
        per_image = sum(groups[g] for g in per_image_groups) + sum(single[r] for r in PER_IMAGE_RULES)
        called = sorted(set(calls.read_text().splitlines())) if calls.exists() else []
        result = {
            "n_images": N_IMAGES,
            "dryrun_seconds": round(dryrun_seconds, 1),
            "dryrun_cpu_seconds": round(cpu_seconds, 1),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "planned_submissions": sum(groups.values()) + sum(single.values()),
            "planned_submissions_per_image_rules": per_image,
            "per_image_submissions_per_100_images": round(100 * per_image / N_IMAGES, 2),
            "target_per_image_submissions": math.ceil(N_IMAGES / 100),
            "group_jobs": dict(groups),
            "single_jobs": dict(single),
            "dag_jobs": dict(stats),
            "slurm_commands_called": called,
            "dryrun_output_mb": round(len(text) / 1e6, 1),
            "write_images_seconds": round(write_seconds, 1),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
