"""Pixel-size-aware prediction on real nuclei: F1 at IoU 0.5 of the shipped 2D nuclei model on
held-out DSB2018 images at their own pixel size and at twice and half of it, with
``segmentation.rescale`` auto and off.

Data: ../shared/data/dsb2018-fluo, the 24 images of the shipped model's held-out test set
(models/stardist_2d_nuclei/evaluation.json, ``split.test``: never used for its training or
threshold tuning). DSB2018 gives no pixel size; the shipped model records the one its grid is
declared (``training_scale`` in its snakescope.json: 0.5 µm, see its MODEL_CARD.md), and the
native images get that voxel size. Resampled copies, made with scipy (not the package's
resampler): ``2x`` = twice the pixel size (image zoomed by 1/2 with linear interpolation,
i.e. 2x2 averaging; masks by nearest neighbour), ``half`` = half of it (zoomed by 2). Each
image goes through the workflow's own functions: TIFF -> OME-Zarr with its voxel size
(ingest), normalize, segment (snakescope.segmentation.segment with the model loaded once),
scored against its masks on its own grid (snakescope.evaluation.segmentation_scores), counts
summed over the images.

Last stdout line, one JSON object: f1_native, f1_auto_2x, f1_auto_half, f1_off_2x,
f1_off_half, n_images, model, load (1-minute load average at the end), seconds, and the
object counts. SNAKESCOPE_BENCH_IMAGES=n scores only the first n images (a smoke run).
"""

from __future__ import annotations

import json
import logging
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
MODEL = ROOT / "models" / "stardist_2d_nuclei"
#: Pixel size of each condition, in multiples of the model's (DSB2018's declared grid).
PIXEL_FACTORS = {"native": 1.0, "2x": 2.0, "half": 0.5}
RUNS = [("native", "auto"), ("2x", "auto"), ("half", "auto"), ("2x", "off"), ("half", "off")]


def read_pair(image_id: str) -> tuple[np.ndarray, np.ndarray]:
    import tifffile

    image = tifffile.imread(DATA / "images" / f"{image_id}.tif")
    if image.ndim == 3:  # a few DSB images carry RGB(A) planes of one grey image
        image = image[..., 0]
    return image, tifffile.imread(DATA / "masks" / f"{image_id}.tif").astype(np.uint16)


def resampled(image, mask, factor: float):
    """The image and mask as if imaged at ``factor`` times their pixel size (1 = as they are)."""
    from scipy import ndimage

    if factor == 1.0:
        return image, mask
    zoom = 1.0 / factor
    image = ndimage.zoom(image.astype(np.float32), zoom, order=1, mode="nearest", grid_mode=True)
    mask = ndimage.zoom(mask, zoom, order=0, mode="nearest", grid_mode=True)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


def main() -> None:
    if not (DATA.exists() and (MODEL / "evaluation.json").exists()):
        print(json.dumps({"skipped": f"{DATA} or {MODEL} is absent"}))
        return
    import tifffile

    from snakescope import segmentation
    from snakescope.evaluation import segmentation_scores
    from snakescope.evaluation.instances import summarize
    from snakescope.ingest.convert import ingest
    from snakescope.ingest.normalize import normalize
    from snakescope.segmentation.rescale import SCALE_KEY, model_pixel_size
    from snakescope.settings import defaults

    logging.basicConfig(level=logging.ERROR)  # the per-image rescaling notes would flood the output
    start = time.perf_counter()
    split = json.loads((MODEL / "evaluation.json").read_text())["split"]
    test = split["test"][:int(os.environ.get("SNAKESCOPE_BENCH_IMAGES", len(split["test"])))]
    config = defaults()
    model_size = model_pixel_size(MODEL)
    if model_size is None:
        raise SystemExit(f"{MODEL}/snakescope.json records no {SCALE_KEY}")
    native_size = model_size["x"]
    work = Path(tempfile.mkdtemp(prefix="snakescope-bench-rescale-"))
    try:
        model = segmentation.load_model(MODEL)
        scores = {run: {} for run in RUNS}
        applied = {}
        for image_id in test:
            image, mask = read_pair(image_id)
            for condition, factor in PIXEL_FACTORS.items():
                pixel_size = factor * native_size
                folder = work / f"{image_id[:12]}-{condition}"
                folder.mkdir()
                x, y = resampled(image, mask, factor)
                tifffile.imwrite(folder / "image.tif", x)
                tifffile.imwrite(folder / "mask.tif", y)
                ingest(folder / "image.tif", "YX", folder / "image.ome.zarr", name=image_id,
                       voxel_size={"y": pixel_size, "x": pixel_size}, settings=config.ingest)
                normalize(folder / "image.ome.zarr", folder / "normalized.ome.zarr", folder / "stats.json",
                          settings=config.normalize, storage=config.ingest)
                for mode in ("auto", "off"):
                    if (condition, mode) not in RUNS:
                        continue
                    labels = folder / f"labels-{mode}"
                    summary = segmentation.segment(model, folder / "normalized.ome.zarr", labels,
                                                   config.segmentation.replace(rescale=mode), channel=0)
                    applied[(condition, mode)] = summary["rescale"]["zoom"]
                    table, _ = segmentation_scores(labels, str(folder / "mask.tif"), sample=image_id)
                    scores[(condition, mode)][image_id] = table[np.isclose(table["threshold"], 0.5)]
            shutil.rmtree(work / f"{image_id[:12]}-native"), shutil.rmtree(work / f"{image_id[:12]}-2x")
            shutil.rmtree(work / f"{image_id[:12]}-half")
        totals = {run: summarize(per_image).iloc[0] for run, per_image in scores.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    key = {("native", "auto"): "native", ("2x", "auto"): "auto_2x", ("half", "auto"): "auto_half",
           ("2x", "off"): "off_2x", ("half", "off"): "off_half"}
    result = {f"f1_{key[run]}": round(float(total["f1"]), 4) for run, total in totals.items()}
    result.update({
        "n_images": len(test),
        "model": str(MODEL.relative_to(ROOT)),
        "load": round(os.getloadavg()[0], 2),
        "seconds": round(time.perf_counter() - start, 1),
        "pixel_size_um": {c: f * native_size for c, f in PIXEL_FACTORS.items()},
        "model_pixel_size_um": native_size,
        "model_median_diameter_px": round(json.loads((MODEL / "snakescope.json").read_text())[SCALE_KEY]
                                          .get("median_diameter_px", float("nan")), 1),
        "zoom_applied": {key[run]: zoom for run, zoom in applied.items()},
        "n_true": {key[run]: int(total["n_true"]) for run, total in totals.items()},
        "n_pred": {key[run]: int(total["n_pred"]) for run, total in totals.items()},
    })
    print(json.dumps(result))


if __name__ == "__main__":
    main()
