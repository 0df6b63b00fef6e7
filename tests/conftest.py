"""Shared fixtures: small real TIFFs written per test, the repository root, shared data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MAIN_PYTHON = REPO / ".venv" / "main" / "bin" / "python"
N2V_PYTHON = REPO / ".venv" / "n2v" / "bin" / "python"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def tzyx_stack(tmp_path, rng):
    """A small TZYX uint16 stack with ImageJ metadata, and its array."""
    data = rng.integers(0, 4000, size=(3, 5, 70, 90), dtype=np.uint16)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TZYX"})
    return path, data


def shared_dataset(name: str) -> Path:
    """A dataset of ../shared/data, or skip the test saying why."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (a clone without ../shared/data); this test needs that real dataset")
    return path


def run_snakemake(workdir: Path, *args: str, timeout: int = 900, check: bool = True):
    """Run the real Snakemake CLI of the main environment on the repository's workflow."""
    cmd = [str(MAIN_PYTHON if MAIN_PYTHON.exists() else sys.executable), "-m", "snakemake",
           "--snakefile", str(REPO / "workflow" / "Snakefile"), "--directory", str(workdir), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=workdir,
                          env={**os.environ, "PYTHONHASHSEED": "0"})
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


@pytest.fixture
def workdir(tmp_path):
    """A Snakemake working directory with the repository's config folder copied in."""
    wd = tmp_path / "wd"
    shutil.copytree(REPO / "config", wd / "config")
    return wd


# ---- a small project run through the whole DAG (shared by the resume and report tests) ----

SMALL_CONFIG = {
    "segmentation": {
        "stardist": {"epochs": 3, "steps_per_epoch": 4, "patch_size": [64, 64], "unet_n_depth": 1,
                     "n_rays": 8, "batch_size": 2, "patience": 0},
    },
    "classification": {"epochs": 2, "patience": 0, "batch_size": 8, "patch_size": [16, 16]},
    "tracking": {"max_distance": 6.0},
    "resources": {"threads": 1, "retries": 0},
}


def make_small_project(root: Path) -> Path:
    """A 2D+t synthetic sample with labels, tracks and points, and a larger plain stack."""
    import yaml

    from snakescope.synthetic import make_timelapse, write_timelapse

    wd = root / "wd"
    (wd / "config").mkdir(parents=True)
    cells = write_timelapse(make_timelapse(ndim=2, n_frames=5, shape=(96, 96), n_cells=6, seed=5), wd / "data" / "cells")
    # a larger stack so that an interruption during its Zarr write is easy to time
    big = np.random.default_rng(0).integers(1, 4000, size=(40, 512, 512), dtype=np.uint16)
    tifffile.imwrite(wd / "data" / "big.tif", big, metadata={"axes": "ZYX"})
    rel = lambda p: p.relative_to(wd)  # noqa: E731
    sheet = ("sample_id\timage\taxes\tvoxel_size\ttime_interval\tchannel\tlabels\ttracks\tpoints\ttarget\n"
             f"cells\t{rel(cells['image'])}\t{cells['image_axes']}\t0.5\t60\t0\t{rel(cells['labels'])}\t{rel(cells['tracks_dir'])}\t"
             f"data/cells/points_*.csv\t\n"
             "big\tdata/big.tif\tZYX\t2,0.5,0.5\t\t\t\t\t\t\n")
    (wd / "config" / "samples.tsv").write_text(sheet)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(SMALL_CONFIG)
    config["ingest"] = {"chunks": {"z": 4, "y": 128, "x": 128}}
    config["samples"] = "config/samples.tsv"
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return wd


def snakemake_cmd(wd: Path, *extra: str) -> list[str]:
    python = str(MAIN_PYTHON if MAIN_PYTHON.exists() else sys.executable)
    return [python, "-m", "snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile"), "--directory", str(wd),
            "--cores", "2", "--rerun-incomplete", "--keep-going", *extra]


def run_ok(wd: Path, *extra: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    proc = subprocess.run(snakemake_cmd(wd, *extra), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


@pytest.fixture(scope="session")
def full_run(tmp_path_factory):
    """The small project run once, uninterrupted, through every stage."""
    wd = make_small_project(tmp_path_factory.mktemp("full_run"))
    run_ok(wd)
    return wd
