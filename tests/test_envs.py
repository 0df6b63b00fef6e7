"""The conda envs (for --sdm conda on clusters) pin exactly what the local lock files install."""

from __future__ import annotations

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
    used = set(re.findall(r'envs/([\w.-]+\.yaml)', rules))
    assert used <= on_disk, f"rules name env files that do not exist: {used - on_disk}"


def test_locks_pin_the_stack_the_issue_names():
    main, n2v = lock_pins("main.txt"), lock_pins("n2v.txt")
    assert main["snakemake"] == "9.27.1" and main["snakemake-executor-plugin-slurm"] == "2.8.0"
    assert main["tensorflow-cpu"].startswith("2.21") and main["keras"].startswith("3.")
    assert main["csbdeep"] == "0.8.2" and main["stardist"] == "0.9.2" and main["numpy"].startswith("2.")
    assert main["zarr"].startswith("3.")
    assert n2v["tensorflow-cpu"] == "2.15.1" and n2v["csbdeep"] == "0.7.4" and n2v["n2v"] == "0.3.3"
    assert n2v["numpy"].startswith("1.26")
