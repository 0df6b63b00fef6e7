"""Throughput: 1,000 small real images through the workflow against a plain Python loop.

Run from the repository root: ``.venv/main/bin/python bench/throughput.py`` (no arguments).
Prints one JSON object as its last line:

* ``n_images``: 1,000 tiles of 128 x 128 pixels cut from the real DSB2018 fluorescence
  nuclei in ``../shared/data/dsb2018-fluo`` (without them: tiles of the synthetic generator).
* ``workflow_seconds``: wall time of the real Snakemake CLI (``--profile profiles/local``,
  2 cores) on that sheet, from start to finish: parsing and planning, every job's process
  start and imports, ingest, normalization, StarDist prediction (a model trained once by
  this benchmark and given as a pretrained one), measurements, QC figure and provenance of
  every image, the summary and report.
* ``loop_seconds``: the floor, in the same run: one Python process calling the same package
  functions (the stage steps) for every image in a loop, with the model loaded once.
* ``ratio``: workflow / loop (target <= 1.3); ``jobs_planned``: jobs in the workflow's DAG
  (target <= n_images / 50); ``per_image_seconds_workflow`` and ``per_image_seconds_loop``.
* ``load_average_1min``: taken after each of the two runs; timings on a shared machine are
  only comparable within one run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DATA = ROOT.parent / "shared" / "data" / "dsb2018-fluo"
N_IMAGES = 1000
TILE = 128
HEADER = "sample_id\timage\taxes\tvoxel_size\ttime_interval\tchannel\tlabels\ttracks\tpoints\ttarget\n"
TRAIN_SECONDS = 180


def informative(tile: np.ndarray) -> bool:
    """Not blank background: the workflow refuses a (nearly) constant image, rightly."""
    nonzero = tile[tile > 0]
    return nonzero.size > tile.size // 20 and np.percentile(nonzero, 99.8) > np.percentile(nonzero, 1)


def tiles() -> list[np.ndarray]:
    """N_IMAGES 128 x 128 uint8 tiles: DSB2018 images cut on a grid (stride 96), in order,
    leaving out blank ones."""
    out = []
    if DATA.exists():
        index = json.loads((DATA / "index.json").read_text())
        while len(out) < N_IMAGES:
            for entry in index:
                image = tifffile.imread(DATA / "images" / f"{entry['id']}.tif")
                for y in range(0, image.shape[0] - TILE + 1, 96):
                    for x in range(0, image.shape[1] - TILE + 1, 96):
                        tile = image[y:y + TILE, x:x + TILE]
                        if informative(tile):
                            out.append(tile)
            break
    from snakescope.synthetic import make_timelapse

    seed = 0
    while len(out) < N_IMAGES:  # synthetic tiles where the real data run out (or are absent)
        movie = make_timelapse(ndim=2, n_frames=1, shape=(TILE, TILE), n_cells=8, seed=seed)
        out.append(movie.image.reshape(TILE, TILE))
        seed += 1
    return out[:N_IMAGES]


def train_model(folder: Path) -> Path:
    """A StarDist 2D model trained for TRAIN_SECONDS on DSB2018 (or synthetic) nuclei."""
    from csbdeep.utils import normalize

    from snakescope.segmentation.stardist import train_stardist
    from snakescope.settings import defaults
    from snakescope.synthetic import make_timelapse

    pairs = {}
    if DATA.exists():
        for entry in json.loads((DATA / "index.json").read_text())[:60]:
            image = tifffile.imread(DATA / "images" / f"{entry['id']}.tif").astype(np.float32)
            pairs[entry["id"][:12]] = (normalize(image, 1, 99.8), tifffile.imread(DATA / "masks" / f"{entry['id']}.tif"))
    else:
        for seed in range(20):
            movie = make_timelapse(ndim=2, n_frames=1, shape=(256, 256), n_cells=20, seed=100 + seed)
            pairs[f"s{seed}"] = (normalize(movie.image.reshape(256, 256).astype(np.float32), 1, 99.8),
                                 movie.labels.reshape(256, 256))
    keys = sorted(pairs)
    split = {"train": keys[6:], "validation": keys[:6]}
    settings = defaults().segmentation.stardist.replace(patch_size=[128, 128], epochs=1000, steps_per_epoch=50,
                                                        patience=0, time_limit=TRAIN_SECONDS)
    train_stardist(pairs, folder, settings, split=split, seed=0)
    return folder


def write_project(wd: Path, images: list[np.ndarray], model: Path) -> None:
    (wd / "data").mkdir(parents=True)
    rows = []
    for i, image in enumerate(images):
        tifffile.imwrite(wd / "data" / f"t{i:04d}.tif", image)
        rows.append(f"t{i:04d}\tdata/t{i:04d}.tif\tYX\t0.5\t\t\t\t\t\t")
    (wd / "config").mkdir()
    (wd / "config" / "samples.tsv").write_text(HEADER + "\n".join(rows) + "\n")
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config.update(samples="config/samples.tsv", segmentation={"model_2d": str(model)},
                  classification={"enabled": False}, tracking={"enabled": False})
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(config))


def run_workflow(wd: Path) -> tuple[float, int]:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "workflow" / "Snakefile"),
           "--directory", str(wd), "--profile", str(ROOT / "profiles" / "local"), "--cores", "2"]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    dry = subprocess.run([*cmd, "--dry-run"], capture_output=True, text=True, cwd=wd, env=env, check=True).stdout
    table = re.search(r"^total\s+(\d+)$", dry, flags=re.M)
    start = time.perf_counter()
    with open(wd / "workflow.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=wd, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write((wd / "workflow.log").read_text()[-5000:])
        raise SystemExit(f"workflow failed ({proc.returncode})")
    return seconds, int(table.group(1))


def run_loop(wd: Path) -> float:
    """The same steps, same settings, same order, in this one process (model loaded once)."""
    from snakescope.pipeline.plan import Plan
    from snakescope.pipeline.runner import Context, SampleWork
    from snakescope.pipeline.stages import STEPS
    from snakescope.settings import Config, load

    os.chdir(wd)
    start = time.perf_counter()
    config = yaml.safe_load((wd / "config" / "config.yaml").read_text())
    validated, samples, _ = load(config)
    plan = Plan(Config.from_dict(validated), samples)
    for stage in ("prepare", "segment", "finish"):
        for job in plan.stage_jobs(stage):
            context = Context(job.task, threads=2)
            for item in job.task["samples"]:
                work = SampleWork(item["sample"], item["row"], item["ndim"], item["steps"])
                for spec in work.steps:
                    STEPS[spec["step"]].run(work, spec, context)
    return time.perf_counter() - start


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="snakescope-throughput-"))
    try:
        images = tiles()
        model = train_model(tmp / "model" / "stardist_2d")
        loop_wd, flow_wd = tmp / "loop", tmp / "workflow"
        write_project(flow_wd, images, model)
        write_project(loop_wd, images, model)
        workflow_seconds, jobs = run_workflow(flow_wd)
        load_workflow = os.getloadavg()[0]
        here = os.getcwd()
        loop_seconds = run_loop(loop_wd)
        os.chdir(here)
        load_loop = os.getloadavg()[0]
        objects = sum(len(__import__("pandas").read_parquet(p)) for p in (flow_wd / "results").glob("*/objects.parquet"))
        result = {
            "n_images": len(images),
            "real_tiles": DATA.exists(),
            "workflow_seconds": round(workflow_seconds, 1),
            "loop_seconds": round(loop_seconds, 1),
            "ratio": round(workflow_seconds / loop_seconds, 3),
            "jobs_planned": jobs,
            "jobs_target": len(images) // 50,
            "per_image_seconds_workflow": round(workflow_seconds / len(images), 4),
            "per_image_seconds_loop": round(loop_seconds / len(images), 4),
            "objects_found": objects,
            "model_train_seconds": TRAIN_SECONDS,
            "load_average_1min": {"after_workflow": round(load_workflow, 2), "after_loop": round(load_loop, 2)},
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
