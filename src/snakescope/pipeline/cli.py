"""Shared plumbing of the rule entry points in scripts/: arguments, logging, error exit.

Rules call ``{python} scripts/<step>.py ...`` with the interpreter of their environment
(a local venv, or ``python`` inside the rule's conda env), so the same entry points serve
local runs, --sdm conda and SLURM jobs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Callable

from snakescope.errors import InputError


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--log", help="log file (also echoed to stderr)")
    p.add_argument("--threads", type=int, default=1)
    return p


def json_arg(text: str):
    return json.loads(text) if text else {}


def setup_logging(log_path: str | None) -> None:
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_path:
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(step: Callable[[argparse.Namespace], object], description: str,
         add_arguments: Callable[[argparse.ArgumentParser], None], argv=None) -> None:
    """Run one step; a user-input problem exits 1 with one line naming the file and problem."""
    p = parser(description)
    add_arguments(p)
    args = p.parse_args(argv)
    setup_logging(args.log)
    log = logging.getLogger("snakescope")
    start = time.perf_counter()
    try:
        step(args)
    except InputError as exc:
        log.error("%s", exc)
        sys.exit(1)
    log.info("done in %.1f s", time.perf_counter() - start)
