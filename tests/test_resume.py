"""Interrupt the workflow (SIGINT, SIGTERM, SIGKILL) mid-write and mid-training, rerun, compare.

The final outputs of an interrupted-then-resumed run must equal those of an uninterrupted
run (checksums of array contents and tables), and nothing cut short is ever taken as done.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

from conftest import MAIN_PYTHON, REPO

pytestmark = pytest.mark.slow

TEST_CONFIG = {
    "segmentation": {
        "stardist": {"epochs": 3, "steps_per_epoch": 4, "patch_size": [64, 64], "unet_n_depth": 1,
                     "n_rays": 8, "batch_size": 2, "patience": 0},
    },
    "tracking": {"max_distance": 6.0},
    "resources": {"threads": 1, "retries": 0},
}


def make_project(root: Path) -> Path:
    from snakescope.synthetic import make_timelapse, write_timelapse

    wd = root / "wd"
    (wd / "config").mkdir(parents=True)
    cells = write_timelapse(make_timelapse(ndim=2, n_frames=5, shape=(96, 96), n_cells=6, seed=5), wd / "data" / "cells")
    # a larger stack so that killing during its Zarr write is easy to time
    big = np.random.default_rng(0).integers(1, 4000, size=(40, 512, 512), dtype=np.uint16)
    tifffile.imwrite(wd / "data" / "big.tif", big, metadata={"axes": "ZYX"})
    sheet = ("sample_id\timage\taxes\tvoxel_size\ttime_interval\tchannel\tlabels\ttracks\tpoints\ttarget\n"
             f"cells\t{cells['image'].relative_to(wd)}\t{cells['image_axes']}\t0.5\t60\t0\t{cells['labels'].relative_to(wd)}\t{cells['tracks_dir'].relative_to(wd)}\t\t\n"
             "big\tdata/big.tif\tZYX\t2,0.5,0.5\t\t\t\t\t\t\n")
    (wd / "config" / "samples.tsv").write_text(sheet)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(TEST_CONFIG)
    config["ingest"] = {"chunks": {"z": 4, "y": 128, "x": 128}}
    config["samples"] = "config/samples.tsv"
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return wd


def snakemake_cmd(wd: Path, *extra: str) -> list[str]:
    python = str(MAIN_PYTHON if MAIN_PYTHON.exists() else sys.executable)
    return [python, "-m", "snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile"), "--directory", str(wd),
            "--cores", "2", "--rerun-incomplete", "--keep-going", *extra]


def run(wd: Path, *extra: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    proc = subprocess.run(snakemake_cmd(wd, *extra), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def interrupt_when(wd: Path, condition, sig: int, timeout: float = 600) -> None:
    """Start Snakemake, wait until ``condition()`` holds, send ``sig`` to its process group."""
    # start_new_session: SIGINT is not ignored (a child of a non-interactive shell started
    # with & would ignore it) and the signal can reach the whole group like a Ctrl-C.
    proc = subprocess.Popen(snakemake_cmd(wd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + timeout
    try:
        while not condition():
            assert proc.poll() is None, "the workflow ended before the interruption point"
            assert time.time() < deadline, "the interruption point was never reached"
            time.sleep(0.05)
        os.killpg(proc.pid, sig)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def fingerprint(wd: Path) -> dict[str, str]:
    """Checksums of every array's contents and every table in results/ (not of metadata)."""
    import zarr

    prints = {}
    results = wd / "results"
    for zattrs in sorted(results.rglob(".zarray")):
        array = zarr.open_array(str(zattrs.parent), mode="r")
        prints[str(zattrs.parent.relative_to(results))] = hashlib.sha256(np.ascontiguousarray(array[...]).tobytes()).hexdigest()
    for table in sorted(results.rglob("*.parquet")) + sorted(results.rglob("*.csv")) + sorted(results.rglob("res_track.txt")):
        data = pd.read_parquet(table) if table.suffix == ".parquet" else table.read_bytes()
        payload = data.to_csv(index=False).encode() if isinstance(data, pd.DataFrame) else data
        prints[str(table.relative_to(results))] = hashlib.sha256(payload).hexdigest()
    assert not list(results.rglob("*.partial-*")), "a partial output survived"
    return prints


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: the outputs every resumed run must reproduce."""
    wd = make_project(tmp_path_factory.mktemp("reference"))
    run(wd)
    prints = fingerprint(wd)
    assert any("tracks" in k for k in prints) and any("labels.ome.zarr" in k for k in prints)
    return prints


def partial_exists(wd: Path, pattern: str):
    return lambda: any(wd.glob(pattern))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_interrupted_during_zarr_write(tmp_path, reference, sig):
    wd = make_project(tmp_path)
    interrupt_when(wd, partial_exists(wd, "results/big/image.ome.zarr.partial-*"), sig)
    assert not (wd / "results/big/image.ome.zarr").exists(), "an interrupted write must not look complete"
    if sig == signal.SIGKILL:
        # SIGKILL gives Snakemake no chance to release its lock: unlock, then the same command
        run(wd, "--unlock")
    run(wd)
    assert fingerprint(wd) == reference


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_during_training(tmp_path, reference, sig):
    wd = make_project(tmp_path)
    interrupt_when(wd, partial_exists(wd, "results/models/stardist_2d.partial-*/history.csv"), sig)
    assert not (wd / "results/models/stardist_2d").exists()
    if sig == signal.SIGKILL:
        run(wd, "--unlock")
    run(wd)
    assert fingerprint(wd) == reference
