"""Atomic outputs: a result appears under its final name complete, or not at all.

A job killed mid-write (SIGKILL, node failure, out of memory) leaves at most a
``*.partial-*`` sibling, which no rule ever reads and the next attempt removes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Iterator


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _remove_stale_partials(final: Path) -> None:
    for stale in final.parent.glob(final.name + ".partial-*"):
        _remove(stale)


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write a file or folder into; rename it on success.

    The rename is atomic on one file system; on an exception the temporary is removed and
    the final path is left as it was (absent, since Snakemake removes outputs before a job).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(final)
    tmp = final.parent / f"{final.name}.partial-{os.getpid()}"
    _remove(tmp)
    try:
        yield tmp
        if final.exists() or final.is_symlink():
            _remove(final)
        os.replace(tmp, final)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            _remove(tmp)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(final)  # a disk-full error then names the output it was writing
        raise


def _finite(value):
    """NaN and infinities become null: strict JSON has no token for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy scalars
        return _finite(value.item())
    return value


def write_json(path: str | Path, data, *, sort_keys: bool = True) -> None:
    """Write strict JSON atomically (sorted keys, so identical data gives identical bytes;
    ``sort_keys=False`` where the order means something, e.g. samples in sheet order)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_finite(data), indent=2, sort_keys=sort_keys, default=str, allow_nan=False) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)

