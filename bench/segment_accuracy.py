"""Segmentation accuracy on real DSB2018 fluorescence nuclei, trained through the workflow's code.

Data: ../shared/data/dsb2018-fluo (120 real images with expert labels, CC0). A fixed seeded
split holds out 24 test images that are never used for training or threshold tuning; of
the rest, 12 validate (early stopping, learning-rate schedule, optimize_thresholds) and 84
train. Images are percentile-normalized (1, 99.8) as the workflow's normalize step does.

StarDist (snakescope.segmentation.stardist.train_stardist) gets 25 minutes of wall-clock
training (the harness's time_limit), the 3-class U-Net
(snakescope.segmentation.unet.train_unet) about 5, so training stays within 30 minutes on
2 CPU cores. TensorFlow's deterministic kernels are off here (as in the reference recipe);
the workflow's default keeps them on. Prints one JSON object as its last line: f1_iou50, f1_iou70, accuracy_iou50,
mean_matched_iou, train_seconds (StarDist, held-out part), unet_f1_iou50, and details.
Environment: SNAKESCOPE_BENCH_QUICK=1 for a smoke run (a minute of training each).
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
DATA = ROOT.parent / "shared" / "data" / "dsb2018-fluo"
QUICK = os.environ.get("SNAKESCOPE_BENCH_QUICK") == "1"
STARDIST_BUDGET = 60 if QUICK else 25 * 60
UNET_EPOCHS = 3 if QUICK else 40


def normalize(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [1, 99.8])
    return ((image.astype(np.float32) - lo) / max(hi - lo, 1e-6)).astype(np.float32)


def load():
    import tifffile

    index = json.loads((DATA / "index.json").read_text())
    ids = sorted(entry["id"] for entry in index)
    rng = np.random.default_rng(2018)
    order = rng.permutation(len(ids))
    test = [ids[i] for i in order[:24]]
    val = [ids[i] for i in order[24:36]]
    train = [ids[i] for i in order[36:]]
    pairs = {}
    for i in ids:
        image = tifffile.imread(DATA / "images" / f"{i}.tif")
        if image.ndim == 3:  # a few DSB images carry RGB(A) planes of one grey image
            image = image[..., 0]
        pairs[i] = (normalize(image), tifffile.imread(DATA / "masks" / f"{i}.tif").astype(np.int32))
    return pairs, {"train": train, "validation": val}, test


def main() -> None:
    if not DATA.exists():
        print(json.dumps({"skipped": f"{DATA} is absent"}))
        return
    from stardist.matching import matching_dataset

    from snakescope.segmentation import stardist as segment
    from snakescope.segmentation import unet
    from snakescope.settings import defaults

    pairs, split, test = load()
    segmentation = defaults().segmentation
    work = Path(tempfile.mkdtemp(prefix="snakescope-bench-seg-"))
    try:
        start = time.perf_counter()
        settings = segmentation.stardist.replace(n_rays=64, grid=[2, 2], patch_size=[256, 256], epochs=10_000,
                                                 steps_per_epoch=50, batch_size=4, learning_rate=1e-3, patience=0,
                                                 unet_n_depth=3, time_limit=STARDIST_BUDGET)
        summary = segment.train_stardist({k: pairs[k] for k in split["train"] + split["validation"]},
                                         work / "stardist", settings, split=split, seed=2018, deterministic=False,
                                         reduce_lr_patience=6)
        stardist_seconds = time.perf_counter() - start
        model = segment.load_model(work / "stardist")
        truth = [pairs[k][1] for k in test]
        predicted = [model.predict_instances(pairs[k][0], axes="YX", show_tile_progress=False)[0] for k in test]
        scores = {t: matching_dataset(truth, predicted, thresh=t, show_progress=False) for t in (0.5, 0.7)}

        start = time.perf_counter()
        unet.train_unet({k: pairs[k] for k in split["train"] + split["validation"]}, work / "unet",
                        segmentation.unet.replace(epochs=UNET_EPOCHS, steps_per_epoch=25, batch_size=8, patience=0),
                        split=split, seed=2018)
        unet_seconds = time.perf_counter() - start
        u = unet.load_unet(work / "unet")
        unet_pred = [u.predict_instances(pairs[k][0]) for k in test]
        unet_score = matching_dataset(truth, unet_pred, thresh=0.5, show_progress=False)
        print(json.dumps({
            "f1_iou50": round(float(scores[0.5].f1), 4),
            "f1_iou70": round(float(scores[0.7].f1), 4),
            "accuracy_iou50": round(float(scores[0.5].accuracy), 4),
            "mean_matched_iou": round(float(scores[0.5].mean_matched_score), 4),
            "panoptic_quality_iou50": round(float(scores[0.5].panoptic_quality), 4),
            "train_seconds": round(summary["training"]["train_seconds"], 1),
            "stardist_total_seconds": round(stardist_seconds, 1),
            "epochs": summary["training"]["epochs_run"],
            "steps": summary["training"]["steps_run"],
            "thresholds": summary["thresholds"],
            "unet_f1_iou50": round(float(unet_score.f1), 4),
            "unet_accuracy_iou50": round(float(unet_score.accuracy), 4),
            "unet_train_seconds": round(unet_seconds, 1),
            "n_train": len(split["train"]), "n_validation": len(split["validation"]), "n_test": len(test),
            "n_test_objects": int(sum(len(np.unique(t)) - 1 for t in truth)),
            "recipe": "StarDist 64 rays, grid 2, patch 256, batch 4, lr 1e-3 halved on plateau, flips/rot90/intensity/noise augmentation, optimized thresholds",
            "quick": QUICK,
        }))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
