"""Tracking through the whole workflow: synthetic time-lapses, the workflow's own StarDist.

Run from the repository root: ``.venv/main/bin/python bench/track_workflow.py``. Prints
progress to stderr and ONE JSON object as the last line of stdout.

What runs: the real Snakemake CLI (``python -m snakemake --snakefile workflow/Snakefile
--directory <tmp> --cores 2``) on a temporary project, i.e. ingest, normalize,
train_segmentation (StarDist 2D trained by the workflow), segment, track (LAP linking of
the segmented masks) and evaluate_tracking (CTC TRA / DET / SEG with py-ctcmetrics), then
``results/metrics/tracking.csv`` is read back.

Data (seeded, :func:`snakescope.synthetic.make_timelapse`, 2D, 0.5 um pixels, 256 x 256,
Poisson shot noise at 40 photons per nucleus pixel, background, illumination gradient and
read noise, a blanked band at one edge):

* ``train``: one movie (seed 11) whose label images train StarDist. It has no ground-truth
  tracks, so it is segmented and tracked by the workflow but never scored.
* ``eval_a``, ``eval_b``: two other movies (seeds 21, 22), 40 frames, 60 nuclei at the
  start (about 80 at the end) of two morphologies (round and bright; elongated, dimmer and
  textured), about 20 divisions each. Their CTC ground truth (``TRA`` folder, plus a ``SEG``
  folder holding the same full masks, so the workflow also reports SEG) is given to the
  workflow only as the ``tracks`` column of the samples sheet; their labels are not in the
  sheet (``segmentation.train_samples: [train]`` makes that explicit), so nothing of them
  reaches training or threshold optimisation.

Settings a user would choose from what is known of the cells, not from the evaluation
movies' ground truth. ``max_distance`` is the largest frame-to-frame displacement of a
nucleus centroid, and the largest one is not migration (at most 2 pixels per axis, 1.4 um,
per frame) but division: the linker (Jaqaman's LAP, as laptrack and TrackMate) finds a
division only when one daughter continues the mother's track by frame-to-frame linking and
the other splits off it, so the first daughter must be within ``max_distance`` of the
mother's last position. The generator places daughters one daughter half-length plus
0.7 um either side of the mother's centre: 2.8 to 6 um (median 3.5 um) in movies of the
training seed. Hence ``max_distance`` 7 um and ``division_max_distance`` 8 um; nuclei
stay at least about 6 um apart centre to centre, and the global LAP prefers the short true
links. (A first run with ``max_distance`` 3 um, set from migration speed alone, and half
the training budget below gave TRA 0.968 but missed nearly every division: division F1
0.18, and 0.16 even when linking the true masks.)
StarDist: 32 rays, grid 2, U-Net depth 2, 128 x 128 patches, a fixed budget of epochs x
steps (below), thresholds optimised by the workflow on the training movie's own validation
frames.

Besides the workflow's figures the JSON has ``tra_linking_only``: the same linker with the
same settings on the ground-truth masks of the evaluation movies, i.e. TRA with perfect
segmentation. TRA(workflow) < tra_linking_only isolates segmentation errors; a
tra_linking_only below 1 would be linking errors.

Keys: ``tra``, ``det``, ``seg`` (pooled over the evaluation movies, the workflow's ``ALL``
row), ``division_precision``, ``division_recall``, ``division_f1``, ``n_frames`` (per
evaluation movie), ``n_cells_gt`` (ground-truth objects over all frames), ``n_tracks_gt``,
``n_divisions_gt``, ``aogm_*`` counts, ``per_sample``, ``train_seconds``,
``workflow_seconds``, ``target_tra`` (0.95), ``met``. Environment:
``SNAKESCOPE_BENCH_KEEP=1`` keeps the temporary project (its path is logged).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from snakescope.synthetic import make_timelapse, write_timelapse  # noqa: E402

TARGET_TRA = 0.95
SHAPE = (256, 256)
N_CELLS = 60
N_FRAMES_EVAL = 40
N_FRAMES_TRAIN = 20
DIVISION_PROBABILITY = 0.015
PHOTONS = 40.0
TRAIN_SEED = 11
EVAL_SEEDS = {"eval_a": 21, "eval_b": 22}
TRACKING = {"max_distance": 7.0, "max_gap": 2, "division_max_distance": 8.0, "divisions": True}
STARDIST = {
    "n_rays": 32,
    "grid": [2, 2],
    "unet_n_depth": 2,
    "patch_size": [128, 128],
    "batch_size": 4,
    "epochs": 50,
    "steps_per_epoch": 30,
    "patience": 0,
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_movie(folder: Path, *, n_frames: int, seed: int) -> tuple[dict, object]:
    sample = make_timelapse(
        ndim=2,
        n_frames=n_frames,
        shape=SHAPE,
        n_cells=N_CELLS,
        division_probability=DIVISION_PROBABILITY,
        photons=PHOTONS,
        seed=seed,
    )
    paths = write_timelapse(sample, folder)
    return paths, sample


def add_seg_folder(tra: Path) -> None:
    """CTC ``SEG`` beside ``TRA``: synthetic labels are full segmentations of every object."""
    seg = tra.parent / "SEG"
    seg.mkdir(exist_ok=True)
    for mask in sorted(tra.glob("man_track*.tif")):
        shutil.copyfile(mask, seg / mask.name.replace("man_track", "man_seg"))


def write_project(wd: Path) -> dict:
    """Data, samples sheet and config of the temporary project; returns the ground truth."""
    (wd / "config").mkdir(parents=True)
    rel = lambda p: Path(p).relative_to(wd)  # noqa: E731
    train, _ = make_movie(wd / "data" / "train", n_frames=N_FRAMES_TRAIN, seed=TRAIN_SEED)
    rows = [
        "sample_id\timage\taxes\tvoxel_size\ttime_interval\tchannel\tlabels\ttracks\tpoints\ttarget",
        f"train\t{rel(train['image'])}\t{train['image_axes']}\t0.5\t60\t0\t{rel(train['labels'])}\t\t\t",
    ]
    truth = {}
    for name, seed in EVAL_SEEDS.items():
        paths, sample = make_movie(wd / "data" / name, n_frames=N_FRAMES_EVAL, seed=seed)
        add_seg_folder(paths["tracks_dir"])
        # labels.tif stays on disk (the generator writes it) but is not in the sheet.
        rows.append(f"{name}\t{rel(paths['image'])}\t{paths['image_axes']}\t0.5\t60\t0\t\t{rel(paths['tracks_dir'])}\t\t")
        truth[name] = {"tracks_dir": paths["tracks_dir"], "sample": sample}
    (wd / "config" / "samples.tsv").write_text("\n".join(rows) + "\n")

    # Only what this benchmark sets; everything else takes the schema's defaults (restoration
    # none, no classification without points), whatever the demo's config/config.yaml holds.
    config = {
        "samples": "config/samples.tsv",
        "seed": 42,
        "segmentation": {"method": "stardist", "train_samples": ["train"], "stardist": dict(STARDIST)},
        "tracking": dict(TRACKING),
        "resources": {"threads": 2, "retries": 0},
    }
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return truth


def linking_only(truth: dict, scratch: Path) -> dict:
    """TRA of the workflow's linker and settings on the ground-truth masks (no segmentation error)."""
    from snakescope.tracking.ctc import evaluate_ctc, summarize_metrics, write_ctc_result
    from snakescope.tracking.linking import detections_from_labels, link

    results = {}
    for name, entry in truth.items():
        labels = entry["sample"].labels
        detections = detections_from_labels(labels, voxel_size=(0.5, 0.5))
        tracks = link(
            detections,
            max_distance=TRACKING["max_distance"],
            max_gap=TRACKING["max_gap"],
            division_max_distance=TRACKING["division_max_distance"],
            divisions=TRACKING["divisions"],
            voxel_size=(0.5, 0.5),
        )
        folder = write_ctc_result(labels, tracks, scratch / f"{name}_RES")
        results[name] = evaluate_ctc(folder, entry["tracks_dir"], seg="none")
    return summarize_metrics(results)["pooled"]


def clean(value):
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else round(value, 5)


def main() -> None:
    import pandas as pd

    keep = os.environ.get("SNAKESCOPE_BENCH_KEEP") == "1"
    tmp = Path(tempfile.mkdtemp(prefix="snakescope_track_workflow_"))
    wd = tmp / "wd"
    try:
        began = time.perf_counter()
        truth = write_project(wd)
        gt_objects = sum(int(sum(len(np.unique(f)) - 1 for f in e["sample"].labels)) for e in truth.values())
        gt_tracks = sum(len(e["sample"].tracks) for e in truth.values())
        gt_divisions = sum(int((e["sample"].tracks["parent"] > 0).sum() // 2) for e in truth.values())
        log(
            f"data in {time.perf_counter() - began:.0f} s: {len(truth)} evaluation movies x {N_FRAMES_EVAL} frames,"
            f" {gt_objects} objects, {gt_tracks} tracks, {gt_divisions} divisions; project {wd}"
        )

        cmd = [
            sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "workflow" / "Snakefile"),
            "--directory", str(wd), "--cores", "2",
        ]  # fmt: skip
        log("running: " + " ".join(cmd))
        started = time.perf_counter()
        with open(tmp / "snakemake.log", "w") as out:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        workflow_seconds = time.perf_counter() - started
        if proc.returncode != 0:
            log((tmp / "snakemake.log").read_text()[-6000:])
            for path in sorted((wd / "logs").rglob("*.log")):
                log(f"--- {path.relative_to(wd)}\n" + path.read_text()[-2000:])
            raise SystemExit(f"snakemake failed with exit status {proc.returncode}")
        log(f"workflow done in {workflow_seconds:.0f} s")

        metrics = pd.read_csv(wd / "results" / "metrics" / "tracking.csv")
        pooled = metrics[metrics["sample"] == "ALL"].iloc[0]
        training = json.loads((wd / "results" / "models" / "stardist_2d" / "training.json").read_text())
        oracle = linking_only(truth, tmp)

        per_sample = {}
        for row in metrics[metrics["sample"] != "ALL"].itertuples(index=False):
            per_sample[row.sample] = {
                "tra": clean(row.TRA),
                "det": clean(row.DET),
                "seg": clean(row.SEG),
                "division_precision": clean(row.division_precision),
                "division_recall": clean(row.division_recall),
            }
        tra = float(pooled["TRA"])
        result = {
            "tra": clean(tra),
            "det": clean(pooled["DET"]),
            "seg": clean(pooled["SEG"]),
            "division_precision": clean(pooled["division_precision"]),
            "division_recall": clean(pooled["division_recall"]),
            "division_f1": clean(pooled["division_f1"]),
            "division_tp_fp_fn": [int(pooled[k]) for k in ("division_tp", "division_fp", "division_fn")],
            "aogm_ns_fn_fp_ed_ea_ec": [int(pooled[f"AOGM_{k}"]) for k in ("NS", "FN", "FP", "ED", "EA", "EC")],
            "tra_linking_only": clean(oracle["TRA"]),
            "division_f1_linking_only": clean(oracle["division_f1"]),
            "n_eval_movies": len(truth),
            "n_frames": N_FRAMES_EVAL,
            "n_cells_gt": gt_objects,
            "n_tracks_gt": gt_tracks,
            "n_divisions_gt": gt_divisions,
            "per_sample": per_sample,
            "stardist": {**STARDIST, "thresholds": training.get("thresholds")},
            "train_seconds": clean(training.get("train_seconds")),
            "tracking": TRACKING,
            "workflow_seconds": round(workflow_seconds, 1),
            "target_tra": TARGET_TRA,
            "met": bool(tra >= TARGET_TRA),
        }
        log(
            f"TRA {tra:.4f} (linking alone on true masks {oracle['TRA']:.4f}), DET {pooled['DET']:.4f},"
            f" SEG {pooled['SEG']:.4f}, divisions P/R {pooled['division_precision']:.3f}/{pooled['division_recall']:.3f}"
        )
    finally:
        if keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
