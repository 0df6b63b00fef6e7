"""Training of the restoration models: Noise2Void (self-supervised, on the images themselves)
and CARE (supervised, on pairs of low and high quality images), through the training harness.

N2V needs the ``n2v`` package, which only works in the n2v environment (TF 2.15, Keras 2,
csbdeep 0.7.4, numpy 1.26); CARE runs in the main environment (TF 2.21, Keras 3, csbdeep
0.8.2). TensorFlow, csbdeep and n2v are imported inside the functions, so this module
imports under both.

The networks are n2v's (``n2v.models.N2V``: its loss, U-Net, config and folder layout) and
csbdeep's (``csbdeep.models.CARE``), so their tools load the folders written here. The
folder is the harness's (:mod:`snakescope.training.harness`); csbdeep/n2v keep their own
``weights_best.h5`` checkpoint. ``snakescope.json`` holds, besides the harness's metadata,
what prediction needs (``axes``, ``halo``, ``align``) and under ``data`` the images (and
targets), the channel and the patches.

The default settings (the schema's ``restoration.n2v``) differ from the n2v example notebook
(patch 64, 0.198 % masked pixels, uniform_withCP, U-Net depth 2 / kernel 5 / 32 filters,
batch 128, MAE): on a CPU budget those train too slowly to beat a tuned Gaussian filter. A
lighter U-Net with more, smaller steps, a larger masked share (more loss signal per step), a
blind spot without the centre pixel, the MSE loss (the mean, which is what removes zero-mean
noise: MAE's median biases and compresses contrast) and a cosine learning-rate decay learn
faster at an equal budget (bench/restore.py). N2V2's max-blur pooling, its U-Net without the
top skip connection and the median replacement remove plain N2V's checkerboard artefacts: on
real widefield noise (W2S, bench/restore_real.py) they gained 0.3 dB and 0.03 SSIM at equal
training time, more than a deeper or wider U-Net, larger patches or more blind spots did.
CARE's defaults are as light (16 filters, learning rate 2e-3, MSE), and its targets are
brought to their images' intensity scale (``fit_target``), which gained 1 dB on W2S.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from snakescope.blockwise.dense import receptive_halo
from snakescope.errors import InputError
from snakescope.restoration.models import check_model, import_n2v
from snakescope.restoration.patches import (
    MIN_PATCHES,
    as_list,
    as_source,
    augment,
    check_enough,
    check_pairs,
    intensity_fit,
    model_ndim,
    n2v_mask,
    pool_size,
    sample_patches,
    spatial_axes,
    split_pool,
    struct_offsets,
)
from snakescope.training.harness import WEIGHTS_BEST, Schedule, TrainingRun, load_weights, seed_everything

if TYPE_CHECKING:
    from snakescope.settings import CARETraining, N2VTraining

log = logging.getLogger(__name__)

__all__ = ["NETWORK_KEYS", "check_parent", "train_care", "train_n2v"]


def train_n2v(images, out_dir: str | Path, settings: N2VTraining, *, seed: int, ndim: int | None = None,
              channel: int | None = None, threads: int = 2, parent: str | Path | None = None) -> dict:
    """Train Noise2Void on the images themselves (self-supervised); write the model folder.

    ``images``: normalized NGFF image paths (or NgffImages, ``(array, axes)`` pairs,
    Sources), read patch by patch; ``channel`` of those with a c axis. ``settings``: the
    config's ``restoration.n2v``; ``seed``: the config's ``seed``; ``ndim``: 2 or 3 (default:
    3 for z stacks). ``time_limit`` counts from this call (imports and patch sampling
    included; the cosine schedule decays within what is left). ``parent``: a model folder of
    the same network whose best weights the training starts from instead of random ones
    (the normalization is still this data's mean and deviation); recorded in the metadata.
    ``settings.struct_mask``: structN2V's structured blind spot for noise correlated between
    neighbouring pixels (n2v's ``structN2Vmask``, see :func:`~snakescope.restoration.patches.n2v_mask`;
    None: the plain blind spot); with one, the patches are augmented by flips only, which keep
    the correlation's direction. Returns the metadata written to ``snakescope.json``.
    """
    t_start = time.perf_counter()
    schedule = _schedule(settings, t_start)
    sources = [as_source(im, channel) for im in as_list(images)]
    if not sources:
        raise InputError("restoration.n2v", "no training images given")
    nd = model_ndim(sources, ndim)
    patch = _patch_shape(settings, nd, "restoration.n2v.patch_shape")
    struct_mask = settings.struct_mask
    if struct_mask is not None:
        struct_offsets(struct_mask, nd)  # a bad mask is named before the patches are drawn
    n_fit = check_enough(sources, patch, nd, MIN_PATCHES)
    rng = np.random.default_rng(seed)
    pool = pool_size(settings.n_patches, sources, patch, nd)
    t0 = time.perf_counter()
    X = sample_patches(sources, pool, patch, ndim=nd, seed=seed, threads=threads)
    sample_seconds = time.perf_counter() - t0
    train_idx, val_idx = split_pool(len(X), settings.validation_fraction, rng)
    N2V, N2VConfig = import_n2v()
    seed_everything(seed)
    mean, std = float(X[train_idx].mean()), float(X[train_idx].std())
    if not std > 0:
        raise InputError(", ".join(src.name for src in sources), "the training patches are constant; nothing to learn")
    s = settings
    blurpool = bool(s.blurpool) and nd == 2  # n2v has max-blur pooling in 2D only (3D: max pooling)
    config = N2VConfig(
        X[train_idx[:1]][..., None], unet_n_depth=int(s.unet_depth), unet_kern_size=int(s.unet_kern_size),
        unet_n_first=int(s.unet_n_first), batch_norm=bool(s.batch_norm), blurpool=blurpool,
        skip_skipone=bool(s.skip_skipone), train_loss=s.loss, train_epochs=int(s.epochs),
        train_steps_per_epoch=int(s.steps_per_epoch), train_batch_size=int(s.batch_size),
        train_learning_rate=float(s.learning_rate), train_tensorboard=False, train_reduce_lr=None,
        n2v_perc_pix=float(s.n2v_perc_pix), n2v_patch_shape=patch, n2v_manipulator=s.manipulator,
        n2v_neighborhood_radius=int(s.neighborhood_radius), means=[str(mean)], stds=[str(std)],
        structN2Vmask=None if struct_mask is None else np.asarray(struct_mask, int).tolist())
    Xn = (X - np.float32(mean)) / np.float32(std)
    del X
    Xtr = Xn[train_idx]
    mask = (float(s.n2v_perc_pix), s.manipulator, int(s.neighborhood_radius))
    validation = n2v_mask(Xn[val_idx], *mask, rng, struct_mask)
    del Xn

    def batches():
        while True:
            xb = Xtr[rng.integers(0, len(Xtr), int(s.batch_size))]
            if s.augment:
                xb = augment(rng, xb, quarter_turns=struct_mask is None)
            yield n2v_mask(xb, *mask, rng, struct_mask)

    data = _data(sources, patch, pool, n_fit, train_idx, val_idx)
    with TrainingRun(out_dir, kind="n2v", ndim=nd, seed=seed, schedule=schedule, parent=parent) as run:
        log.info("N2V training on %d image(s): %s", len(sources), ", ".join(src.name for src in sources))
        log.info("%dD model, patches %s, %d drawn in %.1f s (%d train, %d validation; %d non-overlapping fit)",
                 nd, patch, pool, sample_seconds, len(train_idx), len(val_idx), n_fit)
        log.info("settings: %s", json.dumps(s.to_dict(), sort_keys=True, default=str))
        if blurpool != bool(s.blurpool):
            log.info("blurpool: max pooling instead (n2v's max-blur pooling is 2D only)")
        with _quiet_existing_folder():
            model = N2V(config, name=run.folder.name, basedir=str(run.folder.parent))
        return _fit(run, model, batches(), validation, s, data, blurpool=blurpool)


def train_care(sources, targets, out_dir: str | Path, settings: CARETraining, *, seed: int,
               ndim: int | None = None, channel: int | None = None, target_channel: int | None = None,
               name: str | list[str] | None = None, threads: int = 2, parent: str | Path | None = None,
               fit_target: bool = True) -> dict:
    """Train CARE (csbdeep) on paired low/high quality images; write the model folder.

    ``sources`` and ``targets``: one image each (NGFF path, NgffImage, ``(array, axes)``,
    Source or a 2D array) or lists of pairs. Shapes must match (after selecting ``channel``
    of the source and ``target_channel`` of the target, default: the same index when the
    target has a channel axis), else InputError naming the sample (``name``) and both
    shapes. ``settings``: the config's ``restoration.care``; the other arguments as in
    :func:`train_n2v`. ``fit_target``: bring each target to its image's intensity scale
    first (the least-squares affine fit :func:`~snakescope.restoration.patches.intensity_fit`,
    recorded under ``data.target_fit``), so that the network learns to remove noise rather
    than each pair's exposure, which a patch cannot tell (a long exposure or an average of
    many frames is brighter, by a factor that differs from pair to pair; separate percentile
    normalization does not undo it when noise lifts the image's high percentile); the
    restored image then keeps the input's scale, as N2V's does. Returns the metadata written
    to ``snakescope.json``.
    """
    t_start = time.perf_counter()
    schedule = _schedule(settings, t_start)
    src_list, tgt_list = as_list(sources), as_list(targets)
    names = [name] * len(src_list) if isinstance(name, str) or name is None else list(name)
    images = [as_source(im, channel, nm) for im, nm in zip(src_list, names)]
    clean = []
    for im, src in zip(tgt_list, images):
        t = as_source(im, None, f"{src.name} (target)")
        if "c" in t.axes:
            t = as_source(t, target_channel if target_channel is not None else src.channel)
        clean.append(t)
    check_pairs(images, clean)
    if fit_target:
        clean = [dataclasses.replace(t, intensity=intensity_fit(im, t)) for im, t in zip(images, clean)]
    nd = model_ndim(images, ndim)
    patch = _patch_shape(settings, nd, "restoration.care.patch_shape")
    n_fit = check_enough(images, patch, nd, MIN_PATCHES)
    rng = np.random.default_rng(seed)
    pool = pool_size(settings.n_patches, images, patch, nd)
    X, Y = sample_patches(images, pool, patch, ndim=nd, seed=seed, targets=clean, threads=threads)
    train_idx, val_idx = split_pool(len(X), settings.validation_fraction, rng)
    from csbdeep.models import CARE, Config

    seed_everything(seed)
    s = settings
    config = Config(spatial_axes(nd).upper(), n_channel_in=1, n_channel_out=1, probabilistic=False,
                    unet_n_depth=int(s.unet_depth), unet_kern_size=int(s.unet_kern_size),
                    unet_n_first=int(s.unet_n_first), train_loss=s.loss, train_epochs=int(s.epochs),
                    train_steps_per_epoch=int(s.steps_per_epoch), train_batch_size=int(s.batch_size),
                    train_learning_rate=float(s.learning_rate), train_tensorboard=False, train_reduce_lr=None)
    Xtr, Ytr = X[train_idx], Y[train_idx]
    validation = (X[val_idx][..., None], Y[val_idx][..., None])
    del X, Y

    def batches():
        while True:
            pick = rng.integers(0, len(Xtr), int(s.batch_size))
            xb, yb = Xtr[pick], Ytr[pick]
            if s.augment:
                xb, yb = augment(rng, xb, yb)
            yield xb[..., None], yb[..., None]

    data = {**_data(images, patch, pool, n_fit, train_idx, val_idx), "targets": [t.name for t in clean],
            "target_fit": [list(t.intensity) for t in clean] if fit_target else None}
    with TrainingRun(out_dir, kind="care", ndim=nd, seed=seed, schedule=schedule, parent=parent) as run:
        log.info("CARE training on %d pair(s): %s", len(images),
                 ", ".join(f"{a.name} -> {b.name}" for a, b in zip(images, clean)))
        log.info("%dD model, patches %s, %d drawn (%d train, %d validation; %d non-overlapping fit)",
                 nd, patch, pool, len(train_idx), len(val_idx), n_fit)
        log.info("settings: %s", json.dumps(s.to_dict(), sort_keys=True, default=str))
        with _quiet_existing_folder():
            model = CARE(config, name=run.folder.name, basedir=str(run.folder.parent))
        return _fit(run, model, batches(), validation, s, data, blurpool=False)


def _schedule(settings: CARETraining, start: float) -> Schedule:
    schedule = Schedule(epochs=int(settings.epochs), steps_per_epoch=int(settings.steps_per_epoch),
                        learning_rate=float(settings.learning_rate), lr_schedule=settings.lr_schedule,
                        patience=int(settings.patience or 0), time_limit=settings.time_limit, start=start)
    schedule.check()  # before the patches are drawn
    return schedule


def _patch_shape(settings: CARETraining, ndim: int, key: str) -> tuple[int, ...]:
    patch = tuple(int(p) for p in settings.patch_for(ndim))
    div = 2 ** int(settings.unet_depth)
    if any(p % div for p in patch):
        raise InputError(key, f"{patch} ({spatial_axes(ndim)}) must be multiples of 2**unet_depth = {div}")
    return patch


def _data(sources, patch, pool, n_fit, train_idx, val_idx) -> dict:
    """What a model was trained on, for its snakescope.json."""
    return {"images": [src.name for src in sources], "channel": sources[0].channel, "patch_shape": list(patch),
            "n_patches": int(pool), "n_train_patches": int(len(train_idx)), "n_val_patches": int(len(val_idx)),
            "non_overlapping_patches": int(n_fit)}


def _fit(run: TrainingRun, model, batches, validation, settings: CARETraining, data: dict, *, blurpool: bool) -> dict:
    """Fit a csbdeep/n2v model in the harness's folder (their callbacks first: their
    ``weights_best.h5`` checkpoint), then the harness's files; returns the metadata."""
    if run.parent:
        _start_from(model, run.parent, run.kind)
    model.prepare_for_training(optimizer=_adam(settings.learning_rate))
    # Keras 2 (the n2v environment) pulls a Python generator from a queue-feeding thread whose
    # shutdown held up fit's return by 0-40 s (measured after time-limit stops); workers=0
    # draws the batches in the training loop instead (1-6 ms per batch). Keras 3 has neither.
    threadless = {"workers": 0} if "workers" in inspect.signature(model.keras_model.fit).parameters else {}
    model.keras_model.fit(batches, validation_data=validation, epochs=int(settings.epochs),
                          steps_per_epoch=int(settings.steps_per_epoch),
                          callbacks=list(model.callbacks) + run.callbacks(checkpoint=False), verbose=0, **threadless)
    depth = int(settings.unet_depth)
    extra = {"axes": spatial_axes(run.ndim), "halo": receptive_halo(depth, int(settings.unet_kern_size), blurpool=blurpool),
             "align": 2**depth}
    meta = run.finish(model.keras_model, settings=settings.to_dict(), data=data, extra=extra,
                      title=f"{run.kind.upper()} ({run.ndim}D) training")
    (run.folder / "weights_now.h5").unlink(missing_ok=True)  # csbdeep's per-epoch checkpoint
    return meta


#: What a parent's config.json must share with the configured network to be fine-tuned.
NETWORK_KEYS = ("unet_n_depth", "unet_kern_size", "unet_n_first", "unet_residual", "unet_last_activation",
                "probabilistic", "batch_norm", "blurpool", "skip_skipone")


def check_parent(parent: str | Path, kind: str, config) -> dict:
    """Check that the model folder ``parent`` can be fine-tuned as the network ``config``
    (the csbdeep/n2v config built from the settings) describes; return its description
    (:func:`~snakescope.restoration.models.check_model`).

    InputError naming the folder: another kind (N2V vs CARE), other channels than one in
    and one out, another dimensionality, or another network (the keys that differ, with
    both values, so that the settings can be set to the parent's).
    """
    info = check_model(parent, kind)
    if info["ndim"] != int(config.n_dim):
        raise InputError(parent, f"is a {info['ndim']}D {kind.upper()} model; it cannot be fine-tuned on "
                                 f"{config.n_dim}D images (use restoration.model_{config.n_dim}d)")
    theirs = info["config"]
    differ = [f"{k} {getattr(config, k)!r} here, {theirs[k]!r} in the parent" for k in NETWORK_KEYS
              if k in theirs and hasattr(config, k) and getattr(config, k) != theirs[k]]
    if differ:
        raise InputError(parent, f"its network differs from the configured one ({'; '.join(differ)}): set "
                                 f"restoration.{kind} to the parent's values to fine-tune it")
    return info


def _start_from(model, parent: str | Path, kind: str) -> None:
    """Load the best weights of ``parent`` (a model folder of the same network)."""
    info = check_parent(parent, kind, model.config)
    try:
        load_weights(model.keras_model, Path(parent) / WEIGHTS_BEST)
    except Exception as exc:
        raise InputError(parent, f"cannot be trained further with these settings: its network differs from the "
                                 f"configured one ({type(exc).__name__}: {exc})") from None
    log.info("starting from the weights of %s (%dD %s)", parent, info["ndim"], kind.upper())


@contextlib.contextmanager
def _quiet_existing_folder():
    """csbdeep warns that the model folder exists: the harness created it on purpose."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="output path for model already exists")
        yield


def _adam(learning_rate: float):
    from csbdeep.utils.tf import keras_import

    return keras_import("optimizers", "Adam")(learning_rate=float(learning_rate))
