"""The batch runner (snakescope.pipeline.runner) on the real prepare stage: many samples in
one process, bad samples isolated, reruns redo only what changed, batch = single."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import tifffile

from snakescope.io import ngff
from snakescope.pipeline.plan import Plan, manifest_path, plan_path
from snakescope.pipeline.runner import run_task
from snakescope.settings import Config, load

HEADER = "sample_id\timage\taxes\tvoxel_size\ttime_interval\tchannel\tlabels\ttracks\tpoints\ttarget\n"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """Four good 2D images, a truncated TIFF and a missing file, in one sheet."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        tifffile.imwrite(tmp_path / "data" / f"good{i}.tif", rng.integers(1, 4000, (40 + i, 50), dtype=np.uint16))
        rows.append(f"good{i}\tdata/good{i}.tif\tYX\t0.5")
    broken = tmp_path / "data" / "broken.tif"
    tifffile.imwrite(broken, rng.integers(1, 4000, (8, 64, 64), dtype=np.uint16), metadata={"axes": "ZYX"})
    broken.write_bytes(broken.read_bytes()[:30000])
    rows[2:2] = ["broken\tdata/broken.tif\tZYX\t1,0.5,0.5", "absent\tdata/absent.tif\tYX\t"]
    (tmp_path / "samples.tsv").write_text(HEADER + "\n".join(r + "\t" * 6 for r in rows) + "\n")
    return tmp_path


def plan_for(**config) -> Plan:
    validated, samples, _ = load({"samples": "samples.tsv", "segmentation": {"method": "none"}, **config})
    return Plan(Config.from_dict(validated), samples)


def run_stage(plan: Plan, stage: str) -> list[dict]:
    manifests = []
    plan.write_tasks()
    for job in plan.stage_jobs(stage):
        run_task(plan_path(job.name), threads=1)
        manifests.append(json.loads(open(job.outputs[0]).read()))
    return manifests


def test_bad_samples_fail_alone_with_one_line_each(project):
    (manifest,) = run_stage(plan_for(), "prepare")
    status = {s: e["status"] for s, e in manifest["samples"].items()}
    assert status == {"good0": "ok", "good1": "ok", "broken": "failed", "absent": "failed", "good2": "ok", "good3": "ok"}
    assert "broken.tif: truncated TIFF" in manifest["samples"]["broken"]["error"]
    assert "absent.tif: file not found" in manifest["samples"]["absent"]["error"]
    assert all("\n" not in e.get("error", "") for e in manifest["samples"].values())
    for i in range(4):
        image = ngff.read_image(f"results/good{i}/image.ome.zarr")
        np.testing.assert_array_equal(image.data[...], tifffile.imread(f"data/good{i}.tif"))
        assert os.path.isdir(f"results/good{i}/normalized.ome.zarr")
        assert "good" in open(f"logs/prepare/good{i}.log").read()
    assert not os.path.exists("results/broken/image.ome.zarr")
    assert "truncated" in open("logs/prepare/broken.log").read()


def test_rerun_redoes_only_what_changed(project):
    plan = plan_for()
    run_stage(plan, "prepare")
    mtimes = {i: os.stat(f"results/good{i}/image.ome.zarr").st_mtime_ns for i in range(4)}
    (again,) = run_stage(plan, "prepare")
    ran = {s: [n for n, st in e["steps"].items() if st.get("ran")] for s, e in again["samples"].items()}
    assert ran["good0"] == ran["good3"] == []  # done before: skipped
    assert again["samples"]["broken"]["status"] == "failed"  # failed samples are tried again
    time.sleep(0.01)
    data = tifffile.imread("data/good1.tif")
    tifffile.imwrite("data/good1.tif", data + 1)  # the user replaces one image
    (third,) = run_stage(plan, "prepare")
    assert [s for s, e in third["samples"].items() if e["steps"].get("ingest", {}).get("ran")] == ["good1"]
    np.testing.assert_array_equal(ngff.read_image("results/good1/image.ome.zarr").data[...], data + 1)
    for i in (0, 2, 3):
        assert os.stat(f"results/good{i}/image.ome.zarr").st_mtime_ns == mtimes[i]


def test_settings_change_redoes_every_sample(project):
    run_stage(plan_for(), "prepare")
    (manifest,) = run_stage(plan_for(normalize={"high": 99.0}), "prepare")
    assert all(e["steps"]["ingest"]["ran"] for e in manifest["samples"].values() if e["status"] == "ok")


def test_an_interrupted_batch_resumes_where_it_stopped(project):
    """A sample whose step never finished has no stamp: the rerun does it, and only it."""
    plan = plan_for()
    run_stage(plan, "prepare")
    os.remove("results/good2/.snakescope/ingest.stamp")  # as if killed before the stamp
    (manifest,) = run_stage(plan, "prepare")
    assert [s for s, e in manifest["samples"].items() if e["steps"].get("ingest", {}).get("ran")] == ["good2"]


def test_batch_and_single_sample_jobs_write_identical_outputs(project, tmp_path):
    run_stage(plan_for(), "prepare")
    batch = {i: (ngff.read_image(f"results/good{i}/normalized.ome.zarr").data[...],
                 open(f"results/good{i}/normalization.json").read()) for i in range(4)}
    os.rename("results", "results_batch")
    plan = plan_for(batching={"max_samples": 1})
    assert len(plan.stage_jobs("prepare")) == 6
    run_stage(plan, "prepare")
    for i in range(4):
        np.testing.assert_array_equal(ngff.read_image(f"results/good{i}/normalized.ome.zarr").data[...], batch[i][0])
        assert open(f"results/good{i}/normalization.json").read() == batch[i][1]
    assert manifest_path("prepare", "b0005") in [j.outputs[0] for j in plan.stage_jobs("prepare")]


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs (needs root and mount; CI runs as root)."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("a full disk is simulated with a small tmpfs: needs root and mount")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_disk_full_is_one_line_naming_the_path_and_keeps_finished_samples(small_disk, monkeypatch):
    """A real ENOSPC: the job stops with one line naming where it could not write; the
    samples finished before it keep their outputs, and a rerun with room finishes the rest."""
    import subprocess
    import sys
    from pathlib import Path

    monkeypatch.chdir(small_disk)
    data = small_disk.parent / "data"  # the raw data elsewhere, the results on the small disk
    data.mkdir()
    rng = np.random.default_rng(1)
    tifffile.imwrite(data / "small.tif", rng.integers(1, 4000, (64, 64), dtype=np.uint16))
    tifffile.imwrite(data / "huge.tif", rng.integers(1, 60000, (8, 512, 512), dtype=np.uint16), compression="zlib")
    (small_disk / "samples.tsv").write_text(HEADER + f"small\t{data}/small.tif\tYX\t0.5" + "\t" * 6 + "\n"
                                            + f"huge\t{data}/huge.tif\tZYX\t1,0.5,0.5" + "\t" * 6 + "\n")
    plan = plan_for(ingest={"compression": "none", "pyramid_levels": 1})
    plan.write_tasks()
    (job,) = plan.stage_jobs("prepare")
    script = Path(__file__).resolve().parents[1] / "scripts" / "snakescope.py"
    run = subprocess.run([sys.executable, str(script), "run", plan_path(job.name), "--threads", "1"],
                         capture_output=True, text=True)
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "no room to write" in errors[0] and "results/huge" in errors[0], run.stderr
    assert "Traceback" not in run.stderr
    np.testing.assert_array_equal(ngff.read_image("results/small/image.ome.zarr").data[...],
                                  tifffile.imread(data / "small.tif"))
    assert not [p for p in Path("results/huge").rglob("*") if p.is_file() and ".partial-" not in str(p)
                and p.name.endswith(".zarray")], "a half-written image was taken as done"
