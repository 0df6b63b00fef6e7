"""One training harness for every learner: seeding, callbacks, time budget, best and last
weights, curves, and one model-folder layout with its metadata file.

Every model the workflow trains (StarDist, U-Net, CARE, N2V, classifier) is a folder::

    config.json       the network's own configuration (StarDist/CSBDeep/N2V config, or
                      snakescope's for the U-Net and the classifier)
    weights_best.h5   weights at the lowest validation loss (Keras HDF5, the layout StarDist,
                      CSBDeep and N2V load)
    weights_last.h5   weights after the last epoch
    training.csv      one row per epoch: losses, metrics, learning rate
    training.png      the curves (snakescope.training.curves)
    training.log      what the training did, as it went
    snakescope.json   metadata: kind, dimensionality, seed, settings, data, what the
                      training did (epochs and steps run, best epoch, why it stopped,
                      seconds), the parent model of a fine-tuning, package versions

plus what a learner needs besides (StarDist's thresholds.json, a split, validation scores).
The folder is written under a temporary name and renamed when complete
(:func:`snakescope.io.atomic.atomic_path`), so an interrupted training never leaves a model
that looks finished.

:class:`TrainingRun` is used the same way by each learner::

    with TrainingRun(out_dir, kind="unet", ndim=2, seed=seed, schedule=Schedule(...)) as run:
        model = build(...)                      # the learner's own network
        model.fit(..., callbacks=run.callbacks())
        run.finish(model, data={...}, settings={...})

Works in both environments (Keras 3 in the main one, Keras 2 with TensorFlow 2.15 in the
n2v one): Keras is imported through CSBDeep's ``keras_import``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from snakescope.io.atomic import atomic_path, write_json
from snakescope.training.curves import plot_curves

log = logging.getLogger(__name__)

__all__ = ["CONFIG", "CURVES", "HISTORY", "LOG", "METADATA", "WEIGHTS_BEST", "WEIGHTS_LAST", "Schedule",
           "TrainingRun", "freeze_encoder", "load_weights", "read_metadata", "save_weights", "seed_everything"]

CONFIG = "config.json"
WEIGHTS_BEST = "weights_best.h5"
WEIGHTS_LAST = "weights_last.h5"
HISTORY = "training.csv"
CURVES = "training.png"
LOG = "training.log"
METADATA = "snakescope.json"
SCHEDULES = ("constant", "cosine", "plateau")


def _keras(kind: str, name: str):
    from csbdeep.utils.tf import keras_import

    return keras_import(kind, name)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Same seed, same weights on the CPU: Python's, NumPy's and TensorFlow's generators
    seeded, and (``deterministic``) TensorFlow's deterministic kernels."""
    import tensorflow as tf

    np.random.seed(seed)
    tf.keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def save_weights(keras_model, path: str | Path) -> None:
    """Weights in the legacy Keras HDF5 layout (what StarDist, CSBDeep and N2V read), under
    Keras 3 as under Keras 2; written beside and renamed, so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".partial-{path.name}")
    try:
        try:
            from keras.src.legacy.saving import legacy_h5_format  # Keras 3
        except ImportError:  # Keras 2 writes this layout for any .h5 name
            keras_model.save_weights(str(tmp))
        else:
            import h5py

            with h5py.File(tmp, "w") as f:
                legacy_h5_format.save_weights_to_hdf5_group(f, keras_model)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def load_weights(keras_model, path: str | Path) -> None:
    keras_model.load_weights(str(path))


def load_network(model_dir: str | Path, config: dict, build, weights: str = "best"):
    """The network of a model folder: ``build(config["architecture"])`` with the folder's
    ``best`` (or ``last``) weights; InputError naming the folder or file that does not fit."""
    from snakescope.errors import InputError

    names = {"best": WEIGHTS_BEST, "last": WEIGHTS_LAST}
    if weights not in names:
        raise InputError(model_dir, f"weights must be 'best' or 'last', not {weights!r}")
    weight_file = Path(model_dir) / names[weights]
    if not weight_file.exists():
        raise InputError(weight_file, "weights file missing")
    model = build(config["architecture"])
    try:
        load_weights(model, weight_file)
    except Exception as exc:  # noqa: BLE001 - report which file does not fit
        raise InputError(weight_file, f"weights do not fit the architecture in config.json "
                                      f"({type(exc).__name__}: {exc})") from None
    return model


def freeze_encoder(keras_model) -> list[str]:
    """Freeze the down path of a csbdeep U-Net (StarDist's, the three-class U-Net's) for
    fine-tuning: every layer with weights before the first ``middle`` layer (StarDist's
    grid-pooling convolutions and the ``down_level_*`` blocks). Call before compiling.
    Returns the names of the layers frozen."""
    names = [layer.name for layer in keras_model.layers]
    if not any(n.startswith("middle") for n in names):
        raise ValueError("not a csbdeep U-Net: no 'middle' layer marks the end of its down path")
    frozen = []
    for layer in keras_model.layers:
        if layer.name.startswith("middle"):
            break
        if layer.weights:
            layer.trainable = False
            frozen.append(layer.name)
    return frozen


def read_metadata(folder: str | Path) -> dict:
    """A model folder's snakescope.json ({} for a folder written elsewhere)."""
    with contextlib.suppress(OSError, ValueError):
        return json.loads((Path(folder) / METADATA).read_text())
    return {}


@dataclass(frozen=True)
class Schedule:
    """How long and at which learning rate a training runs.

    ``lr_schedule``: ``constant``; ``cosine`` (a short warm-up, then cosine decay over the
    planned steps, or over the time budget when that ends first, so a budget cut still ends
    at a low rate); ``plateau`` (halve when the validation loss stalls for half the
    patience). ``patience``: early stopping after that many epochs without a better
    validation loss (0: off). ``time_limit``: wall-clock seconds counted from ``start``
    (default: when the run begins); training stops after the step that spends it.
    """

    epochs: int
    steps_per_epoch: int | None
    learning_rate: float
    lr_schedule: str = "constant"
    patience: int = 0
    time_limit: float | None = None
    start: float | None = None

    def check(self) -> None:
        from snakescope.errors import InputError

        if self.lr_schedule not in SCHEDULES:
            raise InputError("lr_schedule", f"{self.lr_schedule!r} is not one of {', '.join(SCHEDULES)}")


def _schedule_callback(schedule: Schedule, total_steps: int, deadline: float | None):
    """Learning-rate schedule and wall-clock budget in one callback.

    Progress is the larger of steps done / planned and the share of the time up to
    ``deadline`` (a ``time.perf_counter()`` value) already spent. When progress reaches 1,
    training stops after the current step (the epoch still validates).
    """
    Callback = _keras("callbacks", "Callback")
    lr0, kind = float(schedule.learning_rate), schedule.lr_schedule

    class ScheduleCallback(Callback):
        def __init__(self):
            super().__init__()
            self.step = 0
            self.start = None
            self.hit_deadline = False

        def _set(self, value):
            lr = self.model.optimizer.learning_rate
            if hasattr(lr, "assign"):
                lr.assign(float(value))
            else:
                self.model.optimizer.learning_rate = float(value)

        def on_train_begin(self, logs=None):
            self.start = time.perf_counter()
            if kind == "cosine":
                self._set(lr0)

        def progress(self):
            p = self.step / max(1, total_steps)
            if deadline is not None:
                now = time.perf_counter()
                p = max(p, 1.0 if now >= deadline else (now - self.start) / max(1e-9, deadline - self.start))
            return p

        def on_train_batch_begin(self, batch, logs=None):
            p = self.progress()
            if p >= 1.0:
                self.model.stop_training = True
            if kind == "cosine":
                warm = 0.02
                f = p / warm if p < warm else 0.5 * (1 + math.cos(math.pi * min(1.0, (p - warm) / (1 - warm))))
                self._set(lr0 * max(f, 0.01))

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            if deadline is not None and time.perf_counter() >= deadline:  # not when the planned steps end it
                self.model.stop_training = self.hit_deadline = True

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None and "learning_rate" not in logs:  # Keras 3 logs it already
                lr = self.model.optimizer.learning_rate
                logs["lr"] = float(np.asarray(lr.numpy() if hasattr(lr, "numpy") else lr))

    return ScheduleCallback()


def _best_checkpoint(path: Path):
    """Save the weights with the lowest finite validation loss and remember the epoch."""
    Callback = _keras("callbacks", "Callback")

    class BestCheckpoint(Callback):
        def __init__(self):
            super().__init__()
            self.best, self.best_epoch = np.inf, -1

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get("val_loss")
            if value is not None and np.isfinite(value) and value < self.best:
                self.best, self.best_epoch = float(value), int(epoch)
                save_weights(self.model, path)

    return BestCheckpoint()


def _epoch_logger():
    Callback = _keras("callbacks", "Callback")

    class EpochLog(Callback):
        def on_train_begin(self, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            items = " ".join(f"{k}={float(v):.5g}" for k, v in (logs or {}).items())
            log.info("epoch %d (%.0f s): %s", epoch + 1, time.perf_counter() - self.t0, items)

    return EpochLog()


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("numpy", "tensorflow", "tensorflow-cpu", "keras", "csbdeep", "stardist", "n2v", "zarr"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


class TrainingRun:
    """One training into an atomic model folder (see the module docstring for its files).

    ``kind``: the learner (``stardist``, ``unet``, ``n2v``, ``care``, ``classifier``).
    ``schedule``: epochs, steps, learning rate and its schedule, patience, time budget.
    ``parent``: the folder of the model this one was fine-tuned from, recorded in the
    metadata. Inside the ``with`` block, :attr:`folder` is the temporary folder to write to;
    the final one appears when the block ends without an exception.
    """

    def __init__(self, out_dir: str | Path, *, kind: str, ndim: int, seed: int, schedule: Schedule,
                 parent: str | Path | None = None):
        schedule.check()
        self.out_dir = Path(out_dir)
        self.kind, self.ndim, self.seed, self.schedule = kind, int(ndim), int(seed), schedule
        self.parent = str(parent) if parent else None
        self.start = schedule.start if schedule.start is not None else time.perf_counter()
        self.folder: Path | None = None
        self._atomic = None
        self._log_handler = None
        self._schedule_cb = self._best_cb = self._stopper = None
        self._fit_start = None

    def __enter__(self) -> "TrainingRun":
        self._atomic = atomic_path(self.out_dir)
        self.folder = self._atomic.__enter__()
        self.folder.mkdir(parents=True)
        handler = logging.FileHandler(self.folder / LOG, mode="a")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger("snakescope")
        root.addHandler(handler)
        self._old_level = root.level
        if root.getEffectiveLevel() > logging.INFO:
            root.setLevel(logging.INFO)
        self._log_handler = handler
        return self

    def __exit__(self, *exc) -> bool:
        root = logging.getLogger("snakescope")
        root.removeHandler(self._log_handler)
        root.setLevel(self._old_level)
        self._log_handler.close()
        return bool(self._atomic.__exit__(*exc))

    def callbacks(self, *, checkpoint: bool = True) -> list:
        """Keras callbacks: schedule and time budget, learning-rate halving on plateaus
        (``plateau``), early stopping, the best-weights checkpoint (``checkpoint=False``
        where the library keeps its own ``weights_best.h5``), an epoch log and the CSV."""
        s = self.schedule
        total = int(s.epochs) * int(s.steps_per_epoch or 0) or 10**12
        deadline = self.start + float(s.time_limit) if s.time_limit else None
        self._schedule_cb = _schedule_callback(s, total, deadline)
        callbacks = [self._schedule_cb]
        if s.lr_schedule == "plateau":
            callbacks.append(_keras("callbacks", "ReduceLROnPlateau")(monitor="val_loss", factor=0.5,
                                                                      patience=max(1, (s.patience or 10) // 2),
                                                                      verbose=0))
        if s.patience:
            self._stopper = _keras("callbacks", "EarlyStopping")(monitor="val_loss", mode="min",
                                                                 patience=int(s.patience), verbose=0)
            callbacks.append(self._stopper)
        if checkpoint:
            self._best_cb = _best_checkpoint(self.folder / WEIGHTS_BEST)
            callbacks.append(self._best_cb)
        callbacks.append(_epoch_logger())
        callbacks.append(_keras("callbacks", "CSVLogger")(str(self.folder / HISTORY)))
        self._fit_start = time.perf_counter()
        return callbacks

    def stopped_by(self, epochs_run: int) -> str:
        if self._schedule_cb is not None and self._schedule_cb.hit_deadline:
            return "time_limit"
        if self._stopper is not None and getattr(self._stopper, "stopped_epoch", 0) > 0:
            return "early_stopping"
        return "epochs" if epochs_run >= self.schedule.epochs else "schedule"

    def finish(self, keras_model, *, settings: dict, data: dict, extra: dict | None = None,
               title: str = "") -> dict:
        """Last weights, best weights (the last ones when no validation loss was ever
        finite), the best loaded into ``keras_model``, curves and ``snakescope.json``.
        Returns the metadata."""
        import pandas as pd

        seconds = time.perf_counter() - (self._fit_start or self.start)
        folder = self.folder
        save_weights(keras_model, folder / WEIGHTS_LAST)
        if not (folder / WEIGHTS_BEST).exists():
            shutil.copyfile(folder / WEIGHTS_LAST, folder / WEIGHTS_BEST)
        load_weights(keras_model, folder / WEIGHTS_BEST)
        history = pd.read_csv(folder / HISTORY) if (folder / HISTORY).is_file() else pd.DataFrame()
        val = history["val_loss"] if "val_loss" in history else pd.Series(dtype=float)
        best = int(val.idxmin()) if val.notna().any() else None
        epochs_run = int(len(history))
        if len(history):
            plot_curves(folder / HISTORY, folder / CURVES, title=title or f"{self.kind} ({self.ndim}D) training")
        steps = self._schedule_cb.step if self._schedule_cb is not None else None
        training = {
            "epochs_run": epochs_run,
            "steps_run": steps,
            "best_epoch": best + 1 if best is not None else None,
            "best_val_loss": float(val.iloc[best]) if best is not None else None,
            "final_loss": float(history["loss"].iloc[-1]) if "loss" in history and len(history) else None,
            "stopped_by": self.stopped_by(epochs_run),
            "train_seconds": round(seconds, 2),
            "schedule": {k: getattr(self.schedule, k) for k in ("epochs", "steps_per_epoch", "learning_rate",
                                                                 "lr_schedule", "patience", "time_limit")},
        }
        metadata = {
            "format": "snakescope-model/1",
            "kind": self.kind,
            "ndim": self.ndim,
            "seed": self.seed,
            "settings": settings,
            "data": data,
            "training": training,
            "parent": self.parent,
            "versions": _versions(),
            **(extra or {}),
        }
        write_json(folder / METADATA, metadata)
        log.info("%s training done: %d epochs, %s steps, best epoch %s, %s, %.0f s", self.kind, epochs_run, steps,
                 training["best_epoch"], training["stopped_by"], seconds)
        return metadata
