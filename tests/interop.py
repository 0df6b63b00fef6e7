"""Open what the workflow writes with other projects' tools (.venv/check, `make test` builds
it): every OME-Zarr with ome-zarr-models' validator, napari-ome-zarr and bioio; bioimage.io
packages with bioimageio.spec (and with bioimageio.core in .venv/n2v: tests/interop_core.py run
in :func:`core_environment`); GEFF graphs with geff; napari tracks with napari's Tracks layer."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECK_PYTHON = REPO / ".venv" / "check" / "bin" / "python"


def ngff_groups(root: Path) -> list[Path]:
    """Every OME-Zarr image under ``root``, its labels group and each label image."""
    found = []
    for image in sorted(root.rglob("*.ome.zarr")):
        if ".partial-" in str(image):
            continue
        found.append(image)
        labels = image / "labels"
        if labels.is_dir():
            found.append(labels)
            found += sorted(p for p in labels.iterdir() if p.is_dir())
    return found


def check_interop(paths_by_mode: dict) -> dict[str, dict]:
    """tests/interop_check.py in .venv/check (one start for all): the report of each path,
    checked as its mode says (``--bioimageio``, ``--geff``, ``--napari-tracks``; ``None``: OME-Zarr)."""
    if not CHECK_PYTHON.exists():
        pytest.skip(f"{CHECK_PYTHON} is absent: `make test` builds the readers' environment")
    args = []
    for mode, paths in paths_by_mode.items():
        args += [mode or "--ngff", *map(str, paths)]
    proc = subprocess.run([str(CHECK_PYTHON), str(REPO / "tests" / "interop_check.py"), *args],
                          capture_output=True, text=True, timeout=600)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("INTEROP-JSON ")]
    assert proc.returncode == 0 and line, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(line[0].split(" ", 1)[1])


def check_ngff(paths: list[Path]) -> dict[str, dict]:
    return check_interop({None: paths})


def check_bioimageio(packages: list[Path]) -> dict[str, dict]:
    """bioimageio.spec's validation of each package: status, errors, warnings (severity)."""
    return check_interop({"--bioimageio": packages})


def assert_ngff_readable(root: Path) -> dict[str, dict]:
    """Every OME-Zarr under ``root`` validates and opens in napari and bioio; opening them
    writes nothing anywhere (napari-ome-zarr creates zarr.json where it takes a folder for a group)."""
    before = {p for p in root.rglob("*")}
    report = check_ngff(ngff_groups(root))
    assert report, f"no OME-Zarr under {root}"
    problems = []
    for path, result in report.items():
        if result["ome_zarr_models"] != "ok":
            problems.append(f"{path}: ome-zarr-models: {result['ome_zarr_models']}")
        if not isinstance(result["napari"], list) or not result["napari"]:
            problems.append(f"{path}: napari-ome-zarr: {result['napari']}")
        if "bioio" in result and not isinstance(result["bioio"], dict):
            problems.append(f"{path}: bioio: {result['bioio']}")
    assert not problems, "\n".join(problems)
    created = {p for p in root.rglob("*")} - before
    assert not created, f"reading created files: {sorted(created)[:5]}"
    return report


N2V_PYTHON = REPO / ".venv" / "n2v" / "bin" / "python"


def core_environment(tmp: Path) -> dict:
    """The environment in which bioimageio.core 0.11 runs in .venv/n2v.

    bioimageio.spec 0.5.12 (core 0.11's) fails on the n2v lock's pydantic 2.14 (its file
    serializer is called with pydantic's new signature), so pydantic comes from .venv/check
    (2.12) through PYTHONPATH; tests/interop_core.py supplies Keras 3's TFSMLayer, with which
    core loads SavedModels under TensorFlow 2 and which Keras 2.15 lacks.
    """
    if not N2V_PYTHON.exists() or not CHECK_PYTHON.exists():
        pytest.skip("bioimageio.core runs in .venv/n2v with pydantic from .venv/check: both must be built")
    overlay = tmp / "pydantic-overlay"
    overlay.mkdir(exist_ok=True)
    site = next((REPO / ".venv" / "check" / "lib").glob("python3*/site-packages"))
    for name in ("pydantic", "pydantic_core"):
        if not (overlay / name).exists():
            (overlay / name).symlink_to(site / name)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests"), str(overlay)]),
            "TF_CPP_MIN_LOG_LEVEL": "2"}
