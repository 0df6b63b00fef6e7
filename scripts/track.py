#!/usr/bin/env python3
"""Rule entry point: link detections into tracks (gaps, divisions) -> CTC folder, napari tracks table, statistics, plot."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from snakescope.pipeline import cli  # noqa: E402
from snakescope.pipeline import steps

cli.main(steps.track_step, __doc__, steps.track_arguments)
