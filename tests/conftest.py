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
