"""The real workflow through the Snakemake CLI on tiny generated data: batches of samples,
bad samples failing alone, reruns that redo only what changed, config checks, lint."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from conftest import MAIN_PYTHON, REPO, run_snakemake
from snakescope.io import ngff
from snakescope.synthetic import make_timelapse, write_timelapse

pytestmark = pytest.mark.slow

SHEET_HEADER = "sample_id\timage\taxes\tvoxel_size\ttime_interval\tchannel\tlabels\ttracks\tpoints\ttarget\n"


def write_config(wd: Path, **overrides) -> None:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["samples"] = "config/samples.tsv"
    config.update(overrides)
    (wd / "config").mkdir(parents=True, exist_ok=True)
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(config))


def manifest(wd: Path, stage: str, batch: str = "b0000") -> dict:
    return json.loads((wd / "results" / "jobs" / f"{stage}-{batch}.done.json").read_text())


def ran(wd: Path, stage: str, step: str, batch: str = "b0000") -> list[str]:
    """Samples whose ``step`` ran in the last run of that stage's batch job."""
    return [s for s, e in manifest(wd, stage, batch)["samples"].items() if e["steps"].get(step, {}).get("ran")]


@pytest.fixture
def project(tmp_path):
    """Two good samples, a truncated TIFF and a missing file, one batch, no segmentation."""
    wd = tmp_path / "wd"
    data = wd / "data"
    data.mkdir(parents=True)
    timelapse = make_timelapse(ndim=2, n_frames=4, shape=(64, 64), n_cells=5, seed=3)
    paths = write_timelapse(timelapse, data / "cells")
    plain = np.random.default_rng(0).integers(1, 1000, (48, 40), dtype=np.uint16)
    tifffile.imwrite(data / "plain.tif", plain)
    truncated = data / "truncated.tif"
    tifffile.imwrite(truncated, np.random.default_rng(1).integers(1, 1000, (8, 64, 64), dtype=np.uint16),
                     metadata={"axes": "ZYX"})
    truncated.write_bytes(truncated.read_bytes()[:30000])
    rows = [
        f"cells\t{paths['image'].relative_to(wd)}\t{paths['image_axes']}\t0.5\t60\t0\t\t\t\t",
        "plain\tdata/plain.tif\tYX\t0.25\t\t\t\t\t\t",
        "broken\tdata/truncated.tif\tZYX\t1,0.5,0.5\t\t\t\t\t\t",
        "absent\tdata/absent.tif\tYX\t\t\t\t\t\t\t",
    ]
    write_config(wd, segmentation={"method": "none"})
    (wd / "config" / "samples.tsv").write_text(SHEET_HEADER + "\n".join(rows) + "\n")
    return wd, timelapse, plain


def test_bad_samples_fail_alone_and_the_run_lists_them(project):
    wd, timelapse, plain = project
    proc = run_snakemake(wd, "--cores", "2", "--keep-going", "--show-failed-logs", check=False)
    assert proc.returncode != 0, "failed samples must make the run fail"
    out = proc.stdout + proc.stderr
    assert "2 sample(s) failed" in out
    assert re.search(r"broken \(prepare/ingest\): data/truncated\.tif: truncated TIFF", out), out[-3000:]
    assert re.search(r"absent \(prepare/ingest\): data/absent\.tif: file not found", out)
    # the good samples are complete: exact values, normalized image, provenance, summary
    cells = ngff.read_image(wd / "results/cells/image.ome.zarr")
    assert cells.axes == timelapse.axes.lower()
    np.testing.assert_array_equal(cells.data[...], timelapse.image)
    np.testing.assert_array_equal(ngff.read_image(wd / "results/plain/image.ome.zarr").data[...], plain)
    for sample in ("cells", "plain"):
        assert (wd / f"results/{sample}/normalized.ome.zarr").is_dir()
        stats = json.loads((wd / f"results/{sample}/normalization.json").read_text())
        assert stats["method"] == "percentile" and stats["groups"]
        assert (wd / f"results/{sample}/provenance.json").exists()
        assert (wd / f"logs/prepare/{sample}.log").exists()
    summary = (wd / "results/summary.md").read_text()
    assert "4 samples: 2 complete, 2 failed" in summary
    assert "| broken | prepare | ingest | data/truncated.tif: truncated TIFF" in summary
    failed = (wd / "results/failed_samples.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in failed] == ["sample", "broken", "absent"]
    # bad samples leave nothing a rerun could mistake for complete
    for sample in ("broken", "absent"):
        assert not (wd / f"results/{sample}/image.ome.zarr").exists()
        assert not list((wd / "results").glob(f"{sample}/*.partial-*"))
    # one batch job per stage, not one job per image and step
    assert len(list((wd / "results/jobs").glob("*.done.json"))) == 2  # prepare, finish

    # Rerunning unchanged: only the check fails again; nothing is redone.
    dry = run_snakemake(wd, "--cores", "2", "--dry-run", check=False).stdout
    assert set(re.findall(r"^(?:local)?rule (\w+):", dry, flags=re.M)) == {"check_samples", "all"}
    # Fixing the inputs reruns their batch, where only they are processed.
    tifffile.imwrite(wd / "data/truncated.tif", np.ones((4, 8, 8), np.uint16) * np.arange(8, dtype=np.uint16),
                     photometric="minisblack",
                     metadata={"axes": "ZYX"})
    tifffile.imwrite(wd / "data/absent.tif", plain)
    run_snakemake(wd, "--cores", "2")
    assert ran(wd, "prepare", "ingest") == ["broken", "absent"]
    assert "4 samples: 4 complete, 0 failed" in (wd / "results/summary.md").read_text()


def test_appending_rows_processes_only_the_new_ones(tmp_path):
    wd = tmp_path / "wd"
    (wd / "data").mkdir(parents=True)
    rng = np.random.default_rng(5)
    rows = []
    for i in range(8):
        tifffile.imwrite(wd / "data" / f"s{i}.tif", rng.integers(1, 1000, (32, 40), dtype=np.uint16))
        rows.append(f"s{i}\tdata/s{i}.tif\tYX\t0.5\t\t\t\t\t\t")
    write_config(wd, segmentation={"method": "none"}, batching={"max_samples": 3})
    sheet = wd / "config" / "samples.tsv"
    sheet.write_text(SHEET_HEADER + "\n".join(rows[:5]) + "\n")
    run_snakemake(wd, "--cores", "2")
    assert sorted(p.name for p in (wd / "results/jobs").glob("prepare-*.done.json")) == [
        "prepare-b0000.done.json", "prepare-b0001.done.json"]
    sheet.write_text(SHEET_HEADER + "\n".join(rows) + "\n")  # three rows appended
    dry = run_snakemake(wd, "--cores", "2", "--dry-run").stdout
    planned = set(re.findall(r"wildcards: (?:batch|job)=(\S+)", dry))
    assert planned and not [w for w in planned if "b0000" in w], f"the full first batch must not rerun: {planned}"
    run_snakemake(wd, "--cores", "2")
    assert ran(wd, "prepare", "ingest", "b0001") == ["s5"]  # s3, s4 were done; s5 joined their batch
    assert ran(wd, "prepare", "ingest", "b0002") == ["s6", "s7"]


def test_provenance_records_config_versions_checksums_and_commit(project):
    wd, _, _ = project
    run_snakemake(wd, "--cores", "2", "--keep-going", check=False)
    record = json.loads((wd / "results/plain/provenance.json").read_text())
    digest = hashlib.sha256((wd / "data/plain.tif").read_bytes()).hexdigest()
    assert record["inputs"]["data/plain.tif"]["sha256"] == digest
    assert record["config"]["normalize"]["high"] == 99.8
    assert "resources" not in record["config"]  # how the work ran is not part of the results
    assert record["sample"]["sample_id"] == "plain"
    assert record["software"]["main"]["snakemake"] == "9.27.1"
    assert record["software"]["main"]["zarr"].startswith("3.")
    assert "commit" in record["workflow"]


def test_bad_config_stops_before_anything_runs(project):
    wd, _, _ = project
    write_config(wd, normalize={"low": 150, "scope": "everything"}, ingest={"compression": "rar"})
    proc = run_snakemake(wd, "--cores", "1", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert re.search(r"invalid configuration \(\d+ problems\); nothing was run", out)
    assert "normalize.low" in out and "normalize.scope" in out and "ingest.compression" in out
    assert not (wd / "results").exists()


def test_same_inputs_same_outputs(project):
    """Two runs into fresh folders give identical arrays and statistics (CPU, seeded)."""
    wd, _, _ = project
    run_snakemake(wd, "--cores", "2", check=False)
    first = ngff.read_image(wd / "results/cells/normalized.ome.zarr").data[...]
    stats = (wd / "results/cells/normalization.json").read_text()
    subprocess.run(["rm", "-rf", str(wd / "results"), str(wd / ".snakemake")], check=True)
    run_snakemake(wd, "--cores", "1", check=False)
    np.testing.assert_array_equal(ngff.read_image(wd / "results/cells/normalized.ome.zarr").data[...], first)
    assert (wd / "results/cells/normalization.json").read_text() == stats


def test_scatter_plans_part_jobs_joined_by_segment(project):
    """segmentation.scatter: one sample's prediction as n part jobs plus its batch's segment job."""
    wd, _, _ = project
    pretrained = wd / "pretrained"
    pretrained.mkdir()
    (pretrained / "config.json").write_text("{}")  # the dry run only needs a model folder
    write_config(wd, segmentation={"model_2d": str(pretrained), "scatter": {"cells": 3}},
                 classification={"enabled": False}, tracking={"enabled": False})
    plan = run_snakemake(wd, "--cores", "2", "--dry-run").stdout
    parts = re.findall(r"output: results/cells/labels_parts/part(\d)\.zarr", plan)
    assert sorted(parts) == ["0", "1", "2"], plan[-3000:]
    segment = re.search(r"rule segment:\n    input: ([^\n]+)", plan).group(1)
    assert all(f"results/cells/labels_parts/part{k}.zarr" in segment for k in range(3))
    write_config(wd, segmentation={"model_2d": str(pretrained), "scatter": {"cels": 3}})
    proc = run_snakemake(wd, "--cores", "1", "--dry-run", check=False)
    assert proc.returncode != 0 and "segmentation.scatter': no sample 'cels'" in proc.stdout + proc.stderr


def test_lint_and_snakefmt_clean():
    python = str(MAIN_PYTHON if MAIN_PYTHON.exists() else sys.executable)
    fmt = subprocess.run([python, "-m", "snakefmt", "--check", str(REPO / "workflow")], capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
    lint = subprocess.run([python, "-m", "snakemake", "--lint", "--snakefile", str(REPO / "workflow" / "Snakefile"),
                           "--directory",
                           str(REPO / ".test")],
                          capture_output=True, text=True, cwd=REPO)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "in a good condition" in lint.stdout + lint.stderr
    dry = subprocess.run([python, "-m", "snakemake", "--dry-run", "--snakefile", str(REPO / "workflow" / "Snakefile"),
                          "--directory", str(REPO / ".test")], capture_output=True, text=True, cwd=REPO)
    assert dry.returncode == 0 and "does/not/exist.tif not found" in dry.stdout + dry.stderr, dry.stderr[-2000:]
