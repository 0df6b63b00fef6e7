"""What produced a result: config, software versions, input checksums, workflow commit."""

from __future__ import annotations

import functools
import hashlib
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("snakemake", "numpy", "scipy", "zarr", "numcodecs", "tifffile", "dask", "scikit-image",
            "pandas", "tensorflow", "tensorflow-cpu", "keras", "csbdeep", "stardist", "n2v", "ome-zarr")


def sha256(path: str | Path, block: int = 4 * 2**20) -> str:
    """Checksum streamed in blocks (inputs can be larger than memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


@functools.cache  # one lookup per job, not per sample
def versions(packages=PACKAGES) -> dict:
    found = {"python": platform.python_version()}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


@functools.cache
def git_commit(repo: str | Path) -> dict:
    """Commit of the workflow's checkout and whether it had uncommitted changes."""
    def run(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)

    try:
        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "note": "not a git checkout or no commit yet"}
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip() != ""
        return {"commit": head.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"commit": None, "note": f"git unavailable: {exc}"}


def record(sample: dict, config: dict, input_files, repo: str | Path, env_versions: dict | None = None) -> dict:
    """The provenance record of one sample's results."""
    return {
        "sample": sample,
        "config": config,
        "inputs": {str(f): {"sha256": sha256(f), "bytes": Path(f).stat().st_size} for f in input_files if Path(f).is_file()},
        "software": {"main": dict(versions()), **({"other_envs": env_versions} if env_versions else {})},
        "workflow": {"repository": str(Path(repo).resolve()), **git_commit(str(repo))},
        "platform": {"system": platform.platform(), "python_executable": sys.executable},
    }
