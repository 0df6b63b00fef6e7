#!/usr/bin/env python3
"""Rule entry point: blockwise N2V/CARE prediction of results/{sample}/normalized.ome.zarr -> results/{sample}/restored.ome.zarr."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from snakescope.pipeline import cli  # noqa: E402
from snakescope.pipeline import steps

cli.main(steps.restore_step, __doc__, steps.restore_arguments)
