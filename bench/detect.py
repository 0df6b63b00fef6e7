"""Box detection on real DSB2018 fluorescence nuclei: the detector against StarDist, same run.

Data: ../shared/data/dsb2018-fluo (120 real images with expert masks, CC0). The seeded
split by image of bench/segment_accuracy.py holds out 24 test images; of the rest, 12
validate (best checkpoint, the detector's score threshold, StarDist's thresholds) and 84
train. Images are percentile-normalized (1, 99.8) as the workflow's normalize step does.
Boxes are those of the masks' objects (snakescope.io.boxes.boxes_from_labels).

StarDist is the shipped models/stardist_2d_nuclei, trained on the same 84 + 12 images of the
same split (its MODEL_CARD.md: 1,883 steps, 40 minutes) and never on the test images; the
detector (snakescope.detection.train_detector with the schema's defaults) trains here from
the boxes only, for STEPS steps (SNAKESCOPE_BENCH_STEPS overrides; the cosine learning-rate
schedule runs over them), with TensorFlow's deterministic kernels off. The budget is steps,
not wall clock, so that a busy machine changes the time, never the result: 3,500 steps are
about 5 minutes on 2 quiet cores. So the detector's minutes on boxes are compared with a
StarDist trained to convergence on masks.

On the test images, each model predicts at its own tuned operating point (StarDist: its
optimized probability and NMS thresholds; the detector: its score threshold), timed per
image after one warm-up image. StarDist's instances become boxes scored with StarDist's
object probabilities. Scores: COCO-style mAP (snakescope.detection.mean_average_precision)
against the true boxes.

Prints one JSON object as its last line: map50, map50_95 (detector), map50_stardist,
speedup (StarDist seconds per image over the detector's), and details (training steps and
seconds of both, seconds per image, thresholds, machine load).
Environment: SNAKESCOPE_BENCH_QUICK=1 for a smoke run (200 steps).
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
sys.path.insert(0, str(ROOT / "bench"))
DATA = ROOT.parent / "shared" / "data" / "dsb2018-fluo"
QUICK = os.environ.get("SNAKESCOPE_BENCH_QUICK") == "1"
STEPS = int(os.environ.get("SNAKESCOPE_BENCH_STEPS", 200 if QUICK else 3500))
SEED = 2018
SHIPPED = ROOT / "models" / "stardist_2d_nuclei"


def timed(function, items) -> tuple[list, float]:
    """Results of ``function`` on each item and its mean seconds per item, after a warm-up call."""
    function(items[0])
    results, seconds = [], 0.0
    for item in items:
        start = time.perf_counter()
        results.append(function(item))
        seconds += time.perf_counter() - start
    return results, seconds / len(items)


def main() -> None:
    if not DATA.exists():
        print(json.dumps({"skipped": f"{DATA} is absent"}))
        return
    from segment_accuracy import load

    from snakescope.detection import load_detector, mean_average_precision, predict_boxes, train_detector
    from snakescope.io.boxes import boxes_from_labels
    from snakescope.segmentation import stardist as segment
    from snakescope.settings import defaults

    load_before = os.getloadavg()
    pairs, split, test = load()
    boxes = {k: boxes_from_labels(y) for k, (_, y) in pairs.items()}
    train_keys = split["train"] + split["validation"]
    work = Path(tempfile.mkdtemp(prefix="snakescope-bench-detect-"))
    try:
        card = json.loads((SHIPPED / "evaluation.json").read_text())
        if sorted(card["split"]["test"]) != sorted(test):
            raise SystemExit(f"{SHIPPED} was not held out on this bench's test images")
        stardist_meta = {**card, **json.loads((SHIPPED / "snakescope.json").read_text())}
        schema = defaults().detection
        detector_settings = schema.replace(epochs=max(1, STEPS // schema.steps_per_epoch), time_limit=None)
        detector_meta = train_detector({k: (pairs[k][0], boxes[k]) for k in train_keys}, work / "detector",
                                       detector_settings, class_names=["nucleus"], split=split, seed=SEED,
                                       deterministic=False)

        images = [pairs[k][0] for k in test]
        truth = [boxes[k] for k in test]
        stardist = segment.load_model(SHIPPED)

        def stardist_boxes(image):
            labels, details = stardist.predict_instances(image, axes="YX", show_tile_progress=False)
            return boxes_from_labels(labels, scores={i + 1: float(p) for i, p in enumerate(details["prob"])})

        detector = load_detector(work / "detector")

        def detector_boxes(image):
            return predict_boxes(detector, image, score_thresh=None, nms_iou=detector_settings.nms_iou)

        stardist_pred, stardist_seconds = timed(stardist_boxes, images)
        detector_pred, detector_seconds = timed(detector_boxes, images)
        ours = mean_average_precision(truth, detector_pred)
        theirs = mean_average_precision(truth, stardist_pred)
        print(json.dumps({
            "map50": round(ours["map50"], 4),
            "map50_95": round(ours["map50_95"], 4),
            "map50_stardist": round(theirs["map50"], 4),
            "speedup": round(stardist_seconds / detector_seconds, 2),
            "map50_95_stardist": round(theirs["map50_95"], 4),
            "detector_seconds_per_image": round(detector_seconds, 4),
            "stardist_seconds_per_image": round(stardist_seconds, 4),
            "budget_steps": detector_settings.epochs * detector_settings.steps_per_epoch,
            "detector_training": {k: detector_meta["training"][k] for k in ("steps_run", "epochs_run", "train_seconds",
                                                                            "stopped_by")},
            "stardist_model": str(SHIPPED.relative_to(ROOT)),
            "stardist_training": {k: stardist_meta["training"].get(k) for k in ("steps_run", "epochs_run",
                                                                                "train_seconds", "stopped_by")},
            "detector_score_thresh": detector.score_thresh,
            "detector_validation_map50": round(detector_meta["validation"]["map50"], 4),
            "stardist_thresholds": stardist_meta["thresholds"],
            "detector_architecture": detector.architecture,
            "n_train": len(split["train"]), "n_validation": len(split["validation"]), "n_test": len(test),
            "n_test_boxes": int(sum(len(b) for b in truth)),
            "n_detector_boxes": int(sum(len(b) for b in detector_pred)),
            "n_stardist_boxes": int(sum(len(b) for b in stardist_pred)),
            "cpu_count": os.cpu_count(), "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
            "quick": QUICK,
        }))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
