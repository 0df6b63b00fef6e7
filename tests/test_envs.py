"""The conda envs (for --sdm conda on clusters) pin exactly what the local lock files install."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LOCKS = {"imaging.yaml": "main.txt", "tensorflow.yaml": "main.txt", "n2v.yaml": "n2v.txt"}


def lock_pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (REPO / "envs" / "locks" / name).read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", line)
        if m:
            pins[m.group(1).lower().split("[")[0]] = m.group(2)
    return pins


def env_pins(path: Path) -> dict[str, str]:
    spec = yaml.safe_load(path.read_text())
    pins = {}
    for dep in spec["dependencies"]:
        if isinstance(dep, dict):
            for pip_dep in dep.get("pip", []):
                name, _, version = pip_dep.partition("==")
                assert version, f"{path.name}: pip dependency {pip_dep!r} is not pinned exactly"
                pins[name.lower()] = version
        else:
            assert re.match(r"^[\w.\-]+=[\d.]+$", dep), f"{path.name}: conda dependency {dep!r} is not pinned exactly"
    return pins


@pytest.mark.parametrize("env_file", sorted(LOCKS))
def test_conda_env_pins_agree_with_lock(env_file):
    pins = env_pins(REPO / "envs" / env_file)
    lock = lock_pins(LOCKS[env_file])
    assert pins, f"{env_file} pins nothing"
    drift = {name: (version, lock.get(name)) for name, version in pins.items() if lock.get(name) != version}
    assert not drift, f"{env_file} disagrees with envs/locks/{LOCKS[env_file]} (env pin, lock pin): {drift}"


def test_every_env_file_is_covered_and_used():
    on_disk = {p.name for p in (REPO / "envs").glob("*.yaml")}
    assert on_disk == set(LOCKS), "a new env file needs its lock mapping in this test"
    rules = "\n".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    used = {f"{name}.yaml" for name in re.findall(r'env_file\("(\w+)"\)', rules)} | {"n2v.yaml", "tensorflow.yaml"}
    assert used <= on_disk, f"rules name env files that do not exist: {used - on_disk}"


def test_locks_pin_the_stack_the_issue_names():
    main, n2v = lock_pins("main.txt"), lock_pins("n2v.txt")
    assert main["snakemake"] == "9.27.1" and main["snakemake-executor-plugin-slurm"] == "2.8.0"
    assert main["tensorflow-cpu"].startswith("2.21") and main["keras"].startswith("3.")
    assert main["csbdeep"] == "0.8.2" and main["stardist"] == "0.9.2" and main["numpy"].startswith("2.")
    assert main["zarr"].startswith("3.")
    assert n2v["tensorflow-cpu"] == "2.15.1" and n2v["csbdeep"] == "0.7.4" and n2v["n2v"] == "0.3.3"
    assert n2v["numpy"].startswith("1.26")


# ---- every env file holds what its rules import --------------------------------------------

def test_container_definitions_install_exactly_the_locks():
    """envs/snakescope.def and envs/Dockerfile install the lock files with `uv pip sync`
    (exact versions, nothing else), with the uv of the Makefile and the locks' Python."""
    uv = re.search(r"uv==([\d.]+)", (REPO / "Makefile").read_text()).group(1)
    for name in ("snakescope.def", "Dockerfile"):
        text = (REPO / "envs" / name).read_text()
        assert f"uv=={uv}" in text, name
        syncs = re.findall(r"VIRTUAL_ENV=\.venv/(\w+) uv pip sync --no-cache envs/locks/(\w+)\.txt", text)
        assert sorted(syncs) == [("main", "main"), ("n2v", "n2v")], (name, syncs)
        assert "python:3.11.7" in text and "pip install " not in text.replace("pip install --no-cache-dir uv==", "")
        for folder in ("src", "scripts", "workflow", "envs/locks"):
            assert re.search(rf"^\s*(COPY )?{folder} /opt/snakescope/{folder}", text, flags=re.M), (name, folder)


def standin_env(env_file: str, root) -> Path:
    """A venv of the env file's pip pins alone (conda channels are unreachable here, and
    the pins are pip packages): what --sdm conda would give the env's rules."""
    import shutil
    import subprocess
    import sys

    uv = REPO / ".venv" / "bootstrap" / "bin" / "uv"
    if not uv.exists():
        pytest.skip("uv is not set up (make setup)")
    folder = root / env_file.replace(".yaml", "")
    pins = [f"{name}=={version}" for name, version in env_pins(REPO / "envs" / env_file).items()
            if name not in ("python", "pip")]
    python = shutil.which("python3.11") or sys.executable
    subprocess.run([str(uv), "venv", "--quiet", "--python", python, str(folder)], check=True)
    proc = subprocess.run([str(uv), "pip", "install", "--quiet", *pins], capture_output=True, text=True,
                          env={**__import__("os").environ, "VIRTUAL_ENV": str(folder)}, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder / "bin" / "python"


@pytest.mark.slow
def test_each_rule_runs_in_an_env_made_from_its_env_file_alone(tmp_path_factory):
    """The small project (every stage: ingest, StarDist training and prediction, measurements,
    classifier, tracking, evaluations, QC, provenance, summary) and a Noise2Void project with
    the box detector (its training, detection and scoring) and the shipped StarDist model
    fine-tuned on its labels run with each rule family's interpreter a venv built from its env
    file's pins only, so an import its env file lacks fails the run."""
    import yaml

    from conftest import make_small_project, run_ok
    from test_restoration_workflow import clean_and_noisy

    root = tmp_path_factory.mktemp("standin")
    envs = {name: standin_env(f"{name}.yaml", root) for name in ("imaging", "tensorflow", "n2v")}
    wd = make_small_project(root / "small")
    config = yaml.safe_load((wd / "config" / "config.yaml").read_text())
    config["local_envs"] = {k: str(v) for k, v in envs.items()}
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    run_ok(wd)
    assert "2 samples: 2 complete" in (wd / "results" / "summary.md").read_text()

    import numpy as np
    import tifffile

    n2v = root / "n2v_project"
    (n2v / "data").mkdir(parents=True)
    clean, noisy = clean_and_noisy(0)
    tifffile.imwrite(n2v / "data" / "noisy.tif", noisy)
    tifffile.imwrite(n2v / "data" / "clean.tif", clean)
    from skimage.measure import label

    from snakescope.io.boxes import boxes_from_labels, write_yolo

    labels = label(clean > 600)
    tifffile.imwrite(n2v / "data" / "labels.tif", labels.astype(np.uint16))
    write_yolo(n2v / "data" / "boxes.txt", boxes_from_labels(labels), clean.shape)
    (n2v / "config").mkdir()
    (n2v / "config" / "samples.tsv").write_text(
        "sample_id\timage\taxes\tvoxel_size\ttarget\tboxes\tlabels\n"
        "blobs\tdata/noisy.tif\tYX\t0.5\tdata/clean.tif\tdata/boxes.txt\tdata/labels.tif\n")
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(samples="config/samples.tsv", local_envs={k: str(v) for k, v in envs.items()},
                  segmentation={"model_2d": str(REPO / "models" / "stardist_2d_nuclei"),
                                "fine_tune": {"epochs": 1, "steps_per_epoch": 2}},
                  detection={"enabled": True, "architecture": {"n_depth": 1, "n_filter_base": 4},
                             "patch_size": [32, 32], "batch_size": 2, "epochs": 1, "steps_per_epoch": 2},
                  restoration={"method": "n2v", "n2v": {"epochs": 1, "steps_per_epoch": 3, "batch_size": 4,
                                                        "patch_shape": [32, 32], "n_patches": 32, "patience": 0}})
    (n2v / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    run_ok(n2v)
    assert (n2v / "results" / "blobs" / "restored.ome.zarr").is_dir()
    assert (n2v / "results" / "blobs" / "detections" / "boxes.csv").is_file()
    assert (n2v / "results" / "metrics" / "detection.csv").is_file()
    tuned = json.loads(next((n2v / "results" / "models").glob("stardist_2d*/snakescope.json")).read_text())
    assert Path(tuned["parent"]).name == "stardist_2d_nuclei"
    assert (n2v / "results" / "blobs" / "objects.parquet").is_file()
