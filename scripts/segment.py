#!/usr/bin/env python3
"""Rule entry point: StarDist or U-Net instance segmentation of every frame -> results/{sample}/labels.ome.zarr (NGFF labels;
the U-Net adds its pixel-class map as the labels image `classes`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from snakescope.pipeline import cli  # noqa: E402
from snakescope.pipeline import steps

cli.main(steps.segment_step, __doc__, steps.segment_arguments)
