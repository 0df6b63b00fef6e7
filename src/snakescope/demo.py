"""The bundled demo dataset: a real nuclei image, a low-light copy of it with its clean
target, and two synthetic time-lapses.

Everything is generated (seeded) or copied from an installed package, so the repository
carries no data files and the demo needs no download.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

SHEET_HEADER = ["sample_id", "image", "axes", "voxel_size", "time_interval", "channel", "labels", "tracks", "points", "target"]


def real_nuclei_2d(folder: Path) -> dict:
    """StarDist's bundled fluorescence nuclei image (real data) and its instance labels."""
    import tifffile
    from stardist.data import test_image_nuclei_2d

    image, mask = test_image_nuclei_2d(return_mask=True)
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / "image.tif", image, metadata={"axes": "YX"})
    tifffile.imwrite(folder / "labels.tif", mask.astype("uint16"), metadata={"axes": "YX"})
    return {"image": folder / "image.tif", "labels": folder / "labels.tif"}


#: Photons at the brightest pixel and read noise (photons rms) of the noisy demo copy.
NOISY_PEAK, NOISY_READ_NOISE = 20.0, 2.0


def noisy_nuclei_2d(folder: Path, clean_image, seed: int = 3) -> dict:
    """A low-light copy of a real nuclei image (Poisson-Gaussian camera, see
    :func:`snakescope.synthetic.camera_noise`) as uint16 counts over an offset of 100; the
    original image is its clean target (for restoration metrics and CARE training)."""
    import numpy as np
    import tifffile

    from snakescope.synthetic import camera_noise

    clean = tifffile.imread(clean_image).astype(np.float64)
    noisy = camera_noise(clean / clean.max(), NOISY_PEAK, NOISY_READ_NOISE, np.random.default_rng(seed))
    counts = np.clip(np.rint(noisy * NOISY_PEAK + 100), 0, 65535).astype(np.uint16)
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / "image.tif", counts, metadata={"axes": "YX"})
    return {"image": folder / "image.tif", "target": clean_image}


def make_demo_data(root: str | Path, sheet: str | Path | None = None) -> list[dict]:
    """Write the demo samples under ``root`` and, if given, a samples sheet listing them."""
    from snakescope.synthetic import make_timelapse, write_timelapse

    root = Path(root)
    rows = []
    nuclei = real_nuclei_2d(root / "nuclei2d")
    rows.append({"sample_id": "nuclei2d", "image": nuclei["image"], "axes": "YX", "voxel_size": "0.5",
                 "labels": nuclei["labels"]})
    noisy = noisy_nuclei_2d(root / "nuclei2d_noisy", nuclei["image"])
    rows.append({"sample_id": "nuclei2d_noisy", "image": noisy["image"], "axes": "YX", "voxel_size": "0.5",
                 "labels": nuclei["labels"], "target": noisy["target"]})
    for sample_id, kwargs in [
        ("cells2dt", dict(ndim=2, n_frames=12, shape=(160, 160), n_cells=14, n_channels=2, seed=1)),
        ("cells3dt", dict(ndim=3, n_frames=6, shape=(16, 96, 96), n_cells=8, seed=2)),
    ]:
        timelapse = make_timelapse(**kwargs)
        paths = write_timelapse(timelapse, root / sample_id)
        rows.append({
            "sample_id": sample_id, "image": paths["image"], "axes": paths["image_axes"],
            "voxel_size": ",".join(f"{v:g}" for v in timelapse.voxel_size), "time_interval": "60",
            "channel": "0", "labels": paths["labels"], "tracks": paths["tracks_dir"],
            "points": str(root / sample_id / "points_sparse_*.csv"),
        })
    if sheet is not None:
        write_sheet(rows, sheet)
    return rows


def write_sheet(rows: list[dict], sheet: str | Path) -> None:
    from snakescope.io.atomic import write_text

    lines = ["\t".join(SHEET_HEADER)]
    for row in rows:
        lines.append("\t".join(str(row.get(col, "")) for col in SHEET_HEADER))
    write_text(sheet, "\n".join(lines) + "\n")
