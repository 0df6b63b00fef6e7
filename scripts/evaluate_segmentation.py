#!/usr/bin/env python3
"""Rule entry point: instance matching at IoU 0.5-0.9 against ground-truth labels -> results/{sample}/segmentation_metrics.csv
(U-Net: also its pixel classes -> class_confusion.csv, class_metrics.csv, qc/class_confusion.png)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from snakescope.pipeline import cli  # noqa: E402
from snakescope.pipeline import steps

cli.main(steps.evaluate_segmentation_step, __doc__, steps.evaluate_segmentation_arguments)
