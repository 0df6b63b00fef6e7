"""Classification benchmark: the classifier trained on MitoCheck nuclei through the module's code.

Data: ``../shared/data/mitocheck`` (64x64 uint8 crops of H2B-GFP HeLa nuclei, 16 imbalanced
phenotype classes, 41 to 331 crops each). If the folder is absent, a JSON with a "skipped"
reason is printed.

Protocol
--------
* One stratified split, seeded (seed 0), 70 / 15 / 15 % train / validation / test, made by
  :func:`snakescope.training.splits.make_or_load_stratified_split` (saved in a scratch
  folder and reused by both trainings).
* Two trainings with identical settings and the same wall-clock budget each (``BUDGET_S`` =
  480 s on the CPU, ``classification.time_limit``: the training harness stops after the step
  that spends it, or early stopping on the validation loss does; the whole bench takes about
  17 minutes): one with inverse-frequency class weights (``imbalance="weights"``), one
  without (``imbalance="none"``). On a shared machine the number of epochs that fit in the budget
  varies; both are reported (``epochs``, ``epochs_unweighted``).
* Model: the module's classic conv/pool stack (32, 64, 128, 128 filters, dense 256 and 128,
  dropout 0.5), input resized inside the model from 64 to 48 pixels for speed, per-patch
  percentile normalization (1, 99.8), on-the-fly augmentation (flips, 90 degree rotations,
  noise, blur, gain/offset), Adam, learning rate halved on validation-loss plateaus
  (the harness' ``plateau`` schedule: after half the patience, 10 epochs).
* Test metrics with the best (lowest validation loss) weights, predictions averaged over
  the 8 flips/rotations (test-time augmentation).
* ``rare_class_recall_*``: mean test recall of the 4 classes with the fewest examples
  (listed in ``rare_classes``).

Prints one JSON object as its last line. Environment overrides (for experiments only):
SNAKESCOPE_BENCH_BUDGET_S, SNAKESCOPE_BENCH_RESIZE, SNAKESCOPE_BENCH_EXTRA (JSON of
classification settings and train_classifier keyword arguments).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DATA = ROOT.parent / "shared" / "data" / "mitocheck"
SEED = 0
FRACTIONS = (0.7, 0.15, 0.15)
BUDGET_S = float(os.environ.get("SNAKESCOPE_BENCH_BUDGET_S", 480))
RESIZE = int(os.environ.get("SNAKESCOPE_BENCH_RESIZE", 48))
N_RARE = 4

SETTINGS = dict(  # classification settings
    epochs=1000,  # bounded by the time budget and early stopping
    batch_size=32,
    learning_rate=1e-3,
    augment=True,
    patience=20,
    time_limit=BUDGET_S,
    split_fractions=list(FRACTIONS),
)
KNOBS = dict(  # train_classifier keyword arguments
    lr_schedule="plateau",
    resize_to=RESIZE if RESIZE != 64 else None,
    tta=True,
)


def main() -> dict:
    if not DATA.is_dir():
        return {"skipped": f"{DATA} is absent (a clone without ../shared/data)"}
    import dataclasses

    from snakescope.classification import train_classifier
    from snakescope.io.annotations import load_patch_folder
    from snakescope.settings import Classification, defaults
    from snakescope.training.splits import make_or_load_stratified_split

    t0 = time.perf_counter()
    patches, labels, _ = load_patch_folder(DATA)
    counts = {c: labels.count(c) for c in sorted(set(labels))}
    rare = sorted(counts, key=lambda c: (counts[c], c))[:N_RARE]
    extra = json.loads(os.environ.get("SNAKESCOPE_BENCH_EXTRA", "{}"))
    fields = {f.name for f in dataclasses.fields(Classification)}
    settings = defaults().classification.replace(**SETTINGS, **{k: v for k, v in extra.items() if k in fields})
    knobs = {**KNOBS, **{k: v for k, v in extra.items() if k not in fields}}
    result = {"budget_s_per_training": BUDGET_S, "input_pixels": RESIZE, "rare_classes": rare}
    with tempfile.TemporaryDirectory(prefix="snakescope-bench-classify-") as scratch:
        scratch = Path(scratch)
        split = make_or_load_stratified_split(labels, scratch / "split.csv", FRACTIONS, SEED)
        result["n_train"] = int((split == "train").sum())
        result["n_val"] = int((split == "val").sum())
        result["n_test"] = int((split == "test").sum())
        for mode, suffix in (("weights", "weighted"), ("none", "unweighted")):
            metadata = train_classifier(patches, labels, scratch / mode, settings.replace(imbalance=mode), seed=SEED,
                                        split_path=scratch / "split.csv", **knobs)
            test, training = metadata["test"], metadata["training"]
            key = "" if mode == "weights" else "_unweighted"
            result[f"balanced_accuracy{key}"] = round(test["balanced_accuracy"], 4)
            result[f"macro_f1{key}"] = round(test["macro_f1"], 4)
            result[f"accuracy{key}"] = round(test["accuracy"], 4)
            result[f"rare_class_recall_{suffix}"] = round(
                sum(test["per_class"][c]["recall"] for c in rare) / len(rare), 4)
            result[f"train_seconds{key}"] = round(training["train_seconds"], 1)
            result[f"epochs{key}"] = training["epochs_run"]
            result[f"best_epoch{key}"] = training["best_epoch"]
            result[f"stopped_by{key}"] = training["stopped_by"]
            print(json.dumps({mode: {k: metadata[k] for k in ("data", "training", "test")}}, default=str)[:3000],
                  file=sys.stderr, flush=True)
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return result


if __name__ == "__main__":
    print(json.dumps(main(), sort_keys=True))
