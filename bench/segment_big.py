"""Blockwise StarDist on a 16384 x 16384 mosaic of real nuclei, through the workflow's own code.

Data: ../shared/data/dsb2018-fluo (120 real fluorescence images with expert labels, CC0).
A seeded plan cuts 256 x 256 tiles (random crop, rotation, flip) from the images, stretches
each to a common intensity range and writes them into a 16384 x 16384 uint8 TIFF band by
band (memory-mapped, never whole in memory); the workflow's ingest and normalize turn it
into normalized.ome.zarr as the rules do.

Model: a StarDist 2D model (32 rays, grid 2, the default U-Net of depth 3) trained here for
240 steps (about 4 minutes; capped at 8) with snakescope.segment.train_stardist (seeded,
deterministic kernels) on the same images, so the bench needs nothing but the data. It is
far from converged (F1 about 0.55 against the mosaic's ground truth): the bench measures
blockwise against whole-image prediction, not accuracy (bench/segment_accuracy.py does).

Measured:
* the full mosaic segmented by the segment rule's entry point (scripts/segment.py, i.e.
  snakescope.steps.segment_step -> segment.predict_stardist, blockwise into NGFF labels) in
  a child process: wall seconds, megapixels per second, objects, and peak RSS (VmHWM of
  the child's own address space, read by the child as it ends: ru_maxrss would not do,
  since Linux carries the parent's RSS at fork/exec into the child's ru_maxrss);
* on a 4096 x 4096 crop that fits in memory, whole-image ``model.predict_instances``
  against the same blockwise path (predict_stardist on the crop as NGFF), each in its own
  child process with TensorFlow warmed up before the clock starts (model loading, reading
  the crop and, for the blockwise path, writing the NGFF labels and pyramid are timed; the
  whole-image NMS gets the same single OpenMP thread as the workflow's path):
  ``label_agreement_f1`` (instance F1 at IoU 0.5 between the two label images,
  stardist.matching), ``seconds_ratio`` (blockwise / whole, medians of alternating runs)
  and both against the mosaic's ground truth as a sanity check.

Targets (from the issue): label_agreement_f1 >= 0.99, seconds_ratio <= 1.1,
peak_rss_gib < 4 for the full mosaic. Prints one JSON object as its last line.
Environment: SNAKESCOPE_BENCH_WORK=<folder> keeps (and reuses) the mosaic, the model and
the outputs there instead of a temporary folder; SNAKESCOPE_BENCH_SIZE=<pixels> overrides
the mosaic side (default 16384) for a smoke run; SNAKESCOPE_BENCH_SETTINGS=<json> replaces
the segmentation settings.
"""

from __future__ import annotations

import json
import os
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
SEED = 2018
SIZE = int(os.environ.get("SNAKESCOPE_BENCH_SIZE", 16384))
TILE = 256
CROP = min(4096, SIZE)
REPEATS = 3
# The config `segmentation` section the segment rule passes: 2048-px blocks (the schema's default
# of 1024 puts 1.7 times the frame's pixels through the network, see README), the rest defaults.
SETTINGS = json.loads(os.environ.get("SNAKESCOPE_BENCH_SETTINGS", "{}")) or {
    "method": "stardist", "block_size": 2048, "min_overlap": 64, "context": None}
N_VALIDATION = 6
TRAIN = dict(n_rays=32, grid=(2, 2), patch_size=(256, 256), epochs=12, steps_per_epoch=20, batch_size=4,
             learning_rate=3e-3, patience=0, unet_n_depth=3, time_budget_s=480)


# ---------------------------------------------------------------------------------------
# Data


def load_images():
    """{id: (image float32 normalized per image as the workflow does, labels int32)}."""
    import tifffile

    index = json.loads((DATA / "index.json").read_text())
    pairs = {}
    for entry in sorted(index, key=lambda e: e["id"]):
        image = tifffile.imread(DATA / "images" / f"{entry['id']}.tif")
        if image.ndim == 3:  # a few DSB images carry RGB(A) planes of one grey image
            image = image[..., 0]
        lo, hi = np.percentile(image, [1, 99.8])
        x = ((image.astype(np.float32) - lo) / max(hi - lo, 1e-6)).astype(np.float32)
        pairs[entry["id"]] = (x, tifffile.imread(DATA / "masks" / f"{entry['id']}.tif").astype(np.int32))
    return pairs


def mosaic_plan(ids, size: int, seed: int):
    """Per tile (row, col): image id, crop offset, rot90 count, flip; seeded."""
    rng = np.random.default_rng(seed)
    n = size // TILE
    choice = rng.integers(len(ids), size=(n, n))
    return [[(ids[choice[r, c]], rng.random(2), int(rng.integers(4)), bool(rng.integers(2))) for c in range(n)]
            for r in range(n)]


def tile(pairs, entry, which: int):
    """One 256 x 256 tile of the plan: the image (which=0, uint8) or its labels (which=1)."""
    key, offset, k, flip = entry
    arr = pairs[key][which]
    y0 = int(offset[0] * (arr.shape[0] - TILE + 1))
    x0 = int(offset[1] * (arr.shape[1] - TILE + 1))
    t = np.rot90(arr[y0:y0 + TILE, x0:x0 + TILE], k)
    t = t[:, ::-1] if flip else t
    if which == 0:
        # normalized 0 -> 16, 1 -> 200: one common range for every tile, no 0 (the mask value)
        return np.clip(16 + 184 * t, 1, 255).astype(np.uint8)
    return t


def write_mosaic(pairs, plan, path: Path) -> None:
    """The mosaic TIFF, one band of tiles at a time into a memory map."""
    import tifffile

    size = len(plan) * TILE
    mm = tifffile.memmap(str(path), shape=(size, size), dtype=np.uint8, metadata={"axes": "YX"})
    for r, row in enumerate(plan):
        mm[r * TILE:(r + 1) * TILE] = np.concatenate([tile(pairs, e, 0) for e in row], axis=1)
        if r % 8 == 7:
            mm.flush()
    mm.flush()
    del mm


def truth_crop(pairs, plan, crop: int) -> np.ndarray:
    """Ground-truth labels of the crop [0:crop, 0:crop] (objects cut by tile seams stay cut)."""
    n = crop // TILE
    out = np.zeros((crop, crop), np.int32)
    offset = 0
    for r in range(n):
        for c in range(n):
            t = tile(pairs, plan[r][c], 1)
            ids = np.unique(t[t > 0])
            relabel = np.zeros(int(t.max()) + 1, np.int32)
            relabel[ids] = np.arange(offset + 1, offset + 1 + len(ids))
            out[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE] = relabel[t]
            offset += len(ids)
    return out


# ---------------------------------------------------------------------------------------
# Children: `python bench/segment_big.py --child <what> ...`, each a fresh process


def child_train(args) -> None:
    """Train the bench's model with the workflow's training code (seeded, fixed step count)."""
    from snakescope.segmentation import stardist as segment
    out = Path(args[0])
    pairs = load_images()
    ids = sorted(pairs)
    order = np.random.default_rng(SEED).permutation(len(ids))
    split = {"validation": [ids[i] for i in order[:N_VALIDATION]], "train": [ids[i] for i in order[N_VALIDATION:]]}
    summary = segment.train_stardist(pairs, out, split=split, seed=SEED, **TRAIN)
    print(json.dumps({"train_seconds": summary["train_seconds"], "thresholds": summary["thresholds"],
                      "n_train": summary["n_train"], "n_validation": summary["n_validation"]}))


def _warm_model(model_dir):
    """The model loaded and TensorFlow's runtime started (thread pools, kernels) before timing."""
    from snakescope.segmentation import stardist as segment
    model = segment.load_model(model_dir)
    model.predict_instances(np.zeros((256, 256), np.float32), axes="YX", show_tile_progress=False)
    return model


def peak_rss_gib() -> float:
    """This process's peak resident memory (VmHWM: its own address space since exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("no VmHWM in /proc/self/status")


def child_rule(args) -> None:
    """A rule's entry point (scripts/<step>.py and its arguments) run as is, then its peak RSS."""
    import runpy

    sys.argv = list(args)
    try:
        runpy.run_path(args[0], run_name="__main__")
    finally:
        sys.stderr.flush()
        print(json.dumps({"peak_rss_gib": peak_rss_gib()}), flush=True)


def child_whole(args) -> None:
    """Whole-image ``model.predict_instances`` on an NGFF image (read included), labels saved as .npy."""
    from snakescope.io import ngff
    from snakescope.segmentation import stardist as segment
    model_dir, image, out = args
    _warm_model(model_dir)
    start = time.perf_counter()
    model = segment.load_model(model_dir)  # as the blockwise child loads it inside its timing
    x = np.asarray(ngff.read_image(image).data[...], dtype=np.float32)
    # the same OpenMP setting as the workflow's path, so the ratio is the blocks' cost alone
    with segment._single_openmp_thread():
        labels, details = model.predict_instances(x, axes="YX", show_tile_progress=False)
    seconds = time.perf_counter() - start
    np.save(out, labels.astype(np.uint32))
    print(json.dumps({"seconds": seconds, "objects": len(details["prob"]), "peak_rss_gib": peak_rss_gib()}))


def child_blocks(args) -> None:
    """The segment rule's function (``predict_stardist``, blockwise into NGFF labels) on an NGFF image."""
    from snakescope.segmentation import stardist as segment
    model_dir, image, out, settings = args[0], args[1], args[2], json.loads(args[3])
    _warm_model(model_dir)
    start = time.perf_counter()
    summary = segment.predict_stardist(model_dir, image, out, **settings)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "objects": sum(summary["objects_per_frame"].values()),
                      "peak_rss_gib": peak_rss_gib()}))


def run_child(argv, log: Path) -> tuple[dict, float]:
    """(last JSON line of the child, wall seconds)."""
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, *argv], stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    wall = time.perf_counter() - start
    lines = log.read_text().strip().splitlines()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:3]} failed ({proc.returncode}); end of {log}:\n" + "\n".join(lines[-20:]))
    result = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    return result, wall


# ---------------------------------------------------------------------------------------


def main() -> None:
    if not DATA.exists():
        print(json.dumps({"skipped": f"{DATA} is absent"}))
        return
    import tifffile
    from stardist.matching import matching

    from snakescope.io import ngff

    from snakescope.segmentation import stardist as segment
    from snakescope.ingest.convert import ingest
    from snakescope.ingest.normalize import normalize

    keep = os.environ.get("SNAKESCOPE_BENCH_WORK")
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="snakescope-bench-big-"))
    work.mkdir(parents=True, exist_ok=True)
    me = str(Path(__file__).resolve())
    timings = {}
    begin = time.perf_counter()
    try:
        # 1. the model, trained by the workflow's code
        start = time.perf_counter()
        model_dir = work / "model"
        train = {}
        if not (model_dir / "thresholds.json").exists():
            train, _ = run_child([me, "--child", "train", str(model_dir)], work / "train.log")
        timings["train"] = time.perf_counter() - start

        # 2. the mosaic: TIFF band by band, then the ingest and normalize rules' code
        start = time.perf_counter()
        pairs = load_images()
        plan = mosaic_plan(sorted(pairs), SIZE, SEED)
        image = work / "normalized.ome.zarr"
        if not image.exists():
            write_mosaic(pairs, plan, work / "mosaic.tif")
            ingest(work / "mosaic.tif", "YX", work / "image.ome.zarr", name="mosaic", voxel_size={"y": 0.5, "x": 0.5})
            (work / "mosaic.tif").unlink()
            normalize(work / "image.ome.zarr", image, work / "normalization.json")
            shutil.rmtree(work / "image.ome.zarr")
        # the crop, as its own NGFF image (already normalized: ingested as float32)
        crop = work / "crop.ome.zarr"
        if not crop.exists():
            tifffile.imwrite(work / "crop.tif", ngff.read_image(image).data[0:CROP, 0:CROP])
            ingest(work / "crop.tif", "YX", crop, name="crop", voxel_size={"y": 0.5, "x": 0.5})
            (work / "crop.tif").unlink()
        timings["mosaic"] = time.perf_counter() - start

        # 3. the full mosaic through the segment rule's entry point, as the rule runs it
        shutil.rmtree(work / "labels.ome.zarr", ignore_errors=True)
        full, full_seconds = run_child(
            [me, "--child", "rule", str(ROOT / "scripts" / "segment.py"), "--model", str(model_dir), "--image", str(image), "--channel", "0",
             "--settings", json.dumps(SETTINGS), "--out", str(work / "labels.ome.zarr")], work / "segment.log")
        full_objects = _objects(work / "labels.ome.zarr")
        layout = [line.split("INFO snakescope.segment: ")[-1] for line in (work / "segment.log").read_text().splitlines()
                  if " blocks of " in line]

        timings["segment_mosaic"] = full_seconds
        start = time.perf_counter()
        # 4. the crop: whole image against blockwise, alternating, each in a fresh process
        whole_runs, block_runs = [], []
        for rep in range(REPEATS):
            w, _ = run_child([me, "--child", "whole", str(model_dir), str(crop), str(work / "whole.npy")],
                                    work / f"whole{rep}.log")
            shutil.rmtree(work / "crop_labels.ome.zarr", ignore_errors=True)
            b, _ = run_child([me, "--child", "blocks", str(model_dir), str(crop), str(work / "crop_labels.ome.zarr"),
                                     json.dumps(predict_settings())], work / f"blocks{rep}.log")
            whole_runs.append(w)
            block_runs.append(b)
        timings["crop_comparison"] = time.perf_counter() - start
        timings["total"] = time.perf_counter() - begin
        whole = np.load(work / "whole.npy")
        from snakescope.io import labels as labels_io

        blocks = labels_io.read_labels_image(work / "crop_labels.ome.zarr").data[...]
        agreement = matching(whole, blocks, thresh=0.5)
        truth = truth_crop(pairs, plan, CROP)
        vs_truth = {k: matching(truth, v, thresh=0.5) for k, v in (("whole", whole), ("blocks", blocks))}
        whole_s = float(np.median([r["seconds"] for r in whole_runs]))
        block_s = float(np.median([r["seconds"] for r in block_runs]))

        megapixels = SIZE * SIZE / 1e6
        result = {
            "label_agreement_f1": round(float(agreement.f1), 4),
            "seconds_ratio": round(block_s / whole_s, 3),
            "peak_rss_gib": round(full["peak_rss_gib"], 3),
            "mosaic_shape": [SIZE, SIZE],
            "mosaic_objects": full_objects,
            "mosaic_seconds": round(full_seconds, 1),
            "mosaic_megapixels_per_second": round(megapixels / full_seconds, 3),
            "block_size": SETTINGS.get("block_size"), "min_overlap": SETTINGS.get("min_overlap"),
            "context": SETTINGS.get("context"),
            "block_layout": layout,
            "crop_shape": [CROP, CROP],
            "crop_whole_seconds": [round(r["seconds"], 1) for r in whole_runs],
            "crop_blockwise_seconds": [round(r["seconds"], 1) for r in block_runs],
            "crop_whole_peak_rss_gib": round(max(r["peak_rss_gib"] for r in whole_runs), 3),
            "crop_blockwise_peak_rss_gib": round(max(r["peak_rss_gib"] for r in block_runs), 3),
            "crop_objects_whole": int(whole_runs[0]["objects"]), "crop_objects_blockwise": int(block_runs[0]["objects"]),
            "agreement_mean_matched_iou": round(float(agreement.mean_matched_score), 4),
            "crop_f1_vs_truth_whole": round(float(vs_truth["whole"].f1), 4),
            "crop_f1_vs_truth_blockwise": round(float(vs_truth["blocks"].f1), 4),
            "train": train,
            "phase_seconds": {k: round(v, 1) for k, v in timings.items()},
            "load_average": [round(v, 2) for v in os.getloadavg()],
            "seed": SEED,
        }
        print(json.dumps(result))
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def predict_settings() -> dict:
    """The keyword arguments ``steps.segment_step`` passes to ``predict_stardist`` for SETTINGS."""
    return {"block_size": SETTINGS.get("block_size", 1024), "min_overlap": SETTINGS.get("min_overlap", 64),
            "context": SETTINGS.get("context")}


def _objects(labels_path: Path) -> int:
    import zarr

    attrs = zarr.open_group(str(labels_path), mode="r").attrs["snakescope"]["segmentation"]
    return int(sum(attrs["objects_per_frame"].values()))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        {"train": child_train, "whole": child_whole, "blocks": child_blocks, "rule": child_rule}[sys.argv[2]](sys.argv[3:])
    else:
        main()
