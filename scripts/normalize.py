#!/usr/bin/env python3
"""Rule entry point: percentile or z-score normalization -> results/{sample}/normalized.ome.zarr + statistics."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from snakescope import cli, steps  # noqa: E402

cli.main(steps.normalize_step, __doc__, steps.normalize_arguments)
