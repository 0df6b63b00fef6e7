#!/usr/bin/env python3
"""Rule entry point: per-sample metrics and their sum over samples -> results/metrics/*.csv (U-Net: summed pixel-class
confusion -> results/metrics/class_confusion.csv/.png, class_metrics.csv)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from snakescope.pipeline import cli  # noqa: E402
from snakescope.pipeline import steps

cli.main(steps.gather_metrics_step, __doc__, steps.gather_metrics_arguments)
