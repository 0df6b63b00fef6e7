#!/usr/bin/env python3
"""Rule entry point: a sample's clean target TIFF -> results/{sample}/target.ome.zarr (ingested and normalized like the image; shapes checked)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from snakescope import cli, steps  # noqa: E402

cli.main(steps.prepare_target_step, __doc__, steps.prepare_target_arguments)
