#!/usr/bin/env python3
"""Rule entry point: one sample's TIFF data -> results/{sample}/image.ome.zarr (OME-NGFF, exact values)
-> normalized.ome.zarr + normalization.json (percentile or z-score)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from snakescope.pipeline import cli  # noqa: E402
from snakescope.pipeline import steps

cli.main(steps.ingest_step, __doc__, steps.ingest_arguments)
