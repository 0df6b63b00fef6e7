"""Hyperparameter sweeps (grid search): the combinations of a ``sweep.models`` entry, each
candidate's validation score, the choice of the best, the fit flag, the table and the
overlaid curves.

The plan (snakescope.pipeline.plan) makes one training job per combination, writing
``results/models/sweeps/<model>/<combination>`` with the same data, split and seed as the
model would have had, and one selection job (:func:`select_model`) that writes
``results/models/<model>`` as a copy of the best candidate (so segmentation, export and
fine-tuning use it as any trained model), ``<model>_sweep.csv`` and ``<model>_sweep.png``.

Scores (``sweep.metric``), both on the saved validation split:

* ``val_loss``: the lowest validation loss of the run, the kept epoch's (lower is better);
* ``val_f1``: F1 at IoU 0.5 of the kept weights on the validation images (higher is
  better): the U-Net records it when it trains; a StarDist candidate's is computed after its
  training by :func:`record_validation_f1`, with the thresholds optimized on those images.

Fit flag of each candidate, from its curves (``training.csv``):

* ``overfitting``: the validation loss ended more than :data:`OVERFIT_RISE` above its
  minimum while the training loss kept falling after that minimum;
* ``underfitting``: both its lowest validation loss and its final training loss lie more
  than :data:`UNDERFIT_EXCESS` above the best candidate's (the lowest of each);
* ``ok`` otherwise.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import shutil
from pathlib import Path
from typing import Mapping, Sequence

from snakescope.errors import InputError
from snakescope.io.atomic import atomic_path, write_json
from snakescope.training.harness import CURVES, HISTORY, METADATA, read_metadata

log = logging.getLogger(__name__)

__all__ = ["METRICS", "OVERFIT_RISE", "UNDERFIT_EXCESS", "apply_combination", "combination_name", "combinations",
           "fit_flags", "plot_sweep", "record_validation_f1", "select_model", "sweep_table"]

#: Each metric and whether higher is better.
METRICS = {"val_loss": False, "val_f1": True}
#: Overfitting: the final validation loss exceeds its minimum by this share of it.
OVERFIT_RISE = 0.10
#: Underfitting: both losses exceed the best candidate's by this share of it.
UNDERFIT_EXCESS = 0.25


def combinations(values: Mapping[str, Sequence]) -> list[dict]:
    """Every combination of ``{setting: [values]}``, settings in name order, values in the
    order given (so the same block always gives the same list)."""
    keys = sorted(values)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(values[k] for k in keys))]


def _token(value) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "x".join(_token(v) for v in value)
    return re.sub(r"[^A-Za-z0-9.+-]", "_", str(value))


def combination_name(combination: Mapping) -> str:
    """A readable, stable folder name: ``learning_rate=0.001,unet_n_depth=2`` (lists joined
    with ``x``, other characters than letters, digits and ``.+-`` as ``_``)."""
    return ",".join(f"{key}={_token(combination[key])}" for key in sorted(combination))


def apply_combination(settings: Mapping, combination: Mapping) -> dict:
    """A learner's training settings (a dict) with a combination's values; ``a.b`` keys set
    one key of a nested dict (the U-Net's ``architecture.n_depth``)."""
    out = dict(settings)
    for key, value in combination.items():
        head, _, rest = key.partition(".")
        out[head] = {**out[head], rest: value} if rest else value
    return out


# ---- a candidate's scores ---------------------------------------------------------------


def record_validation_f1(learner: str, model_dir: str | Path, pairs: Mapping) -> float | None:
    """The candidate's F1 at IoU 0.5 on its validation images, written into its
    ``snakescope.json`` (``validation.f1@0.5``, as the U-Net records it) and returned.

    The U-Net has it already; a StarDist model predicts its validation images (``pairs``:
    key -> (image, labels), the keys in its metadata) with its optimized thresholds. Other
    learners have none (None)."""
    meta = read_metadata(model_dir)
    if learner == "unet":
        return (meta.get("validation") or {}).get("f1@0.5")
    if learner != "stardist":
        return None
    from snakescope.evaluation.instances import instance_metrics, summarize
    from snakescope.segmentation.stardist import load_model

    model = load_model(model_dir)
    keys = meta["data"]["validation_keys"]
    per_image = {}
    for key in keys:
        image, truth = pairs[key]
        n_tiles = model._guess_n_tiles(image)  # bounded memory on large frames
        predicted = model.predict_instances(image, n_tiles=n_tiles, show_tile_progress=False)[0]
        per_image[key] = instance_metrics(truth, predicted, (0.5,), where=key)
    f1 = float(summarize(per_image)["f1"].iloc[0])
    meta["validation"] = {**(meta.get("validation") or {}), "f1@0.5": f1, "images": len(keys)}
    write_json(Path(model_dir) / METADATA, meta)
    log.info("%s: validation F1 at IoU 0.5 %.4f on %d images", model_dir, f1, len(keys))
    return f1


def _curves(folder: Path):
    import pandas as pd

    path = folder / HISTORY
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def _candidate_row(candidate: Mapping) -> dict:
    """One candidate's figures: settings, kept epoch, losses there and at the end, F1."""
    folder = Path(candidate["folder"])
    if not (folder / METADATA).is_file():
        raise InputError(folder, "sweep candidate has no snakescope.json (its training did not finish)")
    meta, history = read_metadata(folder), _curves(folder)
    val = history["val_loss"] if "val_loss" in history else None
    best = int(val.idxmin()) if val is not None and val.notna().any() else None
    value = lambda column, row: (float(history[column].iloc[row])  # noqa: E731
                                 if column in history and row is not None and len(history) else math.nan)
    last = len(history) - 1 if len(history) else None
    return {"combination": candidate["name"], **candidate["settings"],
            "epochs_run": len(history), "best_epoch": best + 1 if best is not None else None,
            "train_loss": value("loss", best), "val_loss": value("val_loss", best),
            "final_train_loss": value("loss", last), "final_val_loss": value("val_loss", last),
            "val_f1": (meta.get("validation") or {}).get("f1@0.5", math.nan), "folder": str(folder)}


def fit_flags(rows: Sequence[Mapping]) -> list[str]:
    """``overfitting``, ``underfitting`` or ``ok`` per candidate (module docstring)."""
    finite = lambda v: v is not None and not math.isnan(v)  # noqa: E731
    best_val = min((r["val_loss"] for r in rows if finite(r["val_loss"])), default=math.nan)
    best_train = min((r["final_train_loss"] for r in rows if finite(r["final_train_loss"])), default=math.nan)
    flags = []
    for r in rows:
        rise = r["final_val_loss"] - r["val_loss"]
        if finite(rise) and rise > OVERFIT_RISE * abs(r["val_loss"]) and r["final_train_loss"] < r["train_loss"]:
            flags.append("overfitting")
        elif (finite(r["val_loss"]) and finite(r["final_train_loss"])
              and r["val_loss"] > best_val + UNDERFIT_EXCESS * abs(best_val)
              and r["final_train_loss"] > best_train + UNDERFIT_EXCESS * abs(best_train)):
            flags.append("underfitting")
        else:
            flags.append("ok")
    return flags


def sweep_table(candidates: Sequence[Mapping], metric: str):
    """The sweep's table (a DataFrame, candidates in their order): settings, kept epoch,
    losses, ``val_f1``, ``score`` (the metric's value), ``chosen`` (the best; a tie goes to
    the first, a candidate without a score is never chosen while another has one) and
    ``fit``. ``candidates``: [{name, settings, folder}]."""
    import pandas as pd

    if metric not in METRICS:
        raise InputError("sweep.metric", f"{metric!r} is not one of {', '.join(METRICS)}")
    rows = [_candidate_row(c) for c in candidates]
    table = pd.DataFrame(rows)
    table["score"] = table[metric].astype(float)
    ranked = table["score"] if METRICS[metric] else -table["score"]
    if ranked.notna().any():
        best = int(ranked.idxmax())
    else:
        raise InputError(candidates[0]["folder"], f"no sweep candidate has a {metric} to compare")
    table["chosen"] = [i == best for i in range(len(table))]
    table["fit"] = fit_flags(rows)
    return table


def plot_sweep(table, png: str | Path, title: str = "") -> None:
    """Training (dashed) and validation (solid) loss of every candidate overlaid, one colour
    each, the chosen one thicker; the legend names each with its fit flag."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    colours = plt.get_cmap("tab10")
    positive = True
    for i, row in enumerate(table.itertuples()):
        history = _curves(Path(row.folder))
        if not len(history):
            continue
        epochs = list(range(1, len(history) + 1))
        width = 2.6 if row.chosen else 1.2
        label = f"{row.combination} ({row.fit}){'  chosen' if row.chosen else ''}"
        for ax, column in zip(axes, ("loss", "val_loss")):
            if column in history:
                ax.plot(epochs, history[column], color=colours(i % 10), lw=width, ls="--" if column == "loss" else "-",
                        label=label)
                positive &= bool((history[column].dropna() > 0).all())
    for ax, name in zip(axes, ("training loss", "validation loss")):
        ax.set_xlabel("epoch")
        ax.set_title(name, fontsize=11)
        if positive:
            ax.set_yscale("log")
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle(title or "sweep", fontsize=12)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def select_model(task: Mapping) -> dict:
    """The selection job: the table and figure of the candidates, and the best one copied to
    the model folder, its ``snakescope.json`` saying which and from where. Returns the
    chosen row."""
    outputs, metric = task["outputs"], task["metric"]
    table = sweep_table(task["candidates"], metric)
    with atomic_path(outputs["table"]) as tmp:
        table.to_csv(tmp, index=False)
    model = Path(outputs["model"]).name
    plot_sweep(table, outputs["figure"], title=f"{model}: {len(table)} candidates, chosen by {metric}")
    chosen = table[table["chosen"]].iloc[0]
    source = Path(chosen["folder"])
    with atomic_path(outputs["model"]) as tmp:
        shutil.copytree(source, tmp)
        meta = json.loads((tmp / METADATA).read_text())
        meta["sweep"] = {"metric": metric, "chosen": chosen["combination"], "candidate": str(source),
                         "settings": task["candidates"][int(table.index[table["chosen"]][0])]["settings"],
                         "score": None if math.isnan(chosen["score"]) else float(chosen["score"]),
                         "fit": chosen["fit"], "table": outputs["table"]}
        write_json(tmp / METADATA, meta)
    with atomic_path(outputs["curve"]) as tmp:
        shutil.copyfile(source / CURVES, tmp)
    if task["learner"] == "classifier":  # the report shows the held-out confusion beside the model
        from snakescope.classification.metrics import write_training_confusion

        write_training_confusion(outputs["model"], f"{outputs['model']}_confusion.png")
    log.info("%s: chose %s (%s %.5g) of %d candidates", model, chosen["combination"], metric, chosen["score"],
             len(table))
    return chosen.to_dict()
