#!/usr/bin/env python3
"""Rule entry point: per-object measurements (regionprops) -> results/{sample}/objects.parquet."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from snakescope.pipeline import cli  # noqa: E402
from snakescope.pipeline import steps

cli.main(steps.measure_step, __doc__, steps.measure_arguments)
