#!/usr/bin/env python3
"""Rule entry point: a sample's clean target TIFF -> results/{sample}/target.ome.zarr (ingested and normalized like the image; shapes checked)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from snakescope.pipeline import cli  # noqa: E402
from snakescope.pipeline import steps

cli.main(steps.prepare_target_step, __doc__, steps.prepare_target_arguments)
