"""Interrupt the workflow (SIGINT, SIGTERM, SIGKILL) mid-write and mid-training, rerun, compare.

The final outputs of an interrupted-then-resumed run must equal those of an uninterrupted
run (checksums of array contents and tables), and nothing cut short is ever taken as done.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import make_small_project, run_ok, snakemake_cmd

pytestmark = pytest.mark.slow

def interrupt_when(wd: Path, condition, sig: int, timeout: float = 600) -> None:
    """Start Snakemake, wait until ``condition()`` holds, send ``sig`` to its process group."""
    # start_new_session: SIGINT is not ignored (a child of a non-interactive shell started
    # with & would ignore it) and the signal can reach the whole group like a Ctrl-C.
    # preexec_fn: SIGINT back to its default, as at a terminal; a test run started in the
    # background of a script (`cmd &`) inherits it ignored, and Snakemake would never see it.
    proc = subprocess.Popen(snakemake_cmd(wd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + timeout
    try:
        while not condition():
            assert proc.poll() is None, "the workflow ended before the interruption point"
            assert time.time() < deadline, "the interruption point was never reached"
            time.sleep(0.05)
        if sig == signal.SIGKILL:
            # A crash of the whole session (node failure): Snakemake and every job die at
            # once. (Jobs run in sessions of their own, so killing Snakemake alone would
            # leave them running to completion, which is not an interruption.)
            import psutil

            victims = [proc.pid] + [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
            for pid in victims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        else:
            os.killpg(proc.pid, sig)
        proc.wait(timeout=300)
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
def reference(full_run):
    """An uninterrupted run: the outputs every resumed run must reproduce."""
    prints = fingerprint(full_run)
    assert any("tracks" in k for k in prints) and any("image.ome.zarr/labels" in k for k in prints)
    return prints


def partial_exists(wd: Path, pattern: str):
    return lambda: any(wd.glob(pattern))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_interrupted_during_zarr_write(tmp_path, reference, sig):
    wd = make_small_project(tmp_path)
    # small chunks: the big stack's write then takes seconds, not a fifth of one, so the
    # signal lands inside it (the chunking changes files, not the values compared)
    config = yaml.safe_load((wd / "config" / "config.yaml").read_text())
    config["ingest"] = {"chunks": {"z": 1, "y": 64, "x": 64}}
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    interrupt_when(wd, partial_exists(wd, "results/big/image.ome.zarr.partial-*"), sig)
    assert not (wd / "results/big/image.ome.zarr").exists(), "an interrupted write must not look complete"
    # mid-batch: the sample before "big" in the batch was finished and stamped
    assert (wd / "results/cells/.snakescope/ingest.stamp").exists()
    if sig == signal.SIGKILL:
        # SIGKILL gives Snakemake no chance to release its lock: unlock, then the same command
        run_ok(wd, "--unlock")
    run_ok(wd)
    assert fingerprint(wd) == reference
    # the rerun redid the interrupted sample only, not the one its batch had finished
    prepare = json.loads((wd / "results/jobs/prepare-b0000.done.json").read_text())["samples"]
    assert prepare["cells"]["steps"]["ingest"]["ran"] is False and prepare["big"]["steps"]["ingest"]["ran"] is True


def test_batch_and_single_sample_jobs_give_identical_outputs(tmp_path, reference):
    """The same project with one sample per batch job: every array and table as in batches."""
    wd = make_small_project(tmp_path)
    config = yaml.safe_load((wd / "config" / "config.yaml").read_text())
    config["batching"] = {"max_samples": 1}
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    run_ok(wd)
    assert len(list((wd / "results/jobs").glob("prepare-*.done.json"))) == 2
    assert fingerprint(wd) == reference


def test_outputs_open_in_other_tools(full_run):
    """Every OME-Zarr the run wrote validates (ome-zarr-models) and opens in napari-ome-zarr
    and bioio, labels included; the CTC result folder evaluates in py-ctcmetrics."""
    from interop import assert_ngff_readable

    report = assert_ngff_readable(full_run / "results")
    kinds = {Path(p).name: r["kind"] for p, r in report.items()}
    assert kinds["labels"] == "labels" and kinds["segmentation"] == "label"
    layers = report[str(full_run / "results/cells/image.ome.zarr")]["napari"]
    assert [kind for kind, _ in layers] == ["image", "labels"]  # napari shows the labels over the image


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_during_training(tmp_path, reference, sig):
    wd = make_small_project(tmp_path)
    interrupt_when(wd, partial_exists(wd, "results/models/stardist_2d.partial-*/training.csv"), sig)
    # Snakemake creates the model folder's parent for the curve output; what must not
    # exist is a model that looks complete (the folder is renamed into place when done).
    assert not (wd / "results/models/stardist_2d").exists()
    if sig == signal.SIGKILL:
        run_ok(wd, "--unlock")
    run_ok(wd)
    assert fingerprint(wd) == reference
