"""Typed U-Net (semantic segmentation with cell types) on synthetic two-type data.

Data: snakescope.synthetic's nuclei of two morphological classes as the two cell types,
``round`` (small, round, bright, smooth) and ``elongated`` (larger, elongated, dimmer,
textured), so the type is visible in the image. Each image is a separate simulation (its own
seed, one time point): TRAIN images train, VALIDATION images validate (early stopping,
threshold tuning) and TEST images, never seen in training, are scored. Images are
percentile-normalized (1, 99.8) as the workflow's normalize step does.

The U-Net (snakescope.segmentation.unet.train_unet, segmentation.unet.types [round,
elongated]: five classes) trains within TIME_LIMIT seconds of wall clock (the harness's
time_limit). Scores on the test images, from the summed pixel confusion (background,
round_contour, round_body, elongated_contour, elongated_body; rows true, columns predicted):
``mean_iou`` over the five classes, ``contour_recall`` (mean recall of the two contour
classes), ``confusion_percent`` (row percentages), plus per-class IoU, the objects' type
accuracy (predicted objects matched to true ones at IoU >= 0.5, type from objects.parquet's
rule: the majority of the object's pixels) and instance F1 at IoU 0.5.

Prints one JSON object as its last line. Environment: SNAKESCOPE_BENCH_QUICK=1 for a smoke
run (a minute of training).
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
QUICK = os.environ.get("SNAKESCOPE_BENCH_QUICK") == "1"

TYPES = ("round", "elongated")
SHAPE = (192, 192)
N_CELLS = 28
TRAIN, VALIDATION, TEST = 16, 2, 8
TIME_LIMIT = 60 if QUICK else 540  # seconds of training, within the 10 minutes
SETTINGS = {"architecture": {"n_depth": 3, "n_filter_base": 16}, "patch_size": [96, 96], "batch_size": 8,
            "epochs": 1000, "steps_per_epoch": 20, "learning_rate": 2e-3, "patience": 8, "time_limit": TIME_LIMIT}


def typed_image(seed: int):
    """(normalized image, labels, {label: type id}) of one synthetic field of view."""
    from snakescope.segmentation.unet import normalize_percentile
    from snakescope.synthetic import make_timelapse

    sim = make_timelapse(ndim=2, n_frames=1, shape=SHAPE, n_cells=N_CELLS, class_names=TYPES,
                         division_probability=0.0, blank_fraction=0.0, seed=seed)
    type_of = {int(r.label): TYPES.index(r.class_name) + 1 for r in sim.classes.itertuples()}
    return normalize_percentile(sim.image[0]), sim.labels[0].astype(np.int32), type_of


def object_type_accuracy(truth, truth_types, predicted, class_map) -> tuple[int, int]:
    """(objects matched at IoU >= 0.5 whose predicted type is right, objects matched)."""
    from snakescope.segmentation.unet import object_types

    found = object_types(predicted, class_map, len(TYPES))
    right = matched = 0
    for label in np.unique(predicted[predicted > 0]):
        mask = predicted == label
        ids, counts = np.unique(truth[mask], return_counts=True)
        best = ids[np.argmax(counts)]
        if best == 0:
            continue
        union = np.count_nonzero(mask | (truth == best))
        if counts.max() / union >= 0.5:
            matched += 1
            right += int(found[int(label)][0] == truth_types[int(best)])
    return right, matched


def main() -> None:
    load = os.getloadavg()[0]
    from snakescope.evaluation.classes import confusion_metrics, confusion_percent
    from snakescope.evaluation.instances import instance_metrics, summarize
    from snakescope.segmentation import unet
    from snakescope.settings import defaults

    data = {f"s{seed:03d}": typed_image(seed) for seed in range(TRAIN + VALIDATION + TEST)}
    names = list(data)
    split = {"train": names[:TRAIN], "validation": names[TRAIN:TRAIN + VALIDATION]}
    test = names[TRAIN + VALIDATION:]
    base = defaults().segmentation.unet
    settings = base.replace(**{**SETTINGS, "architecture": {**base.architecture, **SETTINGS["architecture"]}},
                            types=list(TYPES))
    work = Path(tempfile.mkdtemp(prefix="snakescope-bench-semantic-"))
    try:
        train = split["train"] + split["validation"]
        metadata = unet.train_unet({k: data[k][:2] for k in train}, work / "unet", settings, split=split, seed=17,
                                   types={k: data[k][2] for k in train})
        model = unet.load_unet(work / "unet")
        class_names = list(model.class_names)
        cm = np.zeros((len(class_names),) * 2, np.int64)
        per_image, right, matched = {}, 0, 0
        for k in test:
            image, truth, type_of = data[k]
            class_map = np.zeros(image.shape, np.uint8)
            predicted = model.predict_instances(image, classes_out=class_map)
            cm += unet.class_confusion(truth, class_map, types=type_of, class_names=class_names)
            per_image[k] = instance_metrics(truth, predicted, (0.5,))
            r, m = object_type_accuracy(truth, type_of, predicted, class_map)
            right, matched = right + r, matched + m
        scores = confusion_metrics(cm, class_names)
        percent = confusion_percent(cm, class_names)
        contours = [n for n in class_names if n.endswith("_contour")]
        training = metadata["training"]
        print(json.dumps({
            "mean_iou": round(scores["mean_iou"], 4),
            "contour_recall": round(float(np.mean([scores["recall"][n] for n in contours])), 4),
            "confusion_percent": {"classes": class_names,
                                  "rows": [[round(float(v), 2) for v in row] for row in percent.to_numpy()]},
            "class_iou": {n: round(v, 4) for n, v in scores["iou"].items()},
            "pixel_accuracy": round(scores["pixel_accuracy"], 4),
            "type_accuracy": round(right / matched, 4) if matched else None,
            "matched_objects": matched,
            "f1_iou50": round(float(summarize(per_image)["f1"].iloc[0]), 4),
            "epochs": training["epochs_run"],
            "steps": training["steps_run"],
            "train_seconds": round(training["train_seconds"], 1),
            "load": round(load, 2),
            "load_end": round(os.getloadavg()[0], 2),
            "n_train": TRAIN, "n_validation": VALIDATION, "n_test": TEST, "image_shape": list(SHAPE),
            "recipe": f"U-Net depth {SETTINGS['architecture']['n_depth']}, {SETTINGS['architecture']['n_filter_base']} "
                      f"filters, patch {SETTINGS['patch_size']}, batch {SETTINGS['batch_size']}, lr "
                      f"{SETTINGS['learning_rate']} halved on plateau, median-frequency class weights, augmentation",
            "quick": QUICK,
        }))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
