"""DAG scale: a dry run of 100,000 small images through the SLURM profile.

Run from the repository root: ``.venv/main/bin/python bench/dag_scale.py`` (no arguments).
Prints one JSON object as its last line:

* ``n_images``: samples in the sheet (100,000 tiny real TIFFs, 16x16 uint16, written to a
  temporary folder: planning reads each file's size to form the batches, and the jobs'
  inputs must exist; the dry run reads no pixels).
* ``dryrun_seconds``: wall time of ``snakemake --profile profiles/slurm --dry-run`` on that
  sheet: parse, validate the config and the sheet, plan the batches, build the DAG, print it
  (target <= 60); ``dryrun_cpu_seconds`` and ``load_average_1min`` because on a shared
  machine the wall time depends on what else runs; ``peak_rss_mb``: the Snakemake process's
  peak resident memory.
* ``planned_submissions``: SLURM jobs the run would submit (local rules, which run in the
  driver, are not counted), by rule in ``submissions_by_rule``; ``images_per_submission``:
  images per submission of each per-image rule (target >= 500).
* ``dag_jobs``: the jobs in the DAG by rule; ``slurm_commands_called``: SLURM commands the dry run executed (fake
  ``sbatch``, ``sinfo``, ... first on PATH record every call: there must be none).

The DAG: the default config with a pretrained StarDist folder given (so no training), per
image: prepare (ingest + normalize), segment (StarDist, measurements), finish (QC figure,
provenance), in batches of ``batching.max_samples`` (500). No SLURM is needed. Temporary
files are removed at the end.
"""

from __future__ import annotations

import json
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
N_IMAGES = 100_000
PER_IMAGE_RULES = ("prepare", "segment", "finish")
LOCAL_RULES = ("all", "check_samples")
SLURM_COMMANDS = ("sbatch", "srun", "sinfo", "squeue", "sacct", "scontrol", "scancel", "sacctmgr", "sshare")
HEADER = "sample_id\timage\taxes\tvoxel_size\ttime_interval\tchannel\tlabels\ttracks\tpoints\ttarget\n"


def write_project(wd: Path, n: int) -> None:
    """n tiny 2D TIFFs, their samples sheet, a stand-in model folder and the config."""
    data = wd / "data"
    data.mkdir(parents=True)
    image = np.random.default_rng(0).integers(1, 4000, (16, 16), dtype=np.uint16)
    tifffile.imwrite(data / "template.tif", image)
    template = (data / "template.tif").read_bytes()
    rows = []
    for i in range(n):
        name = f"img{i:06d}"
        (data / f"{name}.tif").write_bytes(template)
        rows.append(f"{name}\tdata/{name}.tif\tYX\t0.5\t\t\t\t\t\t")
    (wd / "config").mkdir()
    (wd / "config" / "samples.tsv").write_text(HEADER + "\n".join(rows) + "\n")
    model = wd / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")  # the dry run only needs the folder
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["samples"] = "config/samples.tsv"
    config["segmentation"] = {"model_2d": str(model)}
    config["classification"] = {"enabled": False}
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(config))


def fake_slurm(folder: Path, log: Path) -> None:
    """SLURM commands that only record that they were called (and fail)."""
    folder.mkdir()
    for command in SLURM_COMMANDS:
        path = folder / command
        path.write_text(f'#!/bin/sh\necho "{command} $*" >> "{log}"\nexit 1\n')
        path.chmod(0o755)


def job_stats(text: str) -> Counter:
    stats = Counter()
    table = re.search(r"^Job stats:\n.*?\n-+\s+-+\n(.*?)\n\n", text, flags=re.M | re.S)
    if table:
        for line in table.group(1).splitlines():
            name, count = line.split()
            if name != "total":
                stats[name] = int(count)
    return stats


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
        stats = job_stats(text)
        submitted = {rule: n for rule, n in stats.items() if rule not in LOCAL_RULES}
        called = sorted(set(calls.read_text().splitlines())) if calls.exists() else []
        result = {
            "n_images": N_IMAGES,
            "dryrun_seconds": round(dryrun_seconds, 1),
            "dryrun_cpu_seconds": round(cpu_seconds, 1),
            "peak_rss_mb": round(after.ru_maxrss / 1024, 1),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "planned_submissions": sum(submitted.values()),
            "submissions_by_rule": submitted,
            "images_per_submission": {r: round(N_IMAGES / submitted[r], 1) for r in PER_IMAGE_RULES if submitted.get(r)},
            "target_images_per_submission": 500,
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
