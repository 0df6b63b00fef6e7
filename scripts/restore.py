#!/usr/bin/env python3
"""Rule entry point: blockwise N2V/CARE prediction of results/{sample}/normalized.ome.zarr -> results/{sample}/restored.ome.zarr."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from snakescope import cli, steps  # noqa: E402

cli.main(steps.restore_step, __doc__, steps.restore_arguments)
