"""A hyperparameter sweep on real data: a 2 x 2 grid of StarDist learning rate and depth,
chosen on the validation split, against the default configuration given the same total
training budget.

Run from the repository root: ``.venv/main/bin/python bench/sweep.py``. Prints ONE JSON
object as the last line of stdout.

Data: ../shared/data/dsb2018-fluo with the seeded split and normalization of
bench/segment_accuracy.py (84 train, 12 validation, 24 held-out test images).

The sweep runs the package code that the workflow's sweep jobs run
(snakescope.training.sweep): :func:`combinations` of
``{learning_rate: [3e-4, 1e-3], unet_n_depth: [2, 3]}`` applied to the schema's default
StarDist settings (:func:`apply_combination`), each candidate trained by
:func:`snakescope.segmentation.stardist.train_stardist` with the same data, split and seed
(thresholds optimized on the validation images), scored on the validation images
(:func:`record_validation_f1`), and :func:`select_model` choosing by the schema's default
``sweep.metric`` (val_loss), writing the table, the overlaid curves and the chosen copy.

Budget: training steps, not wall clock, so that a busy machine changes the time, never the
comparison: each candidate trains ``CANDIDATE_STEPS`` steps; the default configuration
(learning rate 3e-4, depth 3: one of the four combinations) trains once for 4 x that, the
sweep's total. Everything else is the schema's default (32 rays, grid 2, batch 4,
augmentation, TensorFlow's deterministic kernels as in the workflow) except the patch size
(128 x 128: a quarter of the default's pixels per step, so that a CPU gets a candidate far
enough to be told apart from the others), ``steps_per_epoch`` (10, so that even a candidate
has several epochs of curves), ``epochs`` (the budget) and ``patience`` (0: the budget, not
early stopping, ends every run). Everything trains one after the other; the load average is
recorded around each training. Threshold tuning, the validation F1 and the held-out scoring
come on top (about 20 minutes in all on 2 CPU cores).

Keys: ``f1_best`` (held-out F1 at IoU 0.5 of the chosen candidate, the chosen model's own
thresholds), ``f1_default`` (of the default configuration), ``chosen``, and ``details`` (per
candidate: steps, epochs, seconds, validation loss, validation F1, fit flag, and the held-out
F1 of the chosen one, of the one val_f1 would have chosen and of the default combination,
``f1_default_at_candidate_steps``: the default trained as one candidate, with the chosen
one's steps; the default's steps, epochs and seconds; load averages; the recipe).
``SNAKESCOPE_SWEEP_STEPS``: another per-candidate budget (default 250 steps, a multiple of
10). ``SNAKESCOPE_BENCH_QUICK=1``: a plumbing run of a few minutes (64 x 64 crops, 6 train,
2 validation, 2 test images, a tiny network, 2 x 2 steps per training: the figures mean
nothing).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
QUICK = os.environ.get("SNAKESCOPE_BENCH_QUICK") == "1"
CANDIDATE_STEPS = int(os.environ.get("SNAKESCOPE_SWEEP_STEPS", 250))
GRID = {"learning_rate": [3e-4, 1e-3], "unet_n_depth": [2, 3]}
SEED = 2018
STEPS_PER_EPOCH = 10
PATCH_SIZE = [128, 128]


def held_out_f1(model_dir: Path, pairs: dict, test: list[str]) -> float:
    """F1 at IoU 0.5 over the held-out images (counts summed), with the model's thresholds."""
    from snakescope.evaluation.instances import instance_metrics, summarize
    from snakescope.segmentation.stardist import load_model

    model = load_model(model_dir)
    per_image = {k: instance_metrics(pairs[k][1], model.predict_instances(pairs[k][0], show_tile_progress=False)[0],
                                     (0.5,), where=k) for k in test}
    return round(float(summarize(per_image)["f1"].iloc[0]), 4)


def train(pairs: dict, split: dict, folder: Path, settings) -> dict:
    """One training (train_stardist as the sweep's candidate jobs call it); its figures."""
    from snakescope.segmentation.stardist import train_stardist

    load_before, start = os.getloadavg()[0], time.perf_counter()
    meta = train_stardist(pairs, folder, settings, split=split, seed=SEED)
    training = meta["training"]
    return {"steps": training["steps_run"], "epochs": training["epochs_run"],
            "train_seconds": round(training["train_seconds"], 1), "stopped_by": training.get("stopped_by"),
            "total_seconds": round(time.perf_counter() - start, 1),
            "load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def main() -> None:
    from segment_accuracy import DATA, load

    if not DATA.exists():
        print(json.dumps({"skipped": f"{DATA} is absent"}))
        return
    from snakescope.settings import StarDistTraining, defaults
    from snakescope.training.sweep import apply_combination, combination_name, combinations, record_validation_f1, \
        select_model

    started = time.perf_counter()
    pairs, split, test = load()
    config = defaults()
    base = config.segmentation.stardist.replace(epochs=CANDIDATE_STEPS // STEPS_PER_EPOCH,
                                                steps_per_epoch=STEPS_PER_EPOCH, patience=0, patch_size=PATCH_SIZE,
                                                time_limit=None)
    if QUICK:
        split, test = {"train": split["train"][:6], "validation": split["validation"][:2]}, test[:2]
        base = base.replace(epochs=2, steps_per_epoch=2, n_rays=8, patch_size=[64, 64], batch_size=2)
        pairs = {k: (pairs[k][0][:64, :64], pairs[k][1][:64, :64]) for k in split["train"] + split["validation"] + test}
    work = Path(tempfile.mkdtemp(prefix="snakescope-bench-sweep-"))
    training_pairs = {k: pairs[k] for k in split["train"] + split["validation"]}
    try:
        candidates, figures = [], {}
        for combination in combinations(GRID):
            name = combination_name(combination)
            settings = StarDistTraining.from_dict(apply_combination(dataclasses.asdict(base), combination))
            folder = work / "sweeps" / name
            figures[name] = train(training_pairs, split, folder, settings)
            figures[name]["val_f1"] = round(record_validation_f1("stardist", folder, training_pairs), 4)
            candidates.append({"name": name, "settings": combination, "folder": str(folder)})
            print(name, figures[name], flush=True)
        out = work / "models" / "stardist_2d"
        task = {"learner": "stardist", "metric": config.sweep.metric, "candidates": candidates,
                "outputs": {"model": str(out), "curve": f"{out}_training.png", "table": f"{out}_sweep.csv",
                            "figure": f"{out}_sweep.png"}}
        chosen = select_model(task)
        import pandas as pd

        table = pd.read_csv(task["outputs"]["table"])
        for row in table.itertuples():
            figures[row.combination].update(val_loss=round(row.val_loss, 4), best_epoch=int(row.best_epoch),
                                            fit=row.fit)
        f1_best = figures[chosen["combination"]]["test_f1"] = held_out_f1(out, pairs, test)
        by_f1 = max(figures, key=lambda n: figures[n]["val_f1"])  # what sweep.metric val_f1 would choose
        # the default configuration is one of the candidates: its held-out F1 at the candidates' budget
        default_name = combination_name({k: getattr(base, k) for k in GRID})
        for name in {by_f1, default_name} & figures.keys():
            if "test_f1" not in figures[name]:
                figures[name]["test_f1"] = held_out_f1(work / "sweeps" / name, pairs, test)

        default_settings = base.replace(epochs=base.epochs * len(candidates))
        default = train(training_pairs, split, work / "default", default_settings)
        default["test_f1"] = f1_default = held_out_f1(work / "default", pairs, test)
        print(table.to_string(), flush=True)
        print(json.dumps({
            "f1_best": f1_best,
            "f1_default": f1_default,
            "chosen": chosen["combination"],
            "details": {
                "metric": config.sweep.metric,
                "candidates": figures,
                "default": {"settings": {k: getattr(default_settings, k) for k in GRID}, **default},
                "chosen_by_val_f1": by_f1, "test_f1_chosen_by_val_f1": figures[by_f1]["test_f1"],
                "f1_default_at_candidate_steps": figures.get(default_name, {}).get("test_f1"),
                "candidate_steps": base.epochs * base.steps_per_epoch,
                "default_steps": default_settings.epochs * base.steps_per_epoch,
                "recipe": {k: v for k, v in dataclasses.asdict(base).items() if k not in (*GRID, "epochs")},
                "seed": SEED, "n_train": len(split["train"]), "n_validation": len(split["validation"]),
                "n_test": len(test), "wall_seconds": round(time.perf_counter() - started, 1),
                "load_1min_end": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(), "quick": QUICK,
            },
        }))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
