"""Restoration benchmark: Noise2Void on real nuclei images with simulated camera noise.

Run from the repository root: ``.venv/main/bin/python bench/restore.py``. Prints one JSON
object as its last line.

Data: the DSB2018 fluorescence images in ``../shared/data/dsb2018-fluo/images`` (uint8, 2D;
absent -> a JSON line with a "skipped" reason). Each image scaled to [0, 1] by its maximum
is the clean ground truth. Noise model (seeded): a Poisson-Gaussian camera,
``noisy = (Poisson(PEAK * clean) + Normal(0, READ_NOISE)) / PEAK`` with ``PEAK = 40``
photons at the brightest pixel and a read noise of ``READ_NOISE = 2`` photons (rms), i.e.
shot noise dominating in the nuclei and read noise in the background. PSNR uses
``data_range = 1`` (the clean range), averaged over images.

N2V is trained on the noisy images only (self-supervised; training on the images to be
denoised is legitimate for N2V), through the workflow's own code: the noisy images are
written as NGFF images, ``snakescope.restoration.train_n2v`` draws patches from them and
``snakescope.restoration.predict`` restores each blockwise with the model loaded once. That runs in the n2v environment
(a child process of this script).

Keys
----
* ``psnr_noisy``, ``psnr_n2v``, ``psnr_baseline`` and each with ``_affine``: mean PSNR (dB)
  of the noisy input, the N2V output and the best of two baselines tuned on the same data
  with the ground truth (an oracle tuning, which favours the baselines): a Gaussian filter
  (sigma grid) and scikit-image's non-local means (fast mode, patch 5, distance 6, ``h`` a
  multiple of the estimated noise sigma; the multiple tuned on a subset of images).
  ``_affine``: after a per-image least-squares affine fit ``a * x + b`` of the output to the
  clean image (the usual N2V evaluation, insensitive to contrast scaling).
  ``baseline``: which filter and parameter won. ``n2v_affine_slope``: median fitted slope.
* ``blockwise_vs_whole_seconds_ratio``, ``max_abs_diff``: our blockwise prediction
  (``restoration.predict_array``: default blocks, halo = the U-Net's receptive field) against
  csbdeep's/n2v's own whole-image ``N2V.predict`` on the same model and a 2048 x 2048 mosaic
  of noisy images (fits in memory), best of 3 timings each, in the same process.
* ``peak_rss_gib``: peak RSS (ru_maxrss of the child process, TensorFlow included) of
  ``restoration.predict`` on a float32 NGFF volume of at least 4 GiB (t x 4096 x 4096, written
  blockwise into a temporary folder and removed afterwards), with the trained model.
  ``rss_volume_gib``, ``rss_predict_seconds``.
* ``train_seconds``: N2V training wall-clock (the whole ``train_n2v`` call).

Settings: the schema's ``restoration.n2v`` defaults, trained for the time budget rather than
a number of epochs, no early stopping (the best validation epoch is kept), seed 0; prediction
without test-time augmentation. The figures below were measured with the earlier defaults
(patch 64, 1.5 % blind spots replaced by a neighbour within radius 2 without the centre
pixel, U-Net depth 2 / kernel 3 / 16 filters, batch 16, Adam 2e-3 with a cosine decay fitted
to the budget, MSE), before N2V2's settings became the defaults on real noise
(bench/restore_real.py). At 300 s of fitting under a shared machine these gave (all 120 images, same noise):
defaults 35.96 dB (36.03 affine); 32 filters 35.66; 4 % blind spots 34.05; 0.6 % 35.53;
median manipulator 35.93; learning rate 4e-3 35.67; depth 3 35.43; against 35.30 dB
(35.59 affine) for the best baseline (non-local means, h = 1.5 sigma) and 34.55 dB for the
best Gaussian filter.

Environment
-----------
``SNAKESCOPE_BENCH_QUICK=1``: smoke mode (16 images, 90 s of training, a 0.25 GiB volume).
``SNAKESCOPE_BENCH_TRAIN_SECONDS``: training budget (default 870 s for the whole
``train_n2v`` call, TensorFlow start and patch sampling included: about 15 minutes).
``SNAKESCOPE_BENCH_N2V``: JSON of ``restoration.n2v`` settings overriding the defaults. ``SNAKESCOPE_BENCH_VOLUME_GIB``: size of the RSS volume (default 4.0).
``SNAKESCOPE_BENCH_SKIP_RSS=1``: leave the big-volume part out.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DATA = ROOT.parent / "shared" / "data" / "dsb2018-fluo"
N2V_PYTHON = ROOT / ".venv" / "n2v" / "bin" / "python"
PEAK = 40.0
READ_NOISE = 2.0
SEED = 0
QUICK = os.environ.get("SNAKESCOPE_BENCH_QUICK") == "1"


# ---------------------------------------------------------------------------------------
# Data.


def load_clean(quick: bool) -> list[tuple[str, np.ndarray]]:
    import tifffile

    files = sorted((DATA / "images").glob("*.tif"))
    if quick:
        files = files[:16]
    out = []
    for f in files:
        img = tifffile.imread(f).astype(np.float32)
        out.append((f.stem, img / img.max()))
    return out


def add_noise(clean: np.ndarray, rng) -> np.ndarray:
    from snakescope.synthetic import camera_noise

    return camera_noise(clean, PEAK, READ_NOISE, rng)


def psnr(x: np.ndarray, ref: np.ndarray) -> float:
    mse = float(np.mean((x.astype(np.float64) - ref) ** 2))
    return 10 * np.log10(1.0 / mse)


def affine_fit(x: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, float]:
    a = np.stack([x.ravel().astype(np.float64), np.ones(x.size)], 1)
    (slope, offset), *_ = np.linalg.lstsq(a, ref.ravel().astype(np.float64), rcond=None)
    return slope * x + offset, float(slope)


def scores(outputs, cleans) -> dict:
    p = [psnr(o, c) for o, c in zip(outputs, cleans)]
    fits = [affine_fit(o, c) for o, c in zip(outputs, cleans)]
    pa = [psnr(f, c) for (f, _), c in zip(fits, cleans)]
    return {"psnr": float(np.mean(p)), "psnr_affine": float(np.mean(pa)),
            "slope": float(np.median([s for _, s in fits]))}


def write_ngff(path: Path, data: np.ndarray, axes: str) -> None:
    from snakescope.io import ngff
    group = ngff.open_group(path, "w")
    chunks = tuple(1 if a in "tc" else min(512, s) for a, s in zip(axes, data.shape))
    shapes = ngff.pyramid_shapes(axes, data.shape, "auto")
    levels = ngff.create_levels(group, shapes, chunks, np.float32, "lz4")
    levels[0][...] = data
    ngff.write_pyramid(group, axes, shapes, chunks, np.float32, "lz4", 1, "mean", first=1)
    group.attrs["multiscales"] = [ngff.multiscales_metadata(axes, [1.0] * len(axes), len(shapes), path.stem)]


# ---------------------------------------------------------------------------------------
# Baselines (main environment).


def noise_sigma(x: np.ndarray) -> float:
    """Immerkaer's fast noise estimate (Laplacian-difference mask; no PyWavelets needed)."""
    from scipy import ndimage

    mask = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64)
    r = ndimage.convolve(x.astype(np.float64), mask)[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) * np.abs(r).mean() / 6)


def baselines(noisy, cleans, quick: bool) -> dict:
    from scipy import ndimage
    from skimage.restoration import denoise_nl_means

    results = {}
    for sigma in (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0):
        results[("gaussian", sigma)] = scores([ndimage.gaussian_filter(n, sigma) for n in noisy], cleans)
    # Non-local means: h (a multiple of each image's estimated noise sigma) tuned on a subset.
    subset = list(range(0, len(noisy), max(1, len(noisy) // (8 if quick else 24))))
    sig = [noise_sigma(n) for n in noisy]

    def nlm(i, factor):
        return denoise_nl_means(noisy[i], h=factor * sig[i], sigma=sig[i], patch_size=5, patch_distance=6,
                                fast_mode=True).astype(np.float32)

    tuned = {}
    for factor in (0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0):
        tuned[factor] = scores([nlm(i, factor) for i in subset], [cleans[i] for i in subset])
    best_p = max(tuned, key=lambda f: tuned[f]["psnr"])
    best_a = max(tuned, key=lambda f: tuned[f]["psnr_affine"])
    for factor in sorted({best_p, best_a}):
        results[("nlm", factor)] = scores([nlm(i, factor) for i in range(len(noisy))], cleans)
    key_p = max(results, key=lambda k: results[k]["psnr"])
    key_a = max(results, key=lambda k: results[k]["psnr_affine"])
    return {
        "psnr_baseline": results[key_p]["psnr"],
        "psnr_baseline_affine": results[key_a]["psnr_affine"],
        "baseline": f"{key_p[0]} {key_p[1]}",
        "baseline_affine": f"{key_a[0]} {key_a[1]}",
        "psnr_gaussian": max(v["psnr"] for k, v in results.items() if k[0] == "gaussian"),
        "psnr_nlm": max(v["psnr"] for k, v in results.items() if k[0] == "nlm"),
    }


# ---------------------------------------------------------------------------------------
# Children in the n2v environment.


def job_settings(work: Path):
    """The N2V and ingest settings the main process resolved (the n2v environment has no
    schema validator)."""
    from snakescope.settings import Ingest, N2VTraining

    job = json.loads((work / "job.json").read_text())
    return N2VTraining.from_dict(job["n2v"]), Ingest.from_dict(job["ingest"])


def child_train(work: Path) -> None:
    """Train N2V on the noisy NGFF images, restore each, compare blockwise vs whole."""
    from snakescope import restoration

    settings, ingest = job_settings(work)
    images = sorted(str(p) for p in (work / "noisy").glob("*.ome.zarr"))
    t0 = time.perf_counter()
    meta = restoration.train_n2v(images, work / "model", settings, seed=SEED)
    train_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = restoration.load_model(work / "model", "n2v")
    for path in images:
        restoration.predict(model, path, work / "restored" / Path(path).name, storage=ingest)
    predict_seconds = time.perf_counter() - t0

    # Blockwise (ours, in memory) against n2v's own whole-image predict, same model.
    mosaic = np.load(work / "mosaic.npy")
    out = np.empty_like(mosaic)

    def write(region, block):
        out[region] = block

    def ours():
        restoration.predict_array(model, lambda r: mosaic[r], write, mosaic.shape, "yx")
        return out

    def whole():
        return model.model.predict(mosaic, "YX")

    ours(), whole()  # warm up both (graph tracing, oneDNN kernels)
    t_ours, t_whole = [], []
    for _ in range(3):
        t = time.perf_counter()
        ours()
        t_ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        ref = whole()
        t_whole.append(time.perf_counter() - t)
    result = {
        "train": meta, "train_seconds": round(train_seconds, 1), "predict_seconds": round(predict_seconds, 1),
        "blockwise_seconds": round(min(t_ours), 3), "whole_seconds": round(min(t_whole), 3),
        "blockwise_vs_whole_seconds_ratio": round(min(t_ours) / min(t_whole), 3),
        "max_abs_diff": float(np.abs(out - ref).max()), "mosaic_shape": list(mosaic.shape),
        "peak_rss_gib_train_child": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    (work / "train.json").write_text(json.dumps(result))


def child_rss(work: Path) -> None:
    from snakescope import restoration

    _, ingest = job_settings(work)
    t0 = time.perf_counter()
    summary = restoration.predict(restoration.load_model(work / "model", "n2v"), work / "volume.ome.zarr",
                                  work / "volume_restored.ome.zarr", storage=ingest)
    seconds = time.perf_counter() - t0
    (work / "rss.json").write_text(json.dumps({
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "rss_predict_seconds": round(seconds, 1), "rss_blocks": summary["n_blocks"],
        "rss_block_shape": summary["block_shape"]}))


def run_child(mode: str, work: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(work / f"{mode}.log", "w") as logf:
        proc = subprocess.run([str(N2V_PYTHON), str(Path(__file__).resolve()), "--child", mode, str(work)],
                              stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if proc.returncode != 0:
        tail = (work / f"{mode}.log").read_text()[-4000:]
        raise RuntimeError(f"n2v child '{mode}' failed ({proc.returncode}):\n{tail}")


def make_volume(path: Path, gib: float, tiles: list[np.ndarray]) -> tuple[int, ...]:
    """A t x 4096 x 4096 float32 NGFF volume of noisy image tiles, written frame by frame."""
    from snakescope.io import ngff
    yx = 4096 if gib >= 1 else 1024
    t = int(np.ceil(gib * 2**30 / (yx * yx * 4)))
    shape = (t, yx, yx)
    axes = "tyx"
    chunks = (1, 512, 512)
    group = ngff.open_group(path, "w")
    shapes = ngff.pyramid_shapes(axes, shape, "auto")
    levels = ngff.create_levels(group, shapes, chunks, np.float32, "lz4")
    rng = np.random.default_rng(1)
    for i in range(t):
        frame = np.empty((yx, yx), np.float32)
        for y in range(0, yx, 256):
            for x in range(0, yx, 256):
                tile = tiles[int(rng.integers(len(tiles)))]
                frame[y:y + 256, x:x + 256] = tile[:256, :256]
        ngff.write_block(levels, axes, (slice(i, i + 1), slice(0, yx), slice(0, yx)), frame[None], "mean")
    ngff.write_pyramid(group, axes, shapes, chunks, np.float32, "lz4", 2, "mean", first=2)
    group.attrs["multiscales"] = [ngff.multiscales_metadata(axes, [1.0] * 3, len(shapes), "volume")]
    return shape


def main() -> None:
    if not (DATA / "images").is_dir():
        print(json.dumps({"skipped": f"{DATA} is absent (the real DSB2018 images are needed)"}))
        return
    if not N2V_PYTHON.exists():
        print(json.dumps({"skipped": f"{N2V_PYTHON} is absent (build the n2v environment: make setup)"}))
        return
    start = time.perf_counter()
    quick = QUICK
    budget = float(os.environ.get("SNAKESCOPE_BENCH_TRAIN_SECONDS", 90 if quick else 870))
    # Training is bounded by the time budget (the cosine schedule decays within it), not by
    # epochs; early stopping off so that the budget is used (the best epoch is still kept).
    n2v = {"epochs": 100000, "steps_per_epoch": 200, "patience": 0,
           **json.loads(os.environ.get("SNAKESCOPE_BENCH_N2V", "{}"))}
    rng = np.random.default_rng(SEED)
    data = load_clean(quick)
    cleans = [c for _, c in data]
    noisy = [add_noise(c, rng) for c in cleans]
    work = Path(tempfile.mkdtemp(prefix="snakescope-bench-restore-"))
    try:
        for (name, _), n in zip(data, noisy):
            write_ngff(work / "noisy" / f"{name}.ome.zarr", n, "yx")
        # A 2048 x 2048 mosaic of noisy images for blockwise vs whole-image timing.
        mosaic = np.zeros((2048, 2048), np.float32)
        k = 0
        for y in range(0, 2048, 256):
            for x in range(0, 2048, 256):
                mosaic[y:y + 256, x:x + 256] = noisy[k % len(noisy)][:256, :256]
                k += 1
        np.save(work / "mosaic.npy", mosaic)
        from snakescope.settings import defaults

        settings = defaults().restoration.n2v.replace(**n2v, time_limit=budget)
        (work / "job.json").write_text(json.dumps({"n2v": settings.to_dict(), "ingest": defaults().ingest.to_dict()}))

        t0 = time.perf_counter()
        base = baselines(noisy, cleans, quick)
        baseline_seconds = time.perf_counter() - t0

        run_child("train", work)
        child = json.loads((work / "train.json").read_text())
        from snakescope.io import ngff
        restored = [ngff.read_image(work / "restored" / f"{name}.ome.zarr").data[...] for name, _ in data]
        s_noisy = scores(noisy, cleans)
        s_n2v = scores(restored, cleans)

        result = {
            "mode": "quick" if quick else "full",
            "n_images": len(data),
            "noise": f"Poisson(peak {PEAK:g} photons) + Gaussian read noise {READ_NOISE:g} photons, /peak",
            "psnr_noisy": round(s_noisy["psnr"], 3),
            "psnr_noisy_affine": round(s_noisy["psnr_affine"], 3),
            "psnr_n2v": round(s_n2v["psnr"], 3),
            "psnr_n2v_affine": round(s_n2v["psnr_affine"], 3),
            "n2v_affine_slope": round(s_n2v["slope"], 3),
            "psnr_baseline": round(base["psnr_baseline"], 3),
            "psnr_baseline_affine": round(base["psnr_baseline_affine"], 3),
            "baseline": base["baseline"],
            "baseline_affine": base["baseline_affine"],
            "psnr_gaussian": round(base["psnr_gaussian"], 3),
            "psnr_nlm": round(base["psnr_nlm"], 3),
            "n2v_beats_baseline": s_n2v["psnr"] > base["psnr_baseline"] and s_n2v["psnr_affine"] > base["psnr_baseline_affine"],
            "train_seconds": child["train_seconds"],
            "train_budget_seconds": budget,
            "epochs_run": child["train"]["training"]["epochs_run"],
            "n2v_predict_seconds": child["predict_seconds"],
            "baseline_seconds": round(baseline_seconds, 1),
            "blockwise_vs_whole_seconds_ratio": child["blockwise_vs_whole_seconds_ratio"],
            "blockwise_seconds": child["blockwise_seconds"],
            "whole_seconds": child["whole_seconds"],
            "max_abs_diff": child["max_abs_diff"],
            "n2v_settings": {**n2v, "others": "the schema's restoration.n2v defaults"},
        }
        if os.environ.get("SNAKESCOPE_BENCH_SKIP_RSS") != "1":
            gib = float(os.environ.get("SNAKESCOPE_BENCH_VOLUME_GIB", 0.25 if quick else 4.0))
            t0 = time.perf_counter()
            shape = make_volume(work / "volume.ome.zarr", gib, noisy)
            result["rss_volume_shape"] = list(shape)
            result["rss_volume_gib"] = round(np.prod(shape) * 4 / 2**30, 3)
            result["rss_volume_write_seconds"] = round(time.perf_counter() - t0, 1)
            run_child("rss", work)
            rss = json.loads((work / "rss.json").read_text())
            result["peak_rss_gib"] = round(rss["peak_rss_gib"], 3)
            result["rss_predict_seconds"] = rss["rss_predict_seconds"]
            result["rss_block_shape"] = rss["rss_block_shape"]
        result["total_seconds"] = round(time.perf_counter() - start, 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        {"train": child_train, "rss": child_rss}[sys.argv[2]](Path(sys.argv[3]))
    else:
        main()
