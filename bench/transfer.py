"""Transfer learning on real data: the shipped 2D nuclei model fine-tuned on 5 labelled frames
of another microscope's sequence, against the model as it is and against training from scratch.

Run from the repository root: ``.venv/main/bin/python bench/transfer.py``. Prints ONE JSON
object as the last line of stdout.

Data: ../shared/data/ctc-fluo-n2dh-sim02, the first 80 frames of Cell Tracking Challenge
Fluo-N2DH-SIM+ sequence 02 (simulated HL60 nuclei, 0.125 um pixels, nuclei about 50 pixels
across: 2-3 times larger in pixels than in DSB2018, the shipped model's training data), with
its full ground-truth masks (02_GT/SEG). The movie is normalized as the workflow's normalize
step does (percentiles 1 and 99.8 over all frames, zeros kept). Labels of 5 frames (0, 16,
32, 48, 64) train; the workflow's own split (:func:`snakescope.training.splits.make_or_load_split`,
``validation_fraction`` 0.15) keeps one of them for validation (best weights and
probability/NMS thresholds). Scored on 20 other frames (2, 6, ..., 78: each at least 2 frames
from a training frame), never used for training or tuning.

Three models, scored in the same run:

* ``pretrained``: models/stardist_2d_nuclei as shipped (its own thresholds), on the frames
  as they are; for reference also ``pretrained_rescaled``: the same model on frames resampled
  to its training pixel size (0.5 um; nuclei 4 times smaller in pixels), as the workflow's
  ``segmentation.rescale: auto`` applies it, labels put back on the frames' grid;
* ``finetuned``: :func:`snakescope.segmentation.stardist.train_stardist` with
  ``parent=models/stardist_2d_nuclei`` (its network and weights) at the learning rate the
  workflow fine-tunes with (``segmentation.fine_tune.learning_rate``, the schema's default);
* ``scratch``: the same trainer and the same network (32 rays, grid 2, depth-2 U-Net) from
  random weights, learning rate 1e-3 (the shipped model's own from-scratch rate, higher than
  the schema's 3e-4: a short from-scratch training needs the larger steps).

Both trainings get the same data, patches (256 x 256, batch 4, augmentation), seed 1,
TensorFlow's non-deterministic (faster) kernels, and the same budget: the fine-tuning runs
for 300 s of wall clock (the harness's ``time_limit``; model building and the first step
count); the from-scratch training then runs as many steps (rounded up to whole epochs of
20 steps; capped at twice the time), so that the load of other jobs on the shared machine
cannot give one of them more compute than the other. Each trains alone, one after the
other; the load average is recorded. Keys: f1_iou50_pretrained, f1_iou50_finetuned,
f1_iou50_scratch, the same at IoU 0.7, steps, epochs and seconds of each training, the load
average around each, and details. ``SNAKESCOPE_BENCH_QUICK=1``: a smoke run (20 s of
fine-tuning, 3 test frames).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DATA = ROOT.parent / "shared" / "data" / "ctc-fluo-n2dh-sim02"
MODEL = ROOT / "models" / "stardist_2d_nuclei"
QUICK = os.environ.get("SNAKESCOPE_BENCH_QUICK") == "1"
BUDGET = 20 if QUICK else 300
TRAIN_FRAMES = (0, 16, 32, 48, 64)
TEST_FRAMES = tuple(range(2, 80, 4))[:3] if QUICK else tuple(range(2, 80, 4))
SEED = 1
PIXEL_SIZE_UM = 0.125  # the sequence's pixels (Fluo-N2DH-SIM+)
STEPS_PER_EPOCH = 20
SCRATCH_LEARNING_RATE = 1e-3


def load_movie():
    """All 80 frames normalized together (the workflow's defaults) and their masks."""
    import tifffile

    frames = np.stack([tifffile.imread(DATA / "02" / f"t{t:03d}.tif") for t in range(80)])
    values = frames[frames != 0]
    lo, hi = np.percentile(values, [1.0, 99.8])
    images = (frames.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    images[frames == 0] = 0.0
    masks = {t: tifffile.imread(DATA / "02_GT" / "SEG" / f"man_seg{t:03d}.tif").astype(np.int32)
             for t in TRAIN_FRAMES + TEST_FRAMES}
    return images, masks


def score(model, images, masks, zooms=None) -> dict:
    """F1 etc. on the test frames; with ``zooms`` each frame is segmented on the model's pixel
    grid and its labels put back, as the workflow's ``segmentation.rescale: auto`` does."""
    from snakescope.evaluation.instances import instance_metrics, summarize
    from snakescope.segmentation.rescale import resample_labels, resample_linear

    start = time.perf_counter()
    rows = []
    for t in TEST_FRAMES:
        frame = resample_linear(images[t], zooms) if zooms else images[t]
        labels, _ = model.predict_instances(frame, axes="YX", show_tile_progress=False)
        if zooms:
            labels = resample_labels(labels, zooms, images[t].shape)
        rows.append(instance_metrics(masks[t], labels, (0.5, 0.7)))
    total = summarize(rows).set_index("threshold")
    return {"f1_iou50": round(float(total.loc[0.5, "f1"]), 4), "f1_iou70": round(float(total.loc[0.7, "f1"]), 4),
            "precision_iou50": round(float(total.loc[0.5, "precision"]), 4),
            "recall_iou50": round(float(total.loc[0.5, "recall"]), 4), "n_pred": int(total.loc[0.5, "n_pred"]),
            "predict_seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    if not DATA.exists():
        print(json.dumps({"skipped": f"{DATA} is absent"}))
        return
    if not (MODEL / "config.json").exists():
        print(json.dumps({"skipped": f"{MODEL} is missing: run `make models` first"}))
        return
    from snakescope.segmentation import stardist as segment
    from snakescope.settings import defaults
    from snakescope.segmentation.rescale import model_pixel_size
    from snakescope.training.splits import make_or_load_split

    images, masks = load_movie()
    pairs = {f"t{t:03d}": (images[t], masks[t]) for t in TRAIN_FRAMES}
    work = Path(tempfile.mkdtemp(prefix="snakescope-bench-transfer-"))
    out = {"train_frames": list(TRAIN_FRAMES), "test_frames": list(TEST_FRAMES),
           "n_test_nuclei": int(sum(len(np.unique(masks[t])) - 1 for t in TEST_FRAMES)), "budget_seconds": BUDGET,
           "load_start": round(os.getloadavg()[0], 2), "quick": QUICK}
    try:
        split = make_or_load_split(pairs, work / "split.json", defaults().segmentation.validation_fraction, seed=SEED)
        split = {"train": split["train"], "validation": split["validation"]}
        out["split"] = split
        shipped = segment.load_model(MODEL)
        results = {"pretrained": score(shipped, images, masks)}
        # for reference, not a training: the shipped model at its own pixel size (0.5 um)
        zooms = tuple(PIXEL_SIZE_UM / model_pixel_size(MODEL)[axis] for axis in "yx")
        results["pretrained_rescaled"] = {**score(shipped, images, masks, zooms), "zooms": list(zooms)}
        base = defaults().segmentation.stardist.replace(n_rays=32, grid=[2, 2], unet_n_depth=2, patch_size=[256, 256],
                                                        batch_size=4, steps_per_epoch=STEPS_PER_EPOCH, patience=0,
                                                        augment=True)
        plans = {"finetuned": base.replace(learning_rate=defaults().segmentation.fine_tune.learning_rate,
                                           epochs=1000, time_limit=BUDGET)}
        for name in ("finetuned", "scratch"):
            settings = plans[name]
            load = [os.getloadavg()[0]]
            metadata = segment.train_stardist(pairs, work / name, settings, split=split, seed=SEED,
                                              parent=MODEL if name == "finetuned" else None, deterministic=False)
            load.append(os.getloadavg()[0])
            training = metadata["training"]
            results[name] = {**score(segment.load_model(work / name), images, masks),
                             "steps": training["steps_run"], "epochs": training["epochs_run"],
                             "stopped_by": training["stopped_by"], "train_seconds": training["train_seconds"],
                             "learning_rate": settings.learning_rate, "thresholds": metadata["thresholds"],
                             "load_during": round(float(np.mean(load)), 2)}
            if name == "finetuned":  # the same compute from random weights: its steps, whole epochs
                plans["scratch"] = base.replace(learning_rate=SCRATCH_LEARNING_RATE,
                                                epochs=max(1, -(-training["steps_run"] // STEPS_PER_EPOCH)),
                                                time_limit=2 * BUDGET)
        for key in ("f1_iou50", "f1_iou70"):
            for name in ("pretrained", "finetuned", "scratch", "pretrained_rescaled"):
                out[f"{key}_{name}"] = results[name][key]
        out["steps_finetuned"] = results["finetuned"]["steps"]
        out["steps_scratch"] = results["scratch"]["steps"]
        out["epochs_finetuned"] = results["finetuned"]["epochs"]
        out["epochs_scratch"] = results["scratch"]["epochs"]
        out["train_seconds_finetuned"] = results["finetuned"]["train_seconds"]
        out["train_seconds_scratch"] = results["scratch"]["train_seconds"]
        out["load_finetuned"] = results["finetuned"]["load_during"]
        out["load_scratch"] = results["scratch"]["load_during"]
        out["finetuned_minus_scratch_iou50"] = round(out["f1_iou50_finetuned"] - out["f1_iou50_scratch"], 4)
        out["details"] = results
        out["load_end"] = round(os.getloadavg()[0], 2)
        out["cpus"] = os.cpu_count()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
