"""The real workflow through the Snakemake CLI on tiny generated data, good and bad samples."""

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


@pytest.fixture
def project(tmp_path):
    """Two good samples, a truncated TIFF and a missing file."""
    wd = tmp_path / "wd"
    data = wd / "data"
    data.mkdir(parents=True)
    timelapse = make_timelapse(ndim=2, n_frames=4, shape=(64, 64), n_cells=5, seed=3)
    paths = write_timelapse(timelapse, data / "cells")
    plain = np.random.default_rng(0).integers(1, 1000, (48, 40), dtype=np.uint16)
    tifffile.imwrite(data / "plain.tif", plain)
    truncated = data / "truncated.tif"
    tifffile.imwrite(truncated, np.random.default_rng(1).integers(1, 1000, (8, 64, 64), dtype=np.uint16), metadata={"axes": "ZYX"})
    truncated.write_bytes(truncated.read_bytes()[:30000])
    rows = [
        f"cells\t{paths['image'].relative_to(wd)}\t{paths['image_axes']}\t0.5\t60\t0\t\t\t\t",
        "plain\tdata/plain.tif\tYX\t0.25\t\t\t\t\t\t",
        "broken\tdata/truncated.tif\tZYX\t1,0.5,0.5\t\t\t\t\t\t",
        "absent\tdata/absent.tif\tYX\t\t\t\t\t\t\t",
    ]
    write_config(wd)
    (wd / "config" / "samples.tsv").write_text(SHEET_HEADER + "\n".join(rows) + "\n")
    return wd, timelapse, plain


def test_workflow_runs_good_samples_and_reports_bad_ones(project):
    wd, timelapse, plain = project
    proc = run_snakemake(wd, "--cores", "2", "--keep-going", "--show-failed-logs", check=False)
    assert proc.returncode != 0, "the broken samples must make the run fail"
    out = proc.stdout + proc.stderr
    assert "truncated.tif: truncated TIFF" in out
    assert "absent.tif: file not found" in out
    # good samples complete, with exact values and normalized output
    cells = ngff.read_image(wd / "results/cells/image.ome.zarr")
    assert cells.axes == timelapse.axes.lower()
    np.testing.assert_array_equal(cells.data[...], timelapse.image)
    np.testing.assert_array_equal(ngff.read_image(wd / "results/plain/image.ome.zarr").data[...], plain)
    for sample in ("cells", "plain"):
        assert (wd / f"results/{sample}/normalized.ome.zarr").is_dir()
        stats = json.loads((wd / f"results/{sample}/normalization.json").read_text())
        assert stats["method"] == "percentile" and stats["groups"]
        assert (wd / f"results/{sample}/provenance.json").exists()
        assert (wd / f"logs/ingest/{sample}.log").exists()
        assert (wd / f"benchmarks/ingest/{sample}.tsv").exists()
    # bad samples leave nothing a rerun could mistake for complete
    for sample in ("broken", "absent"):
        assert not (wd / f"results/{sample}/image.ome.zarr").exists()
        assert not list((wd / "results").glob(f"{sample}/*.partial-*"))

    # A rerun has nothing to do for the good samples: only the bad ones are tried again.
    dry = run_snakemake(wd, "--cores", "2", "--keep-going", "--dry-run", check=False)
    planned = {line.split("sample=")[1].split(",")[0].strip() for line in (dry.stdout + dry.stderr).splitlines()
               if line.strip().startswith("wildcards:") and "sample=" in line}
    assert planned == {"broken", "absent"}


def test_provenance_records_config_versions_checksums_and_commit(project):
    wd, _, _ = project
    run_snakemake(wd, "--cores", "2", "--keep-going", "results/plain/provenance.json")
    record = json.loads((wd / "results/plain/provenance.json").read_text())
    digest = hashlib.sha256((wd / "data/plain.tif").read_bytes()).hexdigest()
    assert record["inputs"]["data/plain.tif"]["sha256"] == digest
    assert record["config"]["normalize"]["high"] == 99.8
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


def test_same_inputs_same_outputs(project, tmp_path):
    """Two runs into separate folders give identical arrays and statistics (CPU, seeded)."""
    wd, _, _ = project
    run_snakemake(wd, "--cores", "2", "results/cells/normalized.ome.zarr")
    first = ngff.read_image(wd / "results/cells/normalized.ome.zarr").data[...]
    stats = (wd / "results/cells/normalization.json").read_text()
    subprocess.run(["rm", "-rf", str(wd / "results"), str(wd / ".snakemake")], check=True)
    run_snakemake(wd, "--cores", "1", "results/cells/normalized.ome.zarr")
    np.testing.assert_array_equal(ngff.read_image(wd / "results/cells/normalized.ome.zarr").data[...], first)
    assert (wd / "results/cells/normalization.json").read_text() == stats


def test_scatter_plans_part_jobs_joined_by_segment(project):
    """segmentation.scatter: one sample's prediction as n part jobs plus the joining segment job."""
    wd, _, _ = project
    pretrained = wd / "pretrained"
    pretrained.mkdir()  # the dry run only needs the folder to exist
    write_config(wd, segmentation={"model_2d": str(pretrained), "scatter": {"cells": 3}},
                 classification={"enabled": False}, tracking={"enabled": False})
    plan = run_snakemake(wd, "--cores", "2", "--dry-run", "--printshellcmds", "results/cells/labels.ome.zarr").stdout
    parts = re.findall(r"segment\.py --part (\d) --n-parts 3 ", plan)
    assert sorted(parts) == ["0", "1", "2"], plan[-3000:]
    joined = " ".join(f"results/cells/labels_parts/part{k}.zarr" for k in range(3))
    assert f"--parts {joined} --out results/cells/labels.ome.zarr" in plan
    write_config(wd, segmentation={"model_2d": str(pretrained), "scatter": {"cels": 3}})
    proc = run_snakemake(wd, "--cores", "1", "--dry-run", check=False)
    assert proc.returncode != 0 and "segmentation.scatter': no sample 'cels'" in proc.stdout + proc.stderr


def test_lint_and_snakefmt_clean():
    python = str(MAIN_PYTHON if MAIN_PYTHON.exists() else sys.executable)
    fmt = subprocess.run([python, "-m", "snakefmt", "--check", str(REPO / "workflow")], capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
    lint = subprocess.run([python, "-m", "snakemake", "--lint", "--snakefile", str(REPO / "workflow" / "Snakefile"),
                           "--configfile", str(REPO / "config" / "config.yaml"), "--config", "samples=" + str(REPO / "tests" / "data" / "lint_samples.tsv")],
                          capture_output=True, text=True, cwd=REPO)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "in a good condition" in lint.stdout + lint.stderr
